"""The CapabilityStatement, generated from what the server implements.

Interactions, formats and operations come from ``data/capability.json`` (kept next to
the routes that implement them); search parameters per type come from the store's
search parameter registry, i.e. exactly what the search index answers.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

from fhir_server.service import SUPPORTED_TYPES
from store.search_params import params_for

SOFTWARE_VERSION = "0.2.0"
_TABLE = Path(__file__).with_name("data") / "capability.json"


@cache
def _table() -> dict[str, Any]:
    return json.loads(_TABLE.read_text())


def _operations(rtype: str) -> list[dict[str, str]]:
    return [
        {"name": op["name"], "definition": op["definition"]}
        for op in _table()["operations"]
        if op["types"] == "*" or rtype in op["types"]
    ]


@cache
def _resources() -> tuple[dict[str, Any], ...]:
    """One entry per R4 4.0.1 type served, with every search parameter of its type; types outside 4.0.1
    (ViewDefinition, a SQL on FHIR model) are served but not listed."""
    table = _table()
    flags = table["conditional"]
    out = []
    for rtype in sorted(SUPPORTED_TYPES - set(table["not_advertised_types"])):
        params = [{"name": p.code, "type": p.type} for p in sorted(params_for(rtype).values(), key=lambda p: p.code)]
        params += [{"name": n, "type": t, "documentation": d} for n, t, d in table["result_params"]]
        entry: dict[str, Any] = {
            "type": rtype,
            "interaction": [{"code": code} for code in table["type_interactions"]],
            **flags,
            "searchParam": params,
            "operation": _operations(rtype),
        }
        out.append(entry)
    return tuple(out)


def capability_statement(base: str) -> dict[str, Any]:
    """A valid R4 CapabilityStatement for this server at ``base``."""
    table = _table()
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": datetime.now(UTC).date().isoformat(),
        "publisher": "fhirtwin",
        "kind": "instance",
        "software": {"name": "fhirtwin", "version": SOFTWARE_VERSION},
        "implementation": {"description": "fhirtwin FHIR R4 server", "url": base},
        "fhirVersion": "4.0.1",
        "format": table["formats"],
        "patchFormat": table["patch_formats"],
        "rest": [{
            "mode": "server",
            "security": table["security"],
            "resource": list(_resources()),
            "interaction": [{"code": code} for code in table["system_interactions"]],
            "searchParam": [{"name": n, "type": t, "documentation": d} for n, t, d in table["system_search_params"]],
            "operation": [op for name in table["system_operations"] for op in _operations("*")
                          if op["name"] == name],
        }],
    }
