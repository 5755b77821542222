"""Links inside a transaction Bundle: a fullUrl named anywhere in an entry becomes the id it was given.

R4 (http.html, transaction processing rules) asks servers to replace every matching link
in the Bundle: resource references, elements of type ``uri``, ``url``, ``oid`` and ``uuid``,
and ``<a href>`` / ``<img src>`` in the narrative; elements of type ``canonical`` are not
replaced. Which element has which type comes from the compiled R4 element tables, so an
``Attachment.url`` holding ``urn:uuid:…`` is replaced while a ``code`` with the same text
is not.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from mapping.validation.structures import KIND_COMPLEX, KIND_RESOURCE, load_structures

LINK_TYPES = frozenset({"uri", "url", "oid", "uuid"})
_NARRATIVE_LINK = re.compile(r"""(\s(?:href|src)\s*=\s*)(["'])(.*?)\2""", re.IGNORECASE | re.DOTALL)


class LinkRewriter:
    """Replaces Bundle fullUrls (``ids``: fullUrl -> ``Type/id``) in a resource.

    ``resolve`` decides what a ``Reference.reference`` becomes (the transaction also searches
    conditional references there and refuses dangling ``urn:uuid:`` ones).
    """

    def __init__(self, ids: dict[str, str], resolve: Callable[[str], str]) -> None:
        self.ids = ids
        self.resolve = resolve
        self.types = load_structures().types

    def resource(self, resource: dict[str, Any]) -> dict[str, Any]:
        """A copy of ``resource`` with its links replaced."""
        rewritten: dict[str, Any] = self.walk(resource, resource.get("resourceType"))
        return rewritten

    def walk(self, value: Any, type_name: str | None) -> Any:
        """``value`` of FHIR type ``type_name``; None (unknown type) replaces only ``reference`` keys."""
        if isinstance(value, list):
            return [self.walk(v, type_name) for v in value]
        if not isinstance(value, dict):
            return value
        table = self.types.get(type_name or "")
        if table is None:
            return {key: self.resolve(sub) if key == "reference" and isinstance(sub, str) else self.walk(sub, None)
                    for key, sub in value.items()}
        out = {}
        for key, sub in value.items():
            spec = table.get(key)
            if key.startswith("_"):
                out[key] = self.walk(sub, "Element")
            elif spec is None:
                out[key] = self.walk(sub, None)
            elif type_name == "Reference" and key == "reference" and isinstance(sub, str):
                out[key] = self.resolve(sub)
            elif type_name == "Narrative" and key == "div" and isinstance(sub, str):
                out[key] = self.narrative(sub)
            elif spec.type_name in LINK_TYPES:
                out[key] = self.link(sub)
            elif spec.kind == KIND_RESOURCE:
                out[key] = self.walk(sub, sub.get("resourceType") if isinstance(sub, dict) else None)
            elif spec.kind == KIND_COMPLEX:
                out[key] = self.walk(sub, spec.type_name)
            else:
                out[key] = sub
        return out

    def link(self, value: Any) -> Any:
        """A uri-typed value (or a list of them) with a fullUrl replaced."""
        if isinstance(value, list):
            return [self.link(v) for v in value]
        return self.ids.get(value, value) if isinstance(value, str) else value

    def narrative(self, div: str) -> str:
        """XHTML with ``href`` / ``src`` attributes naming a fullUrl replaced."""

        def replace(match: re.Match[str]) -> str:
            target = self.ids.get(match.group(3))
            return match.group(0) if target is None else f"{match.group(1)}{match.group(2)}{target}{match.group(2)}"

        return _NARRATIVE_LINK.sub(replace, div)
