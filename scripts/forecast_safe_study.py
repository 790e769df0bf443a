"""Accuracy of merge settings on validation (or test) windows: the study behind the forecast-safe defaults.

For every dataset and setting it forecasts the windows with the harness' model wrappers and scores WQL / MASE
(GluonTS), appending one JSON row per (dataset, setting) to ``--out`` as soon as it exists (rerun to resume).
No timing: speed comes from ``mergeplug-eval run`` on the chosen settings. ``--split val`` (default) scores the
windows just before the test windows (``mergeplug.eval.data.validation_split``), so defaults chosen here never
see the test windows.

    python scripts/forecast_safe_study.py --model mergeplug:bolt-ref --datasets long \\
        --k 1,3,global --reductions 0.25,0.5,0.75 --protect 0,2,4,8 --min-tokens 8 --out runs/safe/bolt-val.jsonl
    python scripts/forecast_safe_study.py --summary runs/safe/bolt-val.jsonl
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import warnings
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from mergeplug.eval.report import load_rows

warnings.filterwarnings("ignore")


def _settings(args: argparse.Namespace) -> list[str]:
    out = []
    for k, red in itertools.product(args.k.split(","), args.reductions.split(",")):
        base = f"k={k},reduction={red}"
        if args.plain:
            out.append(f"{base},safe=false")
        for p, m, sim in itertools.product(args.protect.split(","), args.min_tokens.split(","), args.min_similarity):
            if p and m:
                out.append(f"{base},protect_recent={p},min_tokens={m}" + (f",min_similarity={sim}" if sim else ""))
        for period in filter(None, args.period.split(",")):
            for p, m in itertools.product(args.protect.split(","), args.min_tokens.split(",")):
                if p and m:
                    out.append(f"{base},protect_recent={p},min_tokens={m},period={period}")
    if args.min_tokens_only:  # the floor study: one k / reduction / protection, several floors
        out = [s for s in out if "period=" not in s]
    return out


def run(args: argparse.Namespace) -> None:
    from tqdm.auto import tqdm

    import mergeplug
    from mergeplug.eval.cli import _expand
    from mergeplug.eval.data import load_dataset, validation_split
    from mergeplug.eval.models import load_model
    from mergeplug.eval.run import MergeSetting, _windows, apply_setting, parse_merge, score

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if out.exists():
        for line in out.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            done.add((row["dataset"], row["setting"]))
    forecaster = load_model(args.model)
    settings = [MergeSetting("unmerged", {})] + [parse_merge(s, forecaster.num_layers) for s in _settings(args)]
    for name in _expand(args.datasets):
        ds = load_dataset(name, max_series=args.max_series)
        if args.split == "val":
            ds = validation_split(ds)
        if args.windows:  # fewer windows (the last ones) for slow models
            ds = replace(ds, windows=min(args.windows, ds.windows))
        pending = [s for s in settings if (ds.name, s.label) not in done]
        if not pending:
            continue
        fc = forecaster.for_dataset(ds)
        test_data = _windows(ds)
        inputs = list(test_data.input)
        with torch.inference_mode():
            for s in tqdm(pending, desc=ds.name, leave=False):
                apply_setting(fc.target, s, season=ds.season)
                q = fc.quantiles(inputs, ds.prediction_length, batch_size=32, seed=0)
                acc = score(ds, test_data, q)
                counts = mergeplug.token_counts(fc.target) if s.kwargs else None
                row = {"dataset": ds.name, "setting": s.label, **acc, "tokens": counts, "series": len(ds)}
                with out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
        mergeplug.remove(fc.target)


def summary(path: str, reference: str = "unmerged") -> list[dict]:
    """Per setting: geometric-mean WQL change over datasets, the worst dataset and the mean token reduction."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    ref = {r["dataset"]: r for r in rows if r["setting"] == reference}
    by: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        if r["setting"] != reference and r["dataset"] in ref:
            by[r["setting"]].append(r)
    table = []
    for setting, rs in by.items():
        ratios = [r["WQL"] / ref[r["dataset"]]["WQL"] for r in rs]
        worst = max(rs, key=lambda r: r["WQL"] / ref[r["dataset"]]["WQL"])
        kept = [r["tokens"][-1] / r["tokens"][0] for r in rs if r.get("tokens")]
        table.append(
            {
                "setting": setting,
                "datasets": len(rs),
                "gmean_WQL_change": math.exp(np.mean(np.log(ratios))) - 1,
                "worst_WQL_change": worst["WQL"] / ref[worst["dataset"]]["WQL"] - 1,
                "worst_dataset": worst["dataset"],
                "tokens_left": float(np.mean(kept)) if kept else 1.0,
            }
        )
    return sorted(table, key=lambda t: t["setting"])


def variants(path: str) -> list[dict]:
    """Per variant (everything but k and reduction): the worst cell of each target, the mean share of tokens left,
    and whether it meets the targets (gmean WQL change <= +2% at reduction <= 0.5 and <= +5% at 0.75 for every k,
    no dataset above +10% at reduction <= 0.5)."""
    groups: dict[str, list[tuple[float, dict]]] = defaultdict(list)
    for t in summary(path):
        head, _, rest = t["setting"].partition(",reduction=")
        red, _, rest = rest.partition(",")
        groups[rest or "(family defaults)"].append((float(red), t))
    out = []
    for rest, items in sorted(groups.items()):
        low = [t for r, t in items if r <= 0.5]
        high = [t for r, t in items if r > 0.5]
        row = {
            "variant": rest,
            "gmean_low": max(t["gmean_WQL_change"] for t in low) if low else float("nan"),
            "gmean_high": max(t["gmean_WQL_change"] for t in high) if high else float("nan"),
            "worst_low": max(t["worst_WQL_change"] for t in low) if low else float("nan"),
            "datasets": min(t["datasets"] for _, t in items),
            "tokens_left": float(np.mean([t["tokens_left"] for _, t in items])),
        }
        row["meets"] = row["gmean_low"] <= 0.02 and row["gmean_high"] <= 0.05 and row["worst_low"] <= 0.10
        out.append(row)
    return out


def grid(results_dir: str, datasets: set[str] | None = None) -> str:
    """The k x reduction table of a ``mergeplug-eval run`` directory (scripts/forecast_safe_eval.sh): per cell the
    geometric-mean WQL change over datasets, the worst dataset, the geometric-mean speed-up and MACs ratio, for the
    forecast-safe defaults and (where run) plain merging."""
    rows = load_rows(results_dir)
    rows = [r for r in rows if "WQL_change" in r and (datasets is None or r["dataset"] in datasets)]

    def gm(values: list[float]) -> float:
        return math.exp(float(np.mean(np.log(values)))) if values else float("nan")

    def cell(setting: str) -> str:
        rs = [r for r in rows if r["setting"] == setting]
        if not rs:
            return "| | | | |"
        worst = max(rs, key=lambda r: r["WQL_change"])
        return (
            f"| {gm([1 + r['WQL_change'] for r in rs]) - 1:+.1%} | {worst['WQL_change']:+.1%} ({worst['dataset']}) | "
            f"{gm([r['speedup'] for r in rs]):.2f}x | {gm([r.get('macs_ratio', 1.0) for r in rs]):.2f}x |"
        )

    n = len({r["dataset"] for r in rows})
    lines = [
        f"{n} datasets. Safe: the forecast-safe defaults; plain: `safe=false`. WQL change vs unmerged (geometric mean "
        "over datasets, and the worst dataset), speed-up and MACs ratio (geometric means).",
        "",
        "| k | reduction | safe: WQL change | safe: worst | safe: speed-up | safe: MACs ratio | plain: WQL change | "
        "plain: worst | plain: speed-up | plain: MACs ratio |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for k in ("1", "3", "global"):
        for red in ("0.25", "0.5", "0.75"):
            base = f"k={k},reduction={red}"
            lines.append(f"| {k} | {red} " + cell(base) + cell(base + ",safe=false")[1:])
    return "\n".join(lines)


def finetune_table(ft_dir: str, ref_dir: str, training: str | None = None) -> str:
    """The merge-aware fine-tuned model (``ft_dir``, a ``mergeplug-eval run`` of it) against the original model
    unmerged and merged (``ref_dir``), per setting over the datasets both cover: geometric-mean WQL ratio to the
    *original* model unmerged, speed-up (vs the same weights unmerged) and MACs ratio; with ``training`` (the run's
    ``training.json``) the compute it took."""

    def load(d: str) -> dict[tuple[str, str], dict]:
        rows = load_rows(d)
        return {(r["dataset"], r["setting"]): r for r in rows if "WQL" in r}

    ft, ref = load(ft_dir), load(ref_dir)
    datasets = sorted({d for d, s in ft if s == "unmerged"} & {d for d, s in ref if s == "unmerged"})
    settings = [s for d, s in ft if d == datasets[0] and s not in ("unmerged", "seasonal-naive")] if datasets else []

    def gm(values: list[float]) -> float:
        return math.exp(float(np.mean(np.log(values))))

    lines = [
        f"{len(datasets)} datasets; WQL change vs the original model unmerged (geometric mean, worst dataset).",
        "",
        "| setting | original merged: WQL change | fine-tuned merged: WQL change | fine-tuned: worst | speed-up | "
        "MACs ratio |",
        "|---|---|---|---|---|---|",
    ]
    base = {d: ref[(d, "unmerged")]["WQL"] for d in datasets}
    ft_un = [ft[(d, "unmerged")]["WQL"] / base[d] for d in datasets]
    lines.append(f"| unmerged | +0.0% | {gm(ft_un) - 1:+.1%} | | 1.00x | 1.00x |")
    for s in settings:
        ratios = [ft[(d, s)]["WQL"] / base[d] for d in datasets]
        orig = [ref[(d, s)]["WQL"] / base[d] for d in datasets if (d, s) in ref]
        worst = max(zip(ratios, datasets, strict=True))
        lines.append(
            f"| {s} | {gm(orig) - 1:+.1%} | {gm(ratios) - 1:+.1%} | {worst[0] - 1:+.1%} ({worst[1]}) | "
            f"{gm([ft[(d, s)]['speedup'] for d in datasets]):.2f}x | "
            f"{gm([ft[(d, s)].get('macs_ratio', 1.0) for d in datasets]):.2f}x |"
        )
    if training:
        state = json.loads(Path(training).read_text())["state"]
        lines += ["", f"Fine-tuning: {state['step']} steps, {state['cpu_seconds'] / 60:.0f} CPU minutes "
                      f"({state['wall_seconds'] / 60:.0f} min wall, one thread)."]  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model")
    p.add_argument("--datasets", nargs="+", default=["long"])
    p.add_argument("--split", choices=["val", "test"], default="val")
    p.add_argument("--k", default="1,3,global")
    p.add_argument("--reductions", default="0.25,0.5,0.75")
    p.add_argument("--protect", default="0,2,4,8", help="protect_recent values")
    p.add_argument("--min-tokens", default="8", help="min_tokens values")
    p.add_argument(
        "--min-similarity", default=[""], type=lambda v: v.split(","),
        help="min_similarity values ('' = the family default), each adds settings",
    )  # fmt: skip
    p.add_argument("--period", default="", help="period values (e.g. 'season'); each adds settings")
    p.add_argument("--min-tokens-only", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--plain", action="store_true", help="also the plain (safe=false) setting of each k / reduction")
    p.add_argument("--max-series", type=int, default=None)
    p.add_argument("--windows", type=int, default=None, help="score only the last N windows (slow models)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out")
    p.add_argument("--summary", help="print the summary of a study file and exit")
    p.add_argument("--grid", help="print the k x reduction table of a mergeplug-eval run directory and exit")
    p.add_argument("--grid-datasets", nargs="+", default=None, help="only these datasets (or a tag) in --grid")
    p.add_argument("--finetune", nargs=2, metavar=("FT_EVAL", "REF_EVAL"), help="fine-tuned vs original table")
    p.add_argument("--training", default=None, help="with --finetune: the run's training.json (compute)")
    args = p.parse_args()
    if args.finetune:
        print(finetune_table(*args.finetune, training=args.training))
        return
    if args.grid:
        from mergeplug.eval.cli import _expand

        print(grid(args.grid, set(_expand(args.grid_datasets)) if args.grid_datasets else None))
        return
    if args.summary:
        print("| variant | datasets | worst gmean (reduction <= 0.5) | worst gmean (0.75) | worst dataset (<= 0.5) | "
              "tokens left | meets the targets |")  # fmt: skip
        print("|---|---|---|---|---|---|---|")
        for v in variants(args.summary):
            print(
                f"| {v['variant']} | {v['datasets']} | {v['gmean_low']:+.1%} | {v['gmean_high']:+.1%} | "
                f"{v['worst_low']:+.1%} | {v['tokens_left']:.2f} | {'yes' if v['meets'] else 'no'} |"
            )
        print()
        print("| setting | datasets | gmean WQL change | worst | worst dataset | tokens left |")
        print("|---|---|---|---|---|---|")
        for t in summary(args.summary):
            print(
                f"| {t['setting']} | {t['datasets']} | {t['gmean_WQL_change']:+.1%} | {t['worst_WQL_change']:+.1%} | "
                f"{t['worst_dataset']} | {t['tokens_left']:.2f} |"
            )
        return
    run(args)


if __name__ == "__main__":
    main()
