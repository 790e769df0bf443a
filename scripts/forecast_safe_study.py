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
    args = p.parse_args()
    if args.summary:
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
