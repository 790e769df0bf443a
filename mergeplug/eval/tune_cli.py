"""``mergeplug-eval tune``: :func:`mergeplug.tune` on registered datasets or local files, with an optional check of
the chosen setting on the dataset's test windows (chosen on the windows before them, never on the test windows)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..timing import speed_cell
from ..tune import TuneResult, tune
from .data import load_dataset, validation_split
from .models import load_model
from .run import parse_merge, run

__all__ = ["tune_dataset", "folder_name"]


def folder_name(name: str) -> str:
    """A folder name for a model or dataset spec: a local file or directory gives its last component
    (``file:/data/sales.csv`` -> ``sales.csv``), ``:`` and other characters unsafe in a path become ``_``."""
    if name.startswith("file:"):
        name = name[len("file:") :]
    if "/" in name or "\\" in name:
        name = Path(name).name or "model"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "unnamed"


def tune_dataset(
    model: str,
    dataset: str,
    *,
    merges: list[str] | None = None,
    prediction_length: int | None = None,
    windows: int = 4,
    tolerance: float = 0.01,
    out: str | Path = "results/tune",
    check_test: bool = False,
    reps: int = 6,
    progress: bool = True,
    margin: float = 0.05,
    time_budget: float = 60.0,
) -> tuple[TuneResult, list[dict[str, Any]] | None]:
    """Tune ``model`` on ``dataset``.

    Without ``check_test`` the whole series is the user's history (its end is the forecast origin) and the last
    ``windows`` windows of each series are backtested. With ``check_test`` the dataset's test windows are held out:
    tuning sees only the data before them, then the harness scores the unmerged model and the chosen setting on the
    test windows (``<out>/test``). Results go to ``<out>/<model>/<dataset>`` (:func:`folder_name` of each). Returns
    the tune result and the harness rows (or None).
    """
    if model == "seasonal-naive":
        raise ValueError("seasonal-naive has nothing to merge, so nothing to tune: give a model with --model")
    forecaster = load_model(model)
    ds = load_dataset(dataset, prediction_length=prediction_length)
    history = validation_split(ds) if check_test else ds
    fc = forecaster.for_dataset(history)
    if fc.target is None or not fc.mergeable():
        raise ValueError(f"token merging does not apply to {model!r}: nothing to tune")
    layers = forecaster.num_layers
    if merges:
        candidates = {}
        for text in merges:
            s = parse_merge(text, layers)
            kwargs = dict(s.kwargs)
            if kwargs.get("period") == "season":
                kwargs["period"] = ds.season if ds.season > 1 else 0
            candidates[s.label] = kwargs
    else:
        if layers is None:
            raise ValueError(f"{model!r}: unknown number of encoder layers; give candidates with --merge")
        candidates = None  # tune's defaults: default_candidates, with the long-context default for this history

    def forecast(entries: list[dict[str, Any]], h: int):
        return fc.quantiles(entries, h, batch_size=len(entries))

    where = Path(out) / folder_name(model) / folder_name(ds.name)
    result = tune(
        fc.pipe if hasattr(fc, "pipe") else fc.target,
        [dict(e) for e in history.entries],
        prediction_length=ds.prediction_length,
        tolerance=tolerance,
        candidates=candidates,
        num_layers=layers,
        windows=windows,
        forecast=forecast,
        target=fc.target,
        reps=reps,
        out=where,
        progress=progress,
        margin=margin,
        time_budget=time_budget,
    )
    rows = None
    if check_test:
        merge = [] if result.best is None else [result.best_label]
        rows = run(model, [ds], merge, out=where / "test", reps=reps, progress=progress)
        (where / "test.md").write_text(test_table(rows) + "\n")
    return result, rows


def test_table(rows: list[dict[str, Any]]) -> str:
    """The harness' rows on the test windows as a table (unmerged and the chosen setting)."""
    lines = ["| setting | MASE | WQL | WQL change | speed-up | MACs ratio |", "|---|---|---|---|---|---|"]
    for r in rows:
        if r["setting"] == "seasonal-naive":
            continue
        lines.append(
            f"| {r['setting']} | {r['MASE']:.3f} | {r['WQL']:.4f} | {r.get('WQL_change', 0.0):+.1%} | "
            f"{'reference' if r['setting'] == 'unmerged' else speed_cell(r)} | {r.get('macs_ratio', 1.0):.2f}x |"
        )
    return "\n".join(lines)
