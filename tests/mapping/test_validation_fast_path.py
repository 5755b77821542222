"""The per-shape fast path must agree with the thorough walk on valid and damaged resources.

Every object of every sample resource (and of a Bundle and a resource with contained
resources built from them) is damaged in several ways: unknown element, each element
removed, wrong JSON type, array/object swapped, bad primitive format, null, empty object,
a second value[x], a contained resource, a ``_name`` extension. For each result the fast path may only say
"valid" when the thorough walk reports nothing, and may only say "invalid" for a
structurally valid resource when it holds a ``_name`` extension (which it leaves to the walk).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mapping.validation import shape_checks, validate_resource, validator
from mapping.validation.shape_checks import ShapeChecks

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "validation"
SAMPLE = [json.loads(line) for line in (FIXTURES / "synthea_sample.ndjson").read_text().splitlines()]
Resource = dict[str, Any]


def _with_contained() -> Resource:
    observation = copy.deepcopy(next(r for r in SAMPLE if "component" in r))
    observation["contained"] = [{"resourceType": "Device", "id": "d1", "status": "active"}]
    observation["device"] = {"reference": "#d1"}
    return observation


DOCUMENTS = [*SAMPLE, _with_contained(),
             {"resourceType": "Bundle", "type": "collection",
              "entry": [{"fullUrl": f"urn:uuid:{r['id']}", "resource": r} for r in SAMPLE[:4]]}]


def _objects(node: Any, path: tuple[str | int, ...] = ()) -> Iterator[tuple[tuple[str | int, ...], Resource]]:
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from _objects(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _objects(value, (*path, index))


def _wrong_type(value: Any) -> Any:
    if isinstance(value, bool):
        return "true"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return 7
    if isinstance(value, list):
        return value[0]
    return "x"


DELETE = object()


def _changes(obj: Resource) -> Iterator[tuple[str, str, Any]]:
    """(what, key, new value or the sentinel DELETE) for one object."""
    yield "unknown element", "zz", 1
    yield "second value[x]", "valueString", "x"
    yield "contained resource", "contained", [{"resourceType": "Device", "id": "d9"}]
    for key, value in obj.items():
        if key == "resourceType":
            continue
        yield "missing", key, DELETE
        yield "wrong type", key, _wrong_type(value)
        yield "null", key, None
        yield "wrapped in an array", key, [value]
        yield "primitive extension", f"_{key}", {"extension": [{"url": "http://x", "valueCode": "y"}]}
        if isinstance(value, str):
            yield "empty string", key, ""
            yield "bad format", key, " 2012-02-30 x"
        if isinstance(value, dict):
            yield "empty object", key, {}
        if isinstance(value, list) and value:
            yield "empty array", key, []
            yield "null item", key, [None, *value[1:]]



def _damaged(document: Resource) -> Iterator[Resource]:
    for path, obj in list(_objects(document)):
        for _what, key, new_value in list(_changes(obj)):
            damaged = copy.deepcopy(document)
            node: Any = damaged
            for step in path:
                node = node[step]
            if new_value is DELETE:
                del node[key]
            else:
                node[key] = copy.deepcopy(new_value)
            yield damaged


def _has_primitive_extension(document: Resource) -> bool:
    return any(str(key).startswith("_") for _path, obj in _objects(document) for key in obj)


def _disagreements(checks: ShapeChecks, documents: list[Resource]) -> list[tuple[str, list[Any]]]:
    """Damaged documents where ``checks`` and the thorough walk disagree (with the walk's issues)."""
    found = []
    for document in documents:
        for damaged in _damaged(document):
            root_type = damaged.get("resourceType")
            # dom-3 (root #id references) is checked after either path, so it is not the fast path's
            issues = [issue for issue in validator._walk(damaged, root_type)
                      if not issue["diagnostics"].endswith("names no contained resource")]
            fast = type(root_type) is str and root_type in validator.RESOURCE_TYPES and checks.resource_is_valid(damaged)
            if (fast and issues) or (not fast and not issues and not _has_primitive_extension(damaged)):
                found.append((json.dumps(damaged)[:200], issues))
    return found


def test_fast_path_accepts_every_valid_sample_resource() -> None:
    for document in DOCUMENTS:
        assert validator._SHAPE_CHECKS.resource_is_valid(document), document["resourceType"]


def test_fast_path_agrees_with_the_thorough_walk_on_damaged_resources() -> None:
    assert _disagreements(validator._SHAPE_CHECKS, DOCUMENTS) == []


def test_public_result_is_the_thorough_walks_on_damaged_resources() -> None:
    count = 0
    for document in DOCUMENTS:
        for damaged in _damaged(document):
            assert validate_resource(damaged) == validator._walk(damaged, damaged.get("resourceType"))
            count += 1
    assert count > 5000


def _lax_string_checks() -> dict[Any, str]:
    """Every string-valued primitive checked like ``string``: formats are no longer checked."""
    return {checker: name if name in shape_checks._INLINE else "string"
            for checker, name in validator._PRIMITIVE_NAMES.items()}


@pytest.mark.parametrize("broken", ["no required elements", "no invariants", "no primitive formats"])
def test_the_agreement_check_catches_a_broken_fast_path(broken: str) -> None:
    """Guards the test above: a fast path that skips one kind of check must be caught by it."""
    checks = ShapeChecks(validator._TABLES,
                         {} if broken == "no required elements" else validator._REQUIRED,
                         {} if broken == "no invariants" else validator._INVARIANTS,
                         _lax_string_checks() if broken == "no primitive formats" else validator._PRIMITIVE_NAMES,
                         validator.RESOURCE_TYPES)
    documents = DOCUMENTS
    if broken == "no invariants":
        extension = {"url": "http://x", "valueString": "a", "extension": [{"url": "y", "valueCode": "z"}]}
        documents = [{**DOCUMENTS[0], "extension": [extension]}]
        assert validate_resource(documents[0])
    assert _disagreements(checks, documents)


def test_bounded_caches_do_not_change_results(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no room for compiled shapes or remembered values, the answers stay the same."""
    monkeypatch.setattr(shape_checks, "VALUES_PER_PRIMITIVE", 1)
    for limit in ("SHAPES_PER_TYPE", "SHAPES"):
        monkeypatch.setattr(shape_checks, limit, 0)
        checks = ShapeChecks(validator._TABLES, validator._REQUIRED, validator._INVARIANTS,
                             validator._PRIMITIVE_NAMES, validator.RESOURCE_TYPES)
        assert not any(checks.resource_is_valid(document) for document in DOCUMENTS)
        monkeypatch.undo()
        monkeypatch.setattr(shape_checks, "VALUES_PER_PRIMITIVE", 1)
    for _round in range(2):
        assert all(checks.resource_is_valid(document) for document in DOCUMENTS)
    assert _disagreements(checks, SAMPLE[:3]) == []


def test_deep_nesting_falls_back_to_the_walk() -> None:
    extension: Resource = {"url": "http://x", "valueString": "deep"}
    for _level in range(2000):
        extension = {"url": "http://x", "extension": [extension]}
    resource = {**SAMPLE[0], "extension": [extension]}
    assert validate_resource(resource) == []
    extension["extension"][0]["url"] = ""
    assert validate_resource(resource) == validator._walk(resource, resource["resourceType"]) != []


def test_long_values_are_checked_but_not_remembered() -> None:
    """Attachment data, narratives and long strings must not be held in memory by the fast path."""
    long_uri = "http://example.org/" + "a" * 1000
    data = "QUJD" * 1000
    resource = copy.deepcopy(SAMPLE[0])
    resource["extension"] = [{"url": long_uri, "valueBase64Binary": data}]
    checks = validator._SHAPE_CHECKS
    assert checks.resource_is_valid(resource)
    assert not any(long_uri in good or data in good for good in checks._remembered)
    resource["extension"][0]["url"] = long_uri + " x"
    assert not checks.resource_is_valid(resource)
