"""mergeplug.apply / remove on Chronos-T5 and Chronos-Bolt built from configs (no download).

The merge mechanics are checked with plain merging (``safe=False``); the forecast-safe defaults are tested in
tests/test_forecast_safe.py."""

import math

import pytest
import torch
from conftest import assert_pristine
from torch import nn
from transformers.models.t5.modeling_t5 import T5ForConditionalGeneration, T5Stack

import mergeplug
from mergeplug.config import MergeConfig, schedule_for_reduction
from mergeplug.merge import MergeState
from mergeplug.models import chronos_bolt, chronos_t5
from mergeplug.patches.base import PatchRecord, record_of
from mergeplug.patches.t5 import MergedEncoderOutput, merged_encoder_forward
from mergeplug.patches.t5_layers import _lookup_bias, relative_bias


@pytest.fixture(scope="module")
def t5_pipe():
    return chronos_t5("test", prediction_length=6, num_samples=5)


@pytest.fixture(scope="module")
def bolt_pipe():
    return chronos_bolt("test", context_length=512, prediction_length=32)


def _context(n_b=3, n=120, seed=0, nan_prefix=25):
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n, dtype=torch.float32)
    ctx = 10 + 3 * torch.sin(2 * torch.pi * t / 24) + torch.randn(n_b, n, generator=g).cumsum(-1) * 0.2
    if nan_prefix:
        ctx[0, :nan_prefix] = float("nan")  # a shorter series, left-padded with NaN
    return ctx


def _t5_outputs(pipe, ctx):
    torch.manual_seed(123)
    samples = pipe.predict(ctx, prediction_length=6)
    torch.manual_seed(123)
    quantiles, mean = pipe.predict_quantiles(ctx, prediction_length=6)
    emb, scale = pipe.embed(ctx)
    return samples, quantiles, mean, emb


def _bolt_outputs(pipe, ctx):
    quantiles, mean = pipe.predict_quantiles(ctx, prediction_length=32)
    return pipe.predict(ctx, prediction_length=32), quantiles, mean, pipe.embed(ctx)[0]


def _assert_all_equal(a, b):
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)


@pytest.mark.parametrize("zero", [{"r": 0}, {"ratio": 0.0}, {"r": [0, 0]}])
def test_t5_r0_is_bitwise_original_and_remove_restores(t5_pipe, zero):
    ctx = _context()
    ref = _t5_outputs(t5_pipe, ctx)
    mergeplug.apply(t5_pipe, safe=False, k=1, **zero)
    _assert_all_equal(_t5_outputs(t5_pipe, ctx), ref)
    mergeplug.apply(t5_pipe, safe=False, k=1, r=8)
    merged = _t5_outputs(t5_pipe, ctx)
    assert not torch.equal(merged[3], ref[3])
    mergeplug.remove(t5_pipe)
    assert_pristine(t5_pipe.model)
    assert type(t5_pipe.model.model) is T5ForConditionalGeneration and type(t5_pipe.model.model.encoder) is T5Stack
    _assert_all_equal(_t5_outputs(t5_pipe, ctx), ref)


@pytest.mark.parametrize("zero", [{"r": 0}, {"ratio": 0.0}])
def test_bolt_r0_is_bitwise_original_and_remove_restores(bolt_pipe, zero):
    ctx = _context(n=400, nan_prefix=100)
    ref = _bolt_outputs(bolt_pipe, ctx)
    mergeplug.apply(bolt_pipe, safe=False, **zero)
    _assert_all_equal(_bolt_outputs(bolt_pipe, ctx), ref)
    mergeplug.apply(bolt_pipe, safe=False, ratio=0.3)
    merged = _bolt_outputs(bolt_pipe, ctx)
    assert not torch.equal(merged[0], ref[0])
    mergeplug.remove(bolt_pipe)
    assert_pristine(bolt_pipe.model)
    _assert_all_equal(_bolt_outputs(bolt_pipe, ctx), ref)


def test_t5_merged_pipeline_end_to_end(t5_pipe):
    ctx = _context()
    try:
        mergeplug.apply(t5_pipe, safe=False, k=1, ratio=0.25)
        samples, quantiles, mean, emb = _t5_outputs(t5_pipe, ctx)
        assert samples.shape == (3, 5, 6) and quantiles.shape == (3, 6, 9) and mean.shape == (3, 6)
        assert emb.shape == (3, 121, 64)  # one embedding per context value + EOS, as documented
        assert torch.isfinite(samples).all() and torch.isfinite(emb).all()
        token_ids, mask, _ = t5_pipe.tokenizer.context_input_transform(ctx)
        out = t5_pipe.model.model.encoder(input_ids=token_ids, attention_mask=mask)
        assert isinstance(out, MergedEncoderOutput)
        # 2 layers, 25% of the current tokens per layer: 121 -> 91 -> 68
        assert out.last_hidden_state.shape == (3, 68, 64)
        assert mergeplug.token_counts(t5_pipe) == [121, 91, 68]
        assert out.token_sizes.sum(1).tolist() == [121.0] * 3
        # EOS (last) is protected; padding (row 0's NaN prefix) merged only with padding
        assert (out.token_sizes[:, -1] == 1).all() and (out.token_source[:, -1] == 67).all()
        for b in range(3):
            members_real = mask[b].bool()
            for slot in range(68):
                m = members_real[out.token_source[b] == slot]
                assert m.all() or (~m).all()
                assert out.token_mask[b, slot] == m[0]
        assert out.token_mask[0].sum() < 68 and out.token_mask[1].all()
    finally:
        mergeplug.remove(t5_pipe)


def test_input_merging_happens_before_the_first_block(t5_pipe):
    """input_ratio merges input embeddings before block 0; exact duplicates of the input merge first."""
    ctx = _context(nan_prefix=0)
    ctx[:, 40:60] = ctx[:, 40:41]  # a flat stretch: identical tokens, identical embeddings
    token_ids, mask, _ = t5_pipe.tokenizer.context_input_transform(ctx)
    encoder = t5_pipe.model.model.encoder
    try:
        mergeplug.apply(t5_pipe, safe=False, k=1, input_ratio=0.05)  # round(0.05 * 121) = 6 merges, none in the layers
        with torch.no_grad():
            out = encoder(input_ids=token_ids, attention_mask=mask)
        assert out.last_hidden_state.shape == (3, 115, 64)
        for b in range(3):  # every merge joined identical tokens (cosine 1), most in the flat stretch
            for slot in (out.token_sizes[b] > 1).nonzero().flatten():
                members = (out.token_source[b] == slot).nonzero().flatten()
                assert len(set(token_ids[b, members].tolist())) == 1
        with torch.no_grad():
            torch.manual_seed(0)
            assert torch.isfinite(t5_pipe.predict(ctx, prediction_length=3)).all()
    finally:
        mergeplug.remove(t5_pipe)


def test_cross_attention_reads_merged_memory_with_sizes(t5_pipe):
    """Two identical memory tokens merged into one of size 2 (log 2 bias) give the same decoder output."""
    model = t5_pipe.model.model
    token_ids, mask, _ = t5_pipe.tokenizer.context_input_transform(_context(nan_prefix=0))
    with torch.no_grad():
        memory = model.encoder(input_ids=token_ids, attention_mask=mask).last_hidden_state  # (3, 121, C)
        dup = torch.cat([memory[:, :1], memory], dim=1)  # token 0 twice
        dec = torch.zeros(3, 4, dtype=torch.long)
        ref = model(encoder_outputs=(dup,), attention_mask=torch.ones(3, 122), decoder_input_ids=dec).logits
        merged = MergedEncoderOutput(
            last_hidden_state=memory,
            token_sizes=torch.cat([torch.full((3, 1), 2.0), torch.ones(3, 120)], dim=1),
            token_mask=torch.ones(3, 121, dtype=torch.bool),
            token_positions=torch.arange(121.0).expand(3, -1),
            token_source=torch.cat([torch.zeros(3, 1, dtype=torch.long), torch.arange(121).expand(3, -1)], dim=1),
        )
        try:
            mergeplug.apply(t5_pipe, safe=False, r=4)
            out = model(encoder_outputs=merged, attention_mask=torch.ones(3, 122), decoder_input_ids=dec).logits
            mergeplug.apply(t5_pipe, safe=False, r=4, proportional_attention=False)
            no_prop = model(encoder_outputs=merged, attention_mask=torch.ones(3, 122), decoder_input_ids=dec).logits
        finally:
            mergeplug.remove(t5_pipe)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(no_prop, ref, rtol=1e-4, atol=1e-4)


def test_merged_encoder_loop_matches_stock_when_nothing_merges(t5_pipe):
    """The merging forward re-implements T5Stack's loop; with no merges it must agree with the original."""
    encoder = t5_pipe.model.model.encoder
    ctx = _context()
    token_ids, mask, _ = t5_pipe.tokenizer.context_input_transform(ctx)
    with torch.no_grad():
        ref = encoder(input_ids=token_ids, attention_mask=mask).last_hidden_state
        record = PatchRecord("t5", MergeConfig(r=0))
        try:
            mergeplug.apply(t5_pipe, safe=False, r=1)  # installs the key hooks; record below captures nothing merged
            out = merged_encoder_forward(encoder, record, token_ids, mask, None)
        finally:
            mergeplug.remove(t5_pipe)
    real = mask.bool()
    torch.testing.assert_close(out.last_hidden_state[real], ref[real], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("input_ratio", [0.5, 0.75, 0.9])
def test_input_ratio_above_one_half_runs_several_input_steps(t5_pipe, input_ratio):
    """Up to one half: one merge step before block 0 (as before); above it, further steps on the merged input
    tokens until the count is reached. Every block then runs on the reduced sequence; sizes still add up, the
    source map stays in order (local merging keeps temporal order) and the forecast is finite."""
    ctx = _context(nan_prefix=0)
    token_ids, mask, _ = t5_pipe.tokenizer.context_input_transform(ctx)
    encoder = t5_pipe.model.model.encoder
    n = token_ids.shape[1]
    try:
        mergeplug.apply(t5_pipe, safe=False, k=1, **schedule_for_reduction(input_ratio, 2, "input"))
        with torch.no_grad():
            out = encoder(input_ids=token_ids, attention_mask=mask)
        kept = n - math.floor(input_ratio * n + 0.5) if input_ratio > 0.5 else n - min(n // 2, round(0.5 * n))
        assert mergeplug.token_counts(t5_pipe) == [kept] * 3
        assert out.token_sizes.sum(1).tolist() == [float(n)] * 3
        assert (out.token_source.diff(dim=1) >= 0).all()
        with torch.no_grad():
            torch.manual_seed(0)
            assert torch.isfinite(t5_pipe.predict(ctx, prediction_length=3)).all()
    finally:
        mergeplug.remove(t5_pipe)


def test_relative_bias_follows_merged_positions(t5_pipe):
    encoder = t5_pipe.model.model.encoder
    attn0 = encoder.block[0].layer[0].SelfAttention
    full = attn0.compute_bias(50, 50)[0]  # (H, 50, 50)
    state = MergeState.init(2, 5)
    state.pos = torch.tensor([[0.0, 2.0, 5.25, 9.0, 30.0], [1.0, 3.0, 4.0, 12.0, 48.75]])
    bias = relative_bias(encoder, state, merged=True)
    assert bias.shape == (2, attn0.n_heads, 5, 5)
    for b in range(2):
        p = state.pos[b].round().long()
        torch.testing.assert_close(bias[b], full[:, p][:, :, p])
    # before any merge: bitwise compute_bias (from the 2L+1 distances' buckets), encoder and decoder alike
    for stack in (encoder, t5_pipe.model.model.decoder):
        for n in (50, 300):
            unmerged = relative_bias(stack, MergeState.init(2, n), merged=False)
            assert torch.equal(unmerged, stack.block[0].layer[0].SelfAttention.compute_bias(n, n))


@pytest.mark.parametrize("extra_shape", [None, (3, 1, 1, 6), (3, 1, 6, 6), (1, 1, 1, 6)])
def test_relative_bias_lookup_is_the_same_row_by_row_and_batched(extra_shape):
    """The CPU path (one index_select per row, extra added per row) and the one-kernel path (used off CPU) agree
    bitwise with a gather from the table expanded over heads."""
    torch.manual_seed(5)
    values = torch.randn(4, 21)
    rel = torch.randint(0, 21, (3, 6, 6), dtype=torch.int32)
    extra = None if extra_shape is None else torch.randn(extra_shape)
    ref = values[None, :, None, :].expand(3, 4, 6, 21).gather(3, rel.long()[:, None].expand(3, 4, 6, 6))
    ref = ref if extra is None else ref + extra
    for rowwise in (True, False):
        out = _lookup_bias(values, rel, extra, rowwise=rowwise)
        assert out.is_contiguous() and torch.equal(out, ref), rowwise
    grad_table = values.clone().requires_grad_()  # training: no out= (autograd cannot carry it), same numbers
    out = _lookup_bias(grad_table, rel, extra, rowwise=True)
    assert out.is_contiguous() and torch.equal(out.detach(), ref)
    out.sum().backward()
    assert grad_table.grad.sum() == out.numel()


def test_batch_rows_merge_independently(t5_pipe):
    """Vectorised merging: each row of a batch (same length, no padding) merges as it would alone."""
    ctx = _context(nan_prefix=0)
    token_ids, mask, _ = t5_pipe.tokenizer.context_input_transform(ctx)
    encoder = t5_pipe.model.model.encoder
    try:
        mergeplug.apply(t5_pipe, safe=False, k=3, r=20)
        with torch.no_grad():
            batch = encoder(input_ids=token_ids, attention_mask=mask).last_hidden_state
            for b in range(3):
                alone = encoder(input_ids=token_ids[b : b + 1], attention_mask=mask[b : b + 1]).last_hidden_state
                torch.testing.assert_close(batch[b : b + 1], alone, rtol=1e-5, atol=1e-5)
    finally:
        mergeplug.remove(t5_pipe)


def test_bolt_merged_end_to_end(bolt_pipe):
    ctx = _context(n=400, nan_prefix=100)
    try:
        mergeplug.apply(bolt_pipe, safe=False, k=1, r=5)
        quantiles, mean = bolt_pipe.predict_quantiles(ctx, prediction_length=32)
        assert quantiles.shape == (3, 32, 9) and torch.isfinite(quantiles).all()
        emb, _ = bolt_pipe.embed(ctx)
        assert emb.shape == (3, 26, 64)  # 25 patches of 16 + [REG]
        model = bolt_pipe.model
        hidden, _, _, attention_mask = model.encode(ctx)  # a direct call keeps the per-patch contract
        assert hidden.shape == (3, 26, 64) and attention_mask.shape == (3, 26)
        out = model.encoder(inputs_embeds=torch.randn(1, 26, 64))  # the merged encoder output itself
        assert out.last_hidden_state.shape[1] == 26 - 2 * 5  # 2 layers x r=5
        assert out.token_sizes[0, -1] == 1  # [REG] never merges
        assert not record_of(model).calls.active  # no call state outlives its call
    finally:
        mergeplug.remove(bolt_pipe)


def test_applying_twice_replaces_settings(t5_pipe):
    try:
        mergeplug.apply(t5_pipe, safe=False, k=1, r=4)
        mergeplug.apply(t5_pipe, safe=False, k=None, ratio=0.1)
        cfg = mergeplug.settings(t5_pipe)
        assert cfg.k is None and cfg.ratio == 0.1 and cfg.r is None
        mro = type(t5_pipe.model.model.encoder).__mro__
        assert sum(c.__name__.startswith("_Merging") for c in mro) == 1  # not stacked
        assert len(t5_pipe.model.model.encoder.block[0].layer[0].SelfAttention.k._forward_hooks) == 1
        # the inner HF model and the pipeline share one record
        mergeplug.apply(t5_pipe.model.model, safe=False, r=2)
        assert mergeplug.settings(t5_pipe).r == 2
    finally:
        mergeplug.remove(t5_pipe)
    assert mergeplug.settings(t5_pipe) is None


def test_inner_models_are_accepted(t5_pipe, bolt_pipe):
    ctx = _context(nan_prefix=0)
    for obj in (t5_pipe.model.model, t5_pipe.model, t5_pipe.inner_model, bolt_pipe.model):
        mergeplug.apply(obj, safe=False, r=3)
        assert mergeplug.settings(obj).r == 3
        mergeplug.remove(obj)
    mergeplug.apply(t5_pipe.inner_model, safe=False, r=3)
    try:
        torch.manual_seed(0)
        assert torch.isfinite(t5_pipe.predict(ctx, prediction_length=3)).all()
    finally:
        mergeplug.remove(t5_pipe.inner_model)
    assert_pristine(t5_pipe.model)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"k": 0}, "k must be >= 1"),
        ({"k": -3}, "k must be >= 1"),
        ({"k": 1.5}, "k must be an int"),
        ({"r": -1}, "r must be an int >= 0"),
        ({"r": [2, -1]}, "r must be an int >= 0"),
        ({"ratio": 1.0}, r"ratio must be in \[0, 1\)"),
        ({"ratio": -0.1}, r"ratio must be in \[0, 1\)"),
        ({"r": 2, "ratio": 0.1}, "only one of"),
        ({"threshold": 0.9}, "causal=True"),
        ({"causal": True, "r": 4}, "bidirectional"),
    ],
)
def test_bad_settings_raise_value_error(t5_pipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        mergeplug.apply(t5_pipe, safe=False, **kwargs)
    assert_pristine(t5_pipe.model)


def test_unsupported_objects_raise_type_error():
    with pytest.raises(TypeError, match=r"(?s)chronos-t5.*chronos-bolt.*mergeplug/patches/"):
        mergeplug.apply(nn.Linear(3, 3), r=1)
    with pytest.raises(TypeError, match="does not support"):
        mergeplug.remove("not a model")


@pytest.mark.parametrize("key", ["r", "ratio"])
def test_per_layer_lists_longer_than_the_model_are_refused(t5_pipe, bolt_pipe, key):
    """Values past the last layer used to be dropped silently; now the list must fit the merging stack."""
    for pipe in (t5_pipe, bolt_pipe):
        layers = pipe.inner_model.config.num_layers
        value = [1] * (layers + 1) if key == "r" else [0.1] * (layers + 1)
        with pytest.raises(
            ValueError, match=rf"{key} has {layers + 1} per-layer values but this .* merges in {layers}"
        ):
            mergeplug.apply(pipe, k=1, **{key: value}, safe=False)
        assert mergeplug.settings(pipe) is None  # nothing was left patched
        fits = value[:layers]
        mergeplug.apply(pipe, k=1, **{key: fits}, safe=False)
        with pytest.raises(ValueError, match="per-layer values"):  # re-applying to a patched model checks too
            mergeplug.apply(pipe, k=1, **{key: value}, safe=False)
        assert getattr(mergeplug.settings(pipe), key) == fits  # the settings in force stay
        mergeplug.remove(pipe)
