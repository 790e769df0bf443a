"""Evaluation harness: data registry, protocol and metrics, runs with resume, reports, CLI."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from mergeplug.eval import load_dataset, parse_merge, run, write_report
from mergeplug.eval.cli import main
from mergeplug.eval.data import load_local
from mergeplug.eval.run import _windows, evaluate, seasonal_naive_quantiles

# Chronos' published seasonal-naive results (scripts/evaluation/results/seasonal-naive-zero-shot.csv)
CHRONOS_NAIVE = {
    "m1_monthly": (1.3145, 0.1915),
    "m3_quarterly": (1.4253, 0.1013),
    "tourism_monthly": (1.6309, 0.1042),
}


@pytest.mark.parametrize("name", sorted(CHRONOS_NAIVE))
def test_seasonal_naive_matches_chronos_published_figures(name):
    """A real check of data, windows, seasonality and GluonTS metrics together."""
    ds = load_dataset(name)
    test_data = _windows(ds)
    metrics = evaluate(ds, lambda ctx: seasonal_naive_quantiles(ds, list(test_data.input)))
    mase, wql = CHRONOS_NAIVE[name]
    assert metrics["MASE"] == pytest.approx(mase, abs=2e-3)
    assert metrics["WQL"] == pytest.approx(wql, abs=2e-3)


def test_competition_protocol():
    ds = load_dataset("m3_monthly")
    assert len(ds) == 1428 and ds.prediction_length == 18 and ds.season == 12 and ds.freq == "M"
    assert load_dataset("tourism_quarterly").season == 4
    assert load_dataset("m3_yearly", max_series=5).season == 1


def test_unknown_dataset_lists_known_ones():
    with pytest.raises(KeyError, match="m3_monthly"):
        load_dataset("m3_montly")


def test_short_series_are_skipped_and_counted(tmp_path):
    rows = [("a", t, float(t)) for t in range(30)] + [("b", t, 1.0) for t in range(5)]
    df = pd.DataFrame(rows, columns=["item_id", "timestamp", "target"])
    df["timestamp"] = pd.Timestamp("2024-01-01") + pd.to_timedelta(df["timestamp"], unit="h")
    path = tmp_path / "long.csv"
    df.to_csv(path, index=False)
    ds = load_dataset(f"file:{path}", prediction_length=6)
    assert len(ds) == 1 and ds.skipped == 1 and ds.freq == "h" and ds.season == 24


def test_local_wide_and_long_formats_agree(tmp_path):
    ts = pd.date_range("2024-01-01", periods=50, freq="D")
    wide = pd.DataFrame({"timestamp": ts, "x": np.arange(50.0), "y": np.arange(50.0) * 2})
    wide.to_csv(tmp_path / "wide.csv", index=False)
    long = wide.melt(id_vars="timestamp", var_name="item_id", value_name="target")
    long.to_parquet(tmp_path / "long.parquet")
    a, fa = load_local(tmp_path / "wide.csv")
    b, fb = load_local(tmp_path / "long.parquet")
    assert fa == fb == "D"
    for ea, eb in zip(a, b, strict=True):
        assert ea["item_id"] == eb["item_id"] and np.array_equal(ea["target"], eb["target"])
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(ValueError, match="unsupported file type"):
        load_local(tmp_path / "x.txt")
    with pytest.raises(FileNotFoundError):
        load_local(tmp_path / "missing.csv")


def test_parse_merge():
    s = parse_merge("k=1, ratio=0.25")
    assert s.kwargs == {"k": 1, "ratio": 0.25}
    assert parse_merge("k=global,r=4:4:0").kwargs == {"k": None, "r": [4, 4, 0]}
    assert parse_merge("k=1,reduction=0.75,schedule=front", num_layers=2).kwargs["ratio"] == [0.5, 0.5]
    with pytest.raises(ValueError, match="unknown merge key 'rr'.*known keys"):
        parse_merge("k=1,rr=3")
    with pytest.raises(ValueError, match="k must be >= 1"):
        parse_merge("k=0,r=3")
    with pytest.raises(ValueError, match="bad value"):
        parse_merge("k=one")
    assert parse_merge("sampling=fast").sampling == "fast" and parse_merge("sampling=fast").kwargs == {}
    topk = parse_merge("k=1,ratio=0.2,sampling=fast-topk")
    assert topk.sampling == "fast-topk" and topk.kwargs == {"k": 1, "ratio": 0.2} and not topk.is_reference
    with pytest.raises(ValueError, match="bad value for 'sampling'.*fast-topk"):
        parse_merge("sampling=quick")
    with pytest.raises(ValueError, match="sampling=stock is the default"):
        parse_merge("k=1,ratio=0.2,sampling=stock")
    with pytest.raises(ValueError, match="changes nothing"):
        parse_merge(" ")
    # a merge row that merges nothing, a key given twice, per-layer lists longer than the model: refused
    for text in ("k=1", "k=3,r=0", "k=global,ratio=0"):
        with pytest.raises(ValueError, match="merges nothing"):
            parse_merge(text)
    with pytest.raises(ValueError, match="'ratio' is given twice"):
        parse_merge("k=1,ratio=0.2,ratio=0.4")
    with pytest.raises(ValueError, match="r has 3 per-layer values but the model has 2 layers"):
        parse_merge("k=1,r=1:2:3", num_layers=2)
    assert parse_merge("k=1,r=0:0:5").kwargs["r"] == [0, 0, 5]  # merges in its third layer


def test_run_validates_options_before_any_work(tmp_path):
    base = dict(out=tmp_path / "x", progress=False)
    bad = [
        (dict(batch_size=0), "batch_size must be an int >= 1"),
        (dict(timing_windows=0), "timing_windows must be an int >= 1"),
        (dict(max_series=-1), "max_series must be an int >= 1"),
        (dict(reps=0), "reps must be an int >= 1"),
        (dict(cost_windows=-1), "cost_windows must be an int >= 0"),
        (dict(prediction_length=0), "prediction_length must be an int >= 1"),
        (dict(windows=0), "windows must be an int >= 1"),
        (dict(device="cdua"), "'cdua' is not a torch device"),
        (dict(dtype="float8"), "dtype must be float32, bfloat16 or float16"),
    ]
    if not torch.cuda.is_available():  # one line instead of torch's "not compiled with CUDA" traceback
        bad.append((dict(device="cuda"), r"no usable CUDA \(torch.cuda.is_available\(\) is False\); use --device cpu"))
    for kwargs, message in bad:
        with pytest.raises(ValueError, match=message):
            run("random:chronos-bolt-test", ["m3_yearly"], ["k=1,ratio=0.2"], **base, **kwargs)
    with pytest.raises(ValueError, match="seasonal-naive has nothing to merge"):
        run("seasonal-naive", ["m3_yearly"], ["k=1,ratio=0.2"], **base)
    assert not (tmp_path / "x").exists()  # refused before anything was written


def test_models_are_reachable_after_a_plain_import():
    import subprocess
    import sys

    code = "import mergeplug; print(type(mergeplug.models.chronos_t5('test')).__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "ChronosPipeline"


def test_run_chronos_t5_fast_sampling_settings(tmp_path):
    """``sampling=fast`` is the fast path without merging: the same samples as stock, so the same accuracy;
    ``sampling=fast-topk`` composes with a merge setting; models that do not sample tokens refuse it."""
    kwargs = dict(reps=1, batch_size=8, timing_windows=8, max_series=8, progress=False)
    merges = ["sampling=fast", "k=1,ratio=0.3,sampling=fast-topk", "k=1,ratio=0.3"]
    rows = run("random:chronos-t5-test", ["m3_yearly"], merges, out=tmp_path / "t5", **kwargs)
    by = {r["setting"]: r for r in rows}
    assert by["unmerged"]["sampling"] == "stock" and by["sampling=fast"]["sampling"] == "fast"
    assert by["sampling=fast"]["WQL"] == by["unmerged"]["WQL"] and by["sampling=fast"]["MASE_change"] == 0.0
    assert by["sampling=fast"]["tokens_per_layer"] is None and by["sampling=fast"]["speedup"] > 0
    both = by["k=1,ratio=0.3,sampling=fast-topk"]
    assert both["sampling"] == "fast-topk" and both["merge"] == {"k": 1, "ratio": 0.3}
    assert both["tokens_per_layer"] == by["k=1,ratio=0.3"]["tokens_per_layer"]  # the merge is applied too
    assert np.isfinite(both["WQL"]) and both["WQL"] != by["k=1,ratio=0.3"]["WQL"]  # other samples, same merge
    for other in ("random:chronos-bolt-test", "random:chronos-2-test"):  # checked before mergeability
        with pytest.raises(ValueError, match=r"not a Chronos-T5 \(seq2seq\) pipeline"):
            run(other, ["m3_yearly"], ["sampling=fast"], out=tmp_path / "b", **kwargs)


def test_run_end_to_end_resumes_and_reports(tmp_path):
    out = tmp_path / "run"
    kwargs = dict(out=out, reps=1, batch_size=16, timing_windows=8, max_series=12, progress=False)
    merges = ["k=1,ratio=0.2,safe=false"]  # plain merging: these short series would be protected whole
    rows = run("random:chronos-bolt-test", ["m3_monthly", "tourism_quarterly"], merges, **kwargs)
    assert len(rows) == 6  # 2 datasets x (seasonal naive, unmerged, one merge setting)
    by = {(r["dataset"], r["setting"]): r for r in rows}
    unmerged = by[("m3_monthly", "unmerged")]
    assert unmerged["MASE_change"] == 0.0 and unmerged["series"] == 12
    merged = by[("m3_monthly", "k=1,ratio=0.2,safe=false")]
    assert merged["merge"] == {"k": 1, "ratio": 0.2, "safe": False} and merged["speedup"] > 0 and merged["WQL"] > 0
    counts = merged["tokens_per_layer"]
    assert len(counts) == 3 and counts[0] > counts[1] > counts[2]  # 2 layers, 20% merged in each
    assert merged["peak_mem_mb"] >= 0 and merged["process_peak_rss_mb"] > 100
    # counted cost: the merged encoder runs fewer MACs per window than the unmerged one, same parameters
    assert unmerged["macs_ratio"] == 1.0 and unmerged["macs_per_window"] > 0
    assert merged["macs_ratio"] > 1.0 and merged["params"] == unmerged["params"] > 0
    # resume: nothing is recomputed, a missing cell is
    lines = (out / "results.jsonl").read_text().splitlines()
    (out / "results.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    rows2 = run("random:chronos-bolt-test", ["m3_monthly", "tourism_quarterly"], merges, **kwargs)
    assert len(rows2) == 6
    assert [json.loads(x) for x in lines[:-1]] == rows2[:-1]
    assert rows2[-1]["setting"] == json.loads(lines[-1])["setting"]
    # the same seed reproduces the accuracy figures
    assert rows2[-1]["WQL"] == pytest.approx(json.loads(lines[-1])["WQL"], rel=1e-6)
    text = write_report(out)
    assert "| m3_monthly | k=1,ratio=0.2,safe=false |" in text and (out / "speed_vs_accuracy.png").stat().st_size > 1000
    with pytest.raises(
        ValueError, match=r"other settings \(model: 'random:chronos-bolt-test' there, 'random:chronos-t5"
    ):
        run("random:chronos-t5-test", ["m3_monthly"], merges, **kwargs)


def test_cli(tmp_path, capsys):
    assert main(["list-datasets", "--tag", "offline"]) == 0
    listing = capsys.readouterr().out
    assert "m3_monthly" in listing and "electricity_hourly" in listing and "chronos:" not in listing
    assert main(["run", "--model", "seasonal-naive", "--datasets", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "unknown dataset 'nope'" in capsys.readouterr().err
    assert (
        main(
            [
                "run",
                "--model",
                "seasonal-naive",
                "--datasets",
                "competition",
                "--out",
                str(tmp_path / "y"),
                "--no-progress",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out  # the tag expands to every competition dataset
    assert "| m3_other | seasonal-naive |" in out and "| tourism_yearly | seasonal-naive |" in out
    assert main(["report", str(tmp_path / "missing")]) == 2


@pytest.mark.parametrize(
    "name",
    [
        "electricity_hourly",
        "sf_traffic_hourly",
        "solar_hourly",
        "wind_hourly",
        "traffic_volume_hourly",
        "bikesharing_hourly",
        "taylor_30min",
        "m4_hourly_sample",
    ],
)
def test_shipped_datasets_load_offline(name):
    ds = load_dataset(name)
    assert len(ds) >= 1 and ds.skipped == 0
    for e in ds.entries:
        assert e["target"].dtype == np.float32 and len(e["target"]) > ds.prediction_length * (ds.windows + 1)
        assert isinstance(e["start"], pd.Period)
    assert ds.season == {"h": 24, "30min": 48}[ds.freq]


def test_two_process_accelerate_run_equals_single_process(tmp_path):
    """Series are sharded by batch across `accelerate launch` processes; results equal the 1-process run."""
    import subprocess
    import sys
    from pathlib import Path

    launcher = Path(sys.executable).parent / "accelerate"
    args = ["run", "--model", "random:chronos-t5-test", "--datasets", "m3_monthly", "--max-series", "24"]
    args += ["--merge", "k=1,ratio=0.2", "--reps", "1", "--batch-size", "8", "--no-progress"]
    cmd = [str(launcher), "launch", "--cpu", "--num_processes", "2", "-m", "mergeplug.eval.cli", *args]
    proc = subprocess.run([*cmd, "--out", str(tmp_path / "mp")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert main([*args, "--out", str(tmp_path / "sp")]) == 0
    multi = [json.loads(x) for x in (tmp_path / "mp" / "results.jsonl").read_text().splitlines()]
    single = [json.loads(x) for x in (tmp_path / "sp" / "results.jsonl").read_text().splitlines()]
    assert len(multi) == len(single) == 3
    for m, s in zip(multi, single, strict=True):
        assert (m["setting"], m["MASE"], m["WQL"]) == (s["setting"], s["MASE"], s["WQL"])


def test_other_models_chronos2_and_gluonts_predictors(tmp_path):
    """Chronos-2 pipelines and any GluonTS predictor run unmerged; merging them is refused up front."""
    kwargs = dict(reps=1, batch_size=8, timing_windows=8, max_series=6, progress=False)
    rows = run("random:chronos-2-test", ["m3_yearly"], out=tmp_path / "c2", **kwargs)
    c2 = {r["setting"]: r for r in rows}["unmerged"]
    assert np.isfinite(c2["WQL"]) and c2["speedup"] == 1.0 and c2["peak_mem_mb"] >= 0
    assert c2["macs_per_window"] > 0 and c2["params"] > 0  # cost is counted for any torch model
    # the GluonTS seasonal-naive predictor through the generic adapter equals the built-in baseline
    rows = run(
        "predictor:gluonts.model.seasonal_naive.SeasonalNaivePredictor", ["m3_yearly"], out=tmp_path / "p", **kwargs
    )
    by = {r["setting"]: r for r in rows}
    assert by["unmerged"]["MASE"] == pytest.approx(by["seasonal-naive"]["MASE"], rel=1e-9)
    assert by["unmerged"]["WQL"] == pytest.approx(by["seasonal-naive"]["WQL"], rel=1e-9)
    assert "macs_per_window" not in by["unmerged"]  # not a torch model: nothing to count
    rows = run("random:chronos-2-test", ["m3_yearly"], ["k=1,ratio=0.2"], out=tmp_path / "c2m", **kwargs)
    merged = {r["setting"]: r for r in rows}["k=1,ratio=0.2"]
    assert np.isfinite(merged["WQL"]) and merged["macs_per_window"] > 0  # Chronos-2 merges (family "chronos-2")
    with pytest.raises(ValueError, match="token merging does not apply"):
        run(
            "predictor:gluonts.model.npts.NPTSPredictor", ["m3_yearly"], ["k=1,ratio=0.2"], out=tmp_path / "x", **kwargs
        )
    with pytest.raises(ValueError, match="cannot import"):
        run("predictor:gluonts.nothing.Here", ["m3_yearly"], out=tmp_path / "y", **kwargs)
    for spec in ("predictor:os.system", "predictor:os.getcwd", "predictor:builtins.dict"):  # issue 34, point 10
        with pytest.raises(ValueError, match="is not a GluonTS predictor class.*it is not called"):
            run(spec, ["m3_yearly"], out=tmp_path / "z", **kwargs)


def test_timed_datasets_times_only_the_first(tmp_path):
    """``timed_datasets=1``: the first dataset gets a speed with its interval, the next only accuracy and MACs;
    its merged rows are the same numbers as in a fully timed run."""
    kwargs = dict(reps=1, batch_size=8, timing_windows=4, context=512, progress=False, time_budget=1.0)
    merge = ["k=1,ratio=0.3"]
    rows = run("random:chronos-2-test", ["solar_hourly", "wind_hourly"], merge, out=tmp_path / "one",
               timed_datasets=1, **kwargs)  # fmt: skip
    by = {(r["dataset"], r["setting"]): r for r in rows}
    first, second = by[("solar_hourly", merge[0])], by[("wind_hourly", merge[0])]
    assert "speedup" in first and "speedup_low" in first
    assert not any(k in second for k in ("speedup", "speed_verdict", "noop"))
    assert second["macs_ratio"] > 1 and second["tokens_per_layer"][-1] < second["tokens_per_layer"][0]
    full = {(r["dataset"], r["setting"]): r for r in run("random:chronos-2-test", ["wind_hourly"], merge,
                                                          out=tmp_path / "all", **kwargs)}  # fmt: skip
    assert full[("wind_hourly", merge[0])]["WQL"] == second["WQL"] and "speedup" in full[("wind_hourly", merge[0])]
    from mergeplug.results import markdown
    from mergeplug.timing import speed_cell

    assert speed_cell(second) == "" and len(markdown(rows).splitlines()) > len(rows)  # an empty speed cell
    with pytest.raises(ValueError, match="timed_datasets must be an int >= 1"):
        run("random:chronos-2-test", ["wind_hourly"], out=tmp_path / "bad", timed_datasets=0)


def test_model_specs_with_clear_errors(tmp_path):
    from mergeplug.eval.models import SupervisedForecaster, load_model

    with pytest.raises(ValueError, match="unknown shipped model"):
        load_model("mergeplug:no-such-model")
    with pytest.raises(ValueError, match="unknown random model"):
        load_model("random:gpt-tiny")
    (tmp_path / "patchtst-solar_hourly").mkdir()
    fam = SupervisedForecaster(root=tmp_path, family="patchtst", name="mergeplug:patchtst")
    with pytest.raises(ValueError, match="no patchtst model was trained on 'm3_yearly'.*solar_hourly"):
        fam.for_dataset(load_dataset("m3_yearly"))


def test_profile_cli(tmp_path, capsys):
    """mergeplug-eval profile: the cost report, then MACs ratio vs measured speed-up per merge setting."""
    out = tmp_path / "p.json"
    args = ["profile", "--model", "random:chronos-bolt-test", "--batch", "2", "--context", "256", "--reps", "1"]
    assert main(args + ["--merge", "k=1,ratio=0.3", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "parameters:" in text and "encoder attention-scores" in text and "MACs ratio" in text
    saved = json.loads(out.read_text())
    rows = {r["label"]: r for r in saved["comparison"]}
    assert rows["unmerged"]["macs"] == saved["profile"]["macs"] and rows["k=1,ratio=0.3"]["macs_ratio"] > 1.0
    assert saved["profile"]["series"] == 2
    # a dataset's windows for a per-dataset family
    assert main(["profile", "--model", "mergeplug:patchtst", "--dataset", "taylor_30min", "--batch", "2"]) == 0
    assert "encoder mlp" in capsys.readouterr().out
    assert main(["profile", "--model", "mergeplug:patchtst"]) == 2
    assert "pass --dataset" in capsys.readouterr().err
    assert main(["profile", "--model", "predictor:gluonts.model.npts.NPTSPredictor", "--dataset", "m3_yearly"]) == 2
    assert "not a PyTorch model" in capsys.readouterr().err
    assert main(["profile", "--model", "random:chronos-2-test", "--merge", "k=1,ratio=0.2"]) == 0
    assert "k=1,ratio=0.2" in capsys.readouterr().out


def test_peak_memory_sees_memory_an_earlier_call_freed():
    import torch

    from mergeplug.eval.run import PeakMemory

    def work() -> int:  # 200 MB in 100 kB blocks: heap memory, kept by the allocator once freed
        return len([torch.ones(25_000) for _ in range(2000)])

    work()
    with PeakMemory() as pm:
        work()
    assert pm.extra_mb > 150, pm.extra_mb  # without giving freed memory back at entry this reads ~0
    assert pm.peak_mb >= pm.start_mb + pm.extra_mb - 1e-9


def test_cli_prints_only_what_was_asked_for(tmp_path):
    """No GluonTS evaluation bars, transformers loading bars, orjson / frequency / matplotlib warnings: with
    --no-progress the error stream stays empty, and the output is the report."""
    import subprocess
    import sys

    cli = [sys.executable, "-m", "mergeplug.eval.cli"]
    runs = [
        ["run", "--model", "mergeplug:patchtst", "--datasets", "taylor_30min", "--max-series", "1", "--reps", "1"]
        + ["--merge", "k=1,ratio=0.2", "--timing-windows", "2", "--out", str(tmp_path / "p"), "--no-progress"],
        ["run", "--model", "seasonal-naive", "--datasets", "m1_monthly", "m3_quarterly", "--out", str(tmp_path / "n")]
        + ["--no-progress"],
        ["report", str(tmp_path / "n")],  # no merged rows: nothing to put in the plot's legend
    ]
    for args in runs:
        proc = subprocess.run([*cli, *args], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0 and proc.stderr == "", (args, proc.stderr[-2000:])
        assert proc.stdout.startswith("| dataset | setting |")


def test_context_option_cuts_what_the_model_sees_not_what_is_scored(tmp_path):
    from mergeplug.eval.models import QUANTILES, Forecaster
    from mergeplug.eval.run import last_steps

    class LastValue(Forecaster):
        """Repeats the last seen value; records what it was given."""

        name = "last-value"

        def __init__(self):
            self.seen: list[tuple[int, object]] = []

        def quantiles(self, inputs, h, **kwargs):
            self.seen += [(len(inp["target"]), inp["start"]) for inp in inputs]
            last = np.array([inp["target"][-1] for inp in inputs], dtype=np.float64)
            return np.repeat(np.repeat(last[:, None, None], len(QUANTILES), axis=1), h, axis=2)

    ds = load_dataset("m3_monthly", max_series=6)
    full = list(_windows(ds).input)
    cut = last_steps(full, 20)
    assert [len(c["target"]) for c in cut] == [min(20, len(f["target"])) for f in full]
    for f, c in zip(full, cut, strict=True):  # same forecast origin, later start
        assert c["start"] + len(c["target"]) == f["start"] + len(f["target"])
        np.testing.assert_array_equal(c["target"], f["target"][-len(c["target"]) :])
    rows = {}
    for context in (None, 20, 10_000):
        fc = LastValue()
        out = tmp_path / f"ctx{context}"
        rows[context] = {r["setting"]: r for r in run(fc, [ds], out=out, reps=1, progress=False, context=context,
                                                      cost_windows=0)}  # fmt: skip
        assert max(n for n, _ in fc.seen) == (20 if context == 20 else max(len(f["target"]) for f in full))
    # the last value does not depend on the history: every score is the same, MASE's scale included
    for context in (20, 10_000):
        assert rows[context]["unmerged"]["MASE"] == rows[None]["unmerged"]["MASE"]
        assert rows[context]["seasonal-naive"]["WQL"] == rows[None]["seasonal-naive"]["WQL"]
    assert json.loads((tmp_path / "ctx20" / "run.json").read_text())["context"] == 20
    with pytest.raises(ValueError, match=r"other settings \(context: 20 there, 30"):
        run(LastValue(), [ds], out=tmp_path / "ctx20", reps=1, progress=False, context=30, cost_windows=0)
    with pytest.raises(ValueError, match="context must be an int >= 1"):
        run(LastValue(), [ds], out=tmp_path / "bad", context=0)


def test_a_model_path_that_does_not_exist_is_named_as_a_missing_directory(tmp_path):
    """A local path given as ``--model`` that does not exist said "Repo id must be in the form ..." (the Hub's
    message); it says the directory is missing."""
    from mergeplug.eval.models import load_model

    with pytest.raises(FileNotFoundError, match="no_such_model: no such directory"):
        load_model(str(tmp_path / "no_such_model"))
