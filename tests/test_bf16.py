"""bfloat16, as Chronos' README loads its models: token merging, fast sampling and binarized layers.

Tiny random models built from configs (no download), short contexts (bfloat16 matrix products are slow on CPUs).

Token counts in bfloat16 equal those of the float32 run: in the plain r / ratio mode (``safe=False``) a count depends
on the schedule and on the cap "what the most constrained row can merge", which the mask, the protected tokens and the
band decide, not the similarity values. Settings that compare similarities (``min_similarity``, the strict causal
``threshold``, the period search of ``period="auto"``; the forecast-safe defaults use the last two or three) can
decide differently where a similarity sits at a threshold or two lags score alike, because bfloat16 features are not
the float32 ones (similarities themselves are computed in float32 either way). The position test therefore feeds
features that bfloat16 holds exactly (small integers), so both runs compare the very same float32 similarities.

The last test runs merged forwards with ``meta`` as the default device, so that a tensor created without ``device=``
(which on a GPU would land on the CPU) fails on a CPU-only machine too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import mergeplug
from mergeplug.merge import MergeState, causal_bias, causal_unmerge, match, merge_step
from mergeplug.models import chronos2, chronos_bolt, chronos_t5

BF16 = torch.bfloat16
MERGE = {"k": 1, "ratio": 0.3, "safe": False}  # plain merging: contexts here are short


def _flat(out: Any) -> list[torch.Tensor]:
    """The tensors of an output: a tensor, or a (nested) list / tuple of them."""
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for item in out for t in _flat(item)]


def _assert_equal(a: Any, b: Any) -> None:
    fa, fb = _flat(a), _flat(b)
    assert len(fa) == len(fb) and all(x.dtype == y.dtype and torch.equal(x, y) for x, y in zip(fa, fb, strict=True))


def _walk(*shape: int, seed: int) -> torch.Tensor:
    """A float32 random walk along dim 1 (neighbouring tokens alike, as in a time series)."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).cumsum(1)


def _series(n_b: int, n: int, seed: int = 0) -> torch.Tensor:
    """(n_b, n) random walks; row 1 starts with missing values (padding)."""
    ctx = _walk(n_b, n, seed=seed)
    ctx[1, : n // 5] = float("nan")
    return ctx


def _like(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x`` on the model's device, in its dtype (tests/test_cuda.py runs these builders on a GPU)."""
    p = next(model.parameters())
    return x.to(p.device, p.dtype)


def _dtype(model: nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


# --------------------------------------------------------------------------------------------------- families
# Each case builds a float32 model and returns (object to patch, module to cast to bfloat16, run): run() gives the
# outputs for fixed inputs (cast to the module's dtype where the model does not cast them itself).
Case = tuple[Any, nn.Module, Callable[[], Any]]


def _chronos_t5() -> Case:
    pipe = chronos_t5("test", context_length=64, prediction_length=4, num_samples=2)
    ctx = _series(3, 64)

    def run() -> torch.Tensor:
        torch.manual_seed(0)
        return pipe.predict(ctx, prediction_length=4)

    return pipe, pipe.model, run


def _chronos_bolt() -> Case:
    pipe = chronos_bolt("test", context_length=256)
    ctx = _series(2, 256)
    return pipe, pipe.model, lambda: pipe.predict(ctx, prediction_length=16)


def _chronos2() -> Case:
    pipe = chronos2("test", context_length=256)
    ctx, groups = _series(4, 256), torch.tensor([0, 0, 1, 2])

    def run() -> list[torch.Tensor]:
        grouped = pipe.model(ctx, group_ids=groups, num_output_patches=2).quantile_preds
        return [grouped, *pipe.predict(ctx[:, None], prediction_length=16)]

    return pipe, pipe.model, run


def _patchtst() -> Case:
    from transformers import PatchTSTConfig, PatchTSTForPrediction

    torch.manual_seed(0)
    config = PatchTSTConfig(num_input_channels=2, context_length=128, prediction_length=12, patch_length=8,
                            patch_stride=4, d_model=32, num_attention_heads=4, num_hidden_layers=3,
                            ffn_dim=64)  # fmt: skip
    model = PatchTSTForPrediction(config).eval()
    x = _walk(3, 128, 2, seed=1)
    return model, model, lambda: model(past_values=_like(model, x)).prediction_outputs


def _torch_encoder() -> Case:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
    enc = nn.TransformerEncoder(layer, 4, enable_nested_tensor=False).eval()
    x = _walk(2, 40, 32, seed=1) / 4
    return enc, enc, lambda: enc(_like(enc, x))


def _time_series_transformer() -> Case:
    from transformers import TimeSeriesTransformerConfig, TimeSeriesTransformerForPrediction

    torch.manual_seed(0)
    config = TimeSeriesTransformerConfig(prediction_length=8, context_length=48, lags_sequence=[1, 2, 3],
                                         num_time_features=1, d_model=16, encoder_layers=3, decoder_layers=1,
                                         encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                                         decoder_ffn_dim=32, dropout=0.0)  # fmt: skip
    model = TimeSeriesTransformerForPrediction(config).eval()
    g = torch.Generator().manual_seed(0)
    batch = dict(
        past_values=torch.randn(2, 51, generator=g).cumsum(1),
        past_time_features=torch.linspace(0, 1, 51).expand(2, 51)[..., None],
        past_observed_mask=torch.ones(2, 51),
        future_values=torch.randn(2, 8, generator=g),
        future_time_features=torch.linspace(1, 1.2, 8).expand(2, 8)[..., None],
    )

    def run() -> torch.Tensor:
        dtype = _dtype(model)
        return model(**{key: v.to(dtype) for key, v in batch.items()}).loss

    return model, model, run


CASES: dict[str, Callable[[], Case]] = {
    "chronos-t5": _chronos_t5,
    "chronos-bolt": _chronos_bolt,
    "chronos-2": _chronos2,
    "patchtst": _patchtst,
    "torch-transformer-encoder": _torch_encoder,
    "hf-time-series": _time_series_transformer,
}


@pytest.mark.parametrize("dtype", [BF16, torch.float64])
@pytest.mark.parametrize("family", list(CASES))
def test_merging_in_bfloat16_and_float64(family, dtype):
    """Merged bfloat16 (and float64: issue 34, point 11, once an overflow in the attention bias) outputs are finite
    with the float32 token counts; r=0 and remove() are bitwise those of the unpatched model in that dtype."""
    obj, module, run = CASES[family]()
    with torch.inference_mode():
        mergeplug.apply(obj, **MERGE)
        run()
        counts32 = mergeplug.token_counts(obj)
        mergeplug.remove(obj)
        module.to(dtype)
        ref = run()
        mergeplug.apply(obj, k=1, r=0)
        _assert_equal(run(), ref)  # nothing merges: the original bfloat16 computation
        mergeplug.apply(obj, **MERGE)
        merged = run()
        assert all(torch.isfinite(t).all() for t in _flat(merged))
        counts = mergeplug.token_counts(obj)
        assert counts == counts32 and counts[-1] < counts[0]
        mergeplug.remove(obj)
        _assert_equal(run(), ref)


# ---------------------------------------------------------------------------------------- fast sampling, binary
def _bf16_chronos_t5() -> tuple[Any, Callable[[], torch.Tensor]]:
    pipe, module, run = _chronos_t5()
    module.to(BF16)
    return pipe, run


@pytest.mark.parametrize("merge", [None, MERGE])
def test_fast_sampling_in_bfloat16(merge):
    """exact=True samples stock generate()'s tokens for a seed in bfloat16 too; exact=False samples finite paths."""
    pipe, run = _bf16_chronos_t5()
    with torch.inference_mode():
        if merge:
            mergeplug.apply(pipe, **merge)
        stock = run()
        mergeplug.fast_sampling(pipe)
        _assert_equal(run(), stock)
        mergeplug.fast_sampling(pipe, exact=False)
        top_k = run()
        assert top_k.shape == stock.shape and torch.isfinite(top_k).all()
        mergeplug.remove(pipe)


def test_binarized_layers_in_bfloat16():
    """Binarized bfloat16 layers: finite forecasts, with merging and the fast sampler; undoing both is bitwise."""
    pipe, run = _bf16_chronos_t5()
    with torch.inference_mode():
        ref = run()
        mergeplug.binarize(pipe, density=0.3)
        binary = run()
        assert torch.isfinite(binary).all() and not torch.equal(binary, ref)
        mergeplug.apply(pipe, **MERGE)
        stock = run()
        assert torch.isfinite(stock).all() and mergeplug.token_counts(pipe)[-1] < mergeplug.token_counts(pipe)[0]
        mergeplug.fast_sampling(pipe)
        _assert_equal(run(), stock)  # the fast path reads the binary layers
        mergeplug.remove(pipe)
        mergeplug.unbinarize(pipe)
        _assert_equal(run(), ref)


@pytest.mark.parametrize("alpha", ["layer", "row"])
def test_binary_alpha_sums_and_counts_in_float32(alpha):
    """alpha of a bfloat16 layer is the float32 mean |W| over the kept weights, rounded once to bfloat16.

    Rows keep about 300 of 600 weights here: a bfloat16 count of kept weights above 256 rounds (to even numbers)."""
    torch.manual_seed(0)
    lin = nn.Linear(600, 8).to(BF16)
    mergeplug.binarize(lin, density=0.5, alpha=alpha)
    kept = lin.signed_mask().abs().float()
    kept_mag = lin.state_dict()["weight"].float().abs() * kept  # the layer's own weight: W of init="weights"
    if alpha == "layer":
        expected = kept_mag.sum() / kept.sum()
    else:
        expected = kept_mag.sum(1, keepdim=True) / kept.sum(1, keepdim=True)
        assert (kept.sum(1) % 2 == 1).any() and (kept.sum(1) > 256).all()  # counts bfloat16 would round
    assert lin.alpha_tensor().dtype == BF16 and torch.equal(lin.alpha_tensor(), expected.to(BF16))
    assert torch.isfinite(lin(torch.randn(3, 600, dtype=BF16))).all()


# ------------------------------------------------------------------------------------------ positions above 256
class _Relay(nn.Module):
    """Blocks that pass the hidden states through unchanged: the output is exactly what merging between the blocks
    and restoring every position made of the input."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([nn.Identity(), nn.Identity()])  # one merge step, after the first block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


@pytest.fixture(scope="module")
def relay() -> _Relay:
    mergeplug.register_patch(_Relay, blocks="blocks", name="bf16-relay")
    return _Relay()


def _integer_walk(n: int, seed: int = 0) -> torch.Tensor:
    """(1, n, 8) integer random walk: bfloat16 holds it exactly, and so the mean of any two tokens."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-1, 2, (1, n, 8), generator=g).cumsum(1).float()


@pytest.mark.parametrize("merge", [{"threshold": 0.9}, {"r": 200}])
def test_generic_positions_above_256_are_exact_in_bfloat16(relay, merge):
    """The generic family keeps token positions in float32: with 600 tokens, a bfloat16 position would round (e.g.
    301 to 300), and causal unmerging would then fill position 300 from the token at 301.

    Features and merged features (means of two tokens) are exact in bfloat16, and similarities are computed in
    float32, so the bfloat16 run must merge the same tokens and restore every position from the same token as the
    float32 run: its output is the float32 output, bitwise."""
    x = _integer_walk(600)
    mergeplug.apply(relay, k=1, causal=True, **merge)
    with torch.inference_mode():
        out32 = relay(x)
        counts32 = mergeplug.token_counts(relay)
        out = relay(x.to(BF16))
        assert mergeplug.token_counts(relay) == counts32 and counts32[-1] < 500
        assert out.dtype == BF16 and torch.equal(out, out32.to(BF16))
        if "threshold" in merge:  # strict mode: no output at p may depend on inputs after p
            for t in (299, 300, 301, 400, 511, 512, 513, 598):
                x2 = x.clone()
                x2[:, t + 1 :] += 40.0
                assert torch.equal(relay(x2.to(BF16))[:, : t + 1], out[:, : t + 1]), t


# ------------------------------------------------------------------------------------------------------- devices
def _llama() -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                         num_hidden_layers=3, max_position_embeddings=128)  # fmt: skip
    return LlamaForCausalLM(config).eval()


def _engine() -> Callable[[], list[torch.Tensor]]:
    """The merge engine on its own: groups, seasonal twins, the period search, global and strict causal merging,
    causal unmerging and the causal mask without proportional attention (inputs made here, outside the test's
    default device)."""
    metric, groups = _walk(4, 64, 8, seed=2), torch.tensor([0, 0, 1, 2])
    mask = torch.ones(4, 64, dtype=torch.bool)
    mask[1, :10] = False

    def run() -> list[torch.Tensor]:
        out = []
        for kw in ({"groups": groups, "period": "auto", "min_similarity": 0.2}, {"k": None}, {"period": 6.0}):
            state = MergeState.init(4, 64, mask=mask, device=metric.device)
            dst, t_new = match(metric, state, r=12, **kw)
            out += [merge_step(metric, state, dst, t_new), state.pos, state.source]
        state = MergeState.init(4, 64, mask=mask, causal=True, device=metric.device)
        dst, t_new = match(metric, state, threshold=0.5)
        merged = merge_step(metric, state, dst, t_new)
        bias = causal_bias(state.pos, state.pos, state.size, state.mask, torch.float32, proportional=False)
        return [*out, causal_unmerge(merged, state), bias]

    return run


def _merged_forwards() -> list[Callable[[], Any]]:
    """Merged forwards through the engine and the families whose own (unmerged) code runs with ``meta`` as the
    default device (Chronos-2's and the T5 decoder's own code create tensors there, so they are left out)."""
    pipe = chronos_t5("test", context_length=100, prediction_length=4, num_samples=2)
    mergeplug.apply(pipe, k=1, ratio=0.3, input_ratio=0.1)  # forecast-safe: EOS, recent tokens, period "auto"
    mergeplug.fast_sampling(pipe)
    ids = torch.randint(2, 4000, (3, 100), generator=torch.Generator().manual_seed(0))
    ids[:, -1] = 1  # EOS
    padding = torch.ones(3, 100, dtype=torch.long)
    padding[1, :30] = 0

    def sample() -> torch.Tensor:
        torch.manual_seed(0)
        return pipe.model(ids, padding)

    bolt, _, run_bolt = _chronos_bolt()
    mergeplug.apply(bolt, k=1, ratio=0.3)  # forecast-safe: period "auto", [REG] and recent tokens protected
    patchtst, _, run_patchtst = _patchtst()
    mergeplug.apply(patchtst, k=1, ratio=0.3)  # forecast-safe: min_similarity too
    enc = _torch_encoder()[0]
    mergeplug.apply(enc, k=1, causal=True, threshold=0.5)
    x, causal = _walk(2, 40, 32, seed=1) / 4, nn.Transformer.generate_square_subsequent_mask(40)
    lm = _llama()
    mergeplug.apply(lm, k=1, causal=True, ratio=0.3, proportional_attention=False)
    tokens = torch.randint(0, 100, (2, 40), generator=torch.Generator().manual_seed(0))
    return [
        _engine(),
        sample,
        run_bolt,
        run_patchtst,
        lambda: enc(x, mask=causal, is_causal=True),
        lambda: lm.generate(tokens, attention_mask=torch.ones_like(tokens), max_new_tokens=3, do_sample=False),
    ]


def test_no_tensor_is_created_on_the_default_device():
    """With ``meta`` as the default device, a tensor created without ``device=`` is a meta tensor: mixing it with the
    CPU inputs raises, or it reaches the output. So the merged forwards must give their CPU outputs, bitwise."""
    forwards = _merged_forwards()
    with torch.inference_mode():
        refs = [run() for run in forwards]
        with torch.device("meta"):
            outs = [run() for run in forwards]
    for ref, out in zip(refs, outs, strict=True):
        assert all(t.device.type == "cpu" for t in _flat(out))
        _assert_equal(out, ref)
