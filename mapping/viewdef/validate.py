"""Structural checks of a SQL-on-FHIR v2 ViewDefinition, before any SQL is generated.

Errors name the offending element (``select[1].column[0]``) so that an author can find it; the
FHIRPath expressions themselves are checked when they are compiled.
"""

from __future__ import annotations

import re
from typing import Any

from mapping.fhirpath.schema import r4_schema

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_SELECT_KEYS = {"column", "select", "forEach", "forEachOrNull", "repeat", "unionAll"}
_COLUMN_KEYS = {"name", "path", "type", "collection", "description", "tag"}


class ViewDefinitionError(ValueError):
    """The ViewDefinition is malformed or cannot be compiled."""


def _fail(where: str, msg: str) -> ViewDefinitionError:
    return ViewDefinitionError(f"{where}: {msg}")


def constant_values(view: dict[str, Any]) -> dict[str, tuple[object, str]]:
    """``{name: (value, fhir_type)}`` from ``view.constant``; each needs exactly one ``value[x]``."""
    out: dict[str, tuple[object, str]] = {}
    for i, const in enumerate(view.get("constant", [])):
        where = f"constant[{i}]"
        if not isinstance(const, dict) or not isinstance(const.get("name"), str) or not _NAME.match(const["name"]):
            raise _fail(where, "needs a name made of letters, digits and _")
        values = [(k, v) for k, v in const.items() if k.startswith("value")]
        if len(values) != 1:
            raise _fail(where, f"needs exactly one value[x], found {len(values)}")
        key, value = values[0]
        fhir_type = key[len("value"):]
        out[const["name"]] = (value, fhir_type[0].lower() + fhir_type[1:])
    return out


def _check_select(node: object, where: str) -> None:
    if not isinstance(node, dict):
        raise _fail(where, "must be an object")
    unknown = set(node) - _SELECT_KEYS
    if unknown:
        raise _fail(where, f"unknown element(s) {sorted(unknown)}")
    iterators = [k for k in ("forEach", "forEachOrNull", "repeat") if k in node]
    if len(iterators) > 1:
        raise _fail(where, f"only one of forEach, forEachOrNull, repeat allowed, found {iterators}")
    for key in ("forEach", "forEachOrNull"):
        if key in node and not isinstance(node[key], str):
            raise _fail(where, f"{key} must be a FHIRPath string")
    if "repeat" in node and (not isinstance(node["repeat"], list) or not node["repeat"]
                             or not all(isinstance(p, str) for p in node["repeat"])):
        raise _fail(where, "repeat must be a non-empty list of FHIRPath strings")
    for i, column in enumerate(node.get("column", [])):
        _check_column(column, f"{where}.column[{i}]")
    for key in ("select", "unionAll"):
        children = node.get(key, [])
        if not isinstance(children, list):
            raise _fail(where, f"{key} must be a list")
        for i, child in enumerate(children):
            _check_select(child, f"{where}.{key}[{i}]")


def _check_column(column: object, where: str) -> None:
    if not isinstance(column, dict):
        raise _fail(where, "must be an object")
    unknown = set(column) - _COLUMN_KEYS
    if unknown:
        raise _fail(where, f"unknown element(s) {sorted(unknown)}")
    if not isinstance(column.get("name"), str) or not _NAME.match(column["name"]):
        raise _fail(where, "name must start with a letter and hold only letters, digits and _")
    if not isinstance(column.get("path"), str):
        raise _fail(where, "path must be a FHIRPath string")
    if "type" in column and not (isinstance(column["type"], str) and r4_schema().is_type(column["type"])):
        raise _fail(where, f"type must name a FHIR R4 type, got {column['type']!r}")
    if "collection" in column and not isinstance(column["collection"], bool):
        raise _fail(where, "collection must be true or false")


def validate_view(view: object) -> None:
    """Raise ViewDefinitionError unless ``view`` is a structurally valid ViewDefinition."""
    if not isinstance(view, dict):
        raise ViewDefinitionError("a ViewDefinition must be a JSON object")
    resource = view.get("resource")
    if not isinstance(resource, str) or resource not in r4_schema().resources:
        raise _fail("resource", f"must name a FHIR R4 resource type, got {resource!r}")
    select = view.get("select")
    if not isinstance(select, list) or not select:
        raise _fail("select", "must be a non-empty list")
    for i, node in enumerate(select):
        _check_select(node, f"select[{i}]")
    wheres = view.get("where", [])
    if not isinstance(wheres, list) or not all(isinstance(w, dict) and isinstance(w.get("path"), str)
                                               for w in wheres):
        raise _fail("where", "must be a list of {path: FHIRPath}")
    constant_values(view)
