"""Fixtures for the FHIR API tests: a fresh store behind a live server, and an httpx client on it."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from support import live_server

from fhir_server.app import create_app
from store.store import Store


@pytest.fixture(scope="module", params=["all in memory", "few in memory"])
def server(request: pytest.FixtureRequest) -> Iterator[tuple[Store, str]]:
    """(store, base URL) of a live server over an in-memory store, shared by a module's tests; every
    test runs twice: with every current version in the store's map, and with room there for ~15 only
    (so most reads, searches and conditional writes find what they need in DuckDB)."""
    store = Store() if request.param == "all in memory" else Store(cache_mb=0.02)
    with live_server(create_app(store)) as base:
        yield store, base
    store.close()


@pytest.fixture(scope="module")
def http(server: tuple[Store, str]) -> Iterator[httpx.Client]:
    """An httpx client whose base is the FHIR endpoint."""
    with httpx.Client(base_url=server[1] + "/", timeout=30) as client:
        yield client


def _patient(family: str, system: str = "urn:test", value: str | None = None) -> dict:
    """A small valid Patient with one identifier."""
    return {"resourceType": "Patient", "identifier": [{"system": system, "value": value or family}],
            "name": [{"family": family}], "gender": "female", "birthDate": "1970-01-01"}


def _observation(patient_id: str, code: str = "8867-4", value: float = 70, when: str = "2024-01-01T10:00:00Z") -> dict:
    """A vital-sign Observation about a patient."""
    return {"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "subject": {"reference": f"Patient/{patient_id}"}, "effectiveDateTime": when,
            "valueQuantity": {"value": value, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}}


@pytest.fixture(scope="session")
def patient() -> object:
    """Factory of small valid Patients: ``patient(family, system=..., value=...)``."""
    return _patient


@pytest.fixture(scope="session")
def observation() -> object:
    """Factory of vital-sign Observations: ``observation(patient_id, code=..., value=..., when=...)``."""
    return _observation
