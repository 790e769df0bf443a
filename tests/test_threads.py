"""Threads calling one merged model get exactly the results of sequential calls (per-call state lives with the call),
and remove() run inside a merged forward never leaves a mixed result."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import mergeplug
from mergeplug.models import chronos2, chronos_bolt, chronos_t5

ROUNDS = 12


def _walk(n_b: int, n: int, seed: int) -> torch.Tensor:
    return torch.randn(n_b, n, generator=torch.Generator().manual_seed(seed)).cumsum(1)


def _bolt() -> tuple[Any, Callable[[torch.Tensor], Any], list[torch.Tensor]]:
    pipe = chronos_bolt("test", context_length=512)
    return pipe, lambda x: pipe.predict(x, prediction_length=16), [_walk(2, 512, 1), _walk(2, 384, 2), _walk(2, 448, 3)]


def _t5_embed() -> tuple[Any, Callable[[torch.Tensor], Any], list[torch.Tensor]]:
    pipe = chronos_t5("test", context_length=128, prediction_length=4, num_samples=2)
    return pipe, lambda x: pipe.embed(x)[0], [_walk(2, 128, 3), _walk(2, 96, 4), _walk(2, 112, 5)]


def _chronos2() -> tuple[Any, Callable[[torch.Tensor], Any], list[torch.Tensor]]:
    pipe = chronos2("test", context_length=512)
    groups = torch.tensor([0, 0, 1])
    return (
        pipe,
        lambda x: pipe.model(x, group_ids=groups, num_output_patches=2).quantile_preds,
        [_walk(3, 512, 5), _walk(3, 320, 6), _walk(3, 416, 7)],
    )


def _torch_encoder() -> tuple[Any, Callable[[torch.Tensor], Any], list[torch.Tensor]]:
    torch.manual_seed(0)
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True), 4,
                                enable_nested_tensor=False).eval()  # fmt: skip
    return enc, enc, [torch.randn(2, 40, 32), torch.randn(2, 28, 32), torch.randn(2, 34, 32)]


def _gpt2() -> tuple[Any, Callable[[torch.Tensor], Any], list[torch.Tensor]]:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    lm = GPT2LMHeadModel(GPT2Config(vocab_size=100, n_positions=128, n_embd=32, n_layer=4, n_head=4)).eval()
    ids = [torch.randint(1, 100, (2, n), generator=torch.Generator().manual_seed(n)) for n in (60, 44, 52)]
    return lm, lambda x: lm(x, use_cache=True).logits, ids


def _timesfm() -> tuple[Any, Callable[[torch.Tensor], Any], list[torch.Tensor]]:
    from transformers import TimesFm2_5Config, TimesFm2_5ModelForPrediction

    torch.manual_seed(0)
    cfg = TimesFm2_5Config(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                           num_key_value_heads=4, head_dim=8, context_length=1024, horizon_length=64)  # fmt: skip
    model = TimesFm2_5ModelForPrediction(cfg).eval()
    return model, lambda x: model.model(past_values=x).last_hidden_state, [_walk(2, n, n) for n in (1024, 768, 896)]


CASES = {
    "chronos-bolt": (_bolt, {"ratio": 0.3}),
    "chronos-t5 embed": (_t5_embed, {"ratio": 0.3}),
    "chronos-2": (_chronos2, {"ratio": 0.3}),
    "torch-transformer-encoder": (_torch_encoder, {"ratio": 0.3}),
    "gpt-2 prefill": (_gpt2, {"ratio": 0.3, "causal": True}),
    "timesfm 2.5": (_timesfm, {"ratio": 0.3, "causal": True}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_threads_get_exactly_the_sequential_results_and_their_own_token_counts(name):
    build, setting = CASES[name]
    obj, run, inputs = build()
    mergeplug.apply(obj, k=1, safe=False, **setting)
    with torch.no_grad():
        expected = []
        for x in inputs:  # sequential: the outputs and token counts of each input alone
            expected.append((run(x), mergeplug.token_counts(obj)))
    assert len({str(c) for _, c in expected}) == len(inputs)  # counts tell the threads apart
    barrier, failures = threading.Barrier(len(inputs)), []

    def worker(t: int) -> None:
        ref, counts = expected[t]
        barrier.wait()
        try:
            with torch.no_grad():
                for _ in range(ROUNDS):
                    out = run(inputs[t])
                    if not torch.equal(out, ref):
                        failures.append(f"thread {t}: output differs by {(out - ref).abs().max():.3g}")
                    if mergeplug.token_counts(obj) != counts:
                        failures.append(f"thread {t}: token counts {mergeplug.token_counts(obj)} != {counts}")
        except Exception as exc:  # noqa: BLE001 - any error in a thread is a failure of the test
            failures.append(f"thread {t}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(len(inputs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    mergeplug.remove(obj)
    assert not failures, failures[:5]


@pytest.mark.parametrize("where", ["end", "middle"])
def test_remove_from_a_hook_inside_a_merged_forward_never_gives_a_mixed_result(where):
    """``remove()`` run by a hook during a merged forward: the forward finishes merged (after the last block) or
    raises a message saying what happened (inside the blocks), never a result that is neither; afterwards the
    model is the original, bitwise."""
    pipe = chronos_bolt("test", context_length=512)
    x = _walk(2, 512, 7)
    ref = pipe.predict(x, prediction_length=16)
    mergeplug.apply(pipe, k=1, ratio=0.3, safe=False)
    merged = pipe.predict(x, prediction_length=16)
    encoder = pipe.model.encoder
    module = encoder.final_layer_norm if where == "end" else encoder.block[0].layer[-1]
    handle = module.register_forward_pre_hook(lambda m, a: (mergeplug.remove(pipe), None)[1])
    if where == "end":
        assert torch.equal(pipe.predict(x, prediction_length=16), merged)
    else:
        with pytest.raises(RuntimeError, match=r"remove\(\) .* ran inside it"):
            pipe.predict(x, prediction_length=16)
    handle.remove()
    assert mergeplug.settings(pipe) is None and torch.equal(pipe.predict(x, prediction_length=16), ref)
