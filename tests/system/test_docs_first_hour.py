"""The first hour of a team, run exactly as the docs print it.

Two pages promise code that runs as written: ``docs/testing.md`` opens with a test of Auth0's
quickstart, and ``docs/migrating-from-the-rule.md`` has an offline rehearsal of the
migration. Both are extracted from the Markdown here and run in a fresh folder beside the
literal quickstart (``example_app/tests/quickstart/server.py``), so the docs cannot drift from
what works.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys

import pytest
from _paths import ROOT

pytestmark = pytest.mark.slow

QUICKSTART = os.path.join(ROOT, "example_app", "tests", "quickstart")
BIN = os.path.dirname(sys.executable)


def code_block(page: str, after: str, language: str) -> str:
    """The first ``language`` block after the line ``after`` in ``docs/<page>``."""
    with open(os.path.join(ROOT, "docs", page), encoding="utf-8") as f:
        text = f.read()
    start = text.index(after)
    match = re.compile(rf"^```{language}\n(.*?)^```$", re.M | re.S).search(text, start)
    assert match is not None, f"no {language} block after {after!r} in {page}"
    return match.group(1)


@pytest.fixture
def app_folder(tmp_path):
    """A team's project folder: Auth0's quickstart as written, and nothing of ours."""
    shutil.copy(os.path.join(QUICKSTART, "server.py"), tmp_path / "server.py")
    shutil.copytree(os.path.join(QUICKSTART, "templates"), tmp_path / "templates")
    return tmp_path


def clean_environ() -> dict[str, str]:
    environ = {
        k: v for k, v in os.environ.items() if not k.startswith(("FLASK_", "AUTH0_", "KEEN_"))
    }
    environ["PATH"] = BIN + os.pathsep + environ.get("PATH", "")
    environ.pop("PYTHONPATH", None)
    return environ


def test_the_quickstart_test_in_the_docs_passes(app_folder):
    block = code_block("testing.md", "## Your quickstart, as written", "python")
    assert len(block.splitlines()) <= 15
    (app_folder / "test_server.py").write_text(block)

    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_server.py"],
        cwd=app_folder,
        env=clean_environ(),
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 passed" in run.stdout


def test_the_example_apps_copy_is_the_docs_test():
    """``example_app/tests/quickstart/test_server.py`` is the page's test, to the letter."""
    block = code_block("testing.md", "## Your quickstart, as written", "python")
    with open(os.path.join(QUICKSTART, "test_server.py"), encoding="utf-8") as f:
        assert f.read() == block


def test_the_offline_rehearsal_runs_as_printed(app_folder):
    script = code_block("migrating-from-the-rule.md", "### Rehearse offline", "bash")
    process = subprocess.Popen(
        ["bash", "-e", "-c", script],
        cwd=app_folder,
        env=clean_environ(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=120)
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # the emulators, whatever happened
        except ProcessLookupError:
            pass
    assert process.returncode == 0, output

    tables = [
        {row[0]: int(row[1]) for row in re.findall(r"^(marked|reported|already known)\s+(\d+)$",
                                                   chunk, re.M)}
        for chunk in re.split(r"^\s+users$", output, flags=re.M)[1:]
    ]
    assert tables == [
        {"marked": 2, "reported": 1, "already known": 0},  # --dry-run
        {"marked": 2, "reported": 1, "already known": 0},
        {"marked": 0, "reported": 0, "already known": 3},
    ], output
    extraction, _ = json.JSONDecoder().raw_decode(output, output.rindex('{"result"'))
    (event,) = extraction["result"]
    assert event["userId"] == "auth0|gap"
    assert event["name"] == "Grace"
    assert event["backfilled"] is True
    assert event["keen"]["timestamp"].startswith("2026-11-25T08:30:00")
    assert not (app_folder / "instance").exists()
