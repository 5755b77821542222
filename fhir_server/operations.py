"""Operations: ``$validate``, ``Patient/$everything``, ``$meta``/``$meta-add``/``$meta-delete`` and
SQL-on-FHIR ``ViewDefinition/$run``.

``$everything`` reads the Patient compartment from the store's ``patient_id`` column
(one SQL query per page); ``$run`` compiles the view with ``mapping.viewdef`` over the
store's ``resources`` view and streams nothing: it is synchronous and returns the
rows as JSON, NDJSON or CSV.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from collections.abc import Awaitable, Callable
from typing import Any

import duckdb
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response

from fhir_server.bodies import parse_body
from fhir_server.bundles import searchset
from fhir_server.query import paging, query_pairs
from fhir_server.responses import FHIRError, base_url, negotiate, render
from fhir_server.service import VIEW_DEFINITION, FhirService, check_id, check_type, validation_issues
from fhir_server.versioning import parse_instant
from mapping.validation import operation_outcome
from mapping.viewdef import ViewDefinitionError, compile_view, run_compiled
from store.search import compartment_params

InPool = Callable[..., Awaitable[Any]]
_VIEW_FORMATS = {"json": "application/json", "ndjson": "application/x-ndjson", "csv": "text/csv"}
_VIEW_FORMAT_ALIASES = {"application/json": "json", "application/fhir+json": "json",
                        "application/x-ndjson": "ndjson", "application/ndjson": "ndjson", "text/csv": "csv"}


def parameter(parameters: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The first ``Parameters.parameter`` with this name."""
    for p in parameters.get("parameter") or []:
        if isinstance(p, dict) and p.get("name") == name:
            return p
    return None


def parameter_value(parameters: dict[str, Any], name: str) -> Any:
    """The value[x] of a named parameter (None when absent)."""
    p = parameter(parameters, name)
    if p is None:
        return None
    return next((v for k, v in p.items() if k.startswith("value")), None)


async def _optional_body(request: Request) -> Any:
    raw = await request.body()
    return parse_body(raw, request.headers.get("content-type")) if raw.strip() else None


# -- $validate -------------------------------------------------------------------------
def validate(service: FhirService, rtype: str, rid: str | None, body: Any) -> dict[str, Any]:
    """Validate a resource given inline (or the stored one); an OperationOutcome either way."""
    check_type(rtype)
    mode = None
    resource = body
    if isinstance(body, dict) and body.get("resourceType") == "Parameters":
        mode = parameter_value(body, "mode")
        resource = (parameter(body, "resource") or {}).get("resource")
    if mode == "delete":
        if rid is None:
            raise FHIRError(400, "mode=delete needs an instance", code="required")
        service.current(rtype, rid)
        return operation_outcome([])
    if resource is None:
        if rid is None:
            raise FHIRError(400, "$validate needs a resource", code="required")
        resource = orjson.loads(service.current(rtype, rid).json or b"{}")
    if not isinstance(resource, dict):
        raise FHIRError(400, "$validate needs a resource (JSON object)", code="structure")
    issues = list(validation_issues(resource))
    if resource.get("resourceType") != rtype:
        issues.insert(0, {"severity": "error", "code": "invalid", "expression": ["resourceType"],
                          "diagnostics": f"resourceType {resource.get('resourceType')!r} is not {rtype!r}"})
    if rid is not None and mode in (None, "update") and resource.get("id") not in (None, rid):
        issues.insert(0, {"severity": "error", "code": "invalid", "expression": [f"{rtype}.id"],
                          "diagnostics": f"id {resource.get('id')!r} does not match {rid!r}"})
    return operation_outcome(issues)


# -- $everything ------------------------------------------------------------------------
def everything(service: FhirService, request: Request, rid: str) -> bytes:
    """One page of the Patient compartment: the patient first, then by type, time and id.

    The store's ``patient_id`` column names one patient per resource (the most direct); resources
    that are in this patient's compartment through another reference (an Observation whose
    performer is this patient, a RelatedPerson) are found in the reference index.
    """
    service.current("Patient", rid)
    count, offset, params = paging(query_pairs(request))
    since, types, kept = None, None, []
    for name, value in params:
        if name == "_since":
            since = parse_instant(value, "_since")
            kept.append((name, value))
        elif name == "_type":
            types = {t for t in value.split(",") if t}
            for t in types:
                check_type(t)
            kept.append((name, value))
    cur = service.store.cursor()
    keys = set(cur.execute("SELECT resource_type, id FROM resources WHERE patient_id = ?", [rid]).fetchall())
    keys.add(("Patient", rid))
    for rt, rid_, param in cur.execute(
        "SELECT DISTINCT rt, id, param FROM idx_reference WHERE ref_type = 'Patient' AND ref_id = ?", [rid]
    ).fetchall():
        if param in compartment_params(rt):
            keys.add((rt, rid_))
    rows = []
    found = service.store.current_many(keys)
    for rt, i in keys:
        current = found.get((rt, i))
        if current is None or current.deleted or (types is not None and rt not in types):
            continue
        if since is not None and current.last_updated < since:
            continue
        rows.append((rt != "Patient", rt, current.last_updated, i))
    rows.sort()
    page = rows[offset: offset + count]
    entries = service.store.read_many([(t, i) for _, t, _, i in page])
    base = base_url(request)
    return searchset(base=base, url=f"{base}/Patient/{rid}/$everything", params=kept, total=len(rows),
                     count=count, offset=offset, entries=entries)


# -- $meta ------------------------------------------------------------------------------
def _meta_parameters(meta: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Parameters", "parameter": [{"name": "return", "valueMeta": meta}]}


def _coding_key(coding: Any) -> tuple[str, str]:
    return (str(coding.get("system", "")), str(coding.get("code", ""))) if isinstance(coding, dict) else ("", "")


def _changed_meta(meta: dict[str, Any], change: dict[str, Any], add: bool) -> dict[str, Any]:
    """``meta`` with the change's profiles, tags and security labels added or removed."""
    out = dict(meta)
    for key in ("profile", "tag", "security"):
        given = change.get(key) or []
        if not isinstance(given, list):
            raise FHIRError(400, f"meta.{key} must be an array", code="structure")
        keyed = (lambda v: v) if key == "profile" else _coding_key
        current = list(out.get(key) or [])
        if add:
            seen = {keyed(v) for v in current}
            current += [v for v in given if keyed(v) not in seen]
        else:
            drop = {keyed(v) for v in given}
            current = [v for v in current if keyed(v) not in drop]
        if current:
            out[key] = current
        else:
            out.pop(key, None)
    return out


def meta_in_use(service: FhirService, rtype: str | None) -> dict[str, Any]:
    """Type- or system-level ``$meta``: the profiles, tags and security labels current resources use."""
    if rtype is not None:
        check_type(rtype)
    where, args = ("AND rt = ?", [rtype]) if rtype else ("", [])
    cur = service.store.cursor()
    meta: dict[str, Any] = {}
    profiles = cur.execute(f"SELECT DISTINCT value FROM idx_uri WHERE param = '_profile' {where} ORDER BY 1",
                           args).fetchall()
    if profiles:
        meta["profile"] = [p for p, in profiles]
    for key in ("tag", "security"):
        codings = cur.execute(
            f"SELECT DISTINCT system, code FROM idx_token WHERE param = ? AND code IS NOT NULL {where} "
            "ORDER BY system NULLS FIRST, code", [f"_{key}", *args]).fetchall()
        if codings:
            meta[key] = [{k: v for k, v in (("system", s), ("code", c)) if v is not None} for s, c in codings]
    return _meta_parameters(meta)


def instance_meta(service: FhirService, rtype: str, rid: str) -> dict[str, Any]:
    """Instance ``$meta``: the current version's meta as Parameters."""
    resource = orjson.loads(service.current(rtype, rid).json or b"{}")
    return _meta_parameters(resource.get("meta") or {})


def meta_change(service: FhirService, rtype: str, rid: str, body: Any, add: bool) -> dict[str, Any]:
    """``$meta-add`` / ``$meta-delete``: a new version whose meta differs only as asked."""
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise FHIRError(400, "$meta-add/$meta-delete take a Parameters resource", code="structure")
    change = parameter_value(body, "meta")
    if not isinstance(change, dict):
        raise FHIRError(400, "Parameters needs a 'meta' parameter with valueMeta", code="required")
    with service.lock:
        resource = orjson.loads(service.current(rtype, rid).json or b"{}")
        resource["meta"] = _changed_meta(resource.get("meta") or {}, change, add)
        written = service.update(rtype, rid, resource)
    return _meta_parameters(orjson.loads(written.body or b"{}").get("meta") or {})


# -- ViewDefinition/$run ----------------------------------------------------------------
def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    return str(value)


def view_output(rows: list[dict[str, Any]], columns: list[str], fmt: str, header: bool) -> bytes:
    """Rows as JSON (array), NDJSON or CSV."""
    if fmt == "json":
        return orjson.dumps(rows)
    if fmt == "ndjson":
        return b"".join(orjson.dumps(r) + b"\n" for r in rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if header:
        writer.writerow(columns)
    writer.writerows([[_csv_cell(r.get(c)) for c in columns] for r in rows])
    return buffer.getvalue().encode()


def _view_format(value: Any) -> str:
    fmt = str(value or "json").split(";", 1)[0].strip().lower()
    fmt = _VIEW_FORMAT_ALIASES.get(fmt, fmt)
    if fmt not in _VIEW_FORMATS:
        raise FHIRError(400, f"unsupported _format {fmt!r} for $run: json, ndjson or csv", code="not-supported")
    return fmt


def run_view_definition(service: FhirService, stored_id: str | None, query: dict[str, str],
                        body: Any) -> tuple[bytes, str]:
    """Run an inline (``viewResource``) or stored (id, ``viewReference``) view; (content, media type)."""
    params = body if isinstance(body, dict) and body.get("resourceType") == "Parameters" else {}
    if body is not None and not params:
        raise FHIRError(400, "$run takes a Parameters resource", code="structure")
    view = (parameter(params, "viewResource") or {}).get("resource")
    reference = parameter_value(params, "viewReference")
    if view is None:
        ref = reference.get("reference") if isinstance(reference, dict) else reference
        view_id = stored_id or (str(ref).rsplit("/", 1)[-1] if ref else None)
        if view_id is None:
            raise FHIRError(400, "$run needs a viewResource, a viewReference or a stored view id", code="required")
        view = orjson.loads(service.current(VIEW_DEFINITION, view_id).json or b"{}")
    fmt = _view_format(parameter_value(params, "_format") or query.get("_format"))
    header = parameter_value(params, "header")
    source = "resources"
    patient = parameter_value(params, "patient") or query.get("patient")
    if patient is not None:
        pid = (patient.get("reference") if isinstance(patient, dict) else str(patient)).rsplit("/", 1)[-1]
        check_id(pid)
        source = f"(SELECT * FROM resources WHERE patient_id = '{pid}')"
    limit = parameter_value(params, "_limit") or query.get("_limit")
    try:
        compiled = compile_view(view, source)
    except ViewDefinitionError as exc:
        raise FHIRError(400, f"invalid ViewDefinition: {exc}", code="invalid") from None
    if limit is not None:
        if not str(limit).isdigit():
            raise FHIRError(400, "_limit must be a non-negative integer", code="invalid")
        compiled = dataclasses.replace(compiled, sql=f"SELECT * FROM ({compiled.sql}) LIMIT {int(limit)}")
    try:
        rows = run_compiled(service.store.cursor(), compiled)
    except duckdb.Error as exc:
        raise FHIRError(422, f"view failed on the data: {exc}", code="processing") from None
    columns = [c.name for c in compiled.columns]
    return view_output(rows, columns, fmt, header is not False), _VIEW_FORMATS[fmt]


def register_operations(app: FastAPI, service: FhirService, in_pool: InPool) -> None:
    """Add the operation routes (before the generic ``/{type}/{id}`` ones, which would shadow them)."""

    @app.api_route("/fhir/ViewDefinition/$run", methods=["GET", "POST"])
    async def view_run(request: Request) -> Response:
        body = await _optional_body(request) if request.method == "POST" else None
        content, media = await in_pool(run_view_definition, service, None, dict(request.query_params), body)
        return Response(content=content, media_type=media)

    @app.api_route("/fhir/ViewDefinition/{rid}/$run", methods=["GET", "POST"])
    async def stored_view_run(rid: str, request: Request) -> Response:
        body = await _optional_body(request) if request.method == "POST" else None
        content, media = await in_pool(run_view_definition, service, rid, dict(request.query_params), body)
        return Response(content=content, media_type=media)

    @app.post("/fhir/{rtype}/$validate")
    async def validate_type(rtype: str, request: Request) -> Response:
        fmt = negotiate(request)
        body = parse_body(await request.body(), request.headers.get("content-type"))
        return render(await in_pool(validate, service, rtype, None, body), fmt, shape_body=False)

    @app.api_route("/fhir/{rtype}/{rid}/$validate", methods=["GET", "POST"])
    async def validate_instance(rtype: str, rid: str, request: Request) -> Response:
        fmt = negotiate(request)
        body = await _optional_body(request) if request.method == "POST" else None
        return render(await in_pool(validate, service, rtype, rid, body), fmt, shape_body=False)

    @app.api_route("/fhir/Patient/{rid}/$everything", methods=["GET", "POST"])
    async def patient_everything(rid: str, request: Request) -> Response:
        fmt = negotiate(request)
        return render(await in_pool(everything, service, request, rid), fmt, shape_body=False)

    @app.api_route("/fhir/$meta", methods=["GET", "POST"])
    async def system_meta(request: Request) -> Response:
        return render(await in_pool(meta_in_use, service, None), negotiate(request), shape_body=False)

    @app.api_route("/fhir/{rtype}/$meta", methods=["GET", "POST"])
    async def type_meta(rtype: str, request: Request) -> Response:
        return render(await in_pool(meta_in_use, service, rtype), negotiate(request), shape_body=False)

    @app.api_route("/fhir/{rtype}/{rid}/$meta", methods=["GET", "POST"])
    async def meta(rtype: str, rid: str, request: Request) -> Response:
        return render(instance_meta(service, rtype, rid), negotiate(request), shape_body=False)

    @app.post("/fhir/{rtype}/{rid}/$meta-add")
    async def meta_add(rtype: str, rid: str, request: Request) -> Response:
        fmt = negotiate(request)
        body = parse_body(await request.body(), request.headers.get("content-type"))
        return render(await in_pool(meta_change, service, rtype, rid, body, True), fmt, shape_body=False)

    @app.post("/fhir/{rtype}/{rid}/$meta-delete")
    async def meta_delete(rtype: str, rid: str, request: Request) -> Response:
        fmt = negotiate(request)
        body = parse_body(await request.body(), request.headers.get("content-type"))
        return render(await in_pool(meta_change, service, rtype, rid, body, False), fmt, shape_body=False)
