"""FHIR responses: orjson bodies, OperationOutcome errors, FHIR media types."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import Response

FHIR_JSON = "application/fhir+json"


class FHIRError(Exception):
    """An error to return as an OperationOutcome with an HTTP status."""

    def __init__(
        self, status: int, diagnostics: str, *, code: str = "processing", expression: str | None = None
    ) -> None:
        super().__init__(diagnostics)
        self.status = status
        self.diagnostics = diagnostics
        self.code = code
        self.expression = expression


def operation_outcome(issues: list[dict[str, Any]]) -> dict[str, Any]:
    """An OperationOutcome from issue dicts."""
    return {"resourceType": "OperationOutcome", "issue": issues}


def outcome_issue(severity: str, code: str, diagnostics: str, expression: str | None = None) -> dict[str, Any]:
    """One OperationOutcome.issue."""
    issue: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": diagnostics}
    if expression:
        issue["expression"] = [expression]
    return issue


def fhir_response(
    body: dict[str, Any] | bytes, status: int = 200, headers: dict[str, str] | None = None, *, pretty: bool = False
) -> Response:
    """A JSON FHIR response; ``body`` may already be serialized."""
    if isinstance(body, bytes):
        content = orjson.dumps(orjson.loads(body), option=orjson.OPT_INDENT_2) if pretty else body
    else:
        content = orjson.dumps(body, option=orjson.OPT_INDENT_2 if pretty else 0)
    return Response(content=content, status_code=status, media_type=FHIR_JSON, headers=headers)


def error_response(err: FHIRError) -> Response:
    """An OperationOutcome response for a FHIRError."""
    return fhir_response(
        operation_outcome([outcome_issue("error", err.code, err.diagnostics, err.expression)]), err.status
    )


def base_url(request: Request) -> str:
    """Absolute base of the FHIR API (``http://host:port/fhir``) as the client reached it."""
    return str(request.base_url).rstrip("/") + "/fhir"
