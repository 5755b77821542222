"""The FHIR interactions on the store, independent of HTTP so transactions and routes share them.

Every method takes parsed input and returns a :class:`Written` (or raises
:class:`FHIRError`); the HTTP layer only adds headers and the Prefer handling.
Check-then-write sequences (If-Match, conditional create/update/delete,
transactions) hold ``self.lock`` so two REST clients cannot both pass a version
check; the store's own lock keeps each write batch atomic.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from fhir_server.patch import apply_patch
from fhir_server.responses import FHIRError, outcome_issue
from mapping.resource_types import R4_RESOURCE_TYPES
from mapping.validation import validate_resource
from mapping.viewdef import ViewDefinitionError, validate_view
from store.ids import FHIR_ID
from store.search import SearchError, SearchRequest, SearchResult, search, search_in_memory, search_system
from store.store import Current, Store, StoreError, WriteResult

VIEW_DEFINITION = "ViewDefinition"
SUPPORTED_TYPES: frozenset[str] = R4_RESOURCE_TYPES | {VIEW_DEFINITION}
PAGING_PARAMS = frozenset({"_count", "_offset"})


@dataclass(frozen=True, slots=True)
class Written:
    """What a write interaction produced: HTTP status, the version now current and its bytes."""

    status: int
    resource_type: str
    id: str
    version_id: int
    last_updated: datetime
    body: bytes | None
    outcome: str

    @property
    def location(self) -> str:
        """Relative ``Type/id/_history/n`` for Location headers and Bundle responses."""
        return f"{self.resource_type}/{self.id}/_history/{self.version_id}"


def new_id() -> str:
    """A server-assigned id for a create (a UUID: unique without coordination)."""
    return str(uuid.uuid4())


def check_type(rtype: str) -> None:
    """404 for a resource type this server does not serve."""
    if rtype not in SUPPORTED_TYPES:
        raise FHIRError(404, f"unknown resource type {rtype!r}", code="not-supported")


def check_id(rid: str) -> None:
    """400 for a logical id that is not a FHIR id."""
    if not FHIR_ID.match(rid):
        raise FHIRError(400, f"invalid id {rid!r}", code="value")


def validation_issues(resource: dict[str, Any]) -> list[dict[str, Any]]:
    """Structural R4 issues (ViewDefinitions: the SQL-on-FHIR view rules)."""
    if resource.get("resourceType") == VIEW_DEFINITION:
        try:
            validate_view(resource)
        except ViewDefinitionError as exc:
            return [outcome_issue("error", "invalid", str(exc), VIEW_DEFINITION)]
        return []
    return validate_resource(resource)


def search_params(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The parameters the search engine sees: paging travels in the request's own fields."""
    return [(n, v) for n, v in pairs if n not in PAGING_PARAMS]


class FhirService:
    """REST semantics over one :class:`Store`."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.lock = threading.RLock()

    # -- reads -----------------------------------------------------------
    def current(self, rtype: str, rid: str) -> Current:
        """The current version from the hot map; 404 if unknown, 410 if deleted."""
        check_type(rtype)
        cur = self.store.current(rtype, rid)
        if cur is None:
            raise FHIRError(404, f"{rtype}/{rid} not found", code="not-found")
        if cur.deleted:
            raise FHIRError(410, f"{rtype}/{rid} was deleted", code="deleted")
        return cur

    def vread(self, rtype: str, rid: str, version: str) -> tuple[dict[str, Any] | bytes, int, datetime]:
        """One version: (resource, version, lastUpdated); the current one straight from the hot map."""
        check_type(rtype)
        if not version.isdigit():
            raise FHIRError(404, f"version {version!r} of {rtype}/{rid} not found", code="not-found")
        vid = int(version)
        cur = self.store.current(rtype, rid)
        if cur is not None and cur.version_id == vid and not cur.deleted and cur.json is not None:
            return cur.json, vid, cur.last_updated
        found = self.store.vread(rtype, rid, vid)
        if found is None:
            raise FHIRError(404, f"version {vid} of {rtype}/{rid} not found", code="not-found")
        deleted, resource = found
        if deleted or resource is None:
            raise FHIRError(410, f"version {vid} of {rtype}/{rid} is a deletion", code="deleted")
        return resource, vid, datetime.fromisoformat(resource["meta"]["lastUpdated"])

    def search(self, rtype: str, params: list[tuple[str, str]], count: int, offset: int,
               *, strict: bool = False, base: str | None = None, compartment: str | None = None) -> SearchResult:
        """Run a type search; a search the engine refuses is the client's error (400, or its status).
        ``base`` is this server's URL: absolute references on it name local resources; ``compartment``
        a patient id to search only that Patient's compartment (404 or 410 if there is no such patient)."""
        check_type(rtype)
        if compartment is not None:
            self.current("Patient", compartment)
        try:
            return search(self.store, SearchRequest(rtype, search_params(params), count, offset, strict, base,
                                                    compartment))
        except SearchError as exc:
            raise FHIRError(exc.status, str(exc), code="invalid" if exc.status == 400 else "not-supported",
                            expression=exc.param) from None

    def search_in_memory(self, rtype: str, params: list[tuple[str, str]], count: int, offset: int,
                         *, strict: bool = False, base: str | None = None) -> SearchResult | None:
        """The search if cached patients answer it without DuckDB (safe on the event loop), else None."""
        if rtype not in SUPPORTED_TYPES:
            return None
        return search_in_memory(self.store, SearchRequest(rtype, search_params(params), count, offset, strict,
                                                          base))

    def search_system(self, params: list[tuple[str, str]], count: int, offset: int,
                      *, strict: bool = False, base: str | None = None) -> SearchResult:
        """Search across types (``GET [base]?_type=…``)."""
        try:
            return search_system(self.store, search_params(params), count, offset, strict, base)
        except SearchError as exc:
            raise FHIRError(exc.status, str(exc), code="invalid" if exc.status == 400 else "not-supported",
                            expression=exc.param) from None

    def matches(self, rtype: str, params: list[tuple[str, str]]) -> list[str]:
        """Ids matching conditional criteria (at most two: enough to tell none/one/many).

        Criteria the engine ignored would widen the match silently, so they are refused (412).
        """
        if not params:
            raise FHIRError(412, "conditional request without search criteria", code="invalid")
        result = self.search(rtype, params, 2, 0)
        if result.ignored:
            raise FHIRError(412, f"conditional criteria not supported: {', '.join(result.ignored)}",
                            code="not-supported")
        return [rid for _, rid in result.keys]

    # -- writes ----------------------------------------------------------
    def prepare(self, rtype: str, resource: dict[str, Any], rid: str | None) -> dict[str, Any]:
        """Check a resource for create/update against its URL and the R4 structure (400/422)."""
        check_type(rtype)
        if resource.get("resourceType") != rtype:
            raise FHIRError(400, f"resourceType {resource.get('resourceType')!r} does not match the URL "
                                 f"type {rtype!r}", code="invalid", expression="resourceType")
        body = dict(resource)
        if rid is None:
            body.pop("id", None)
        else:
            check_id(rid)
            if "id" not in body:
                raise FHIRError(400, "an update must carry the resource id", code="required", expression="id")
            if body["id"] != rid:
                raise FHIRError(400, f"resource id {body['id']!r} does not match the URL id {rid!r}",
                                code="invalid", expression=f"{rtype}.id")
        issues = [i for i in validation_issues(body) if i.get("severity") in ("error", "fatal")]
        if issues:
            raise FHIRError(422, "resource is invalid", code="processing", issues=issues)
        return body

    def write(self, resources: list[dict[str, Any]], methods: list[str]) -> list[WriteResult]:
        """One all-or-nothing store write of what ``methods`` (POST, PUT, PATCH: history reports them)
        sent; a refusal by the store is the client's error."""
        try:
            return self.store.write(resources, methods=methods)
        except StoreError as exc:
            raise FHIRError(400, str(exc), code=exc.code, expression=exc.expression) from None

    def written(self, result: WriteResult) -> Written:
        """The store's write result as a REST outcome (201 for a create, 200 otherwise)."""
        status = 201 if result.outcome == "created" else 200
        body = self.store.read_bytes(result.resource_type, result.id)
        return Written(status, result.resource_type, result.id, result.version_id, result.last_updated, body,
                       result.outcome)

    def existing(self, rtype: str, rid: str, outcome: str = "unchanged") -> Written:
        """The current version as an outcome with status 200 (conditional create that found a match)."""
        cur = self.current(rtype, rid)
        return Written(200, rtype, rid, cur.version_id, cur.last_updated, cur.json, outcome)

    def create(self, rtype: str, resource: dict[str, Any],
               if_none_exist: list[tuple[str, str]] | None = None) -> Written:
        """POST: a new id always, unless ``If-None-Exist`` criteria find one match (then 200, no write)."""
        body = self.prepare(rtype, resource, None)
        with self.lock:
            if if_none_exist is not None:
                found = self.matches(rtype, if_none_exist)
                if len(found) > 1:
                    raise FHIRError(412, "conditional create matched more than one resource", code="duplicate")
                if found:
                    return self.existing(rtype, found[0])
            body["id"] = new_id()
            return self.written(self.write([body], ["POST"])[0])

    def update(self, rtype: str, rid: str, resource: dict[str, Any], if_match: int | None = None,
               method: str = "PUT") -> Written:
        """PUT Type/id: update, or create with the client's id; If-Match must name the current version.
        ``method``: the interaction history reports (a patch is written as an update)."""
        body = self.prepare(rtype, resource, rid)
        with self.lock:
            self.check_version(rtype, rid, if_match)
            return self.written(self.write([body], [method])[0])

    def check_version(self, rtype: str, rid: str, if_match: int | None) -> None:
        """412 when the client's version is not the current one (lost-update protection).

        A resource that does not exist (or is deleted) has no version to match: 412 too, since
        without the condition the update would have created it (RFC 9110 13.1.1, 13.2.1)."""
        if if_match is None:
            return
        cur = self.store.current(rtype, rid)
        if cur is None:
            raise FHIRError(412, f"{rtype}/{rid} does not exist: If-Match version {if_match} cannot match",
                            code="conflict")
        if cur.deleted:
            raise FHIRError(412, f"{rtype}/{rid} was deleted: If-Match version {if_match} cannot match",
                            code="conflict")
        if cur.version_id != if_match:
            raise FHIRError(412, f"{rtype}/{rid} is at version {cur.version_id}, not {if_match}", code="conflict")

    def conditional_update(self, rtype: str, criteria: list[tuple[str, str]], resource: dict[str, Any],
                           if_match: int | None = None) -> Written:
        """PUT Type?criteria: no match creates, one match updates it, several are 412."""
        check_type(rtype)
        with self.lock:
            found = self.matches(rtype, criteria)
            if len(found) > 1:
                raise FHIRError(412, "conditional update matched more than one resource", code="multiple-matches")
            if found:
                rid = found[0]
                if resource.get("id") not in (None, rid):
                    raise FHIRError(400, f"resource id {resource['id']!r} differs from the matched {rid!r}",
                                    code="invalid", expression="id")
            else:
                rid = resource.get("id") if isinstance(resource.get("id"), str) else new_id()
            return self.update(rtype, rid, {**resource, "id": rid}, if_match)

    def delete(self, rtype: str, rid: str) -> Written:
        """DELETE Type/id: idempotent (deleting a missing or deleted resource answers 200 too)."""
        check_type(rtype)
        with self.lock:
            result = self.store.delete(rtype, rid)
        return Written(200, rtype, rid, result.version_id, result.last_updated, None, result.outcome)

    def conditional_delete(self, rtype: str, criteria: list[tuple[str, str]]) -> Written:
        """DELETE Type?criteria: deletes the single match; several matches are 412."""
        check_type(rtype)
        with self.lock:
            found = self.matches(rtype, criteria)
            if len(found) > 1:
                raise FHIRError(412, "conditional delete matched more than one resource", code="multiple-matches")
            if not found:
                return Written(200, rtype, "", 0, datetime.now(UTC), None, "not-found")
            return self.delete(rtype, found[0])

    def patch(self, rtype: str, rid: str, patch: Any, if_match: int | None = None) -> Written:
        """PATCH Type/id with any of the supported patch formats; the result is validated like an update."""
        with self.lock:
            cur = self.current(rtype, rid)
            self.check_version(rtype, rid, if_match)
            patched = apply_patch(orjson.loads(cur.json or b"{}"), patch)
            if patched.get("id") != rid or patched.get("resourceType") != rtype:
                raise FHIRError(422, "a patch must not change resourceType or id", code="processing")
            return self.update(rtype, rid, patched, method="PATCH")

    def conditional_patch(self, rtype: str, criteria: list[tuple[str, str]], patch: Any,
                          if_match: int | None = None) -> Written:
        """PATCH Type?criteria: patches the single match (404 for none, 412 for several)."""
        check_type(rtype)
        with self.lock:
            found = self.matches(rtype, criteria)
            if len(found) != 1:
                raise FHIRError(404 if not found else 412, f"conditional patch matched {len(found)} resources",
                                code="not-found" if not found else "multiple-matches")
            return self.patch(rtype, found[0], patch, if_match)
