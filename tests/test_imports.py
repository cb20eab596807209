"""The package's import graph, read from the source (every `import` statement, function-level ones too):
no import cycle anywhere, and the training core (`sage` outside `sage.study`, and `callbacks`) never
imports the study tooling (`sage.study`), so `fit`/`validate` load none of it.

The one allowed crossing is the `sage` command dispatcher (`sage.cli`), which hands `sage experiment` and
`sage view` over to the study package at dispatch time (see `sage.study`).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("sage", "callbacks")
STUDY = "sage.study"
DISPATCH = {("sage.cli", "sage.study.experiment"), ("sage.cli", "sage.study.view")}
# Cycles allowed (none): any cycle fails, function-level imports included.
KNOWN_CYCLES: list[list[str]] = []


def modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module of PACKAGES under `root`."""
    found = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def imported(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The modules of `known` that the module `name` imports (`from p import m` counts as p.m when m is a
    module, else as p)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import sage.envs.x.attr`: the deepest module named
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def graph(root: Path = ROOT) -> dict[str, set[str]]:
    known = modules(root)
    return {name: imported(name, path, known) for name, path in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def core_to_study(edges: dict[str, set[str]]) -> list[tuple[str, str]]:
    def study(m: str) -> bool:
        return m == STUDY or m.startswith(STUDY + ".")

    return sorted((a, b) for a, bs in edges.items() for b in bs
                  if not study(a) and study(b) and (a, b) not in DISPATCH)


def test_the_graph_is_read():
    """Guards the checks below against reading nothing: known edges are found, lazy imports included."""
    edges = graph()
    assert "sage.module" in edges and "sage.study.plots" in edges
    assert "sage.io" in edges["sage.study.drawing"]
    assert {"sage.study.experiment", "sage.study.view"} <= edges["sage.cli"]  # imported inside main()


def test_no_import_cycle():
    assert [c for c in cycles(graph()) if c not in KNOWN_CYCLES] == []


def test_the_core_never_imports_the_study_package():
    assert core_to_study(graph()) == []


def test_the_checks_catch_a_cycle_and_a_crossing():
    edges = {"sage.a": {"sage.b"}, "sage.b": {"sage.c"}, "sage.c": {"sage.a"}, "sage.d": {"sage.study.x"},
             "sage.study.x": {"sage.a"}, "sage.cli": {"sage.study.view"}}
    assert cycles(edges) == [["sage.a", "sage.b", "sage.c"]]
    assert core_to_study(edges) == [("sage.d", "sage.study.x")]
