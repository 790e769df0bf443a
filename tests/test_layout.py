"""The layers (CONTRIBUTING.md, "Layers"): the merge engine a leaf, patches below ``core``, the library below its
harness (``mergeplug.eval``), and the lab (``mergeplug_lab``: training, benchmarks, the compact Transformer) a
separate distribution on top that the library never imports; no import cycles (imports inside functions counted)."""

from __future__ import annotations

import ast
from pathlib import Path

import mergeplug

PACKAGE = Path(mergeplug.__file__).parent
HARNESS = ("mergeplug.eval",)


def _modules() -> dict[str, Path]:
    out = {}
    for f in PACKAGE.rglob("*.py"):
        parts = f.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def _imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the package's modules it imports anywhere in its file (top level, functions, TYPE_CHECKING)."""

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                module = ".".join(base + ([node.module] if node.module else [])) if node.level else node.module
                targets = [module] + [f"{module}.{a.name}" for a in node.names]
            else:
                continue
            found |= {m for t in targets if t and (m := known(t)) and m != name}
        graph[name] = found
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (as a path that returns to its start), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


GRAPH = _imports(_modules())


def test_the_graph_is_read():
    """The reader sees imports at every level (a guard against a checker that finds nothing)."""
    assert "mergeplug.patches.base" in GRAPH["mergeplug.core"] and "mergeplug.merge" in GRAPH["mergeplug.cost"]
    assert "mergeplug.eval.data" in GRAPH["mergeplug.eval.run"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycles():
    assert _cycle(GRAPH) is None, " -> ".join(_cycle(GRAPH) or [])


def test_the_library_never_imports_the_harness():
    library = [m for m in GRAPH if not m.startswith(HARNESS)]
    bad = {m: sorted(t for t in GRAPH[m] if t.startswith(HARNESS)) for m in library}
    assert not {m: t for m, t in bad.items() if t}


def test_layers():
    engine = {m for m in GRAPH if m == "mergeplug.merge" or m.startswith("mergeplug.merge.")}
    assert len(engine) > 1 and "mergeplug.merge.matching" in GRAPH["mergeplug.merge"]
    for name in engine:
        assert GRAPH[name] <= engine, f"{name}: the merge engine imports nothing of the rest of the package"
    for name, targets in GRAPH.items():
        if name.startswith("mergeplug.patches"):
            assert "mergeplug.core" not in targets and "mergeplug" not in targets, name


def test_the_library_holds_no_lab_module_and_never_imports_the_lab():
    """The wheel (the ``mergeplug`` package) holds no training, benchmark or compact-Transformer module, and nothing
    in it imports ``mergeplug_lab`` (which sits on top of the library, in lab/)."""
    names = set(GRAPH)
    assert not {n for n in names if n.split(".")[1:2] in (["train"], ["sbt"]) or ".bench" in n}
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            targets += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not [t for t in targets if t.startswith("mergeplug_lab")], name
    import mergeplug_lab

    lab = Path(mergeplug_lab.__file__).parent
    assert lab.parent.name == "lab" and {"train", "sbt"} <= {p.name for p in lab.iterdir()}


def test_no_library_module_is_long():
    """Each module of the library holds one thing: none over ~400 lines (420 with its docstrings)."""
    long = {name: n for name, path in _modules().items() if (n := len(path.read_text().splitlines())) > 420}
    assert not long, long
