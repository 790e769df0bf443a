"""The user's own data: CSV / Parquet files in long and wide format, every pandas frequency, bad files refused."""

import json

import numpy as np
import pandas as pd
import pytest

from mergeplug.eval import load_dataset
from mergeplug.eval.cli import main
from mergeplug.eval.data import load_local


def _long(freq: str, n: int = 40, items: str = "ab", seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ts = pd.date_range("2001-01-01", periods=n, freq=freq)
    return pd.concat(
        [pd.DataFrame({"item_id": i, "timestamp": ts, "target": rng.normal(10, 1, n)}) for i in items],
        ignore_index=True,
    )


# offset alias of the data -> period alias of the loaded dataset, seasonal period
FREQS = {
    "MS": ("M", 12),  # month start
    "ME": ("M", 12),  # month end
    "QS-OCT": ("Q-DEC", 4),  # quarter start, fiscal year from October
    "QE-DEC": ("Q-DEC", 4),
    "YS-JAN": ("Y-DEC", 1),  # year start
    "W-SUN": ("W-SUN", 1),  # weekly, anchored on Sundays
    "W-WED": ("W-WED", 1),
    "B": ("B", 5),  # business days
    "D": ("D", 1),
    "h": ("h", 24),
    "30min": ("30min", 48),
}


@pytest.mark.filterwarnings("ignore:Period with BDay freq:FutureWarning")
@pytest.mark.parametrize("alias", sorted(FREQS))
def test_every_pandas_frequency_of_a_real_csv_loads(tmp_path, alias):
    df = _long(alias)
    df.to_csv(tmp_path / "data.csv", index=False)
    entries, freq = load_local(tmp_path / "data.csv")
    period, season = FREQS[alias]
    assert freq == period
    first = df["timestamp"].iloc[0]
    for e in entries:
        expected = df.loc[df["item_id"] == e["item_id"], "target"].to_numpy(np.float32)
        assert np.array_equal(e["target"], expected)  # every value kept, none turned into NaN
        assert e["start"] == pd.Period(first, freq=period)
    ds = load_dataset(f"file:{tmp_path / 'data.csv'}", prediction_length=4, windows=2)
    assert ds.season == season and ds.windows == 2 and len(ds) == 2


def test_a_frequency_alias_of_the_same_period_takes_the_data_anchor(tmp_path):
    """``freq="M"`` (month end) for month-start data used to give all-NaN series."""
    _long("MS").to_csv(tmp_path / "m.csv", index=False)
    entries, freq = load_local(tmp_path / "m.csv", freq="ME")
    assert freq == "M" and all(np.isfinite(e["target"]).all() for e in entries)
    entries, _ = load_local(tmp_path / "m.csv", freq="M")
    assert all(np.isfinite(e["target"]).all() for e in entries)
    with pytest.raises(ValueError, match="regular at 'MS', not at the given 'D'"):
        load_local(tmp_path / "m.csv", freq="D")  # would leave ~29 of 30 steps missing
    with pytest.raises(ValueError, match="unknown frequency 'monthly'"):
        load_local(tmp_path / "m.csv", freq="monthly")


def test_missing_steps_become_nan_and_off_grid_timestamps_are_refused(tmp_path):
    df = _long("D", n=30, items="a")
    df.drop(index=[3, 4]).to_csv(tmp_path / "gaps.csv", index=False)  # a Thursday and a Friday
    (e,), freq = load_local(tmp_path / "gaps.csv")
    assert freq == "D" and len(e["target"]) == 30 and np.isnan(e["target"][3:5]).all()
    shifted = df.copy()
    shifted.loc[10, "timestamp"] += pd.Timedelta(hours=3)
    shifted.to_csv(tmp_path / "off.csv", index=False)
    with pytest.raises(ValueError, match=r"1 timestamp\(s\) are not on the 'D' grid.*2001-01-11 03:00"):
        load_local(tmp_path / "off.csv", freq="D")


def test_bad_files_are_refused_naming_the_problem(tmp_path):
    df = _long("h", n=30)
    dup = pd.concat([df, df.iloc[[3]].assign(target=99.0)])  # a second value for one (series, timestamp)
    dup.to_csv(tmp_path / "dup.csv", index=False)
    with pytest.raises(ValueError, match=r"series 'a'.*1 duplicated timestamp\(s\) \(first: 2001-01-01 03:00:00\)"):
        load_local(tmp_path / "dup.csv")
    df.drop(columns="target").assign(value=1.0).to_csv(tmp_path / "notarget.csv", index=False)
    with pytest.raises(ValueError, match="needs a 'target' column"):
        load_local(tmp_path / "notarget.csv")  # used to be read as wide format, 'item_id' becoming a series
    wide = df.pivot(index="timestamp", columns="item_id", values="target").reset_index()
    wide["b"] = wide["b"].astype(object)
    wide.loc[7, "b"] = "12,5"  # a decimal comma
    wide.to_csv(tmp_path / "text.csv", index=False)
    with pytest.raises(ValueError, match=r"column 'b': 1 non-numeric value\(s\) \(2001-01-01 07:00:00: '12,5'\)"):
        load_local(tmp_path / "text.csv")
    df.assign(target=df["target"].astype(object).where(df.index != 4, "x")).to_csv(tmp_path / "t2.csv", index=False)
    with pytest.raises(ValueError, match="series 'a' \\(column 'target'\\): 1 non-numeric"):
        load_local(tmp_path / "t2.csv")
    (tmp_path / "dupcols.csv").write_text("timestamp,a,a\n2024-01-01,1,2\n2024-01-02,3,4\n")  # issue 34, point 15
    with pytest.raises(ValueError, match=r"column name\(s\) \['a'\] appear more than once"):
        load_local(tmp_path / "dupcols.csv")
    (tmp_path / "u16.csv").write_bytes("timestamp,target\n2024-01-01,1\n".encode("utf-16"))
    with pytest.raises(ValueError, match=r"u16.csv: not UTF-8 text"):
        load_local(tmp_path / "u16.csv")
    inf = df.assign(target=df["target"].where(df.index != 5, np.inf))
    inf.to_csv(tmp_path / "inf.csv", index=False)  # issue 34: read, then every forecast failed "contains NaN"
    with pytest.raises(ValueError, match=r"series 'a' \(column 'target'\): 1 infinite value\(s\).*blank them"):
        load_local(tmp_path / "inf.csv")
    blank = wide.copy()
    blank.loc[7, "b"] = None  # an empty cell is a missing value, not an error
    blank.to_csv(tmp_path / "blank.csv", index=False)
    entries, _ = load_local(tmp_path / "blank.csv")
    assert np.isnan(entries[1]["target"][7]) and np.isfinite(np.delete(entries[1]["target"], 7)).all()
    with pytest.raises(ValueError, match="needs the forecast horizon"):
        load_dataset(f"file:{tmp_path / 'blank.csv'}")
    with pytest.raises(ValueError, match=r"no series is long enough.*\(90 values; the longest has 30\)"):
        load_dataset(f"file:{tmp_path / 'blank.csv'}", prediction_length=30, windows=2)
    with pytest.raises(ValueError, match="freq .* is for local files"):
        load_dataset("m3_yearly", freq="D")


@pytest.mark.parametrize("layout", ["long.csv", "wide.csv", "long.parquet", "single.csv"])
def test_cli_evaluates_a_users_monthly_file_end_to_end(tmp_path, capsys, layout):
    df = _long("MS", n=48, items="abc")
    kind, suffix = layout.split(".")
    path = tmp_path / layout
    if kind == "wide":
        df = df.pivot(index="timestamp", columns="item_id", values="target").reset_index()
    elif kind == "single":
        df = df[df["item_id"] == "a"].drop(columns="item_id")  # one series: timestamp + target
    df.to_parquet(path) if suffix == "parquet" else df.to_csv(path, index=False)
    out = tmp_path / "out"
    args = ["run", "--model", "random:chronos-bolt-test", "--datasets", f"file:{path}", "--prediction-length", "6"]
    args += ["--windows", "2", "--merge", "k=1,ratio=0.2,safe=false", "--out", str(out), "--reps", "1"]
    assert main([*args, "--timing-windows", "4", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert (
        f"| {layout} | k=1,ratio=0.2,safe=false |" in captured.out
        and str(tmp_path) not in captured.out.split("results:")[0]
    )
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert [r["setting"] for r in rows] == ["seasonal-naive", "unmerged", "k=1,ratio=0.2,safe=false"]
    series = 1 if kind == "single" else 3
    assert all(r["series"] == series and r["windows"] == 2 and r["prediction_length"] == 6 for r in rows)
    assert all(np.isfinite(r["MASE"]) and np.isfinite(r["WQL"]) for r in rows)
    setup = json.loads((out / "run.json").read_text())
    assert (setup["prediction_length"], setup["windows"], setup["freq"]) == (6, 2, None)


def test_cli_refuses_a_local_file_without_a_horizon_before_loading_the_model(tmp_path, capsys):
    _long("MS").to_csv(tmp_path / "m.csv", index=False)
    args = ["run", "--model", "mergeplug:no-such-model", "--datasets", f"file:{tmp_path / 'm.csv'}"]
    assert main([*args, "--out", str(tmp_path / "o")]) == 2
    assert "needs the forecast horizon: prediction_length=... (--prediction-length)" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_numeric_timestamps_are_read_as_unix_epochs_in_their_unit_or_refused(tmp_path):
    """Issue 34, point 3: Unix seconds were read as nanoseconds (frequency 3600ns, seasonality 1, MASE wrong)."""
    df = _long("h", n=48, items="a")
    (ref,), ref_freq = load_local(_write(tmp_path / "dates.csv", df))
    seconds = (df["timestamp"] - pd.Timestamp("1970-01-01")) // pd.Timedelta(seconds=1)
    for unit, scale in (("s", 1), ("ms", 1000), ("us", 10**6)):
        (e,), freq = load_local(_write(tmp_path / f"{unit}.csv", df.assign(timestamp=seconds * scale)))
        assert freq == ref_freq == "h" and e["start"] == ref["start"], unit
        np.testing.assert_array_equal(e["target"], ref["target"])
    for steps in (np.arange(48), np.arange(48) * 0.5 + 3):  # step numbers: not a date
        with pytest.raises(ValueError, match="not Unix epochs in seconds, milliseconds.*--freq"):
            load_local(_write(tmp_path / "steps.csv", df.assign(timestamp=steps)))


def _write(path, df: pd.DataFrame):
    df.to_csv(path, index=False)
    return path


def test_an_all_missing_file_says_so(tmp_path):
    """A file whose values are all NaN said "no series is long enough ... the longest has 600"; it says what is
    wrong."""
    pd.DataFrame({"timestamp": pd.date_range("2020", periods=600, freq="h"), "y": np.nan}).to_csv(
        tmp_path / "nan.csv", index=False
    )
    with pytest.raises(ValueError, match=r"every series is missing \(all values NaN or empty\)"):
        load_dataset(f"file:{tmp_path / 'nan.csv'}", prediction_length=24)


def test_a_time_zone_aware_file_across_daylight_saving_time_loads_on_the_utc_clock(tmp_path, recwarn):
    """Local timestamps with UTC offsets that change at DST (+01:00 -> +02:00) gave pandas' "Tz-aware
    datetime.datetime cannot be converted" (and a FutureWarning); they are read on the UTC clock, regular hourly."""
    idx = pd.date_range("2021-03-27", periods=72, freq="h", tz="Europe/Berlin")  # the clocks go forward on the 28th
    pd.DataFrame({"timestamp": idx.astype(str), "y": np.arange(72.0)}).to_csv(tmp_path / "dst.csv", index=False)
    entries, freq = load_local(tmp_path / "dst.csv")
    assert freq == "h" and len(entries) == 1
    np.testing.assert_array_equal(entries[0]["target"], np.arange(72.0))  # no gap, no duplicate at the change
    assert str(entries[0]["start"]) == "2021-03-26 23:00"  # midnight in Berlin (+01:00) is 23:00 UTC
    assert not [w for w in recwarn if issubclass(w.category, FutureWarning)]


def test_an_empty_file_and_a_header_only_file_say_so(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match="empty.csv: the file is empty"):
        load_local(tmp_path / "empty.csv")
    (tmp_path / "header.csv").write_text("timestamp,y\n")
    with pytest.raises(ValueError, match=r"header.csv: no data rows, only the header \['timestamp', 'y'\]"):
        load_local(tmp_path / "header.csv")
