"""Request bodies in: FHIR JSON or XML by Content-Type, with 400/415 for what cannot be read."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

import orjson

from fhir_server.responses import FHIRError
from ingest.fhir_xml import FhirXmlError, xml_to_resource

JSON_TYPES = frozenset({
    "application/fhir+json", "application/json", "application/json+fhir", "text/json",
    "application/json-patch+json", "application/merge-patch+json",
})
XML_TYPES = frozenset({"application/fhir+xml", "application/xml", "text/xml", "application/xml+fhir"})
FORM_TYPE = "application/x-www-form-urlencoded"


def media_type(content_type: str | None) -> str:
    """The bare media type of a Content-Type header (no parameters, lower case)."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def parse_body(raw: bytes, content_type: str | None) -> Any:
    """Decode a request body; JSON when no Content-Type is given (what most clients mean)."""
    kind = media_type(content_type)
    if not raw.strip():
        raise FHIRError(400, "request body is empty", code="required")
    if kind in XML_TYPES:
        try:
            return xml_to_resource(raw)
        except (FhirXmlError, ValueError) as exc:
            raise FHIRError(400, f"cannot parse FHIR XML: {exc}", code="structure") from None
    if kind and kind not in JSON_TYPES:
        raise FHIRError(415, f"unsupported Content-Type {kind!r}: use application/fhir+json or "
                             "application/fhir+xml", code="not-supported")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise FHIRError(400, f"body is not valid JSON: {exc}", code="structure") from None


def parse_resource(raw: bytes, content_type: str | None) -> dict[str, Any]:
    """A request body that must be one resource (a JSON object with a resourceType)."""
    body = parse_body(raw, content_type)
    if not isinstance(body, dict):
        raise FHIRError(400, "body must be a JSON object holding one FHIR resource", code="structure")
    if not isinstance(body.get("resourceType"), str):
        raise FHIRError(400, "body has no resourceType", code="required", expression="resourceType")
    return body


def parse_form(raw: bytes) -> list[tuple[str, str]]:
    """Search parameters from an ``application/x-www-form-urlencoded`` body (POST ``_search``)."""
    try:
        return parse_qsl(raw.decode("utf-8"), keep_blank_values=True)
    except UnicodeDecodeError:
        raise FHIRError(400, "form body is not UTF-8", code="structure") from None
