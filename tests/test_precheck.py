"""Spectral pre-check (mergeplug/precheck.py): statistics on signals with known spectra, predictions, validation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mergeplug.eval.cli import main
from mergeplug.eval.data import load_dataset, variant
from mergeplug.precheck import cutoff, load_calibration, precheck, spectral_stats, window_stats

L = 512


def _sine(period: float, n: int = 1) -> np.ndarray:
    t = np.arange(L)
    return np.stack([np.sin(2 * np.pi * t / period + i) for i in range(n)])


def _white(n: int = 200) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, L))


def test_pure_sine():
    s = window_stats(_sine(32), cutoffs=[1 / 64, 1 / 16])
    assert s["centroid"][0] == pytest.approx(1 / 32, abs=1.5 / L)
    assert s["rolloff"][0] == pytest.approx(1 / 32, abs=1.5 / L)
    assert s["entropy"][0] < 0.3 and s["flatness"][0] < 1e-3
    assert s["lag1"][0] == pytest.approx(np.cos(2 * np.pi / 32), abs=0.01)
    assert s["high_share@0.015625"][0] > 0.99  # all power above 1/64
    assert s["high_share@0.0625"][0] < 0.01  # none above 1/16
    # predictable: the share above the cut-off times the lag-1 autocorrelation
    assert s["predictable_high@0.015625"][0] == pytest.approx(s["high_share@0.015625"][0] * s["lag1"][0])
    assert s["predictable_high@0.015625"][0] > 0.97 and s["predictable_high@0.0625"][0] < 0.01


def test_white_noise():
    s = {k: np.median(v) for k, v in window_stats(_white(), cutoffs=[0.1, 0.25]).items()}
    assert s["entropy"] > 0.9 and s["flatness"] > 0.4
    assert s["centroid"] == pytest.approx(0.25, abs=0.02) and abs(s["lag1"]) < 0.05
    assert s["high_share@0.1"] == pytest.approx(0.8, abs=0.05)  # flat spectrum: share = (0.5 - f_c) / 0.5
    assert s["high_share@0.25"] == pytest.approx(0.5, abs=0.05)
    assert s["predictable_high@0.1"] < 0.05  # plenty of power above the cut-off, none of it predictable


def test_random_walk_is_red():
    walk = _white().cumsum(axis=1)
    s = {k: np.median(v) for k, v in window_stats(walk, cutoffs=[cutoff(8, 0.75)]).items()}
    assert s["centroid"] < 0.03 and s["lag1"] > 0.9 and s["entropy"] < 0.5
    assert s[f"high_share@{cutoff(8, 0.75):.6g}"] < 0.2
    assert s[f"predictable_high@{cutoff(8, 0.75):.6g}"] < 0.2


def test_level_trend_and_scale_do_not_matter_and_bad_input():
    x = _white(3)
    t = np.arange(L)
    moved = 5.0 + 0.3 * t + 7.0 * x
    a, b = window_stats(x, [0.2]), window_stats(moved, [0.2])
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-9, atol=1e-12)
    gappy = x.copy()
    gappy[:, 100:110] = np.nan
    assert np.isfinite(window_stats(gappy)["entropy"]).all()
    assert np.isnan(window_stats(np.ones((1, L)))["entropy"][0])  # a constant window has no spectrum
    with pytest.raises(ValueError, match="at least 8 points"):
        window_stats(np.ones((1, 5)))
    with pytest.raises(ValueError, match="8 or more observed"):
        spectral_stats([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="reduction must be in"):
        cutoff(8, 1.0)
    assert cutoff(8, 0.75) == pytest.approx(1 / 64)
    series = np.sin(np.arange(600) / 24 * 2 * np.pi)  # issue 34, point 15: these were accepted or a KeyError
    for kwargs, message in (({"tolerance": -1}, "tolerance must be a number >= 0"),
                            ({"tolerance": float("nan")}, "tolerance must be a number >= 0"),
                            ({"stride": 0}, "stride must be an int >= 1"),
                            ({"calibration": {}}, "the calibration lacks settings, statistic")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            precheck(series, family="chronos-bolt", **kwargs)


def test_spectral_stats_inputs_agree():
    x = _white(4).cumsum(axis=1)
    a = spectral_stats(x)
    assert spectral_stats(list(x)) == a and set(a) >= {"entropy", "high_share@r0.75"}
    one = spectral_stats(x[0])
    assert one["lag1"] == pytest.approx(window_stats(x[:1])["lag1"][0])


def test_variants_change_the_spectrum_as_intended():
    ds = load_dataset("traffic_volume_hourly")
    base = spectral_stats(ds)
    noisy = spectral_stats(variant(ds, "noise", 0.3))
    smooth = spectral_stats(variant(ds, "smooth", 4))
    assert noisy["high_share@r0.75"] > base["high_share@r0.75"] > smooth["high_share@r0.75"]
    agg = variant(ds, "aggregate", 2)
    assert agg.freq != ds.freq and len(agg.entries[0]["target"]) == len(ds.entries[0]["target"]) // 2
    assert agg.base == "traffic_volume_hourly" and agg.name == "traffic_volume_hourly~aggregate2"
    with pytest.raises(ValueError, match="unknown variant kind"):
        variant(ds, "jitter", 1)
    with pytest.raises(ValueError, match="integer level >= 2"):
        variant(ds, "smooth", 1)


def test_predictor_direction_and_recommendation():
    """With a calibration in which power above the merge cut-off costs accuracy (the sign measured for
    reductions >= 0.5, see benchmarks/precheck), a smooth series predicts less damage than white noise."""
    cal = {
        "model": "test",
        "context": 512,
        "stride": 8,
        "statistic": "high_share",
        "merging": "safe",
        "settings": {
            "k=1,reduction=0.5": {"k": 1, "reduction": 0.5, "slope": 0.05, "intercept": -0.01},
            "k=1,reduction=0.75": {"k": 1, "reduction": 0.75, "slope": 0.12, "intercept": -0.04},
        },
    }
    smooth = _white(50).cumsum(axis=1)  # a random walk: almost all power at low frequencies
    p_smooth, p_noise = precheck(smooth, calibration=cal), precheck(_white(50), calibration=cal)
    for label in cal["settings"]:
        assert p_smooth.predictions[label] < p_noise.predictions[label], label
    assert p_smooth.recommended == "k=1,reduction=0.75" and p_noise.recommended is None
    text = str(p_smooth)
    assert "expected WQL change" in text and "forecast-safe setting within 1%: k=1,reduction=0.75" in text
    # a plain-merging calibration describes a mode the defaults do not run: it recommends nothing, and says so
    plain = precheck(smooth, calibration={**cal, "merging": "plain"})
    assert plain.recommended is None and "recommends nothing" in plain.note


def test_predictions_are_monotone_in_the_reduction():
    """Separate lines per setting can cross; for one k a larger reduction is never predicted to cost less."""
    cal = {
        "model": "test", "context": 512, "stride": 8, "statistic": "lag1", "merging": "safe",
        "settings": {
            "k=1,reduction=0.25": {"k": 1, "reduction": 0.25, "slope": 0.0, "intercept": 0.047},
            "k=1,reduction=0.5": {"k": 1, "reduction": 0.5, "slope": 0.0, "intercept": -0.099},
            "k=1,reduction=0.75": {"k": 1, "reduction": 0.75, "slope": 0.0, "intercept": 0.716},
            "k=global,reduction=0.75": {"k": None, "reduction": 0.75, "slope": 0.0, "intercept": 0.309},
        },
    }  # fmt: skip
    pred = precheck(_white(5).cumsum(axis=1), calibration=cal).predictions
    assert pred["k=1,reduction=0.5"] == pytest.approx(0.047) and pred["k=1,reduction=0.25"] == pytest.approx(0.047)
    assert pred["k=1,reduction=0.75"] == pytest.approx(0.716) and pred["k=global,reduction=0.75"] == pytest.approx(
        0.309
    )


def test_precheck_follows_the_model_and_says_when_it_cannot_predict():
    from mergeplug.models import chronos_bolt, chronos_t5
    from mergeplug.precheck import model_geometry

    bolt = chronos_bolt("test", context_length=512)
    geo = model_geometry(bolt)
    assert geo == {"family": "chronos-bolt", "context": 512, "stride": 16, "min_tokens": 16, "extra_tokens": 1}
    # no calibration for Chronos-T5: statistics, no borrowed prediction
    res = precheck(_white(3).cumsum(axis=1), model=chronos_t5("test"))
    assert res.predictions == {} and res.recommended is None and "No calibration exists for chronos-t5" in res.note
    assert "| entropy |" in str(res)
    # series too short to merge under the forecast-safe floor: "nothing will merge", not a predicted change
    cal = {"model": "test", "context": 1024, "stride": 16, "statistic": "lag1", "merging": "safe",
           "settings": {"k=1,reduction=0.5": {"k": 1, "reduction": 0.5, "slope": 0.0, "intercept": 0.2}}}  # fmt: skip
    short = precheck(_white(4)[:, :200].cumsum(axis=1), model=bolt, calibration=cal)  # 13 patches + [REG]
    assert short.predictions == {} and "Nothing will merge: the longest series gives 14 tokens" in short.note
    assert "min_tokens=16" in short.note
    long = precheck(_white(4).cumsum(axis=1), model=bolt, calibration=cal)  # 512 steps: 33 tokens
    assert long.predictions == {"k=1,reduction=0.5": pytest.approx(0.2)} and "Nothing will merge" not in long.note


def test_predictable_high_ranks_signals_by_forecastable_detail():
    """With a calibration on ``predictable_high`` (positive slope, as measured): a fast periodic signal (daily
    cycle of an hourly series, period 24 < the 64 steps a merged PatchTST token spans at reduction 0.75) predicts
    the most damage; a smooth series (random walk) and white noise (nothing to forecast in its fast part) less."""
    cal = {
        "model": "test",
        "context": 512,
        "stride": 8,
        "statistic": "predictable_high",
        "settings": {"k=1,reduction=0.75": {"k": 1, "reduction": 0.75, "slope": 1.0, "intercept": 0.0}},
    }
    rng = np.random.default_rng(1)
    daily = _sine(24, 20) + 0.05 * rng.normal(size=(20, L))
    pred = {
        name: precheck(x, calibration=cal).predictions["k=1,reduction=0.75"]
        for name, x in {"daily": daily, "walk": _white(20).cumsum(axis=1), "noise": _white(20)}.items()
    }
    assert pred["daily"] > 0.8 and pred["walk"] < 0.2 and pred["noise"] < 0.1, pred


def test_shipped_calibration_is_complete():
    from mergeplug.precheck import STATISTICS

    cal = load_calibration()
    assert cal["points"] >= 12 and cal["statistic"] in STATISTICS
    assert {"rho", "p", "mae", "n"} <= set(next(iter(cal["heldout_per_setting"].values())))
    res = precheck(load_dataset("taylor_30min"))
    assert set(res.predictions) == set(cal["settings"]) and np.isfinite(list(res.predictions.values())).all()
    with pytest.raises(TypeError, match=r"load the dataset first: mergeplug.precheck\(mergeplug.eval.load_dataset"):
        precheck("taylor_30min")  # the library does not load the harness' datasets itself
    with pytest.raises(FileNotFoundError, match="precheck-validate"):
        load_calibration("/nonexistent/calibration.json")


def test_predictions_stay_within_the_measured_range_sine_noise_constant():
    """The shipped calibration never extrapolates: a pure sine and white noise lie outside the statistic's measured
    range (they are flagged, clipped and not recommended); a constant series gets a clear note, not NaNs."""
    cal = load_calibration()
    assert cal["model"] and cal["merging"] == "safe" and cal["family"] == "patchtst"
    t = np.arange(2000)
    for name, x in {"sine": np.sin(2 * np.pi * t / 24), "noise": np.random.default_rng(0).normal(size=2000)}.items():
        res = precheck(x)
        assert set(res.outside) == set(cal["settings"]), name
        assert res.recommended is None and "outside the range the calibration measured" in res.note
        for label, v in res.predictions.items():
            lo, hi = cal["settings"][label]["change_range"]
            assert lo <= v <= hi, (name, label, v)
        assert "clipped" in str(res)
    res = precheck(np.full(500, 3.0))
    assert res.predictions == {} and res.recommended is None and "constant" in res.note
    assert "constant" in str(res)
    # in range: taylor_30min, every prediction within the measured changes and no flag
    res = precheck(load_dataset("taylor_30min"))
    assert not res.outside and all(
        cal["settings"][s]["change_range"][0] <= v <= cal["settings"][s]["change_range"][1]
        for s, v in res.predictions.items()
    )
    # a calibration that would extrapolate far (slope 10) is clipped to what it measured
    wild = {**cal, "settings": {"x": {"k": 1, "reduction": 0.75, "slope": -10.0, "intercept": 0.0,
                                      "stat_range": [0.0, 1.0], "change_range": [-0.1, 0.5]}}}  # fmt: skip
    assert precheck(np.sin(2 * np.pi * t / 24) + 0.01 * t, calibration=wild).predictions["x"] == -0.1


def test_precheck_cli_writes_a_card_section(tmp_path, capsys):
    assert main(["precheck", "--datasets", "taylor_30min", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "### taylor_30min" in out and "| entropy |" in out
    saved = json.loads((tmp_path / "precheck.json").read_text())
    assert set(saved["taylor_30min"]["predictions"]) == set(load_calibration()["settings"])
    assert (tmp_path / "precheck.md").read_text().startswith("### taylor_30min")
    assert main(["precheck", "--datasets", "nope"]) == 2
    assert "unknown dataset" in capsys.readouterr().err


def test_validation_study_end_to_end(tmp_path):
    from mergeplug.eval.precheck_study import validate

    cal = validate(
        tmp_path,
        bases=("taylor_30min", "traffic_volume_hourly"),
        variants=(("noise", 0.3),),
        merges=("k=1,reduction=0.5",),
        progress=False,
    )
    label = "k=1,reduction=0.5"  # forecast-safe merging (the default of validate)
    assert cal["points"] == 4 and cal["heldout_per_setting"][label]["n"] == 4 and cal["merging"] == "safe"
    assert (cal["family"], cal["min_tokens"], cal["extra_tokens"]) == ("patchtst", 8, None)
    lo, hi = cal["settings"][label]["change_range"]
    assert lo <= hi and len(cal["settings"][label]["stat_range"]) == 2
    assert [f["held_out"] for f in cal["folds"]] == ["taylor_30min", "traffic_volume_hourly"]
    assert (tmp_path / "report.md").exists() and (tmp_path / "precheck_vs_change.png").stat().st_size > 1000
    assert json.loads((tmp_path / "precheck_calibration.json").read_text())["statistic"] == cal["statistic"]


def test_confirmation_on_unseen_variants(tmp_path):
    from mergeplug.eval.precheck_study import CONFIRM_SEED, confirm, parse_variant

    cal = load_calibration()
    label = "k=1,reduction=0.5"
    one = {**cal, "settings": {label: cal["settings"][label]}}
    path = tmp_path / "cal.json"
    path.write_text(json.dumps(one))
    res = confirm(
        tmp_path / "out",
        calibration=path,
        bases=("taylor_30min", "traffic_volume_hourly"),
        variants=(parse_variant("noise0.2"),),
        progress=False,
    )
    assert res["points"] == 2 and res["per_setting"][label]["n"] == 2
    for ds in ("taylor_30min~noise0.2", "traffic_volume_hourly~noise0.2"):  # predictions are the frozen precheck's
        expected = precheck(variant(load_dataset(ds.split("~")[0]), "noise", 0.2, seed=CONFIRM_SEED), calibration=one)
        assert f"{expected.predictions[label]:+.1%}" in (tmp_path / "out" / "report.md").read_text()
    recs = res["recommendations"]["0.05"]
    assert recs["recommended"] + recs["none_recommended"] == 2
    assert (tmp_path / "out" / "predicted_vs_measured.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="not out of sample"):  # the calibration was fitted on noise0.1
        confirm(tmp_path / "o2", calibration=path, bases=("taylor_30min",), variants=(("noise", 0.1),))
    with pytest.raises(ValueError, match="kind and a level"):
        parse_variant("noisy")


def test_one_correlation_figure_in_the_code_the_readme_and_the_docs():
    """Each shipped calibration has one held-out figure (leave one dataset out, pooled), and the pre-check's output,
    the README and docs/precheck.md all quote that number."""
    from pathlib import Path

    from mergeplug.precheck import SHIPPED, heldout_rho

    root = Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text()
    section = readme[readme.index("**Spectral pre-check**") :].split("\n\n")[0]
    docs = (root / "docs" / "precheck.md").read_text()
    for family in SHIPPED:
        cal = load_calibration(family=family)
        assert cal["merging"] == "safe" and cal["family"] == family
        figure = f"{heldout_rho(cal):+.2f}"
        assert f"**{figure}**" in section and f"**{figure}**" in docs, family
        shown = str(precheck(load_dataset("electricity_hourly"), family=family))
        assert f"held-out Spearman rho {figure} (leave one dataset out, pooled)" in shown
