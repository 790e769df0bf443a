"""Cost accounting (mergeplug/cost.py): exact counts on hand-computable models, agreement with PyTorch's counter."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import save
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from transformers import T5EncoderModel

import mergeplug
from mergeplug.cost import compare, format_comparison, profile
from mergeplug.models import chronos_bolt, chronos_t5, t5_config


def _torch_macs(fn) -> int:
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        fn()
    return counter.get_total_flops() // 2


def test_linear_exact_counts_params_and_storage():
    layer = nn.Linear(4, 5)
    rep = profile(layer, torch.randn(3, 7, 4))
    assert rep.macs == 3 * 7 * 4 * 5 and rep.flops == 2 * rep.macs and rep.nonzero_macs == rep.macs
    assert rep.params == {"total": 25, "trainable": 25, "nonzero": 25}
    assert rep.storage["fp32"] == 100 and rep.storage["bf16"] == 50
    assert rep.storage["serialized"] == len(save({"weight": layer.weight.detach(), "bias": layer.bias.detach()}))
    assert rep.series == 3 and rep.macs_per_series == 7 * 4 * 5
    layer.bias.requires_grad_(False)
    assert profile(layer, torch.randn(2, 4)).params["trainable"] == 20


def test_sparse_and_binary_linear():
    layer = nn.Linear(4, 5, bias=False)
    with torch.no_grad():
        layer.weight[:, :2] = 0.0  # 10 of 20 weights are zero
    rep = profile(layer, torch.randn(3, 7, 4))
    assert rep.macs == 420 and rep.nonzero_macs == 210 and rep.params["nonzero"] == 10
    assert rep.binary_adds == 0
    layer._mergeplug_binary = True  # ±alpha weights: additions instead of multiplications, one scale per output
    rep = profile(layer, torch.randn(3, 7, 4))
    assert rep.binary_adds == 210 and rep.binary_mults == 3 * 7 * 5


def test_conv1d_exact():
    conv = nn.Conv1d(3, 8, kernel_size=5, padding=2, groups=1)
    rep = profile(conv, torch.randn(2, 3, 40))
    assert rep.macs == 2 * 40 * 8 * 3 * 5
    grouped = nn.Conv1d(4, 8, kernel_size=3, groups=2)
    assert profile(grouped, torch.randn(1, 4, 10)).macs == 1 * 8 * 8 * (4 // 2) * 3


@pytest.mark.parametrize("need_weights", [True, False])  # bmm path / fused SDPA path
def test_attention_layer_with_known_lengths(need_weights):
    b, lq, lk, d, h = 3, 5, 7, 8, 2
    mha = nn.MultiheadAttention(d, h, batch_first=True).eval()
    q, kv = torch.randn(b, lq, d), torch.randn(b, lk, d)
    rep = profile(mha, run=lambda: mha(q, kv, kv, need_weights=need_weights))
    projections = b * lq * d * d + 2 * b * lk * d * d + b * lq * d * d
    scores = b * h * lq * lk * (d // h) * 2  # Q K^T and A V
    assert rep.macs == projections + scores


def test_cpu_sdpa_counted_where_pytorch_counter_reports_zero():
    q = torch.randn(2, 4, 16, 8)
    fn = lambda: nn.functional.scaled_dot_product_attention(q, q, q)  # noqa: E731
    rep = profile(nn.Identity(), run=fn)
    assert rep.macs == rep.sdpa_macs == 2 * 4 * 16 * 16 * (8 + 8)
    assert _torch_macs(fn) == 0  # PyTorch 2.13's counter misses the CPU flash kernel (see module docstring)


def _t5_encoder(layers: int = 3) -> T5EncoderModel:
    torch.manual_seed(0)
    cfg = t5_config("tiny", d_model=64, d_ff=128, d_kv=16, num_heads=4, num_layers=layers)
    model = T5EncoderModel(cfg).eval()
    model.set_attn_implementation("eager")
    return model


def _t5_layer_macs(b: int, t: int, t_ff: int, d: int = 64, ff: int = 128, heads: int = 4, dk: int = 16) -> int:
    """One T5 encoder layer: q/k/v/o projections and scores on t tokens, feed-forward on t_ff tokens."""
    return 4 * b * t * d * heads * dk + 2 * b * heads * t * t * dk + 2 * b * t_ff * d * ff


def test_t5_encoder_closed_form_and_components():
    model = _t5_encoder()
    b, n, d, inner, ff, layers = 2, 40, 64, 64, 128, 3
    ids = torch.randint(2, 100, (b, n))
    rep = profile(model, ids)
    assert rep.macs == layers * _t5_layer_macs(b, n, n) == _torch_macs(lambda: model(ids))
    assert rep.by_component == {
        ("encoder", "attention"): layers * 4 * b * n * d * inner,
        ("encoder", "attention-scores"): layers * 2 * b * 4 * n * n * 16,
        ("encoder", "mlp"): layers * 2 * b * n * d * ff,
    }
    assert list(rep.by_block) == [f"encoder.block.{i}" for i in range(layers)]
    assert all(rep.block_tokens[f"encoder.block.{i}"] == n for i in range(layers))
    assert "encoder attention-scores" in str(rep)


def test_merged_encoder_counts_real_tokens_and_matching():
    model = _t5_encoder()
    b, n = 2, 40
    ids = torch.randint(2, 100, (b, n))
    mergeplug.apply(model, k=1, r=8)
    rep = profile(model, ids)
    counts = rep.token_counts  # [entering block 0, leaving block 0, ...]
    assert counts == [40, 32, 24, 16]
    # matching: every layer compares ceil(T/2) A tokens with a band of 2 B tokens on 16-dim keys
    assert rep.by_component[("encoder", "matching")] == sum(b * math.ceil(t / 2) * 2 * 16 for t in counts[:-1])
    # tokens shrink inside each block after its attention: block l runs attention on counts[l] tokens,
    # the feed-forward on counts[l + 1] (the matching between them is its own component)
    for i in range(3):
        t, t_ff = counts[i], counts[i + 1]
        assert rep.by_block[f"encoder.block.{i}"] == _t5_layer_macs(b, t, t_ff), i
        assert rep.block_tokens[f"encoder.block.{i}"] == t
    assert rep.macs == sum(rep.by_block.values()) + rep.by_component[("encoder", "matching")]
    assert rep.macs == _torch_macs(lambda: model(ids))
    mergeplug.remove(model)
    assert profile(model, ids).macs == 3 * _t5_layer_macs(b, n, n)


@pytest.mark.parametrize("family", ["chronos-t5", "chronos-bolt"])
@pytest.mark.parametrize("merge", [None, {"k": 1, "ratio": 0.3}])
def test_chronos_pipelines_agree_with_pytorch_counter(family, merge):
    pipe = (chronos_t5 if family == "chronos-t5" else chronos_bolt)("tiny")
    pipe.inner_model.set_attn_implementation("eager")  # PyTorch's counter would miss CPU SDPA
    if merge:
        mergeplug.apply(pipe, **merge)
    ctx = torch.randn(2, 256).cumsum(-1)
    h = 4 if family == "chronos-t5" else 64
    kwargs = {"prediction_length": h}
    if family == "chronos-t5":
        kwargs["num_samples"] = 3
    torch.manual_seed(0)
    rep = profile(pipe, ctx, **kwargs)
    torch.manual_seed(0)
    ref = _torch_macs(lambda: pipe.predict(ctx, **kwargs))
    assert abs(rep.macs / ref - 1) < 0.01
    assert sum(rep.by_component.values()) == rep.macs and rep.series == 2
    parts = {p for p, _ in rep.by_component}
    assert {"encoder", "decoder"} <= parts
    if merge:
        assert rep.token_counts is not None and rep.token_counts[-1] < rep.token_counts[0]


@pytest.mark.parametrize("name", ["mergeplug:tst", "mergeplug:patchtst"])
def test_supervised_models_agree_with_pytorch_counter(name):
    from mergeplug.eval.data import load_dataset
    from mergeplug.eval.models import load_model

    ds = load_dataset("electricity_hourly", max_series=2)
    fc = load_model(name).for_dataset(ds)
    inputs = [{"target": e["target"][:-48], "start": e["start"]} for e in ds.entries]
    fn = lambda: fc.quantiles(inputs, ds.prediction_length, seed=0)  # noqa: E731
    rep = profile(fc.target, run=fn, series=len(inputs))
    # PatchTST's attention runs through fused SDPA on CPU, which PyTorch's counter skips; TST's does not
    assert rep.macs - rep.sdpa_macs == _torch_macs(fn)
    assert (rep.sdpa_macs > 0) == (name == "mergeplug:patchtst")
    assert ("encoder", "embedding") in rep.by_component and ("encoder", "mlp") in rep.by_component
    assert rep.params["total"] == sum(p.numel() for p in fc.target.parameters())


def test_compare_reports_ratios_and_leaves_model_unmerged():
    model = _t5_encoder()
    ids = torch.randint(2, 100, (2, 64))
    with torch.inference_mode():
        before = model(ids).last_hidden_state
    rows = compare(model, {"unmerged": None, "k=1 r=8": {"k": 1, "r": 8}}, ids, reps=2)
    assert [r["label"] for r in rows] == ["unmerged", "k=1 r=8"]
    dense = 3 * _t5_layer_macs(2, 64, 64)
    merged = sum(_t5_layer_macs(2, t, t - 8) + 2 * (t // 2) * 2 * 16 for t in (64, 56, 48))  # + matching
    assert rows[0]["macs"] == dense and rows[1]["macs"] == merged
    assert rows[0]["macs_ratio"] == 1.0 and rows[1]["macs_ratio"] == dense / merged
    assert rows[1]["token_counts"][-1] == 64 - 3 * 8 and rows[0]["token_counts"] is None
    assert all(r["time_s"] > 0 for r in rows)
    with torch.inference_mode():
        assert torch.equal(model(ids).last_hidden_state, before)
    table = format_comparison(rows)
    assert "MACs ratio" in table and "k=1 r=8" in table


def test_profile_errors():
    with pytest.raises(TypeError, match="run=callable"):
        profile(object())
    with pytest.raises(ValueError, match="reps must be an int >= 1"):
        compare(nn.Linear(2, 2), {"a": None}, torch.randn(1, 2), reps=0)


def test_fused_transformer_layers_are_counted():
    """nn.TransformerEncoderLayer's fused inference path hides its products; profile counts them anyway."""
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True).eval()
    b, n = 3, 10
    rep = profile(layer, torch.randn(b, n, 16))
    expected = b * n * 16 * 48 + b * n * 16 * 16 + 2 * b * n * 16 * 32 + b * 2 * n * n * 8 * 2
    assert rep.macs == expected and torch.backends.mha.get_fastpath_enabled()
