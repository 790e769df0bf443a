"""TimesFM 2.5 (transformers): causal merging inside the decoder layers, the read-out patch protected."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_pristine
from transformers import TimesFm2_5Config, TimesFm2_5ModelForPrediction

import mergeplug
from mergeplug.patches.timesfm import token_source

PATCH = 32


def _model(dtype: torch.dtype = torch.float32) -> TimesFm2_5ModelForPrediction:
    torch.manual_seed(0)
    cfg = TimesFm2_5Config(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                           num_key_value_heads=4, head_dim=8, context_length=1024, horizon_length=64,
                           patch_length=PATCH, output_quantile_len=128)  # fmt: skip
    return TimesFm2_5ModelForPrediction(cfg).eval().to(dtype)


def _series(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1024, generator=g).cumsum(0), torch.randn(600, generator=g).cumsum(0)]  # ragged: padding


def _outputs(model: TimesFm2_5ModelForPrediction, series: list[torch.Tensor]) -> list[torch.Tensor]:
    with torch.no_grad():
        out = model(past_values=series)
    return [out.mean_predictions, out.full_predictions]


def test_r0_and_remove_are_bitwise_and_merging_changes_the_forecast():
    model, x = _model(), _series()
    ref = _outputs(model, x)
    mergeplug.apply(model, k=1, r=0, causal=True)
    assert all(torch.equal(a, b) for a, b in zip(_outputs(model, x), ref, strict=True))
    mergeplug.apply(model, k=1, ratio=0.3, causal=True, safe=False)
    merged = _outputs(model, x)
    counts = mergeplug.token_counts(model)
    assert counts[0] == 32 and counts[-1] < 16 and all(torch.isfinite(t).all() for t in merged)
    assert not torch.equal(merged[0], ref[0])
    mergeplug.remove(model)
    assert_pristine(model)
    assert all(torch.equal(a, b) for a, b in zip(_outputs(model, x), ref, strict=True))


def test_every_layer_runs_once_on_the_merged_tokens():
    """Each layer's MLP runs once per forward, on the tokens left after its own merge (the model's later layer calls
    pass through after the merged loop: they must not run the layers a second time)."""
    model, x = _model(), [torch.randn(1024).cumsum(0)]
    seen: list[int] = []
    for layer in model.model.layers:
        layer.mlp.register_forward_hook(lambda m, a, o: seen.append(a[0].shape[1]))
    mergeplug.apply(model, k=1, ratio=0.3, causal=True, safe=False)
    with torch.no_grad():
        model.model(past_values=torch.stack(x))
    assert seen == mergeplug.token_counts(model)[1:]  # one call per layer, each on its merged length
    seen.clear()
    mergeplug.apply(model, k=1, r=0, causal=True)
    with torch.no_grad():
        model.model(past_values=torch.stack(x))
    assert seen == [32, 32, 32]


def test_strict_mode_never_lets_a_patch_see_later_patches():
    """With ``threshold``, every output up to patch t stays when the inputs after patch t change (to float rounding:
    the merged length, and so the shape of the matrix products, may change), and the later ones move."""
    model = _model()
    base = model.model
    x = torch.randn(2, 1024, generator=torch.Generator().manual_seed(1)).cumsum(1)
    mergeplug.apply(model, k=1, causal=True, threshold=0.0, safe=False)
    with torch.no_grad():
        ref = base(past_values=x).last_hidden_state
        assert mergeplug.token_counts(model)[-1] < 32  # the strict mode merged
        for t in (5, 17, 30):
            y = x.clone()
            y[:, (t + 1) * PATCH :] += torch.randn_like(y[:, (t + 1) * PATCH :]) * 5
            out = base(past_values=y).last_hidden_state
            assert (out[:, : t + 1] - ref[:, : t + 1]).abs().max() <= 1e-5, t
            assert (out[:, t + 1 :] - ref[:, t + 1 :]).abs().max() > 1e-3, t


def test_the_read_out_patch_and_the_newest_patches_never_merge():
    model = _model()
    mergeplug.apply(model, k=None, ratio=0.45, causal=True, protect_recent=6, safe=False)
    _outputs(model, [torch.randn(1024).cumsum(0)])
    src = token_source(model)[0]
    assert mergeplug.token_counts(model)[-1] < 16
    for p in range(32 - 6, 32):  # each of the 6 newest patches is a token of its own
        assert (src == src[p]).sum() == 1, p


def test_bfloat16_runs_finite_with_the_float32_token_counts():
    x = _series()
    counts = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = mergeplug.apply(_model(dtype), k=1, ratio=0.3, causal=True, safe=False)
        out = _outputs(model, [s.to(dtype) for s in x])
        assert all(torch.isfinite(t.float()).all() for t in out)
        counts[dtype] = mergeplug.token_counts(model)
    assert counts[torch.float32] == counts[torch.bfloat16]


def test_bidirectional_settings_are_refused_and_save_load_round_trips(tmp_path):
    model = _model()
    with pytest.raises(ValueError, match="TimesFM is decoder-only"):
        mergeplug.apply(model, k=1, r=2)
    mergeplug.apply(model, k=1, ratio=0.3, causal=True)
    x = _series()
    out = mergeplug.save_pretrained(model, tmp_path / "tfm")
    loaded = mergeplug.from_pretrained(out)
    assert mergeplug.settings(loaded) == mergeplug.settings(model)
    assert all(torch.equal(a, b) for a, b in zip(_outputs(loaded, x), _outputs(model, x), strict=True))
