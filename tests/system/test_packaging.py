"""What a user installs: the wheel and the sdist carry the licence the metadata declares
and the Redis scripts (package data), and the ``testing`` extra is just what the pytest
plugin needs."""

from __future__ import annotations

import configparser
import os
import subprocess
import sys
import tarfile
import typing as t
import zipfile

import pytest
from _paths import ROOT

pytestmark = pytest.mark.slow

#: The Redis scripts, read by the package at import: a wheel without them is broken.
LUA = os.path.join(ROOT, "flask_keen_signup", "lua")


def build(kind: str, out: str) -> str:
    """Build as pip does for a user: in an isolated environment from pyproject.toml."""
    if kind == "wheel":
        command = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", out, "."]
    else:
        code = "import sys; from setuptools import build_meta; build_meta.build_sdist(sys.argv[1])"
        command = [sys.executable, "-c", code, out]
    subprocess.run(
        command,
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=300,
    )
    (name,) = os.listdir(out)
    return os.path.join(out, name)


def test_the_wheel_and_the_sdist_carry_the_mit_licence_and_the_lua_scripts(
    tmp_path: t.Any,
) -> None:
    wheel = build("wheel", str(tmp_path / "wheel"))
    sdist = build("sdist", str(tmp_path / "sdist"))
    scripts = sorted(f"flask_keen_signup/lua/{name}" for name in os.listdir(LUA))
    assert scripts
    with zipfile.ZipFile(wheel) as archive:
        assert set(scripts) <= set(archive.namelist()), archive.namelist()
        licences = [n for n in archive.namelist() if n.endswith("LICENSE")]
        assert licences, archive.namelist()
        assert b"MIT License" in archive.read(licences[0])
        metadata = archive.read(next(n for n in archive.namelist() if n.endswith("METADATA")))
    assert b"License: MIT" in metadata or b"License-Expression: MIT" in metadata
    with tarfile.open(sdist) as archive:
        assert any(n.endswith("/LICENSE") for n in archive.getnames())
        assert all(any(n.endswith(f"/{s}") for n in archive.getnames()) for s in scripts)


def test_the_testing_extra_is_only_pytest() -> None:
    config = configparser.ConfigParser()
    config.read(os.path.join(ROOT, "setup.cfg"))
    testing = config["options.extras_require"]["testing"].split()
    assert [r.split(">")[0].split("=")[0] for r in testing] == ["pytest"]
