"""The FHIR R4 REST API at ``/fhir``: HTTP routes over :class:`FhirService`.

Routes stay thin: parse the request, call the service, turn the outcome into
headers (ETag, Location, Last-Modified) and a body shaped by ``Prefer`` and the
negotiated format. Read by id is an ``async`` route answering from the hot map
with the stored bytes (no thread hop, no parsing); everything touching DuckDB
runs in the thread pool.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from functools import partial
from typing import Any
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from fhir_server.bodies import FORM_TYPE, media_type, parse_body, parse_form, parse_resource
from fhir_server.capability import capability_statement
from fhir_server.cors import add_cors
from fhir_server.history import history_page
from fhir_server.internal_errors import InternalErrors
from fhir_server.operation_definitions import register_operation_definitions
from fhir_server.operations import register_operations
from fhir_server.query import criteria, query_pairs, strict_handling
from fhir_server.responses import (
    JSON_OUTPUT,
    FHIRError,
    OutputFormat,
    base_url,
    error_response,
    negotiate,
    operation_outcome,
    outcome_issue,
    render,
)
from fhir_server.search import search_page
from fhir_server.service import FhirService, Written, check_type
from fhir_server.simulate import register_simulate
from fhir_server.transaction import process_bundle
from fhir_server.versioning import (
    http_since,
    if_match_version,
    not_modified,
    version_headers,
)

_RESOURCE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/fhir+json": {
                "schema": {"type": "object", "properties": {"resourceType": {"type": "string"}},
                           "required": ["resourceType"]}
            }
        },
    }
}
_PATCH_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json-patch+json": {"schema": {"type": "array", "items": {"type": "object"}}},
                    "application/fhir+json": {"schema": {"type": "object"}}},
    }
}


def write_response(written: Written, request: Request, fmt: OutputFormat) -> Response:
    """Headers and body of a create/update/patch, honouring ``Prefer: return=``."""
    headers = version_headers(written.version_id, written.last_updated)
    headers["Location"] = f"{base_url(request)}/{written.location}"
    prefer = request.headers.get("prefer", "")
    if "return=minimal" in prefer:
        return Response(status_code=written.status, headers=headers)
    if "return=OperationOutcome" in prefer:
        text = f"{written.resource_type}/{written.id} {written.outcome} (version {written.version_id})"
        return render(operation_outcome([outcome_issue("information", "informational", text)]), fmt,
                      written.status, headers, shape_body=False)
    return render(written.body, fmt, written.status, headers)


def delete_response(written: Written, fmt: OutputFormat) -> Response:
    """200 with an OperationOutcome saying what happened (some clients parse every body)."""
    headers = version_headers(written.version_id, written.last_updated) if written.version_id else None
    text = {"deleted": "deleted", "unchanged": "was already deleted", "not-found": "nothing to delete"}
    what = f"{written.resource_type}/{written.id}" if written.id else written.resource_type
    issue = outcome_issue("information", "informational", f"{what} {text.get(written.outcome, written.outcome)}")
    return render(operation_outcome([issue]), fmt, 200, headers, shape_body=False)


def search_response(service: FhirService, request: Request, rtype: str | None, pairs: list[tuple[str, str]],
                    fmt: OutputFormat, *, memory_only: bool = False, compartment: str | None = None) -> Response | None:
    """A search request's searchset (see :func:`search_page`; None when ``memory_only`` and the caches
    do not answer), with ``Prefer: handling`` from the request."""
    page = search_page(service, base_url(request), rtype, pairs, fmt, strict=strict_handling(request),
                       memory_only=memory_only, compartment=compartment)
    return None if page is None else render(page, fmt, shape_body=False)


async def search_pairs(request: Request) -> list[tuple[str, str]]:
    """Search parameters of a GET (query) or POST ``_search`` (query plus form body)."""
    pairs = query_pairs(request)
    if request.method != "POST":
        return pairs
    raw = await request.body()
    if raw.strip() and media_type(request.headers.get("content-type")) != FORM_TYPE:
        raise FHIRError(415, f"POST _search takes {FORM_TYPE}", code="not-supported")
    return pairs + (parse_form(raw) if raw.strip() else [])


def history_response(service: FhirService, request: Request, rtype: str | None, rid: str | None) -> Response:
    """Instance, type or system history, newest first, with ``_since``, ``_at`` and paging."""
    fmt = negotiate(request)
    body = history_page(service, base_url(request), rtype, rid, query_pairs(request))
    return render(body, fmt, shape_body=False)


def error_format(request: Request) -> OutputFormat:
    """The format an error answers in: the client's, or JSON when its request names none we write."""
    try:
        return negotiate(request)
    except FHIRError:
        return JSON_OUTPUT


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves as an OperationOutcome in the format the client asked for (unexpected
    exceptions through :class:`InternalErrors`, which ``create_app`` puts inside the CORS layer)."""

    @app.exception_handler(FHIRError)
    async def _fhir_error(request: Request, exc: FHIRError) -> Response:
        return error_response(exc, error_format(request))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not-found", 405: "not-supported"}.get(exc.status_code, "processing")
        return error_response(FHIRError(exc.status_code, str(exc.detail), code=code), error_format(request))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        return error_response(FHIRError(400, str(exc.errors()), code="invalid"), error_format(request))


def create_app(store: Any) -> FastAPI:
    """The ASGI app serving ``store`` (a :class:`store.store.Store`)."""
    # The store's hot map holds an object per resource (a million at 1M resources); a full cyclic
    # collection walking them pauses every request for ~0.4 s. They live as long as the store, so
    # move what exists now out of the collector's reach (later objects are collected as usual).
    gc.freeze()
    app = FastAPI(title="fhirtwin FHIR R4 API", version="0.2.0")
    service = FhirService(store)
    app.state.store = store
    app.state.service = service
    install_error_handlers(app)
    app.add_middleware(InternalErrors, fmt_of=lambda scope: error_format(Request(scope)))
    add_cors(app)  # added last: the outermost layer, so every answer carries its headers

    async def in_pool(fn: Callable[..., Any], *args: Any) -> Any:
        return await run_in_threadpool(fn, *args)

    @app.get("/fhir/metadata")
    async def metadata(request: Request) -> Response:
        return render(capability_statement(base_url(request)), negotiate(request), shape_body=False)

    async def bundle(request: Request) -> Response:
        fmt = negotiate(request)
        body = parse_resource(await request.body(), request.headers.get("content-type"))
        result = await in_pool(process_bundle, service, body, base_url(request),
                               request.headers.get("prefer", ""))
        return render(result, fmt, shape_body=False)

    for path in ("/fhir", "/fhir/"):
        app.add_api_route(path, bundle, methods=["POST"], openapi_extra=_RESOURCE_BODY,
                          summary="batch or transaction")

    async def system_search(request: Request) -> Response:
        pairs = await search_pairs(request)
        return await in_pool(search_response, service, request, None, pairs, negotiate(request, pairs))

    for path in ("/fhir", "/fhir/"):
        app.add_api_route(path, system_search, methods=["GET"], summary="search across resource types")
    app.add_api_route("/fhir/_search", system_search, methods=["POST"], summary="search across resource types")

    @app.get("/fhir/_history")
    async def system_history(request: Request) -> Response:
        return await in_pool(history_response, service, request, None, None)

    @app.get("/fhir/{rtype}/_history")
    async def type_history(rtype: str, request: Request) -> Response:
        return await in_pool(history_response, service, request, rtype, None)

    @app.post("/fhir/{rtype}/_search")
    async def search_post(rtype: str, request: Request) -> Response:
        pairs = await search_pairs(request)
        return await in_pool(search_response, service, request, rtype, pairs, negotiate(request, pairs))

    register_operations(app, service, in_pool)
    register_simulate(app, store, in_pool)
    register_operation_definitions(app)

    @app.get("/fhir/{rtype}/{rid}/_history")
    async def instance_history(rtype: str, rid: str, request: Request) -> Response:
        return await in_pool(history_response, service, request, rtype, rid)

    @app.get("/fhir/{rtype}/{rid}/_history/{vid}")
    async def vread(rtype: str, rid: str, vid: str, request: Request) -> Response:
        fmt = negotiate(request)
        body, version, last_updated = await in_pool(service.vread, rtype, rid, vid)
        return render(body, fmt, 200, version_headers(version, last_updated))

    async def compartment_search(pid: str, ctype: str, request: Request) -> Response:
        check_type(ctype)
        pairs = await search_pairs(request)
        return await in_pool(partial(search_response, service, request, ctype, pairs, negotiate(request, pairs),
                                     compartment=pid))

    app.add_api_route("/fhir/Patient/{pid}/{ctype}", compartment_search, methods=["GET"],
                      summary="search in a Patient's compartment")
    app.add_api_route("/fhir/Patient/{pid}/{ctype}/_search", compartment_search, methods=["POST"],
                      summary="search in a Patient's compartment")

    @app.get("/fhir/{rtype}/{rid}")
    async def read(rtype: str, rid: str, request: Request) -> Response:
        if store.cache.holds((rtype, rid)):  # the map answers on the event loop, DuckDB in the pool
            cur = service.current(rtype, rid)
        else:
            cur = await in_pool(service.current, rtype, rid)
        headers = version_headers(cur.version_id, cur.last_updated)
        conditional = request.headers
        if not_modified(conditional.get("if-none-match"), http_since(conditional.get("if-modified-since")),
                        cur.version_id, cur.last_updated):
            return Response(status_code=304, headers=headers)
        return render(cur.json, negotiate(request), 200, headers)

    @app.put("/fhir/{rtype}/{rid}", openapi_extra=_RESOURCE_BODY)
    async def update(rtype: str, rid: str, request: Request) -> Response:
        fmt = negotiate(request)
        resource = parse_resource(await request.body(), request.headers.get("content-type"))
        if_match = if_match_version(request.headers.get("if-match"))
        written = await in_pool(service.update, rtype, rid, resource, if_match)
        return write_response(written, request, fmt)

    @app.patch("/fhir/{rtype}/{rid}", openapi_extra=_PATCH_BODY)
    async def patch(rtype: str, rid: str, request: Request) -> Response:
        fmt = negotiate(request)
        body = parse_body(await request.body(), request.headers.get("content-type"))
        if_match = if_match_version(request.headers.get("if-match"))
        written = await in_pool(service.patch, rtype, rid, body, if_match)
        return write_response(written, request, fmt)

    @app.delete("/fhir/{rtype}/{rid}")
    async def delete(rtype: str, rid: str, request: Request) -> Response:
        fmt = negotiate(request)
        return delete_response(await in_pool(service.delete, rtype, rid), fmt)

    @app.get("/fhir/{rtype}")
    async def search_get(rtype: str, request: Request) -> Response:
        fmt = negotiate(request)
        pairs = query_pairs(request)
        quick = search_response(service, request, rtype, pairs, fmt, memory_only=True)
        return quick if quick is not None else await in_pool(search_response, service, request, rtype, pairs, fmt)

    @app.post("/fhir/{rtype}", openapi_extra=_RESOURCE_BODY)
    async def create(rtype: str, request: Request) -> Response:
        fmt = negotiate(request)
        resource = parse_resource(await request.body(), request.headers.get("content-type"))
        header = request.headers.get("if-none-exist")
        conditions = parse_qsl(header.split("?", 1)[-1], keep_blank_values=True) if header else criteria(request)
        written = await in_pool(service.create, rtype, resource, conditions or None)
        return write_response(written, request, fmt)

    @app.put("/fhir/{rtype}", openapi_extra=_RESOURCE_BODY)
    async def conditional_update(rtype: str, request: Request) -> Response:
        fmt = negotiate(request)
        resource = parse_resource(await request.body(), request.headers.get("content-type"))
        if_match = if_match_version(request.headers.get("if-match"))
        written = await in_pool(service.conditional_update, rtype, criteria(request), resource, if_match)
        return write_response(written, request, fmt)

    @app.patch("/fhir/{rtype}", openapi_extra=_PATCH_BODY)
    async def conditional_patch(rtype: str, request: Request) -> Response:
        fmt = negotiate(request)
        body = parse_body(await request.body(), request.headers.get("content-type"))
        if_match = if_match_version(request.headers.get("if-match"))
        written = await in_pool(service.conditional_patch, rtype, criteria(request), body, if_match)
        return write_response(written, request, fmt)

    @app.delete("/fhir/{rtype}")
    async def conditional_delete(rtype: str, request: Request) -> Response:
        fmt = negotiate(request)
        return delete_response(await in_pool(service.conditional_delete, rtype, criteria(request)), fmt)

    return app
