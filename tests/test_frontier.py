"""The long-context frontier: the grid, the join of harness rows with speed at other dimensions, the target check."""

from __future__ import annotations

import json
import math

import pytest

from mergeplug.eval.frontier import choose_default, grid, meets, run_frontier, summarise, table


def test_grid_names_every_combination_once():
    g = grid()
    assert len(g) == len(set(g)) == 3 * 3 * 4 * 2
    assert "k=global,reduction=0.9,schedule=front-input,safe=false" in g
    assert "k=3,reduction=0.5,schedule=input,safe=true" in g


def _row(dataset, setting, wql, mase=1.0, tokens=None, merge=None, **extra):
    return {"dataset": dataset, "setting": setting, "WQL": wql, "MASE": mase, "tokens_per_layer": tokens,
            "merge": merge or {}, **extra}  # fmt: skip


def test_summarise_takes_geometric_means_worst_dataset_and_removed_share():
    rows = [
        _row("a", "unmerged", 1.0), _row("b", "unmerged", 2.0),
        _row("a", "s1", 1.02, 1.1, [40, 20, 10], {"k": 1}, speedup=2.0, speedup_low=1.8, speedup_high=2.2),
        _row("b", "s1", 2.0 * 0.99, 1.0, [40, 20, 10], {"k": 1}, speedup=2.1, speedup_low=1.9, speedup_high=2.3),
        _row("a", "s2", 1.10, 1.0, [10, 10, 10], {"input_ratio": 0.75}, noop=None, speedup=3.0, speedup_low=2.0,
             speedup_high=4.0),
        _row("b", "s2", 2.0, 1.0, [10, 10, 10], {"input_ratio": 0.75}, speedup=3.0, speedup_low=2.0, speedup_high=4.0),
    ]  # fmt: skip
    dims = [{"setting": "unmerged"}, {"setting": "s1", "speedup": 3.5, "speedup_low": 3.1, "speedup_high": 3.9},
            {"setting": "s2", "noop": "nothing"}]  # fmt: skip
    p1, p2 = summarise(rows, dims)
    assert p1["WQL_change"] == pytest.approx(math.sqrt(1.02 * 0.99) - 1)
    assert p1["WQL_worst"] == pytest.approx(0.02) and p1["worst_dataset"] == "a"
    assert p1["MASE_change"] == pytest.approx(math.sqrt(1.1) - 1) and p1["MASE_worst"] == pytest.approx(0.1)
    assert p1["removed"] == pytest.approx(0.75)  # 40 tokens unmerged (a setting without input merging), 10 left
    assert p2["removed"] == pytest.approx(0.75)  # input merging: counted against the same unmerged length
    assert p1["dims_low"] == 3.1 and p1["cell"] == "2.00x [1.80, 2.20]" and "dims_speedup" not in p2
    assert p2["dims_cell"].startswith("merges nothing here")
    assert meets(p1, wql=0.01, worst=0.05, speed_low=3.0)
    assert not meets(p1, speed_low=3.2) and not meets(p1, worst=0.01) and not meets(p1, removed=0.8)
    assert not meets(p2)  # no speed at the other dimensions, and +10% on one dataset
    text = table({2048: [p1, p2]})
    assert text.splitlines()[2].startswith("| 2048 | s1 | 75.0% | +0.5% | +2.0% (a)")


def test_frontier_end_to_end_same_token_schedule_at_other_dimensions(tmp_path):
    settings = ["k=1,reduction=0.5,schedule=constant,safe=false", "k=1,reduction=0.75,schedule=front-input,safe=true"]
    result = run_frontier("random:chronos-2-test", ["solar_hourly"], [256], out=tmp_path, settings=settings,
                          dims="test", reps=6, time_budget=2, dims_budget=2, progress=False)  # fmt: skip
    points = {p["setting"]: p for p in result[256]}
    assert set(points) == set(settings)
    read = lambda name: [json.loads(x) for x in (tmp_path / "ctx256" / name).read_text().splitlines()]  # noqa: E731
    rows = {r["setting"]: r for r in read("results.jsonl")}
    dims = {r["setting"]: r for r in read("dims_speed.jsonl")}
    for s in settings:  # same layers, same context: the other model merges the same number of tokens per layer
        assert dims[s]["tokens_per_layer"] == rows[s]["tokens_per_layer"]
        assert points[s]["removed"] == pytest.approx(1 - rows[s]["tokens_per_layer"][-1] / 19)
        assert "dims_speedup" in points[s] and points[s]["dims_low"] > 0
    assert rows[settings[0]]["tokens_per_layer"][0] == 16 + 1 + 2  # 256 steps in 16 patches, [REG], 2 future
    assert points[settings[1]]["removed"] == pytest.approx(3 / 19)  # forecast-safe: the floor of 16 tokens holds
    assert (tmp_path / "frontier.png").stat().st_size > 5000
    assert "| 256 |" in (tmp_path / "frontier.md").read_text()
    assert json.loads((tmp_path / "frontier.json").read_text())["256"][0]["setting"] in settings
    # a rerun reuses what is there (the same rows, no new timing)
    before = (tmp_path / "ctx256" / "dims_speed.jsonl").read_text()
    again = run_frontier("random:chronos-2-test", ["solar_hourly"], [256], out=tmp_path, settings=settings,
                         dims="test", progress=False)  # fmt: skip
    assert (tmp_path / "ctx256" / "dims_speed.jsonl").read_text() == before
    assert [p["WQL_change"] for p in again[256]] == [p["WQL_change"] for p in result[256]]


def test_frontier_cli(tmp_path, capsys):
    from mergeplug.eval.cli import main

    base = ["frontier", "--model", "random:chronos-2-test", "--datasets", "wind_hourly", "--out", str(tmp_path)]
    assert main([*base, "--contexts", "0"]) == 2
    assert "--contexts must be time steps >= 1" in capsys.readouterr().err
    assert main([*base, "--contexts", "128", "--dims-batch", "0"]) == 2
    assert "--dims-batch must be at least 1 series" in capsys.readouterr().err
    setting = "k=1,reduction=0.5,schedule=constant,safe=false"
    assert main([*base, "--contexts", "128", "--merge", setting, "--dims", "none", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"| 128 | {setting} |" in out and (tmp_path / "frontier.png").exists()


def test_choose_default_takes_the_cheapest_safe_setting_within_the_validation_bounds():
    def point(setting, change, worst, macs, safe=True, removed=0.5, noop=0):
        return {"setting": setting, "merge": {"safe": safe}, "WQL_change": change, "WQL_worst": worst,
                "macs_ratio": macs, "removed": removed, "noop_datasets": noop}  # fmt: skip

    points = [
        point("a", 0.001, 0.01, 2.0),
        point("b", 0.004, 0.02, 3.0),
        point("b-more", 0.004, 0.02, 3.0004, removed=0.9),  # same MACs ratio (3 decimals): fewer tokens removed wins
        point("too-bad", 0.006, 0.01, 5.0),
        point("one-bad-dataset", 0.0, 0.04, 5.0),
        point("plain", 0.0, 0.0, 9.0, safe=False),
        point("merged-nothing-somewhere", 0.0, 0.0, 9.0, noop=1),
    ]
    assert choose_default(points)["setting"] == "b"
    assert choose_default(points, wql=0.01, worst=0.05)["setting"] == "one-bad-dataset"  # ties: by name
    assert choose_default([point("x", 0.02, 0.02, 2.0)]) is None
