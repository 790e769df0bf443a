"""The result store of ``mergeplug-eval run``: one writer per directory, resumes only with the same options,
survives a row cut short by a kill."""

import json
import logging
import subprocess
import sys

import pytest

from mergeplug.eval import run, write_report
from mergeplug.eval.cli import main
from mergeplug.store import DirectoryInUse, RowFile, read_rows

NAIVE = ["m3_yearly", "tourism_yearly"]


def _rows(out):
    return [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]


def test_two_concurrent_runs_into_one_directory_leave_no_duplicate_rows(tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "mergeplug.eval.cli", "run", "--model", "seasonal-naive", "--datasets"]
    cmd += ["competition", "--out", str(out), "--no-progress"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=600), *p.communicate()) for p in procs]
    for code, _, err in results:  # each finished, or was refused because the other was writing
        assert code == 0 or (code == 2 and "is in use by a mergeplug-eval run (pid" in err), err
    assert any(code == 0 for code, *_ in results)
    rows = _rows(out)
    keys = [(r["dataset"], r["setting"]) for r in rows]
    assert len(keys) == len(set(keys)) == 10  # the ten competition datasets, once each
    for code, text, _ in results:  # a printed report counts every dataset once
        if code == 0:
            assert text.count("| seasonal-naive |") == 11  # ten rows and the aggregate


def test_a_directory_in_use_is_refused_before_any_work(tmp_path, capsys):
    out = tmp_path / "out"
    with RowFile(out, "results.jsonl", what="a test holding the lock"):
        assert main(["run", "--model", "seasonal-naive", "--datasets", "m3_yearly", "--out", str(out)]) == 2
        assert "is in use by a test holding the lock (pid" in capsys.readouterr().err
        with pytest.raises(DirectoryInUse):
            run("seasonal-naive", ["m3_yearly"], out=out, progress=False)
    assert not (out / "results.jsonl").exists()
    run("seasonal-naive", ["m3_yearly"], out=out, progress=False)  # the lock went with its holder
    assert len(_rows(out)) == 1


@pytest.mark.parametrize(
    "changed",
    [dict(max_series=4), dict(windows=2), dict(prediction_length=3), dict(seed=1), dict(batch_size=8)],
)
def test_resuming_with_other_options_is_refused_naming_them(tmp_path, changed):
    first = dict(out=tmp_path / "out", progress=False, max_series=3, batch_size=16)
    run("seasonal-naive", NAIVE, **first)
    key = next(iter(changed))
    with pytest.raises(ValueError, match=rf"other settings \({key}: .* there, {changed[key]!r} now\)"):
        run("seasonal-naive", NAIVE, **{**first, **changed})
    assert len(_rows(tmp_path / "out")) == 2  # nothing was added
    rows = run("seasonal-naive", NAIVE, **first)  # the same options resume
    assert len(rows) == 2


def test_a_row_cut_short_by_a_kill_is_skipped_said_and_recomputed(tmp_path, caplog):
    out = tmp_path / "out"
    rows = run("seasonal-naive", NAIVE, out=out, progress=False, max_series=3)
    lines = (out / "results.jsonl").read_text().splitlines()
    torn = lines[-1][: len(lines[-1]) // 2]
    (out / "results.jsonl").write_text("\n".join(lines[:-1]) + "\n" + torn)  # killed mid-write
    with caplog.at_level(logging.WARNING, logger="mergeplug"):
        text = write_report(out)  # the report reads what is complete
    assert "| m3_yearly | seasonal-naive |" in text and "| tourism_yearly |" not in text
    assert "skipped 1 incomplete row" in caplog.text
    assert main(["report", str(out)]) == 0
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mergeplug"):
        again = run("seasonal-naive", NAIVE, out=out, progress=False, max_series=3)
    assert "dropped an incomplete last row" in caplog.text
    assert again == rows and _rows(out) == rows  # recomputed; the file is whole again
    (out / "results.jsonl").write_text((out / "results.jsonl").read_text() + "\n\n")  # blank lines are harmless
    assert read_rows(out / "results.jsonl") == (rows, 0)


def test_report_of_a_directory_without_results_is_a_one_line_error(tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "results.jsonl not found" in capsys.readouterr().err
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "results.jsonl").write_text('{"label": "x"}\n')
    assert main(["report", str(tmp_path / "other")]) == 2
    assert "not a mergeplug-eval result" in capsys.readouterr().err
