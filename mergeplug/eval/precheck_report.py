"""Reports and plots of the pre-check's calibration (``mergeplug-eval precheck-validate`` / ``precheck-confirm``,
:mod:`mergeplug.eval.precheck_study`): markdown tables and predicted-vs-measured scatter plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..precheck import PER_REDUCTION, stat_value


def _confirm_report(result: dict[str, Any], points: list[dict[str, Any]], settings: list[str]) -> str:
    cal = result["calibration"]
    lines = [
        f"# Spectral pre-check, out-of-sample check ({result['model']}, {result['points']} points)",
        "",
        f"The calibration (`{cal['statistic']}`, fitted on {cal['points']} points of {cal['model']}) is used frozen "
        "on dataset variants it was not fitted on. Predicted vs measured relative WQL change:",
        "",
        "| dataset | " + " | ".join(settings) + " |",
        "|" + "---|" * (1 + len(settings)),
    ]
    for ds in dict.fromkeys(p["dataset"] for p in points):
        pts = {p["setting"]: p for p in points if p["dataset"] == ds}
        cells = " | ".join(
            f"{pts[s]['predicted']:+.1%} / {pts[s]['change']:+.1%}" if s in pts else "" for s in settings
        )
        lines.append(f"| {ds} | {cells} |")
    lines += ["", "| setting | points | Spearman rho | p-value | MAE (WQL change) |", "|---|---|---|---|---|"]
    for s in settings:
        v = result["per_setting"][s]
        lines.append(f"| {s} | {v['n']} | {v['rho']:+.2f} | {v['p']:.3g} | {v['mae']:.1%} |")
    pooled = result["pooled"]
    lines += ["", f"Pooled over settings: rho {pooled['rho']:+.2f} (p={pooled['p']:.3g}).", ""]
    lines += ["| tolerance | datasets with a recommendation | within tolerance (measured) | none recommended |"]
    lines += ["|---|---|---|---|"]
    for tol, v in result["recommendations"].items():
        lines.append(f"| {float(tol):.0%} | {v['recommended']} | {v['held']} | {v['none_recommended']} |")
    return "\n".join(lines) + "\n"


def _plot_confirm(points: list[dict[str, Any]], settings: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(settings), figsize=(4 * len(settings), 3.6), squeeze=False)
    for ax, s in zip(axes[0], settings, strict=True):
        pts = [p for p in points if p["setting"] == s]
        ax.scatter([100 * p["predicted"] for p in pts], [100 * p["change"] for p in pts], s=22)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_yscale("symlog", linthresh=10)
        ax.set_title(s, fontsize=9)
        ax.set_xlabel("predicted WQL change (%)")
    axes[0][0].set_ylabel("measured WQL change (%)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _report(points, descriptive, folds, per_setting, cal, settings, names) -> str:
    top = max(p["reduction"] for p in points)  # per-reduction statistics are shown at the largest reduction
    columns = [n for n in names if n not in PER_REDUCTION] + [f"{n}@r{top:g}" for n in names if n in PER_REDUCTION]
    lines = [
        f"# Spectral pre-check validation ({cal['model']}, {cal['points']} points)",
        "",
        "Measured relative WQL change (merged vs unmerged) per dataset and setting, and the statistics:",
        "",
        "| dataset | " + " | ".join(settings) + " | " + " | ".join(columns) + " |",
        "|" + "---|" * (1 + len(settings) + len(columns)),
    ]
    for ds in dict.fromkeys(p["dataset"] for p in points):
        pts = {p["setting"]: p for p in points if p["dataset"] == ds}
        st = next(iter(pts.values()))["stats"]
        changes = " | ".join(f"{pts[s]['change']:+.1%}" if s in pts else "" for s in settings)
        vals = " | ".join(f"{st.get(c, float('nan')):.3f}" for c in columns)
        lines.append(f"| {ds} | {changes} | {vals} |")
    lines += ["", "Spearman rho of each statistic with the measured change, all points (descriptive):", ""]
    lines += ["| statistic | " + " | ".join(settings) + " |", "|" + "---|" * (1 + len(settings))]
    for n in names:
        cells = " | ".join(f"{descriptive[n][s][0]:+.2f} (p={descriptive[n][s][1]:.3f})" for s in settings)
        lines.append(f"| {n} | {cells} |")
    lines += ["", "Leave-one-dataset-out: statistic chosen on the other datasets:", ""]
    lines += ["| held out | chosen statistic | mean abs rho (training) |", "|---|---|---|"]
    lines += [f"| {f['held_out']} | {f['statistic']} | {f['train_mean_abs_rho']:.2f} |" for f in folds]
    lines += ["", "Held-out predictions vs measured change:", ""]
    lines += ["| setting | points | Spearman rho | p-value | MAE (WQL change) |", "|---|---|---|---|---|"]
    for s in settings:
        v = per_setting[s]
        lines.append(f"| {s} | {v['n']} | {v['rho']:+.2f} | {v['p']:.3g} | {v['mae']:.1%} |")
    pooled = cal["heldout_pooled"]
    lines += [
        "",
        f"Pooled over settings: rho {pooled['rho']:+.2f} (p={pooled['p']:.3g}). Final calibration: statistic "
        f"`{cal['statistic']}` (chosen on all points), one line per setting:",
        "",
        "| setting | slope | intercept |",
        "|---|---|---|",
    ]
    lines += [f"| {s} | {v['slope']:+.4f} | {v['intercept']:+.4f} |" for s, v in cal["settings"].items()]
    lines += [
        "",
        f"Within one dataset (one model; its original and variants), mean Spearman rho of `{cal['statistic']}` "
        "with the change: " + ", ".join(f"{s} {v:+.2f}" for s, v in cal["within_dataset_rho"].items()) + ".",
    ]
    return "\n".join(lines) + "\n"


def _plot(points, name: str, settings: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(settings), figsize=(4 * len(settings), 3.6), sharey=False, squeeze=False)
    bases = list(dict.fromkeys(p["base"] for p in points))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, s in zip(axes[0], settings, strict=True):
        for i, b in enumerate(bases):
            pts = [p for p in points if p["setting"] == s and p["base"] == b]
            x = [stat_value(p["stats"], name, p["reduction"]) for p in pts]
            ax.scatter(x, [100 * p["change"] for p in pts], color=colors[i % len(colors)], label=b, s=22)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_yscale("symlog", linthresh=10)  # a fragile model's +300% must not flatten the rest
        ax.set_title(s, fontsize=9)
        ax.set_xlabel(name)
    axes[0][0].set_ylabel("WQL change vs unmerged (%)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
