"""Resumable CPU training loop shared by all recipes.

A run directory holds::

    run.json             recipe + optimisation settings (a resumed run must match them)
    log.jsonl            one line per log interval: step, loss, lr, samples/s, wall and CPU hours
    checkpoint/          the latest model (save_pretrained: config.json + model.safetensors)
    checkpoint/trainer.pt  optimizer, scheduler, step, elapsed wall and CPU seconds

Checkpoints are written to a temporary directory and renamed, so an interrupted save never corrupts
the previous one. Batches depend only on ``(seed, step)`` and dropout is reseeded per step, so a resumed
run continues exactly as an uninterrupted one would.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import resource
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from mergeplug.store import load_torch_state
from mergeplug_lab.train import supervised as _supervised  # noqa: F401  (registers the supervised recipes)
from mergeplug_lab.train.recipes import RECIPES, Recipe

__all__ = ["TrainSettings", "train", "load_checkpoint_model"]


@dataclass
class TrainSettings:
    """Optimisation settings; ``steps`` may be raised on resume to train longer."""

    steps: int = 10000
    batch_size: int = 64
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup: int = 300
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0
    bf16: bool = True
    threads: int | None = None
    checkpoint_every: int = 250
    log_every: int = 25
    init_from: str = ""
    binary_density: float = 0.0
    binary_exclude: str = ""
    merge: str = ""


SCORES_NAME = "binary_scores.safetensors"  # a binary fine-tuning checkpoint's learned scores
# fields of TrainSettings that define the model (a resumed run must keep them)
_MODEL_FIELDS = ("init_from", "binary_density", "binary_exclude", "merge")


def merge_choices(text: str, model: torch.nn.Module) -> list[dict[str, Any] | None]:
    """The merge settings of a merge-aware run: ``mergeplug.apply`` keyword arguments per ``;``-separated setting
    (``none``: unmerged); empty for a run without merging. One setting: the model trains (and is exported) with it
    on. Several: every step draws one of them (a function of the seed and the step), so the model learns to forecast
    under all of them and unmerged; it is exported without merging."""
    if not text.strip():
        return []
    from mergeplug.core import encoder_layers
    from mergeplug.eval.run import parse_merge

    try:
        num_layers: int | None = encoder_layers(model)
    except ValueError:  # parse_merge then refuses reduction=..., naming the missing layer count
        num_layers = None
    out: list[dict[str, Any] | None] = []
    for part in (p.strip() for p in text.split(";")):
        if part.lower() == "none":
            out.append(None)
            continue
        setting = parse_merge(part, num_layers)
        if setting.sampling or setting.kwargs.get("period") == "season":
            raise ValueError(f"merge={part!r}: training takes merge settings only (period=auto, not season)")
        out.append(setting.kwargs)
    if out == [None]:
        raise ValueError("merge='none' alone trains without merging: drop --merge")
    return out


def _prepare_model(model: torch.nn.Module, settings: TrainSettings, ckpt: Path | None) -> torch.nn.Module:
    """Fine-tuning set-up: start from ``init_from`` (an exported model directory) and, with ``binary_density``,
    binarize every ``nn.Linear`` except those matching ``binary_exclude`` (:func:`mergeplug.binarize`, signs and
    initial mask from the weights) and train only the binary scores and the norm layers. A checkpoint's scores
    (saved with the float weights) are loaded back."""
    if settings.init_from and ckpt is None:
        model = type(model).from_pretrained(settings.init_from)
    choices = merge_choices(settings.merge, model)
    if len(choices) == 1 and choices[0] is not None:  # merge-aware fine-tuning with one setting (as ToMe does)
        from mergeplug.core import apply

        apply(model, **choices[0])
    if settings.binary_density <= 0:
        return model
    from safetensors.torch import load_file

    from mergeplug.binary import binarize, trainable_binary

    binarize(model, density=settings.binary_density, init="weights", seed=settings.seed,
             exclude=settings.binary_exclude or None)  # fmt: skip
    trainable_binary(model, train_norms=True)
    if ckpt is not None:
        if not (ckpt / SCORES_NAME).exists():
            raise ValueError(f"{ckpt} holds no {SCORES_NAME}: it was not written by a binary fine-tuning run")
        missing, unexpected = model.load_state_dict(load_file(str(ckpt / SCORES_NAME)), strict=False)
        if unexpected or any(k.endswith(".scores") for k in missing):
            raise ValueError(f"{ckpt}/{SCORES_NAME} does not match the binarized model ({(unexpected or missing)[:3]})")
    return model


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines of steps after ``step`` (written after the checkpoint a resumed run restarts from: they are
    trained again, and would otherwise appear twice) and any line cut short by a kill."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    path.write_text("".join(x + "\n" for x in keep))


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _lr_factor(step: int, settings: TrainSettings) -> float:
    if step < settings.warmup:
        return (step + 1) / settings.warmup
    progress = min(1.0, (step - settings.warmup) / max(1, settings.steps - settings.warmup))
    return settings.min_lr_ratio + (1 - settings.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _recipe_dict(recipe: Recipe) -> dict[str, Any]:
    d = dataclasses.asdict(recipe)
    d["mix"] = list(d["mix"])
    return d


@contextlib.contextmanager
def _hf_bars(enabled: bool):
    """Hugging Face progress bars (``save_pretrained``'s "Writing model shards") on or off inside the block, then as
    they were."""
    import transformers.utils.logging as hf_logging

    before = hf_logging.is_progress_bar_enabled()
    (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()
    try:
        yield
    finally:
        (hf_logging.enable_progress_bar if before else hf_logging.disable_progress_bar)()


def _save(out: Path, model: torch.nn.Module, opt, sched, state: dict[str, Any]) -> None:
    tmp = out / "checkpoint.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    from mergeplug.binary import binarization, suspended

    if binarization(model) is not None:  # float weights as the model class saves them, the scores beside them
        from safetensors.torch import save_file

        with suspended(model):
            model.save_pretrained(tmp)
        scores = {n: p.detach().contiguous() for n, p in model.named_parameters() if n.endswith(".scores")}
        save_file(scores, str(tmp / SCORES_NAME))
    else:
        from mergeplug.core import unmerged

        with unmerged(model):  # a merge-aware run saves the model's own classes
            model.save_pretrained(tmp)
    torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), **state}, tmp / "trainer.pt")
    final = out / "checkpoint"
    old = out / "checkpoint.old"
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        shutil.rmtree(old)


def load_checkpoint_model(run_dir: str | Path) -> tuple[Recipe, torch.nn.Module, dict[str, Any]]:
    """Recipe, model (eval mode) and trainer state of a run directory's latest checkpoint."""
    run_dir = Path(run_dir)
    meta = json.loads((run_dir / "run.json").read_text())
    recipe = RECIPES[meta["recipe"]["kind"]](**{**meta["recipe"], "mix": tuple(meta["recipe"]["mix"])})
    ckpt = run_dir / "checkpoint"
    if not ckpt.exists():
        raise FileNotFoundError(f"{run_dir} has no checkpoint yet (training saves every checkpoint_every steps)")
    settings = TrainSettings(**{k: v for k, v in meta["settings"].items() if k in TrainSettings.__dataclass_fields__})
    model = _prepare_model(type(recipe.build()).from_pretrained(ckpt), settings, ckpt).eval()
    state = load_torch_state(ckpt / "trainer.pt")
    state = {k: v for k, v in state.items() if k not in ("optimizer", "scheduler")}
    return recipe, model, state


def train(
    recipe: Recipe,
    settings: TrainSettings,
    out: str | Path,
    *,
    progress: bool = True,
    stop_at: int | None = None,
    time_limit: float | None = None,
) -> dict[str, Any]:
    """Train ``recipe`` into run directory ``out``, resuming from its checkpoint if there is one.

    ``stop_at`` (a step) and ``time_limit`` (seconds of this call) end the call early with a checkpoint; a
    later call continues the same schedule (``settings.steps`` sets the learning-rate schedule).
    Returns the trainer state (step, wall and CPU seconds, samples, last loss).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    meta_path = out / "run.json"
    meta = {"recipe": _recipe_dict(recipe), "settings": dataclasses.asdict(settings)}
    if meta_path.exists():
        old = json.loads(meta_path.read_text())
        # a field added to the recipe after the run started holds its default there
        defaults = _recipe_dict(type(recipe)())
        old["recipe"] = {**{k: v for k, v in defaults.items() if k not in old["recipe"]}, **old["recipe"]}
        keys = ("seed", *_MODEL_FIELDS)
        if old["recipe"] != meta["recipe"] or any(old["settings"].get(k, meta["settings"][k]) != meta["settings"][k]
                                                  for k in keys):  # fmt: skip
            raise ValueError(
                f"{out} holds a run with different recipe settings, seed or fine-tuning set-up; use a new --out "
                "directory (only --steps and logging/checkpoint intervals may change on resume)"
            )
    meta_path.write_text(json.dumps(meta, indent=2))
    if settings.threads:
        torch.set_num_threads(settings.threads)

    sampler = recipe.sampler(settings.seed, cache_dir=out / "cache", progress=progress)
    meta["seen"] = recipe.seen()
    meta_path.write_text(json.dumps(meta, indent=2))

    torch.manual_seed(settings.seed)
    model = recipe.build()
    ckpt = out / "checkpoint"
    state: dict[str, Any] = {"step": 0, "wall_seconds": 0.0, "cpu_seconds": 0.0, "samples": 0}
    if ckpt.exists():
        model = type(model).from_pretrained(ckpt)
    model = _prepare_model(model, settings, ckpt if ckpt.exists() else None)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=settings.lr,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, settings))
    if ckpt.exists():
        saved = load_torch_state(ckpt / "trainer.pt")
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        state = {k: v for k, v in saved.items() if k not in ("optimizer", "scheduler")}

    choices = merge_choices(settings.merge, model)
    start_step = state["step"]
    _truncate_log(out / "log.jsonl", start_step)
    wall0, cpu0 = time.time() - state["wall_seconds"], _cpu_seconds() - state["cpu_seconds"]
    losses: list[float] = []
    t_log, n_log = time.time(), 0
    end = min(settings.steps, stop_at) if stop_at is not None else settings.steps
    deadline = time.time() + time_limit if time_limit is not None else math.inf
    import transformers.utils.logging as hf_logging

    hf_bars_before = hf_logging.is_progress_bar_enabled()
    bar = tqdm(total=settings.steps, initial=start_step, desc=f"train {recipe.kind}", disable=not progress)
    with (out / "log.jsonl").open("a") as log:
        for step in range(start_step, end):
            batch = sampler.batch(step, settings.batch_size)
            if len(choices) > 1:  # one of the run's merge settings (or none) for this step
                from mergeplug.core import apply, remove

                pick = choices[int(np.random.default_rng([settings.seed, step, 1]).integers(len(choices)))]
                remove(model)
                if pick is not None:
                    apply(model, **pick)
            torch.manual_seed(settings.seed * 1_000_003 + step)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=settings.bf16):
                loss = recipe.loss(model, batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at step {step}; lower --lr or check the data")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
            losses.append(loss.item())
            n_log += len(batch.context)
            state.update(
                step=step + 1,
                wall_seconds=time.time() - wall0,
                cpu_seconds=_cpu_seconds() - cpu0,
                samples=state["samples"] + len(batch.context),
                loss=losses[-1],
            )
            bar.update(1)
            last = step + 1 == end or time.time() >= deadline
            if (step + 1) % settings.log_every == 0 or last:
                now = time.time()
                row = {
                    "step": step + 1,
                    "loss": sum(losses) / len(losses),
                    "lr": sched.get_last_lr()[0],
                    "samples_per_s": n_log / max(now - t_log, 1e-9),
                    "wall_hours": state["wall_seconds"] / 3600,
                    "cpu_hours": state["cpu_seconds"] / 3600,
                }
                log.write(json.dumps(row) + "\n")
                log.flush()
                bar.set_postfix(loss=f"{row['loss']:.4f}", sps=f"{row['samples_per_s']:.0f}")
                losses, t_log, n_log = [], now, 0
            if (step + 1) % settings.checkpoint_every == 0 or last:
                with _hf_bars(progress and hf_bars_before):
                    _save(out, model, opt, sched, state)
            if last:
                break
    bar.close()
    if len(choices) > 1:
        from mergeplug.core import remove

        remove(model)
    return state
