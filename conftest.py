"""Root pytest configuration, loaded however pytest is called (``pytest``, ``pytest notebooks/``, ...)."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config, items):
    """Executing a notebook (an nbval cell) is slow: `pytest` skips them, `pytest -m slow` runs them."""
    for item in items:
        if type(item).__name__ == "IPyNbCell":
            item.add_marker(pytest.mark.slow)
