"""The sender's modules keep their seams: no import cycle, each imports alone.

``delivery/sender.py`` is a facade over one-job modules (issue 9). These tests read the
modules' runtime imports (``if TYPE_CHECKING`` blocks excluded: they never run) and fail
on a cycle among them, on ``shutdown`` knowing the ``Sender`` type, and on a module that
cannot be imported first in a fresh interpreter.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import _paths
import pytest

ROOT = _paths.ROOT
DELIVERY = os.path.join(ROOT, "flask_keen_signup", "delivery")
MODULES = [
    "sender",
    "shutdown",
    "worker",
    "batching",
    "outcomes",
    "leases",
    "transport",
    "upkeep",
    "tuning",
]
PACKAGE = "flask_keen_signup.delivery"


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def runtime_imports(name: str) -> set[str]:
    """Sibling modules of ``delivery`` that ``name`` imports when it runs."""
    with open(os.path.join(DELIVERY, f"{name}.py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and _is_type_checking(node):
                visit(node.orelse)
                continue
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    found.add(node.module.split(".")[0])
                else:  # from . import x: x may be a module of the package
                    found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and (
                node.module.startswith(PACKAGE + ".")
            ):
                found.add(node.module[len(PACKAGE) + 1 :].split(".")[0])
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.stmt):
                    visit([child])

    visit(tree.body)
    return {m for m in found if os.path.exists(os.path.join(DELIVERY, f"{m}.py"))}


def test_no_import_cycle_among_the_sender_modules() -> None:
    graph = {name: runtime_imports(name) for name in MODULES}
    seen: set[str] = set()

    def walk(node: str, path: list[str]) -> None:
        if node in path:
            cycle = path[path.index(node) :] + [node]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if node in seen or node not in graph:
            return
        for nxt in sorted(graph[node]):
            walk(nxt, [*path, node])
        seen.add(node)

    for name in MODULES:
        walk(name, [])
    assert "shutdown" in graph["sender"]  # the sender registers itself, not the reverse


def test_shutdown_does_not_name_the_sender() -> None:
    with open(os.path.join(DELIVERY, "shutdown.py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    imported = {
        node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    }
    assert not {m for m in imported if m.endswith("sender")}


@pytest.mark.parametrize("name", MODULES)
def test_each_module_imports_first_and_alone(name: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", f"import {PACKAGE}.{name}"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": ROOT},
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def test_the_tuning_is_checked_once_and_clamped() -> None:
    from flask_keen_signup.delivery.tuning import Tuning

    for bad in (
        {"batch_size": 0},
        {"max_attempts": 0},
        {"flush_interval": 0},
        {"max_batch_bytes": 10_000_001},
    ):
        with pytest.raises(ValueError):
            Tuning(**bad)  # type: ignore[arg-type]
    tuning = Tuning(batch_size=4, probe_size=10, flush_interval=0.05, linger=1.0)
    assert (tuning.probe_size, tuning.linger) == (4, 0.05)


def test_the_public_constructor_still_takes_every_setting() -> None:
    from flask_keen_signup.delivery.memory import MemoryOutbox
    from flask_keen_signup.delivery.sender import Sender
    from flask_keen_signup.keen import KeenClient

    with pytest.raises(ValueError, match="collection_batch_size"):
        Sender(MemoryOutbox(), KeenClient("p", "k"), collection_batch_size=0)
    sender = Sender(
        MemoryOutbox(),
        KeenClient("p", "k", api_url="http://127.0.0.1:9"),
        collection_batch_size=7,
        probe_size=3,
        lease_seconds=9.0,
        retention=60.0,
        handle_signals=False,
    )
    tuning = sender.tuning
    assert (tuning.batch_size, tuning.probe_size, tuning.lease_seconds) == (7, 3, 9.0)
    assert tuning.retention == 60.0 and tuning.batch_size == 7
    assert not sender.running and sender.owner.endswith(sender.leases.nonce)
    sender.client.close()
