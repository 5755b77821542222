"""Deterministic resource ids and content fingerprints.

The same source record must always land on the same id, so that replaying a
file or resending a message changes nothing: ids come from the record's own
business identifier when it has one, otherwise from its content.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import orjson

FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_VOLATILE_META = frozenset({"versionId", "lastUpdated"})


def stable_id(*parts: str) -> str:
    """A FHIR-legal id (32 hex chars) derived from the given parts."""
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=16)
    return digest.hexdigest()


def content_without_meta(resource: dict[str, Any]) -> dict[str, Any]:
    """The resource without the store-maintained meta fields (shallow copy)."""
    meta = resource.get("meta")
    if not meta or _VOLATILE_META.isdisjoint(meta):  # one C call, no generator per resource
        return resource
    trimmed = {k: v for k, v in meta.items() if k not in _VOLATILE_META}
    out = dict(resource)
    if trimmed:
        out["meta"] = trimmed
    else:
        del out["meta"]
    return out


def content_hash(resource: dict[str, Any]) -> str:
    """Fingerprint of a resource's content, independent of key order and store meta."""
    canonical = orjson.dumps(content_without_meta(resource), option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(canonical, digest_size=16).hexdigest()


def assign_id(resource: dict[str, Any]) -> str:
    """Keep a source id; otherwise derive one from identifiers or, failing that, content."""
    rid = resource.get("id")
    if isinstance(rid, str) and rid:
        return rid
    rtype = resource.get("resourceType", "")
    idents = [
        f"{i.get('system', '')}|{i.get('value', '')}"
        for i in resource.get("identifier") or []
        if isinstance(i, dict) and i.get("value")
    ]
    if idents:
        return stable_id(rtype, *sorted(idents))
    return stable_id(rtype, content_hash(resource))
