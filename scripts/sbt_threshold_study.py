"""How much the anomaly F1 of the sparse-binary study depends on the detection rule (no training).

Reloads the trained anomaly runs of ``make sbt`` (``runs/sbt/<task>/<variant>/seed<k>/best.pt``), scores the
fit, validation and test windows, and evaluates one family of rules on every run: the raw score (squared
reconstruction error, the study's rule) and the score divided by the median of the previous W scores of the
stream (causal: fit, validation and test in time order, no labels), for several W. The threshold always comes
from non-test data as in the study (best validation F1 where validation labels exist, else the largest
validation score). Validation average precision on the labelled PM2.5 validation part is the only
selection signal a rule can have; test F1 / AP are reported for every rule so that nothing is picked on test.

    .venv/bin/python scripts/sbt_threshold_study.py --out benchmarks/sbt/threshold_study.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view

from mergeplug.binary import binarize
from mergeplug_lab.sbt.cli import BINARY_VARIANTS, _variant_task
from mergeplug_lab.sbt.model import CompactTransformer
from mergeplug_lab.sbt.train import average_precision, best_f1_threshold, f1_scores, predict

TASKS = ("kdd_tsad_135", "pm25_injected")
VARIANTS = ("dense", "dense-step-t", "sparse-binary", "sparse-binary-kd")  # those with runs are used


def scores(run_dir: Path, task: str, variant: str, seed: int) -> dict[str, np.ndarray]:
    """Per-window scores (T,) of the fit / val / test parts and the val / test labels of one trained run."""
    run = json.loads((run_dir / "run.json").read_text())  # the run's own width and density
    spec = _variant_task(task, variant, 1.0, None, run["model"]["d_model"])
    model = CompactTransformer(spec.model)
    if variant in BINARY_VARIANTS:
        binarize(model, density=run["variant"]["density"], init="random", seed=seed)
    model.load_state_dict(torch.load(run_dir / "best.pt", weights_only=True))
    targets = {"train": spec.train[2], "val": spec.extra["val_target"], "test": spec.extra["test_target"]}
    out = {k: ((predict(model, getattr(spec, k)[0], None) - t) ** 2).mean(-1).numpy() for k, t in targets.items()}
    out["val_labels"], out["test_labels"] = spec.val[2].numpy().astype(bool), spec.test[2].numpy().astype(bool)
    return out


def causal_normalize(stream: np.ndarray, w: int) -> np.ndarray:
    """``stream[t] / median(stream[t-w:t])`` (T,); the first w steps use what precedes them (at least one)."""
    out = stream.astype(np.float64).copy()
    med = np.median(sliding_window_view(stream, w), axis=-1)  # med[i] = median(stream[i:i+w])
    out[w:] = stream[w:] / med[:-1]
    for t in range(1, min(w, len(stream))):
        out[t] = stream[t] / np.median(stream[:t])
    return out


def evaluate(s: dict[str, np.ndarray], w: int | None) -> dict[str, float]:
    n_fit, n_val = len(s["train"]), len(s["val"])
    if w is None:
        val, test = s["val"], s["test"]
    else:
        z = causal_normalize(np.concatenate([s["train"], s["val"], s["test"]]), w)
        val, test = z[n_fit : n_fit + n_val], z[n_fit + n_val :]
    vl, tl = s["val_labels"], s["test_labels"]
    thr = best_f1_threshold(val, vl) if vl.any() else float(val.max())
    res = {"test_f1": f1_scores(test, tl, thr)["f1"], "test_ap": average_precision(test, tl)}
    if vl.any():
        res["val_ap"] = average_precision(val, vl)
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=Path, default=Path("runs/sbt"))
    p.add_argument("--windows", default="32,64,96,128,192,256,384,512,1024")
    p.add_argument("--out", type=Path, default=None, help="also write the markdown table here")
    a = p.parse_args()
    torch.set_num_threads(1)
    rules: list[int | None] = [None, *(int(w) for w in a.windows.split(","))]
    res: dict[tuple[str, str], list[dict[int | None, dict[str, float]]]] = {}
    for task in TASKS:
        for variant in VARIANTS:  # every finished seed (e.g. sparse-binary-kd was trained for #135 only)
            for done in sorted((a.runs / task / variant).glob("seed*/result.json")):
                seed = json.loads(done.read_text())["seed"]
                s = scores(done.parent, task, variant, seed)
                res.setdefault((task, variant), []).append({w: evaluate(s, w) for w in rules})
    for task in TASKS:
        if (task, "dense") not in res:
            raise SystemExit(f"no finished dense runs of {task} under {a.runs}: run make sbt first")
    binary = [v for v in VARIANTS if v in BINARY_VARIANTS]
    lines = [
        f"| rule | PM2.5 val AP (all runs) | task | test F1 {' / '.join(VARIANTS)} | F1 gap dense - "
        f"{' / '.join(binary)} (points) | test AP {' / '.join(VARIANTS)} |",
        "|---|---|---|---|---|---|",
    ]

    def mean(task: str, v: str, w: int | None, key: str) -> float | None:
        runs = res.get((task, v))
        return None if runs is None else float(np.mean([r[w][key] for r in runs]))

    def text(xs: list[float | None], fmt: str) -> str:
        return " / ".join("-" if x is None else format(x, fmt) for x in xs)

    for w in rules:
        name = "raw score" if w is None else f"score / median of previous {w}"
        val_ap = np.mean([r[w]["val_ap"] for (t, _), runs in res.items() if t == "pm25_injected" for r in runs])
        for task in TASKS:
            f1 = [mean(task, v, w, "test_f1") for v in VARIANTS]
            ap = [mean(task, v, w, "test_ap") for v in VARIANTS]
            gaps = [None if f is None else 100 * (f1[0] - f) for v, f in zip(VARIANTS, f1, strict=True) if v in binary]
            lines.append(
                f"| {name} | {val_ap:.3f} | {task} | {text(f1, '.3f')} | {text(gaps, '+.1f')} | {text(ap, '.3f')} |"
            )
    table = "\n".join(lines)
    print(table)
    if a.out:
        a.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
