"""Where things are, for tests in any directory of the suite."""

from __future__ import annotations

import importlib
import importlib.util
import os
import types

#: This directory (the shared helpers, ``mp_app.py``).
TESTS = os.path.dirname(os.path.abspath(__file__))
#: The repository's root (``example_app/``, ``docs/``, the package).
ROOT = os.path.dirname(TESTS)


def sibling(name: str, near: str) -> types.ModuleType:
    """Another test module in the directory of ``near`` (a test module's ``__file__``),
    imported by name, or from its file under ``--import-mode=importlib``."""
    try:
        return importlib.import_module(name)
    except ImportError:
        path = os.path.join(os.path.dirname(os.path.abspath(near)), f"{name}.py")
        spec = importlib.util.spec_from_file_location(f"_keen_signup_{name}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
