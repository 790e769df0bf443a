"""Merge schedules, setting validation and the benchmark CLI (functional run, no timing assertions)."""

import json

import pytest

from mergeplug.bench import main
from mergeplug.config import MergeConfig, ratio_for_reduction, schedule_for_reduction


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
    assert "| unmerged |" in capsys.readouterr().out


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


def test_input_ratio_validation_and_noop():
    assert not MergeConfig(input_ratio=0.3).is_noop(6)
    assert MergeConfig(input_ratio=0.3).input_merges(100) == 30
    with pytest.raises(ValueError, match="input_ratio must be in"):
        MergeConfig(input_ratio=1.0)
