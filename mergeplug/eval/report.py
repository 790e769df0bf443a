"""Tables and plots from a results directory (``results.jsonl``); the tables are :mod:`mergeplug.results`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..results import aggregate, load_rows, markdown

__all__ = ["load_rows", "aggregate", "markdown", "plot", "write_report"]


def plot(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """PNG: speed-up (x) vs WQL change (y), one line per dataset, one point per merge setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        pts = sorted((r["speedup"], 100 * r["WQL_change"]) for r in rows if r["dataset"] == ds and "speedup" in r)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=ds)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("speed-up vs unmerged (x)")
    ax.set_ylabel("WQL change vs unmerged (%)")
    ax.set_title("Token merging: speed vs accuracy")
    if ax.get_legend_handles_labels()[0]:  # no merged rows: nothing to label
        ax.legend(fontsize=7)
    fig.tight_layout()
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
