"""FHIR responses: errors as OperationOutcome, JSON or XML bodies, and the output format a client asked for.

Bodies are built with orjson; a resource read from the hot map is sent as the stored
bytes unless the client wants XML, pretty printing or a subset of elements, the only
cases in which it is parsed at all.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import Response

from mapping.fhir_xml_write import FhirXmlWriteError, resource_to_xml
from mapping.validation.structures import load_structures

FHIR_JSON = "application/fhir+json"
FHIR_XML = "application/fhir+xml"
_JSON_FORMATS = frozenset({"json", "application/json", "application/fhir+json", "application/json+fhir"})
_XML_FORMATS = frozenset({"xml", "text/xml", "application/xml", "application/fhir+xml", "application/xml+fhir"})


class FHIRError(Exception):
    """An error to return as an OperationOutcome with an HTTP status."""

    def __init__(
        self,
        status: int,
        diagnostics: str,
        *,
        code: str = "processing",
        expression: str | None = None,
        issues: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(diagnostics)
        self.status = status
        self.diagnostics = diagnostics
        self.code = code
        self.expression = expression
        self.issues = issues

    def outcome(self) -> dict[str, Any]:
        """The OperationOutcome describing this error."""
        issues = self.issues or [outcome_issue("error", self.code, self.diagnostics, self.expression)]
        return operation_outcome(issues)


def operation_outcome(issues: list[dict[str, Any]]) -> dict[str, Any]:
    """An OperationOutcome from issue dicts."""
    return {"resourceType": "OperationOutcome", "issue": issues}


def outcome_issue(severity: str, code: str, diagnostics: str, expression: str | None = None) -> dict[str, Any]:
    """One OperationOutcome.issue."""
    issue: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": diagnostics}
    if expression:
        issue["expression"] = [expression]
    return issue


@dataclass(frozen=True, slots=True)
class OutputFormat:
    """How to serialize a response: ``xml`` or not, pretty or not, and which elements to keep."""

    xml: bool = False
    pretty: bool = False
    elements: frozenset[str] | None = None
    summary: str | None = None

    @property
    def raw_ok(self) -> bool:
        """True when stored JSON bytes can be sent untouched."""
        return not (self.xml or self.pretty or self.elements or self.summary)


JSON_OUTPUT = OutputFormat()


def negotiate(request: Request, pairs: list[tuple[str, str]] | None = None) -> OutputFormat:
    """The output format from ``_format``, ``Accept``, ``_pretty``, ``_elements`` and ``_summary``.

    ``pairs`` replaces the query string where parameters also arrive in a form body (POST
    ``_search`` means the same as GET with those parameters in the URL).
    """
    accept = request.headers.get("accept", "")
    if pairs is None:
        if not request.query_params and not accept:
            return JSON_OUTPUT
        pairs = list(request.query_params.multi_items())
    return output_format(dict(pairs), accept)


def output_format(params: dict[str, str], accept: str) -> OutputFormat:
    """The output format asked by the (last) value of each output parameter and the Accept header."""
    fmt = params.get("_format")
    if fmt is not None:
        fmt = fmt.split(";", 1)[0].strip().lower()
        if fmt in _XML_FORMATS:
            xml = True
        elif fmt in _JSON_FORMATS:
            xml = False
        else:
            raise FHIRError(406, f"unsupported _format {fmt!r}: use json or xml", code="not-supported")
    else:
        xml = accept_prefers_xml(accept)
    elements = params.get("_elements")
    summary = params.get("_summary")
    if summary not in (None, "false", "true", "count", "data", "text"):
        raise FHIRError(400, f"unsupported _summary {summary!r}: use true, false, count, data or text",
                        code="not-supported")
    return OutputFormat(
        xml=xml,
        pretty=params.get("_pretty") == "true",
        elements=frozenset(e.strip() for e in elements.split(",") if e.strip()) if elements else None,
        summary=None if summary in (None, "false", "count") else summary,
    )


_FHIR_VERSIONS = frozenset({"4.0", "4.0.1"})


def _accept_range(part: str) -> tuple[str, float]:
    """(media range, quality) of one Accept element; quality 0 when it names another FHIR version."""
    media, *params = (p.strip() for p in part.split(";"))
    quality = 1.0
    for param in params:
        key, _, value = param.partition("=")
        key = key.strip().lower()
        if key == "q":
            try:
                quality = min(max(float(value), 0.0), 1.0)
            except ValueError:
                quality = 0.0
        elif key == "fhirversion" and value.strip().strip('"') not in _FHIR_VERSIONS:
            quality = 0.0
    return media.lower(), quality


@lru_cache(maxsize=256)
def accept_prefers_xml(accept: str) -> bool:
    """Whether ``Accept`` is best served as XML: the acceptable FHIR type of highest quality, the first
    listed among equals; wildcards and no Accept mean JSON (FHIR's default). 406 when the client
    accepts neither JSON nor XML."""
    if not accept.strip():
        return False
    best: tuple[float, bool] | None = None
    for part in accept.split(","):
        media, quality = _accept_range(part)
        if quality <= 0:
            continue
        if media in _XML_FORMATS:
            xml = True
        elif media in _JSON_FORMATS or media in ("*/*", "application/*", "*"):
            xml = False
        else:
            continue
        if best is None or quality > best[0]:
            best = (quality, xml)
    if best is None:
        raise FHIRError(406, f"cannot answer in any type of Accept {accept!r}: this server speaks "
                             f"{FHIR_JSON} and {FHIR_XML}", code="not-supported")
    return best[1]


_ALWAYS_KEPT = frozenset({"resourceType", "id", "meta"})


@cache
def summary_elements() -> dict[str, frozenset[str]]:
    """Top-level elements marked isSummary in the R4 StructureDefinitions (data file), per type."""
    raw = json.loads((Path(__file__).with_name("data") / "summary_elements.json").read_text())
    return {t: frozenset(names) for t, names in raw.items()}


@cache
def mandatory_elements(rtype: str) -> frozenset[str]:
    """Top-level JSON properties of ``rtype`` with a minimum cardinality above 0 (each variant of a
    mandatory choice): ``_summary=text`` and ``_elements`` keep them so the subset stays a valid resource."""
    table = load_structures().types.get(rtype, {})
    return frozenset(name for name, spec in table.items() if spec.minimum > 0)


@lru_cache(maxsize=1024)
def element_keys(rtype: str, names: frozenset[str]) -> frozenset[str]:
    """The JSON properties of ``rtype``'s elements ``names``: each name itself and, for a choice element
    (``value``), exactly its variants in the R4 tables (``valueQuantity``, …), never another element that
    merely starts with the name (``statusReason`` is not ``status``)."""
    table = load_structures().types.get(rtype, {})
    return names | {key for key, spec in table.items() if spec.choice in names}


def shape(resource: dict[str, Any], fmt: OutputFormat) -> dict[str, Any]:
    """Apply ``_elements`` / ``_summary`` (data, text) to one resource, marking it SUBSETTED.

    ``_summary=text`` keeps text, id, meta and the mandatory top-level elements (R4 search.html);
    ``_elements`` keeps the mandatory ones too (a SHOULD there). Element names match exactly, a choice
    element by its variants (``_elements=value`` keeps ``valueQuantity``); a primitive's ``_name``
    sibling (its id and extensions) goes with it.
    """
    rtype = resource.get("resourceType", "")
    mandatory = mandatory_elements(rtype)

    def required(key: str) -> bool:
        return key in _ALWAYS_KEPT or key.lstrip("_") in mandatory

    if fmt.elements:
        asked = element_keys(rtype, fmt.elements)
        out = {k: v for k, v in resource.items() if required(k) or k.lstrip("_") in asked}
    elif fmt.summary == "data":
        out = {k: v for k, v in resource.items() if k != "text"}
    elif fmt.summary == "text":
        out = {k: v for k, v in resource.items() if required(k) or k == "text"}
    elif fmt.summary == "true":
        keep = element_keys(rtype, summary_elements().get(rtype, frozenset()))
        out = {k: v for k, v in resource.items() if k in _ALWAYS_KEPT or k.lstrip("_") in keep}
    else:
        return resource
    meta = dict(out.get("meta") or {})
    tags = [t for t in meta.get("tag", []) if t.get("code") != "SUBSETTED"]
    meta["tag"] = [*tags, {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
                           "code": "SUBSETTED"}]
    out["meta"] = meta
    return out


def render(
    body: dict[str, Any] | bytes | None,
    fmt: OutputFormat = JSON_OUTPUT,
    status: int = 200,
    headers: dict[str, str] | None = None,
    *,
    shape_body: bool = True,
) -> Response:
    """A FHIR response in the negotiated format; ``body`` may already be serialized JSON."""
    if body is None:
        return Response(status_code=status, headers=headers)
    if isinstance(body, bytes) and fmt.raw_ok:
        return Response(content=body, status_code=status, media_type=FHIR_JSON, headers=headers)
    resource = orjson.loads(body) if isinstance(body, bytes) else body
    if shape_body:
        resource = shape(resource, fmt)
    if fmt.xml:
        try:
            content = resource_to_xml(resource, pretty=fmt.pretty)
        except FhirXmlWriteError as exc:
            raise FHIRError(500, f"cannot render as XML: {exc}", code="exception") from None
        return Response(content=content, status_code=status, media_type=FHIR_XML, headers=headers)
    content = orjson.dumps(resource, option=orjson.OPT_INDENT_2 if fmt.pretty else 0)
    return Response(content=content, status_code=status, media_type=FHIR_JSON, headers=headers)


def error_response(err: FHIRError, fmt: OutputFormat = JSON_OUTPUT) -> Response:
    """An OperationOutcome response for a FHIRError."""
    headers = {"Allow": "GET, POST, PUT, PATCH, DELETE"} if err.status == 405 else None
    return render(err.outcome(), fmt, err.status, headers, shape_body=False)


def base_url(request: Request) -> str:
    """Absolute base of the FHIR API (``http://host:port/fhir``) as the client reached it."""
    return str(request.base_url).rstrip("/") + "/fhir"
