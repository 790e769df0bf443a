"""``mergeplug-sbt``: train and compare the dense and sparse-binary compact Transformer on the shipped tasks.

    mergeplug-sbt train --task japanese_vowels --variant dense sparse-binary --seeds 0 1 2 --out runs/sbt
    mergeplug-sbt report --out runs/sbt --md results.md --plot results.png

Variants (one structure, see :mod:`mergeplug_lab.sbt.model`):

* ``dense``: float weights, full attention.
* ``dense-step-t``: float weights, step-t attention (anomaly / forecast only; isolates what step-t does).
* ``sparse-binary``: every linear layer binarized (Biprop: frozen random signs from the seed, learned top-k
  scores, ``--density`` kept), trained: scores and layer norms only; step-t attention for anomaly / forecast,
  the fixed Q/K/V activation mask (``--qkv-keep``) for classification.
* ``sparse-binary-ft``: the same structure, binarized from the trained dense model of the same seed (``dense-step-t``
  for anomaly / forecast, ``dense`` for classification, from the same ``--out``; its biases are dropped): signs
  and initial scores from those weights (``init="weights"``), then scores and layer norms trained as above.
* ``sparse-binary-kd``: ``sparse-binary`` trained by distillation (anomaly / forecast): the training target of each
  window is ``(1 - β) · y + β · teacher(x)``, the teacher being the trained ``dense-step-t`` model of the same seed
  (from the same ``--out``), ``β = --kd-beta`` (default 0.5). Validation and test use the true targets.

Every run writes its directory (resumable; finished runs are skipped) and a ``result.json`` with the test
metric of the validation-selected model and its efficiency figures: parameters (total / non-zero), storage
(bytes written: dense fp32 safetensors vs the packed file), FLOPs per window (honest and reference
conventions, :mod:`mergeplug_lab.sbt.efficiency`) and inference time against the dense model, interleaved.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mergeplug._cli import quiet_third_party
from mergeplug_lab.sbt.efficiency import honest_flops, parameter_summary, reference_flops, storage_summary, time_forward
from mergeplug_lab.sbt.model import CompactTransformer
from mergeplug_lab.sbt.tasks import TASKS, build_task
from mergeplug_lab.sbt.train import SCHEDULES, TaskSpec, TrainSettings, predict, train_run

__all__ = ["main", "run_variant", "VARIANTS", "summarize"]

VARIANTS = ("dense", "dense-step-t", "sparse-binary", "sparse-binary-ft", "sparse-binary-kd")
BINARY_VARIANTS = ("sparse-binary", "sparse-binary-ft", "sparse-binary-kd")
METRIC = {"classification": ("accuracy", True), "anomaly": ("f1", True), "forecast": ("mse", False)}


def _variant_task(
    task: str, variant: str, qkv_keep: float, max_series: int | None, d_model: int | None = None
) -> TaskSpec:
    kind = TASKS[task]["kind"]
    if variant == "dense-step-t" and kind == "classification":
        raise ValueError("dense-step-t is for anomaly / forecast tasks (classification reads every step)")
    overrides: dict[str, Any] = {} if d_model is None else {"d_model": d_model}
    if variant in ("dense-step-t", *BINARY_VARIANTS) and kind != "classification":
        overrides["attention"] = "step-t"
    if variant in BINARY_VARIANTS:
        overrides["bias"] = False
        if kind == "classification":
            overrides["qkv_keep"] = qkv_keep
    return build_task(task, max_series=max_series, **overrides)


def run_variant(
    task: str,
    variant: str,
    seed: int,
    out: Path,
    settings: TrainSettings,
    *,
    density: float = 0.1,
    qkv_keep: float = 0.5,
    max_series: int | None = None,
    d_model: int | None = None,
    kd_beta: float = 0.5,
    progress: bool = True,
) -> dict[str, Any]:
    """Train (or resume, or reload) one (task, variant, seed) and return its result (also in result.json).

    ``d_model``: model width instead of the task's default (recorded with the run). ``kd_beta``: the teacher's
    share of the training target of ``sparse-binary-kd``, in (0, 1].
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {VARIANTS}")
    if d_model is not None and d_model < 1:
        raise ValueError(f"d_model must be a positive width, got {d_model}")
    run_dir = out / task / variant / f"seed{seed}"
    done = run_dir / "result.json"
    desc: dict[str, Any] = {"variant": variant, **({"max_series": max_series} if max_series else {})}
    if d_model is not None:
        desc["d_model"] = d_model
    if variant in BINARY_VARIANTS:
        desc.update(density=density, qkv_keep=qkv_keep if TASKS[task]["kind"] == "classification" else 1.0)
    source = teacher = None
    if variant == "sparse-binary-ft":
        src_variant = "dense" if TASKS[task]["kind"] == "classification" else "dense-step-t"
        source = out / task / src_variant / f"seed{seed}" / "best.pt"
        desc["init_from"] = src_variant
    if variant == "sparse-binary-kd":
        if TASKS[task]["kind"] == "classification":
            raise ValueError(
                "sparse-binary-kd distils regression targets (anomaly / forecast tasks); for classification use "
                "sparse-binary or sparse-binary-ft"
            )
        _check_kd_beta(kd_beta)
        teacher = out / task / "dense-step-t" / f"seed{seed}" / "best.pt"
        desc.update(teacher="dense-step-t", kd_beta=float(kd_beta))
    settings = TrainSettings(**{**settings.__dict__, "seed": seed})
    if done.exists():  # finished: reuse it if it is the same run
        old = json.loads((run_dir / "run.json").read_text())
        before = {"schedule": "constant", **old["settings"]}  # runs written before schedules existed
        now = asdict(settings)
        differ = sorted(k for k in set(before) | set(now) if k != "threads" and before.get(k) != now.get(k))
        if old["variant"] != desc:
            differ.append("variant")
        if differ:
            was = {k: before.get(k) for k in differ if k != "variant"}
            if "variant" in differ:
                was["variant"] = f"{old['variant']} (now {desc})"
            raise ValueError(
                f"{run_dir} holds a finished run with other settings ({', '.join(differ)} differ: {was}); "
                "use another --out"
            )
        return json.loads(done.read_text())
    spec = _variant_task(task, variant, qkv_keep, max_series, d_model)
    if teacher is not None:
        spec = distilled(spec, _load_teacher(teacher, task, qkv_keep, max_series, d_model), kd_beta)
    prepare = None
    if variant in BINARY_VARIANTS:
        from mergeplug.binary import binarize, trainable_binary

        if source is not None and not source.exists():
            raise ValueError(
                f"sparse-binary-ft starts from the trained {desc['init_from']} run of seed {seed}, but {source} does "
                f"not exist: train it first (--variant {desc['init_from']} sparse-binary-ft, same --out)"
            )

        def prepare(model: CompactTransformer) -> list[torch.nn.Parameter]:
            if source is not None:  # the dense weights of the same structure (its biases have no slot here)
                dense = {k: v for k, v in torch.load(source, weights_only=True).items() if not k.endswith(".bias")}
                missing, unexpected = model.load_state_dict(dense, strict=False)
                missing = [k for k in missing if not k.endswith(".bias")]
                if missing or unexpected:
                    raise ValueError(
                        f"{source} is not a dense run of this model (missing {missing[:3]}, unexpected "
                        f"{unexpected[:3]}): train dense / dense-step-t with the same task settings in this --out"
                    )
            binarize(model, density=density, init="random" if source is None else "weights", seed=seed)
            return trainable_binary(model, train_norms=True)

    model, res = train_run(spec, run_dir, settings, prepare=prepare, variant=desc, progress=progress)
    res.update(desc, task=task, kind=spec.kind, seed=seed)
    res["efficiency"] = efficiency(spec, model)
    done.write_text(json.dumps(res, indent=1))
    return res


def _check_kd_beta(kd_beta: float) -> None:
    if isinstance(kd_beta, bool) or not isinstance(kd_beta, (int, float)) or not 0.0 < float(kd_beta) <= 1.0:
        raise ValueError(
            f"kd_beta is the teacher's share of the training target and must be in (0, 1], got {kd_beta!r}"
        )


def _load_teacher(
    path: Path, task: str, qkv_keep: float, max_series: int | None, d_model: int | None
) -> CompactTransformer:
    """The finished ``dense-step-t`` run whose weights are at ``path`` (same task, width and data), in eval mode."""
    if not (path.parent / "result.json").exists():
        raise ValueError(
            f"sparse-binary-kd learns from the finished dense-step-t run of the same seed, but {path.parent} holds "
            "none: train it first (--variant dense-step-t sparse-binary-kd, same --out and settings)"
        )
    cfg = _variant_task(task, "dense-step-t", qkv_keep, max_series, d_model).model
    run = json.loads((path.parent / "run.json").read_text())
    if run["model"] != cfg.to_dict() or run["variant"].get("max_series") != max_series:
        raise ValueError(
            f"{path.parent} is a dense-step-t run of another model or data (model {run['model']}, max_series "
            f"{run['variant'].get('max_series')}; this run needs {cfg.to_dict()}, max_series {max_series}): train the "
            "teacher with the same --d-model / --max-series in this --out"
        )
    model = CompactTransformer(cfg)
    model.load_state_dict(torch.load(path, weights_only=True))
    return model.eval()


def distilled(spec: TaskSpec, teacher: CompactTransformer, beta: float) -> TaskSpec:
    """``spec`` with the training targets (N, C) replaced by ``(1 - beta) · y + beta · teacher(x)``.

    Validation and test are unchanged (selection and the reported metric use the true targets).
    """
    x, mask, y = spec.train
    with torch.no_grad():
        t = predict(teacher, x, mask)
    return replace(spec, train=(x, mask, (1.0 - beta) * y + beta * t.to(y.dtype)))


def efficiency(spec: TaskSpec, model: CompactTransformer, batch: int = 64) -> dict[str, Any]:
    """Parameters, storage, FLOPs per window and inference time (vs a dense full-attention twin, interleaved)."""
    x, mask, _ = spec.test
    x = x[:batch]
    mask = None if mask is None else mask[:batch]
    dense_cfg = type(spec.model)(**{**spec.model.to_dict(), "attention": "full", "qkv_keep": 1.0, "bias": True})
    twin = CompactTransformer(dense_cfg).eval()
    with torch.no_grad():
        times = time_forward({"dense": twin, "this": model}, x, mask)
    return {
        "params": parameter_summary(model),
        "storage": storage_summary(model),
        "flops": honest_flops(model, x, mask),
        "reference_flops": reference_flops(model, x.shape[1]),
        "time_s": times["this"],
        "time_dense_s": times["dense"],
        "window": int(x.shape[1]),
    }


def best_of(runs: list[dict[str, Any]], k: int) -> list[dict[str, Any]]:
    """Restarts chosen on validation: seeds 0..k-1, k..2k-1, ... form groups, and each group gives its run with the
    best validation metric. Groups of fewer than ``k`` finished seeds are left out."""
    if k < 1:
        raise ValueError(f"best-of needs at least 1 run per group, got {k}")
    by_seed = {r["seed"]: r for r in runs}
    groups = [[by_seed.get(s) for s in range(g, g + k)] for g in range(0, max(by_seed) + 1, k)]
    return [max(grp, key=lambda r: r["val_metric"]) for grp in groups if all(r is not None for r in grp)]


def summarize(out: Path, best: int = 1) -> list[dict[str, Any]]:
    """One row per (task, variant, width): metric mean ± std over seeds and efficiency ratios against ``dense`` of
    the same width (runs trained with ``--d-model`` are their own rows, labelled with it). ``best`` > 1: each row is
    over the restarts chosen on validation (:func:`best_of`) instead of over all seeds."""
    results: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for path in sorted(out.glob("*/*/seed*/result.json")):
        r = json.loads(path.read_text())
        results.setdefault((r["task"], r["variant"], r.get("d_model", 0)), []).append(r)
    if best > 1:
        results = {key: chosen for key, rs in results.items() if (chosen := best_of(rs, best))}
    rows = []
    for (task, variant, width), rs in sorted(results.items()):
        kind = rs[0]["kind"]
        name, _ = METRIC[kind]
        vals = [r["test"][name] for r in rs]
        eff = rs[0]["efficiency"]
        base = results.get((task, "dense", width), rs)[0]["efficiency"]
        row = {
            "task": task,
            "variant": (f"{variant} (d_model {width})" if width else variant)
            + (f" (best of {best} on validation)" if best > 1 else ""),
            "seeds": len(rs),
            "metric": name,
            "mean": float(np.mean(vals)),
            "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
            "params": eff["params"]["total"],
            "nonzero": eff["params"]["nonzero"],
            "bytes": eff["storage"]["bytes"],
            "storage_x": base["storage"]["bytes"] / eff["storage"]["bytes"],
            "ref_storage_x": base["storage"]["reference_bytes"] / eff["storage"]["reference_bytes"],
            "flops": eff["flops"]["flops"],
            "flops_x": base["flops"]["flops"] / eff["flops"]["flops"],
            "ref_flops_x": base["reference_flops"] / eff["reference_flops"],
            "time_x": float(np.median([r["efficiency"]["time_dense_s"] / r["efficiency"]["time_s"] for r in rs])),
        }
        if kind == "anomaly":
            pa = [r["test"]["f1_pa"] for r in rs]
            row.update(f1_pa_mean=float(np.mean(pa)), f1_pa_std=float(np.std(pa, ddof=1)) if len(pa) > 1 else 0.0)
            if all("average_precision" in r["test"] for r in rs):
                row["ap_mean"] = float(np.mean([r["test"]["average_precision"] for r in rs]))
        if kind == "forecast":
            mae = [r["test"]["mae"] for r in rs]
            row.update(mae_mean=float(np.mean(mae)))
        rows.append(row)
    return rows


def format_markdown(rows: list[dict[str, Any]]) -> str:
    """The comparison table (markdown)."""
    head = ("| task | variant | seeds | test metric (mean ± std) | params (non-zero) | storage bytes | storage x | "
            "FLOPs / window | FLOPs x | ref. storage x / FLOPs x | speed x |")  # fmt: skip
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        metric = f"{r['metric']} {r['mean']:.4f} ± {r['std']:.4f}"
        if "f1_pa_mean" in r:
            metric += f" (PA F1 {r['f1_pa_mean']:.3f} ± {r['f1_pa_std']:.3f}"
            metric += f", AP {r['ap_mean']:.3f})" if "ap_mean" in r else ")"
        if "mae_mean" in r:
            metric += f" (MAE {r['mae_mean']:.4f})"
        lines.append(
            f"| {r['task']} | {r['variant']} | {r['seeds']} | {metric} | {r['params']:,} ({r['nonzero']:,}) | "
            f"{r['bytes']:,} | {r['storage_x']:.1f}x | {r['flops']:,.0f} | {r['flops_x']:.1f}x | "
            f"{r['ref_storage_x']:.1f}x / {r['ref_flops_x']:.1f}x | {r['time_x']:.2f}x |"
        )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Metric against storage ratio per task (one panel per task)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({r["task"] for r in rows})
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.6 * len(tasks), 3.2), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        for r in (r for r in rows if r["task"] == task):
            color = {
                "dense": "C0",
                "dense-step-t": "C1",
                "sparse-binary": "C2",
                "sparse-binary-ft": "C3",
                "sparse-binary-kd": "C4",
            }.get(r["variant"])
            ax.errorbar(r["storage_x"], r["mean"], yerr=r["std"], fmt="o", capsize=3, label=r["variant"], color=color)
        ax.set_xscale("log")
        ax.set_title(task)
        ax.set_xlabel("storage reduction (x, bytes written)")
        ax.set_ylabel(next(r["metric"] for r in rows if r["task"] == task))
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    quiet_third_party()
    try:
        return _main(argv)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"mergeplug-sbt: error: {exc}", file=sys.stderr)
        return 2


def _main(argv: list[str] | None) -> int:
    p = argparse.ArgumentParser(prog="mergeplug-sbt", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train (or resume) runs; finished runs are skipped")
    t.add_argument("--task", nargs="+", required=True, choices=sorted(TASKS))
    t.add_argument("--variant", nargs="+", default=["dense", "sparse-binary"], choices=VARIANTS)
    t.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    t.add_argument("--out", type=Path, default=Path("runs/sbt"))
    t.add_argument("--density", type=float, default=0.1)
    t.add_argument("--qkv-keep", type=float, default=0.5)
    t.add_argument("--epochs", type=int, default=150)
    t.add_argument("--lr", type=float, default=None, help="default: 1e-3 dense, 3e-2 sparse-binary* (scores)")
    t.add_argument("--schedule", choices=SCHEDULES, default="constant",
                   help="learning rate per epoch: constant, or cosine decay to 0 over --epochs")  # fmt: skip
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--patience", type=int, default=40)
    t.add_argument("--max-batches", type=int, default=None, help="batches per epoch (large window sets)")
    t.add_argument("--max-series", type=int, default=None, help="first N series / windows per split (smoke runs)")
    t.add_argument("--threads", type=int, default=None)
    t.add_argument("--d-model", type=int, default=None, help="model width (default: the task's, see the task table)")
    t.add_argument("--kd-beta", type=float, default=0.5,
                   help="sparse-binary-kd: the teacher's share of the training target, in (0, 1]")  # fmt: skip
    r = sub.add_parser("report", help="mean ± std table over seeds (markdown) and a plot")
    r.add_argument("--out", type=Path, default=Path("runs/sbt"))
    r.add_argument("--md", type=Path, default=None)
    r.add_argument("--plot", type=Path, default=None)
    r.add_argument("--json", type=Path, default=None)
    r.add_argument("--best-of", type=int, default=1,
                   help="K > 1: per group of K seeds (0..K-1, K..2K-1, ...) only the run with the best validation "
                        "metric counts (restarts chosen on validation)")  # fmt: skip
    a = p.parse_args(argv)
    if a.cmd == "train":
        if "sparse-binary-kd" in a.variant:
            _check_kd_beta(a.kd_beta)
        if a.threads:
            torch.set_num_threads(a.threads)
        for task in a.task:
            for variant in a.variant:
                if variant in ("dense-step-t", "sparse-binary-kd") and TASKS[task]["kind"] == "classification":
                    print(f"{task}: {variant} is for anomaly / forecast tasks, skipped", file=sys.stderr)
                    continue
                for seed in a.seeds:
                    lr = a.lr if a.lr is not None else (3e-2 if variant in BINARY_VARIANTS else 1e-3)
                    settings = TrainSettings(epochs=a.epochs, batch_size=a.batch_size, lr=lr, patience=a.patience,
                                             max_batches_per_epoch=a.max_batches, threads=a.threads,
                                             schedule=a.schedule)  # fmt: skip
                    res = run_variant(task, variant, seed, a.out, settings, density=a.density, qkv_keep=a.qkv_keep,
                                      max_series=a.max_series, d_model=a.d_model, kd_beta=a.kd_beta)  # fmt: skip
                    name, _ = METRIC[res["kind"]]
                    print(f"{task} {variant} seed {seed}: test {name} {res['test'][name]:.4f}", flush=True)
        return 0
    if a.best_of < 1:
        raise ValueError(f"--best-of needs at least 1 run per group, got {a.best_of}")
    rows = summarize(a.out, a.best_of)
    if not rows:
        print(f"no finished runs under {a.out}", file=sys.stderr)
        return 2
    text = format_markdown(rows)
    print(text)
    if a.md:
        a.md.write_text(text + "\n")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))
    if a.plot:
        plot(rows, a.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
