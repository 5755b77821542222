"""PATCH bodies: JSON Patch (RFC 6902), JSON Merge Patch (RFC 7396) and FHIRPath Patch.

Which one is meant follows from the body: a JSON array is a JSON Patch, a
``Parameters`` resource is a FHIRPath Patch, any other object is a merge patch
(what fhirpy sends for ``resource.patch(field=value)``).

FHIRPath Patch paths are evaluated with ``fhirpathpy``. It returns copies, not the
nodes themselves, so the resource is first copied with every object tagged with its
location; a path that ends on objects yields their locations directly, one that ends
on primitives (``Patient.birthDate``) is split into its parent path and last element.
Cardinality and element types for values built from ``part``s come from the R4
element tables the validator uses.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from fhirpathpy import evaluate

from fhir_server.responses import FHIRError
from mapping.validation.structures import KIND_PRIMITIVE, load_structures

Location = tuple[str | int, ...]
_TAG = "fhirtwinPatchLocation"
_LAST_STEP = re.compile(r"^(.*)\.([A-Za-z][A-Za-z0-9_]*)(?:\[(\d+)\])?$")


def _fail(message: str, status: int = 422) -> FHIRError:
    return FHIRError(status, message, code="processing")


def apply_patch(resource: dict[str, Any], patch: Any) -> dict[str, Any]:
    """The patched copy of ``resource``."""
    if isinstance(patch, list):
        return json_patch(resource, patch)
    if isinstance(patch, dict) and patch.get("resourceType") == "Parameters":
        return fhirpath_patch(resource, patch)
    if isinstance(patch, dict):
        return merge_patch(resource, patch)
    raise _fail("a patch body is a JSON Patch array, a Parameters resource or a merge-patch object", 400)


# -- JSON Merge Patch -------------------------------------------------------------------
def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396: objects merge recursively, ``null`` removes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


# -- JSON Patch -------------------------------------------------------------------------
def _pointer(path: Any) -> list[str]:
    if not isinstance(path, str) or (path and not path.startswith("/")):
        raise _fail(f"invalid JSON pointer {path!r}", 400)
    return [p.replace("~1", "/").replace("~0", "~") for p in path.split("/")[1:]]


def _walk(doc: Any, parts: list[str]) -> tuple[Any, str]:
    """The container holding the last pointer step, and that step."""
    node = doc
    for part in parts[:-1]:
        node = _child(node, part)
    return node, parts[-1]


def _child(node: Any, part: str) -> Any:
    try:
        if isinstance(node, list):
            return node[int(part)]
        return node[part]
    except (KeyError, IndexError, ValueError, TypeError):
        raise _fail(f"JSON pointer step {part!r} does not exist") from None


def _get(doc: Any, parts: list[str]) -> Any:
    node = doc
    for part in parts:
        node = _child(node, part)
    return node


def _remove(doc: Any, parts: list[str]) -> Any:
    if not parts:
        raise _fail("cannot remove the whole resource")
    node, last = _walk(doc, parts)
    value = _child(node, last)
    if isinstance(node, list):
        node.pop(int(last))
    else:
        del node[last]
    return value


def _add(doc: Any, parts: list[str], value: Any) -> Any:
    if not parts:
        return value
    node, last = _walk(doc, parts)
    if isinstance(node, list):
        if last == "-":
            node.append(value)
        elif last.isdigit() and int(last) <= len(node):
            node.insert(int(last), value)
        else:
            raise _fail(f"array index {last!r} out of range")
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise _fail(f"cannot add {last!r} inside a primitive")
    return doc


def json_patch(resource: dict[str, Any], operations: list[Any]) -> dict[str, Any]:
    """RFC 6902 on a copy; any failing operation (including ``test``) aborts the whole patch."""
    doc: Any = copy.deepcopy(resource)
    for index, op in enumerate(operations):
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise _fail(f"operation {index} needs 'op' and 'path'", 400)
        kind, parts = op["op"], _pointer(op["path"])
        if kind in ("add", "replace", "test") and "value" not in op:
            raise _fail(f"operation {index} ({kind}) needs a value", 400)
        if kind == "add":
            doc = _add(doc, parts, copy.deepcopy(op["value"]))
        elif kind == "remove":
            _remove(doc, parts)
        elif kind == "replace":
            _get(doc, parts)
            if parts:
                _remove(doc, parts)
            doc = _add(doc, parts, copy.deepcopy(op["value"]))
        elif kind in ("move", "copy"):
            source = _pointer(op.get("from"))
            value = _remove(doc, source) if kind == "move" else copy.deepcopy(_get(doc, source))
            doc = _add(doc, parts, value)
        elif kind == "test":
            if _get(doc, parts) != op["value"]:
                raise _fail(f"test failed at {op['path']}", 422)
        else:
            raise _fail(f"unknown JSON Patch op {kind!r}", 400)
    if not isinstance(doc, dict):
        raise _fail("the patched document is not a resource")
    return doc


# -- FHIRPath Patch ---------------------------------------------------------------------
def _tagged(value: Any, loc: Location) -> Any:
    if isinstance(value, dict):
        out = {k: _tagged(v, (*loc, k)) for k, v in value.items()}
        out[_TAG] = list(loc)
        return out
    if isinstance(value, list):
        return [_tagged(v, (*loc, i)) for i, v in enumerate(value)]
    return value


def _evaluate(resource: dict[str, Any], path: str) -> list[Any]:
    try:
        return evaluate(_tagged(resource, ()), path)
    except Exception as exc:  # fhirpathpy raises bare exceptions for parse and type errors
        raise _fail(f"cannot evaluate FHIRPath {path!r}: {exc}", 400) from None


def _object_locations(resource: dict[str, Any], path: str) -> list[Location] | None:
    """Locations when the path ends on objects; None when it ends on primitives."""
    found = _evaluate(resource, path)
    if all(isinstance(v, dict) and _TAG in v for v in found):
        return [tuple(v[_TAG]) for v in found]
    return None


def _collection(resource: dict[str, Any], path: str) -> tuple[Location, str]:
    """(parent location, element name) for a path naming an element: ``Patient.name``."""
    match = _LAST_STEP.match(path)
    if match is None or match.group(3) is not None:
        raise _fail(f"path {path!r} must end with an element name", 400)
    parents = _object_locations(resource, match.group(1))
    if not parents or len(parents) != 1:
        raise _fail(f"path {match.group(1)!r} must select exactly one element")
    return parents[0], match.group(2)


def _locations(resource: dict[str, Any], path: str) -> list[Location]:
    """Every node the path selects, as locations from the resource root."""
    objects = _object_locations(resource, path)
    if objects is not None:
        return objects
    match = _LAST_STEP.match(path)
    if match is None:
        raise _fail(f"path {path!r} does not select elements of the resource", 400)
    parents = _object_locations(resource, match.group(1)) or []
    out: list[Location] = []
    for parent in parents:
        node = _node(resource, parent)
        key = match.group(2)
        if key not in node:
            continue
        if isinstance(node[key], list):
            if match.group(3) is not None:
                if int(match.group(3)) < len(node[key]):
                    out.append((*parent, key, int(match.group(3))))
            else:
                out.extend((*parent, key, i) for i in range(len(node[key])))
        else:
            out.append((*parent, key))
    return out


def _node(resource: Any, loc: Location) -> Any:
    node = resource
    for step in loc:
        node = node[step]
    return node


def _type_at(resource_type: str, loc: Location) -> str | None:
    """The FHIR type of the element at a location (None once outside the tables)."""
    structures = load_structures()
    type_name: str | None = resource_type
    for step in loc:
        if isinstance(step, int):
            continue
        spec = structures.element(type_name, step) if type_name else None
        type_name = spec.type_name if spec else None
    return type_name


def _value(part: dict[str, Any], type_name: str | None) -> Any:
    """The value of a ``value`` part: its value[x], or a complex value built from sub-parts."""
    for key, val in part.items():
        if key.startswith("value"):
            return copy.deepcopy(val)
    if "part" not in part:
        raise _fail(f"parameter {part.get('name')!r} has no value", 400)
    structures = load_structures()
    out: dict[str, Any] = {}
    for sub in part["part"]:
        name = sub.get("name")
        spec = structures.element(type_name, name) if type_name else None
        val = _value(sub, None if spec is None or spec.kind == KIND_PRIMITIVE else spec.type_name)
        if spec is not None and spec.repeats:
            out.setdefault(name, []).append(val)
        else:
            out[name] = val
    return out


def _parts(operation: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p.get("name"): p for p in operation.get("part") or [] if isinstance(p, dict)}


def _scalar(parts: dict[str, dict[str, Any]], name: str) -> Any:
    part = parts.get(name)
    if part is None:
        raise _fail(f"FHIRPath Patch operation needs '{name}'", 400)
    for key, val in part.items():
        if key.startswith("value"):
            return val
    raise _fail(f"'{name}' has no value", 400)


def _delete(resource: dict[str, Any], loc: Location) -> None:
    parent = _node(resource, loc[:-1])
    if isinstance(parent, list):
        parent.pop(loc[-1])
        if not parent:
            del _node(resource, loc[:-2])[loc[-2]]
    else:
        del parent[loc[-1]]


def _element_locations(resource: dict[str, Any], path: str, kind: str) -> list[Location]:
    """The locations a delete or replace acts on: elements, never the resource itself."""
    targets = _locations(resource, path)
    if () in targets:
        raise _fail(f"{kind}: path {path!r} selects the whole resource, not an element of it")
    return targets


def _list_at(resource: dict[str, Any], parent: Location, name: str, kind: str, *, create: bool) -> list[Any]:
    """The list ``name`` of the element at ``parent`` (made empty when ``create`` and absent)."""
    node = _node(resource, parent)
    items = node.setdefault(name, []) if create else node.get(name, [])
    if not isinstance(items, list):
        raise _fail(f"{kind}: {name!r} is a single element, not a list")
    return items


def fhirpath_patch(resource: dict[str, Any], parameters: dict[str, Any]) -> dict[str, Any]:
    """Apply the ``operation`` parameters (add, insert, delete, replace, move) in order, on a copy."""
    doc = copy.deepcopy(resource)
    rtype = str(doc.get("resourceType"))
    for operation in parameters.get("parameter") or []:
        if not isinstance(operation, dict) or operation.get("name") != "operation":
            raise _fail("a FHIRPath Patch holds only 'operation' parameters", 400)
        parts = _parts(operation)
        kind, path = _scalar(parts, "type"), _scalar(parts, "path")
        if kind == "add":
            targets = _object_locations(doc, path) or []
            if len(targets) != 1:
                raise _fail(f"add: path {path!r} must select exactly one element")
            name = _scalar(parts, "name")
            loc = (*targets[0], name)
            value = _value(parts.get("value") or {}, _type_at(rtype, loc))
            spec = load_structures().element(_type_at(rtype, targets[0]) or "", name)
            node = _node(doc, targets[0])
            if spec is not None and spec.repeats:
                node.setdefault(name, []).append(value)
            else:
                node[name] = value
        elif kind == "insert":
            parent, name = _collection(doc, path)
            items = _list_at(doc, parent, name, "insert", create=True)
            index = _scalar(parts, "index")
            if not isinstance(index, int) or not 0 <= index <= len(items):
                raise _fail(f"insert: index {index!r} out of range")
            items.insert(index, _value(parts.get("value") or {}, _type_at(rtype, (*parent, name))))
        elif kind == "delete":
            targets = _element_locations(doc, path, "delete")
            if len(targets) > 1:
                raise _fail(f"delete: path {path!r} selects more than one element")
            if targets:
                _delete(doc, targets[0])
        elif kind == "replace":
            targets = _element_locations(doc, path, "replace")
            if len(targets) != 1:
                raise _fail(f"replace: path {path!r} must select exactly one element")
            loc = targets[0]
            _node(doc, loc[:-1])[loc[-1]] = _value(parts.get("value") or {}, _type_at(rtype, loc))
        elif kind == "move":
            parent, name = _collection(doc, path)
            items = _list_at(doc, parent, name, "move", create=False)
            source, dest = _scalar(parts, "source"), _scalar(parts, "destination")
            if not all(isinstance(i, int) and 0 <= i < len(items) for i in (source, dest)):
                raise _fail("move: source and destination must be indexes into the list")
            items.insert(dest, items.pop(source))
        else:
            raise _fail(f"unknown FHIRPath Patch operation type {kind!r}", 400)
    return doc
