"""``mergeplug-eval``: list datasets, run evaluations, regenerate reports."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from .._cli import quiet_third_party
from .data import OfflineError, list_datasets
from .report import write_report
from .run import MERGE_KEYS, run

QUICK = ["m3_monthly", "tourism_quarterly", "electricity_hourly"]


TAGS = ("offline", "competition", "long", "online")


def _expand(items: list[str]) -> list[str]:
    """Dataset names, with a tag (offline, competition, long, online) standing for all its datasets."""
    out: list[str] = []
    for item in items:
        out += [s.name for s in list_datasets(item)] if item in TAGS else [item]
    return out


def _fail(exc: Exception) -> int:
    """Print a clear one-line error and return the CLI's error status."""
    print(f"mergeplug-eval: error: {exc.args[0] if isinstance(exc, KeyError) else exc}", file=sys.stderr)
    return 2


def build_parser() -> argparse.ArgumentParser:
    """``mergeplug-eval``'s verbs and their options."""
    p = argparse.ArgumentParser(prog="mergeplug-eval", description="Speed-up and accuracy change of token merging.")
    sub = p.add_subparsers(dest="command", required=True)

    ls = sub.add_parser("list-datasets", help="registered datasets")
    ls.add_argument("--tag", choices=["offline", "online", "competition", "long"], default=None)

    r = sub.add_parser("run", help="evaluate seasonal naive, the unmerged model and merge settings")
    r.add_argument("--model", required=True, help="local path, hub id, random:chronos-t5-<size>, or seasonal-naive")
    r.add_argument(
        "--datasets",
        nargs="+",
        default=QUICK,
        help=f"registry names, file:PATH, or a tag (offline, competition, long) for all its datasets (default {QUICK})",
    )
    r.add_argument(
        "--merge",
        action="append",
        default=[],
        help=f"a merge setting, e.g. 'k=1,ratio=0.2' or 'k=1,reduction=0.75,schedule=front' (repeatable); "
        f"keys: {', '.join(MERGE_KEYS)}; Chronos-T5: 'sampling=fast' (fast path, same samples as stock) or "
        "'sampling=fast-topk', alone or with a merge",
    )
    r.add_argument(
        "--prediction-length", type=int, default=None,
        help="forecast horizon (needed for file:PATH; replaces a registered dataset's horizon)",
    )  # fmt: skip
    r.add_argument(
        "--windows", type=int, default=None,
        help="rolling test windows per series, cut from the end (default: the dataset's; 1 for file:PATH)",
    )  # fmt: skip
    r.add_argument(
        "--freq", default=None,
        help="frequency of a file:PATH dataset, a pandas alias (h, D, B, W-SUN, MS, ME, QS-OCT, YS); default: inferred",
    )  # fmt: skip
    r.add_argument(
        "--context", type=int, default=None,
        help="time steps of history the model sees (the last N of each test input; default: all, up to the model's "
        "context_length); scores use the whole history, so runs at several contexts compare",
    )  # fmt: skip
    r.add_argument("--out", default="results/eval", help="results directory (rerun to resume)")
    r.add_argument(
        "--reps", type=int, default=6,
        help="paired timing rounds at least (6 is the fewest that give a 95%% interval); more run until the interval "
        "is within +-5%% or --time-budget is spent",
    )  # fmt: skip
    r.add_argument("--min-time", type=float, default=0.2, help="seconds of work per timed measurement (default 0.2)")
    r.add_argument("--time-budget", type=float, default=60.0, help="seconds of timing per dataset at most (default 60)")
    r.add_argument("--batch-size", type=int, default=32)
    r.add_argument("--timing-windows", type=int, default=64, help="windows per timing repetition")
    r.add_argument(
        "--timed-datasets", type=int, default=None,
        help="time only the first N datasets (default: all); the others get accuracy, MACs and token counts",
    )  # fmt: skip
    r.add_argument("--max-series", type=int, default=None, help="first N series of each dataset (quick runs)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--device", default="cpu")
    r.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    r.add_argument("--no-progress", action="store_true")

    pr = sub.add_parser("profile", help="parameters, storage, MACs by component; MACs ratio vs measured speed-up")
    pr.add_argument("--model", required=True, help="as for run (random:chronos-t5-small, mergeplug:patchtst, a path)")
    pr.add_argument("--dataset", default=None, help="use its first --batch test windows (default: synthetic series)")
    pr.add_argument("--batch", type=int, default=8, help="windows forecast per call")
    pr.add_argument("--context", type=int, default=512, help="length of the synthetic series")
    pr.add_argument("--horizon", type=int, default=None, help="forecast length (default: the dataset's, or 64)")
    pr.add_argument("--merge", action="append", default=[], help="merge setting to compare (repeatable)")
    pr.add_argument("--reps", type=int, default=3, help="interleaved timing repetitions (median)")
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("--json", default=None, help="also write the report and comparison as JSON")

    pc = sub.add_parser("precheck", help="spectral statistics of data and the expected accuracy change of merging")
    pc.add_argument("--datasets", nargs="+", required=True, help="registry names, file:PATH, or a tag")
    pc.add_argument("--prediction-length", type=int, default=None, help="horizon for file:PATH datasets")
    pc.add_argument(
        "--model", default=None,
        help="the model merging would run on (as for run): picks its family's calibration, context and stride",
    )  # fmt: skip
    pc.add_argument("--context", type=int, default=None, help="model context (default: the model's or calibration's)")
    pc.add_argument("--stride", type=int, default=None, help="time steps per token (1 Chronos-T5, 16 Bolt)")
    pc.add_argument("--tolerance", type=float, default=0.01, help="allowed relative WQL change (0.01 = 1%%)")
    pc.add_argument("--calibration", default=None, help="a precheck_calibration.json (default: the shipped one)")
    pc.add_argument("--out", default=None, help="write precheck.md (and .json) into this results directory")

    pv = sub.add_parser("precheck-validate", help="measure merging on datasets + variants, score the statistics")
    pv.add_argument("--out", default="benchmarks/precheck")
    pv.add_argument("--model", default="mergeplug:patchtst_global")
    pv.add_argument("--context", type=int, default=512, help="the model's context length (Bolt: 1024)")
    pv.add_argument("--stride", type=int, default=8, help="time steps per token (PatchTST 8, Bolt 16, Chronos-T5 1)")
    pv.add_argument(
        "--merging", choices=["plain", "safe"], default="safe",
        help="measure the forecast-safe defaults (the shipped calibrations; default) or plain merging (safe=false)",
    )  # fmt: skip
    pv.add_argument("--no-progress", action="store_true")

    pc = sub.add_parser("precheck-confirm", help="check a finished calibration on dataset variants it never saw")
    pc.add_argument("--out", default="benchmarks/precheck-confirm")
    pc.add_argument("--calibration", default=None, help="default: the shipped calibration")
    pc.add_argument("--model", default=None, help="default: the calibration's model")
    pc.add_argument("--variants", nargs="+", default=None, help="e.g. noise0.2 smooth12 aggregate3 (the default)")
    pc.add_argument("--no-progress", action="store_true")

    cd = sub.add_parser("card", help="write the model card (README.md) of a mergeplug.save_pretrained directory")
    cd.add_argument("directory")
    cd.add_argument("--results", default=None, help="a `mergeplug-eval run` output directory for the measured tables")
    cd.add_argument("--license", default="apache-2.0")
    cd.add_argument("--name", default=None, help="card title (default: the directory's name)")

    tu = sub.add_parser("tune", help="the fastest merge setting within a WQL tolerance, backtested on the data")
    tu.add_argument("--model", required=True)
    tu.add_argument("--datasets", nargs="+", required=True, help="registry names or file:PATH")
    tu.add_argument("--merge", action="append", default=[], help="candidate settings (default: k x reduction grid)")
    tu.add_argument("--prediction-length", type=int, default=None, help="horizon (needed for file:PATH)")
    tu.add_argument("--windows", type=int, default=4, help="backtest windows per series")
    tu.add_argument("--tolerance", type=float, default=0.01, help="allowed relative WQL change (0.01 = 1%%)")
    tu.add_argument("--reps", type=int, default=6, help="paired timing rounds at least (6 give a 95%% interval)")
    tu.add_argument(
        "--margin", type=float, default=0.05,
        help="a setting qualifies only if its speed-up interval is above 1 + margin (default 0.05)",
    )  # fmt: skip
    tu.add_argument("--time-budget", type=float, default=60.0, help="seconds of timing per dataset at most")
    tu.add_argument("--out", default="results/tune", help="results directory (rerun to resume)")
    tu.add_argument(
        "--check-test", action="store_true",
        help="tune on the data before the dataset's test windows, then score the choice on the test windows",
    )  # fmt: skip
    tu.add_argument("--no-progress", action="store_true")

    fr = sub.add_parser("frontier", help="speed / accuracy frontier at several contexts, speed also at other dims")
    fr.add_argument("--model", required=True, help="as for run (a Chronos-2 model for --dims)")
    fr.add_argument("--datasets", nargs="+", required=True, help="registry names, file:PATH, or a tag")
    fr.add_argument("--contexts", nargs="+", type=int, required=True, help="time steps of history, e.g. 512 2048")
    fr.add_argument("--merge", action="append", default=[], help="settings (default: k x reduction x schedule x safe)")
    fr.add_argument(
        "--dims", default="base", choices=["none", "test", "tiny", "mini", "small", "base"],
        help="also time every setting on a random-weight Chronos-2 of these dimensions (default base; none: skip)",
    )  # fmt: skip
    fr.add_argument("--dims-batch", type=int, default=4, help="series per timed forecast at --dims")
    fr.add_argument("--reps", type=int, default=6, help="paired timing rounds at least")
    fr.add_argument("--time-budget", type=float, default=30.0, help="seconds of timing per dataset on the model")
    fr.add_argument(
        "--timed-datasets", type=int, default=1, help="datasets the model's own speed is timed on (default 1)"
    )
    fr.add_argument("--dims-budget", type=float, default=300.0, help="seconds of timing per context at --dims")
    fr.add_argument(
        "--validation", action="store_true",
        help="score the validation windows (just before the test windows) instead, to choose settings",
    )  # fmt: skip
    fr.add_argument("--out", default="results/frontier", help="results directory (rerun to resume)")
    fr.add_argument("--no-progress", action="store_true")

    rep = sub.add_parser("report", help="regenerate report.md and the plot of a results directory")
    rep.add_argument("directory")

    return p


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: run one verb; bad input is a one-line error (exit status 2)."""
    quiet_third_party()
    args = build_parser().parse_args(argv)
    try:
        return VERBS[args.command](args)
    except (KeyError, ValueError, OfflineError, OSError) as exc:
        return _fail(exc)


def list_datasets_verb(args: argparse.Namespace) -> int:
    """``list-datasets``: the registered datasets, one line each."""
    for spec in list_datasets(args.tag):
        print(f"{spec.name:32s} H={spec.prediction_length:<3d} windows={spec.windows:<3d} {spec.description} "
              f"[{spec.source}]")  # fmt: skip
    return 0


def run_verb(args: argparse.Namespace) -> int:
    """``run``: evaluate, then print the report (the main process of a multi-process run)."""
    run(
        args.model, _expand(args.datasets), args.merge, out=args.out, reps=args.reps, batch_size=args.batch_size,
        min_time=args.min_time, time_budget=args.time_budget,
        timing_windows=args.timing_windows, max_series=args.max_series, seed=args.seed, device=args.device,
        dtype=args.dtype, progress=not args.no_progress, prediction_length=args.prediction_length,
        windows=args.windows, freq=args.freq, context=args.context, timed_datasets=args.timed_datasets,
    )  # fmt: skip
    from accelerate import PartialState

    if not PartialState().is_main_process:
        return 0
    print(write_report(args.out))
    print(f"\nresults: {args.out}/results.jsonl, {args.out}/report.md, {args.out}/speed_vs_accuracy.png")
    return 0


def report_verb(args: argparse.Namespace) -> int:
    """``report``: regenerate report.md and the plot of a results directory."""
    print(write_report(args.directory))
    return 0


def tune_verb(args: argparse.Namespace) -> int:
    """``tune``: the fastest merge setting within a WQL tolerance, per dataset."""
    from .tune_cli import test_table, tune_dataset

    for name in _expand(args.datasets):
        result, rows = tune_dataset(
            args.model, name, merges=args.merge, prediction_length=args.prediction_length, windows=args.windows,
            tolerance=args.tolerance, out=args.out, check_test=args.check_test, reps=args.reps,
            progress=not args.no_progress, margin=args.margin, time_budget=args.time_budget,
        )  # fmt: skip
        print(f"### {name}\n\n{result}")
        if rows is not None:
            print(f"\nOn the test windows:\n\n{test_table(rows)}")
    return 0


def card_verb(args: argparse.Namespace) -> int:
    """``card``: write the model card (README.md) of a save_pretrained directory."""
    from ..hub import model_card

    card = model_card(args.directory, results=args.results, license=args.license, model_name=args.name)
    path = f"{args.directory.rstrip('/')}/README.md"
    card.save(path)
    print(path)
    return 0


def profile_verb(args: argparse.Namespace) -> int:
    """``profile``: parameters, storage, MACs by component; MACs ratio vs measured speed-up."""
    from .profile_cli import profile_model

    print(
        profile_model(
            args.model, dataset=args.dataset, batch=args.batch, context=args.context, horizon=args.horizon,
            merges=args.merge, reps=args.reps, seed=args.seed, out=args.json,
        )
    )  # fmt: skip
    return 0


def precheck_confirm_verb(args: argparse.Namespace) -> int:
    """``precheck-confirm``: check a finished calibration on dataset variants it never saw."""
    from .precheck_study import FRESH_VARIANTS, confirm, parse_variant

    variants = [parse_variant(v) for v in args.variants] if args.variants else FRESH_VARIANTS
    confirm(args.out, calibration=args.calibration, model=args.model, variants=variants,
            progress=not args.no_progress)  # fmt: skip
    print((Path(args.out) / "report.md").read_text())
    return 0


def precheck_validate_verb(args: argparse.Namespace) -> int:
    """``precheck-validate``: measure merging on datasets + variants, score the statistics."""
    from .precheck_study import validate

    cal = validate(
        args.out, model=args.model, context=args.context, stride=args.stride, progress=not args.no_progress,
        merging=args.merging,
    )  # fmt: skip
    print((Path(args.out) / "report.md").read_text())
    print(f"calibration: {args.out}/precheck_calibration.json (statistic {cal['statistic']})")
    return 0


def precheck_verb(args: argparse.Namespace) -> int:
    """``precheck``: spectral statistics of data and the expected accuracy change of merging."""
    from ..precheck import precheck
    from .data import load_dataset

    texts, saved = [], {}
    target = None
    if args.model:
        from .models import load_model

        fc = load_model(args.model)
        target = fc.target
        if target is None or not fc.mergeable():
            raise ValueError(f"{args.model}: token merging does not apply to it, so there is nothing to pre-check")
    for name in _expand(args.datasets):
        ds = load_dataset(name, prediction_length=args.prediction_length)
        start = time.perf_counter()
        res = precheck(
            ds, model=target, context=args.context, stride=args.stride, tolerance=args.tolerance,
            calibration=args.calibration,
        )  # fmt: skip
        took = time.perf_counter() - start
        texts.append(f"### {name} ({len(ds)} series, {took * 1000:.0f} ms)\n\n{res.to_markdown()}")
        saved[name] = {"stats": res.stats, "predictions": res.predictions, "recommended": res.recommended}
    text = "\n\n".join(texts)
    print(text)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "precheck.md").write_text(text + "\n")
        (Path(args.out) / "precheck.json").write_text(json.dumps(saved, indent=1))
    return 0


#: verb name -> function (each takes the parsed arguments and returns the exit status)
def frontier_verb(args: argparse.Namespace) -> int:
    """``frontier``: the harness at each context, speed at other dimensions, then frontier.md / .png."""
    from .frontier import run_frontier, table

    if any(c < 1 for c in args.contexts):
        raise ValueError(f"--contexts must be time steps >= 1, got {args.contexts}")
    if args.dims_batch < 1:
        raise ValueError(f"--dims-batch must be at least 1 series, got {args.dims_batch}")
    dims = None if args.dims == "none" else args.dims
    result = run_frontier(
        args.model, _expand(args.datasets), args.contexts, out=args.out, settings=args.merge or None, dims=dims,
        dims_batch=args.dims_batch, reps=args.reps, time_budget=args.time_budget, dims_budget=args.dims_budget,
        timed_datasets=args.timed_datasets,
        progress=not args.no_progress, validation=args.validation,
    )  # fmt: skip
    print(table(result, dims_label=f"Chronos-2 {dims} dims" if dims else "no other dims"))
    print(f"\nresults: {args.out}/frontier.md, {args.out}/frontier.png, {args.out}/ctx<N>/results.jsonl")
    return 0


VERBS: dict[str, Callable[[argparse.Namespace], int]] = {
    "list-datasets": list_datasets_verb,
    "run": run_verb,
    "report": report_verb,
    "tune": tune_verb,
    "frontier": frontier_verb,
    "card": card_verb,
    "profile": profile_verb,
    "precheck": precheck_verb,
    "precheck-validate": precheck_validate_verb,
    "precheck-confirm": precheck_confirm_verb,
}


if __name__ == "__main__":
    sys.exit(main())
