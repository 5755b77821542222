"""Fixtures shared by the store's search tests."""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest

from store.store import Store


@pytest.fixture(scope="module")
def store(synthea_resources: list[dict]) -> Iterator[Store]:
    """Patients, Observations and Encounters of the Synthea fixture in a store of the module's own
    (the tests write to it)."""
    s = Store(":memory:")
    s.write([copy.deepcopy(r) for r in synthea_resources if r["resourceType"] in ("Patient", "Observation", "Encounter")])
    yield s
    s.close()
