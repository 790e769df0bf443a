"""The merge guarantees on a GPU: skipped without CUDA; ``scripts/gpu_check.sh`` runs them on a CUDA machine.

For every family: ``r=0`` and ``remove()`` give bitwise the original outputs on the device, merged outputs are
finite, merge as many tokens as on the CPU and match the CPU's merged outputs (float32, to GPU rounding); in
bfloat16 the same holds except the CPU comparison; the strict causal mode never lets a token see the future; the
fast sampler's exact mode samples stock ``generate()``'s tokens. ``MERGEPLUG_TEST_DEVICE=cpu`` runs the same
checks on the CPU (how they are kept working on machines without a GPU; the CPU comparison is then trivial).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
import test_bf16  # tests/ is on the path (pytest's rootdir-relative import of test modules)
import torch
from torch import nn

import mergeplug
from mergeplug.models import chronos2, chronos_bolt, chronos_t5

DEVICE = torch.device(os.environ.get("MERGEPLUG_TEST_DEVICE", "cuda"))
pytestmark = pytest.mark.skipif(
    DEVICE.type == "cuda" and not torch.cuda.is_available(),
    reason="no CUDA device (scripts/gpu_check.sh runs these on a GPU machine)",
)
MERGE = {"k": 1, "ratio": 0.3, "safe": False}


def _walk(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).cumsum(1)


# Each case: (object to patch, module to move / cast, run(device, dtype) -> deterministic output tensor)
Case = tuple[Any, nn.Module, Callable[[torch.device, torch.dtype], torch.Tensor]]


def _t5() -> Case:
    pipe = chronos_t5("test", context_length=128, prediction_length=4, num_samples=2)
    ctx = _walk(3, 128)
    ctx[1, :20] = float("nan")
    return pipe, pipe.model, lambda device, dtype: pipe.embed(ctx)[0].float()


def _bolt() -> Case:
    pipe = chronos_bolt("test", context_length=256)
    ctx = _walk(2, 256)
    return pipe, pipe.model, lambda device, dtype: pipe.predict(ctx, prediction_length=16).float()


def _chronos2() -> Case:
    pipe = chronos2("test", context_length=256)
    ctx, groups = _walk(4, 256), torch.tensor([0, 0, 1, 2])

    def run(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        out = pipe.model(ctx.to(device), group_ids=groups.to(device), num_output_patches=2).quantile_preds
        return out.float()

    return pipe, pipe.model, run


def _from_bf16_tests(build: Callable[[], tuple[Any, nn.Module, Callable[[], torch.Tensor]]]) -> Callable[[], Case]:
    """A builder of tests/test_bf16.py (its inputs follow the model's device and dtype) as a case here."""

    def case() -> Case:
        obj, module, run = build()
        return obj, module, lambda device, dtype: run().float()

    return case


CASES: dict[str, Callable[[], Case]] = {
    "chronos-t5": _t5,
    "chronos-bolt": _bolt,
    "chronos-2": _chronos2,
    "patchtst": _from_bf16_tests(test_bf16._patchtst),
    "torch-transformer-encoder": _from_bf16_tests(test_bf16._torch_encoder),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("family", list(CASES))
def test_merging_on_the_device(family, dtype):
    obj, module, run = CASES[family]()
    cpu = torch.device("cpu")
    with torch.inference_mode():
        mergeplug.apply(obj, **MERGE)
        cpu_merged, cpu_counts = run(cpu, torch.float32), mergeplug.token_counts(obj)
        mergeplug.remove(obj)
        module.to(DEVICE, dtype)
        ref = run(DEVICE, dtype)
        mergeplug.apply(obj, k=1, r=0)
        assert torch.equal(run(DEVICE, dtype), ref)  # nothing merges: the original computation, bitwise
        mergeplug.apply(obj, **MERGE)
        merged = run(DEVICE, dtype)
        assert merged.device.type == DEVICE.type and torch.isfinite(merged).all()
        assert mergeplug.token_counts(obj) == cpu_counts and cpu_counts[-1] < cpu_counts[0]
        if dtype == torch.float32:  # the device computes what the CPU computes
            torch.testing.assert_close(merged.cpu(), cpu_merged, rtol=1e-3, atol=1e-3)
        mergeplug.remove(obj)
        assert torch.equal(run(DEVICE, dtype), ref)


def test_strict_causal_mode_never_sees_the_future_on_the_device():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=100, n_positions=128, n_embd=32, n_layer=4, n_head=4, bos_token_id=None,
                     eos_token_id=None, pad_token_id=0)  # fmt: skip
    m = GPT2LMHeadModel(cfg).eval().to(DEVICE)
    rand = torch.randint(1, 100, (2, 40), generator=torch.Generator().manual_seed(0))
    ids = torch.cat([torch.full((2, 20), 7), rand], 1).to(DEVICE)  # a repeated run: tokens do merge
    mergeplug.apply(m, k=1, causal=True, threshold=0.3)
    with torch.inference_mode():
        ref = m(ids, use_cache=False).logits
        assert mergeplug.token_counts(m)[-1] < 60
        for t in (0, 19, 20, 33, 50):
            ids2 = ids.clone()
            ids2[:, t + 1 :] = ids2[:, t + 1 :] % 99 + 1
            out = m(ids2, use_cache=False).logits
            assert (out[:, : t + 1] - ref[:, : t + 1]).abs().max() <= 1e-4, t
            assert (out[:, t + 1 :] - ref[:, t + 1 :]).abs().max() > 1e-3, t


def test_fast_sampling_exact_mode_on_the_device():
    pipe = chronos_t5("test", context_length=64, prediction_length=4, num_samples=3)
    pipe.model.to(DEVICE)
    ctx = _walk(3, 64)

    def run() -> torch.Tensor:
        torch.manual_seed(0)
        if DEVICE.type == "cuda":
            torch.cuda.manual_seed_all(0)
        return pipe.predict(ctx, prediction_length=4)

    with torch.inference_mode():
        mergeplug.apply(pipe, **MERGE)
        stock = run()
        mergeplug.fast_sampling(pipe)
        assert torch.equal(run(), stock)
        mergeplug.remove(pipe)
