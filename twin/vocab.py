"""fhirtwin's own code systems and the markers that set twin output apart from measured data."""

from __future__ import annotations

from typing import Any

TWIN_CS = "http://fhirtwin.org/fhir/CodeSystem/twin"
TAG_CS = "http://fhirtwin.org/fhir/CodeSystem/tags"
UCUM = "http://unitsofmeasure.org"
LOINC = "http://loinc.org"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"

SIMULATED_TAG: dict[str, Any] = {"system": TAG_CS, "code": "simulated", "display": "Simulated by a digital twin"}
TWIN_CATEGORY: dict[str, Any] = {
    "coding": [{"system": TWIN_CS, "code": "twin-prediction", "display": "Digital twin prediction"}],
    "text": "Digital twin prediction",
}


def interval_code(level_pct: int) -> dict[str, Any]:
    """CodeableConcept naming a prediction interval component (e.g. 80%)."""
    return {
        "coding": [{"system": TWIN_CS, "code": f"pi-{level_pct}", "display": f"{level_pct}% prediction interval"}],
        "text": f"{level_pct}% prediction interval",
    }


def quantity(value: float, unit: str) -> dict[str, Any]:
    """A UCUM Quantity."""
    return {"value": round(float(value), 4), "unit": unit, "system": UCUM, "code": unit}
