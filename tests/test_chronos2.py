"""mergeplug.apply / remove on Chronos-2 (``Chronos2Pipeline`` / ``Chronos2Model``) built from a config, offline.

The merge mechanics are checked with plain merging (``safe=False``); the forecast-safe defaults are tested in
tests/test_forecast_safe.py."""

from __future__ import annotations

import copy

import pytest
import torch
from chronos import Chronos2Pipeline
from chronos.chronos2.model import Chronos2Encoder, Chronos2Model
from conftest import assert_pristine
from torch import nn

import mergeplug
from mergeplug.merge import MergeState, match
from mergeplug.models import chronos2
from mergeplug.patches.chronos2 import token_source

H_PATCHES = 3  # future-patch tokens read out per forward (3 x 16 steps)


@pytest.fixture(scope="module")
def pipe() -> Chronos2Pipeline:
    """A tiny random Chronos-2 (d_model 64, 2 blocks, patches of 16, context up to 512).

    ``mergeplug.models.chronos2``'s config, initialised with ``initializer_factor=0.2`` instead of Chronos' 0.05:
    with 0.05 the random encoder barely changes the residual stream (merging would move forecasts by ~1e-5 and
    the group checks would prove little); above ~0.3 the arcsinh inverse scaling overflows.
    """
    config = copy.deepcopy(chronos2("test", context_length=512).model.config)
    config.initializer_factor = 0.2
    torch.manual_seed(0)
    return Chronos2Pipeline(model=Chronos2Model(config).eval())


def _context(n_b: int = 4, n: int = 500, seed: int = 0) -> torch.Tensor:
    """(n_b, n) seasonal random walks; row 1 is shorter (NaN prefix) and has a missing stretch."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n, dtype=torch.float32)
    ctx = 10 + 3 * torch.sin(2 * torch.pi * t / 24) + torch.randn(n_b, n, generator=g).cumsum(-1) * 0.3
    if n_b > 1:
        ctx[1, :100] = float("nan")
        ctx[1, 300:340] = float("nan")
    return ctx


def _forward(model: Chronos2Model, ctx: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
    """(B, Q, H_PATCHES * 16) quantile forecasts."""
    with torch.no_grad():
        return model(ctx, group_ids=groups, num_output_patches=H_PATCHES).quantile_preds


def _outputs(pipe, ctx: torch.Tensor) -> list[torch.Tensor]:
    """Forward (grouped), pipeline predict (univariate and multivariate) and embed outputs."""
    groups = torch.tensor([0, 0, 1, 2])
    out = [_forward(pipe.model, ctx, groups)]
    out += pipe.predict(ctx[:, None], prediction_length=40)  # four univariate series
    out += pipe.predict(ctx.view(2, 2, -1), prediction_length=40)  # two series with two variates each
    out += pipe.embed(list(ctx))[0]
    return out


def _assert_all_equal(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)


def _source(model: Chronos2Model) -> torch.Tensor:
    """(B, N) slot of every input token after the last merged forward."""
    return token_source(model)


@pytest.mark.parametrize("zero", [{"r": 0}, {"ratio": 0.0}, {"r": [0, 0]}])
def test_r0_is_bitwise_original_and_remove_restores(pipe, zero):
    ctx = _context()
    ref = _outputs(pipe, ctx)
    mergeplug.apply(pipe, safe=False, k=1, **zero)
    assert type(pipe.model) is not Chronos2Model  # patched, yet the original code path runs
    _assert_all_equal(_outputs(pipe, ctx), ref)
    mergeplug.apply(pipe, safe=False, k=1, r=6)  # new settings replace the old ones
    merged = _outputs(pipe, ctx)
    assert all(x.shape == y.shape for x, y in zip(merged, ref, strict=True))
    assert not torch.equal(merged[0], ref[0])
    mergeplug.remove(pipe)
    assert_pristine(pipe.model)
    assert type(pipe.model) is Chronos2Model and type(pipe.model.encoder) is Chronos2Encoder
    _assert_all_equal(_outputs(pipe, ctx), ref)


@pytest.mark.parametrize("k", [1, 3, None])
def test_merged_run_shapes_counts_and_closeness(pipe, k):
    model, ctx = pipe.model, _context()
    groups = torch.tensor([0, 0, 1, 2])
    ref = _forward(model, ctx, groups)
    try:
        mergeplug.apply(model, safe=False, k=k, r=1)
        small = _forward(model, ctx, groups)
        counts_small = mergeplug.token_counts(model)
        mergeplug.apply(model, safe=False, k=k, ratio=0.45)
        large = _forward(model, ctx, groups)
        counts_large = mergeplug.token_counts(model)
    finally:
        mergeplug.remove(model)
    n = 32 + 1 + H_PATCHES  # ceil(500 / 16) context patches, [REG], future patches
    assert counts_small == [n, n - 1, n - 2]
    assert counts_large[0] == n and counts_large[1] < n - 10 and counts_large[2] < counts_large[1]
    for out in (small, large):
        assert out.shape == ref.shape and torch.isfinite(out).all()
    rel_small, rel_large = (((x - ref).norm() / ref.norm()).item() for x in (small, large))
    assert rel_small < 0.05  # loose: random weights
    assert rel_large > rel_small > 0


def test_reg_and_future_tokens_never_merge_and_padding_only_with_padding(pipe):
    model, ctx = pipe.model, _context()
    left = 32 * 16 - ctx.shape[1]  # the model left-pads the context to whole patches
    padded = torch.cat([torch.full((4, left), float("nan")), ctx], dim=1)
    patch_mask = (~torch.isnan(padded)).view(4, 32, 16).any(-1)  # (B, 32) observed patches
    mask = torch.cat([patch_mask, torch.ones(4, 1 + H_PATCHES, dtype=torch.bool)], dim=1)
    assert (~mask[1]).sum() >= 8  # row 1 has padding and a missing stretch
    try:
        for settings in ({"k": 1, "ratio": 0.45}, {"k": None, "ratio": 0.45}, {"k": 1, "r": 5, "input_ratio": 0.4}):
            mergeplug.apply(model, safe=False, **settings)
            _forward(model, ctx, torch.tensor([0, 0, 1, 2]))
            src = _source(model)
            assert src.shape == mask.shape
            for b in range(4):
                sizes = torch.bincount(src[b], minlength=int(src[b].max()) + 1)
                assert (sizes[src[b, 32:]] == 1).all()  # [REG] and every future token alone in its slot
                assert len(set(src[b, 32:].tolist())) == 1 + H_PATCHES
                slot_real = torch.zeros(sizes.shape[0], dtype=torch.long).index_add_(0, src[b], mask[b].long())
                assert ((slot_real == 0) | (slot_real == sizes)).all()  # no slot mixes padding and real patches
            assert (sizes > 1).any()
    finally:
        mergeplug.remove(model)


def test_group_rows_share_decisions_and_groups_decide_independently(pipe):
    model, ctx = pipe.model, _context(n_b=6, seed=3)
    groups = torch.tensor([5, 5, 5, 1, 7, 7])
    try:
        mergeplug.apply(model, safe=False, k=1, ratio=0.4)
        _forward(model, ctx, groups)
        src = _source(model)
    finally:
        mergeplug.remove(model)
    assert torch.equal(src[0], src[1]) and torch.equal(src[0], src[2])
    assert torch.equal(src[4], src[5])
    assert not (torch.equal(src[0], src[3]) and torch.equal(src[0], src[4]))  # groups choose their own merges


def test_grouped_predictions_are_consistent(pipe):
    """A group's forecast does not depend on the batch around it (per-group decisions), up to rounding."""
    model = pipe.model
    a = _context(n_b=2, seed=1)  # one group of two series (row 1: NaN prefix and gap)
    others = _context(n_b=3, seed=2)
    try:
        mergeplug.apply(model, safe=False, k=1, ratio=0.3)
        alone = _forward(model, a, torch.tensor([0, 0]))
        counts_alone = mergeplug.token_counts(model)
        twice = _forward(model, torch.cat([a, a]), torch.tensor([0, 0, 1, 1]))
        mixed = _forward(model, torch.cat([others[:1], a, others[1:]]), torch.tensor([3, 0, 0, 9, 9]))
        assert mergeplug.token_counts(model) == counts_alone
        src_mixed = _source(model)
        mergeplug.apply(model, safe=False, k=1, r=0)
        unmerged = _forward(model, a, torch.tensor([0, 0]))
        independent = _forward(model, a, torch.tensor([0, 1]))
    finally:
        mergeplug.remove(model)
    tol = dict(rtol=1e-5, atol=1e-5 * alone.abs().max().item())
    torch.testing.assert_close(twice[:2], alone, **tol)
    torch.testing.assert_close(twice[2:], alone, **tol)
    torch.testing.assert_close(mixed[1:3], alone, **tol)
    assert not torch.equal(src_mixed[0], src_mixed[1])  # the neighbours really merged differently
    assert not torch.allclose(alone, unmerged, **tol)  # merging changed the group's forecast
    assert not torch.allclose(independent, unmerged, **tol)  # and group attention matters in this model


def test_rope_positions_follow_merged_tokens(pipe):
    """The last block's time attention gets the size-weighted mean positions of the merged tokens."""
    model, ctx = pipe.model, _context()
    seen: list[torch.Tensor] = []
    rope = model.encoder.block[-1].layer[0].self_attention.rope_embed
    handle = rope.register_forward_hook(lambda m, args, out: seen.append(args[1].clone()))
    try:
        mergeplug.apply(model, safe=False, k=1, r=[7, 0])  # merges in block 0 only: block 1 sees the final tokens
        _forward(model, ctx)
        src = _source(model)
    finally:
        handle.remove()
        mergeplug.remove(model)
    pos = seen[-1]
    n_b, n = src.shape
    assert pos.shape == (n_b, n - 7) and pos.is_floating_point()
    orig = torch.arange(n, dtype=torch.float32).expand(n_b, n)
    total = torch.zeros(n_b, n - 7).scatter_add_(1, src, orig)
    size = torch.zeros(n_b, n - 7).scatter_add_(1, src, torch.ones(n_b, n))
    torch.testing.assert_close(pos, total / size)
    assert (pos != pos.round()).any()  # merged tokens sit between their members


def test_pipeline_predict_grouped_and_embed(pipe):
    ctx = _context()
    ref_multi = pipe.predict(ctx.view(2, 2, -1), prediction_length=40)
    ref_cross = pipe.predict(ctx[:, None], prediction_length=70, cross_learning=True)  # the whole batch is one group
    try:
        mergeplug.apply(pipe, safe=False, k=1, ratio=0.3)
        multi = pipe.predict(ctx.view(2, 2, -1), prediction_length=40)
        cross = pipe.predict(ctx[:, None], prediction_length=70, cross_learning=True)
        emb, _ = pipe.embed(list(ctx))
        quantiles, mean = pipe.predict_quantiles(list(ctx), prediction_length=24)
    finally:
        mergeplug.remove(pipe)
    for got, ref in ((multi, ref_multi), (cross, ref_cross)):
        assert [x.shape for x in got] == [x.shape for x in ref]
        assert all(torch.isfinite(x).all() for x in got)
        assert any(not torch.equal(x, y) for x, y in zip(got, ref, strict=True))
    assert emb[0].shape == (1, 32 + 2, 64)  # one embedding per patch, [REG] and the masked output patch
    assert len(quantiles) == 4 and quantiles[0].shape[-2] == 24 and all(torch.isfinite(m).all() for m in mean)


def test_invalid_settings_and_unsupported_structures(pipe):
    model = pipe.model
    with pytest.raises(ValueError, match="bidirectional"):
        mergeplug.apply(pipe, safe=False, k=1, r=2, causal=True)
    with pytest.raises(ValueError, match="causal"):
        mergeplug.apply(pipe, safe=False, k=1, threshold=0.9)
    assert_pristine(model)
    # output_attentions cannot be served over merged tokens
    mergeplug.apply(model, safe=False, k=1, r=2)
    try:
        with pytest.raises(NotImplementedError, match="output_attentions"):
            with torch.no_grad():
                model(_context(), output_attentions=True)
        with pytest.raises(RuntimeError, match="called directly"):
            model.encoder(torch.randn(2, 10, 64), group_ids=torch.arange(2))
    finally:
        mergeplug.remove(model)
    # a block whose sub-structure the family does not know fails up front, naming the module, and leaves no trace
    block = model.encoder.block[1]
    original = block.layer[1]
    block.layer[1] = nn.Identity()
    try:
        with pytest.raises(NotImplementedError, match=r"encoder\.block\[1\]\.layer holds .*Identity"):
            mergeplug.apply(pipe, safe=False, k=1, r=2)
    finally:
        block.layer[1] = original
    assert_pristine(model)


def test_match_groups_engine():
    """match(groups=...): one destination map per group; singleton groups reproduce the per-row decision."""
    g = torch.Generator().manual_seed(0)
    metric = torch.randn(6, 21, 8, generator=g)
    mask = torch.ones(6, 21, dtype=torch.bool)
    mask[2, :4] = False  # padding in one row of group 1
    for k in (1, 3, None):
        state = MergeState.init(6, 21, mask=mask)
        dst_rows, t_rows = match(metric, state, r=5, k=k)
        dst_single, t_single = match(metric, state, r=5, k=k, groups=torch.arange(6))
        assert torch.equal(dst_single, dst_rows) and t_single == t_rows
        labels = torch.tensor([4, 4, 9, 9, 9, 0])
        dst, t_new = match(metric, state, r=5, k=k, groups=labels)
        assert t_new == 21 - 5
        assert torch.equal(dst[0], dst[1]) and torch.equal(dst[2], dst[3]) and torch.equal(dst[2], dst[4])
        assert torch.equal(dst[5], dst_rows[5])  # a singleton group decides alone
        # padding merges only with padding in every row of the group
        for row in (2, 3, 4):
            for slot in dst[row].unique():
                members = mask[2][dst[row] == slot]
                assert members.all() or not members.any()
    with pytest.raises(ValueError, match="groups"):
        match(metric, MergeState.init(6, 21), r=2, groups=torch.zeros(5, dtype=torch.long))


def test_save_and_load_merged_pipeline(pipe, tmp_path):
    """mergeplug.save_pretrained / from_pretrained keep the family and its settings: same forecasts."""
    ctx = _context()[:, None]
    mergeplug.apply(pipe, safe=False, k=1, ratio=0.3)
    try:
        ref = pipe.predict(ctx, prediction_length=20)
        mergeplug.save_pretrained(pipe, tmp_path / "c2")
    finally:
        mergeplug.remove(pipe)
    loaded = mergeplug.from_pretrained(tmp_path / "c2")
    assert isinstance(loaded, Chronos2Pipeline) and mergeplug.settings(loaded).ratio == 0.3
    _assert_all_equal(loaded.predict(ctx, prediction_length=20), ref)
    assert mergeplug.token_counts(loaded)[-1] < mergeplug.token_counts(loaded)[0]


def test_long_context_default_picks_the_entry_for_the_context_and_tune_and_the_card_use_it(pipe, tmp_path):
    """A family's long-context table: the entry of the largest threshold the context's tokens reach, turned into
    ``apply`` arguments for the model's layers; tune tries it, the card names it; below the first: None."""
    import dataclasses

    from mergeplug.hub.card import model_card
    from mergeplug.patches import base
    from mergeplug.tune import default_candidates

    family = base.find_family(pipe)
    table = (
        (16, {"k": None, "reduction": 0.5, "schedule": "input", "protect_recent": 4, "proportional_attention": False}),
        (24, {"k": 1, "reduction": 0.75, "schedule": "front", "protect_recent": 6}),
    )
    saved = list(base._FAMILIES)
    base.register(dataclasses.replace(family, long_context=table))
    try:
        assert mergeplug.long_context_default(pipe, 15 * 16) is None  # 15 tokens: below the table
        assert mergeplug.long_context_default(pipe, 16 * 16 - 5) == {  # 16 tokens (the last one partial)
            "k": None, "protect_recent": 4, "proportional_attention": False, "input_ratio": 0.5, "ratio": 0.0,
        }  # fmt: skip
        label, kwargs = mergeplug.long_context_default(pipe, 500, describe=True)
        assert label == "k=1,reduction=0.75,schedule=front,protect_recent=6"
        assert kwargs == {"k": 1, "protect_recent": 6, **mergeplug.schedule_for_reduction(0.75, 2, "front")}
        with pytest.raises(ValueError, match="context must be a number of time steps"):
            mergeplug.long_context_default(pipe, 0)
        ctx = _context(n_b=2)
        before = _forward(pipe.model, ctx)
        mergeplug.apply(pipe, **kwargs)
        merged = _forward(pipe.model, ctx)
        counts = mergeplug.token_counts(pipe)
        assert counts[-1] < counts[0] and not torch.equal(merged, before)
        mergeplug.remove(pipe)
        assert torch.equal(_forward(pipe.model, ctx), before)
        cands = default_candidates(2, model=pipe, context=500)
        assert cands[f"long-context default ({label})"] == kwargs and len(cands) == 10
        assert len(default_candidates(2, model=pipe, context=100)) == 9  # 7 tokens: no long-context default
        mergeplug.save_pretrained(pipe, tmp_path / "m")
        card = str(model_card(tmp_path / "m"))
        assert "Long-context defaults of the `chronos-2` family" in card
        assert "from 24 tokens (384 time steps) of context: `k=1,reduction=0.75,schedule=front,protect_recent=6`" in (
            card
        )
        result = mergeplug.tune(pipe, _context(n_b=2, n=540).numpy(), prediction_length=20, windows=1, reps=1,
                                time_budget=0.5, progress=False)  # fmt: skip
        assert f"long-context default ({label})" in result.to_markdown()
    finally:
        base._FAMILIES[:] = saved


def test_shipped_long_context_protections_reach_tune_and_protect_the_newest_patches(pipe):
    """Chronos-2's long-context defaults are protections (no reduction): from 64 patches 12 protected, from 128
    patches 24, proportional attention off; tune's candidates carry them; merged, only the older patches merge."""
    from mergeplug.tune import default_candidates

    assert mergeplug.long_context_default(pipe, 1000) is None  # 63 patches
    assert mergeplug.long_context_default(pipe, 1024) == {"protect_recent": 12, "proportional_attention": False}
    lc = mergeplug.long_context_default(pipe, 8192)
    assert lc == {"protect_recent": 24, "proportional_attention": False}
    cands = default_candidates(2, model=pipe, context=2048)
    assert len(cands) == 9 and all(v["protect_recent"] == 24 and v["proportional_attention"] is False
                                   for v in cands.values())  # fmt: skip
    assert "k=1,reduction=0.5,protect_recent=24,proportional_attention=False" in cands
    assert all(",protect_recent" not in c for c in default_candidates(2, model=pipe, context=512))
    ctx = _context(n_b=1, n=512)  # this test model reads 512 steps: 32 patches, 8 of them unprotected
    mergeplug.apply(pipe, k=None, ratio=0.5, **lc)
    try:
        assert mergeplug.settings(pipe).protect_recent == 24
        _forward(pipe.model, ctx)
        counts = mergeplug.token_counts(pipe)
        assert counts[0] == 32 + 1 + H_PATCHES and 24 + 1 + H_PATCHES < counts[-1] < counts[0]
    finally:
        mergeplug.remove(pipe)
