"""Merge schedules, setting validation and the benchmark CLI (functional run, no timing assertions)."""

import json
import os

import pytest

from mergeplug.config import MergeConfig, ratio_for_reduction, schedule_for_reduction
from mergeplug_lab import bench
from mergeplug_lab.bench import main


@pytest.mark.parametrize("reduction", [0.5, 0.75, 0.9])
def test_constant_schedule_reaches_the_reduction(reduction):
    ratio = ratio_for_reduction(reduction, 6)
    assert (1 - ratio) ** 6 == pytest.approx(1 - reduction)


@pytest.mark.parametrize("reduction, expected", [(0.5, [0.5, 0, 0, 0]), (0.9, [0.5, 0.5, 0.5, 0.2])])
def test_front_schedule_merges_early(reduction, expected):
    ratios = ratio_for_reduction(reduction, 4, "front")
    assert ratios == pytest.approx(expected)


def test_impossible_reductions_raise():
    with pytest.raises(ValueError, match="at most half"):
        ratio_for_reduction(0.9, 2)
    with pytest.raises(ValueError, match="at most half"):
        ratio_for_reduction(0.99, 4, "front")
    with pytest.raises(ValueError, match="schedule"):
        ratio_for_reduction(0.5, 4, "late")


def test_per_layer_schedules():
    cfg = MergeConfig(ratio=[0.5, 0.25])
    assert [cfg.merges_at(i, 100) for i in range(3)] == [50, 25, 0]
    cfg = MergeConfig(r=[3, 0, 7])
    assert [cfg.merges_at(i, 100) for i in range(4)] == [3, 0, 7, 0]
    assert MergeConfig(r=[0, 0, 5]).is_noop(2) and not MergeConfig(r=[0, 0, 5]).is_noop(3)
    assert MergeConfig().is_noop(6)  # no schedule given: nothing merges
    with pytest.raises(ValueError, match="ratio must be in"):
        MergeConfig(ratio=[0.2, 1.5])


@pytest.mark.parametrize("family", ["t5", "bolt"])
def test_bench_cli_runs_and_writes_json(tmp_path, capsys, family):
    out = tmp_path / "bench.json"
    args = ["--family", family, "--size", "test", "--batch", "2", "--horizon", "8", "--samples", "2"]
    args += ["--context", "64" if family == "t5" else "256", "--reps", "1", "--reductions", "0.5"]
    args += ["--k", "1,global", "--schedule", "constant,front", "--no-progress", "--out", str(out), "--plain"]
    assert main(args) == 0
    result = json.loads(out.read_text())
    labels = [s["label"] for s in result["settings"]]
    assert labels[0] == "unmerged" and len(labels) == 5
    tokens_in = result["tokens_in"]
    for s in result["settings"][1:]:
        assert s["tokens_out"] <= tokens_in // 2 + 2 and s["embed_rel_err"] > 0
        # merging halves the tokens: fewer multiply-accumulates in the encoder and in the forecast
        assert 0 < s["embed_macs"] < result["settings"][0]["embed_macs"]
        assert 0 < s["predict_macs"] < result["settings"][0]["predict_macs"]
    text = capsys.readouterr().out
    assert "| unmerged |" in text and "embed MACs ratio | embed efficiency" in text


def test_overhead_bench_rows_resume_and_merge_step_table(tmp_path, capsys):
    """bench_overhead: one row per case with MACs ratio, speed-up and efficiency; rows already written are kept and
    not measured again; the merge-step table has a local and a global row per length."""
    from mergeplug_lab import bench_overhead

    args = ["--families", "t5", "--sizes", "test", "--batches", "1", "--threads", "1", "--reps", "1"]
    args += ["--step-lengths", "64,128", "--out", str(tmp_path), "--no-progress"]
    assert bench_overhead.main(args) == 0
    rows = [json.loads(line) for line in (tmp_path / "models.jsonl").read_text().splitlines()]
    assert len(rows) == 1
    row = rows[0]
    assert row["macs_ratio"] > 1.2 and row["tokens"][-1] < row["tokens"][0]
    assert row["efficiency"] == pytest.approx(row["speedup"] / row["macs_ratio"])
    steps = json.loads((tmp_path / "merge_step.json").read_text())
    assert [(r["tokens"], r["k"]) for r in steps] == [(64, 1), (64, None), (128, 1), (128, None)]
    text = capsys.readouterr().out
    assert "| MACs ratio | speed-up | efficiency |" in text and "| 128 | global |" in text
    assert bench_overhead.main(args) == 0  # resumed: nothing measured again
    assert (tmp_path / "models.jsonl").read_text().count("\n") == 1
    with pytest.raises(SystemExit):
        bench_overhead.main(["--sizes", "nope"])
    assert "unknown size 'nope'" in capsys.readouterr().err


def test_bench_cli_rejects_bad_arguments():
    with pytest.raises(SystemExit):
        main(["--reps", "0"])
    with pytest.raises(SystemExit):
        main(["--k", "one"])


@pytest.mark.parametrize("reduction", [0.5, 0.75, 0.9])
def test_front_input_schedule_reaches_the_reduction(reduction):
    kwargs = schedule_for_reduction(reduction, 6, "front-input")
    keep = 1 - kwargs["input_ratio"]
    for ratio in kwargs["ratio"]:
        keep *= 1 - ratio
    assert keep == pytest.approx(1 - reduction)
    assert schedule_for_reduction(reduction, 6) == {"ratio": ratio_for_reduction(reduction, 6)}
    assert schedule_for_reduction(reduction, 6, "input") == {"input_ratio": reduction, "ratio": 0.0}
    with pytest.raises(ValueError, match="unknown schedule 'back'"):
        schedule_for_reduction(reduction, 6, "back")  # type: ignore[arg-type]


def test_input_ratio_validation_and_noop():
    assert not MergeConfig(input_ratio=0.3).is_noop(6)
    assert MergeConfig(input_ratio=0.3).input_merges(100) == 30
    with pytest.raises(ValueError, match="input_ratio must be a number in"):
        MergeConfig(input_ratio=1.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"input_ratio": "0.5"}, "input_ratio must be a number"),  # was accepted, then every forward raised
        ({"proportional_attention": "no"}, "proportional_attention must be True or False"),  # was taken as True
        ({"causal": 1}, "causal must be True or False"),
        ({"period": float("inf")}, "period must be a number of time steps >= 1"),
        ({"period": 1e-9}, "period must be a number of time steps >= 1"),
        ({"causal": True, "threshold": "0.9"}, "threshold is a cosine similarity"),
    ],
)
def test_settings_of_the_wrong_type_are_refused(kwargs, message):
    """Every setting is type-checked when the config is built (issue 34, point 12)."""
    import numpy as np

    with pytest.raises(ValueError, match=message):
        MergeConfig(**kwargs)
    assert MergeConfig(ratio=np.float32(0.25), input_ratio=np.float64(0.5), period=24).input_ratio == 0.5


def test_schedule_helpers_and_fast_sampling_type_check_their_arguments():
    from mergeplug import fast_sampling
    from mergeplug.models import chronos_t5

    for args in [("0.5", 2), (0.5, 2.5), (True, 2), (0.5, True)]:
        with pytest.raises(ValueError, match="reduction must be a number|num_layers must be an int"):
            schedule_for_reduction(*args)
        with pytest.raises(ValueError, match="reduction must be a number|num_layers must be an int"):
            ratio_for_reduction(*args)
    pipe = chronos_t5("test")
    for kwargs in [{"enable": "no"}, {"exact": "yes"}]:
        with pytest.raises(ValueError, match="must be True or False"):
            fast_sampling(pipe, **kwargs)


@pytest.fixture
def no_benchmark(monkeypatch):
    """The benchmark itself must not start: option errors come before any model is built."""

    def refuse(**kwargs):
        raise AssertionError("the benchmark ran")

    monkeypatch.setattr(bench, "run", refuse)


@pytest.mark.parametrize(
    "args, option, allowed",
    [
        (["--reductions", "0.5,abc"], "--reductions", "strictly between 0 and 1"),
        (["--reductions", "1.5"], "--reductions", "strictly between 0 and 1"),
        (["--reductions", "0"], "--reductions", "strictly between 0 and 1"),
        (["--reductions", "0.9", "--size", "test"], "--reductions 0.9", "at most half of the tokens"),
        (["--k", "0"], "--k", "an integer >= 1 or 'global'"),
        (["--k", "foo"], "--k", "an integer >= 1 or 'global'"),
        (["--schedule", "nope"], "--schedule", "one of constant, front, front-input"),
        (["--batch", "0"], "--batch", "an integer >= 1"),
        (["--reps", "0"], "--reps", "an integer >= 1"),
        (["--horizon", "0"], "--horizon", "an integer >= 1"),
        (["--samples", "0"], "--samples", "an integer >= 1"),
        (["--threads", "-1"], "--threads", "an integer >= 1"),
        (["--context", "3"], "--context 3", "at least 16"),
        (["--family", "bolt", "--context", "20"], "--context 20", "at least 32"),
    ],
)
def test_bench_cli_bad_options_are_one_line_errors(capsys, no_benchmark, args, option, allowed):
    with pytest.raises(SystemExit) as exc:
        main(["--size", "test", "--no-progress", *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("mergeplug-bench: error:") and option in last and allowed in last
    assert "Traceback" not in err


def test_bench_cli_checks_out_before_the_benchmark(tmp_path, capsys, no_benchmark):
    (tmp_path / "file").write_text("x")
    bad = [tmp_path / "file" / "bench.json", tmp_path / "file" / "sub" / "bench.json", tmp_path]
    if os.geteuid() != 0:  # root may write anywhere
        (tmp_path / "locked").mkdir(mode=0o555)
        bad.append(tmp_path / "locked" / "bench.json")
    for out in bad:
        with pytest.raises(SystemExit) as exc:
            main(["--size", "test", "--out", str(out)])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert f"mergeplug-bench: error: --out {out}: cannot write there" in err and "Traceback" not in err
    # a writable --out: its parent is created, and the check leaves no file behind
    with pytest.raises(AssertionError, match="the benchmark ran"):
        main(["--size", "test", "--out", str(tmp_path / "new" / "bench.json")])
    assert (tmp_path / "new").is_dir() and not (tmp_path / "new" / "bench.json").exists()


def test_bench_cli_defaults_work_for_the_test_size(capsys):
    """--size test has 2 layers: the default 90% reduction is out of reach and left out (with a note)."""
    args = ["--size", "test", "--batch", "1", "--context", "32", "--horizon", "4", "--samples", "1"]
    assert main([*args, "--reps", "1", "--k", "1", "--encoder-only", "--no-progress"]) == 0
    out, err = capsys.readouterr()
    assert "-50% tokens" in out and "-75% tokens" in out and "-90% tokens" not in out
    assert "cannot remove 90% of the tokens" in err
