"""Speed benchmark: merged vs unmerged Chronos, in one process, interleaved, medians.

``mergeplug-bench`` builds a Chronos-T5 (or Chronos-Bolt) model from a config with the published dimensions (random
weights: this measures speed, not accuracy), then times ``predict`` end to end and the encoder alone (``embed``) for
the unmerged model and for merge settings that remove a given fraction of encoder tokens by the last layer, with
local (k=1) and global matching. Timing is :func:`mergeplug.timing.paired_speedups` (warm-up, paired interleaved
rounds against the unmerged model, at least ``reps``), so machine noise hits all settings alike; the table reports
each speed-up with its 95% interval, or "no measurable change". It also reports how far the merged outputs move from
the unmerged ones (relative L2 of the embeddings, and of the forecast; with random weights these only show how much
merging perturbs the model, not forecast accuracy). "output rel. diff" is the relative L2 difference of the first
decoding step's logits (Chronos-T5; random-weight models put all probability on one token, so sampled paths would
hide the change) or of the quantile forecasts (Chronos-Bolt).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from tqdm.auto import tqdm

from mergeplug import apply, remove
from mergeplug._cli import checked, number, quiet_third_party
from mergeplug.config import SCHEDULES, schedule_for_reduction
from mergeplug.cost import profile
from mergeplug.models import SIZES, chronos_bolt, chronos_t5
from mergeplug.timing import paired_speedups, speed_cell

__all__ = ["Setting", "run", "main"]

T = TypeVar("T")

DEFAULT_REDUCTIONS = (0.5, 0.75, 0.9)  # less those the model's layers cannot reach (see ``main``)
DEFAULT_CONTEXT = {"t5": 512, "bolt": 2048}
MIN_CONTEXT = {"t5": 16, "bolt": 32}  # shorter contexts leave (almost) nothing to merge; Bolt: two patches of 16


@dataclass
class Setting:
    """One row of the benchmark: ``None`` reduction = the unmerged model."""

    reduction: float | None
    k: int | None = 1
    schedule: str = "constant"
    label: str = ""
    kwargs: dict[str, Any] = field(default_factory=dict)
    predict_speed: dict[str, Any] = field(default_factory=dict)
    embed_speed: dict[str, Any] = field(default_factory=dict)
    tokens_out: int = 0
    embed_macs: int = 0
    predict_macs: int = 0
    embed_rel_err: float = 0.0
    output_diff: float = 0.0


def synthetic_context(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    """(batch, length) series: daily + weekly seasonality, trend, AR noise; deterministic."""
    rng = np.random.default_rng(seed)
    t = np.arange(length)
    rows = []
    for _ in range(batch):
        level, amp, trend = rng.uniform(5, 50), rng.uniform(1, 10), rng.uniform(-0.02, 0.02)
        noise = np.cumsum(rng.normal(0, 0.3, length)) * 0.2 + rng.normal(0, 0.5, length)
        rows.append(
            level + amp * np.sin(2 * np.pi * t / 24) + 0.5 * amp * np.sin(2 * np.pi * t / 168) + trend * t + noise
        )
    return torch.tensor(np.stack(rows), dtype=torch.float32)


def run(
    family: str = "t5",
    size: str = "small",
    batch: int = 8,
    context: int = 512,
    horizon: int = 64,
    samples: int = 20,
    reductions: tuple[float, ...] = (0.5, 0.75, 0.9),
    ks: tuple[int | None, ...] = (1, None),
    schedules: tuple[str, ...] = ("constant",),
    reps: int = 6,
    seed: int = 0,
    progress: bool = True,
    encoder_only: bool = False,
    safe: bool = True,
    min_time: float = 0.2,
    time_budget: float = 120.0,
) -> dict[str, Any]:
    """Run the benchmark and return a JSON-serialisable result (settings with their speed-ups and intervals).

    ``safe``: the forecast-safe defaults (protected recent tokens, token floor, seasonal twins), as
    ``mergeplug.apply`` has them; ``False``: plain merging, so the token reductions are met exactly where they can be.
    """
    if family == "t5":
        pipe = chronos_t5(size, context_length=context, prediction_length=horizon, num_samples=samples, seed=seed)
        layers = pipe.model.model.config.num_layers
        n_tokens = context + 1  # + EOS
    elif family == "bolt":
        pipe = chronos_bolt(size, context_length=context, prediction_length=horizon, seed=seed)
        layers = pipe.model.config.num_layers
        n_tokens = -(-context // pipe.model.chronos_config.input_patch_size) + 1  # left-padded patches + [REG]
    else:
        raise ValueError(f"unknown family {family!r}; choose 't5' or 'bolt'")
    ctx = synthetic_context(batch, context, seed)

    settings = [Setting(None, label="unmerged")]
    for schedule in schedules:
        for k in ks:
            for red in reductions:
                kwargs = schedule_for_reduction(red, layers, schedule)  # type: ignore[arg-type]
                name = "global" if k is None else f"k={k}"
                label = f"{name}, {schedule}, -{red:.0%} tokens"
                settings.append(Setting(red, k=k, schedule=schedule, kwargs=kwargs, label=label))

    def configure(s: Setting) -> None:
        if s.reduction is None:
            remove(pipe)
        else:
            apply(pipe, k=s.k, safe=safe, **s.kwargs)

    def predict() -> torch.Tensor:
        torch.manual_seed(seed)
        if family == "t5":
            return pipe.predict(ctx, prediction_length=horizon, num_samples=samples)
        return pipe.predict(ctx, prediction_length=horizon)

    reference: dict[str, torch.Tensor] = {}
    with torch.inference_mode():
        # warm-up and output differences (not timed)
        for s in tqdm(settings, desc="warm-up", disable=not progress):
            configure(s)
            emb = pipe.embed(ctx)[0]
            predict()
            probe = _output_probe(pipe, family, ctx)
            if s.reduction is None:
                reference = {"emb": emb, "probe": probe}
            else:
                s.embed_rel_err = float((emb - reference["emb"]).norm() / reference["emb"].norm())
                s.output_diff = float((probe - reference["probe"]).norm() / reference["probe"].norm())
            s.tokens_out = _tokens_after_encoder(pipe, family, ctx, n_tokens)
            # multiply-accumulates that really run (merging's own matching included): the MACs ratio
            s.embed_macs = profile(pipe, run=lambda: pipe.embed(ctx), storage=False).macs
            if not encoder_only:
                s.predict_macs = profile(pipe, run=predict, storage=False).macs
        by_label = {s.label: s for s in settings}
        parts = [("embed", lambda: pipe.embed(ctx))] + ([] if encoder_only else [("predict", predict)])
        for part, fn in parts:
            speeds = paired_speedups(
                {s.label: fn for s in settings}, setup=lambda label: configure(by_label[label]), min_time=min_time,
                min_rounds=reps, max_rounds=max(reps, 40), budget_s=time_budget, progress=progress,
                desc=f"timing {part}",
            )  # fmt: skip
            for s in settings:
                setattr(s, f"{part}_speed", speeds[s.label].fields())
    remove(pipe)
    return {
        "family": family,
        "size": size,
        "dims": dict(zip(("d_model", "d_ff", "heads", "layers", "d_kv"), SIZES[size], strict=True)),
        "batch": batch,
        "context": context,
        "horizon": horizon,
        "samples": samples if family == "t5" else None,
        "reps": reps,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "tokens_in": n_tokens,
        "settings": [asdict(s) for s in settings],
    }


def _output_probe(pipe, family: str, ctx: torch.Tensor) -> torch.Tensor:
    """T5: (B, V) logits of the first decoding step; Bolt: (B, Q, H) quantile forecasts."""
    if family == "t5":
        ids, mask, _ = pipe.tokenizer.context_input_transform(ctx)
        start = torch.zeros(ids.shape[0], 1, dtype=torch.long)
        logits = pipe.model.model(input_ids=ids, attention_mask=mask, decoder_input_ids=start).logits
        return logits[:, -1]
    return pipe.predict(ctx)


def _tokens_after_encoder(pipe, family: str, ctx: torch.Tensor, n_tokens: int) -> int:
    if family == "t5":
        ids, mask, _ = pipe.tokenizer.context_input_transform(ctx)
        out = pipe.model.model.encoder(input_ids=ids, attention_mask=mask)
    else:
        embeds = torch.zeros(ctx.shape[0], n_tokens, pipe.model.config.d_model)
        out = pipe.model.encoder(inputs_embeds=embeds)
    return int(out.last_hidden_state.shape[1])


def format_table(result: dict[str, Any]) -> str:
    """Markdown table of times and speed-ups vs the unmerged model with their 95% intervals (predict columns only if
    timed), each speed-up beside its MACs ratio (unmerged multiply-accumulates / these) and the efficiency =
    speed-up / MACs ratio (1.0: merging saves exactly the time its arithmetic saving predicts; shown only for a
    measurable speed-up)."""
    rows = result["settings"]
    timed_predict = bool(rows[0]["predict_speed"])
    head = ["setting", "encoder tokens out"]
    parts = (["predict"] if timed_predict else []) + ["embed"]
    for part in parts:
        head += [f"{part} s", f"{part} speed-up [95% interval]", f"{part} MACs ratio", f"{part} efficiency"]
    head += ["embed rel. diff", "output rel. diff"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, s in enumerate(rows):
        cells = [s["label"], str(s["tokens_out"])]
        for part in parts:
            speed = s[f"{part}_speed"]
            macs, ref = s.get(f"{part}_macs", 0), rows[0].get(f"{part}_macs", 0)
            ratio = ref / macs if macs and ref else float("nan")
            t = speed["time_s"]
            cells += [f"{t:.4f}" if part == "embed" else f"{t:.3f}", "reference" if i == 0 else speed_cell(speed)]
            cells.append(f"{ratio:.2f}x")
            measurable = i > 0 and speed["speed_verdict"] != "no measurable change" and math.isfinite(ratio)
            cells.append(f"{speed['speedup'] / ratio:.2f}" if measurable else "-")
        cells += [f"{s['embed_rel_err']:.3f}", f"{s['output_diff']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _comma_list(item: Callable[[str], T]) -> Callable[[str], tuple[T, ...]]:
    """An argparse ``type`` for comma-separated values, each converted (and checked) by ``item``."""

    def convert(text: str) -> tuple[T, ...]:
        return tuple(item(part) for part in text.split(","))

    return convert


def _k_value(text: str) -> int | None:
    return None if text in ("global", "none", "None") else int(text)


def _at_least(low: int) -> Callable[[str], float]:
    return number(int, low)


_REDUCTIONS = _comma_list(checked(float, lambda v: 0.0 < v < 1.0, "a fraction strictly between 0 and 1"))
_KS = _comma_list(checked(_k_value, lambda v: v is None or v >= 1, "an integer >= 1 or 'global'"))
_SCHEDULE_LIST = _comma_list(checked(str, lambda v: v in SCHEDULES, "one of " + ", ".join(SCHEDULES)))


def _unreachable(reduction: float, layers: int, schedules: tuple[str, ...]) -> str | None:
    """Why ``reduction`` cannot be met in ``layers`` merge steps by one of ``schedules``; ``None`` if it can."""
    for schedule in schedules:
        try:
            schedule_for_reduction(reduction, layers, schedule)  # type: ignore[arg-type]
        except ValueError as exc:
            return f"--schedule {schedule}: {exc}"
    return None


def _write_error(path: Path) -> str | None:
    """Why ``path`` cannot be written (its parent directories are created); ``None`` if it can.

    Opens the file for appending, which leaves an existing file as it is; a file created by the check is removed.
    """
    existed = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a"):
            pass
    except OSError as exc:
        reason = "exists and is not a directory" if isinstance(exc, FileExistsError) else exc.strerror
        return f"--out {path}: cannot write there ({exc.filename}: {reason})"
    if not existed:
        path.unlink()
    return None


def build_parser() -> argparse.ArgumentParser:
    """``mergeplug-bench``'s options; each number and list is checked as it is parsed."""
    p = argparse.ArgumentParser(prog="mergeplug-bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--family", choices=["t5", "bolt"], default="t5")
    p.add_argument("--size", choices=sorted(SIZES), default="small")
    p.add_argument("--batch", type=_at_least(1), default=8)
    p.add_argument(
        "--context",
        type=_at_least(1),
        default=None,
        help=f"default: {DEFAULT_CONTEXT['t5']} (t5), {DEFAULT_CONTEXT['bolt']} (bolt); "
        f"at least {MIN_CONTEXT['t5']} (t5), {MIN_CONTEXT['bolt']} (bolt)",
    )
    p.add_argument("--horizon", type=_at_least(1), default=64)
    p.add_argument("--samples", type=_at_least(1), default=20, help="sample paths per series (t5)")
    p.add_argument(
        "--reductions",
        type=_REDUCTIONS,
        default=None,
        help="comma-separated fractions of encoder tokens removed by the end, each in (0, 1); default: "
        + ",".join(map(str, DEFAULT_REDUCTIONS))
        + ", less those the size's layers cannot reach (at most half of the tokens merge per layer)",
    )
    p.add_argument("--k", type=_KS, default=(1, None), help="comma-separated k values (>= 1); 'global' for k=None")
    p.add_argument(
        "--schedule",
        type=_SCHEDULE_LIST,
        default=("constant",),
        help="comma-separated: " + ", ".join(SCHEDULES) + " (see schedule_for_reduction)",
    )
    p.add_argument(
        "--reps", type=_at_least(1), default=6,
        help="paired timing rounds at least (6 give a 95%% interval; more run until it is within +-5%%)",
    )  # fmt: skip
    p.add_argument(
        "--time-budget", type=number(float, 0), default=120.0, help="seconds of timing per part at most (default 120)"
    )
    p.add_argument("--threads", type=_at_least(1), default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    p.add_argument("--encoder-only", action="store_true", help="time only the encoder (embed), not predict")
    p.add_argument(
        "--plain", action="store_true", help="plain merging (safe=False) instead of the forecast-safe defaults"
    )
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    """CLI entry point (``mergeplug-bench``).

    Every option is checked before any model is built: a bad one is a one-line error (exit status 2).
    """
    quiet_third_party()
    p = build_parser()
    args = p.parse_args(argv)
    layers = SIZES[args.size][3]
    context = args.context or DEFAULT_CONTEXT[args.family]
    if context < MIN_CONTEXT[args.family]:
        p.error(f"--context {context}: --family {args.family} needs at least {MIN_CONTEXT[args.family]} time steps")
    where = f"--size {args.size} ({layers} encoder layers)"
    if args.reductions is None:  # the defaults this size's layers can reach (0.5 always can)
        reductions = tuple(r for r in DEFAULT_REDUCTIONS if _unreachable(r, layers, args.schedule) is None)
        dropped = sorted(set(DEFAULT_REDUCTIONS) - set(reductions))
        if dropped:
            print(
                f"mergeplug-bench: note: {where} cannot remove {', '.join(f'{r:.0%}' for r in dropped)} of the tokens "
                f"with --schedule {','.join(args.schedule)}; default --reductions: {','.join(map(str, reductions))}",
                file=sys.stderr,
            )
    else:
        reductions = args.reductions
        for r in reductions:
            if (why := _unreachable(r, layers, args.schedule)) is not None:
                p.error(f"--reductions {r}: not reachable with {where}: {why}")
    if args.out is not None and (why := _write_error(args.out)) is not None:
        p.error(why)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(
        family=args.family,
        size=args.size,
        batch=args.batch,
        context=context,
        horizon=args.horizon,
        samples=args.samples,
        reductions=reductions,
        ks=args.k,
        schedules=args.schedule,
        reps=args.reps,
        progress=not args.no_progress,
        encoder_only=args.encoder_only,
        safe=not args.plain,
        time_budget=args.time_budget,
    )
    header = (
        f"Chronos-{args.family.upper() if args.family == 't5' else 'Bolt'} '{args.size}' dims {result['dims']}, "
        f"random weights, batch {args.batch}, context {context}, horizon {args.horizon}"
        + (f", {args.samples} samples" if args.family == "t5" else "")
        + f", float32, {result['threads']} threads, torch {result['torch']}, "
        + f"paired interleaved rounds (>= {args.reps}), "
        + ("plain merging (safe=False)" if args.plain else "forecast-safe merging (the defaults)")
    )
    print(header)
    print(format_table(result))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"header": header, **result}, indent=1))
        print(f"wrote {args.out}")
    times = [p["time_s"] for s in result["settings"] for p in (s["predict_speed"], s["embed_speed"]) if p]
    return 0 if all(math.isfinite(x) for x in times) else 1


if __name__ == "__main__":
    sys.exit(main())
