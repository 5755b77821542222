"""Structural R4 validation as ingest problems: kept apart from the pipeline so import workers load
only what they run."""

from __future__ import annotations

from typing import Any

from ingest.records import Problem
from mapping.validation import validate_resource


def r4_validator(resource: dict[str, Any]) -> list[Problem]:
    """Structural R4 validation (mapping.validation) as ingest problems."""
    return [
        Problem(i["diagnostics"], (i.get("expression") or [None])[0], i.get("code", "invalid"), i.get("severity", "error"))
        for i in validate_resource(resource)
        if i.get("severity") in ("error", "fatal")
    ]
