"""Tables and plots from a results directory (``results.jsonl``); the tables are :mod:`mergeplug.results`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..results import aggregate, dataset_label, load_rows, markdown

__all__ = ["load_rows", "aggregate", "markdown", "plot", "write_report", "dataset_label", "pareto_frontier"]


def pareto_frontier(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (speed-up, accuracy change) points no other point beats on both (faster and lower change), by speed."""
    frontier, best = [], float("inf")
    for x, y in sorted(points, key=lambda p: (-p[0], p[1])):  # fastest first: keep what beats every faster one
        if y < best:
            frontier.append((x, y))
            best = y
    return sorted(frontier)


def _bounds(row: dict[str, Any]) -> tuple[float, float]:
    """The speed-up interval to draw: the row's, or the point itself where the interval is unbounded or absent."""
    s = row["speedup"]
    low, high = row.get("speedup_low", s), row.get("speedup_high", s)
    if not (0 < low <= s <= high < math.inf):
        return s, s
    return low, high


def plot(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """PNG: one panel per dataset, speed-up (x, log scale, with its 95% interval) vs WQL change (y, symmetric log
    when a change passes 10%, so one outlier does not flatten the rest), every point labelled with its setting; a
    line joins only the Pareto frontier (no other setting is both faster and more accurate). Settings that merged
    nothing are listed under the panel, not drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

    datasets = list(dict.fromkeys(r["dataset"] for r in rows if r["setting"] not in ("seasonal-naive", "unmerged")))
    n = max(len(datasets), 1)
    cols = min(3, n)
    rows_n = math.ceil(n / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(5.2 * cols, 4.2 * rows_n), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for i, ds in enumerate(datasets):
        ax = axes.flat[i]
        mine = [r for r in rows if r["dataset"] == ds and r.get("speed_verdict") not in (None, "reference")]
        noops = [r["setting"] for r in rows if r["dataset"] == ds and r.get("noop")]
        color = f"C{i % 10}"
        x = [r["speedup"] for r in mine]
        y = [100 * r["WQL_change"] for r in mine]
        bounds = [_bounds(r) for r in mine]  # an unbounded interval (fewer than 6 rounds) draws no bar
        err = [[r["speedup"] - b[0] for r, b in zip(mine, bounds, strict=True)],
               [b[1] - r["speedup"] for r, b in zip(mine, bounds, strict=True)]]  # fmt: skip
        if mine:
            ax.errorbar(x, y, xerr=err, fmt="o", color=color, ms=5, capsize=2, lw=0.8)
        for r, xi, yi in zip(mine, x, y, strict=True):
            ax.annotate(r["setting"], (xi, yi), fontsize=6, xytext=(3, 3), textcoords="offset points")
        frontier = pareto_frontier(list(zip(x, y, strict=True)))
        if len(frontier) > 1:
            ax.plot([p[0] for p in frontier], [p[1] for p in frontier], color=color, lw=0.8, alpha=0.6)
        ax.axhline(0, color="grey", lw=0.8)
        ax.axvline(1, color="grey", lw=0.8, ls=":")
        ax.set_xscale("log")
        lows = [b[0] for b in bounds] + [1.0]
        highs = [b[1] for b in bounds] + [1.0]
        lo, hi = min(lows) / 1.1, max(highs) * 1.4  # room for the labels on the right
        ticks = [t for t in (0.25, 0.5, 0.75, 1, 1.25, 1.5, 2, 3, 4, 6, 8, 12, 16, 32, 64) if lo <= t <= hi]
        ax.set_xlim(lo, hi)
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}x"))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_minor_formatter(NullFormatter())
        if y and max(abs(v) for v in y) > 10:
            ax.set_yscale("symlog", linthresh=1.0)
        ax.margins(y=0.12)
        ax.set_title(dataset_label(ds), fontsize=9)
        ax.set_xlabel("speed-up vs unmerged (bars: 95% interval)", fontsize=7)
        ax.set_ylabel("WQL change (%)" + (", symmetric log" if ax.get_yscale() == "symlog" else ""), fontsize=7)
        ax.tick_params(labelsize=7)
        if noops:
            shown = ", ".join(noops[:4]) + (f" and {len(noops) - 4} more" if len(noops) > 4 else "")
            ax.text(0.01, 0.01, f"merged nothing (not drawn): {shown}", transform=ax.transAxes, fontsize=6,
                    color="grey", va="bottom")  # fmt: skip
    fig.suptitle("Token merging: speed vs accuracy per dataset (line: Pareto frontier)", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(directory: str | Path) -> str:
    """Write ``report.md`` and ``speed_vs_accuracy.png`` into the results directory; return the markdown."""
    directory = Path(directory)
    rows = load_rows(directory)
    text = markdown(rows)
    (directory / "report.md").write_text(text + "\n")
    plot(rows, directory / "speed_vs_accuracy.png")
    return text
