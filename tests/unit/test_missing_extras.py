"""An optional backend whose package is not installed says which extra to install."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest


@pytest.mark.parametrize(
    ("package", "module", "name", "extra"),
    [
        ("redis", "flask_keen_signup.stores.redis", "connect", "redis"),
        ("psycopg", "flask_keen_signup.stores.postgres", "PostgresStore", "postgres"),
    ],
)
def test_a_missing_package_raises_missing_dependency_error_naming_the_extra(
    package: str, module: str, name: str, extra: str
) -> None:
    code = textwrap.dedent(
        f"""
        import sys
        sys.modules[{package!r}] = None  # as if the package were not installed
        from flask_keen_signup.exceptions import MissingDependencyError
        try:
            from {module} import {name}
        except MissingDependencyError as exc:
            print("MISSING:", exc)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert "MISSING:" in out
    assert f"pip install flask-keen-signup[{extra}]" in out
