"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from support import FIXTURES

from ingest.pipeline import Ingestor
from store.store import Store


@pytest.fixture

def synthea_dir() -> Path:
    """The shipped Synthea subset (NDJSON + two transaction Bundles)."""
    return FIXTURES / "synthea"


@pytest.fixture(scope="session")
def synthea_store() -> Store:
    """A read-only store holding the Synthea NDJSON subset (shared by the whole session: do not write)."""
    store = Store(":memory:")
    Ingestor(store).ingest_paths([FIXTURES / "synthea" / "ndjson"])
    yield store
    store.close()


@pytest.fixture(scope="session")
def synthea_resources() -> list[dict]:
    """The same resources as plain dicts, for computing expected answers independently."""
    out = []
    for path in sorted((FIXTURES / "synthea" / "ndjson").glob("*.ndjson")):
        out += [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
    return out
