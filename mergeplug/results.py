"""Tables of ``mergeplug-eval run`` results (``results.jsonl`` rows): per dataset and aggregated.

Pure Python, so that the model card (:mod:`mergeplug.hub`) can show measured tables without the evaluation
harness; :mod:`mergeplug.eval.report` adds the plot and writes ``report.md``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .store import read_rows
from .timing import speed_cell

__all__ = ["load_rows", "aggregate", "aggregate_speed_cell", "markdown", "dataset_label"]


def dataset_label(name: str) -> str:
    """A dataset's name for people: a local file ``file:/some/dir/sales.csv`` is ``sales.csv``."""
    return Path(name[len("file:") :]).name if name.startswith("file:") else name


def load_rows(directory: str | Path) -> list[dict[str, Any]]:
    """Rows of ``DIR/results.jsonl``; a clear error when the directory holds no results."""
    path = Path(directory) / "results.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {directory} a mergeplug-eval results directory?")
    rows, _ = read_rows(path)  # a row cut short by a kill is left out (and said so)
    missing = [i for i, r in enumerate(rows) if not {"dataset", "setting", "MASE", "WQL"} <= set(r)]
    if missing:
        raise ValueError(f"{path}: row {missing[0] + 1} lacks dataset/setting/MASE/WQL: not a mergeplug-eval result")
    return rows


def _geomean(values: list[float]) -> float:
    values = [v for v in values if v > 0 and math.isfinite(v)]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per setting: geometric means over datasets of MASE and WQL relative to seasonal naive, and of speed-up."""
    naive = {r["dataset"]: r for r in rows if r["setting"] == "seasonal-naive"}
    settings: list[str] = []
    for r in rows:
        if r["setting"] not in settings:
            settings.append(r["setting"])
    out = []
    for s in settings:
        mine = [r for r in rows if r["setting"] == s and r["dataset"] in naive]
        out.append(
            {
                "setting": s,
                "datasets": len(mine),
                "MASE_ratio": _geomean([r["MASE"] / naive[r["dataset"]]["MASE"] for r in mine]),
                "WQL_ratio": _geomean([r["WQL"] / naive[r["dataset"]]["WQL"] for r in mine]),
                "speedup": _geomean([r["speedup"] for r in mine if "speedup" in r]) if s != "seasonal-naive" else None,
                "verdicts": _verdicts(mine),
                "macs_ratio": _geomean(macs)
                if (macs := [r["macs_ratio"] for r in mine if r.get("macs_ratio")])
                else None,
            }
        )
    return out


def _verdicts(rows: list[dict[str, Any]]) -> dict[str, int]:
    """How many datasets read faster / slower / no measurable change / merge nothing (rows without an interval
    count by their point figure: "unsure")."""
    out: dict[str, int] = {}
    for r in rows:
        if r.get("noop"):
            key = "merges nothing"
        elif r.get("speed_verdict"):
            key = r["speed_verdict"]
        elif "speedup" in r:
            key = "no interval"
        else:
            continue
        out[key] = out.get(key, 0) + 1
    return out


def aggregate_speed_cell(a: dict[str, Any]) -> str:
    """The aggregate table's speed: the geometric-mean speed-up over the datasets where it is measurable, and how
    many datasets read each way (``"1.84x (faster on 3, no measurable change on 1)"``)."""
    v = a.get("verdicts") or {}
    if v.get("reference"):
        return "reference"
    parts = [f"{k} on {n}" for k, n in v.items() if k != "reference"]
    measured = v.get("faster", 0) + v.get("slower", 0) + v.get("no interval", 0)
    if not measured:
        return "; ".join(parts)
    return f"{a['speedup']:.2f}x ({', '.join(parts)})" if a.get("speedup") else ", ".join(parts)


def _fmt(v: Any, spec: str) -> str:
    return "" if v is None else format(v, spec)


def markdown(rows: list[dict[str, Any]], marked: Callable[[dict[str, Any]], bool] | None = None) -> str:
    """Per-dataset table and the aggregate table, as markdown (datasets by :func:`dataset_label`; ``marked``: rows
    for which it is true get "(this model)" after their setting)."""
    lines = [
        "| dataset | setting | MASE | WQL | MASE change | WQL change | speed-up | MACs ratio | GMACs/window "
        "| windows/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {dataset_label(r['dataset'])} | {r['setting']}{' **(this model)**' if marked and marked(r) else ''} "
            f"| {r['MASE']:.3f} | {r['WQL']:.3f} "
            f"| {_fmt(r.get('MASE_change'), '+.1%')} | {_fmt(r.get('WQL_change'), '+.1%')} "
            f"| {speed_cell(r) if r.get('speed_verdict') != 'reference' else 'reference'} "
            f"| {_fmt(r.get('macs_ratio'), '.2f')}{'x' if r.get('macs_ratio') else ''} "
            f"| {_fmt(r['macs_per_window'] / 1e9 if r.get('macs_per_window') else None, '.3g')} "
            f"| {_fmt(r.get('windows_per_s'), '.1f')} |"
        )
    lines += [
        "",
        "Aggregate (geometric mean over datasets; ratios relative to seasonal naive, lower is better):",
        "",
        "| setting | datasets | MASE ratio | WQL ratio | speed-up | MACs ratio |",
        "|---|---|---|---|---|---|",
    ]
    for a in aggregate(rows):
        speed = aggregate_speed_cell(a)
        macs = _fmt(a["macs_ratio"], ".2f") + ("x" if a["macs_ratio"] else "")
        lines.append(
            f"| {a['setting']} | {a['datasets']} | {a['MASE_ratio']:.3f} | {a['WQL_ratio']:.3f} | {speed} | {macs} |"
        )
    lines += [
        "",
        "Speed-up: median of paired interleaved rounds against unmerged, [95% interval]; an interval containing 1 "
        'reads "no measurable change"; a setting that merged no token on a dataset is named, not timed.',
    ]
    skipped = {dataset_label(r["dataset"]): r.get("skipped_series", 0) for r in rows if r.get("skipped_series")}
    if skipped:
        lines += ["", "Series skipped as too short: " + ", ".join(f"{d}: {n}" for d, n in skipped.items())]
    return "\n".join(lines)
