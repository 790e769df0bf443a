"""Tables and plots from a results directory (``results.jsonl``); the tables are :mod:`mergeplug.results`."""

from __future__ import annotations

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


def plot(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """PNG: speed-up (x, log scale, with its 95% interval) vs WQL change (y, symmetric log, so one outlier does not
    flatten the rest), one colour per dataset, every point labelled with its setting; a line joins only each
    dataset's Pareto frontier (no other setting is both faster and more accurate). Settings that merged nothing
    are listed under the plot, not drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    noops: list[str] = []
    changes: list[float] = []
    for i, ds in enumerate(dict.fromkeys(r["dataset"] for r in rows)):
        mine = [r for r in rows if r["dataset"] == ds and r.get("speed_verdict") not in (None, "reference")]
        noops += [f"{dataset_label(ds)}: {r['setting']}" for r in rows if r["dataset"] == ds and r.get("noop")]
        if not mine:
            continue
        color = f"C{i % 10}"
        x = [r["speedup"] for r in mine]
        y = [100 * r["WQL_change"] for r in mine]
        changes += y
        err = [[max(r["speedup"] - r.get("speedup_low", r["speedup"]), 0) for r in mine],
               [max(min(r.get("speedup_high", r["speedup"]), 1e3) - r["speedup"], 0) for r in mine]]  # fmt: skip
        ax.errorbar(x, y, xerr=err, fmt="o", color=color, ms=5, capsize=2, lw=0.8, label=dataset_label(ds))
        for r, xi, yi in zip(mine, x, y, strict=True):
            ax.annotate(r["setting"], (xi, yi), fontsize=6, xytext=(3, 3), textcoords="offset points", color=color)
        frontier = pareto_frontier(list(zip(x, y, strict=True)))
        if len(frontier) > 1:
            ax.plot([p[0] for p in frontier], [p[1] for p in frontier], color=color, lw=0.8, alpha=0.6)
    ax.axhline(0, color="grey", lw=0.8)
    ax.axvline(1, color="grey", lw=0.8, ls=":")
    ax.set_xscale("log")
    linthresh = 1.0
    if changes and max(abs(c) for c in changes) > 10 * linthresh:
        ax.set_yscale("symlog", linthresh=linthresh)
    ax.set_xlabel("speed-up vs unmerged (x, log scale; bars: 95% interval)")
    ax.set_ylabel("WQL change vs unmerged (%)" + (", symmetric log" if ax.get_yscale() == "symlog" else ""))
    ax.set_title("Token merging: speed vs accuracy (line: each dataset's Pareto frontier)")
    if ax.get_legend_handles_labels()[0]:  # no merged rows: nothing to label
        ax.legend(fontsize=7)
    if noops:
        shown = ", ".join(noops[:6]) + (f" and {len(noops) - 6} more" if len(noops) > 6 else "")
        fig.text(0.01, 0.01, f"merged nothing (not drawn): {shown}", fontsize=6, color="grey")
    fig.tight_layout(rect=(0, 0.03 if noops else 0, 1, 1))
    path = Path(path)
    fig.savefig(path, dpi=120)
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
