"""Fast structural validation of FHIR R4 resources in their JSON form.

The element tables compiled from the R4 StructureDefinitions are turned, once, into
plain dicts of tuples ``(kind, target, minimum, maximum, choice)`` keyed by JSON
property name. A resource first goes through the yes/no checks compiled per object shape
(``shape_checks``); only when they say no does the thorough walk run, which builds the
issues. The walk is iterative (an explicit stack) and builds location strings only for
nodes it descends into (see docs/validation.md).

Checked: resourceType, unknown properties, JSON types, cardinality (array vs single,
min/max, empty arrays, nulls), required elements (a ``_name`` extension satisfies
``min = 1``), primitive formats, choice types (one ``value[x]`` at most, allowed types
only), contained and nested resources, backbone elements, ``_name`` primitive
extensions (shape and alignment with their value arrays), the shape of
``Reference.reference``. Invariants: ele-1 (no empty objects), ext-1 (extension has
value or sub-extensions, not both), dom-2 (contained resources contain nothing), dom-3's
cheap half (a ``#id`` reference names a contained resource). No terminology bindings.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from mapping.validation.primitives import Checker, build_checkers, reference_checker
from mapping.validation.shape_checks import ShapeChecks
from mapping.validation.structures import KIND_COMPLEX, KIND_PRIMITIVE, KIND_RESOURCE, load_structures

Issue = dict[str, Any]
_Spec = tuple[int, Any, int, int, str | None]
_KIND_SKIP = 3  # resourceType inside a resource: checked when the resource is entered

_structures = load_structures()
RESOURCE_TYPES: frozenset[str] = _structures.resource_types
_CHECKERS: dict[str, Checker] = build_checkers(_structures.primitive_regexes)


def _compile_tables() -> tuple[dict[str, dict[str, _Spec]], dict[str, tuple[tuple[str, tuple[str, ...]], ...]],
                             dict[Checker, str]]:
    tables: dict[str, dict[str, _Spec]] = {}
    required: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {}
    for type_name, elements in _structures.types.items():
        table: dict[str, _Spec] = {}
        needs: dict[str, list[str]] = {}
        for name, spec in elements.items():
            target: Any = _CHECKERS[spec.type_name] if spec.kind == KIND_PRIMITIVE else spec.type_name
            table[name] = (spec.kind, target, spec.minimum, spec.maximum, spec.choice)
            if spec.minimum > 0:
                label = f"{spec.choice}[x]" if spec.choice else name
                needs.setdefault(label, []).extend((name, "_" + name))
        if type_name in RESOURCE_TYPES:
            table["resourceType"] = (_KIND_SKIP, None, 0, 1, None)
        tables[type_name] = table
        if needs:
            required[type_name] = tuple((label, tuple(names)) for label, names in needs.items())
    check_reference = reference_checker(RESOURCE_TYPES)
    tables["Reference"]["reference"] = (KIND_PRIMITIVE, check_reference, 0, 1, None)
    primitive_names = {checker: name for name, checker in _CHECKERS.items()}
    primitive_names[check_reference] = "Reference.reference"
    return tables, required, primitive_names


_TABLES, _REQUIRED, _PRIMITIVE_NAMES = _compile_tables()


def _issue(issues: list[Issue], code: str, location: str, diagnostics: str, severity: str = "error") -> None:
    issues.append({"severity": severity, "code": code, "diagnostics": diagnostics, "expression": [location]})


def _check_extension(keys: Iterable[str], location: str, issues: list[Issue]) -> None:
    has_value = any(key.startswith("value") for key in keys)
    if has_value == ("extension" in keys):
        _issue(issues, "invariant", location,
               "ext-1: an extension must have either extensions or a value[x], not both" if has_value
               else "ext-1: an extension must have either extensions or a value[x]")


# Invariants that depend on an object's keys only (its dict or the tuple of its keys), so the
# fast path can decide them once per object shape.
_INVARIANTS: dict[str, Callable[[Any, str, list[Issue]], None]] = {"Extension": _check_extension}
_SHAPE_CHECKS = ShapeChecks(_TABLES, _REQUIRED, _INVARIANTS, _PRIMITIVE_NAMES, RESOURCE_TYPES)


def _enter_resource(value: object, location: str, stack: list[tuple[dict[str, Any], str, str]],
                    issues: list[Issue], contained: bool) -> None:
    if type(value) is not dict:
        _issue(issues, "structure", location, "a resource must be a JSON object")
        return
    resource_type = value.get("resourceType")
    if type(resource_type) is not str or resource_type not in RESOURCE_TYPES:
        where = location if "." in location else "resourceType"  # a root is named by the type it lacks
        _issue(issues, "invalid", where, f"unknown or missing resourceType {resource_type!r}")
        return
    if contained and "contained" in value:
        _issue(issues, "invariant", location, "dom-2: a contained resource must not contain resources")
    stack.append((value, resource_type, location))


def _check_primitive_extension(obj: dict[str, Any], key: str, value: object, table: dict[str, _Spec],
                               location: str, stack: list[tuple[dict[str, Any], str, str]],
                               issues: list[Issue]) -> None:
    """``_name`` carries id/extensions of primitive ``name``; arrays align index by index."""
    name = key[1:]
    spec = table.get(name)
    where = f"{location}.{name}"
    if spec is None or spec[0] != KIND_PRIMITIVE:
        _issue(issues, "structure", f"{location}.{key}", f"unknown element {key!r}")
        return
    if spec[3] == 1:
        if type(value) is dict:
            stack.append((value, "Element", where))
        else:
            _issue(issues, "structure", where, f"{key!r} must be a JSON object")
        return
    if type(value) is not list:
        _issue(issues, "structure", where, f"{key!r} must be an array")
        return
    values = obj.get(name)
    if values is not None and (type(values) is not list or len(values) != len(value)):
        _issue(issues, "structure", where, f"{key!r} must have the same length as {name!r}")
        return
    for index, item in enumerate(value):
        if type(item) is dict:
            stack.append((item, "Element", f"{where}[{index}]"))
        elif item is not None or values is None or values[index] is None:
            _issue(issues, "structure", f"{where}[{index}]", f"{key}[{index}] must be an object (or null "
                   "where the value array has a value)")


def _check_local_references(resource: dict[str, Any], issues: list[Issue]) -> None:
    """dom-3 (cheap half): every ``#id`` reference must name a contained resource."""
    contained = resource.get("contained")  # not a list, or ids not strings: reported by the structure checks
    contained_ids = {item.get("id") for item in (contained if type(contained) is list else ())
                     if type(item) is dict and type(item.get("id")) is str}
    pending: list[tuple[object, str]] = [(resource, resource["resourceType"])]
    while pending:
        node, location = pending.pop()
        if type(node) is dict:
            for key, value in node.items():
                if key == "contained":
                    continue
                if key == "reference" and type(value) is str and value.startswith("#") and len(value) > 1:
                    if value[1:] not in contained_ids:
                        _issue(issues, "invariant", f"{location}.reference",
                               f"reference {value!r} names no contained resource")
                elif type(value) is dict or type(value) is list:
                    pending.append((value, f"{location}.{key}"))
        elif type(node) is list:
            pending.extend((item, f"{location}[{index}]") for index, item in enumerate(node))


def validate_resource(resource: object) -> list[Issue]:
    """Structural R4 validation; returns OperationOutcome issue dicts (empty list = valid).

    Each issue has ``severity``, ``code`` (structure, required, value, invalid, invariant),
    ``diagnostics`` and ``expression`` (a one-element list with the FHIRPath location,
    e.g. ``Observation.component[1].valueQuantity.value``).
    """
    root_type = resource.get("resourceType") if type(resource) is dict else None
    if type(root_type) is str and root_type in RESOURCE_TYPES and _SHAPE_CHECKS.resource_is_valid(resource):
        if "contained" not in resource:  # type: ignore[operator]
            return []
        found: list[Issue] = []
        _check_local_references(resource, found)  # type: ignore[arg-type]
        return found
    return _walk(resource, root_type)


def _walk(resource: object, root_type: object) -> list[Issue]:
    """The thorough walk: every issue, at its FHIRPath location."""
    issues: list[Issue] = []
    stack: list[tuple[dict[str, Any], str, str]] = []
    _enter_resource(resource, root_type if type(root_type) is str and root_type else "Resource", stack,
                    issues, contained=False)
    tables = _TABLES
    required = _REQUIRED
    invariants = _INVARIANTS
    pop = stack.pop
    push = stack.append
    while stack:
        obj, type_name, location = pop()
        table = tables[type_name]
        if not obj:
            _issue(issues, "invariant", location, "ele-1: an element must have a value or children")
            continue
        choices: dict[str, str] | None = None
        for key, value in obj.items():
            spec = table.get(key)
            if spec is None:
                if key[:1] == "_":
                    _check_primitive_extension(obj, key, value, table, location, stack, issues)
                else:
                    _issue(issues, "structure", f"{location}.{key}", f"unknown element {key!r} in {type_name}")
                continue
            kind, target, minimum, maximum, choice = spec
            if choice is not None:
                if choices is None:
                    choices = {choice: key}
                elif choice in choices:
                    _issue(issues, "structure", f"{location}.{key}",
                           f"only one {choice}[x] allowed, found {choices[choice]!r} and {key!r}")
                else:
                    choices[choice] = key
            if kind == KIND_PRIMITIVE:
                if maximum == 1:
                    problem = target(value)
                    if problem is not None:
                        _issue(issues, "value" if type(value) is not list else "structure",
                               f"{location}.{key}",
                               problem if type(value) is not list else f"{key!r} has max cardinality 1 "
                               "but is an array")
                    continue
                if type(value) is not list or not value:
                    _issue(issues, "structure", f"{location}.{key}",
                           f"{key!r} must be a non-empty array")
                    continue
                for index, item in enumerate(value):
                    if item is None:
                        if "_" + key not in obj:
                            _issue(issues, "structure", f"{location}.{key}[{index}]",
                                   "null is only allowed where _" + key + " carries the element")
                        continue
                    problem = target(item)
                    if problem is not None:
                        _issue(issues, "value", f"{location}.{key}[{index}]", problem)
            elif kind == KIND_COMPLEX:
                if maximum == 1:
                    if type(value) is dict:
                        push((value, target, f"{location}.{key}"))
                    else:
                        _issue(issues, "structure", f"{location}.{key}",
                               f"{key!r} has max cardinality 1 but is an array" if type(value) is list
                               else f"{key!r} must be a JSON object ({target})")
                    continue
                if type(value) is not list or not value:
                    _issue(issues, "structure", f"{location}.{key}", f"{key!r} must be a non-empty array")
                    continue
                if 0 < maximum < len(value):
                    _issue(issues, "structure", f"{location}.{key}", f"{key!r} allows at most {maximum} items")
                for index, item in enumerate(value):
                    if type(item) is dict:
                        push((item, target, f"{location}.{key}[{index}]"))
                    else:
                        _issue(issues, "structure", f"{location}.{key}[{index}]",
                               f"items of {key!r} must be JSON objects ({target})")
            elif kind == KIND_RESOURCE:
                if maximum == 1:
                    _enter_resource(value, f"{location}.{key}", stack, issues, contained=False)
                elif type(value) is not list or not value:
                    _issue(issues, "structure", f"{location}.{key}", f"{key!r} must be a non-empty array")
                else:
                    for index, item in enumerate(value):
                        _enter_resource(item, f"{location}.{key}[{index}]", stack, issues, contained=True)
        needs = required.get(type_name)
        if needs is not None:
            for label, names in needs:
                for name in names:
                    if name in obj:
                        break
                else:
                    _issue(issues, "required", f"{location}.{label}",
                           f"missing required element {label!r} (min 1)")
        invariant = invariants.get(type_name)
        if invariant is not None:
            invariant(obj, location, issues)
    if type(resource) is dict and "contained" in resource:
        _check_local_references(resource, issues)  # type: ignore[arg-type]
    return issues


def forget_remembered_values() -> None:
    """Forget the primitive values remembered as valid, so a benchmark pass over data already seen
    costs what the first pass over new data costs (results never depend on it)."""
    _SHAPE_CHECKS.forget_values()


def operation_outcome(issues: list[Issue]) -> dict[str, Any]:
    """Wrap issues in an OperationOutcome; an empty list becomes one 'informational' issue."""
    if not issues:
        issues = [{"severity": "information", "code": "informational", "diagnostics": "no issues found"}]
    return {"resourceType": "OperationOutcome", "issue": issues}
