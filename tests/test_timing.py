"""The shared timer (mergeplug.timing): paired interleaved rounds, the 95% interval of the median ratio, verdicts,
stopping rules; all with a fake clock, so every figure here is exact and nothing depends on the machine's load."""

from __future__ import annotations

import itertools
import math

import pytest

from mergeplug.timing import median_interval, paired_speedups, speed_cell, verdict


class FakeClock:
    """A clock that only moves when a fake workload says so."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _work(clock: FakeClock, seconds: float, noise=None, log: list | None = None, name: str = ""):
    factors = itertools.cycle(noise or [1.0])

    def call() -> None:
        clock.t += seconds * next(factors)
        if log is not None:
            log.append(name)

    return call


def test_median_interval_is_the_order_statistic_interval():
    assert median_interval([3, 1, 2, 5, 4]) == (0.0, math.inf)  # 5 values: even [min, max] covers only 93.75%
    assert median_interval([6, 1, 2, 3, 4, 5]) == (1, 6)  # 6: [min, max] covers 96.9%
    assert median_interval(list(range(1, 10))) == (2, 8)  # 9: [x2, x8] covers 96.1%
    assert median_interval(list(range(1, 21))) == (6, 15)  # 20: [x6, x15] covers 95.9%, [x7, x14] only 88.5%
    assert median_interval([]) == (0.0, math.inf)


def test_a_constant_speed_ratio_is_measured_exactly_with_a_zero_width_interval():
    clock = FakeClock()
    res = paired_speedups(
        {"ref": _work(clock, 0.10), "fast": _work(clock, 0.04), "slow": _work(clock, 0.25)}, clock=clock, min_time=0.2
    )
    assert res["fast"].speedup == pytest.approx(2.5) and res["fast"].low == pytest.approx(2.5)
    assert res["fast"].high == pytest.approx(2.5) and res["fast"].verdict == "faster"
    assert res["slow"].speedup == pytest.approx(0.4) and res["slow"].verdict == "slower"
    assert res["ref"].speedup == 1.0 and res["ref"].time_s == pytest.approx(0.10)
    assert res["fast"].rounds == 6  # the interval is exact after the fewest rounds that give one: stop
    assert res["fast"].calls >= 5  # 0.2 s of work per measurement: the 0.04 s call repeats (autorange)
    assert str(res["fast"]) == "2.50x [2.50, 2.50]"


def test_noise_widens_the_interval_and_an_equal_setting_reads_no_measurable_change():
    clock = FakeClock()
    noise = [1.0, 1.3, 0.8, 1.1, 0.9, 1.25, 0.85]
    res = paired_speedups(
        {"ref": _work(clock, 0.1, noise), "same": _work(clock, 0.1, noise[3:] + noise[:3]),
         "fast": _work(clock, 0.05, noise[1:] + noise[:1])},
        clock=clock, min_time=0.0, max_rounds=40, budget_s=1e9,
    )  # fmt: skip
    same, fast = res["same"], res["fast"]
    assert same.low < 1.0 < same.high and same.verdict == "no measurable change"
    assert speed_cell(same.fields()).startswith("no measurable change [")
    assert fast.low > 1.0 and fast.verdict == "faster"
    assert same.rounds == 40  # +-5% is never reached with this much noise: rounds stop at max_rounds


def test_rounds_alternate_their_order_and_setup_precedes_every_measurement():
    clock = FakeClock()
    log: list[str] = []
    calls = {n: _work(clock, 0.3, log=log, name=n) for n in ("a", "b", "c")}
    setups: list[str] = []
    paired_speedups(calls, setup=setups.append, clock=clock, min_time=0.2, warmup=1, min_rounds=6, max_rounds=6)
    timed = log[3:]  # after one warm-up call each (in order a, b, c)
    assert log[:3] == ["a", "b", "c"]
    # calls of 0.3 s >= min_time are timed once per round: a b c, then c b a, ...
    assert timed == ["a", "b", "c", "c", "b", "a"] * 3
    assert setups[:3] == ["a", "b", "c"] and setups[3:-1] == timed and setups[-1] == "a"  # left on the reference


def test_the_budget_stops_rounds_once_the_minimum_is_done():
    clock = FakeClock()
    noise = [1.0, 1.5, 0.7, 1.2]
    res = paired_speedups(
        {"ref": _work(clock, 1.0, noise), "x": _work(clock, 1.0, noise[1:] + noise[:1])},
        clock=clock, min_time=0.5, min_rounds=6, max_rounds=40, budget_s=5.0,
    )  # fmt: skip
    assert res["x"].rounds == 6  # 6 rounds of ~2 s are over the 5 s budget


def test_non_adaptive_rounds_make_the_same_number_of_calls_whatever_the_clock():
    counts = []
    for seconds in (0.001, 0.5):
        clock = FakeClock()
        log: list[str] = []
        paired_speedups(
            {"a": _work(clock, seconds, log=log, name="a"), "b": _work(clock, seconds * 2, log=log, name="b")},
            clock=clock, adaptive=False, min_rounds=6,
        )  # fmt: skip
        counts.append(len(log))
    assert counts[0] == counts[1] == 2 * (1 + 6 * 3)  # warm-up, then Timer.timeit(1) = 2 warm-up calls + 1 timed


def test_bad_arguments_are_refused():
    clock = FakeClock()
    with pytest.raises(ValueError, match="calls is empty"):
        paired_speedups({}, clock=clock)
    with pytest.raises(ValueError, match="max_rounds"):
        paired_speedups({"a": _work(clock, 1)}, min_rounds=8, max_rounds=6, clock=clock)
    with pytest.raises(ValueError, match="min_time"):
        paired_speedups({"a": _work(clock, 1)}, min_time=-1, clock=clock)


def test_speed_cells_and_verdicts():
    assert verdict(1.02, 1.3) == "faster" and verdict(0.7, 0.95) == "slower" and verdict(0.9, 1.1).startswith("no")
    assert speed_cell({"speedup": 1.98, "speedup_low": 0.8, "speedup_high": 2.5}) == "no measurable change [0.80, 2.50]"
    assert speed_cell({"speedup": 1.5, "speedup_low": 1.2, "speedup_high": 1.7}) == "1.50x [1.20, 1.70]"
    assert speed_cell({"noop": "series of at most 14 tokens <= min_tokens=16"}).startswith("merges nothing here: ")
    assert speed_cell({"speedup": 1.3}) == "1.30x (no interval)" and speed_cell({}) == ""
