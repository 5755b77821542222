"""Batch and transaction Bundles (POST to the base).

A transaction is all-or-nothing: every entry is resolved and validated first
(conditional creates/updates/deletes, ``urn:uuid:`` fullUrls, conditional
references such as ``Patient?identifier=…``), then all creates, updates and
patches go to the store as one ``Store.write`` call, which is one DuckDB
transaction. Deletes follow in the same lock; they cannot fail once the checks
have passed. A batch runs each entry on its own, and a failing entry becomes an
OperationOutcome in its response slot.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl

import orjson

from fhir_server.capability import capability_statement
from fhir_server.history import history_page
from fhir_server.links import LinkRewriter
from fhir_server.operations import instance_meta, meta_in_use
from fhir_server.patch import apply_patch
from fhir_server.query import prefers_strict
from fhir_server.responses import FHIRError, operation_outcome, outcome_issue, output_format
from fhir_server.search import answer_search
from fhir_server.service import FhirService, Written, check_id, check_type, new_id
from fhir_server.versioning import etag, not_modified, parse_instant, parse_version
from store.store import fhir_instant

_ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 3, "GET": 4}


@dataclass
class Step:
    """One Bundle entry's request, parsed."""

    index: int
    method: str
    rtype: str
    rid: str | None
    version: str | None
    criteria: list[tuple[str, str]] | None
    query: list[tuple[str, str]]
    full_url: str | None
    resource: dict[str, Any] | None
    request: dict[str, Any]
    path: list[str] = field(default_factory=list)
    compartment: str | None = None
    target: str | None = None
    existing: bool = False
    result: dict[str, Any] = field(default_factory=dict)


def _status(code: int) -> str:
    return f"{code} {HTTPStatus(code).phrase}"


def _relative(url: str, base: str) -> str:
    """A request url relative to this server's base (absolute ones must point here)."""
    if url.startswith(("http://", "https://")):
        if not url.startswith(base + "/"):
            raise FHIRError(400, f"request url {url!r} is not on this server", code="not-supported")
        return url[len(base) + 1:]
    return url.lstrip("/")


def parse_step(index: int, entry: Any, base: str) -> Step:
    """Parse ``entry.request`` into a :class:`Step` (400 for anything malformed)."""
    where = f"Bundle.entry[{index}]"
    if not isinstance(entry, dict) or not isinstance(entry.get("request"), dict):
        raise FHIRError(400, f"{where} has no request", code="required", expression=f"{where}.request")
    request = entry["request"]
    method, url = request.get("method"), request.get("url")
    if method == "HEAD":
        raise FHIRError(405, f"{where}: HEAD is not supported here, as on the REST API; use GET",
                        code="not-supported", expression=f"{where}.request.method")
    if method not in _ORDER or not isinstance(url, str) or not url:
        raise FHIRError(400, f"{where}.request needs a method (GET, POST, PUT, PATCH, DELETE) and a url",
                        code="required", expression=f"{where}.request")
    path, _, query = _relative(url, base).partition("?")
    segments = [s for s in path.split("/") if s]
    if segments and _system_read(segments, where):
        if method != "GET":
            raise FHIRError(405, f"{where}: {method} {url!r} is not an interaction; use GET", code="not-supported",
                            expression=f"{where}.request.method")
        return Step(index, method, "", None, None, None, parse_qsl(query, keep_blank_values=True), None, None,
                    request, segments)
    if not segments:
        if method != "GET":
            raise FHIRError(400, f"{where}.request.url names no resource type", code="invalid")
        return Step(index, method, "", None, None, None, parse_qsl(query, keep_blank_values=True), None, None,
                    request, segments)
    if method == "GET" and len(segments) == 3 and segments[0] == "Patient":
        check_type(segments[2])
        return Step(index, method, segments[2], None, None, None, parse_qsl(query, keep_blank_values=True), None,
                    None, request, segments, compartment=segments[1])
    rtype = segments[0]
    check_type(rtype)
    rid = segments[1] if len(segments) > 1 else None
    version = segments[3] if len(segments) == 4 and segments[2] == "_history" else None
    if len(segments) > 2 and version is None or len(segments) > 4:
        raise FHIRError(400, f"{where}.request.url {url!r} is not a supported interaction", code="not-supported")
    pairs = parse_qsl(query, keep_blank_values=True)
    resource = entry.get("resource")
    if method in ("POST", "PUT", "PATCH") and not isinstance(resource, dict):
        raise FHIRError(400, f"{where} needs a resource for {method}", code="required",
                        expression=f"{where}.resource")
    conditional = method in ("PUT", "DELETE", "PATCH") and rid is None
    if method in ("PUT", "DELETE", "PATCH") and rid is None and not pairs:
        raise FHIRError(400, f"{where}: {method} needs Type/id or search criteria", code="required")
    if rid is not None:
        check_id(rid)
    full_url = entry.get("fullUrl") if isinstance(entry.get("fullUrl"), str) else None
    return Step(index, method, rtype, rid, version, pairs if conditional else None, pairs, full_url,
                resource if isinstance(resource, dict) else None, request, segments)


def _system_read(segments: list[str], where: str) -> bool:
    """Whether a url is ``metadata``, a history (system, type or instance) or an operation: reads that
    are answered as the REST API answers them. Operations other than ``$meta`` are refused (400)."""
    last = segments[-1]
    if segments == ["metadata"] or (last == "_history" and len(segments) <= 3):
        return True
    if not last.startswith("$"):
        return False
    if last != "$meta" or len(segments) > 3:
        raise FHIRError(400, f"{where}: operation {'/'.join(segments)!r} is not supported in a Bundle entry "
                             "(only $meta is); call it on its own URL", code="not-supported",
                        expression=f"{where}.request.url")
    return True


def _single_match(service: FhirService, rtype: str, pairs: list[tuple[str, str]], what: str) -> str | None:
    found = service.matches(rtype, pairs)
    if len(found) > 1:
        raise FHIRError(412, f"{what} matched more than one {rtype}", code="multiple-matches")
    return found[0] if found else None


def _resolve_target(service: FhirService, step: Step) -> None:
    """Decide which resource a write step touches (conditional criteria run here)."""
    where = f"Bundle.entry[{step.index}]"
    if step.method == "POST":
        header = step.request.get("ifNoneExist")
        if isinstance(header, str) and header:
            found = _single_match(service, step.rtype, parse_qsl(header.split("?", 1)[-1], keep_blank_values=True),
                                  f"{where} ifNoneExist")
            if found:
                step.target, step.existing = found, True
                return
        step.target = new_id()
    elif step.criteria is not None:
        found = _single_match(service, step.rtype, step.criteria, f"{where} conditional {step.method}")
        if found is None and step.method == "PATCH":
            raise FHIRError(404, f"{where}: conditional PATCH matched nothing", code="not-found")
        body_id = (step.resource or {}).get("id")
        step.target = found or (body_id if isinstance(body_id, str) else None)
        if step.method == "PUT" and step.target is None:
            step.target = new_id()
    else:
        step.target = step.rid


def _resolve_reference(ref: str, ids: dict[str, str], service: FhirService, where: str) -> str:
    """A reference through a fullUrl becomes ``Type/id``; a conditional reference is searched."""
    if ref in ids:
        return ids[ref]
    if ref.startswith(("urn:uuid:", "urn:oid:")):
        raise FHIRError(400, f"{where}: reference {ref!r} does not resolve within the Bundle", code="not-found")
    rtype, question, query = ref.partition("?")
    if question and "/" not in rtype:
        check_type(rtype)
        found = service.matches(rtype, parse_qsl(query, keep_blank_values=True))
        if len(found) != 1:
            raise FHIRError(412, f"{where}: conditional reference {ref!r} matched {len(found)} resources",
                            code="multiple-matches" if found else "not-found")
        return f"{rtype}/{found[0]}"
    return ref


def _patch_body(step: Step) -> Any:
    """The patch an entry carries: a Parameters (FHIRPath Patch) or a Binary holding a JSON Patch."""
    resource = step.resource or {}
    if resource.get("resourceType") != "Binary":
        return resource
    try:
        return orjson.loads(base64.b64decode(resource.get("data") or "", validate=True))
    except (binascii.Error, orjson.JSONDecodeError, ValueError):
        raise FHIRError(400, f"Bundle.entry[{step.index}]: Binary.data is not a base64 JSON Patch",
                        code="invalid") from None


def _prepared(service: FhirService, step: Step, ids: dict[str, str]) -> dict[str, Any] | None:
    """The resource a write step will store (None when it writes nothing)."""
    where = f"Bundle.entry[{step.index}]"
    if step.method == "DELETE" or step.existing:
        return None
    assert step.target is not None
    if_match = step.request.get("ifMatch")
    if isinstance(if_match, str):
        service.check_version(step.rtype, step.target, parse_version(if_match, "ifMatch"))
    links = LinkRewriter(ids, lambda ref: _resolve_reference(ref, ids, service, where))
    if step.method == "PATCH":
        current = orjson.loads(service.current(step.rtype, step.target).json or b"{}")
        patched = apply_patch(current, links.walk(_patch_body(step), None))
        # The stored part of a patched resource is not the Bundle's: only fullUrls are replaced there.
        resource = LinkRewriter(ids, lambda ref: ids.get(ref, ref)).resource(patched)
    else:
        resource = links.resource(step.resource or {})
    if step.method == "PUT" and step.criteria is not None and "id" not in resource:
        resource = {**resource, "id": step.target}
    try:
        body = service.prepare(step.rtype, resource, None if step.method == "POST" else step.target)
    except FHIRError as exc:
        exc.issues = [outcome_issue("error", exc.code, f"{where}: {exc.diagnostics}", where), *(exc.issues or [])]
        raise
    body["id"] = step.target
    return body


def _written_entry(base: str, written: Written, prefer: str) -> dict[str, Any]:
    response: dict[str, Any] = {"status": _status(written.status), "location": written.location,
                                "etag": etag(written.version_id), "lastModified": fhir_instant(written.last_updated)}
    entry: dict[str, Any] = {"fullUrl": f"{base}/{written.resource_type}/{written.id}", "response": response}
    if "return=OperationOutcome" in prefer:
        response["outcome"] = operation_outcome([outcome_issue("information", "informational", written.outcome)])
    elif "return=minimal" not in prefer and written.body is not None:
        entry["resource"] = orjson.loads(written.body)
    return entry


def _get_entry(service: FhirService, step: Step, base: str, prefer: str) -> dict[str, Any]:
    """A GET entry: read (honouring ifNoneMatch / ifModifiedSince with a 304), vread, search (type,
    compartment or across types: the REST search's page, ``Prefer: handling`` taken from the Bundle's
    request since R4 entries carry no Prefer), history, ``metadata`` or ``$meta``, answered like the REST
    interaction."""
    if step.rid is None and (step.rtype or not step.path):
        page = answer_search(service, base, step.rtype or None, step.query, output_format(dict(step.query), ""),
                             strict=prefers_strict(prefer), compartment=step.compartment)
        return {"resource": orjson.loads(page), "response": {"status": _status(200)}}
    if not step.rtype:
        return _system_entry(service, step, base)
    if step.version is not None:
        resource, version, ts = service.vread(step.rtype, step.rid, step.version)
    else:
        cur = service.current(step.rtype, step.rid)
        resource, version, ts = cur.json or b"{}", cur.version_id, cur.last_updated
        if_none_match, since = step.request.get("ifNoneMatch"), step.request.get("ifModifiedSince")
        modified_since = parse_instant(since, "ifModifiedSince") if isinstance(since, str) else None
        if not_modified(if_none_match if isinstance(if_none_match, str) else None, modified_since, version, ts):
            return {"response": {"status": _status(304), "etag": etag(version), "lastModified": fhir_instant(ts)}}
    return {"resource": orjson.loads(resource) if isinstance(resource, bytes) else resource,
            "response": {"status": _status(200), "etag": etag(version), "lastModified": fhir_instant(ts)}}


def _system_entry(service: FhirService, step: Step, base: str) -> dict[str, Any]:
    """``metadata``, ``[Type/[id/]]_history`` or ``[Type/[id/]]$meta``, through the REST API's functions."""
    *owner, last = step.path
    rtype = owner[0] if owner else None
    rid = owner[1] if len(owner) > 1 else None
    if last == "metadata":
        resource = capability_statement(base)
    elif last == "_history":
        resource = orjson.loads(history_page(service, base, rtype, rid, step.query))
    elif rtype is not None and rid is not None:
        resource = instance_meta(service, rtype, rid)
    else:
        resource = meta_in_use(service, rtype)
    return {"resource": resource, "response": {"status": _status(200)}}


def run_steps(service: FhirService, steps: list[Step], base: str, prefer: str) -> dict[int, dict[str, Any]]:
    """Execute steps as one unit (caller holds the lock); returns the response entry per Bundle index."""
    ordered = sorted(steps, key=lambda s: (_ORDER[s.method], s.index))
    writes = [s for s in ordered if s.method != "GET"]
    ids: dict[str, str] = {}
    for step in writes:
        _resolve_target(service, step)
        if step.full_url and step.target:
            ids[step.full_url] = f"{step.rtype}/{step.target}"
    touched: set[tuple[str, str]] = set()
    for step in writes:
        key = (step.rtype, step.target or "")
        if step.target and key in touched:
            raise FHIRError(400, f"Bundle.entry[{step.index}]: {step.rtype}/{step.target} is touched twice",
                            code="duplicate")
        touched.add(key)
    staged = [(step, body) for step in writes if (body := _prepared(service, step, ids)) is not None]
    results = service.write([body for _, body in staged], [step.method for step, _ in staged]) if staged else []
    out: dict[int, dict[str, Any]] = {}
    for (step, _), result in zip(staged, results, strict=True):
        out[step.index] = _written_entry(base, service.written(result), prefer)
    for step in writes:
        if step.existing:
            out[step.index] = _written_entry(base, service.existing(step.rtype, step.target or ""), prefer)
        elif step.method == "DELETE":
            deleted = service.delete(step.rtype, step.target) if step.target else None
            response: dict[str, Any] = {"status": _status(200)}
            if deleted is not None and deleted.version_id:
                response["etag"] = etag(deleted.version_id)
            out[step.index] = {"response": response}
    for step in ordered:
        if step.method == "GET":
            out[step.index] = _get_entry(service, step, base, prefer)
    return out


def _error_entry(exc: FHIRError) -> dict[str, Any]:
    return {"response": {"status": _status(exc.status), "outcome": exc.outcome()}}


def process_bundle(service: FhirService, bundle: dict[str, Any], base: str, prefer: str = "") -> dict[str, Any]:
    """Run a batch or transaction Bundle and return the batch-response / transaction-response Bundle."""
    if bundle.get("resourceType") != "Bundle" or bundle.get("type") not in ("batch", "transaction"):
        raise FHIRError(400, "POST to the base takes a Bundle of type batch or transaction", code="invalid")
    entries = bundle.get("entry") or []
    if not isinstance(entries, list):
        raise FHIRError(400, "Bundle.entry must be an array", code="structure")
    kind = bundle["type"]
    with service.lock:
        if kind == "transaction":
            steps = [parse_step(i, e, base) for i, e in enumerate(entries)]
            out = run_steps(service, steps, base, prefer)
        else:
            out = {}
            for i, entry in enumerate(entries):
                try:
                    out.update(run_steps(service, [parse_step(i, entry, base)], base, prefer))
                except FHIRError as exc:
                    out[i] = _error_entry(exc)
    return {"resourceType": "Bundle", "type": f"{kind}-response",
            "entry": [out[i] for i in range(len(entries))]}
