"""The suite fails on a resource left to the garbage collector (a warning in ``__del__``).

Python 3.13 warns ``ResourceWarning: unclosed database`` for every sqlite3 connection
collected unclosed. Raised in ``__del__``, the warning is "unraisable": pytest turns it
into a ``PytestUnraisableExceptionWarning``, which ``filterwarnings = error`` (setup.cfg)
makes a failure. This runs pytest with the project's own configuration on a test that
leaks, to show the leak fails the run on every Python (an explicit ``ResourceWarning`` from
``__del__``; on 3.13 also a real sqlite3 connection).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import typing as t

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

LEAKS = {
    "del": """
        import gc, warnings

        class Leaky:
            def __del__(self):
                warnings.warn("unclosed thing", ResourceWarning)

        def test_leaks():
            Leaky()
            gc.collect()

        def test_next():
            gc.collect()
        """,
    "sqlite": """
        import gc, sqlite3

        def test_leaks():
            sqlite3.connect(":memory:")
            gc.collect()

        def test_next():
            gc.collect()
        """,
}


@pytest.mark.parametrize("leak", sorted(LEAKS))
def test_a_leaked_resource_fails_the_suite(tmp_path: t.Any, leak: str) -> None:
    if leak == "sqlite" and sys.version_info < (3, 13):
        pytest.skip("sqlite3 warns about unclosed connections from Python 3.13 on")
    test_file = tmp_path / "test_leak.py"
    test_file.write_text(textwrap.dedent(LEAKS[leak]))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-c",
            os.path.join(ROOT, "setup.cfg"),
            "--rootdir",
            str(tmp_path),
            str(test_file),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=str(tmp_path),
    )
    assert result.returncode != 0, result.stdout
    assert "ResourceWarning" in result.stdout, result.stdout
