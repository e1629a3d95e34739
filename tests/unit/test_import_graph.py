"""The package's import graph has no cycle, and every module imports alone.

Read from the source with :mod:`ast`: every import a module makes at run time counts,
at module level or inside a function (a late import hides a cycle, it does not remove it);
imports under ``if TYPE_CHECKING:`` do not (they never run).
"""

from __future__ import annotations

import ast
import concurrent.futures
import subprocess
import sys
import typing as t
from pathlib import Path

import _paths
import pytest

PACKAGE = "flask_keen_signup"
ROOT = Path(_paths.ROOT)
SOURCE = ROOT / PACKAGE


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(path): path for path in sorted(SOURCE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(name: str, path: Path) -> set[str]:
    """The package's modules that ``name`` imports at run time."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, ast.ImportFrom):
                if child.level:
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[: len(base) - (child.level - 1)]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                for alias in child.names:
                    candidate = f"{target}.{alias.name}"
                    found.add(candidate if candidate in MODULES else target)
            elif isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            visit(child)

    visit(ast.parse(path.read_text()))
    return {module for module in found if module in MODULES and module != name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _cycles(graph: t.Mapping[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph[node]:
            if other not in index:
                connect(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            connect(node)
    return found


def test_the_scan_sees_imports_and_would_see_a_cycle() -> None:
    assert "flask_keen_signup.state" in GRAPH["flask_keen_signup.cli"]
    assert "flask_keen_signup.tracker" in GRAPH["flask_keen_signup.extension"]
    looped = {name: set(deps) for name, deps in GRAPH.items()}
    looped["flask_keen_signup.state"].add("flask_keen_signup.cli")
    assert _cycles(looped), "an injected cycle must be found"


def test_the_package_has_no_import_cycle() -> None:
    assert _cycles(GRAPH) == []


def _imports_alone(module: str) -> tuple[str, int, str]:
    done = subprocess.run(
        [sys.executable, "-c", f"import {module}"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    return module, done.returncode, done.stderr[-2000:]


@pytest.mark.slow
def test_every_module_imports_alone_in_a_fresh_interpreter() -> None:
    optional = {"flask_keen_signup.testing.pytest_plugin"}  # needs pytest: present here
    names = sorted(set(MODULES) - optional)
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        failures = [
            (module, stderr)
            for module, code, stderr in pool.map(_imports_alone, names)
            if code != 0
        ]
    assert failures == []
