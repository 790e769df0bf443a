"""The README and the docs stay true: README code runs, named commands and paths exist, links resolve.

Every ```python block of README.md runs (in a fresh namespace, in a temporary directory, offline); every
``make <target>``, ``mergeplug-eval <verb>`` / ``mergeplug-train <verb>`` / ``mergeplug-sbt <verb>``, every
``mergeplug-bench --option`` and ``python -m mergeplug...`` module named in README.md, CONTRIBUTING.md or docs/
exists; so do the ``scripts/``, ``benchmarks/``, ``mergeplug/``, ``assets/`` and ``tests/`` paths they name; every
relative link (and its #anchor) points to an existing file (and heading). The command-line checks run each entry
point's ``--help`` once, all in one fresh process.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import re
import shutil
import socket
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
CONTRIBUTING = ROOT / "CONTRIBUTING.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, CONTRIBUTING, *DOCS]
README_MAX_BYTES = 15_000
VERB_CLIS = ("mergeplug-eval", "mergeplug-train", "mergeplug-sbt")
CLIS = (*VERB_CLIS, "mergeplug-bench")

# a fenced block: ```lang at the start of a line, up to the closing ``` line
FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
# an inline code span (any number of backticks, may span a line break)
SPAN = re.compile(r"(`+)(.+?)\1", re.S)
# [text](target) and ![alt](target); the text may span lines
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$", re.M)
REPO_PATH = re.compile(r"(?<![\w./-])((?:scripts|benchmarks|mergeplug|tests|assets)/[\w./*-]*)")


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def fenced(text: str, lang: str | None = None) -> list[tuple[int, str]]:
    """(line number, code) of the fenced blocks of ``text`` (only those of ``lang`` if given)."""
    return [
        (text.count("\n", 0, m.start(2)) + 1, m.group(2))
        for m in FENCE.finditer(text)
        if lang is None or m.group(1) == lang
    ]


def prose(text: str) -> str:
    """``text`` without its fenced blocks and inline code (where links live)."""
    return SPAN.sub("", FENCE.sub("", text))


def code_snippets(text: str) -> list[str]:
    """Shell-like code of a page: its bash / sh blocks (comments dropped) and its inline code spans."""
    shell = [
        re.sub(r"(^|\s)#.*$", "", code, flags=re.M)
        for m in FENCE.finditer(text)
        if m.group(1) in ("bash", "sh", "shell", "")
        for code in [m.group(2)]
    ]
    spans = [m.group(2) for m in SPAN.finditer(FENCE.sub("", text))]
    return shell + spans


def all_snippets() -> list[tuple[Path, str]]:
    return [(page, snippet) for page in PAGES for snippet in code_snippets(page.read_text())]


# ------------------------------------------------------------------------------------------------ the README


def test_readme_is_short():
    size = README.stat().st_size
    assert size <= README_MAX_BYTES, (
        f"README.md is {size:,} bytes; keep it <= {README_MAX_BYTES:,} (move detail to docs/)"
    )


def test_readme_starts_with_the_two_commands():
    text = README.read_text()
    title, _, rest = text.partition("\n")
    assert title.startswith("# ")
    first = FENCE.search(rest)
    assert first is not None and first.group(1) == "bash"
    assert rest[: first.start()].strip() == "", "the two commands must come right after the title"
    commands = [line.split("#")[0].strip() for line in first.group(2).splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]


def test_every_page_exists_and_is_linked_from_the_readme():
    linked = {
        (README.parent / target.split("#")[0]).resolve()
        for target in LINK.findall(prose(README.read_text()))
        if not target.startswith(("http:", "https:", "mailto:", "#"))
    }
    missing = [rel(page) for page in [CONTRIBUTING, *DOCS] if page.resolve() not in linked]
    assert CONTRIBUTING.exists() and DOCS
    assert not missing, f"README.md does not link to {missing}"


README_PYTHON = fenced(README.read_text(), "python")


@pytest.mark.parametrize("line,code", README_PYTHON, ids=[f"README.md:{line}" for line, _ in README_PYTHON])
def test_readme_python_block_runs(line, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # whatever a block writes stays out of the checkout
    connect = socket.socket.connect

    def offline(sock, address):  # a block must not download anything: no internet connections
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            raise OSError(f"README.md:{line} tried to connect to {address}; README blocks must run offline")
        return connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", offline)
    exec(compile(code, f"README.md:{line}", "exec"), {"__name__": "__readme__"})


def test_readme_has_python_blocks():
    assert README_PYTHON, "the README's quickstart is a ```python block"


# ------------------------------------------------------------------------------ commands named in the docs


# Runs in one fresh process (the entry points switch third-party logging off for the rest of their process):
# each console script's function as its script calls it, with ``--help``; then the built-in family names.
PROBE = """
import contextlib, io, json, sys
from importlib.metadata import entry_points

scripts = {ep.name: ep for ep in entry_points(group="console_scripts")}
out = {}
for name in sys.argv[1:]:
    sys.argv = [name, "--help"]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        try:
            scripts[name].load()()
        except SystemExit as exc:
            assert exc.code in (0, None), (name, exc.code)
    out[name] = buf.getvalue()
import mergeplug.patches
out["families"] = "\\n".join(f.name for f in mergeplug.patches.families())
print(json.dumps(out))
"""


@cache
def cli_reports() -> dict[str, str]:
    """``--help`` of every command-line entry point, and the built-in family names (one fresh process)."""
    bindir = Path(sys.executable).parent
    missing = [cli for cli in CLIS if not (bindir / cli).exists() and not shutil.which(cli)]
    assert not missing, f"entry points not installed: {missing} (pip install -e .)"
    proc = subprocess.run([sys.executable, "-c", PROBE, *CLIS], capture_output=True, text=True, cwd=ROOT, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def verbs(help_text: str) -> set[str]:
    """The sub-commands listed in an argparse usage line: ``{run,report,...}``."""
    found = re.search(r"\{([\w,-]+)\}", help_text)
    return set(found.group(1).split(",")) if found else set()


def make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", text, re.M))


def test_make_targets_named_in_docs_exist():
    targets = make_targets()
    assert {"demo", "test"} <= targets
    named = {
        (page, m.group(1))
        for page, snippet in all_snippets()
        for m in re.finditer(r"(?<![\w/.-])make\s+(?:-\S+\s+)*([a-z][\w-]*)(?![\w-])", snippet)
    }
    assert any(page == README for page, _ in named)
    missing = sorted(f"{rel(page)}: make {t}" for page, t in named if t not in targets)
    assert not missing, f"not targets of the Makefile: {missing}"


def test_cli_verbs_named_in_docs_exist():
    reports = cli_reports()
    known = {cli: verbs(reports[cli]) for cli in VERB_CLIS}
    assert all(known.values()), known
    named = {
        (page, cli, verb)
        for page, snippet in all_snippets()
        for cli, verb in re.findall(r"(mergeplug-(?:eval|train|sbt))\s+([a-z][\w-]*)", snippet)
    }
    assert named
    missing = sorted(f"{rel(page)}: {cli} {verb}" for page, cli, verb in named if verb not in known[cli])
    assert not missing, f"unknown verbs: {missing}"


def test_bench_options_named_in_docs_exist():
    help_text = cli_reports()["mergeplug-bench"]
    options = set(re.findall(r"(?<![\w-])(--[a-z][\w-]*)", help_text))
    named = {
        (page, option)
        for page, snippet in all_snippets()
        for command in re.findall(r"mergeplug-bench\b[^\n|;]*", snippet)
        for option in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", command)
    }
    missing = sorted(f"{rel(page)}: mergeplug-bench {option}" for page, option in named if option not in options)
    assert not missing, f"unknown mergeplug-bench options: {missing}"


def test_python_modules_named_in_docs_exist():
    named = {
        (page, module)
        for page, snippet in all_snippets()
        for module in re.findall(r"python\s+-m\s+(mergeplug(?:\.\w+)*)", snippet)
    }
    missing = sorted(f"{rel(page)}: {module}" for page, module in named if importlib.util.find_spec(module) is None)
    assert not missing, f"no such module: {missing}"


def test_repository_paths_named_in_docs_exist():
    named = {
        (page, m.group(1).rstrip("."))
        for page, snippet in all_snippets()
        for m in REPO_PATH.finditer(snippet)
        if "<" not in snippet[m.end() : m.end() + 1]  # `assets/mergeplug_assets/checkpoints/<name>` is a pattern
    }
    assert named
    missing = sorted(f"{rel(page)}: {path}" for page, path in named if not glob.glob(str(ROOT / path)))
    assert not missing, f"paths that do not exist: {missing}"


def test_readme_lists_every_model_family():
    families = set(cli_reports()["families"].split())
    text = README.read_text()
    section = text.split("## Supported families", 1)[1].split("\n## ", 1)[0]
    listed = {
        name
        for row in section.splitlines()
        if row.startswith("| `")
        for name in re.findall(r"`([\w-]+)`", row.split("|")[1])
    }
    assert families, "no families registered"
    assert not families - listed, f"families missing from the README's table: {sorted(families - listed)}"
    assert not listed - families, f"the README lists families that do not exist: {sorted(listed - families)}"


# ------------------------------------------------------------------------------------------------- links


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for m in HEADING.finditer(FENCE.sub("", path.read_text())):
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def test_relative_links_resolve():
    broken = []
    for page in PAGES:
        for target in LINK.findall(prose(page.read_text())):
            if re.match(r"^[a-z][\w+.-]*:", target):  # http:, https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            dest = (page.parent / file_part).resolve() if file_part else page
            if not dest.exists():
                broken.append(f"{rel(page)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{rel(page)}: {target} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_link_checker_sees_links():
    """The link test would pass vacuously if the pattern stopped matching."""
    links = [t for page in PAGES for t in LINK.findall(prose(page.read_text()))]
    assert any(t.startswith("docs/") for t in links) and any(t.startswith("../README.md") for t in links)
    assert slug("`mergeplug.apply` arguments") == "mergeplugapply-arguments"
    assert slug("Benchmark: Chronos-T5 and Chronos-Bolt") == "benchmark-chronos-t5-and-chronos-bolt"
