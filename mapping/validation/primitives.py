"""Checks for FHIR R4 primitive values in their JSON representation.

Each checker takes the decoded JSON value and returns None when valid or a short
reason. The regular expressions come from the compiled StructureDefinitions (the spec's
own ``regex`` extensions); a few checks go beyond them where the spec's regex is too
loose or too slow: real calendar dates (no 30 February), 32-bit integer ranges,
finite decimals, base64 checked without the backtracking-prone spec regex, and the
shape of ``Reference.reference``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from datetime import date

Checker = Callable[[object], str | None]

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_WHITESPACE = re.compile(r"\s+")


def _describe(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _string_checker(type_name: str, pattern: re.Pattern[str] | None) -> Checker:
    def check(value: object) -> str | None:
        if type(value) is not str:
            return f"{type_name} must be a JSON string, not {_json_type(value)}"
        if not value:
            return f"{type_name} must not be empty"
        if pattern is not None and pattern.fullmatch(value) is None:
            return f"{_describe(value)} is not a valid {type_name}"
        return None

    return check


def _dated_checker(type_name: str, pattern: re.Pattern[str]) -> Checker:
    """Regex plus a real calendar check for the day part."""
    base = _string_checker(type_name, pattern)

    def check(value: object) -> str | None:
        problem = base(value)
        if problem is not None:
            return problem
        # The spec regex has matched, so a value of 10 characters or more starts YYYY-MM-DD in ASCII digits.
        if len(value) >= 10 and value[8:10] > "28":  # type: ignore[arg-type, index]
            try:
                date(int(value[:4]), int(value[5:7]), int(value[8:10]))  # type: ignore[index]
            except ValueError:
                return f"{_describe(value)} is not a calendar date"
        return None

    return check


def check_boolean(value: object) -> str | None:
    return None if type(value) is bool else f"boolean must be JSON true/false, not {_json_type(value)}"


def _integer_checker(type_name: str, minimum: int) -> Checker:
    def check(value: object) -> str | None:
        if type(value) is not int:
            return f"{type_name} must be a JSON integer, not {_json_type(value)} {_describe(value)}"
        if value < minimum or value > INT32_MAX:  # type: ignore[operator]
            return f"{value} is out of range for {type_name}"
        return None

    return check


def check_decimal(value: object) -> str | None:
    kind = type(value)
    if kind is int:
        return None
    if kind is float:
        return None if math.isfinite(value) else f"{value} is not a finite decimal"  # type: ignore[arg-type]
    return f"decimal must be a JSON number, not {_json_type(value)} {_describe(value)}"


def check_base64(value: object) -> str | None:
    if type(value) is not str or not value:
        return f"base64Binary must be a non-empty JSON string, not {_json_type(value)}"
    compact = _WHITESPACE.sub("", value)
    if len(compact) % 4 or _BASE64.fullmatch(compact) is None:
        return "value is not valid base64"
    return None


def check_xhtml(value: object) -> str | None:
    if type(value) is not str:
        return f"xhtml must be a JSON string, not {_json_type(value)}"
    if not value.lstrip().startswith("<div"):  # type: ignore[attr-defined]
        return "narrative xhtml must be a <div> element"
    return None


def reference_checker(resource_types: Iterable[str]) -> Checker:
    """Reference.reference: Type/id[/_history/vid], absolute URL, #contained, urn:uuid:, urn:oid:."""
    known = frozenset(resource_types)
    relative = re.compile(r"([A-Z][A-Za-z]+)/[A-Za-z0-9\-.]{1,64}(/_history/[A-Za-z0-9\-.]{1,64})?")
    absolute = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://\S+")
    local = re.compile(r"#[A-Za-z0-9\-.]{0,64}")
    uuid = re.compile(r"urn:uuid:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
    oid = re.compile(r"urn:oid:[0-2](\.(0|[1-9][0-9]*))+")

    def check(value: object) -> str | None:
        if type(value) is not str:
            return f"reference must be a JSON string, not {_json_type(value)}"
        match = relative.fullmatch(value)
        if match is not None:
            return None if match[1] in known else f"unknown resource type {match[1]!r} in reference"
        for pattern in (local, uuid, absolute, oid):
            if pattern.fullmatch(value):
                return None
        return (f"{_describe(value)} is not a reference of the form Type/id, an absolute URL, "
                "#contained-id, urn:uuid: or urn:oid:")

    return check


def build_checkers(regexes: dict[str, str | None]) -> dict[str, Checker]:
    """Checkers for every primitive type named in the compiled definitions."""
    checkers: dict[str, Checker] = {}
    for type_name, regex in regexes.items():
        pattern = re.compile(regex) if regex else None
        if type_name in ("date", "dateTime", "instant"):
            checkers[type_name] = _dated_checker(type_name, pattern)  # type: ignore[arg-type]
        elif type_name in ("string", "markdown"):
            checkers[type_name] = _string_checker(type_name, None)
        else:
            checkers[type_name] = _string_checker(type_name, pattern)
    checkers.update(
        boolean=check_boolean,
        decimal=check_decimal,
        integer=_integer_checker("integer", INT32_MIN),
        unsignedInt=_integer_checker("unsignedInt", 0),
        positiveInt=_integer_checker("positiveInt", 1),
        base64Binary=check_base64,
        xhtml=check_xhtml,
    )
    return checkers
