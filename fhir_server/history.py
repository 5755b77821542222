"""History of one resource, a type or the whole system as a page of a history Bundle.

One function for the REST routes and for ``GET …/_history`` entries of a batch or
transaction, so both answer the same parameters (``_since``, ``_at``, ``_count``,
``_offset``) the same way.
"""

from __future__ import annotations

from fhir_server.bundles import history_bundle
from fhir_server.query import paging
from fhir_server.responses import FHIRError
from fhir_server.service import FhirService, check_type
from fhir_server.versioning import parse_instant, parse_period


def history_page(service: FhirService, base: str, rtype: str | None, rid: str | None,
                 pairs: list[tuple[str, str]]) -> bytes:
    """Instance (``rtype`` and ``rid``), type (``rtype``) or system history, newest first; 404 for an
    instance that never existed."""
    if rtype is not None:
        check_type(rtype)
    count, offset, params = paging(pairs)
    since = at = None
    for name, value in params:
        if name == "_since":
            since = parse_instant(value, "_since")
        elif name == "_at":
            at = parse_period(value, "_at")
    if rtype is not None and rid is not None and service.store.current(rtype, rid) is None:
        raise FHIRError(404, f"{rtype}/{rid} not found", code="not-found")
    total, rows = service.store.history(rtype, rid, since=since, at=at, limit=count, offset=offset)
    path = "/".join(p for p in (base, rtype, rid, "_history") if p)
    kept = [(n, v) for n, v in params if n in ("_since", "_at")]
    return history_bundle(base=base, url=path, params=kept, total=total, count=count, offset=offset, rows=rows)
