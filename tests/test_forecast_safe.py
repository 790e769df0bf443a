"""Forecast-safe merging: protected recent tokens, seasonal twins (period-aware band), the token floor, defaults."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from chronos import Chronos2Pipeline
from chronos.chronos2.model import Chronos2Model
from transformers import PatchTSTConfig, PatchTSTForPrediction

import mergeplug
import mergeplug.merge.matching as merge_mod  # merge_layer calls merge_step there
from mergeplug.config import MergeConfig
from mergeplug.merge import MergeState, detect_period, match, seasonal_candidates
from mergeplug.models import chronos2, chronos_bolt, chronos_t5

# ------------------------------------------------------------------------------------------------------ helpers


@pytest.fixture
def last_state(monkeypatch):
    """Records the MergeState of every scheduled merge step (``merge_layer`` -> ``merge_step``); [-1] is the final."""
    states: list[MergeState] = []
    orig = merge_mod.merge_step

    def spy(x, state, dst, t_new):
        out = orig(x, state, dst, t_new)
        states.append(state)
        return out

    monkeypatch.setattr(merge_mod, "merge_step", spy)
    return states


def _seasonal(n_b: int, n: int, period: float, seed: int = 0, noise: float = 0.05) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n, dtype=torch.float32)
    wave = torch.sin(2 * torch.pi * t / period) + 0.5 * torch.sin(4 * torch.pi * t / period + 1.0)
    return 10 + 3 * wave + noise * torch.randn(n_b, n, generator=g)


def _sizes_at_positions(state: MergeState) -> torch.Tensor:
    """(B, N): size of the token that holds each original position."""
    return state.size.gather(1, state.source)


def _tst():
    from transformers import TimeSeriesTransformerConfig, TimeSeriesTransformerForPrediction

    torch.manual_seed(0)
    cfg = TimeSeriesTransformerConfig(
        prediction_length=8, context_length=48, lags_sequence=[1, 2, 3], num_time_features=1, d_model=16,
        encoder_layers=3, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=32, decoder_ffn_dim=32, dropout=0.0,
    )  # fmt: skip
    return TimeSeriesTransformerForPrediction(cfg).eval()


def _tst_batch(n_b: int = 2):
    past = _seasonal(n_b, 51, 12)
    return dict(
        past_values=past,
        past_time_features=torch.arange(51, dtype=torch.float32).expand(n_b, 51)[..., None] / 51,
        past_observed_mask=torch.ones(n_b, 51),
        future_time_features=torch.arange(51, 59, dtype=torch.float32).expand(n_b, 8)[..., None] / 51,
    )


def _patchtst() -> PatchTSTForPrediction:
    torch.manual_seed(0)
    cfg = PatchTSTConfig(
        num_input_channels=1, context_length=256, patch_length=16, patch_stride=8, prediction_length=16,
        d_model=32, num_attention_heads=2, num_hidden_layers=3, ffn_dim=64, dropout=0.0, loss="mse",
    )  # fmt: skip
    return PatchTSTForPrediction(cfg).eval()


def _chronos2_pipe() -> Chronos2Pipeline:
    config = copy.deepcopy(chronos2("test", context_length=512).model.config)
    config.initializer_factor = 0.2
    torch.manual_seed(0)
    return Chronos2Pipeline(model=Chronos2Model(config).eval())


# (family name, build, run(obj) -> output tensor, number of trailing read-out tokens, encoder tokens N)
def _run_t5(pipe):
    torch.manual_seed(0)
    return pipe.embed(_seasonal(2, 120, 24))[0]


def _run_bolt(pipe):
    return pipe.predict_quantiles(_seasonal(2, 512, 48), prediction_length=32)[0]


def _run_chronos2(pipe):
    with torch.no_grad():
        return pipe.model(_seasonal(2, 512, 48), num_output_patches=2).quantile_preds


def _run_patchtst(model):
    with torch.no_grad():
        return model(past_values=_seasonal(2, 256, 24)[..., None]).prediction_outputs


def _run_tst(model):
    with torch.no_grad():
        return model.model(**_tst_batch()).last_hidden_state


FAMILIES = {
    "chronos-t5": (lambda: chronos_t5("test", prediction_length=6, num_samples=5), _run_t5, 1, 121),
    "chronos-bolt": (lambda: chronos_bolt("test", context_length=512, prediction_length=32), _run_bolt, 1, 33),
    "chronos-2": (_chronos2_pipe, _run_chronos2, 3, 35),
    "patchtst": (_patchtst, _run_patchtst, 0, 31),
    "hf-time-series": (_tst, _run_tst, 0, 48),
}


# ------------------------------------------------------------------------------------------ protected recent tokens


@pytest.mark.parametrize("family", list(FAMILIES))
def test_protected_recent_tokens_never_merge(family, last_state):
    build, run, tail, n = FAMILIES[family]
    obj = build()
    recent = 6
    mergeplug.apply(obj, k=1, ratio=0.4, protect_recent=recent, min_tokens=0, period=0, min_similarity=-1)
    run(obj)
    assert last_state, "nothing merged"
    final = last_state[-1]
    assert final.source.shape[1] == n
    sizes = _sizes_at_positions(final)
    window = slice(n - tail - recent, n - tail)
    assert torch.all(sizes[:, window] == 1), sizes[:, window]
    if tail:
        assert torch.all(sizes[:, n - tail :] == 1)  # read-out tokens too
    assert (sizes[:, : n - tail - recent] > 1).any()  # and the rest did merge
    # without the protection the most recent tokens merge too (the test can fail)
    last_state.clear()
    mergeplug.apply(obj, k=1, ratio=0.4, protect_recent=0, min_tokens=0, period=0, min_similarity=-1)
    run(obj)
    assert (_sizes_at_positions(last_state[-1])[:, window] > 1).any()
    mergeplug.remove(obj)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_defaults_are_on_and_recorded(family):
    build, run, _, _ = FAMILIES[family]
    obj = build()
    mergeplug.apply(obj, k=1, ratio=0.3)
    cfg = mergeplug.settings(obj)
    fam = mergeplug.patches.find_family(obj)
    assert cfg.safe is True and fam.forecasting
    assert cfg.protect_recent == fam.forecast_defaults["protect_recent"] > 0
    assert cfg.min_tokens == fam.forecast_defaults["min_tokens"] > 0
    assert cfg.period == "auto" and cfg.min_similarity == fam.forecast_defaults.get("min_similarity")
    mergeplug.apply(obj, k=1, ratio=0.3, safe=False)
    cfg = mergeplug.settings(obj)
    assert (cfg.safe, cfg.protect_recent, cfg.min_tokens, cfg.period, cfg.min_similarity) == (False, 0, 0, None, None)
    mergeplug.remove(obj)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_r0_and_remove_stay_bitwise_with_the_defaults(family):
    build, run, _, _ = FAMILIES[family]
    obj = build()
    ref = run(obj)
    mergeplug.apply(obj, k=1, r=0)  # forecast-safe defaults on, nothing to merge
    assert torch.equal(run(obj), ref)
    mergeplug.apply(obj, k=1, ratio=0.3)
    merged = run(obj)
    assert merged.shape == ref.shape and torch.isfinite(merged).all()
    mergeplug.remove(obj)
    assert torch.equal(run(obj), ref)


def test_r0_runs_blocks_that_take_hidden_states_by_keyword():
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True) for _ in range(2))

        def forward(self, x):
            for block in self.blocks:
                x = block(src=x)
            return x

    mergeplug.register_patch(Net, blocks="blocks", name="kw-net")
    net = Net().eval()
    x = torch.randn(2, 10, 8)
    with torch.no_grad():
        ref = net(x)
        mergeplug.apply(net, k=1, r=0)
        assert torch.equal(net(x), ref)
    mergeplug.remove(net)


def test_protect_recent_is_refused_where_there_is_no_forecast_origin():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=50)).eval()
    with pytest.raises(ValueError, match="protect_recent applies to forecasting families"):
        mergeplug.apply(model, k=1, causal=True, ratio=0.2, protect_recent=4)
    mergeplug.apply(model, k=1, causal=True, ratio=0.2)  # defaults: nothing forecast-specific
    cfg = mergeplug.settings(model)
    assert (cfg.protect_recent, cfg.min_tokens, cfg.period) == (0, 0, None)


def test_config_validation():
    for bad in (dict(protect_recent=-1), dict(min_tokens=1.5), dict(period=-3), dict(period="daily"), dict(safe=1)):
        with pytest.raises(ValueError):
            MergeConfig(k=1, r=2, **bad)
    assert MergeConfig(k=1, r=2, period=48, steps_per_token=16).token_period == 3.0
    assert MergeConfig(k=1, r=2, period=0).token_period is None


# ------------------------------------------------------------------------------------------------- token floor


def test_floor_caps_every_step():
    cfg = MergeConfig(k=1, ratio=0.5, min_tokens=10, input_ratio=0.5)
    assert cfg.merges_at(0, 16) == 6 and cfg.merges_at(0, 10) == 0 and cfg.merges_at(0, 8) == 0
    assert cfg.input_merges(14) == 4


@pytest.mark.parametrize("family", list(FAMILIES))
def test_token_floor_holds(family):
    build, run, _, n = FAMILIES[family]
    obj = build()
    floor = n // 2 + 3
    mergeplug.apply(obj, k=None, ratio=0.5, min_tokens=floor, protect_recent=0, period=0, min_similarity=-1)
    run(obj)
    counts = mergeplug.token_counts(obj)
    assert counts[0] == n and min(counts) >= floor and min(counts) < n
    mergeplug.apply(obj, k=None, ratio=0.5, min_tokens=n, protect_recent=0, period=0)  # a short series: untouched
    run(obj)
    assert min(mergeplug.token_counts(obj) or [n]) == n
    mergeplug.remove(obj)


# ------------------------------------------------------------------------------------------ seasonal twins


def _phase_metric(n_b: int, n: int, period: int, c: int = 16, seed: int = 0) -> torch.Tensor:
    """Token t is phase vector V[t % period] (+ a little noise): twins repeat exactly one period apart, while
    neighbours are unrelated random directions."""
    g = torch.Generator().manual_seed(seed)
    phases = torch.randn(period, c, generator=g)
    t = torch.arange(n)
    return phases[t % period].expand(n_b, n, c) + 0.01 * torch.randn(n_b, n, c, generator=g)


def test_period_band_pairs_tokens_with_their_seasonal_twins():
    period, n = 7, 70  # odd: a twin one period away is in the other (B) set
    metric = _phase_metric(2, n, period)
    plain = MergeState.init(2, n)
    dst, _ = match(metric, plain, r=10, k=1)
    seasonal = MergeState.init(2, n)
    dst_p, _ = match(metric, seasonal, r=10, k=1, period=period)

    def gaps(d):  # distances between consecutive members of every merged token
        out = []
        for row in d:
            for slot in row.unique():
                members = (row == slot).nonzero().flatten()
                out += (members[1:] - members[:-1]).tolist()
        return out

    assert set(gaps(dst)) == {1}  # plain k=1: neighbours only
    assert set(gaps(dst_p)) == {period} and len(gaps(dst_p)) == 20  # every merge joins a token with a twin


def test_seasonal_candidates_follow_positions_and_causality():
    metric = _phase_metric(1, 40, 5)
    pos = torch.arange(40, dtype=torch.float32)[None]
    scores, cand = seasonal_candidates(metric, pos, 5.0)
    # A token 2i: B tokens bracketing 2i+5 (indices (2i+4)/2 .. ) and 2i-5
    i = 6  # sequence index 12: twins at 17 and 7 -> B indices 8 and 3 are among the candidates
    assert 8 in cand[0, i].tolist() and 3 in cand[0, i].tolist()
    assert scores[0, i].max() > 0.99
    scores_c, cand_c = seasonal_candidates(metric, pos, 5.0, causal=True)
    ok = scores_c[0] > float("-inf")
    assert torch.all(cand_c[0][ok] >= torch.arange(20)[:, None].expand(-1, 4)[ok])  # only later B tokens
    none, _ = seasonal_candidates(metric, pos, torch.zeros(1))
    assert torch.all(none == float("-inf"))  # period 0: no twins


def test_detect_period_finds_the_cycle_and_not_noise_or_a_constant():
    metric = _phase_metric(3, 96, 12)
    valid = torch.ones(3, 96, dtype=torch.bool)
    assert detect_period(metric, valid).tolist() == [12.0, 12.0, 12.0]
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(2, 96, 16, generator=g)
    assert detect_period(noise, valid[:2]).tolist() == [0.0, 0.0]
    const = torch.ones(1, 96, 16)
    assert detect_period(const, valid[:1]).tolist() == [0.0]
    # smooth but aperiodic (a random walk): neighbours alike is not a cycle
    walk = torch.randn(1, 96, 16, generator=g).cumsum(1)
    assert detect_period(walk, valid[:1]).tolist() == [0.0]
    # groups share one period
    mixed = torch.cat([metric[:1], _phase_metric(1, 96, 8)])
    got = detect_period(mixed, valid[:2], groups=torch.tensor([0, 0]))
    assert got[0] == got[1]


def test_one_period_per_group_even_with_missing_values():
    """Rows of a group must share their twins: with different amounts of missing data the group still gets one
    period, and no real token merges with a missing one."""
    metric = _phase_metric(2, 64, 12)
    mask = torch.ones(2, 64, dtype=torch.bool)
    mask[1, :30] = False  # 34 observed tokens: two cycles of 12 are still seen
    state = MergeState.init(2, 64, mask=mask)
    dst, t_new = match(metric, state, r=8, k=1, period="auto", groups=torch.tensor([0, 0]))
    assert state.period[0] == state.period[1] > 0
    for b in range(2):
        for slot in dst[b].unique():
            members = mask[b][dst[b] == slot]
            assert members.all() or (~members).all()
    mask[1, :44] = False  # 20 observed tokens: too few for two cycles, so the whole group gets none (not 12 and 10)
    state = MergeState.init(2, 64, mask=mask)
    match(metric, state, r=8, k=1, period="auto", groups=torch.tensor([0, 0]))
    assert state.period.tolist() == [0.0, 0.0]


def test_auto_period_on_bolt_finds_the_seasonal_period_in_patches(last_state):
    pipe = chronos_bolt("test", context_length=512, prediction_length=32)
    mergeplug.apply(pipe, k=1, ratio=0.3, protect_recent=0, min_tokens=0)  # period="auto" (default)
    pipe.predict_quantiles(_seasonal(2, 512, 48, noise=0.0), prediction_length=32)
    assert last_state and last_state[-1].period is not None
    # 48 steps / 16 per patch = 3 patches, or a multiple of it
    found = last_state[-1].period
    assert torch.all(found > 0) and torch.all(found % 3 == 0), found


# ------------------------------------------------------------------------------------------- similarity floor


def test_similarity_floor_merges_only_alike_pairs():
    g = torch.Generator().manual_seed(0)
    n, c = 40, 16
    metric = torch.randn(1, n, c, generator=g)
    metric[0, 10:20] = metric[0, 10]  # a run of identical tokens: the only pairs alike
    state = MergeState.init(1, n)
    dst, t_new = match(metric, state, r=15, k=1, min_similarity=0.99)
    merged = [slot for slot in dst[0].unique() if (dst[0] == slot).sum() > 1]
    assert n - t_new == 5  # the 5 A tokens of the run (indices 10, 12, ..., 18), not the 15 asked for
    for slot in merged:
        members = (dst[0] == slot).nonzero().flatten()
        assert torch.all((members >= 10) & (members < 20))
    dst_all, t_all = match(metric, MergeState.init(1, n), r=15, k=1)
    assert n - t_all == 15  # without the floor every request is met
    # a batch: the most constrained row sets the count (one length per batch)
    batch = torch.cat([metric, torch.randn(1, n, c, generator=g)])
    _, t_b = match(batch, MergeState.init(2, n), r=15, k=1, min_similarity=0.99)
    assert t_b == n
    with pytest.raises(ValueError, match="min_similarity"):
        MergeConfig(k=1, r=2, min_similarity=1.5)
    with pytest.raises(ValueError, match="min_tokens applies to the r / ratio modes"):
        MergeConfig(k=1, threshold=0.9, causal=True, min_tokens=4)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_sequence_within_the_floor_runs_the_original_code_bitwise(family):
    build, run, _, n = FAMILIES[family]
    obj = build()
    ref = run(obj)
    mergeplug.apply(obj, k=1, ratio=0.4, min_tokens=n, protect_recent=0, period=0)  # n tokens: nothing may merge
    assert torch.equal(run(obj), ref)
    assert mergeplug.token_counts(obj) == [n] * len(mergeplug.token_counts(obj))
    mergeplug.remove(obj)


def test_the_token_floor_holds_per_series_in_a_ragged_batch():
    """Issue 34, point 7: a 200-step series (13 patches, below the floor of 16) is unmerged alone; batched with a
    1,024-step series it used to have its own patches merged (forecast moved ~1%). Now its row merges only its
    padding: its forecast equals the unmerged one up to float rounding, while the long series still merges."""
    from chronos import BaseChronosPipeline

    from mergeplug.eval.models import checkpoint_dir

    pipe = BaseChronosPipeline.from_pretrained(str(checkpoint_dir("bolt-ref")))
    rng = np.random.default_rng(0)
    wave = lambda n: np.sin(np.arange(n) / 24 * 2 * np.pi) * 3 + rng.normal(0, 0.3, n)  # noqa: E731
    short, long = (torch.tensor(wave(n), dtype=torch.float32) for n in (200, 1024))
    ref, _ = pipe.predict_quantiles([short, long], prediction_length=24)
    mergeplug.apply(pipe, k=1, ratio=0.3)
    try:
        alone, _ = pipe.predict_quantiles([short], prediction_length=24)
        both, _ = pipe.predict_quantiles([short, long], prediction_length=24)
        counts = mergeplug.token_counts(pipe)
    finally:
        mergeplug.remove(pipe)
    unmerged_alone, _ = pipe.predict_quantiles([short], prediction_length=24)
    assert torch.equal(alone[0], unmerged_alone[0])
    torch.testing.assert_close(both[0], ref[0], rtol=1e-5, atol=1e-5)
    assert counts[-1] < counts[0] and (both[1] - ref[1]).abs().max() > 1e-3  # the long series did merge
