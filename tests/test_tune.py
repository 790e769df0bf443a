"""mergeplug.tune (backtest on the user's data, fastest setting within a WQL tolerance), its CLI verb, merge-aware
fine-tuning, the validation split and the harness' forecast-safe keys."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import mergeplug
from mergeplug.eval.cli import main
from mergeplug.eval.data import load_dataset, validation_split
from mergeplug.eval.run import QUANTILES, _windows, parse_merge, score
from mergeplug.models import chronos_bolt
from mergeplug.tune import backtest_windows, default_candidates, tune, weighted_quantile_loss


def _series(n_series: int = 3, n: int = 400, seed: int = 0) -> list[np.ndarray]:
    g = np.random.default_rng(seed)
    t = np.arange(n)
    return [10 + 3 * np.sin(2 * np.pi * t / 24) + g.normal(0, 0.3, n).cumsum() * 0.1 for _ in range(n_series)]


def test_weighted_quantile_loss_is_gluonts_wql():
    ds = load_dataset("m4_hourly_sample")
    test_data = _windows(ds)
    g = np.random.default_rng(0)
    targets = np.stack([np.asarray(lab["target"], dtype=np.float64) for lab in test_data.label])
    q = np.sort(targets[:, None, :] + g.normal(0, 50, (len(targets), len(QUANTILES), targets.shape[1])), axis=1)
    assert weighted_quantile_loss(q, targets) == pytest.approx(score(ds, test_data, q)["WQL"], rel=1e-6)
    with pytest.raises(ValueError, match="undefined"):
        weighted_quantile_loss(q[:1], np.zeros_like(targets[:1]))


def test_backtest_windows_end_at_the_origin_and_never_look_ahead():
    x = np.arange(100, dtype=np.float32)
    contexts, targets = backtest_windows([x], 10, 3)
    assert [len(c) for c in contexts] == [70, 80, 90]  # oldest first
    np.testing.assert_array_equal(targets[-1], x[90:])  # the last window ends at the end of the data
    for c, t in zip(contexts, targets, strict=True):
        assert c[-1] + 1 == t[0]  # each context ends right before its window
    contexts, _ = backtest_windows([x], 10, 3, context=20)
    assert [len(c) for c in contexts] == [20, 20, 20]
    entries, _ = backtest_windows([{"target": x, "start": 5}], 10, 2)
    assert entries[0]["start"] == 5 and len(entries[0]["target"]) == 80
    with pytest.raises(ValueError, match="too short"):
        backtest_windows([x[:30]], 10, 3)


def test_tune_picks_within_tolerance_restores_the_model_and_resumes(tmp_path):
    pipe = chronos_bolt("test", context_length=256, prediction_length=16)
    mergeplug.apply(pipe, k=3, ratio=0.1)  # the user's own settings: restored afterwards
    before = mergeplug.settings(pipe)
    candidates = {"plain": dict(k=1, ratio=0.3, safe=False), "safe": dict(k=1, ratio=0.3)}
    kw = dict(prediction_length=16, windows=2, candidates=candidates, reps=1, min_time=0.0, progress=False)
    res = tune(pipe, _series(), tolerance=0.05, out=tmp_path / "t", **kw)
    assert [r["label"] for r in res.rows] == ["unmerged", "plain", "safe"]
    assert res.windows == 6 and res.rows[0]["WQL_change"] == 0.0
    if res.best is not None:
        row = next(r for r in res.rows if r["label"] == res.best_label)
        assert row["WQL_change"] <= 0.05 and row["speedup_low"] > 1.05 and res.best == candidates[res.best_label]
    else:
        assert res.reason.startswith("no candidate qualifies")
    assert mergeplug.settings(pipe) == before
    text = str(res)
    assert "| unmerged |" in text and ("Kept unmerged" in text or "Chosen:" in text)
    assert (tmp_path / "t" / "tune.md").exists() and len((tmp_path / "t" / "tune.jsonl").read_text().splitlines()) == 3
    # a rerun reads the finished accuracy rows (same numbers), re-times
    again = tune(pipe, _series(), tolerance=0.05, out=tmp_path / "t", **kw)
    assert [r["WQL"] for r in again.rows] == [r["WQL"] for r in res.rows]
    # a truncated last row (a kill mid-write) is recomputed
    path = tmp_path / "t" / "tune.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:10])
    third = tune(pipe, _series(), tolerance=0.05, out=tmp_path / "t", **kw)
    assert third.rows[-1]["WQL"] == pytest.approx(res.rows[-1]["WQL"], rel=1e-6)
    fourth = tune(pipe, _series(), tolerance=0.05, out=tmp_path / "t", **kw)  # the recomputed row was kept
    assert [r["WQL"] for r in fourth.rows] == [r["WQL"] for r in third.rows]
    assert len([x for x in path.read_text().splitlines() if x.startswith("{") and x.endswith("}")]) == 3
    with pytest.raises(ValueError, match="windows"):
        tune(pipe, _series(), tolerance=0.05, out=tmp_path / "t", **{**kw, "windows": 3})
    other = chronos_bolt("test", context_length=256, prediction_length=16, seed=1)  # other weights: not resumed
    with pytest.raises(ValueError, match="model"):
        tune(other, _series(), tolerance=0.05, out=tmp_path / "t", **kw)
    # apply_best leaves the chosen setting on (or the model unmerged)
    chosen = tune(pipe, _series(), tolerance=10.0, apply_best=True, **kw)  # everything is within 1000%
    cfg = mergeplug.settings(pipe)
    if chosen.best is None:  # no candidate was faster than unmerged here: the user's settings stay
        assert cfg == before
    else:
        assert (cfg.ratio, cfg.safe) == (0.3, chosen.best.get("safe", True))


def test_tune_and_unmerged_keep_fast_sampling():
    from mergeplug.core import unmerged
    from mergeplug.models import chronos_t5
    from mergeplug.patches.base import find_record

    pipe = chronos_t5("test", prediction_length=4, num_samples=3)
    mergeplug.fast_sampling(pipe)
    mergeplug.apply(pipe, k=1, ratio=0.1, safe=False)
    with unmerged(pipe):
        assert mergeplug.settings(pipe) is None and find_record([pipe.model], aux=True) is not None
    assert mergeplug.settings(pipe).ratio == 0.1 and find_record([pipe.model], aux=True) is not None
    tune(pipe, _series(1, 120), prediction_length=4, windows=1, candidates={"a": dict(k=1, ratio=0.2)}, reps=1,
         min_time=0.0, progress=False)  # fmt: skip
    assert mergeplug.settings(pipe).ratio == 0.1 and find_record([pipe.model], aux=True) is not None
    mergeplug.remove(pipe)


def test_tune_rejects_bad_input():
    pipe = chronos_bolt("test", context_length=256, prediction_length=16)
    with pytest.raises(ValueError, match="too short"):
        tune(pipe, [np.ones(20)], prediction_length=16, progress=False)
    with pytest.raises(ValueError, match="tolerance"):
        tune(pipe, _series(), prediction_length=16, tolerance=-0.1, progress=False)
    with pytest.raises(ValueError, match="prediction_length"):
        tune(pipe, _series(), prediction_length=0, progress=False)
    with pytest.raises(TypeError, match="predict_quantiles"):
        tune(torch.nn.Linear(2, 2), _series(), prediction_length=16, candidates={}, progress=False)
    bad = [({"context": 0}, r"context must be a number of time steps >= 1 \(or None.*got 0"),  # issue 34, point 14
           ({"context": -5}, "got -5"),
           ({"tolerance": "0.01"}, "tolerance must be a number"),
           ({"candidates": [{"k": 1, "ratio": 0.2}]}, "candidates must be a dict of label")]  # fmt: skip
    for kwargs, message in bad:
        with pytest.raises(ValueError, match=message):
            tune(pipe, _series(), prediction_length=16, progress=False, **kwargs)
    assert list(default_candidates(6)) == [f"k={k},reduction={r}" for k in (1, 3, "global") for r in (0.25, 0.5, 0.75)]


def test_cli_refuses_seasonal_naive_tuning_and_bad_profile_sizes(capsys):
    """Issue 34, point 15: tune --model seasonal-naive asked the Hub; profile --batch 0 / --context -1 crashed."""
    assert main(["tune", "--model", "seasonal-naive", "--datasets", "m1_yearly", "--no-progress"]) == 2
    assert "seasonal-naive has nothing to merge, so nothing to tune" in capsys.readouterr().err
    for flag, value in (("--batch", "0"), ("--context", "-1"), ("--reps", "0")):
        assert main(["profile", "--model", "random:chronos-bolt-test", flag, value]) == 2
        assert f"{flag} must be an int >= 1, got {value}" in capsys.readouterr().err


def test_tune_cli_checks_the_choice_on_the_test_windows(tmp_path, capsys):
    args = ["tune", "--model", "random:chronos-bolt-test", "--datasets", "m4_hourly_sample", "--windows", "1",
            "--reps", "1", "--merge", "k=1,ratio=0.2,safe=false", "--tolerance", "10", "--check-test",
            "--out", str(tmp_path), "--no-progress"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "### m4_hourly_sample" in out and "On the test windows" in out
    where = tmp_path / "random_chronos-bolt-test" / "m4_hourly_sample"  # <out>/<model>/<dataset>
    meta = json.loads((where / "tune.json").read_text())
    assert meta["result"]["best_label"] in ("unmerged", "k=1,ratio=0.2,safe=false")
    rows = [json.loads(x) for x in (where / "test" / "results.jsonl").read_text().splitlines()]
    assert {r["setting"] for r in rows} >= {"seasonal-naive", "unmerged"}
    assert main(["tune", "--model", "random:chronos-bolt-test", "--datasets", "nope", "--out", str(tmp_path)]) == 2


def test_validation_split_holds_out_the_test_windows():
    ds = load_dataset("taylor_30min")
    val = validation_split(ds)
    cut = ds.prediction_length * ds.windows
    assert val.name == "taylor_30min~val" and val.base == "taylor_30min" and val.windows == ds.windows
    for e, v in zip(ds.entries, val.entries, strict=True):
        np.testing.assert_array_equal(v["target"], np.asarray(e["target"])[:-cut])


def test_harness_parses_the_forecast_safe_keys():
    s = parse_merge("k=1,ratio=0.2,safe=false,protect_recent=3,min_tokens=5,period=24,min_similarity=0.8")
    assert s.kwargs == dict(k=1, ratio=0.2, safe=False, protect_recent=3, min_tokens=5, period=24.0, min_similarity=0.8)
    assert parse_merge("k=1,ratio=0.2,period=season").kwargs["period"] == "season"
    assert parse_merge("k=1,ratio=0.2,period=off").kwargs["period"] == 0.0
    with pytest.raises(ValueError, match="safe"):
        parse_merge("k=1,ratio=0.2,safe=maybe")


def test_merge_aware_fine_tuning_runs_saves_and_loads(tmp_path):
    from mergeplug_lab.train.export import export
    from mergeplug_lab.train.loop import TrainSettings, load_checkpoint_model, train
    from mergeplug_lab.train.recipes import BoltRecipe

    recipe = BoltRecipe(d_model=16, d_ff=32, heads=2, d_kv=8, encoder_layers=2, decoder_layers=1, context_length=64,
                        horizon=16, datasets=["m3_yearly"], synthetic=8)  # fmt: skip
    settings = TrainSettings(steps=3, batch_size=8, warmup=1, threads=1, bf16=False, merge="k=1,ratio=0.3,safe=false")
    train(recipe, settings, tmp_path / "r", progress=False)
    cfg = json.loads((tmp_path / "r" / "checkpoint" / "config.json").read_text())
    assert cfg["architectures"] == ["ChronosBoltModelForForecasting"]  # saved from the model's own classes
    _, model, state = load_checkpoint_model(tmp_path / "r")
    assert state["step"] == 3 and mergeplug.settings(model).ratio == 0.3  # trained (and reloaded) merged
    with pytest.raises(ValueError, match="fine-tuning set-up"):  # a resume must keep the merge setting
        train(recipe, TrainSettings(**{**settings.__dict__, "merge": "k=3,ratio=0.3"}), tmp_path / "r", progress=False)
    out = export(tmp_path / "r", tmp_path / "m")
    meta = json.loads((out / "mergeplug_config.json").read_text())
    assert meta["merge"]["ratio"] == 0.3 and meta["merge"]["safe"] is False
    loaded = mergeplug.from_pretrained(out)
    assert mergeplug.settings(loaded).ratio == 0.3
    ref = {k: v for k, v in model.state_dict().items()}
    for k, v in loaded.inner_model.state_dict().items():
        assert torch.equal(v, ref[k]), k
    with pytest.raises(ValueError, match="merge settings only"):
        train(recipe, TrainSettings(steps=1, merge="k=1,ratio=0.3,period=season"), tmp_path / "x", progress=False)
