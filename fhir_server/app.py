"""The FHIR R4 REST API at ``/fhir``, answering from the store."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from fhir_server.bundles import searchset
from fhir_server.capability import capability_statement
from fhir_server.responses import FHIRError, base_url, error_response, fhir_response
from mapping.resource_types import R4_RESOURCE_TYPES
from store.search import SearchError, SearchRequest, search
from store.store import Store

MAX_COUNT = 1000
DEFAULT_COUNT = 50


def _check_type(rtype: str) -> None:
    if rtype not in R4_RESOURCE_TYPES:
        raise FHIRError(404, f"unknown resource type {rtype!r}", code="not-supported")


def _int_param(value: str, name: str) -> int:
    try:
        out = int(value)
    except ValueError:
        raise FHIRError(400, f"{name} must be an integer, got {value!r}", code="invalid") from None
    if out < 0:
        raise FHIRError(400, f"{name} must not be negative", code="invalid")
    return out


def create_app(store: Store) -> FastAPI:
    """The ASGI app serving ``store``."""
    app = FastAPI(title="fhirtwin FHIR R4 API", version="0.1.0")
    app.state.store = store

    @app.exception_handler(FHIRError)
    async def _fhir_error(_: Request, exc: FHIRError) -> Response:
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not-found", 405: "not-supported"}.get(exc.status_code, "processing")
        return error_response(FHIRError(exc.status_code, str(exc.detail), code=code))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> Response:
        return error_response(FHIRError(400, str(exc.errors()), code="invalid"))

    @app.get("/fhir/metadata")
    def metadata(request: Request) -> Response:
        types = sorted(R4_RESOURCE_TYPES)
        return fhir_response(capability_statement(base_url(request), types))

    @app.get("/fhir/{rtype}/{rid}")
    def read(rtype: str, rid: str, request: Request) -> Response:
        _check_type(rtype)
        cur = store.current(rtype, rid)
        if cur is None:
            raise FHIRError(404, f"{rtype}/{rid} not found", code="not-found")
        if cur.deleted:
            raise FHIRError(410, f"{rtype}/{rid} was deleted", code="deleted")
        headers = {"ETag": f'W/"{cur.version_id}"', "Last-Modified": cur.last_updated.strftime("%a, %d %b %Y %H:%M:%S GMT")}
        return fhir_response(cur.json or b"{}", headers=headers, pretty=request.query_params.get("_pretty") == "true")

    @app.get("/fhir/{rtype}")
    def search_type(rtype: str, request: Request) -> Response:
        _check_type(rtype)
        params: list[tuple[str, str]] = []
        count, offset = DEFAULT_COUNT, 0
        for name, value in request.query_params.multi_items():
            if name == "_count":
                count = min(_int_param(value, "_count"), MAX_COUNT)
            elif name == "_offset":
                offset = _int_param(value, "_offset")
            elif name in ("_format", "_pretty"):
                continue
            else:
                params.append((name, value))
        try:
            result = search(store, SearchRequest(rtype, params, count, offset))
        except SearchError as exc:
            raise FHIRError(400, str(exc), code="invalid", expression=exc.param) from None
        entries = [(t, i, raw) for t, i in result.keys if (raw := store.read_bytes(t, i)) is not None]
        kept = [(n, v) for n, v in params if n not in result.ignored]
        body = searchset(
            base=base_url(request), rtype=rtype, params=kept, total=result.total, count=count, offset=offset,
            entries=entries, extra=_ignored_outcome(result.ignored),
        )
        return fhir_response(body, pretty=request.query_params.get("_pretty") == "true")

    return app


def _ignored_outcome(ignored: list[str]) -> list[dict[str, Any]]:
    """A searchset outcome entry naming parameters that were not applied (lenient handling)."""
    if not ignored:
        return []
    return [
        {
            "resource": {
                "resourceType": "OperationOutcome",
                "issue": [
                    {"severity": "warning", "code": "not-supported", "diagnostics": f"search parameter {p!r} ignored"}
                    for p in ignored
                ],
            },
            "search": {"mode": "outcome"},
        }
    ]
