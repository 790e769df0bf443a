"""Export a training run as a loadable model directory with a Hugging Face model card.

The directory holds ``config.json`` + ``model.safetensors`` (``save_pretrained``), ``training.json`` (the
run's recipe, settings, what was seen and the trainer state) and ``README.md``: a model card generated with
``huggingface_hub.ModelCard`` listing the training data exactly, steps, samples, wall and CPU time, the
cost (parameters and storage counted by :mod:`mergeplug.cost`, MACs per forecast window from the harness
results), and the accuracy measured by ``mergeplug-eval`` (in-domain and zero-shot, as ratios to seasonal
naive). :func:`write_card` re-renders the card of an exported directory (e.g. with newer results).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from mergeplug._assets import AssetsMissingError, checkpoint_dir

__all__ = ["export", "write_card", "accuracy_table", "geomean", "CHRONOS_KINDS"]

#: recipe kinds whose export is a Chronos pipeline directory, and the architecture each names
CHRONOS_KINDS = {"bolt": "Chronos-Bolt", "chronos-t5": "Chronos-T5", "chronos-2": "Chronos-2"}


def geomean(values: list[float]) -> float:
    """Geometric mean (NaN for an empty list)."""
    vals = [v for v in values if v > 0 and math.isfinite(v)]
    return math.exp(sum(math.log(v) for v in vals) / len(vals)) if vals else float("nan")


def accuracy_table(rows: list[dict[str, Any]], seen: set[str]) -> tuple[str, dict[str, dict[str, float]]]:
    """Markdown table of MASE / WQL and their ratios to seasonal naive per dataset and setting.

    Returns the table and, per setting, the geometric-mean ratios over in-domain (``seen``) and zero-shot
    datasets: ``{setting: {"in-domain MASE": ..., "in-domain WQL": ..., "zero-shot MASE": ..., ...}}``.
    """
    naive = {r["dataset"]: r for r in rows if r["setting"] == "seasonal-naive"}
    lines = [
        "| dataset | split | setting | MASE | WQL | MASE / naive | WQL / naive | speed-up | MACs ratio |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    ratios: dict[str, dict[str, list[float]]] = {}
    for r in sorted(rows, key=lambda r: (r["dataset"] not in seen, r["dataset"], r["setting"] != "unmerged")):
        if r["setting"] == "seasonal-naive" or r["dataset"] not in naive:
            continue
        split = "in-domain" if r["dataset"] in seen else "zero-shot"
        m = r["MASE"] / naive[r["dataset"]]["MASE"]
        w = r["WQL"] / naive[r["dataset"]]["WQL"]
        agg = ratios.setdefault(r["setting"], {})
        agg.setdefault(f"{split} MASE", []).append(m)
        agg.setdefault(f"{split} WQL", []).append(w)
        speed = f"{r['speedup']:.2f}x" if "speedup" in r else ""
        macs = f"{r['macs_ratio']:.2f}x" if r.get("macs_ratio") else ""
        lines.append(
            f"| {r['dataset']} | {split} | {r['setting']} | {r['MASE']:.3f} | {r['WQL']:.3f} | {m:.3f} | {w:.3f} "
            f"| {speed} | {macs} |"
        )
    summary = {s: {k: geomean(v) for k, v in d.items()} for s, d in ratios.items()}
    return "\n".join(lines), summary


def _read_results(eval_dirs: list[str]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for d in eval_dirs:
        path = Path(d) / "results.jsonl"
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: run mergeplug-eval run --out {d} first")
        rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows


_DESCRIPTION = """A {arch} reference model trained from scratch on CPU by `mergeplug-train` ({params:,} parameters,
{size_mb:.2f} MB in float32). It exists so that mergeplug can measure the accuracy effect of token merging
on a model that really forecasts, offline. It is small and trained briefly: it is not a substitute for
Amazon's pretrained Chronos models. In the evaluation harness: `mergeplug-eval run --model {short} --datasets ...`."""

_TRAINING = """- Recipe `{kind}`: {recipe}
- Optimisation: {settings}
- Steps: {step:,} ({samples:,} windows), wall time {wall_h:.2f} h, CPU time {cpu_h:.2f} h ({threads} on a
  2-core CPU machine, sharing it with other jobs at times).

### Data seen in training (training parts only; the harness' test windows are cut off first)

| source | series | values | held out at the end of every series |
| --- | --- | --- | --- |
{seen}"""

_ACCURACY = """{accuracy}

Geometric means of the ratios:

{summary}

In-domain: test windows after the training cut-off of datasets whose earlier parts were seen.
Zero-shot: datasets never seen in training."""


def export(
    run_dir: str | Path,
    out: str | Path,
    *,
    name: str | None = None,
    eval_dirs: list[str] | None = None,
    packed_only: bool = False,
    storage_dtype: str = "float32",
) -> Path:
    """Write the run's latest checkpoint to ``out`` as a loadable model with ``training.json`` and a model card.

    ``storage_dtype="bfloat16"``: the weights are stored rounded to bfloat16 (half the bytes) and ``config.json``
    keeps ``dtype: float32``, so ``from_pretrained`` (chronos, transformers, mergeplug) loads a float32 model
    whose weights are the rounded values.

    ``packed_only``: for a binarized run, write no float weights (``mergeplug.save_pretrained(...,
    float_weights=False)``): the directory is as small as the packed file, and ``mergeplug.from_pretrained`` (and
    the evaluation harness) load it.
    """
    from mergeplug_lab.train.loop import load_checkpoint_model

    _recipe, model, state = load_checkpoint_model(run_dir)
    meta = json.loads((Path(run_dir) / "run.json").read_text())
    from mergeplug.binary import binarization
    from mergeplug.hub import save_pretrained, write_config

    if storage_dtype not in ("float32", "bfloat16"):
        raise ValueError(f"storage_dtype must be float32 or bfloat16, got {storage_dtype!r}")
    if packed_only and binarization(model) is None:
        raise ValueError(f"--packed-only needs a binarized run (--binary-density), and {run_dir} is not one")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    from mergeplug.core import settings

    if binarization(model) is not None or settings(model) is not None:
        if storage_dtype != "float32":
            raise ValueError("storage_dtype=bfloat16 applies to plain models, not binarized or merged runs")
        # float weights (unless packed_only), the packed binary layers and the merge settings in the config
        save_pretrained(model, out, card=False, float_weights=not packed_only)
    elif storage_dtype == "bfloat16":
        import copy

        copy.deepcopy(model).to(torch.bfloat16).save_pretrained(out)
        config = json.loads((out / "config.json").read_text())
        config["dtype"] = "float32"  # compute in float32: the stored values are bfloat16-rounded float32 weights
        (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        write_config(model, out)
    else:
        model.save_pretrained(out)
        write_config(model, out)
    (out / "training.json").write_text(json.dumps({**meta, "state": state}, indent=2))
    write_card(out, name=name, eval_dirs=eval_dirs)
    return out


def _load_exported(directory: Path, kind: str):
    """The model saved in an exported directory (the inner model for Chronos kinds)."""
    from mergeplug.hub import saved_packed_only

    if saved_packed_only(directory):
        from mergeplug.hub import from_pretrained

        loaded = from_pretrained(directory)
        return getattr(loaded, "inner_model", loaded)
    if kind in CHRONOS_KINDS:
        from chronos import BaseChronosPipeline

        return BaseChronosPipeline.from_pretrained(str(directory)).inner_model
    from mergeplug.eval.models import _load_supervised

    return _load_supervised(directory)


def _stored_bfloat16(directory: Path) -> bool:
    """Are the float weights of ``directory/model.safetensors`` stored in bfloat16?"""
    path = directory / "model.safetensors"
    if not path.exists():
        return False
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return any(f.get_slice(k).get_dtype() == "BF16" for k in f.keys())


def _macs_lines(rows: list[dict[str, Any]]) -> str:
    counted = [r for r in rows if r.get("macs_per_window") and r["setting"] == "unmerged"]
    return "\n".join(
        f"- Forecasting one {r['dataset']} test window ({r['prediction_length']} steps): "
        f"{r['macs_per_window'] / 1e6:.2f} M multiply-accumulates (counted by `mergeplug.cost.profile`)."
        for r in counted
    )


def write_card(
    directory: str | Path, *, name: str | None = None, eval_dirs: list[str] | None = None, notes: str | None = None
) -> Path:
    """(Re)write ``README.md`` of an exported model directory from its ``training.json``, weights and results.

    The card comes from :func:`mergeplug.hub.model_card` (metadata, use, settings, cost) with the training and
    accuracy sections added; ``mergeplug_config.json`` is written if missing, so the directory also loads with
    :func:`mergeplug.from_pretrained`. ``eval_dirs``: ``mergeplug-eval run`` output directories whose rows
    describe this model (for a model trained on one dataset, only that dataset's rows are used). ``notes``:
    markdown kept in ``training.json`` and shown as the card's "Training history" section (e.g. the earlier stages
    of a model trained in several runs); None keeps the notes recorded before.
    """
    from mergeplug.hub import CONFIG_NAME, model_card, write_config

    out = Path(directory)
    meta_path = out / "training.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"{meta_path} not found: {out} is not a directory written by mergeplug-train export")
    meta = json.loads(meta_path.read_text())
    if notes is not None:
        meta["notes"] = notes
        meta_path.write_text(json.dumps(meta, indent=2))
    state, recipe_meta = meta["state"], meta["recipe"]
    kind = recipe_meta["kind"]
    model = _load_exported(out, kind)
    if not (out / CONFIG_NAME).exists():
        write_config(model, out)
    name = name or out.name
    params = sum(p.numel() for p in model.parameters())
    is_chronos = kind in CHRONOS_KINDS
    per_dataset = not is_chronos and not recipe_meta.get("train_on")  # one model per dataset
    try:  # written into the shipped checkpoints (assets/mergeplug_assets/checkpoints): the card loads it by name
        shipped = out.resolve().parent == checkpoint_dir().resolve()
    except AssetsMissingError:  # no mergeplug-assets installed: out cannot be one of its checkpoints
        shipped = False
    location = f'checkpoint_dir("{out.name}")' if shipped else None  # never a local path: a placeholder
    if is_chronos:
        arch = CHRONOS_KINDS[kind]
    else:
        trained = recipe_meta["dataset"] if per_dataset else f"one model for {len(recipe_meta['train_on'])} datasets"
        arch = f"{type(model).__name__} ({trained})"
    seen_rows = meta.get("seen", [])
    seen = "\n".join(f"| {r['dataset']} | {r['series']} | {r['values']:,} | {r['held_out_last']} |" for r in seen_rows)
    rows = _read_results(eval_dirs or [])
    if per_dataset:  # one model per dataset: only its own dataset's rows describe it
        rows = [r for r in rows if r["dataset"] == recipe_meta["dataset"]]
    if rows:
        table, summary = accuracy_table(rows, {r["dataset"] for r in seen_rows})
        summary_md = "\n".join(
            f"- {setting}: " + ", ".join(f"{k} {v:.3f}" for k, v in sorted(vals.items()))
            for setting, vals in summary.items()
        )
    else:
        table, summary_md = "Not evaluated yet.", "-"
    recipe_d = {k: v for k, v in recipe_meta.items() if k not in ("datasets", "kind")}
    training = _TRAINING.format(
        kind=kind,
        recipe=", ".join(f"{k}={v}" for k, v in recipe_d.items()),
        settings=", ".join(  # a local starting point by its folder name (the card is published, paths are not)
            f"{k}={Path(v).name if k == 'init_from' and v else v}" for k, v in meta["settings"].items()
        ),
        step=state["step"],
        samples=state["samples"],
        wall_h=state["wall_seconds"] / 3600,
        cpu_h=state["cpu_seconds"] / 3600,
        threads=f"torch threads: {meta['settings'].get('threads') or 'default'}",
        seen=seen,
    )
    sections = [("Training", training)]
    if meta.get("notes"):
        sections.append(("Training history", meta["notes"]))
    if _macs_lines(rows):
        sections.append(("Compute per forecast", _macs_lines(rows)))
    sections.append(
        ("Accuracy (mergeplug-eval; ratios to seasonal naive, lower is better)",
         _ACCURACY.format(accuracy=table, summary=summary_md))
    )  # fmt: skip
    short = f"mergeplug:{kind}" if per_dataset else f"mergeplug:{name}"
    description = _DESCRIPTION.format(arch=arch, params=params, size_mb=params * 4 / 1e6, short=short)
    if _stored_bfloat16(out):
        description += (f" Its weights are stored rounded to bfloat16 ({params * 2 / 1e6:.2f} MB); `config.json` "
                        "says float32, so every loader builds and runs a float32 model.")  # fmt: skip
    card = model_card(
        out,
        obj=model,
        model_name=name,
        extra_sections=sections,
        tags=[kind, "reference-model"],
        description=description,
        location=location,
        location_import="from mergeplug.eval.models import checkpoint_dir" if shipped else "",
    )
    card.save(out / "README.md")
    return out / "README.md"
