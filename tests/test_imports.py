"""The import graph of the project's files: no cycle, and DESIGN.md's layering.

grimp reads every ``import`` statement of every file of the packages (the lazy ones inside functions
too) without running them. The rules (DESIGN.md, "imports flow one way"):

- no import cycle between the project's files (a ``TYPE_CHECKING`` import runs nothing and is left out);
- nothing outside ``api`` imports ``api``;
- ``small_model`` and ``large_model`` never import each other, directly or through another module;
- ``db`` imports no ML code (torch, transformers and the like, ``small_model``, ``large_model``);
- ``core`` imports none of the other parts.

The checks are plain functions over a graph, so a made-up graph proves that they catch each kind
of violation.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Iterator
from pathlib import Path

import grimp
import pytest

REPO = Path(__file__).resolve().parents[1]
ML_PACKAGES = frozenset({"torch", "transformers", "peft", "bitsandbytes", "accelerate", "unsloth", "sklearn"})
TIERS = ("small_model", "large_model")


def project_packages(repo: Path = REPO) -> list[str]:
    """The top-level packages pyproject.toml installs (``[tool.setuptools.packages.find] include``)."""
    config = tomllib.loads((repo / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = config["tool"]["setuptools"]["packages"]["find"]["include"]
    names = {p.rstrip("*").rstrip(".") for p in patterns}
    return sorted(n for n in names if "." not in n and (repo / n / "__init__.py").is_file())


def build_graph(packages: Iterable[str], *, type_checking: bool) -> grimp.ImportGraph:
    """The import graph of ``packages`` with external packages as single nodes (no cache written)."""
    return grimp.build_graph(
        *packages, include_external_packages=True, exclude_type_checking_imports=not type_checking, cache_dir=None
    )


def _top(module: str) -> str:
    return module.split(".")[0]


def _edges(graph: grimp.ImportGraph, packages: Iterable[str]) -> Iterator[tuple[str, str]]:
    """Every direct import ``(importer, imported)`` made by a module of ``packages``."""
    tops = set(packages)
    for module in sorted(graph.modules):
        if _top(module) in tops:
            for imported in sorted(graph.find_modules_directly_imported_by(module)):
                yield module, imported


def _where(graph: grimp.ImportGraph, importer: str, imported: str) -> str:
    details = graph.get_import_details(importer=importer, imported=imported)
    lines = ", ".join(f"line {d['line_number']}" for d in details) or "?"
    return f"{importer} -> {imported} ({lines})"


def find_cycles(graph: grimp.ImportGraph, packages: Iterable[str]) -> list[list[str]]:
    """Each import cycle among the modules of ``packages``: one shortest loop per strongly connected group."""
    tops = set(packages)
    nodes = sorted(m for m in graph.modules if _top(m) in tops)
    succ = {m: sorted(w for w in graph.find_modules_directly_imported_by(m) if _top(w) in tops) for m in nodes}
    # Tarjan's strongly connected components, iterative
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(succ[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(succ[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1 or node in succ[node]:
                    groups.append(sorted(group))
    return [_shortest_loop(group, succ) for group in groups]


def _shortest_loop(group: list[str], succ: dict[str, list[str]]) -> list[str]:
    """A shortest path from the group's first module back to itself, through the group (breadth first)."""
    start, members = group[0], set(group)
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in succ[node]:
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if child in members and child not in parents:
                    parents[child] = node
                    following.append(child)
        frontier = following
    return group  # unreachable for a strongly connected group


def layering_violations(graph: grimp.ImportGraph, packages: Iterable[str]) -> list[str]:
    """The imports that break DESIGN.md's layering, each with where it is."""
    tops = sorted(set(packages))
    found = []
    for importer, imported in _edges(graph, tops):
        source, target = _top(importer), _top(imported)
        if source == target:
            continue
        if target == "api":
            found.append(f"nothing imports api: {_where(graph, importer, imported)}")
        if source == "core" and target in tops:
            found.append(f"core imports none of the other parts: {_where(graph, importer, imported)}")
        if source == "db" and (target in ML_PACKAGES or target in TIERS):
            found.append(f"db imports no ML code: {_where(graph, importer, imported)}")
    # the model tiers and db, also through a module of another part
    pairs = [(a, b) for a in TIERS for b in TIERS if a != b] + [("db", tier) for tier in TIERS]
    for source, target in pairs:
        if source in tops and target in tops and graph.chain_exists(source, target, as_packages=True):
            chain = graph.find_shortest_chain(source, target, as_packages=True) or ()
            found.append(f"{source} never imports {target}: {' -> '.join(chain)}")
    return sorted(set(found))


# ----------------------------------------------------------------------------- the project


@pytest.fixture(scope="module")
def packages() -> list[str]:
    found = project_packages()
    assert {"api", "core", "data_gen", "db", "large_model", "small_model"} <= set(found)
    return found


def test_no_import_cycle_between_the_project_files(packages: list[str]) -> None:
    cycles = find_cycles(build_graph(packages, type_checking=False), packages)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(loop) for loop in cycles)


def test_imports_keep_the_layering_of_design_md(packages: list[str]) -> None:
    violations = layering_violations(build_graph(packages, type_checking=True), packages)
    assert not violations, "layering (DESIGN.md) broken:\n" + "\n".join(violations)


# ----------------------------------------------------------------------------- the checks themselves


def test_the_checks_catch_cycles_and_layering_violations() -> None:
    """A made-up graph with every kind of violation, each of which the checks name."""
    graph = grimp.ImportGraph()
    names = ["api", "core", "data_gen", "db", "large_model", "small_model"]
    for name in names:
        graph.add_module(name)
    for importer, imported in [
        ("core.a", "core.b"),
        ("core.b", "core.c"),
        ("core.c", "core.a"),
        ("core.c", "db.models"),
        ("db.models", "torch"),
        ("db.models", "small_model.x"),
        ("small_model.x", "api.routes"),
        ("api.routes", "small_model.x"),
        ("small_model.x", "data_gen.y"),
        ("data_gen.y", "large_model.z"),
    ]:
        graph.add_import(importer=importer, imported=imported, line_number=1, line_contents=f"import {imported}")
    cycles = find_cycles(graph, names)
    assert sorted(cycles) == [["api.routes", "small_model.x", "api.routes"], ["core.a", "core.b", "core.c", "core.a"]]
    text = "\n".join(layering_violations(graph, names))
    assert "nothing imports api: small_model.x -> api.routes (line 1)" in text
    assert "core imports none of the other parts: core.c -> db.models" in text
    assert "db imports no ML code: db.models -> torch" in text
    assert "db imports no ML code: db.models -> small_model.x" in text
    assert "small_model never imports large_model: small_model.x -> data_gen.y -> large_model.z" in text
    assert "db never imports small_model" in text and "large_model never imports small_model" not in text
    assert "db never imports large_model: db.models -> small_model.x -> data_gen.y -> large_model.z" in text
    assert len(layering_violations(graph, names)) == 7
