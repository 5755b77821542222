"""``$simulate`` requests: the Parameters contract turned into plain Python (and back out as errors).

The contract (DESIGN.md): ``model`` (valueString, required), ``origin`` (valueDateTime),
``horizon`` (valueDuration or valueQuantity in min/h), and repeated ``scenario``
parts holding ``carbs`` (time, amount g), ``insulin`` (time and amount U, or rate
U/h with duration) and ``dose`` (time, amount mg, infusion duration) events.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from mapping.validation import validate_resource
from twin.inputs import parse_time

_MINUTES = {"min": 1.0, "h": 60.0, "hour": 60.0, "hours": 60.0, "d": 1440.0, "s": 1 / 60.0, "minutes": 1.0}
_GRAMS = {"g": 1.0, "kg": 1000.0, "mg": 0.001}
_MG = {"mg": 1.0, "g": 1000.0, "ug": 0.001}


MAX_HORIZON_MIN = 30 * 1440.0
"""The longest forecast a request may ask for: a month covers dosing courses; beyond it a
twin fitted on today's data says nothing."""
MAX_QUANTITY = 1e9
"""No amount, rate or duration of a scenario comes near a billion (mg, g, U, minutes): beyond it
the models' arithmetic overflows into values JSON cannot carry."""


class ScenarioError(ValueError):
    """A malformed ``$simulate`` request; ``expression`` says where (FHIRPath into the Parameters),
    ``issues`` every structural problem when the request is not a valid R4 Parameters resource."""

    def __init__(self, message: str, expression: str, issues: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.expression = expression
        self.issues = issues


@dataclass
class Scenario:
    """Planned events to add to what the store holds up to the origin."""

    carbs: list[tuple[datetime, float]] = field(default_factory=list)  # (time, grams)
    boluses: list[tuple[datetime, float]] = field(default_factory=list)  # (time, U)
    basals: list[tuple[datetime, float, float]] = field(default_factory=list)  # (time, U/h, minutes)
    doses: list[tuple[datetime, float, float]] = field(default_factory=list)  # (time, mg, infusion minutes)


@dataclass
class SimulationRequest:
    """A parsed ``$simulate`` request."""

    model: str
    origin: datetime
    horizon_min: float | None
    scenario: Scenario


def _quantity(part: dict[str, Any], units: dict[str, float], where: str) -> float:
    q = part.get("valueQuantity") or part.get("valueDuration")
    if not isinstance(q, dict) or not isinstance(q.get("value"), int | float) or isinstance(q.get("value"), bool):
        raise ScenarioError("expected a valueQuantity with a numeric value", f"{where}.value")
    unit = q.get("code") or q.get("unit")
    if unit not in units:
        raise ScenarioError(f"unit {unit!r} is not one of {sorted(units)}", f"{where}.value.code")
    value = float(q["value"]) * units[unit]
    if not 0 <= value <= MAX_QUANTITY:  # also NaN; amounts, rates and durations are never negative
        raise ScenarioError(f"value {q['value']!r} {unit} is implausibly large" if value >= 0
                            else f"value {q['value']!r} {unit} must not be negative", f"{where}.value.value")
    return value


def _time(part: dict[str, Any], where: str) -> datetime:
    t = parse_time(part.get("valueDateTime"))
    if t is None:
        raise ScenarioError("expected valueDateTime", f"{where}.value")
    return t


def _event(event: dict[str, Any], where: str, scenario: Scenario) -> None:
    name = event.get("name")
    parts = {p.get("name"): (p, f"{where}.part[{i}]") for i, p in enumerate(event.get("part") or [])}
    if "time" not in parts:
        raise ScenarioError(f"{name} event needs a time", f"{where}.part")
    when = _time(*parts["time"])
    if name == "carbs":
        if "amount" not in parts:
            raise ScenarioError("carbs event needs an amount (g)", f"{where}.part")
        scenario.carbs.append((when, _quantity(parts["amount"][0], _GRAMS, parts["amount"][1])))
    elif name == "insulin":
        if "amount" in parts:
            scenario.boluses.append((when, _quantity(parts["amount"][0], {"U": 1.0, "[iU]": 1.0}, parts["amount"][1])))
        elif "rate" in parts and "duration" in parts:
            rate = _quantity(parts["rate"][0], {"U/h": 1.0, "[iU]/h": 1.0}, parts["rate"][1])
            scenario.basals.append((when, rate, _quantity(parts["duration"][0], _MINUTES, parts["duration"][1])))
        else:
            raise ScenarioError("insulin event needs amount (U) or rate (U/h) with duration", f"{where}.part")
    elif name == "dose":
        if "amount" not in parts:
            raise ScenarioError("dose event needs an amount (mg)", f"{where}.part")
        infusion = _quantity(parts["infusion"][0], _MINUTES, parts["infusion"][1]) if "infusion" in parts else 60.0
        scenario.doses.append((when, _quantity(parts["amount"][0], _MG, parts["amount"][1]), infusion))
    else:
        raise ScenarioError(f"unknown scenario event {name!r} (carbs, insulin, dose)", f"{where}.name")


def parse_request(parameters: dict[str, Any], now: datetime | None = None) -> SimulationRequest:
    """Read a ``$simulate`` Parameters resource."""
    if not isinstance(parameters, dict) or parameters.get("resourceType") != "Parameters":
        raise ScenarioError("the body must be a Parameters resource", "Parameters")
    issues = [issue for issue in validate_resource(parameters) if issue["severity"] == "error"]
    if issues:  # R4 structure first: what follows reads a well-formed Parameters only
        first = issues[0]
        raise ScenarioError(f"the request is not a valid R4 Parameters resource: {first['diagnostics']}",
                            first["expression"][0], issues)
    model, origin, horizon = None, now or datetime.now(UTC), None
    scenario = Scenario()
    for i, p in enumerate(parameters.get("parameter") or []):
        where = f"Parameters.parameter[{i}]"
        name = p.get("name")
        if name == "model":
            model = p.get("valueString") or p.get("valueCode")
        elif name == "origin":
            origin = _time(p, where)
        elif name == "horizon":
            horizon = _quantity(p, _MINUTES, where)
            if not 0 < horizon <= MAX_HORIZON_MIN:
                raise ScenarioError(f"horizon must be positive and at most {MAX_HORIZON_MIN / 1440:g} days",
                                    f"{where}.value")
        elif name == "scenario":
            for j, event in enumerate(p.get("part") or []):
                _event(event, f"{where}.part[{j}]", scenario)
        else:
            raise ScenarioError(f"unknown parameter {name!r}", f"{where}.name")
    if not model:
        raise ScenarioError("parameter 'model' (valueString) is required", "Parameters.parameter")
    return SimulationRequest(model=model, origin=origin, horizon_min=horizon, scenario=scenario)
