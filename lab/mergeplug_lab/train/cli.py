"""``mergeplug-train``: train reference models on CPU, resumably, and export them with a model card.

Examples::

    mergeplug-train bolt --out runs/bolt --steps 20000            # start or resume
    mergeplug-train chronos-t5 --out runs/t5 --steps 20000
    mergeplug-train status runs/bolt
    mergeplug-train export runs/bolt --out assets/mergeplug_assets/checkpoints/bolt-ref --eval-dir results/bolt
    mergeplug-train card assets/mergeplug_assets/checkpoints/bolt-ref --eval-dir results/bolt-new
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path

from mergeplug._cli import number, quiet_third_party
from mergeplug_lab.train.loop import TrainSettings, train
from mergeplug_lab.train.recipes import RECIPES

__all__ = ["main", "build_parser"]

# Allowed ranges of the numeric options, (low, high, low included, high included); None: unbounded. A list option
# (--lags, --mix) is checked value by value. Fields not listed here take any value of their type.
_RANGES: dict[str, tuple[float | None, float | None, bool, bool]] = {
    # optimisation (TrainSettings) and the call's own limits
    "steps": (1, None, True, False),
    "batch_size": (1, None, True, False),
    "lr": (0, None, False, False),
    "min_lr_ratio": (0, 1, True, True),
    "warmup": (0, None, True, False),
    "weight_decay": (0, None, True, False),
    "grad_clip": (0, None, False, False),
    "seed": (0, None, True, False),
    "threads": (1, None, True, False),
    "checkpoint_every": (1, None, True, False),
    "log_every": (1, None, True, False),
    "binary_density": (0, 1, True, True),
    "stop_at": (1, None, True, False),
    "time_limit": (0, None, False, False),
    # recipes
    "d_model": (1, None, True, False),
    "d_ff": (1, None, True, False),
    "heads": (1, None, True, False),
    "d_kv": (1, None, True, False),
    "encoder_layers": (1, None, True, False),
    "decoder_layers": (0, None, True, False),
    "dropout": (0, 1, True, False),
    "attention_dropout": (0, 1, True, False),
    "context_length": (1, None, True, False),
    "dataset_weights": (0, None, True, False),
    "horizon": (0, None, True, False),  # supervised recipes: 0 = the dataset's prediction length
    "synthetic": (0, None, True, False),
    "mix": (0, None, True, False),
    "min_context": (1, None, True, False),
    "curriculum_steps": (0, None, True, False),
    "patch_size": (1, None, True, False),
    "n_tokens": (3, None, True, False),  # two special tokens (PAD, EOS) and at least one bin
    "num_samples": (1, None, True, False),
    "patch_length": (1, None, True, False),
    "patch_stride": (1, None, True, False),
    "lags": (1, None, True, False),
    "group_fraction": (0, 1, True, True),
    "max_group": (2, None, True, False),
}


def _number(kind: type[int] | type[float], name: str) -> Callable[[str], float]:
    """An argparse ``type`` converting to ``kind`` (int or float) and checking ``_RANGES[name]``, if any: out of range
    (or NaN) is argparse's one-line error naming the option, exit status 2, before any work."""
    low, high, low_in, high_in = _RANGES.get(name, (None, None, True, True))
    return number(kind, low, high, low_inclusive=low_in, high_inclusive=high_in)


def _value_type(name: str, example: object) -> Callable[[str], object]:
    """The argparse ``type`` of option ``name`` whose default (or a list default's item) is ``example``."""
    if example is None or isinstance(example, (int, float)):  # None defaults (threads) are ints
        return _number(int if example is None or isinstance(example, int) else float, name)
    return type(example)


def _add_fields(p: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    for f in dataclasses.fields(cls):
        if f.name in skip or f.name.startswith("_"):
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        flag = "--" + f.name.replace("_", "-")
        if isinstance(default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        elif isinstance(default, (list, tuple)):
            item = default[0] if default else (0.0 if "float" in str(f.type) else "")  # an empty list: its type
            p.add_argument(flag, nargs="+", type=_value_type(f.name, item), default=None)
        else:  # int, float or str
            p.add_argument(flag, type=_value_type(f.name, default), default=None)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mergeplug-train", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, cls in RECIPES.items():
        p = sub.add_parser(name, help=f"train the {name} reference model (resumes from --out if it holds a run)")
        p.add_argument("--out", required=True, help="run directory (checkpoint, log.jsonl, run.json)")
        p.add_argument("--no-progress", action="store_true")
        p.add_argument("--stop-at", type=_number(int, "stop_at"), help="stop (with a checkpoint) at this step")
        p.add_argument(
            "--time-limit", type=_number(float, "time_limit"), help="stop (with a checkpoint) after N minutes"
        )
        _add_fields(p, cls, skip=("kind",))
        _add_fields(p, TrainSettings)
    p = sub.add_parser("status", help="print the last log lines of a run")
    p.add_argument("run")
    p = sub.add_parser("export", help="write the latest checkpoint as a loadable model with a model card")
    p.add_argument("run")
    p.add_argument("--out", required=True)
    p.add_argument("--name", default=None, help="model name in the card (default: the output directory's name)")
    p.add_argument("--eval-dir", action="append", default=[], help="mergeplug-eval results to put in the card")
    p.add_argument(
        "--packed-only", action="store_true", help="binarized runs: config.json + the packed file, no float weights"
    )
    p.add_argument(
        "--storage-dtype", choices=["float32", "bfloat16"], default="float32",
        help="bfloat16: weights stored rounded to bfloat16 (half the size), loaded and run as float32",
    )  # fmt: skip
    p = sub.add_parser("card", help="re-render the model card of an exported directory (e.g. with new results)")
    p.add_argument("directory")
    p.add_argument("--name", default=None, help="model name in the card (default: the directory's name)")
    p.add_argument("--eval-dir", action="append", default=[], help="mergeplug-eval results to put in the card")
    p.add_argument("--notes", default=None, help="a markdown file: the card's training history (kept for re-renders)")
    return parser


def _pick(args: argparse.Namespace, cls) -> dict:
    names = {f.name for f in dataclasses.fields(cls)}
    out = {}
    for k, v in vars(args).items():
        if k in names and v is not None:
            out[k] = tuple(v) if k == "mix" else v
    return out


def main(argv: list[str] | None = None) -> int:
    """CLI entry point (``mergeplug-train``); bad options are one-line errors with exit status 2, before any work."""
    quiet_third_party()
    args = build_parser().parse_args(argv)
    try:
        return _main(args)
    except (KeyError, ValueError, FileNotFoundError) as exc:
        print(f"mergeplug-train: error: {exc.args[0] if isinstance(exc, KeyError) else exc}", file=sys.stderr)
        return 2


def _main(args: argparse.Namespace) -> int:
    if args.command in RECIPES:
        cls = RECIPES[args.command]
        recipe = cls(**_pick(args, cls))
        settings = TrainSettings(**_pick(args, TrainSettings))
        limit = args.time_limit * 60 if args.time_limit is not None else None
        state = train(recipe, settings, args.out, progress=not args.no_progress, stop_at=args.stop_at, time_limit=limit)
        print(json.dumps(state))
        return 0
    if args.command == "status":
        log = Path(args.run) / "log.jsonl"
        if not log.exists():
            print(f"{args.run}: no log yet", file=sys.stderr)
            return 1
        for line in log.read_text().splitlines()[-5:]:
            print(line)
        return 0
    from mergeplug_lab.train.export import export, write_card

    if args.command == "card":
        notes = Path(args.notes).read_text() if args.notes else None
        print(write_card(args.directory, name=args.name, eval_dirs=args.eval_dir, notes=notes))
        return 0
    try:
        path = export(args.run, args.out, name=args.name, eval_dirs=args.eval_dir, packed_only=args.packed_only,
                      storage_dtype=args.storage_dtype)  # fmt: skip
    except ValueError as exc:
        print(f"mergeplug-train: error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
