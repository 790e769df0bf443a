"""Training and evaluation of the compact Transformer, dense and sparse-binary, on the three tasks.

One run = (task, variant, seed) in its own directory::

    run.json         settings (a resumed run must match them)
    log.jsonl        one line per epoch: train loss, validation metric, seconds
    checkpoint.pt    the latest state (model, optimizer, epoch, best validation metric), written atomically
    best.pt          the model with the best validation metric so far (model selection: validation only)
    result.json      test metrics of the best model + efficiency figures (written last: a finished run)

A killed run resumes from ``checkpoint.pt``; a finished one is skipped.

Validation data come from the training split only (classification: a stratified 20% of the training series;
anomaly / forecasting: the chronological validation part). The test split is read once, by the best model.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from mergeplug.store import load_torch_state
from mergeplug_lab.sbt.model import CompactTransformer, SBTConfig

__all__ = ["TaskSpec", "TrainSettings", "train_run", "f1_scores", "point_adjust", "average_precision", "top1_hit"]


SCHEDULES = ("constant", "cosine")


@dataclass
class TrainSettings:
    """Optimisation settings of one run."""

    epochs: int = 60
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 15
    max_batches_per_epoch: int | None = None
    seed: int = 0
    threads: int | None = None
    schedule: str = "constant"

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; use one of {SCHEDULES}")

    def lr_at(self, epoch: int) -> float:
        """Learning rate of ``epoch``: constant, or cosine decay from ``lr`` to 0 over ``epochs`` epochs."""
        if self.schedule == "cosine":
            return self.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / self.epochs))
        return self.lr


@dataclass
class TaskSpec:
    """A prepared task: tensors for train / validation / test and how to score them.

    Attributes:
        name: task name (e.g. ``japanese_vowels``).
        kind: ``classification``, ``anomaly`` or ``forecast``.
        model: the model settings (n_channels, task, widths...).
        train / val / test: (x (N, T, C), mask (N, T) or None, y) tensors; y = class index (classification),
            the window's last step (N, C) (anomaly, forecast); anomaly val / test y are the per-window labels.
        extra: task facts (e.g. anomaly point labels per step and window end indices).
    """

    name: str
    kind: str
    model: SBTConfig
    train: tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]
    extra: dict[str, Any] = field(default_factory=dict)


def point_adjust(pred: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Point adjustment: if any step of a true anomaly segment is flagged, flag the whole segment. (T,) -> (T,)."""
    pred = pred.astype(bool).copy()
    labels = labels.astype(bool)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], labels.astype(np.int8), [0]])))
    for start, end in zip(edges[::2], edges[1::2], strict=True):
        if pred[start:end].any():
            pred[start:end] = True
    return pred


def _f1(pred: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    tp = float(np.sum(pred & labels))
    fp = float(np.sum(pred & ~labels))
    fn = float(np.sum(~pred & labels))
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}


def f1_scores(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    """F1 of ``scores > threshold`` against point labels, without and with point adjustment (both (T,))."""
    labels = labels.astype(bool)
    pred = scores > threshold
    raw, adj = _f1(pred, labels), _f1(point_adjust(pred, labels), labels)
    return {**{f"{k}": v for k, v in raw.items()}, **{f"{k}_pa": v for k, v in adj.items()}}


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the precision-recall curve (average precision) of point scores: threshold-free. (T,), (T,)."""
    labels = labels.astype(bool)
    if not labels.any():
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    hits = labels[order]
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision[hits].sum() / hits.sum())


def top1_hit(scores: np.ndarray, labels: np.ndarray, slack: int = 100) -> float:
    """UCR anomaly archive convention: 1.0 if the highest score lies within ``slack`` steps of a labelled anomaly."""
    idx = np.flatnonzero(labels.astype(bool))
    if idx.size == 0:
        return float("nan")
    top = int(np.argmax(scores))
    return float(np.abs(idx - top).min() <= slack)


def best_f1_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """Threshold maximising the (unadjusted) F1 on labelled *validation* scores."""
    cands = np.unique(np.quantile(scores, np.linspace(0.5, 0.9995, 400)))
    f1s = [_f1(scores > c, labels.astype(bool))["f1"] for c in cands]
    return float(cands[int(np.argmax(f1s))])


def _batches(n: int, size: int, rng: np.random.Generator | None, limit: int | None) -> list[np.ndarray]:
    order = rng.permutation(n) if rng is not None else np.arange(n)
    out = [order[i : i + size] for i in range(0, n, size)]
    return out[:limit] if limit else out


@torch.no_grad()
def predict(model: CompactTransformer, x: torch.Tensor, mask: torch.Tensor | None, batch: int = 256) -> torch.Tensor:
    """Model outputs for every row of ``x`` (N, T, C) in batches -> (N, K) or (N, C)."""
    model.eval()
    outs = []
    for idx in _batches(x.shape[0], batch, None, None):
        outs.append(model(x[idx], None if mask is None else mask[idx]))
    return torch.cat(outs)


def _loss(spec: TaskSpec, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out, y) if spec.kind == "classification" else F.mse_loss(out, y)


def evaluate(spec: TaskSpec, model: CompactTransformer, split: str, threshold: float | None = None) -> dict[str, Any]:
    """Task metrics on ``split`` ("val" or "test")."""
    x, mask, y = getattr(spec, split)
    out = predict(model, x, mask)
    if spec.kind == "classification":
        return {"accuracy": float((out.argmax(-1) == y).float().mean())}
    if spec.kind == "forecast":
        return {"mse": float(F.mse_loss(out, y)), "mae": float(F.l1_loss(out, y))}
    scores = ((out - spec.extra[f"{split}_target"]) ** 2).mean(-1).numpy()  # per window = per scored step
    labels = y.numpy().astype(bool)
    res: dict[str, Any] = {"score_mean": float(scores.mean())}
    if labels.any():
        res.update(average_precision=average_precision(scores, labels), top1_hit=top1_hit(scores, labels))
    if threshold is not None:
        res.update(f1_scores(scores, labels, threshold))
    res["scores"] = scores
    return res


def anomaly_threshold(spec: TaskSpec, model: CompactTransformer) -> tuple[float, str]:
    """The detection threshold, from non-test data only: best validation F1 when validation labels exist,
    else the largest score on the clean held-out tail of the training data."""
    val = evaluate(spec, model, "val")
    labels = spec.val[2].numpy().astype(bool)
    if labels.any():
        return best_f1_threshold(val["scores"], labels), "best F1 on labelled validation windows"
    return float(val["scores"].max()), "max score on clean held-out training windows"


def _validation_metric(spec: TaskSpec, model: CompactTransformer) -> float:
    """Higher is better: accuracy, or minus the validation loss (forecast, anomaly: clean reconstruction)."""
    if spec.kind == "classification":
        return evaluate(spec, model, "val")["accuracy"]
    x, mask, y = spec.val
    out = predict(model, x, mask)
    target = spec.extra["val_target"] if spec.kind == "anomaly" else y
    if spec.kind == "anomaly":  # clean windows only: labelled ones would reward reconstructing anomalies
        keep = ~y.bool()
        out, target = out[keep], target[keep]
    return -float(F.mse_loss(out, target))


def _identity(meta: dict[str, Any]) -> dict[str, Any]:
    """What a resumed run must share with the run in its directory (everything but patience, threads and, with a
    constant learning rate, epochs)."""
    settings = {"schedule": "constant", **meta["settings"]}  # runs written before schedules existed
    free = ("patience", "threads") + (("epochs",) if settings["schedule"] == "constant" else ())
    settings = {k: v for k, v in settings.items() if k not in free}
    return {"task": meta["task"], "model": meta["model"], "variant": meta["variant"], "settings": settings}


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def train_run(
    spec: TaskSpec,
    out_dir: str | Path,
    settings: TrainSettings,
    *,
    prepare: Callable[[CompactTransformer], Any] | None = None,
    variant: dict[str, Any] | None = None,
    progress: bool = True,
) -> tuple[CompactTransformer, dict[str, Any]]:
    """Train (or resume) one run and return the best model and its validation / test metrics.

    Args:
        spec: the task.
        out_dir: run directory (created; resumed when it holds a checkpoint; a finished run is reloaded).
        settings: optimisation settings.
        prepare: turns the freshly built dense model into the variant (e.g. binarize it) and returns the
            parameters to train (None = all).
        variant: description of the variant, stored in run.json (resume must match).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"task": spec.name, "model": spec.model.to_dict(), "settings": asdict(settings), "variant": variant or {}}
    run_json = out / "run.json"
    if run_json.exists():
        old = json.loads(run_json.read_text())
        if _identity(old) != _identity(meta):
            raise ValueError(
                f"{out} holds a different run ({old['task']}, {old['variant']}, settings {old['settings']}); use "
                "another --out (only epochs, patience and threads may change on resume)"
            )
    run_json.write_text(json.dumps(meta, indent=1))
    if settings.threads:
        torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    model = CompactTransformer(spec.model)
    params = prepare(model) if prepare is not None else None
    params = list(model.parameters()) if params is None else list(params)
    opt = torch.optim.AdamW([p for p in params if p.requires_grad], lr=settings.lr, weight_decay=settings.weight_decay)
    state = {"epoch": 0, "best": -math.inf, "best_epoch": -1, "stale": 0}
    ckpt = out / "checkpoint.pt"
    if ckpt.exists():
        saved = load_torch_state(ckpt)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        state = saved["state"]
    x, mask, y = spec.train
    rng = np.random.default_rng(settings.seed)
    for _ in range(state["epoch"]):  # the same shuffles as an uninterrupted run
        rng.permutation(x.shape[0])
    bar = tqdm(range(state["epoch"], settings.epochs), desc=f"{spec.name} {out.name}", disable=not progress)
    for epoch in bar:
        if state["stale"] >= settings.patience:
            break
        t0 = time.perf_counter()
        for group in opt.param_groups:  # stateless schedule: a resumed run gets the same rate
            group["lr"] = settings.lr_at(epoch)
        model.train()
        losses = []
        for idx in _batches(x.shape[0], settings.batch_size, rng, settings.max_batches_per_epoch):
            loss = _loss(spec, model(x[idx], None if mask is None else mask[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        metric = _validation_metric(spec, model)
        improved = math.isfinite(metric) and metric > state["best"]
        if improved:
            state.update(best=metric, best_epoch=epoch, stale=0)
            _atomic_save(model.state_dict(), out / "best.pt")
        else:
            state["stale"] += 1
        state["epoch"] = epoch + 1
        _atomic_save({"model": model.state_dict(), "opt": opt.state_dict(), "state": state}, ckpt)
        line = {"epoch": epoch, "loss": float(np.mean(losses)), "val": metric, "lr": opt.param_groups[0]["lr"]}
        line["s"] = time.perf_counter() - t0
        with open(out / "log.jsonl", "a") as f:
            f.write(json.dumps(line) + "\n")
        bar.set_postfix(loss=f"{line['loss']:.4f}", val=f"{metric:.4f}")
    if not (out / "best.pt").exists():
        raise RuntimeError(f"{out}: no epoch gave a finite validation metric (last: {state['best']}); check the data")
    model.load_state_dict(load_torch_state(out / "best.pt"))
    model.eval()
    res: dict[str, Any] = {"best_epoch": state["best_epoch"], "val_metric": state["best"], "epochs_run": state["epoch"]}
    if spec.kind == "anomaly":
        thr, rule = anomaly_threshold(spec, model)
        test = evaluate(spec, model, "test", threshold=thr)
        test.pop("scores")
        res.update(threshold=thr, threshold_rule=rule, test=test)
    else:
        res["test"] = evaluate(spec, model, "test")
    return model, res
