"""Token merging inside Hugging Face PatchTST (mergeplug/patches/patchtst.py).

The merge mechanics are checked with plain merging (``safe=False``); the forecast-safe defaults are tested in
tests/test_forecast_safe.py."""

from __future__ import annotations

import pytest
import torch
from transformers import PatchTSTConfig, PatchTSTForPrediction
from transformers.models.patchtst.modeling_patchtst import PatchTSTEncoder

import mergeplug
from mergeplug.patches.base import find_record
from mergeplug.patches.patchtst import merged_patchtst_forward


def _model(**kw) -> PatchTSTForPrediction:
    torch.manual_seed(0)
    config = PatchTSTConfig(
        num_input_channels=2,
        context_length=128,
        prediction_length=12,
        patch_length=8,
        patch_stride=4,
        d_model=32,
        num_attention_heads=4,
        num_hidden_layers=3,
        ffn_dim=64,
        loss="mse",
        **kw,
    )
    return PatchTSTForPrediction(config).eval()


def _x() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(3, 128, 2).cumsum(1)


@pytest.mark.parametrize("norm_type,pre_norm", [("batchnorm", True), ("layernorm", False)])
def test_r0_remove_and_unmerged_path_are_bitwise_original(norm_type, pre_norm):
    model = _model(norm_type=norm_type, pre_norm=pre_norm)
    x = _x()
    with torch.no_grad():
        ref = model(past_values=x).prediction_outputs
        mergeplug.apply(model, safe=False, k=1, r=0)
        assert torch.equal(model(past_values=x).prediction_outputs, ref)
        # the merging forward itself, with nothing to merge, is the original computation
        mergeplug.apply(model, safe=False, k=1, r=[0, 0, 1])
        record = find_record([model])
        record.config.r = [0, 0, 0]
        enc = model.model.encoder
        scaled, _, _ = model.model.scaler(x, torch.ones_like(x))
        patches = model.model.patchifier(scaled)
        assert torch.equal(merged_patchtst_forward(enc, record, patches), PatchTSTEncoder.forward(enc, patches)[0])
        mergeplug.apply(model, safe=False, k=1, ratio=0.3)
        merged = model(past_values=x).prediction_outputs
        assert merged.shape == ref.shape and torch.isfinite(merged).all() and not torch.equal(merged, ref)
        counts = mergeplug.token_counts(model)
        assert counts[0] == patches.shape[2] and counts == sorted(counts, reverse=True) and counts[-1] < counts[0]
        mergeplug.remove(model)
        assert torch.equal(model(past_values=x).prediction_outputs, ref)
        assert type(model.model.encoder).__name__ == "PatchTSTEncoder"


def test_global_and_local_merges_differ_and_k_spanning_the_sequence_equals_global():
    model = _model()
    x = _x()
    outs = {}
    with torch.no_grad():
        for k in (1, 3, 31, None):
            mergeplug.apply(model, safe=False, k=k, r=5)
            outs[k] = model(past_values=x).prediction_outputs
    assert not torch.equal(outs[1], outs[None])
    torch.testing.assert_close(outs[31], outs[None])


def test_unsupported_settings_are_refused():
    with pytest.raises(ValueError, match="bidirectional"):
        mergeplug.apply(_model(), k=1, causal=True, threshold=0.9)
    with pytest.raises(ValueError, match="input_ratio"):
        mergeplug.apply(_model(), k=1, r=2, input_ratio=0.5)
    patched = mergeplug.apply(_model(), k=1, r=2)  # every apply validates, not only the one that injects
    with pytest.raises(ValueError, match="input_ratio"):
        mergeplug.apply(patched, k=1, r=2, input_ratio=0.5)
    assert mergeplug.settings(patched).input_ratio == 0.0  # the refused call changed nothing
    with pytest.raises(ValueError, match="channel_attention"):
        mergeplug.apply(_model(channel_attention=True), k=1, r=2)
