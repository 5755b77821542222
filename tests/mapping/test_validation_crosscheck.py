"""Cross-check against fhir.resources (R4B models): every leaf of Synthea resources is mutated.

Whatever fhir.resources rejects, the validator must reject too, at the mutated location.
Where only the validator rejects, the mutation must be one pydantic's lax mode coerces or
lets through although FHIR JSON forbids it (numbers/booleans for strings and vice versa,
empty strings, whitespace in uri/code/reference).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class

from mapping.validation import validate_resource

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "validation"
_ALL = [json.loads(line) for line in (FIXTURES / "synthea_sample.ndjson").read_text().splitlines()]
# One resource per type, plus a blood pressure Observation for components.
SAMPLE = [*{r["resourceType"]: r for r in reversed(_ALL)}.values(),
          next(r for r in _ALL if "component" in r)]
LAX_IN_PYDANTIC = {"int", "bool", "str", "empty", "space"}


def _leaves(node: Any, path: tuple[str | int, ...] = ()) -> Iterator[tuple[tuple[str | int, ...], Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key not in ("resourceType", "div"):
                yield from _leaves(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _leaves(value, (*path, index))
    else:
        yield path, node


def _mutations(value: Any) -> list[tuple[str, Any]]:
    if isinstance(value, bool):
        return [("str", "true"), ("int", 1)]
    if isinstance(value, int | float):
        return [("str", str(value)), ("bool", True)]
    return [("int", 7), ("empty", ""), ("space", " x"), ("list", [value]), ("dict", {"a": value})]


def _fhirpath(resource_type: str, path: tuple[str | int, ...]) -> str:
    text = resource_type
    for step in path:
        text += f"[{step}]" if isinstance(step, int) else f".{step}"
    return text


def _accepted_by_fhir_resources(resource: dict[str, Any]) -> bool:
    try:
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)
    except Exception:  # noqa: BLE001 - any rejection counts
        return False
    return True


@pytest.mark.parametrize("resource", SAMPLE, ids=[f"{r['resourceType']}-{r['id'][:8]}" for r in SAMPLE])
def test_rejects_whatever_fhir_resources_rejects_at_the_mutated_location(resource: dict[str, Any]) -> None:
    assert _accepted_by_fhir_resources(resource)
    checked = 0
    for path, value in _leaves(resource):
        for name, new_value in _mutations(value):
            mutated = copy.deepcopy(resource)
            node: Any = mutated
            for step in path[:-1]:
                node = node[step]
            node[path[-1]] = new_value
            issues = validate_resource(mutated)
            theirs = _accepted_by_fhir_resources(mutated)
            if not theirs:
                assert issues, (name, path)
                checked += 1
            elif issues:
                assert name in LAX_IN_PYDANTIC, (name, path, issues)
            if issues:
                expected = _fhirpath(resource["resourceType"], path)
                assert expected in {issue["expression"][0] for issue in issues}, (name, path, issues)
    assert checked > 0
