"""The quality gates of the Chronos-2 reference (issue 30), from the harness runs of `scripts/chronos2_ref.sh`.

1. in-domain: geometric-mean WQL ratio to seasonal naive <= 0.75 on the test windows of the five long series
   (context 2,048);
2. zero-shot: geometric-mean WQL ratio <= 1.0 on M1 / M3 / Tourism (M1 and M3: their training parts were seen, their
   test windows were not; Tourism never); the other zero-shot sets are shown beside;
3. it uses its context: geometric-mean WQL at 2,048 steps below that at 512 on the long series.

usage: .venv/bin/python scripts/chronos2_gates.py GATES_DIR   (prints a markdown report; exit 0 either way)
"""

from __future__ import annotations

import sys
from pathlib import Path

from mergeplug.results import load_rows
from mergeplug_lab.train.export import geomean

M_TOURISM = ("m1_", "m3_", "tourism_")


def ratios(rows: list[dict], prefix: tuple[str, ...] | None = None) -> dict[str, float]:
    naive = {r["dataset"]: r["WQL"] for r in rows if r["setting"] == "seasonal-naive"}
    return {r["dataset"]: r["WQL"] / naive[r["dataset"]] for r in rows if r["setting"] == "unmerged"
            and (prefix is None or r["dataset"].startswith(prefix))}  # fmt: skip


def main(gates: str) -> None:
    d = Path(gates)
    by_context = {c: {r["dataset"]: r["WQL"] for r in load_rows(d / f"long-{c}") if r["setting"] == "unmerged"}
                  for c in (512, 1024, 2048) if (d / f"long-{c}").exists()}  # fmt: skip
    long = ratios(load_rows(d / "long-2048"))
    zero_rows = load_rows(d / "zero-shot")
    mt = ratios(zero_rows, M_TOURISM)
    other = {k: v for k, v in ratios(zero_rows).items() if k not in mt}
    in_domain, zero = geomean(list(long.values())), geomean(list(mt.values()))
    use = {c: geomean(list(w.values())) for c, w in by_context.items()}
    print("| gate | measured | target | verdict |\n|---|---|---|---|")
    print(f"| in-domain WQL ratio (5 long series, context 2,048) | {in_domain:.3f} | <= 0.75 | "
          f"{'met' if in_domain <= 0.75 else 'not met'} |")  # fmt: skip
    print(f"| zero-shot WQL ratio (M1 / M3 / Tourism, {len(mt)} sets) | {zero:.3f} | <= 1.0 | "
          f"{'met' if zero <= 1.0 else 'not met'} |")  # fmt: skip
    ctx_ok = use[2048] < use[512]
    print(f"| uses its context: WQL at 2,048 / at 512 (geometric mean) | {use[2048] / use[512]:.3f} | < 1 | "
          f"{'met' if ctx_ok else 'not met'} |")  # fmt: skip
    print("\nPer dataset, WQL ratio to seasonal naive:\n\n| dataset | ratio |\n|---|---|")
    for k, v in {**long, **mt}.items():
        print(f"| {k} | {v:.3f} |")
    if other:
        print(f"\nOther zero-shot sets (not a gate): geometric mean {geomean(list(other.values())):.3f}; "
              + ", ".join(f"{k} {v:.3f}" for k, v in other.items()))  # fmt: skip
    print("\nIn-domain WQL by context (geometric mean of the raw WQL): "
          + ", ".join(f"{c}: {u:.4f}" for c, u in use.items()))  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1])
