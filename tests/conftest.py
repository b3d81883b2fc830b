"""Top-level pytest configuration shared by unit and integration tests.

Tests under ``tests/integration`` get the ``integration`` marker automatically, so
``pytest -m "not integration"`` runs the fast, unprivileged unit tests only.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

_INTEGRATION_DIR = REPO_ROOT / "tests" / "integration"


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _INTEGRATION_DIR in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.integration)


def pytest_configure(config):
    # Debian's Mininet uses distutils.StrictVersion; not ours to fix.
    config.addinivalue_line("filterwarnings", "ignore:distutils Version classes are deprecated:DeprecationWarning")
