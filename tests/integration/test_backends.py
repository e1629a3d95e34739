"""The backend registry: one place maps ``KEEN_SIGNUP_STORE`` to its parts.

Two promises (DESIGN §5): no module outside a backend's own modules tests a backend's
type (checked by reading the package's source), and adding a backend is one module and
one registry entry (checked with ``tests/_memory_backend.py`` through a real login
against the emulators).
"""

from __future__ import annotations

import ast
import importlib
import pathlib
import pkgutil
import typing as t

import _memory_backend
import pytest
from _flow import login
from _flow import quickstart_app

import flask_keen_signup
from flask_keen_signup import signals
from flask_keen_signup import signup_state
from flask_keen_signup.backends import REGISTRY
from flask_keen_signup.backends import STORE_NAMES
from flask_keen_signup.backends import Backend
from flask_keen_signup.delivery import Outbox
from flask_keen_signup.exceptions import ConfigurationError
from flask_keen_signup.stores import MarkerStore
from flask_keen_signup.stores import MemoryStore
from flask_keen_signup.testing import Auth0Emulator
from flask_keen_signup.testing import KeenEmulator

PACKAGE = pathlib.Path(flask_keen_signup.__file__).parent

#: A backend's own modules, where testing its own types is its business.
BACKEND_MODULES = (
    "backends/",
    "stores/",
    "delivery/sqlite_outbox.py",
    "delivery/redis_outbox.py",
    "delivery/postgres_outbox.py",
    "delivery/memory.py",
    "testing/",  # the emulators: product, but no backend wiring
)


def backend_class_names() -> set[str]:
    """Every store and outbox class the package defines (each backend module imported)."""
    for module in pkgutil.walk_packages([str(PACKAGE)], prefix="flask_keen_signup."):
        if module.name.startswith("flask_keen_signup.testing"):
            continue
        try:
            importlib.import_module(module.name)
        except ImportError:  # an optional client (redis, psycopg) is missing
            continue
    names: set[str] = set()
    pending: list[type] = [MarkerStore, Outbox]
    while pending:
        cls = pending.pop()
        for sub in cls.__subclasses__():
            if sub.__module__.startswith("flask_keen_signup."):
                names.add(sub.__name__)
            pending.append(sub)
    return names


def type_tests(source: str, names: set[str]) -> list[str]:
    """The places in ``source`` that test an object against one of ``names``: an
    ``isinstance``/``issubclass`` naming one, or a comparison with one's class name."""
    found: list[str] = []

    def named(node: ast.expr) -> list[str]:
        if isinstance(node, ast.Tuple):
            return [n for element in node.elts for n in named(element)]
        if isinstance(node, ast.Name) and node.id in names:
            return [node.id]
        if isinstance(node, ast.Attribute) and node.attr in names:
            return [node.attr]
        return []

    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("isinstance", "issubclass")
            and len(node.args) == 2
        ):
            found += [f"line {node.lineno}: {node.func.id}(..., {n})" for n in named(node.args[1])]
        elif isinstance(node, ast.Compare):
            for operand in (node.left, *node.comparators):
                if isinstance(operand, ast.Constant) and operand.value in names:
                    found.append(f"line {node.lineno}: compared with {operand.value!r}")
    return found


def test_the_scan_finds_each_kind_of_type_test() -> None:
    names = {"SQLiteStore", "RedisOutbox"}
    source = (
        "isinstance(a, SQLiteStore)\n"
        "isinstance(a, (int, stores.SQLiteStore))\n"
        "type(b).__name__ == 'RedisOutbox'\n"
        "isinstance(a, int)\n"
        "a == 'something else'\n"
    )
    assert [hit.split(":")[0] for hit in type_tests(source, names)] == [
        "line 1",
        "line 2",
        "line 3",
    ]


def test_no_module_outside_a_backend_tests_a_backends_type() -> None:
    names = backend_class_names()
    assert {"SQLiteStore", "SessionStore", "Auth0Store", "SQLiteOutbox"} <= names
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative.startswith(BACKEND_MODULES):
            continue
        hits = type_tests(path.read_text(encoding="utf-8"), names)
        if hits:
            offenders[relative] = hits
    assert offenders == {}, "ask the backend's Parts what it can do instead"


def test_no_module_outside_a_backend_compares_a_store_name() -> None:
    """``KEEN_SIGNUP_STORE``'s names are the registry's business (issue 19): config, migrate
    and the rest ask the backend (``Backend.validate``, ``Parts``) instead."""
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if not relative.startswith((*BACKEND_MODULES, "delivery/")):
            hits = type_tests(path.read_text(encoding="utf-8"), set(STORE_NAMES))
            if hits:
                offenders[relative] = hits
    assert offenders == {}


def test_the_store_names_come_from_the_registry() -> None:
    assert STORE_NAMES == ("sqlite", "session", "auth0", "redis", "postgres")
    assert tuple(REGISTRY)[: len(STORE_NAMES)] == STORE_NAMES
    assert all(backend.name == name for name, backend in REGISTRY.items())


@pytest.fixture
def memory_backend(monkeypatch: pytest.MonkeyPatch) -> t.Iterator[None]:
    """``KEEN_SIGNUP_STORE = "memory"``: one registry entry, removed after the test."""
    monkeypatch.setitem(REGISTRY, "memory", Backend("memory", _memory_backend.build))
    _memory_backend.CLAIMED.clear()
    yield


def test_a_custom_backend_is_one_module_and_one_registry_entry(
    memory_backend: None,
    keen_signup_auth0: Auth0Emulator,
    keen_signup_keen: KeenEmulator,
    tmp_path: t.Any,
) -> None:
    app, _ = quickstart_app(
        keen_signup_auth0,
        keen_signup_keen,
        str(tmp_path / "unused.sqlite3"),
        KEEN_SIGNUP_STORE="memory",
    )
    state = signup_state(app)
    recorded: list[str] = []

    def on_recorded(sender: t.Any, user_id: str, **extra: t.Any) -> None:
        recorded.append(user_id)

    try:
        with signals.signup_recorded.connected_to(on_recorded, app):
            login(app.test_client(), keen_signup_auth0, "ada@example.com", name="Ada")
            login(app.test_client(), keen_signup_auth0, "ada@example.com")  # returning
            login(app.test_client(), keen_signup_auth0, "bob@example.com", name="Bob")
        assert state.sender.flush(timeout=20) == 0
        events = keen_signup_keen.events("signups")
        assert sorted(event["name"] for event in events) == ["Ada", "Bob"]
        assert sorted(recorded) == sorted(_memory_backend.CLAIMED)
        assert len(recorded) == 2, "claimed and queued by the backend's own atomic step"
        # Delivered: the sender confirmed the markers where the backend said to.
        for user_id in recorded:
            assert state.store.lookup(user_id).value == "confirmed"
        assert not (tmp_path / "unused.sqlite3").exists(), "nothing kept in the SQLite file"
    finally:
        state.sender.shutdown(timeout=5)


def test_an_unknown_store_name_lists_the_registered_ones(
    memory_backend: None, keen_signup_auth0: Auth0Emulator, tmp_path: t.Any
) -> None:
    with pytest.raises(ConfigurationError) as raised:
        quickstart_app(
            keen_signup_auth0, None, str(tmp_path / "db.sqlite3"), KEEN_SIGNUP_STORE="nosuch"
        )
    assert "KEEN_SIGNUP_STORE" in str(raised.value) and "memory" in str(raised.value)


def test_a_store_instance_still_works_end_to_end(
    keen_signup_auth0: Auth0Emulator, keen_signup_keen: KeenEmulator, tmp_path: t.Any
) -> None:
    store = MemoryStore()
    app, _ = quickstart_app(
        keen_signup_auth0,
        keen_signup_keen,
        str(tmp_path / "db.sqlite3"),
        KEEN_SIGNUP_STORE=store,
    )
    state = signup_state(app)
    try:
        login(app.test_client(), keen_signup_auth0, "ada@example.com", name="Ada")
        login(app.test_client(), keen_signup_auth0, "ada@example.com")
        assert state.sender.flush(timeout=20) == 0
        (event,) = keen_signup_keen.events("signups")
        assert state.store is store and store.lookup(event["userId"]).value == "confirmed"
    finally:
        state.sender.shutdown(timeout=5)
