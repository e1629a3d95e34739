"""Where things are, for tests in any directory of the suite."""

from __future__ import annotations

import os

#: This directory (the shared helpers, ``mp_app.py``).
TESTS = os.path.dirname(os.path.abspath(__file__))
#: The repository's root (``example_app/``, ``docs/``, the package).
ROOT = os.path.dirname(TESTS)
