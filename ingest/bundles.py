"""Bundles in: unpack entries and resolve transaction-internal references.

A transaction may refer to resources it creates by their ``urn:uuid:`` fullUrl;
those references are rewritten to ``Type/id`` before anything is stored, and
the ids are derived from the fullUrl so that re-posting the same Bundle lands on
the same resources (idempotent replays).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from ingest.records import Problem
from store.ids import FHIR_ID, stable_id

_UNPACKED_TYPES = {"collection", "batch", "transaction", "document", "message", "searchset", "history"}


def _rewrite_refs(value: Any, mapping: dict[str, str]) -> Any:
    if isinstance(value, dict):
        out = {}
        for key, sub in value.items():
            if key == "reference" and isinstance(sub, str) and sub in mapping:
                out[key] = mapping[sub]
            else:
                out[key] = _rewrite_refs(sub, mapping)
        return out
    if isinstance(value, list):
        return [_rewrite_refs(v, mapping) for v in value]
    return value


def id_for_full_url(full_url: str, resource_type: str) -> str:
    """Stable id for an entry identified by a ``urn:uuid:``/``urn:oid:`` fullUrl."""
    tail = full_url.rsplit(":", 1)[-1]
    return tail if FHIR_ID.match(tail) else stable_id(resource_type, full_url)


ConditionalResolver = Callable[[str], str | None]
_CONDITIONAL = re.compile(r"^[A-Z][A-Za-z]+\?.+")


def _conditional_refs(value: Any, out: set[str]) -> None:
    """Conditional references (``Patient?identifier=…``) anywhere in a resource."""
    if isinstance(value, dict):
        ref = value.get("reference")
        if isinstance(ref, str) and _CONDITIONAL.match(ref):
            out.add(ref)
        for sub in value.values():
            if isinstance(sub, dict | list):
                _conditional_refs(sub, out)
    elif isinstance(value, list):
        for item in value:
            _conditional_refs(item, out)


def unpack_bundle(
    bundle: dict[str, Any], resolve: ConditionalResolver | None = None
) -> tuple[list[dict[str, Any]], list[Problem]]:
    """The resources a Bundle carries, with urn:uuid references resolved, or the problems found.

    ``resolve`` turns a conditional reference (``Patient?identifier=s|v``) into ``Type/id``
    when exactly one stored resource matches (None otherwise). Any problem makes the whole
    Bundle fail: a transaction is all-or-nothing and a partially resolved collection would
    store dangling references.
    """
    btype = bundle.get("type")
    if not isinstance(btype, str) or btype not in _UNPACKED_TYPES:
        return [], [Problem(f"unsupported Bundle.type {btype!r}", "Bundle.type", "value")]
    entries = bundle.get("entry") or []
    if not isinstance(entries, list):
        return [], [Problem("Bundle.entry must be an array", "Bundle.entry", "structure")]
    mapping: dict[str, str] = {}
    problems: list[Problem] = []
    resources: list[tuple[int, dict[str, Any]]] = []
    seen: set[tuple[str, str]] = set()
    for i, entry in enumerate(entries):
        res = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(res, dict):
            request = entry.get("request") if isinstance(entry, dict) else None
            if btype in ("transaction", "batch") and isinstance(request, dict) and request.get("method") == "DELETE":
                continue
            problems.append(Problem("entry has no resource", f"Bundle.entry[{i}].resource", "required"))
            continue
        rtype = res.get("resourceType")
        if not isinstance(rtype, str):
            problems.append(Problem("resource has no resourceType", f"Bundle.entry[{i}].resource", "required"))
            continue
        full_url = entry.get("fullUrl") or ""
        if not isinstance(full_url, str):
            problems.append(Problem("fullUrl must be a string", f"Bundle.entry[{i}].fullUrl", "structure"))
            continue
        if full_url.startswith(("urn:uuid:", "urn:oid:")):
            rid = res.get("id") or id_for_full_url(full_url, rtype)
            mapping[full_url] = f"{rtype}/{rid}"
            res = {**res, "id": rid}
        elif full_url and res.get("id"):
            mapping[full_url] = f"{rtype}/{res['id']}"
        if isinstance(res.get("id"), str) and res["id"]:  # an id of another type: the validator says so
            key = (rtype, res["id"])
            if key in seen and btype == "transaction":
                problems.append(
                    Problem(f"duplicate resource {rtype}/{res['id']} in transaction", f"Bundle.entry[{i}]", "duplicate")
                )
            seen.add(key)
        resources.append((i, res))
    conditional: set[str] = set()
    for _, res in resources:
        _conditional_refs(res, conditional)
    for ref in sorted(conditional):
        target = resolve(ref) if resolve else None
        if target is None:
            problems.append(Problem(f"conditional reference {ref!r} does not match exactly one stored resource",
                                    "Bundle.entry", "not-found"))
        else:
            mapping[ref] = target
    out = []
    for i, res in resources:
        resolved = _rewrite_refs(res, mapping)
        dangling = _find_dangling(resolved)
        if dangling:
            problems.append(
                Problem(f"reference {dangling!r} does not resolve within the Bundle", f"Bundle.entry[{i}].resource")
            )
        out.append(resolved)
    return (out, []) if not problems else ([], problems)


def _find_dangling(value: Any) -> str | None:
    """The first ``urn:uuid:`` reference left unresolved, if any."""
    if isinstance(value, dict):
        ref = value.get("reference")
        if isinstance(ref, str) and ref.startswith(("urn:uuid:", "urn:oid:")):
            return ref
        for sub in value.values():
            if isinstance(sub, dict | list):
                found = _find_dangling(sub)
                if found:
                    return found
    elif isinstance(value, list):
        for item in value:
            found = _find_dangling(item)
            if found:
                return found
    return None
