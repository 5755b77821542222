"""The CapabilityStatement: what this server really implements, generated from the routes' tables."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

SOFTWARE_VERSION = "0.1.0"

SEARCH_PARAMS: dict[str, list[tuple[str, str, str]]] = {
    "*": [("_id", "token", "Logical id of the resource")],
    "with-patient": [
        ("patient", "reference", "The patient the resource is about"),
        ("subject", "reference", "The subject of the resource"),
        ("code", "token", "A code of the resource (system|code)"),
    ],
}


def capability_statement(base: str, resource_types: list[str]) -> dict[str, Any]:
    """A valid R4 CapabilityStatement for the given resource types."""
    resources = []
    for rtype in resource_types:
        params = SEARCH_PARAMS["*"] + (SEARCH_PARAMS["with-patient"] if rtype != "Patient" else [])
        resources.append(
            {
                "type": rtype,
                "interaction": [{"code": "read"}, {"code": "search-type"}],
                "searchParam": [
                    {"name": name, "type": ptype, "documentation": doc} for name, ptype, doc in params
                ],
            }
        )
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": datetime.now(UTC).date().isoformat(),
        "publisher": "fhirtwin",
        "kind": "instance",
        "software": {"name": "fhirtwin", "version": SOFTWARE_VERSION},
        "implementation": {"description": "fhirtwin FHIR R4 server", "url": base},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [{"mode": "server", "resource": resources}],
    }
