"""Tests of mergeplug_lab.sbt.data: shipped data (real properties), splits, helpers and the local-file loaders."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mergeplug_lab.sbt.data import (
    Standardizer,
    load_anomaly,
    load_anomaly_files,
    load_classification,
    load_forecasting,
    pad_batch,
    sliding_windows,
    split_points,
)

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ classification
def test_japanese_vowels_properties() -> None:
    d = load_classification("JapaneseVowels")
    assert (len(d.train_x), len(d.test_x)) == (270, 370)
    assert d.n_classes == 9 and d.classes == [str(i) for i in range(1, 10)]
    lengths = [len(x) for x in d.train_x + d.test_x]
    assert min(lengths) == 7 and max(lengths) == 29
    assert all(x.shape[1] == 12 and x.dtype == np.float32 for x in d.train_x + d.test_x)
    assert d.train_y.dtype == np.int64 and np.bincount(d.train_y).tolist() == [30] * 9
    assert set(d.test_y.tolist()) == set(range(9))


def test_basic_motions_properties() -> None:
    d = load_classification("basicmotions")  # case-insensitive
    assert d.name == "BasicMotions"
    assert (len(d.train_x), len(d.test_x)) == (40, 40)
    assert d.n_classes == 4 and sorted(d.classes) == ["Badminton", "Running", "Standing", "Walking"]
    assert all(x.shape == (100, 6) for x in d.train_x + d.test_x)
    assert np.bincount(d.train_y).tolist() == [10] * 4


@pytest.mark.parametrize("name", ["JapaneseVowels", "BasicMotions"])
def test_validation_split_stratified_disjoint_from_train_only(name: str) -> None:
    d = load_classification(name)
    tr, va = d.validation_split(fraction=0.2, seed=0)
    assert len(tr) + len(va) == len(d.train_x)
    assert np.intersect1d(tr.indices, va.indices).size == 0
    assert np.array_equal(np.union1d(tr.indices, va.indices), np.arange(len(d.train_x)))
    per_class = np.bincount(d.train_y)
    assert np.bincount(va.y, minlength=d.n_classes).tolist() == [round(0.2 * n) for n in per_class]
    # validation series are TRAIN series (same values and labels), never test series
    test_bytes = {x.tobytes() for x in d.test_x}
    for x, y, i in zip(va.x, va.y, va.indices, strict=True):
        assert np.array_equal(x, d.train_x[i]) and y == d.train_y[i]
        assert x.tobytes() not in test_bytes
    # reproducible, and the seed matters
    assert np.array_equal(d.validation_split(0.2, seed=0)[1].indices, va.indices)
    assert not np.array_equal(d.validation_split(0.2, seed=1)[1].indices, va.indices)
    with pytest.raises(ValueError):
        d.validation_split(fraction=1.0)


def test_pad_batch() -> None:
    xs = [np.ones((3, 2), np.float32), 2 * np.ones((5, 2), np.float32)]
    x, mask = pad_batch(xs)
    assert isinstance(x, torch.Tensor) and x.shape == (2, 5, 2) and x.dtype == torch.float32
    assert mask.dtype == torch.bool and mask.sum(1).tolist() == [3, 5]
    assert torch.all(x[0, 3:] == 0) and torch.all(x[0, :3] == 1)
    xn, mn = pad_batch(xs, as_tensor=False, max_len=8)
    assert isinstance(xn, np.ndarray) and xn.shape == (2, 8, 2) and mn[:, 5:].sum() == 0
    with pytest.raises(ValueError):
        pad_batch([np.ones((3, 2)), np.ones((3, 3))])
    with pytest.raises(ValueError):
        pad_batch(xs, max_len=4)


def test_parse_ts_own_parser() -> None:
    spec = importlib.util.spec_from_file_location("make_sbt_data", ROOT / "scripts" / "make_sbt_data.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    text = "#c\n@problemName X\n@classLabel true b a\n@data\n1,2,3:4,5,6:a\n7,8:9,?:b\n"
    series, labels, classes = mod.parse_ts(text)
    assert classes == ["b", "a"] and labels == ["a", "b"]
    assert series[0].shape == (3, 2) and series[0][:, 1].tolist() == [4, 5, 6]
    assert series[1].shape == (2, 2) and np.isnan(series[1][1, 1])


# ------------------------------------------------------------------------------------------------ anomaly
def test_kdd_tsad_135() -> None:
    d = load_anomaly("kdd_tsad_135")
    assert d.train.shape == (1200, 1) and d.test.shape == (6301, 1) and d.train.dtype == np.float32
    assert d.validation is None and d.validation_labels is None
    pos = np.flatnonzero(d.test_labels)
    assert d.test_labels.dtype == np.int64 and len(pos) == 12
    assert np.array_equal(pos, np.arange(pos[0], pos[0] + 12))  # one contiguous 12-point anomaly
    assert pos[0] + d.test_offset == 4187 and d.test_offset == 1200


def test_beijing_injected_labels_only_in_validation_and_test() -> None:
    d = load_anomaly("beijing_pm25_injected")
    clean = load_forecasting("beijing_pm25", wind="drop").values
    a, b = split_points(len(clean))
    assert d.columns == ["pm2.5", "DEWP", "TEMP", "PRES", "Iws", "Is", "Ir"]
    assert d.train.shape == (a, 7) and d.validation.shape == (b - a, 7) and d.test.shape == (len(clean) - b, 7)
    assert np.array_equal(d.train, clean[:a])  # the training part is untouched real data
    for part, labels, chan, ref in (
        (d.validation, d.validation_labels, d.extra["channel_labels_validation"], clean[a:b]),
        (d.test, d.test_labels, d.extra["channel_labels_test"], clean[b:]),
    ):
        assert labels.dtype == np.int64 and 0.02 < labels.mean() < 0.1
        assert np.array_equal(labels.astype(bool), chan.any(axis=1))
        changed = part != ref
        assert not changed[~chan].any()  # only labelled (step, channel) cells were modified
    ev = d.extra["events"]
    assert set(ev["kind"].tolist()) == {"spike", "level_shift", "variance_burst", "flat_line"}
    assert set(ev["part"].tolist()) == {"validation", "test"}
    for part, start, length, chans in zip(ev["part"], ev["start"], ev["length"], ev["channels"], strict=True):
        x, ref = (d.validation, clean[a:b]) if part == "validation" else (d.test, clean[b:])
        seg = slice(start, start + length)
        assert (x[seg][:, chans] != ref[seg][:, chans]).any()  # every event changes the data


# -------------------------------------------------------------------------------------------- forecasting
def test_forecasting_sets() -> None:
    bj = load_forecasting("beijing_pm25")
    assert bj.values.shape == (43800, 11) and bj.freq == "h" and bj.start == "2010-01-02 00:00:00"
    assert bj.columns[-4:] == ["cbwd_NE", "cbwd_NW", "cbwd_SE", "cbwd_cv"]
    assert np.all(bj.values[:, 7:].sum(axis=1) == 1)
    assert np.isfinite(bj.values).all() and bj.filled[:, 0].sum() == 2043 and not bj.filled[:, 1:].any()
    hp = load_forecasting("household_power")
    assert hp.values.shape == (34587, 7) and hp.columns[0] == "Global_active_power"
    assert np.isfinite(hp.values).all() and hp.filled.any(axis=1).sum() == 421
    tr, va, te = bj.chronological_split()
    assert (len(tr), len(va), len(te)) == (30660, 4380, 8760)
    assert np.array_equal(np.concatenate([tr, va, te]), bj.values)
    with pytest.raises(ValueError):
        bj.chronological_split((0.5, 0.5, 0.5))


def test_standardizer_uses_train_statistics_only() -> None:
    tr, va, te = load_forecasting("household_power").chronological_split()
    s = Standardizer.fit(tr)
    t64 = tr.astype(np.float64)
    assert np.allclose(s.mean, t64.mean(axis=0), rtol=1e-6) and np.allclose(s.std, t64.std(axis=0), rtol=1e-6)
    z = s.transform(tr)
    assert np.allclose(z.mean(axis=0), 0, atol=1e-3) and np.allclose(z.std(axis=0), 1, atol=1e-3)
    assert not np.allclose(s.transform(te).mean(axis=0), 0, atol=1e-2)  # test statistics were not used
    assert np.allclose(s.inverse_transform(s.transform(te)), te, rtol=1e-4, atol=1e-4)
    const = Standardizer.fit(np.ones((5, 2), np.float32))
    assert np.all(const.std == 1)


def test_sliding_windows_is_a_view() -> None:
    v = np.arange(40, dtype=np.float32).reshape(20, 2)
    w = sliding_windows(v, 5, stride=3)
    assert w.shape == ((20 - 5) // 3 + 1, 5, 2)
    assert np.shares_memory(w, v) and not w.flags.writeable
    for i in range(len(w)):
        assert np.array_equal(w[i], v[3 * i : 3 * i + 5])
    assert sliding_windows(v[:, 0], 20).shape == (1, 20, 1)
    for length, stride in ((0, 1), (21, 1), (5, 0)):
        with pytest.raises(ValueError):
            sliding_windows(v, length, stride)


# -------------------------------------------------------------------------------------- local-file formats
def test_smd_files(tmp_path: Path) -> None:
    for sub in ("train", "test", "test_label"):
        (tmp_path / sub).mkdir()
    rng = np.random.default_rng(0)
    np.savetxt(tmp_path / "train" / "machine-1-1.txt", rng.random((30, 4)), delimiter=",", fmt="%.4f")
    np.savetxt(tmp_path / "test" / "machine-1-1.txt", rng.random((20, 4)), delimiter=",", fmt="%.4f")
    labels = np.zeros(20, int)
    labels[5:8] = 1
    np.savetxt(tmp_path / "test_label" / "machine-1-1.txt", labels, fmt="%d")
    d = load_anomaly_files("SMD", tmp_path)
    assert d.train.shape == (30, 4) and d.test.shape == (20, 4) and d.test_labels.tolist() == labels.tolist()
    np.savetxt(tmp_path / "train" / "machine-1-2.txt", rng.random((30, 4)), delimiter=",")
    with pytest.raises(ValueError, match="machine-1-1"):
        load_anomaly_files("smd", tmp_path)  # ambiguous
    with pytest.raises(FileNotFoundError, match=r"test[/\\]machine-1-2\.txt"):
        load_anomaly_files("smd", tmp_path, entity="machine-1-2")


@pytest.mark.parametrize("kind", ["msl", "smap"])
def test_msl_smap_files(tmp_path: Path, kind: str) -> None:
    (tmp_path / "train").mkdir()
    (tmp_path / "test").mkdir()
    np.save(tmp_path / "train" / "C-1.npy", np.zeros((40, 3)))
    np.save(tmp_path / "test" / "C-1.npy", np.ones((50, 3)))
    pd.DataFrame(
        {
            "chan_id": ["C-1", "Z-9"],
            "spacecraft": [kind.upper(), "OTHER"],
            "anomaly_sequences": ["[[3, 5], [40, 49]]", "[[0, 1]]"],
            "class": ["[point, contextual]", "[point]"],
            "num_values": [50, 10],
        }
    ).to_csv(tmp_path / "labeled_anomalies.csv", index=False)
    d = load_anomaly_files(kind, tmp_path)  # only C-1 belongs to this spacecraft
    assert d.train.shape == (40, 3) and d.test.shape == (50, 3)
    assert np.flatnonzero(d.test_labels).tolist() == [3, 4, 5] + list(range(40, 50))
    (tmp_path / "labeled_anomalies.csv").unlink()
    with pytest.raises(FileNotFoundError, match="labeled_anomalies.csv"):
        load_anomaly_files(kind, tmp_path)


def test_psm_files(tmp_path: Path) -> None:
    ts = "timestamp_(min)"
    train = pd.DataFrame({ts: [2.0, 0.0, 1.0], "feature_0": [3.0, np.nan, 2.0], "feature_1": [1.0, 1.0, np.nan]})
    test = pd.DataFrame({ts: [10.0, 11.0], "feature_0": [1.0, 2.0], "feature_1": [0.0, 1.0]})
    train.to_csv(tmp_path / "train.csv", index=False)
    test.to_csv(tmp_path / "test.csv", index=False)
    with pytest.raises(FileNotFoundError, match="test_label.csv"):
        load_anomaly_files("psm", tmp_path)
    pd.DataFrame({ts: [10.0, 11.0], "label": [0, 1]}).to_csv(tmp_path / "test_label.csv", index=False)
    d = load_anomaly_files("psm", tmp_path)
    assert d.columns == ["feature_0", "feature_1"] and d.test_labels.tolist() == [0, 1]
    # sorted by timestamp (0, 1, 2), then NaN forward-filled (leading NaN back-filled)
    assert d.train.tolist() == [[2.0, 1.0], [2.0, 1.0], [3.0, 1.0]]
    assert d.extra["nan_filled"] == {"train": 2, "test": 0}


# ---------------------------------------------------------------------------------------------- bad names
def test_unknown_names_raise() -> None:
    with pytest.raises(ValueError, match="JapaneseVowels, BasicMotions"):
        load_classification("FaceDetection")
    with pytest.raises(ValueError, match="kdd_tsad_135, beijing_pm25_injected"):
        load_anomaly("smd")
    with pytest.raises(ValueError, match="beijing_pm25, household_power"):
        load_forecasting("ETTh1")
    with pytest.raises(ValueError, match="smd, msl, smap, psm"):
        load_anomaly_files("swat", ".")
    with pytest.raises(ValueError):
        load_forecasting("beijing_pm25", wind="ordinal")  # type: ignore[arg-type]
