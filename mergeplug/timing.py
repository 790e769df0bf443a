"""One timer for every speed figure mergeplug reports: paired, interleaved rounds and a confidence interval.

The harness (``mergeplug-eval run``), :func:`mergeplug.tune`, :func:`mergeplug.cost.compare` and the benchmarks
all time through :func:`paired_speedups`:

1. **Warm-up**: every setting is called ``warmup`` times first (lazy initialisation, allocator, caches).
2. **Paired rounds**: a round times the reference and every other setting once each, back to back, in an order
   that alternates from round to round (forward, then reversed), so that slow drifts of the machine's load fall
   on both sides of a pair alike. Each measurement is ``torch.utils.benchmark.Timer.blocked_autorange``: the call
   is repeated until at least ``min_time`` seconds of work were timed (its first, untimed block sizing call also
   warms the setting up after the switch), and the measurement is the median time per call of its blocks. A call
   that alone takes ``min_time`` or more (its warm-up said so) is timed once per round instead, on the same clock:
   a multi-second forecast needs no repetition, and a sizing call would double the cost of the benchmark.
3. **Per-round ratios**: reference time / setting time within each round; the speed-up is their median and its
   95% interval is the distribution-free confidence interval of the median from order statistics (exact for any
   distribution of the ratios, so a round slowed by another process cannot produce a confident figure by
   itself). Rounds go on (at least ``min_rounds``, at most ``max_rounds``, within ``budget_s`` seconds) until
   every interval is narrower than ``rel_width`` of its speed-up on each side.
4. **Verdicts**: an interval above 1 is "faster", below 1 "slower", one that contains 1 is "no measurable
   change" and is never printed as a speed-up (:func:`speed_cell`).

The clock is injectable (``clock=``), so the logic is tested with a fake clock, deterministically.
:func:`speed_cell` and :func:`verdict` are pure Python: the model card and result tables use them without torch.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "Speedup", "paired_speedups", "median_interval", "verdict", "speed_cell", "noop_reason", "LEVEL", "MIN_ROUNDS",
]  # fmt: skip

#: coverage of every interval :func:`paired_speedups` reports
LEVEL = 0.95
#: the fewest rounds that give a 95% interval of the median (with 5, even [min, max] covers only 93.75%)
MIN_ROUNDS = 6


@dataclass(frozen=True)
class Speedup:
    """The measured speed of one setting against the reference.

    Attributes:
        speedup: median over rounds of (reference time / this setting's time) within a round.
        low, high: the 95% confidence interval of that median (``LEVEL``).
        rounds: paired rounds measured.
        time_s: median over rounds of this setting's time per call (seconds).
        reference_s: the same for the reference.
        calls: calls timed per measurement (the last round's block sizes added up).
    """

    speedup: float
    low: float
    high: float
    rounds: int
    time_s: float
    reference_s: float
    calls: int = 1

    @property
    def verdict(self) -> str:
        """``"faster"``, ``"slower"`` or ``"no measurable change"`` (the interval contains 1)."""
        return verdict(self.low, self.high)

    def fields(self) -> dict[str, Any]:
        """The row fields the harness, ``tune`` and the benchmarks record: ``speedup``, ``speedup_low``,
        ``speedup_high``, ``speedup_rounds``, ``speed_verdict``, ``time_s``."""
        return {
            "speedup": self.speedup,
            "speedup_low": self.low,
            "speedup_high": self.high,
            "speedup_rounds": self.rounds,
            "speed_verdict": self.verdict,
            "time_s": self.time_s,
        }

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "verdict": self.verdict}

    def __str__(self) -> str:
        return speed_cell(self.fields())


def verdict(low: float, high: float) -> str:
    """The reading of a speed-up interval: ``"faster"`` (above 1), ``"slower"`` (below 1) or ``"no measurable
    change"``."""
    if low > 1.0:
        return "faster"
    if high < 1.0:
        return "slower"
    return "no measurable change"


def speed_cell(row: Mapping[str, Any]) -> str:
    """How a result row's speed is shown in every table: ``"2.13x [1.98, 2.30]"``; ``"no measurable change [0.95,
    1.08]"`` when the interval contains 1; ``"merges nothing here: <reason>"`` for a setting that merged no token
    (``row["noop"]``, never timed); ``""`` for a row without a speed (the reference, seasonal naive). A row from
    before intervals were recorded shows its point figure with "(no interval)"."""
    if row.get("noop"):
        return f"merges nothing here: {row['noop']}"
    s = row.get("speedup")
    if s is None:
        return ""
    low, high = row.get("speedup_low"), row.get("speedup_high")
    if low is None or high is None:
        return f"{s:.2f}x (no interval)"
    if verdict(low, high) == "no measurable change":
        return f"no measurable change [{low:.2f}, {high:.2f}]"
    return f"{s:.2f}x [{low:.2f}, {high:.2f}]"


def median_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float]:
    """Distribution-free confidence interval of the median: order statistics ``(x_(j), x_(n+1-j))`` with the
    largest ``j`` whose coverage ``1 - 2 P(Binomial(n, 1/2) < j)`` is at least ``level``.

    Needs at least 6 values at 95% (with 5, even ``[min, max]`` covers only 93.75%); with fewer it returns the
    whole real line, ``(0, inf)`` for ratios, so that no verdict can be reached.
    """
    xs = sorted(values)
    n = len(xs)
    best = 0
    tail = 0.0  # P(Bin(n, 1/2) < j)
    for j in range(1, n // 2 + 1):
        tail += math.comb(n, j - 1) / 2**n
        if 1 - 2 * tail >= level:
            best = j
        else:
            break
    if best == 0:
        return 0.0, math.inf
    return xs[best - 1], xs[n - best]


def paired_speedups(
    calls: Mapping[str, Callable[[], Any]],
    *,
    setup: Callable[[str], None] | None = None,
    min_time: float = 0.2,
    min_rounds: int = 6,
    max_rounds: int = 40,
    rel_width: float = 0.05,
    budget_s: float = 120.0,
    warmup: int = 1,
    clock: Callable[[], float] | None = None,
    progress: bool = False,
    desc: str = "timing",
    adaptive: bool = True,
) -> dict[str, Speedup]:
    """Speed-ups of every setting against the first (the reference), from paired interleaved rounds.

    Args:
        calls: label -> a function doing one unit of the work (e.g. one forecast of the timed windows); the first
            label is the reference. Functions may share one model: ``setup(label)`` is called before a label's
            measurement (apply or remove merging there, outside the timed region).
        min_time: seconds of work per measurement (the call repeats until then, as timeit's autorange does).
        min_rounds / max_rounds: paired rounds at least / at most. 6 is the fewest that can give a 95% interval; with
            fewer, exactly ``min_rounds`` run (a smoke run: the interval is unbounded, the verdict "no measurable
            change").
        rel_width: stop once every interval's half-width is at most this fraction of its speed-up.
        budget_s: stop after this many seconds (on ``clock``) once ``min_rounds`` are done.
        warmup: untimed calls of every setting before the first round.
        clock: the timer (default ``time.perf_counter``); tests pass a fake one.
        progress: a tqdm bar over rounds.
        adaptive: ``False``: the same number of calls in every process, whatever its clock says (``accelerate``
            runs, whose calls are collective): each measurement is ``Timer.timeit(1)`` (one timed call after two
            warm-up calls) and exactly ``min_rounds`` rounds run.

    Returns:
        label -> :class:`Speedup`, the reference included (its speed-up is 1 with a zero-width interval).
    """
    from torch.utils.benchmark import Timer
    from tqdm.auto import tqdm

    labels = list(calls)
    if not labels:
        raise ValueError("calls is empty: give the reference and the settings to time")
    for name, value, low in (("min_rounds", min_rounds, 1), ("max_rounds", max_rounds, 1), ("warmup", warmup, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    if max_rounds < min_rounds:
        raise ValueError(f"max_rounds ({max_rounds}) must be at least min_rounds ({min_rounds})")
    for name, value in (("min_time", min_time), ("rel_width", rel_width), ("budget_s", budget_s)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    clock = clock or time.perf_counter
    import torch

    threads = torch.get_num_threads()
    timers = {
        label: Timer(stmt="fn()", globals={"fn": calls[label]}, timer=clock, num_threads=threads) for label in labels
    }

    def prepare(label: str) -> None:
        if setup is not None:
            setup(label)

    long: dict[str, bool] = {}
    for label in labels:
        prepare(label)
        for _ in range(warmup):
            t0 = clock()
            calls[label]()
            long[label] = clock() - t0 >= min_time > 0
    per_round: dict[str, list[float]] = {label: [] for label in labels}
    counts: dict[str, int] = {}
    start = clock()
    bar = tqdm(total=max_rounds, desc=desc, disable=not progress, leave=False)
    result: dict[str, Speedup] = {}
    try:
        for r in range(max_rounds):
            for label in labels if r % 2 == 0 else labels[::-1]:
                prepare(label)
                if long.get(label) and adaptive:
                    t0 = clock()
                    calls[label]()
                    per_round[label].append(clock() - t0)
                    counts[label] = 1
                    continue
                t = timers[label]
                m = t.blocked_autorange(min_run_time=min_time) if adaptive else t.timeit(1)
                per_round[label].append(m.median)
                counts[label] = m.number_per_run * len(m.raw_times)
            bar.update(1)
            result = _summarise(per_round, counts)
            if r + 1 < min_rounds:
                continue
            if not adaptive or min_rounds < MIN_ROUNDS:  # fewer rounds asked than an interval needs: a smoke run
                break
            wide = any(not (s.high - s.low) / 2 <= rel_width * s.speedup for s in result.values())
            if not wide or clock() - start >= budget_s:
                break
    finally:
        bar.close()
        prepare(labels[0])
    return result


def _summarise(per_round: dict[str, list[float]], counts: dict[str, int]) -> dict[str, Speedup]:
    labels = list(per_round)
    ref = per_round[labels[0]]
    ref_s = statistics.median(ref)
    out = {}
    for label in labels:
        times = per_round[label]
        ratios = [a / b for a, b in zip(ref, times, strict=True)]
        low, high = median_interval(ratios) if label != labels[0] else (1.0, 1.0)
        out[label] = Speedup(
            speedup=statistics.median(ratios),
            low=low,
            high=high,
            rounds=len(times),
            time_s=statistics.median(times),
            reference_s=ref_s,
            calls=counts.get(label, 1),
        )
    return out


def noop_reason(
    forwards: Sequence[Sequence[int]] | None = None,
    macs_ratio: float | None = None,
    min_tokens: int | None = None,
    *,
    merged: bool | None = None,
    longest: int | None = None,
) -> str | None:
    """Why a merge setting merged nothing, or None when it merged something (or that cannot be told): such a
    setting is not timed and no speed-up is printed for it (the harness, ``tune``, the frontier).

    ``forwards``: the token counts of every encoder forward (:func:`mergeplug.core.recording_token_counts`), or,
    when they are not kept, what they showed: ``merged`` (some forward removed a token) and ``longest`` (the most
    tokens entering block 0); ``macs_ratio``: unmerged MACs / these on a few windows (catches merging before block
    0, which token counts entering block 0 do not show); ``min_tokens``: the setting's floor.
    """
    if forwards is not None:
        merged = any(c[-1] < c[0] for c in forwards)
        longest = max((c[0] for c in forwards), default=None)
    if merged or (macs_ratio is not None and macs_ratio > 1.0005):
        return None
    if longest is not None:
        if min_tokens and longest <= min_tokens:
            return f"series of at most {longest} tokens <= min_tokens={min_tokens}"
        return f"no merge step removed a token (at most {longest} tokens)"
    if macs_ratio is not None:
        return "MACs ratio 1.00: no token merged"
    return None
