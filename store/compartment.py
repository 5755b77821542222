"""Which patients a resource belongs to (the FHIR Patient compartment)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

_TABLE = Path(__file__).with_name("data") / "patient_compartment.json"
_CONTAINER = dict | list  # built once: ``dict | list`` in place is evaluated at every test


@cache
def compartment_elements() -> dict[str, list[str]]:
    """Resource type -> top-level elements that may reference the patient."""
    return json.loads(_TABLE.read_text())


def _patient_refs(value: Any, out: list[str]) -> None:
    """Collect ``Patient/<id>`` references anywhere inside an element value."""
    if isinstance(value, dict):
        ref = value.get("reference")
        if isinstance(ref, str) and ref.startswith("Patient/"):
            pid = ref[8:].split("/", 1)[0]
            if pid not in out:
                out.append(pid)
        for key, sub in value.items():
            if key != "reference" and isinstance(sub, _CONTAINER):
                _patient_refs(sub, out)
    elif isinstance(value, list):
        for item in value:
            _patient_refs(item, out)


def patients_of(resource: dict[str, Any]) -> list[str]:
    """Ids of every patient whose compartment holds this resource, most direct first."""
    rtype = resource.get("resourceType")
    out: list[str] = []
    if rtype == "Patient" and resource.get("id"):
        out.append(resource["id"])
    for element in compartment_elements().get(rtype, ()):
        if element in resource:
            _patient_refs(resource[element], out)
    return out
