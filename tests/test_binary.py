"""Sparse binary projections (mergeplug.binary): the layer, the swap API, composition with merging, packed export."""

from __future__ import annotations

import json
import math
import re
import struct

import numpy as np
import pytest
import torch
from torch import nn

import mergeplug
from mergeplug.binary import (
    BinarizationConfig,
    SparseBinaryLinear,
    binary_layers,
    read_packed_metadata,
    suspended,
)
from mergeplug.binary.packed import _rice_decode, _rice_encode
from mergeplug.hub import model_card
from mergeplug.models import chronos2, chronos_bolt, chronos_t5

torch.set_num_threads(1)


def _linear(i: int = 8, o: int = 6, seed: int = 0, bias: bool = True) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(i, o, bias=bias)


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def _t5():
    return chronos_t5("test", context_length=32, prediction_length=4, num_samples=2)


def _t5_predict(pipe, ctx):
    torch.manual_seed(1)
    return pipe.predict(ctx, prediction_length=4)


CTX = torch.randn(2, 32, generator=torch.Generator().manual_seed(0)).cumsum(-1)


# ------------------------------------------------------------------------------------------------ the layer
@pytest.mark.parametrize("density", [0.05, 0.3, 0.5, 0.77, 1.0])
def test_topk_mask_alpha_and_values(density):
    lin = _linear(16, 12)
    w = lin.weight.detach().clone()
    mergeplug.binarize(lin, density=density)
    k = round(density * w.numel())
    sm = lin.signed_mask()
    mask = sm != 0
    assert int(mask.sum()) == k == lin.binary_state.k
    # init="weights": the kept positions are the k largest |W|
    expected = torch.zeros(w.numel(), dtype=torch.bool)
    expected[torch.topk(w.abs().flatten(), k).indices] = True
    assert torch.equal(mask.flatten(), expected)
    alpha = lin.alpha_tensor()
    assert alpha.shape == ()
    assert torch.equal(alpha, (w.abs() * mask).sum() / k)
    assert torch.allclose(alpha, w.abs()[mask].mean(), rtol=1e-6, atol=0)
    we = lin.effective_weight()
    assert set(we.unique().tolist()) <= {-alpha.item(), 0.0, alpha.item()}
    assert torch.equal(we[mask], torch.where(w[mask] >= 0, alpha, -alpha))
    assert torch.equal(lin.weight, we)  # .weight reads the effective weight
    assert lin._parameters["weight"] is not None and torch.equal(lin._parameters["weight"], w)


def test_density_one_is_sign_times_mean_abs():
    lin = _linear(10, 7)
    w = lin.weight.detach().clone()
    mergeplug.binarize(lin, density=1.0, init="weights")
    sign = torch.where(w >= 0, 1.0, -1.0)
    assert torch.equal(lin.effective_weight(), (w.abs().sum() / w.numel()) * sign)
    assert torch.allclose(lin.effective_weight(), w.abs().mean() * sign, rtol=1e-6, atol=0)


def test_row_alpha():
    lin = _linear(9, 5)
    w = lin.weight.detach().clone()
    mergeplug.binarize(lin, density=0.4, alpha="row")
    mask = lin.signed_mask() != 0
    alpha = lin.alpha_tensor()
    assert alpha.shape == (5, 1)
    for i in range(5):
        exp = w[i].abs()[mask[i]].mean() if mask[i].any() else torch.tensor(0.0)
        assert torch.allclose(alpha[i, 0], exp, rtol=1e-6)
        assert torch.equal(lin.effective_weight()[i][mask[i]].abs(), alpha[i].expand(int(mask[i].sum())))


def test_standalone_and_seed_determinism():
    a = SparseBinaryLinear(20, 6, density=0.25, seed=3)
    b = SparseBinaryLinear(20, 6, density=0.25, seed=3)
    c = SparseBinaryLinear(20, 6, density=0.25, seed=4)
    assert a.binary_state.init == "random" and int((a.effective_weight() != 0).sum()) == 30
    assert torch.equal(a.effective_weight(), b.effective_weight()) and torch.equal(a.bias, b.bias)
    assert not torch.equal(a.effective_weight(), c.effective_weight())
    # random init on an existing layer: deterministic from the seed, independent of the layer's weights
    lin1, lin2 = _linear(seed=0), _linear(seed=1)
    mergeplug.binarize(lin1, density=0.5, init="random", seed=7)
    mergeplug.binarize(lin2, density=0.5, init="random", seed=7)
    assert torch.equal(lin1.signed_mask(), lin2.signed_mask()) and torch.equal(lin1.scores, lin2.scores)
    assert isinstance(a, nn.Linear) and a._mergeplug_binary
    x = torch.randn(3, 20)
    assert torch.equal(a(x), x @ a.effective_weight().T + a.bias)


def test_gradients_follow_the_straight_through_rule():
    lin = _linear(8, 6)
    w = lin._parameters["weight"]
    mergeplug.binarize(lin, density=0.5, init="random", seed=2)
    x = torch.randn(5, 8)
    we = lin.effective_weight()
    we.retain_grad()
    loss = (torch.nn.functional.linear(x, we, lin.bias.detach()) ** 2).sum()
    loss.backward()
    g = we.grad
    st = lin.binary_state
    wl = lin.latent_weight
    sign = torch.where(wl >= 0, 1.0, -1.0)
    sm = lin.signed_mask()
    alpha = lin.alpha_tensor()
    dm = alpha * sign * g + wl.abs() / st.k * (sm * g).sum()
    expected = torch.sign(lin.scores.detach()) * wl.abs() * dm
    assert torch.allclose(lin.scores.grad, expected, rtol=1e-5, atol=1e-7)
    assert lin.scores.grad.abs().sum() > 0
    assert w.grad is None and lin.bias.grad is None
    # through forward: W and (frozen) bias get nothing; train_bias=True lets the bias learn
    lin.scores.grad = None
    lin(x).sum().backward()
    assert lin.scores.grad.abs().sum() > 0 and w.grad is None and lin.bias.grad is None
    lin2 = _linear(8, 6)
    mergeplug.binarize(lin2, density=0.5, train_bias=True)
    lin2(x).sum().backward()
    assert lin2.bias.grad is not None and lin2._parameters["weight"].grad is None
    assert mergeplug.binary_parameters(lin2) == [lin2.scores, lin2.bias]


def test_training_scores_lowers_the_loss():
    teacher = SparseBinaryLinear(32, 4, density=0.5, seed=1)
    student = SparseBinaryLinear(32, 4, density=0.5, seed=2)
    x = torch.randn(256, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = teacher(x)
    before = {n: t.clone() for n, t in student.state_dict().items() if n != "scores"}
    opt = torch.optim.Adam(mergeplug.binary_parameters(student), lr=0.02)
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = (student(x) - y).pow(2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
    after = student.state_dict()
    assert all(torch.equal(before[n], after[n]) for n in before)  # only the scores moved


def test_trainable_binary_freezes_all_but_scores_and_norms():
    pipe = _t5()
    model = pipe.inner_model
    mergeplug.binarize(pipe, density=0.5, include="encoder.*")
    trainable = mergeplug.trainable_binary(pipe, train_norms=True)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all(n.endswith(".scores") or "layer_norm" in n for n in names)
    assert any(n.endswith(".scores") for n in names) and any("layer_norm" in n for n in names)
    assert len(trainable) == len(names)
    mergeplug.trainable_binary(pipe, train_norms=False)
    assert all(n.endswith(".scores") for n, p in model.named_parameters() if p.requires_grad)


def test_cache_follows_score_updates():
    lin = _linear(8, 6)
    mergeplug.binarize(lin, density=0.5)
    with torch.no_grad():
        w1 = lin.effective_weight()
        assert lin.effective_weight() is w1  # cached
        lin.scores.mul_(-1).add_(torch.randn_like(lin.scores))
        w2 = lin.effective_weight()
    assert w2 is not w1 and torch.equal(w2, lin.effective_weight().detach())


# ------------------------------------------------------------------------------------------------ the swap API
def test_include_exclude_patterns_on_t5():
    pipe = _t5()
    model = pipe.inner_model
    mergeplug.binarize(pipe, density=0.5, include="*.SelfAttention.k")
    cfg = mergeplug.binarization(pipe)
    assert isinstance(cfg, BinarizationConfig) and cfg.include == ["*.SelfAttention.k"]
    assert cfg.layers == [n for n, m in model.named_modules() if n.endswith("SelfAttention.k")]
    assert len(cfg.layers) == 4  # 2 encoder + 2 decoder blocks
    mergeplug.binarize(pipe, density=0.5, include=re.compile(r"encoder\..*\.w[io]"), exclude="*.block.1.*")
    assert mergeplug.binarization(pipe).layers == ["encoder.block.0.layer.1.DenseReluDense.wi",
                                                   "encoder.block.0.layer.1.DenseReluDense.wo"]  # fmt: skip
    assert mergeplug.binarization(pipe).include == [r"re:encoder\..*\.w[io]"]
    mergeplug.binarize(pipe, density=0.5, exclude=["lm_head", "re:decoder\\..*"])
    layers = mergeplug.binarization(pipe).layers
    assert "lm_head" not in layers and not any(n.startswith("decoder") for n in layers)
    assert len(layers) == 2 * (4 + 2)  # encoder: q, k, v, o, wi, wo per block
    # every Linear by default; re-binarizing replaced the old settings (no stacking)
    mergeplug.binarize(pipe, density=0.5)
    n_linear = sum(isinstance(m, nn.Linear) for m in model.modules())
    assert len(binary_layers(pipe)) == n_linear == len(mergeplug.binarization(pipe).layers)
    mergeplug.unbinarize(pipe)
    assert mergeplug.binarization(pipe) is None and not binary_layers(pipe)


def test_errors():
    pipe = _t5()
    with pytest.raises(ValueError, match=r"no nn.Linear layer matches include=\['\*\.nothing'\].*e\.g\. encoder"):
        mergeplug.binarize(pipe, include="*.nothing")
    with pytest.raises(ValueError, match="exclude"):
        mergeplug.binarize(pipe, exclude="*")
    for bad in (0, 0.0, -0.5, 1.5, True, "0.5", float("nan")):
        with pytest.raises(ValueError, match=r"density .* \(0, 1\]"):
            mergeplug.binarize(pipe, density=bad)
    with pytest.raises(ValueError, match="init"):
        mergeplug.binarize(pipe, init="zeros")
    with pytest.raises(ValueError, match="alpha"):
        mergeplug.binarize(pipe, alpha="column")
    with pytest.raises(TypeError, match="nn.Module or a pipeline"):
        mergeplug.binarize(object())
    with pytest.raises(ValueError, match="not binarized"):
        mergeplug.save_packed(pipe, "/tmp/never-written.safetensors")
    with pytest.raises(ValueError, match="seed must be an int"):  # issue 34, point 14
        mergeplug.binarize(pipe, seed="x")
    for include in ("re:((", ["*.k", "re:[a-"]):
        with pytest.raises(ValueError, match="is not a valid regular expression"):
            mergeplug.binarize(pipe, include=include)
    assert mergeplug.binarization(pipe) is None and not binary_layers(pipe)  # failed calls left nothing behind


def test_identity_hooks_and_exact_unbinarize():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    x = torch.randn(4, 6)
    y0 = net(x)
    before = _state(net)
    params = dict(net.named_parameters())
    first = net[0]
    seen = []
    handle = first.register_forward_hook(lambda m, a, out: seen.append(out))
    pre = first.register_forward_pre_hook(lambda m, a: seen.append("pre"))
    mergeplug.binarize(net, density=0.3, init="random", seed=1)
    assert net[0] is first and isinstance(first, SparseBinaryLinear)
    y1 = net(x)
    assert seen[0] == "pre" and torch.equal(seen[1], x @ first.effective_weight().T + first.bias)
    assert not torch.equal(y1, y0)
    mergeplug.unbinarize(net)
    assert type(first) is nn.Linear and net[0] is first
    assert torch.equal(net(x), y0) and len(seen) == 4  # hooks still there
    assert dict(net.named_parameters()) == params  # same Parameter objects
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items()) and set(net.state_dict()) == set(before)
    assert not any(k.startswith("_sbl") for k in first.__dict__)
    handle.remove()
    pre.remove()


def test_multihead_attention_out_proj_reads_the_binary_weight():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True, dropout=0.0).eval()
    x = torch.randn(2, 5, 16)
    y0 = layer(x)
    mergeplug.binarize(layer, density=0.5)
    out_proj = layer.self_attn.out_proj
    assert isinstance(out_proj, SparseBinaryLinear) and isinstance(
        out_proj, nn.modules.linear.NonDynamicallyQuantizableLinear
    )
    assert torch.equal(out_proj.weight, out_proj.effective_weight())
    y1 = layer(x)
    assert torch.isfinite(y1).all() and not torch.allclose(y1, y0)
    mergeplug.unbinarize(layer)
    assert type(out_proj) is nn.modules.linear.NonDynamicallyQuantizableLinear
    assert torch.equal(layer(x), y0)


def test_shared_modules_and_tied_weights():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(8, 8)
            self.b = nn.Linear(8, 8)
            self.b.weight = self.a.weight  # tied weight, separate modules
            self.alias = self.a  # the same module under two names
            self.emb = nn.Embedding(5, 8)
            self.head = nn.Linear(8, 5, bias=False)
            self.head.weight = self.emb.weight  # tied to an embedding

        def forward(self, x):
            return self.head(self.b(self.alias(x)) + self.emb.weight[:1])

    torch.manual_seed(0)
    net = Tied()
    x = torch.randn(3, 8)
    y0 = net(x)
    mergeplug.binarize(net, density=0.5, exclude="alias")  # excluded through one of its names
    assert set(binary_layers(net)) == {"b", "head"}
    mergeplug.binarize(net, density=0.5, include="alias")  # included through one of its names
    assert set(binary_layers(net)) == {"a"}
    mergeplug.binarize(net, density=0.5)
    assert set(binary_layers(net)) == {"a", "b", "head"}
    assert net.a.scores is net.b.scores and torch.equal(net.a.effective_weight(), net.b.effective_weight())
    assert net.head._parameters["weight"] is net.emb.weight  # the embedding stays float and tied
    y1 = net(x)
    path = "/tmp/test_binary_tied.safetensors"
    meta = mergeplug.save_packed(net, path)
    assert meta["layers"]["a"]["aliases"] == ["alias"]
    torch.manual_seed(5)
    net2 = mergeplug.load_packed(Tied, path)
    assert torch.equal(net2(x), y1) and torch.equal(net2.emb.weight, net.emb.weight)
    mergeplug.unbinarize(net)
    assert torch.equal(net(x), y0) and net.b.weight is net.a.weight


# ---------------------------------------------------------------------------------------- cost accounting
def test_cost_profile_of_a_binarized_linear():
    lin = _linear(8, 6)
    mergeplug.binarize(lin, density=0.5)
    x = torch.randn(3, 5, 8)
    rep = mergeplug.profile(lin, x)
    assert rep.macs == 3 * 5 * 8 * 6 == 720
    assert rep.nonzero_macs == 360  # 24 of 48 weights kept
    assert rep.binary_adds == 360
    assert rep.binary_mults == 3 * 5 * 6  # one alpha multiplication per output
    lin2 = _linear(8, 6)
    mergeplug.binarize(lin2, density=0.25)  # k = 12
    rep2 = mergeplug.profile(lin2, x)
    assert (rep2.macs, rep2.nonzero_macs, rep2.binary_adds, rep2.binary_mults) == (720, 180, 180, 90)
    mergeplug.unbinarize(lin2)
    rep3 = mergeplug.profile(lin2, x)
    assert (rep3.nonzero_macs, rep3.binary_adds, rep3.binary_mults) == (720, 0, 0)


# --------------------------------------------------------------------------------- composition with merging
@pytest.mark.parametrize("order", ["apply-first", "binarize-first"])
@pytest.mark.parametrize("undo", ["remove-first", "unbinarize-first"])
def test_composes_with_token_merging_chronos_t5(order, undo):
    pipe = _t5()
    model = pipe.inner_model
    y0 = _t5_predict(pipe, CTX)
    before = _state(model)
    k_proj = model.encoder.block[0].layer[0].SelfAttention.k
    if order == "apply-first":
        mergeplug.apply(pipe, k=1, ratio=0.3, safe=False)  # a short context
        mergeplug.binarize(pipe, density=0.3)
    else:
        mergeplug.binarize(pipe, density=0.3)
        mergeplug.apply(pipe, k=1, ratio=0.3, safe=False)  # a short context
    assert model.encoder.block[0].layer[0].SelfAttention.k is k_proj and isinstance(k_proj, SparseBinaryLinear)
    y1 = _t5_predict(pipe, CTX)
    assert torch.isfinite(y1).all()
    counts = mergeplug.token_counts(pipe)
    assert counts is not None and counts[-1] < counts[0]  # merging ran, on keys from the binary k projection
    for step in ("remove", "unbinarize") if undo == "remove-first" else ("unbinarize", "remove"):
        getattr(mergeplug, step)(pipe)
        if step == "remove":
            assert mergeplug.settings(pipe) is None
            assert isinstance(k_proj, SparseBinaryLinear) == (mergeplug.binarization(pipe) is not None)
    assert type(k_proj) is nn.Linear
    assert torch.equal(_t5_predict(pipe, CTX), y0)
    after = model.state_dict()
    assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)


def test_composes_with_token_merging_chronos_bolt():
    pipe = chronos_bolt("test", context_length=64, prediction_length=16)
    ctx = torch.randn(2, 64, generator=torch.Generator().manual_seed(1)).cumsum(-1)
    y0 = pipe.predict(ctx, prediction_length=16)
    mergeplug.binarize(pipe, density=0.25, exclude="output_patch_embedding.*")
    mergeplug.apply(pipe, k=1, ratio=0.3)
    y1 = pipe.predict(ctx, prediction_length=16)
    assert torch.isfinite(y1).all() and not torch.equal(y1, y0)
    mergeplug.remove(pipe)
    mergeplug.unbinarize(pipe)
    assert torch.equal(pipe.predict(ctx, prediction_length=16), y0)


def test_chronos2_pipeline():
    pipe = chronos2("test", context_length=64)
    ctx = torch.randn(2, 64, generator=torch.Generator().manual_seed(2)).cumsum(-1)
    y0 = torch.stack(pipe.predict(ctx[:, None], prediction_length=16))
    mergeplug.binarize(pipe, density=0.5, include="encoder.*")
    assert binary_layers(pipe) and all(n.startswith("encoder.") for n in binary_layers(pipe))
    y1 = torch.stack(pipe.predict(ctx[:, None], prediction_length=16))
    assert torch.isfinite(y1).all() and not torch.equal(y1, y0)
    mergeplug.unbinarize(pipe)
    assert torch.equal(torch.stack(pipe.predict(ctx[:, None], prediction_length=16)), y0)


# ------------------------------------------------------------------------------------------- packed export
def test_rice_round_trip():
    rng = np.random.default_rng(0)
    for n, p in [(1, 1.0), (17, 1.0), (1000, 0.5), (1000, 0.1), (4096, 0.01), (5000, 0.9)]:
        mask = rng.random(n) < p
        mask[rng.integers(n)] = True
        pos = np.flatnonzero(mask)
        b, q, r = _rice_encode(pos)
        assert np.array_equal(_rice_decode(b, q, r, pos.size), pos)
    pos = np.array([0, 1, 2, 1000])
    assert np.array_equal(_rice_decode(*_rice_encode(pos), 4), pos)


@pytest.mark.parametrize("encoding", ["bitmap", "rice", "auto"])
@pytest.mark.parametrize("alpha", ["layer", "row"])
def test_packed_round_trip_identical_outputs_t5(tmp_path, encoding, alpha):
    pipe = _t5()
    mergeplug.apply(pipe, k=1, ratio=0.2)
    mergeplug.binarize(pipe, density=0.2, exclude="lm_head", alpha=alpha, init="random", seed=3)
    y0 = _t5_predict(pipe, CTX)
    path = tmp_path / "packed.safetensors"
    meta = mergeplug.save_packed(pipe, path, mask_encoding=encoding)
    assert meta["bytes"] == path.stat().st_size
    assert read_packed_metadata(path)["settings"]["layers"] == mergeplug.binarization(pipe).layers

    def factory():
        return chronos_t5("test", context_length=32, prediction_length=4, num_samples=2, seed=9)  # other weights

    loaded = mergeplug.load_packed(factory, path)
    cfg = mergeplug.binarization(loaded)
    assert cfg.packed and cfg.layers == mergeplug.binarization(pipe).layers and cfg.alpha == alpha
    for name, layer in binary_layers(pipe).items():
        other = loaded.inner_model.get_submodule(name)
        assert torch.equal(layer.effective_weight(), other.effective_weight())
    mergeplug.apply(loaded, k=1, ratio=0.2)  # binarize (load) first, then merge: same model
    assert torch.equal(_t5_predict(loaded, CTX), y0)
    # a loaded model saves again to the same bytes of data
    meta2 = mergeplug.save_packed(loaded, tmp_path / "again.safetensors", mask_encoding=encoding)
    assert meta2["layers"] == meta["layers"]
    # unbinarize: the factory's float weights in the binarized layers, the file's values elsewhere
    mergeplug.remove(loaded)
    mergeplug.unbinarize(loaded)
    fresh = factory()
    ref, got = fresh.inner_model.state_dict(), loaded.inner_model.state_dict()
    assert set(ref) == set(got)
    for key in ref:
        lname = key.rsplit(".", 1)[0]
        if lname in cfg.layers and key.endswith(".weight"):
            assert torch.equal(got[key], ref[key])  # binarized layers keep the factory's float weights
        else:
            assert torch.equal(got[key], pipe.inner_model.state_dict()[key])  # everything else from the file


def test_load_packed_errors(tmp_path):
    lin = _linear(8, 6)
    mergeplug.binarize(lin, density=0.5)
    path = tmp_path / "lin.safetensors"
    mergeplug.save_packed(lin, path)
    with pytest.raises(ValueError, match=r"has weight \(6, 9\), the file \(6, 8\)"):
        mergeplug.load_packed(nn.Linear(9, 6), path)
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match="not a mergeplug packed file"):
        mergeplug.load_packed(nn.Linear(8, 6), tmp_path / "plain.safetensors")
    with pytest.raises(ValueError, match="mask_encoding"):
        mergeplug.save_packed(lin, path, mask_encoding="zip")
    (tmp_path / "garbage.safetensors").write_bytes(b"garbage")  # issue 34, point 14: the file was not named
    with pytest.raises(ValueError, match=r"garbage.safetensors is not a safetensors file, or it is damaged"):
        mergeplug.load_packed(nn.Linear(8, 6), tmp_path / "garbage.safetensors")
    with pytest.raises(FileNotFoundError, match=r"missing.safetensors: no such packed file"):
        mergeplug.load_packed(nn.Linear(8, 6), tmp_path / "missing.safetensors")


def test_packed_file_size_is_the_bit_count(tmp_path):
    lin = nn.Linear(512, 2048)  # weight (2048, 512)
    mergeplug.binarize(lin, density=0.1)
    numel, k = 2048 * 512, round(0.1 * 2048 * 512)
    path = tmp_path / "big.safetensors"
    meta = mergeplug.save_packed(lin, path, mask_encoding="bitmap")
    size = path.stat().st_size
    header = struct.unpack("<Q", path.read_bytes()[:8])[0]
    data = math.ceil(numel / 8) + math.ceil(k / 8) + 4 + 4 * 2048  # mask, signs, alpha, fp32 bias
    assert size == 8 + header + data and meta["layers"][""]["k"] == k
    assert header < 1024  # JSON header (tensor table + metadata), bounded
    report = mergeplug.packed_size_report(lin)
    dense = report["dense_fp32"]
    assert dense >= 4 * (numel + 2048) and dense - 4 * (numel + 2048) < 256
    assert report["packed"]["bitmap"] == size
    assert report["ratio"]["bitmap"] >= 25  # measured 27.4x
    assert report["packed"]["rice"] < 0.6 * size  # Golomb-Rice gaps: ~0.47 bits per position at density 0.1
    assert report["packed"]["auto"] == report["packed"]["rice"]
    assert report["layers"][""]["packed"]["bitmap"] == data
    # fp16 bias halves the bias bytes
    half = mergeplug.save_packed(lin, tmp_path / "half.safetensors", bias_dtype="fp16")
    assert meta["layer_bytes"][""] - half["layer_bytes"][""] == 2 * 2048


def test_packed_metadata_is_json(tmp_path):
    lin = _linear(8, 6)
    mergeplug.binarize(lin, density=0.5)
    path = tmp_path / "m.safetensors"
    mergeplug.save_packed(lin, path, mask_encoding="rice")
    meta = read_packed_metadata(path)
    assert meta["format"] == "mergeplug-packed" and meta["format_version"] == 2
    assert meta["layers"][""]["shape"] == [6, 8] and meta["layers"][""]["mask_encoding"] == "rice"
    json.dumps(meta)


# ------------------------------------------------------------------------------------------------------ hub
def test_save_pretrained_round_trip(tmp_path):
    pipe = chronos_bolt("test", context_length=64, prediction_length=16)
    ctx = torch.randn(2, 64, generator=torch.Generator().manual_seed(1)).cumsum(-1)
    mergeplug.apply(pipe, k=1, ratio=0.2)
    mergeplug.binarize(pipe, density=0.25, exclude="output_patch_embedding.*")
    y0 = pipe.predict(ctx, prediction_length=16)
    out = mergeplug.save_pretrained(pipe, tmp_path / "m", card=False)
    meta = json.loads((out / "mergeplug_config.json").read_text())
    assert meta["binarization"]["density"] == 0.25 and meta["binarization"]["file"] == "mergeplug_packed.safetensors"
    assert (out / "mergeplug_packed.safetensors").exists()
    assert torch.equal(pipe.predict(ctx, prediction_length=16), y0)  # saving left the model as it was
    loaded = mergeplug.from_pretrained(out)
    assert mergeplug.settings(loaded) is not None and mergeplug.binarization(loaded).packed
    assert torch.equal(loaded.predict(ctx, prediction_length=16), y0)
    # plain chronos loads the float weights the binary layers were made from
    from chronos import BaseChronosPipeline

    plain = BaseChronosPipeline.from_pretrained(out)
    with suspended(pipe):
        mergeplug.remove(pipe)
        assert torch.equal(plain.predict(ctx, prediction_length=16), pipe.predict(ctx, prediction_length=16))


def _packed_only_cases():
    from transformers import PatchTSTConfig, PatchTSTForPrediction

    def bolt():
        return chronos_bolt("test", context_length=64, prediction_length=16)

    def patchtst():
        torch.manual_seed(0)
        dims = {"d_model": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "ffn_dim": 32}
        cfg = PatchTSTConfig(num_input_channels=1, context_length=64, patch_length=8, patch_stride=8,
                             prediction_length=8, **dims)  # fmt: skip
        return PatchTSTForPrediction(cfg).eval()

    x = torch.randn(2, 64, generator=torch.Generator().manual_seed(1)).cumsum(-1)
    return {
        "bolt": (bolt, lambda p: p.predict(x, prediction_length=16)),
        "chronos-t5": (_t5, lambda p: _t5_predict(p, CTX)),
        "chronos2": (lambda: chronos2("test", context_length=64), lambda p: p.predict([x[:1]], prediction_length=16)),
        "patchtst": (patchtst, lambda m: m(past_values=x[:, :, None]).prediction_outputs),
    }


@pytest.mark.parametrize("case", ["bolt", "chronos-t5", "chronos2", "patchtst"])
def test_save_pretrained_packed_only(tmp_path, case):
    build, run = _packed_only_cases()[case]
    model = build()
    if case == "bolt":
        mergeplug.apply(model, k=1, ratio=0.2)
    mergeplug.binarize(model, density=0.25, init="random", seed=3)
    y0 = run(model)
    out = mergeplug.save_pretrained(model, tmp_path / "m", card=False, float_weights=False)
    assert not (out / "model.safetensors").exists() and (out / "config.json").exists()
    full = mergeplug.save_pretrained(model, tmp_path / "full", card=False)

    def size(d):
        return sum(f.stat().st_size for f in d.iterdir())

    # the float file is gone and nothing of its size replaced it
    assert size(out) < size(full) - 0.99 * (full / "model.safetensors").stat().st_size
    loaded = mergeplug.from_pretrained(out)
    assert mergeplug.binarization(loaded).packed
    card = model_card(out).text
    assert "Only `mergeplug.from_pretrained` loads it" in card and "from_pretrained(" in card
    assert ".from_pretrained(" not in card.replace("mergeplug.from_pretrained(", "")  # no plain-loader snippet

    def as_list(y):
        return y if isinstance(y, list) else [y]

    for a, b in zip(as_list(y0), as_list(run(loaded)), strict=True):
        assert torch.equal(a, b)
    if case == "chronos-t5":  # its lm_head is tied to the embedding, which the file stores: unbinarize() gives it
        mergeplug.unbinarize(loaded)
        assert torch.equal(loaded.model.model.lm_head.weight, loaded.model.model.shared.weight)
        assert torch.equal(loaded.model.model.shared.weight, mergeplug.binary._root(model).shared.weight)
        return
    # without a float file, unbinarize() gives the binary weights as float weights: the same outputs again
    mergeplug.unbinarize(loaded)
    for a, b in zip(as_list(y0), as_list(run(loaded)), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_packed_only_needs_a_binarized_model(tmp_path):
    pipe = _t5()
    out = mergeplug.save_pretrained(pipe, tmp_path / "m", card=False)
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    with pytest.raises(ValueError, match="not binarized"):
        mergeplug.save_pretrained(pipe, out, card=False, float_weights=False)
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before  # refused before writing anything
    assert torch.equal(_t5_predict(mergeplug.from_pretrained(out), CTX), _t5_predict(pipe, CTX))


def test_fast_sampling_reads_the_binary_layers():
    pipe = _t5()
    mergeplug.binarize(pipe, density=0.3)
    stock = _t5_predict(pipe, CTX)
    mergeplug.fast_sampling(pipe)
    assert torch.equal(_t5_predict(pipe, CTX), stock)  # same samples as stock generate() on the binary model
    mergeplug.remove(pipe)
    mergeplug.unbinarize(pipe)


def test_packed_keeps_other_dtypes_exactly_and_reserved_names_never_clash(tmp_path):
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(8, 6)
            self.register_buffer("bits", torch.arange(3, dtype=torch.uint8))  # the name of a blob in format 1
            self.register_buffer("scale", torch.tensor([1.0 + 1e-12], dtype=torch.float64))

        def forward(self, x):
            return self.lin(x) * self.scale.float() + self.bits.float().sum()

    net = Net()
    mergeplug.binarize(net, density=0.5)
    path = tmp_path / "net.safetensors"
    mergeplug.save_packed(net, path)
    fresh = Net()
    fresh.bits.zero_()
    fresh.scale.zero_()
    loaded = mergeplug.load_packed(fresh, path)
    assert torch.equal(loaded.bits, net.bits) and torch.equal(loaded.scale, net.scale)
    x = torch.randn(2, 8)
    assert torch.equal(loaded(x), net(x))
