"""Twin results as FHIR R4: predicted Observations, the model as a Device, Provenance.

Every published number says which model and version produced it (method,
Device), from which inputs (derivedFrom, Provenance.entity) and how uncertain it
is (80%/95% interval components); a tag and a category set it apart from
measured data for any client. Ids are deterministic per (patient, model,
quantity, origin) so refits replace earlier output with new versions instead of
piling up copies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from store.ids import stable_id
from store.store import fhir_instant
from twin.vocab import OBS_CATEGORY, SIMULATED_TAG, TWIN_CATEGORY, TWIN_CS, UCUM, interval_code, quantity


@dataclass(frozen=True)
class PredictedValue:
    """One predicted measurement with its intervals, in the measure's unit."""

    time: datetime
    mean: float
    intervals: dict[int, tuple[float, float]]  # level % -> (low, high)


@dataclass(frozen=True)
class ModelRef:
    """Which model produced a result."""

    model_id: str
    version: str
    title: str


def model_device(model: ModelRef) -> dict[str, Any]:
    """The model as a FHIR Device, so Provenance and Observation.device can point at it."""
    return {
        "resourceType": "Device",
        "id": stable_id("model", model.model_id, model.version),
        "meta": {"tag": [SIMULATED_TAG]},
        "status": "active",
        "deviceName": [{"name": model.title, "type": "model-name"}],
        "type": {"coding": [{"system": TWIN_CS, "code": model.model_id, "display": model.title}]},
        "version": [{"value": model.version}],
        "identifier": [model_identifier(model)["identifier"]],
    }


def model_identifier(model: ModelRef) -> dict[str, Any]:
    """A logical reference to the model (its Device identifier): what a returned, unstored result cites,
    since ``Device/<id>`` exists on the server only once a twin has been published."""
    return {"identifier": {"system": f"{TWIN_CS}/model", "value": f"{model.model_id}@{model.version}"},
            "display": f"{model.model_id} {model.version}"}


def predicted_observation(
    *,
    patient_id: str,
    model: ModelRef,
    code: dict[str, Any],
    category_code: str,
    unit: str,
    value: PredictedValue,
    derived_from: list[str],
    origin: datetime,
    key: str,
    based_on: str | None = None,
) -> dict[str, Any]:
    """A preliminary Observation holding one predicted value and its prediction intervals."""
    device = model_device(model)
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "id": stable_id("prediction", patient_id, model.model_id, key),
        "meta": {"tag": [SIMULATED_TAG]},
        "status": "preliminary",
        "category": [
            {"coding": [{"system": OBS_CATEGORY, "code": category_code}]},
            TWIN_CATEGORY,
        ],
        "code": code,
        "subject": {"reference": f"Patient/{patient_id}"},
        "effectiveDateTime": fhir_instant(value.time),
        "issued": fhir_instant(origin),
        "valueQuantity": quantity(value.mean, unit),
        "method": {
            "coding": [{"system": TWIN_CS, "code": model.model_id, "display": model.title, "version": model.version}],
            "text": f"{model.model_id} {model.version}",
        },
        "device": {"reference": f"Device/{device['id']}"},
        "component": [
            {"code": interval_code(level), "valueRange": {"low": quantity(lo, unit), "high": quantity(hi, unit)}}
            for level, (lo, hi) in sorted(value.intervals.items())
        ],
        "derivedFrom": [{"reference": ref} for ref in derived_from],
        "note": [{"text": f"Simulated by {model.model_id} {model.version} from data as of {fhir_instant(origin)}."}],
    }
    if based_on:
        obs["basedOn"] = [{"reference": based_on}]
    return obs


def provenance(
    *, targets: list[str], model: ModelRef, inputs: list[str], recorded: datetime, patient_id: str
) -> dict[str, Any]:
    """Provenance tying twin output to the model (agent) and the data snapshot (entities)."""
    device = model_device(model)
    return {
        "resourceType": "Provenance",
        "id": stable_id("provenance", patient_id, model.model_id, *sorted(targets)),
        "meta": {"tag": [SIMULATED_TAG]},
        "target": [{"reference": t} for t in targets],
        "recorded": fhir_instant(recorded),
        "activity": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation",
                    "code": "CREATE",
                    "display": "create",
                }
            ],
            "text": "digital twin simulation",
        },
        "agent": [
            {
                "type": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                            "code": "assembler",
                        }
                    ]
                },
                "who": {"reference": f"Device/{device['id']}", "display": f"{model.model_id} {model.version}"},
            }
        ],
        "entity": [{"role": "source", "what": {"reference": ref}} for ref in inputs],
    }


PARAMETER_UNITS: dict[str, tuple[str, bool]] = {
    "l_h": ("L/h", True), "l": ("L", True), "ml_per_uu_min": ("mL/uU/min", False), "mg_dl_min": ("mg/dL/min", True),
    "per_min": ("/min", True), "dl": ("dL", True), "min": ("min", True), "h": ("h", True), "mg_l": ("mg/L", True),
    "mg_dl": ("mg/dL", True),
}
"""Parameter-name suffix → (unit, whether it is UCUM): insulin's µU has no UCUM code ("U" is the
enzyme unit), so insulin sensitivity keeps its unit as text only."""


def _parameter_quantity(value: float, name: str) -> dict[str, Any]:
    """A Quantity in the unit the parameter name carries in its suffix (``cl_l_h`` → L/h)."""
    suffix = next((s for s in sorted(PARAMETER_UNITS, key=len, reverse=True) if name.endswith("_" + s)), None)
    unit, ucum = PARAMETER_UNITS[suffix] if suffix else ("1", True)
    return {"value": round(value, 8), "unit": unit, **({"system": UCUM, "code": unit} if ucum else {})}


def full_url(resource_id: str) -> str:
    """The ``urn:uuid`` a resource of a returned (not stored) Bundle is known by: references between
    entries of that Bundle use it, since ``Observation/<id>`` would point into the server."""
    h = resource_id.ljust(32, "0")[:32]
    return f"urn:uuid:{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def parameters_observation(
    *, patient_id: str, model: ModelRef, posterior: Any, derived_from: list[str], origin: datetime, key: str
) -> dict[str, Any]:
    """The fitted parameters (MAP) with 95% credible intervals and CVs, one component each."""
    z = 1.959964
    components = []
    for i, name in enumerate(posterior.names):
        sd = float(posterior.log_cov[i, i]) ** 0.5
        mid = float(posterior.log_map[i])
        lo, hi = math.exp(mid - z * sd), math.exp(mid + z * sd)
        components.append({
            "code": {"coding": [{"system": f"{TWIN_CS}/parameter", "code": name}], "text": name},
            "valueQuantity": _parameter_quantity(math.exp(mid), name),
            "referenceRange": [{
                "low": _parameter_quantity(lo, name), "high": _parameter_quantity(hi, name),
                "text": f"95% credible interval; CV {posterior.cv[name] * 100:.1f}%",
            }],
        })
    ident = posterior.identifiability()
    if ident["starts"]:
        note = (f"MAP with Laplace approximation from {ident['starts']} starts "
                f"({ident['starts_converged_to_map']} reached the MAP); data fingerprint {posterior.data_fingerprint}.")
    else:
        note = ("Population prior only (no measurement to fit before the origin): typical values for the "
                f"patient's covariates with the population variability; data fingerprint {posterior.data_fingerprint}.")
    if ident["poorly_identified"]:
        note += f" Poorly identified (CV > 40%): {', '.join(ident['poorly_identified'])}."
    return {
        "resourceType": "Observation",
        "id": stable_id("parameters", patient_id, model.model_id, key),
        "meta": {"tag": [SIMULATED_TAG]},
        "status": "preliminary",
        "category": [TWIN_CATEGORY],
        "code": {"coding": [{"system": TWIN_CS, "code": "fitted-parameters", "display": "Fitted twin parameters"}],
                 "text": f"Fitted parameters of {model.model_id} {model.version}"},
        "subject": {"reference": f"Patient/{patient_id}"},
        "effectiveDateTime": fhir_instant(origin),
        "method": {"coding": [{"system": TWIN_CS, "code": model.model_id, "display": model.title,
                               "version": model.version}], "text": f"{model.model_id} {model.version}"},
        "device": {"reference": f"Device/{model_device(model)['id']}"},
        "component": components,
        "derivedFrom": [{"reference": ref} for ref in derived_from],
        "note": [{"text": note}],
    }


def care_plan(
    *, patient_id: str, model: ModelRef, title: str, description: str, activities: list[dict[str, Any]], key: str,
    derived: str, period: tuple[datetime, datetime | None],
) -> dict[str, Any]:
    """A proposed CarePlan holding a twin's recommendation (one activity per proposed action) for the
    ``period`` it was made for (open-ended: until the twin is refitted)."""
    start, end = period
    return {
        "resourceType": "CarePlan",
        "id": stable_id("careplan", patient_id, model.model_id, key),
        "meta": {"tag": [SIMULATED_TAG]},
        "status": "active",
        "intent": "proposal",
        "category": [TWIN_CATEGORY],
        "title": title,
        "description": description,
        "subject": {"reference": f"Patient/{patient_id}"},
        "period": {"start": fhir_instant(start), **({"end": fhir_instant(end)} if end else {})},
        "created": fhir_instant(datetime.now(UTC)),
        "author": {"reference": f"Device/{model_device(model)['id']}", "display": f"{model.model_id} {model.version}"},
        "supportingInfo": [{"reference": f"Observation/{derived}"}],
        **({"activity": [{"detail": detail} for detail in activities]} if activities else {}),
    }
