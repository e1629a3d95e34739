"""Shared fixtures. The emulator fixtures come from the package's own pytest plugin."""

from __future__ import annotations

pytest_plugins = ["pytester"]
