"""Figures a user can trust: settings that merge nothing are named, never timed; tune decides on evidence (merges
something, within tolerance, interval above 1 + margin) and decides the same under load and after a resume; apply
without an amount is refused; result folders and plots carry names, not local paths."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest

import mergeplug
from mergeplug.eval.cli import main
from mergeplug.eval.report import pareto_frontier, plot, write_report
from mergeplug.eval.run import noop_reason, run
from mergeplug.eval.tune_cli import folder_name
from mergeplug.models import chronos_bolt
from mergeplug.tune import tune


def _quarterly_csv(path, n_series: int = 4, n: int = 60) -> str:
    """A wide quarterly file: every series has at most 60 values = 4 Bolt patches, below the token floor."""
    g = np.random.default_rng(0)
    idx = pd.period_range("2006Q1", periods=n, freq="Q").to_timestamp()
    t = np.arange(n)
    data = {f"s{i}": 100 + 10 * np.sin(2 * np.pi * t / 4) + g.normal(0, 1, n).cumsum() for i in range(n_series)}
    pd.DataFrame({"timestamp": idx, **data}).to_csv(path, index=False)
    return f"file:{path}"


def test_settings_that_merge_nothing_are_named_not_timed(tmp_path):
    spec = _quarterly_csv(tmp_path / "quarterly.csv")
    merges = ["k=1,reduction=0.5", "k=global,reduction=0.75"]
    rows = run("random:chronos-bolt-test", [spec], merges, out=tmp_path / "r", prediction_length=4, windows=2,
               progress=False, min_time=0.0)  # fmt: skip
    by = {r["setting"]: r for r in rows}
    for m in merges:
        row = by[m]
        assert row["noop"].startswith("series of at most") and "min_tokens=16" in row["noop"]
        assert "speedup" not in row and "time_s" not in row  # never timed, never a speed-up
        assert row["MASE_change"] == 0.0 and row["WQL_change"] == 0.0  # bitwise the unmerged forecasts
        assert row["macs_ratio"] == pytest.approx(1.0)
    report = write_report(tmp_path / "r")
    assert report.count("merges nothing here: series of at most") == 2
    assert "x [" not in report  # no speed-up figure anywhere
    assert "| k=1,reduction=0.5 | 1 |" in report and "merges nothing on 1" in report


def test_noop_reason():
    assert noop_reason([[33, 23, 16], [14, 14, 14]], 1.4, 16) is None  # one batch merged
    assert noop_reason([[14, 14, 14], [5, 5, 5]], 1.0, 16) == "series of at most 14 tokens <= min_tokens=16"
    assert noop_reason([[40, 40, 40]], 1.0, 16).startswith("no merge step removed a token")
    assert noop_reason([[40, 40, 40]], 1.3, 16) is None  # merged before block 0 (input merging): MACs tell
    assert noop_reason([], 1.0, None) == "MACs ratio 1.00: no token merged"
    assert noop_reason([], None, None) is None  # cannot tell: timed as usual


def test_tune_keeps_a_model_unmerged_when_nothing_merges_and_says_why(tmp_path, capsys):
    spec = _quarterly_csv(tmp_path / "quarterly.csv")
    args = ["tune", "--model", "random:chronos-bolt-test", "--datasets", spec, "--prediction-length", "4",
            "--windows", "2", "--out", str(tmp_path / "tune"), "--no-progress"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "Kept unmerged: no candidate qualifies: 9 merges nothing here" in out
    assert "x [" not in out  # nothing was timed
    result = json.loads((tmp_path / "tune" / "random_chronos-bolt-test" / "quarterly.csv" / "tune.json").read_text())
    assert result["result"]["best"] is None
    assert all(r["status"] == "merges nothing here" for r in result["result"]["rows"][1:])
    assert not any("file" in p.name for p in (tmp_path / "tune").rglob("*"))  # safe folder names, no file: prefix


def _token_clock(pipe, noise=None):
    """A fake clock and a forecast function whose 'time' is the encoder's token work (deterministic), times an
    optional load factor per call (a busy machine)."""

    class Clock:
        t = 0.0

        def __call__(self) -> float:
            return self.t

    clock = Clock()
    factors = itertools.cycle(noise or [1.0])

    def forecast(contexts, h):
        import torch

        q, _ = pipe.predict_quantiles([torch.tensor(c) for c in contexts], prediction_length=h,
                                      quantile_levels=[0.1 * i for i in range(1, 10)])  # fmt: skip
        counts = mergeplug.token_counts(pipe) or [65] * 3
        clock.t += (1e-3 * sum(counts) + 5e-4) * next(factors)
        return q.float().numpy().transpose(0, 2, 1)

    return clock, forecast


def _series(n_series: int = 2, n: int = 1200) -> list[np.ndarray]:
    g = np.random.default_rng(1)
    t = np.arange(n)
    return [10 + 3 * np.sin(2 * np.pi * t / 24) + g.normal(0, 0.3, n) for _ in range(n_series)]


def test_tune_decides_on_evidence_the_same_under_load_and_after_a_resume(tmp_path):
    pipe = chronos_bolt("test", context_length=1024, prediction_length=16)
    candidates = {
        "nothing": dict(k=1, ratio=0.0),  # patched, merges nothing
        "some": dict(k=1, ratio=0.2, safe=False),
        "more": dict(k=1, ratio=0.4, safe=False),
    }
    kw = dict(prediction_length=16, windows=2, candidates=candidates, tolerance=10.0, min_time=0.0, progress=False)
    clock, forecast = _token_clock(pipe)
    quiet = tune(pipe, _series(), forecast=forecast, target=pipe, clock=clock, out=tmp_path / "a", **kw)
    rows = {r["label"]: r for r in quiet.rows}
    assert rows["nothing"]["status"] == "merges nothing here" and "speedup" not in rows["nothing"]
    assert rows["more"]["speedup"] > rows["some"]["speedup"] > 1.05 and rows["more"]["macs_ratio"] > 1.0
    assert quiet.best_label == "more" and quiet.best == candidates["more"]
    # a loaded machine: every call 0.7x-2.5x slower at random, pairs alike within a round or not
    load = [1.0, 2.5, 1.3, 0.7, 1.9, 1.1, 2.2, 0.9, 1.6]
    clock2, forecast2 = _token_clock(pipe, load)
    busy = tune(pipe, _series(), forecast=forecast2, target=pipe, clock=clock2, **kw)
    assert busy.best_label == "more"
    # killed after two accuracy rows, then resumed: the same choice
    path = tmp_path / "a" / "tune.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:2]) + "\n")
    clock3, forecast3 = _token_clock(pipe, load[3:] + load[:3])
    resumed = tune(pipe, _series(), forecast=forecast3, target=pipe, clock=clock3, out=tmp_path / "a", **kw)
    assert resumed.best_label == "more"
    # the margin is part of the rule: no candidate is 100x faster, so none qualifies, and the result says so
    strict = tune(pipe, _series(), forecast=forecast, target=pipe, clock=clock, margin=100.0,
                  **{k: v for k, v in kw.items()})  # fmt: skip
    assert strict.best is None and "not measurably faster" in strict.reason and "merges nothing" in strict.reason
    assert "Kept unmerged: no candidate qualifies" in str(strict)


def test_tune_refuses_infinite_values():
    pipe = chronos_bolt("test", context_length=256, prediction_length=16)
    data = _series(2, 300)
    data[1][17] = np.inf
    with pytest.raises(ValueError, match=r"series 1 holds inf at position 17 .*replace infinite values with NaN"):
        tune(pipe, data, prediction_length=16, candidates={"a": dict(k=1, ratio=0.2)}, progress=False)


def test_apply_without_an_amount_is_refused():
    pipe = chronos_bolt("test", context_length=256, prediction_length=16)
    with pytest.raises(ValueError, match=r"needs an amount to merge: r=.*ratio=.*schedule_for_reduction"):
        mergeplug.apply(pipe, k=1)
    assert mergeplug.settings(pipe) is None  # nothing was patched
    mergeplug.apply(pipe, k=1, r=0)  # an explicit zero is an amount: patched, bitwise the original
    assert mergeplug.settings(pipe).r == 0
    mergeplug.remove(pipe)


def test_folder_names_hold_no_local_paths():
    assert folder_name("file:/home/me/data/sales.csv") == "sales.csv"
    assert folder_name("/home/me/models/my-bolt/") == "my-bolt"
    assert folder_name("mergeplug:bolt-ref") == "mergeplug_bolt-ref"
    assert folder_name("m3_monthly") == "m3_monthly"


def test_plot_labels_settings_draws_the_frontier_and_keeps_outliers_readable(tmp_path):
    assert pareto_frontier([(1.0, 0.0), (2.0, 5.0), (1.5, 8.0), (3.0, 4.0)]) == [(1.0, 0.0), (3.0, 4.0)]
    rows = [{"dataset": "file:/x/y/weekly.csv", "setting": "unmerged", "speed_verdict": "reference", "speedup": 1.0,
             "WQL_change": 0.0}]  # fmt: skip
    for i, (s, w) in enumerate([(1.4, 0.01), (2.1, 0.03), (3.0, 7.61)]):
        rows.append({"dataset": "file:/x/y/weekly.csv", "setting": f"s{i}", "speedup": s, "speedup_low": s - 0.1,
                     "speedup_high": s + 0.1, "speed_verdict": "faster", "WQL_change": w})  # fmt: skip
    rows.append({"dataset": "file:/x/y/weekly.csv", "setting": "nothing", "noop": "series of at most 4 tokens",
                 "WQL_change": 0.0})  # fmt: skip
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seen = {}
    real_savefig = plt.Figure.savefig

    def spy(fig, *a, **k):  # look at the figure as it is saved
        ax = fig.axes[0]
        seen["yscale"] = ax.get_yscale()
        seen["labels"] = sorted(t.get_text() for t in ax.texts if not t.get_text().startswith("merged nothing"))
        seen["title"] = ax.get_title()
        seen["footer"] = [t.get_text() for t in ax.texts if t.get_text().startswith("merged nothing")]
        return real_savefig(fig, *a, **k)

    plt.Figure.savefig = spy
    try:
        path = plot(rows, tmp_path / "p.png")
    finally:
        plt.Figure.savefig = real_savefig
    assert path.stat().st_size > 1000
    assert seen["yscale"] == "symlog"  # +761% would flatten the others on a linear axis
    assert seen["labels"] == ["s0", "s1", "s2"] and seen["title"] == "weekly.csv"  # a name, not a local path
    assert seen["footer"] == ["merged nothing (not drawn): nothing"]
