"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import FIXTURES


@pytest.fixture

def synthea_dir() -> Path:
    """The shipped Synthea subset (NDJSON + two transaction Bundles)."""
    return FIXTURES / "synthea"
