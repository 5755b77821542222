"""Query-string helpers shared by the routes and the operations: paging and conditional criteria."""

from __future__ import annotations

from fastapi import Request

from fhir_server.responses import FHIRError

MAX_COUNT = 1000
DEFAULT_COUNT = 50
_LARGEST = 2**63 - 1
"""The largest count or offset the store's SQL takes (a BIGINT)."""


def int_param(value: str, name: str) -> int:
    """A non-negative integer query parameter (400 otherwise)."""
    try:
        out = int(value)
    except ValueError:
        raise FHIRError(400, f"{name} must be an integer, got {value!r}", code="invalid") from None
    if out < 0:
        raise FHIRError(400, f"{name} must not be negative", code="invalid")
    if out > _LARGEST:
        raise FHIRError(400, f"{name} must be at most {_LARGEST}", code="invalid")
    return out


def paging(pairs: list[tuple[str, str]]) -> tuple[int, int, list[tuple[str, str]]]:
    """(count, offset, the other parameters); ``_count`` is capped at MAX_COUNT (see :func:`count_capped`),
    ``_summary=count`` is 0."""
    count, offset, rest = DEFAULT_COUNT, 0, []
    for name, value in pairs:
        if name == "_count":
            count = min(int_param(value, "_count"), MAX_COUNT)
        elif name == "_offset":
            offset = int_param(value, "_offset")
        else:
            rest.append((name, value))
    if ("_summary", "count") in rest:
        count = 0
    return count, offset, rest


def query_pairs(request: Request) -> list[tuple[str, str]]:
    """The query string as (name, value) pairs, repeats kept in order."""
    return list(request.query_params.multi_items())


def criteria(request: Request) -> list[tuple[str, str]]:
    """Conditional-operation criteria: the query minus output-format parameters."""
    return [(n, v) for n, v in query_pairs(request) if n not in ("_format", "_pretty")]


def strict_handling(request: Request) -> bool:
    """``Prefer: handling=strict`` asks for unknown search parameters to be errors."""
    return prefers_strict(request.headers.get("prefer", ""))


def prefers_strict(prefer: str) -> bool:
    """Whether a ``Prefer`` header value asks for strict handling (also a Bundle's, for its entries)."""
    return "handling=strict" in prefer


def count_capped(pairs: list[tuple[str, str]]) -> str | None:
    """A note for the searchset when the asked ``_count`` exceeded the page limit (no silent truncation)."""
    for name, value in pairs:
        if name == "_count" and value.isdigit() and int(value) > MAX_COUNT:
            return f"_count {value} exceeds the page limit: pages hold at most {MAX_COUNT} resources"
    return None
