"""Bad input, bad files, bad flags, bad saves and faults: what each one gets back.

Every case is a small call that must not give a silent wrong result or a raw traceback. A case is

* ``clear``: it raised one of the documented errors (ValueError, TypeError, NotImplementedError, FileNotFoundError,
  RuntimeError, OSError; a CLI: exit status 2 and one ``error:`` line) whose message names the problem;
* ``ok``: it is valid after all and gave the right answer (the case checks it);
* ``raw``: any other exception, or a CLI traceback;
* ``silent``: it was accepted where it should not have been, or its answer was wrong.

    python scripts/reliability_probe.py [--out DIR]     # prints the table and the counts per category
"""

# ruff: noqa: E501  (the case tables read best one case per line)
from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

import mergeplug
from mergeplug.models import chronos2, chronos_bolt, chronos_t5

CLEAR = (ValueError, TypeError, NotImplementedError, FileNotFoundError, RuntimeError, OSError)
CASES: list[tuple[str, str, Callable[[Path], bool | None]]] = []  # (category, name, run: True ok / False silent)


def case(category: str, name: str) -> Callable:
    def register(fn: Callable[[Path], bool | None]) -> Callable:
        CASES.append((category, name, fn))
        return fn

    return register


def _encoder() -> nn.TransformerEncoder:
    torch.manual_seed(0)
    return nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True), 3,
                                 enable_nested_tensor=False).eval()  # fmt: skip


def _refused(fn: Callable[[], object]) -> Callable[[Path], bool]:
    """A call that must raise: returning means it was accepted (silent)."""

    def run(_: Path) -> bool:
        fn()
        return False

    return run


# ------------------------------------------------------------------------------------------------ arguments
BAD_APPLY = {
    "k=0": {"k": 0, "r": 1}, "k=-1": {"k": -1, "r": 1}, "k=1.5": {"k": 1.5, "r": 1}, "k='1'": {"k": "1", "r": 1},
    "r=-1": {"r": -1}, "r=1.5": {"r": 1.5}, "r='2'": {"r": "2"}, "ratio=1": {"ratio": 1.0}, "ratio=-0.1": {"ratio": -0.1},
    "ratio=nan": {"ratio": float("nan")}, "ratio='0.2'": {"ratio": "0.2"}, "input_ratio='0.5'": {"input_ratio": "0.5"},
    "input_ratio=1": {"input_ratio": 1.0}, "proportional_attention='no'": {"r": 1, "proportional_attention": "no"},
    "safe='no'": {"r": 1, "safe": "no"}, "period=inf": {"r": 1, "period": float("inf")},
    "period=1e-9": {"r": 1, "period": 1e-9}, "min_similarity=2": {"r": 1, "min_similarity": 2.0},
    "min_tokens=-1": {"r": 1, "min_tokens": -1}, "threshold without causal": {"threshold": 0.9},
    "r and ratio": {"r": 1, "ratio": 0.2}, "no amount": {"k": 1}, "unknown setting": {"r": 1, "ration": 0.2},
    "protect_recent on a non-forecaster": {"r": 1, "protect_recent": 2}, "r list too long": {"r": [1, 1, 1, 1, 1]},
    "decoder='x'": {"r": 1, "decoder": "x"}, "decoder k=0": {"r": 1, "decoder": {"k": 0, "r": 1}},
    "causal encoder merge into bidirectional T5": "t5-causal",
}  # fmt: skip
for _name, _kwargs in BAD_APPLY.items():
    if _kwargs == "t5-causal":
        case("arguments", f"apply: {_name}")(
            _refused(lambda: mergeplug.apply(chronos_t5("test"), k=1, r=2, causal=True))
        )
    else:
        case("arguments", f"apply: {_name}")(_refused(lambda kw=_kwargs: mergeplug.apply(_encoder(), **kw)))
case("arguments", "apply: unsupported object")(_refused(lambda: mergeplug.apply(object(), r=1)))
case("arguments", "apply: config not a MergeConfig")(_refused(lambda: mergeplug.apply(_encoder(), {"r": 1})))
case("arguments", "merge_decoder on an encoder-only model")(_refused(lambda: mergeplug.merge_decoder(_encoder(), r=1)))
case("arguments", "schedule_for_reduction('0.5', 2)")(_refused(lambda: mergeplug.schedule_for_reduction("0.5", 2)))
case("arguments", "schedule_for_reduction(0.5, 2.5)")(_refused(lambda: mergeplug.schedule_for_reduction(0.5, 2.5)))
case("arguments", "schedule_for_reduction(0.99, 2)")(_refused(lambda: mergeplug.schedule_for_reduction(0.99, 2)))
case("arguments", "register_patch('notaclass')")(_refused(lambda: mergeplug.register_patch("notaclass", blocks="b")))
case("arguments", "register_patch(seq_dim=5)")(
    _refused(lambda: mergeplug.register_patch(nn.Module, blocks="b", seq_dim=5))
)
case("arguments", "binarize(seed='x')")(_refused(lambda: mergeplug.binarize(_encoder(), density=0.1, seed="x")))
case("arguments", "binarize(density=2)")(_refused(lambda: mergeplug.binarize(_encoder(), density=2.0)))
case("arguments", "from_pretrained(None)")(_refused(lambda: mergeplug.from_pretrained(None)))
case("arguments", "from_pretrained(123)")(_refused(lambda: mergeplug.from_pretrained(123)))
case("arguments", "MergeConfig.from_string('k=1,ration=0.2')")(
    _refused(lambda: mergeplug.MergeConfig.from_string("k=1,ration=0.2"))
)


def _tune(**kw) -> None:
    pipe = chronos_bolt("test", context_length=256)
    series = [np.random.default_rng(0).normal(size=400).cumsum()]
    mergeplug.tune(pipe, series, **{"prediction_length": 16, **kw})


for _name, _kwargs in {"context=0": {"context": 0}, "context=-5": {"context": -5}, "tolerance='0.01'": {"tolerance": "0.01"},
                       "prediction_length=0": {"prediction_length": 0}, "windows=0": {"windows": 0},
                       "candidates=[...]": {"candidates": [{"k": 1, "r": 1}]}}.items():  # fmt: skip
    case("arguments", f"tune: {_name}")(_refused(lambda kw=_kwargs: _tune(**kw)))


@case("arguments", "tune: a series with +inf")
def _tune_inf(_: Path) -> bool:
    s = np.random.default_rng(0).normal(size=400).cumsum()
    s[100] = np.inf
    mergeplug.tune(chronos_bolt("test", context_length=256), [s], prediction_length=16)
    return False


# ---------------------------------------------------------------------------------------------------- files
def _csv(tmp: Path, name: str, frame: pd.DataFrame | str | bytes) -> Path:
    path = tmp / name
    if isinstance(frame, bytes):
        path.write_bytes(frame)
    elif isinstance(frame, str):
        path.write_text(frame)
    else:
        frame.to_csv(path, index=False)
    return path


def _load(path: Path, **kw) -> object:
    from mergeplug.eval import load_dataset

    return load_dataset(f"file:{path}", **{"prediction_length": 12, **kw})


_HOURS = pd.date_range("2020-01-01", periods=300, freq="h")
FILES = {
    "empty file": b"",
    "header only": "timestamp,y\n",
    "one row": "timestamp,y\n2020-01-01,1\n",
    "text values": pd.DataFrame({"timestamp": _HOURS, "y": ["a"] * 300}),
    "an inf value": pd.DataFrame({"timestamp": _HOURS, "y": np.r_[np.ones(299), np.inf]}),
    "all NaN": pd.DataFrame({"timestamp": _HOURS, "y": np.nan}),
    "duplicate timestamps": pd.DataFrame({"timestamp": list(_HOURS[:150]) * 2, "y": 1.0}),
    "duplicate column names": "timestamp,a,a\n" + "".join(f"2020-01-01 {h:02d}:00,1,2\n" for h in range(24)),
    "latin-1 bytes": "timestamp,y\n2020-01-01,1\n2020-01-02,\xe9\n".encode("latin-1"),
    "UTF-16": "timestamp,y\n2020-01-01,1\n".encode("utf-16"),
    "binary junk": bytes(range(256)) * 4,
    "numbers as timestamps (not epochs)": pd.DataFrame({"timestamp": np.arange(300), "y": 1.0}),
    "too short for the windows": pd.DataFrame({"timestamp": _HOURS[:20], "y": 1.0}),
}  # fmt: skip
for _name, _frame in FILES.items():
    case("files", _name)(lambda tmp, n=_name, f=_frame: (_load(_csv(tmp, "f.csv", f)), False)[1])


@case("files", "three missing hours become three missing values")
def _gap(tmp: Path) -> bool:
    ds = _load(_csv(tmp, "g.csv", pd.DataFrame({"timestamp": _HOURS[np.r_[0:100, 103:300]], "y": 1.0})))
    x = ds.entries[0]["target"]
    return len(x) == 300 and np.isnan(x[100:103]).all() and not np.isnan(np.r_[x[:100], x[103:]]).any()


@case("files", "off-grid timestamps (an hourly series with a 30-minute stamp)")
def _off_grid(tmp: Path) -> bool:
    stamps = list(_HOURS[:100]) + [_HOURS[100] + pd.Timedelta("30min")] + list(_HOURS[101:])
    _load(_csv(tmp, "o.csv", pd.DataFrame({"timestamp": stamps, "y": 1.0})))
    return False


@case("files", "epoch seconds read as seconds")
def _epochs(tmp: Path) -> bool:
    stamps = (_HOURS.astype("int64") // 10**9).to_numpy()
    ds = _load(_csv(tmp, "e.csv", pd.DataFrame({"timestamp": stamps, "y": np.arange(300.0)})))
    return ds.freq in ("h", "H")


@case("files", "a time zone across daylight saving time")
def _dst(tmp: Path) -> bool:
    idx = pd.date_range("2021-03-27", periods=300, freq="h", tz="Europe/Berlin")
    ds = _load(_csv(tmp, "d.csv", pd.DataFrame({"timestamp": idx.astype(str), "y": np.arange(300.0)})))
    return ds.freq == "h" and len(ds.entries[0]["target"]) == 300


@case("files", "a missing file")
def _missing(tmp: Path) -> bool:
    _load(tmp / "nope.csv")
    return False


# ------------------------------------------------------------------------------------------------ CLI flags
def _cli(argv: list[str]) -> Callable[[Path], bool]:
    def run(tmp: Path) -> bool:
        from mergeplug.eval.cli import main

        (tmp / "empty.json").write_text("{}")
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = main([a.replace("TMP", str(tmp)) for a in argv])
            except SystemExit as exc:
                code = exc.code
        text = err.getvalue().strip()
        if code == 2 and "error:" in text and "Traceback" not in text:
            raise ValueError(text.splitlines()[-1])
        if "Traceback" in text:
            raise AssertionError(text[-300:])
        return False

    return run


FLAGS = {
    "run --merge k=1,ration=0.2": ["run", "--model", "seasonal-naive", "--datasets", "m1_yearly", "--merge", "k=1,ration=0.2"],
    "run --reps 0": ["run", "--model", "seasonal-naive", "--datasets", "m1_yearly", "--reps", "0"],
    "run --context -1": ["run", "--model", "seasonal-naive", "--datasets", "m1_yearly", "--context", "-1"],
    "run --device cuda": ["run", "--model", "seasonal-naive", "--datasets", "m1_yearly", "--device", "cuda"],
    "run --datasets no_such": ["run", "--model", "seasonal-naive", "--datasets", "no_such_dataset"],
    "run --model predictor:os.system": ["run", "--model", "predictor:os.system", "--datasets", "m1_yearly"],
    "run --model no_such_dir": ["run", "--model", "TMP/no_such_model", "--datasets", "m1_yearly"],
    "run file: without a horizon": ["run", "--model", "seasonal-naive", "--datasets", "file:TMP/x.csv"],
    "tune --model seasonal-naive": ["tune", "--model", "seasonal-naive", "--data", "TMP/x.csv", "--prediction-length", "8"],
    "profile --batch 0": ["profile", "--model", "random:chronos-bolt-tiny", "--batch", "0"],
    "profile --context -1": ["profile", "--model", "random:chronos-bolt-tiny", "--context", "-1"],
    "precheck --stride 0": ["precheck", "--datasets", "m1_yearly", "--stride", "0"],
    "precheck --tolerance nan": ["precheck", "--datasets", "m1_yearly", "--tolerance", "nan"],
    "precheck --calibration {}": ["precheck", "--datasets", "m1_yearly", "--calibration", "TMP/empty.json"],
    "no verb": [],
    "unknown verb": ["explode"],
}  # fmt: skip
for _name, _argv in FLAGS.items():
    case("CLI flags", _name)(_cli(_argv))


# ---------------------------------------------------------------------------------------------------- saves
case("saves", "save_pretrained(pipe, '')")(_refused(lambda: mergeplug.save_pretrained(chronos_bolt("test"), "")))


@case("saves", "save onto an existing file")
def _save_file(tmp: Path) -> bool:
    (tmp / "afile").write_text("x")
    mergeplug.save_pretrained(chronos_bolt("test"), tmp / "afile")
    return False


@case("saves", "save, load: the same forecasts, merged")
def _round_trip(tmp: Path) -> bool:
    pipe = mergeplug.apply(chronos_bolt("test", context_length=256), k=1, ratio=0.2)
    x = torch.randn(2, 256).cumsum(1)
    out = mergeplug.save_pretrained(pipe, tmp / "m")
    loaded = mergeplug.from_pretrained(out)
    return torch.equal(pipe.predict(x, prediction_length=8), loaded.predict(x, prediction_length=8))


def _damaged(edit: Callable[[dict], object]) -> Callable[[Path], bool]:
    def run(tmp: Path) -> bool:
        out = mergeplug.save_pretrained(chronos_bolt("test"), tmp / "m")
        cfg = out / "mergeplug_config.json"
        meta = json.loads(cfg.read_text())
        cfg.write_text(json.dumps(edit(meta)) if not isinstance(edit(meta), str) else edit(meta))
        mergeplug.from_pretrained(out)
        return False

    return run


case("saves", "config: not JSON")(_damaged(lambda m: "{not json"))
case("saves", "config: merge a string")(_damaged(lambda m: {**m, "merge": "k=1"}))
case("saves", "config: unknown setting")(_damaged(lambda m: {**m, "merge": {"k": 1, "nope": 2}}))
case("saves", "config: newer format")(_damaged(lambda m: {**m, "format_version": 999}))
case("saves", "config: unknown family")(_damaged(lambda m: {**m, "family": "no-such-family"}))
case("saves", "config: model_class 'pipeline'")(
    _damaged(lambda m: {**m, "loader": "transformers", "model_class": "pipeline"})
)


@case("saves", "weights cut short")
def _cut(tmp: Path) -> bool:
    out = mergeplug.save_pretrained(chronos_bolt("test"), tmp / "m")
    w = out / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    mergeplug.from_pretrained(out)
    return False


# --------------------------------------------------------------------------------------------------- faults
@case("faults", "an exception inside a merged forward, then remove(): the original, bitwise")
def _exc(_: Path) -> bool:
    enc = _encoder()
    x = torch.randn(2, 40, 16)
    ref = enc(x)
    mergeplug.apply(enc, k=1, r=4)
    handle = enc.layers[1].register_forward_hook(lambda m, a, o: 1 / 0)
    with contextlib.suppress(ZeroDivisionError):
        enc(x)
    handle.remove()
    mergeplug.remove(enc)
    return torch.equal(enc(x), ref)


@case("faults", "remove() from a hook inside a merged forward")
def _remove_in_forward(_: Path) -> bool:
    pipe = chronos_bolt("test", context_length=512)
    x = torch.randn(2, 512).cumsum(1)
    ref = pipe.predict(x, prediction_length=16)
    mergeplug.apply(pipe, k=1, ratio=0.3, safe=False)
    merged = pipe.predict(x, prediction_length=16)
    h = pipe.model.encoder.final_layer_norm.register_forward_pre_hook(lambda m, a: (mergeplug.remove(pipe), None)[1])
    inflight = pipe.predict(x, prediction_length=16)
    h.remove()
    return torch.equal(inflight, merged) and torch.equal(pipe.predict(x, prediction_length=16), ref)


@case("faults", "a hook registered after apply on a block the merged forward bypasses")
def _late_hook(_: Path) -> bool:
    pipe = mergeplug.apply(chronos2("test", context_length=512), k=1, ratio=0.3, safe=False)
    pipe.model.encoder.block[0].register_forward_hook(lambda m, a, o: None)
    pipe.predict(torch.randn(1, 1, 512).cumsum(-1), prediction_length=16)
    return False


@case("faults", "4 threads x 8 calls on one merged Chronos-2: the sequential outputs")
def _threads(_: Path) -> bool:
    import threading

    pipe = mergeplug.apply(chronos2("test", context_length=512), k=1, ratio=0.3, safe=False)
    xs = [torch.randn(2, 64 * (4 + i)).cumsum(-1) for i in range(4)]
    with torch.no_grad():
        ref = [pipe.model(x, num_output_patches=2).quantile_preds for x in xs]
    bad: list[str] = []

    def work(i: int) -> None:
        with torch.no_grad():
            for _ in range(8):
                if not torch.equal(pipe.model(xs[i], num_output_patches=2).quantile_preds, ref[i]):
                    bad.append(str(i))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return not bad


def classify(fn: Callable[[Path], bool | None]) -> tuple[str, str]:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                ok = fn(Path(tmp))
        except CLEAR as exc:
            return "clear", f"{type(exc).__name__}: {str(exc).splitlines()[0][:140] if str(exc) else ''}"
        except Exception as exc:  # noqa: BLE001 - a raw error is what the probe looks for
            return "raw", f"{type(exc).__name__}: {str(exc)[:140]} ({traceback.extract_tb(exc.__traceback__)[-1].name})"
        return ("ok", "right answer") if ok else ("silent", "accepted, or a wrong answer")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the table (report.md) and rows (rows.json) here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    import warnings

    warnings.filterwarnings("ignore")
    import transformers

    transformers.logging.set_verbosity_error()
    rows = []
    for category, name, fn in CASES:
        verdict, detail = classify(fn)
        rows.append({"category": category, "case": name, "verdict": verdict, "detail": detail})
    counts: dict[str, dict[str, int]] = {}
    for r in rows:
        counts.setdefault(r["category"], {}).setdefault(r["verdict"], 0)
        counts[r["category"]][r["verdict"]] += 1
    lines = ["| category | case | verdict | what came back |", "|---|---|---|---|"]
    lines += [f"| {r['category']} | {r['case']} | {r['verdict']} | {r['detail'].replace('|', '/')} |" for r in rows]
    lines += ["", "| category | clear | ok | raw | silent |", "|---|---|---|---|---|"]
    for cat, c in counts.items():
        lines.append(f"| {cat} | {c.get('clear', 0)} | {c.get('ok', 0)} | {c.get('raw', 0)} | {c.get('silent', 0)} |")
    report = "\n".join(lines)
    print(report)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "report.md").write_text(report + "\n")
        (Path(args.out) / "rows.json").write_text(json.dumps(rows, indent=1) + "\n")
    return 1 if any(r["verdict"] in ("raw", "silent") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
