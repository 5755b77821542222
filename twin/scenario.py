"""``$simulate`` requests: the Parameters contract turned into plain Python (and back out as errors).

The contract (DESIGN.md): ``model`` (valueString, required), ``origin`` (valueDateTime),
``horizon`` (valueDuration or valueQuantity in min/h), and repeated ``scenario``
parts holding ``carbs`` (time, amount g), ``insulin`` (time and amount U, or rate
U/h with duration) and ``dose`` (time, amount mg, infusion duration) events.

Whatever the request says that the twin would not use is refused with its FHIRPath
location rather than ignored: a client who sends ``carbs`` to the vancomycin twin, a
``route`` sub-part or a ``<`` comparator on an amount would otherwise get a forecast
that silently answers another question.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from mapping.validation import validate_resource
from twin.inputs import parse_time
from twin.models.glucose import HORIZON_MIN as GLUCOSE_HORIZON_MIN
from twin.vocab import UCUM

_MINUTES = {"min": 1.0, "h": 60.0, "hour": 60.0, "hours": 60.0, "d": 1440.0, "s": 1 / 60.0, "minutes": 1.0}
_GRAMS = {"g": 1.0, "kg": 1000.0, "mg": 0.001}
_MG = {"mg": 1.0, "g": 1000.0, "ug": 0.001}
_UNITS_OF_U = {"U": 1.0, "[iU]": 1.0}
_UNITS_OF_U_H = {"U/h": 1.0, "[iU]/h": 1.0}

PARAMETERS = ("model", "origin", "horizon", "scenario")
"""The top-level parameters ``$simulate`` reads (each at most once, but ``scenario``)."""
EVENT_PARTS: dict[str, tuple[str, ...]] = {
    "carbs": ("time", "amount"),
    "insulin": ("time", "amount", "rate", "duration"),
    "dose": ("time", "amount", "infusion"),
}
"""The sub-parts each scenario event may hold (each at most once)."""
MODEL_EVENTS: dict[str, tuple[str, ...]] = {
    "glucose": ("carbs", "insulin"),
    "vancomycin": ("dose",), "vancomycin-goti-2018": ("dose",), "vancomycin-buelga-2005": ("dose",),
}
"""Which events each model takes: the others would change nothing in its forecast."""
MAX_HORIZON_MIN = 30 * 1440.0
"""The longest forecast a request may ask for: a month covers dosing courses; beyond it a
twin fitted on today's data says nothing."""
MODEL_MAX_HORIZON_MIN = {"glucose": float(GLUCOSE_HORIZON_MIN)}
"""Shorter limits of some models (the glucose twin was validated up to 2 h ahead)."""
MAX_QUANTITY = 1e9
"""No amount, rate or duration of a scenario comes near a billion (mg, g, U, minutes): beyond it
the models' arithmetic overflows into values JSON cannot carry."""
DEFAULT_INFUSION_MIN = 60.0


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
    doses: list[tuple[datetime, float, float]] = field(default_factory=list)  # (time, mg, infusion minutes; 0 = push)


@dataclass
class SimulationRequest:
    """A parsed ``$simulate`` request."""

    model: str
    origin: datetime
    horizon_min: float | None
    scenario: Scenario

    @property
    def digest(self) -> str:
        """Same question → same digest; any other model, origin, horizon or event → another one (the
        answer's ids are derived from it, so two different simulations never share ids)."""
        sc = self.scenario
        text = orjson.dumps([self.model, self.origin.isoformat(), self.horizon_min,
                             [[t.isoformat(), *rest] for t, *rest in sc.carbs],
                             [[t.isoformat(), *rest] for t, *rest in sc.boluses],
                             [[t.isoformat(), *rest] for t, *rest in sc.basals],
                             [[t.isoformat(), *rest] for t, *rest in sc.doses]])
        return hashlib.blake2b(text, digest_size=12).hexdigest()


@dataclass(frozen=True)
class _Event:
    """Where an event sits in the request, for errors found once the whole request is read."""

    name: str
    time: datetime
    where: str
    time_where: str


def _quantity(part: dict[str, Any], units: dict[str, float], where: str) -> float:
    q = part.get("valueQuantity") or part.get("valueDuration")
    if not isinstance(q, dict) or not isinstance(q.get("value"), int | float) or isinstance(q.get("value"), bool):
        raise ScenarioError("expected a valueQuantity with a numeric value", f"{where}.value")
    if "comparator" in q:
        raise ScenarioError(f"a planned amount is exact: comparator {q['comparator']!r} is not accepted",
                            f"{where}.value.comparator")
    if q.get("code") is not None and q.get("system") not in (None, UCUM):
        raise ScenarioError(f"unit code {q['code']!r} must be UCUM (system {UCUM}), not {q['system']!r}",
                            f"{where}.value.system")
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


def _event(event: dict[str, Any], where: str, scenario: Scenario) -> _Event:
    name = event.get("name")
    if name not in EVENT_PARTS:
        raise ScenarioError(f"unknown scenario event {name!r} ({', '.join(EVENT_PARTS)})", f"{where}.name")
    if "part" not in event or any(k.startswith("value") or k == "resource" for k in event):
        raise ScenarioError(f"a {name} event holds its details in parts ({', '.join(EVENT_PARTS[name])})", where)
    parts: dict[str, tuple[dict[str, Any], str]] = {}
    for i, p in enumerate(event["part"]):
        sub, at = p.get("name"), f"{where}.part[{i}]"
        if sub not in EVENT_PARTS[name]:
            raise ScenarioError(f"a {name} event has no {sub!r} (it takes {', '.join(EVENT_PARTS[name])})",
                                f"{at}.name")
        if sub in parts:
            raise ScenarioError(f"a {name} event takes one {sub!r}", f"{at}.name")
        parts[sub] = (p, at)
    if "time" not in parts:
        raise ScenarioError(f"{name} event needs a time", f"{where}.part")
    when = _time(*parts["time"])
    if name == "carbs":
        if "amount" not in parts:
            raise ScenarioError("carbs event needs an amount (g)", f"{where}.part")
        scenario.carbs.append((when, _quantity(parts["amount"][0], _GRAMS, parts["amount"][1])))
    elif name == "insulin":
        _insulin(parts, when, where, scenario)
    else:
        if "amount" not in parts:
            raise ScenarioError("dose event needs an amount (mg)", f"{where}.part")
        infusion = (_quantity(parts["infusion"][0], _MINUTES, parts["infusion"][1]) if "infusion" in parts
                    else DEFAULT_INFUSION_MIN)
        scenario.doses.append((when, _quantity(parts["amount"][0], _MG, parts["amount"][1]), infusion))
    return _Event(name, when, where, parts["time"][1])


def _insulin(parts: dict[str, tuple[dict[str, Any], str]], when: datetime, where: str, scenario: Scenario) -> None:
    """A bolus (amount) or a temporary basal rate (rate with duration), never a mix of both."""
    if "amount" in parts:
        extra = next((parts[k][1] for k in ("rate", "duration") if k in parts), None)
        if extra:
            raise ScenarioError("an insulin event is a bolus (amount) or a basal change (rate with duration), "
                                "not both", f"{extra}.name")
        scenario.boluses.append((when, _quantity(parts["amount"][0], _UNITS_OF_U, parts["amount"][1])))
    elif "rate" in parts and "duration" in parts:
        rate = _quantity(parts["rate"][0], _UNITS_OF_U_H, parts["rate"][1])
        scenario.basals.append((when, rate, _quantity(parts["duration"][0], _MINUTES, parts["duration"][1])))
    else:
        raise ScenarioError("insulin event needs amount (U) or rate (U/h) with duration", f"{where}.part")


def parse_request(parameters: dict[str, Any], now: datetime | None = None) -> SimulationRequest:
    """Read a ``$simulate`` Parameters resource; ``now`` is the origin when the request gives none."""
    if not isinstance(parameters, dict) or parameters.get("resourceType") != "Parameters":
        raise ScenarioError("the body must be a Parameters resource", "Parameters")
    issues = [issue for issue in validate_resource(parameters) if issue["severity"] == "error"]
    if issues:  # R4 structure first: what follows reads a well-formed Parameters only
        first = issues[0]
        raise ScenarioError(f"the request is not a valid R4 Parameters resource: {first['diagnostics']}",
                            first["expression"][0], issues)
    model, origin, horizon = None, now or datetime.now(UTC), None
    horizon_where = ""
    scenario = Scenario()
    events: list[_Event] = []
    seen: set[str] = set()
    for i, p in enumerate(parameters.get("parameter") or []):
        where = f"Parameters.parameter[{i}]"
        name = p.get("name")
        if name not in PARAMETERS:
            raise ScenarioError(f"unknown parameter {name!r}", f"{where}.name")
        if name in seen and name != "scenario":
            raise ScenarioError(f"parameter {name!r} is given more than once", f"{where}.name")
        seen.add(name)
        if name == "model":
            model = p.get("valueString") or p.get("valueCode")
        elif name == "origin":
            origin = _time(p, where)
        elif name == "horizon":
            horizon, horizon_where = _quantity(p, _MINUTES, where), f"{where}.value"
            if not 0 < horizon <= MAX_HORIZON_MIN:
                raise ScenarioError(f"horizon must be positive and at most {MAX_HORIZON_MIN / 1440:g} days",
                                    horizon_where)
        else:
            if "part" not in p or any(k.startswith("value") or k == "resource" for k in p):
                raise ScenarioError("a scenario holds its events in parts (carbs, insulin, dose)", where)
            events += [_event(event, f"{where}.part[{j}]", scenario) for j, event in enumerate(p["part"])]
    if not model:
        raise ScenarioError("parameter 'model' (valueString) is required", "Parameters.parameter")
    _check_against(model, origin, horizon, horizon_where, events)
    return SimulationRequest(model=model, origin=origin, horizon_min=horizon, scenario=scenario)


def _check_against(model: str, origin: datetime, horizon: float | None, horizon_where: str,
                   events: list[_Event]) -> None:
    """What only the whole request can tell: events the model takes, a horizon the model forecasts. Events
    before the origin are allowed: they add to what the store holds (DESIGN.md), as an event given but not
    yet charted would."""
    limit = MODEL_MAX_HORIZON_MIN.get(model)
    if horizon is not None and limit is not None and horizon > limit:
        raise ScenarioError(f"the {model} twin forecasts at most {limit:g} minutes ahead (asked {horizon:g})",
                            horizon_where)
    for event in events:
        if model in MODEL_EVENTS and event.name not in MODEL_EVENTS[model]:
            raise ScenarioError(f"the {model} twin takes {' and '.join(MODEL_EVENTS[model])} events, "
                                f"not {event.name}", f"{event.where}.name")
