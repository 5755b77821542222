"""Parsing FHIR search values: prefixes, dates with precision, numbers, quantities, tokens.

Pure functions turning the text of one search value into the bounds and parts
the SQL builder needs; every malformed value raises ``ValueError`` with a
message fit for an OperationOutcome.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation

from mapping.resource_types import R4_RESOURCE_TYPES

PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
_DATE = re.compile(
    r"^(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})(?:T(?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?P<f>\.\d+)?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)


def split_prefix(value: str) -> tuple[str, str]:
    """(prefix, rest); ``eq`` when the value has none."""
    if len(value) > 2 and value[:2] in PREFIXES and (value[2].isdigit() or value[2] in "-+."):
        return value[:2], value[2:]
    return "eq", value


@dataclass(frozen=True)
class DateRange:
    """The half-open instant range [lo, hi) a date search value stands for, given its precision."""

    lo: datetime
    hi: datetime


def parse_date(text: str) -> DateRange:
    """A FHIR date/dateTime/instant search value as a range (a value without zone is taken as UTC)."""
    m = _DATE.match(text.strip())
    if not m:
        raise ValueError(f"invalid date {text!r}: expected YYYY, YYYY-MM, YYYY-MM-DD or a dateTime")
    g = m.groupdict()
    tz = UTC
    if g["tz"] and g["tz"] != "Z":
        sign = 1 if g["tz"][0] == "+" else -1
        hh, mm = int(g["tz"][1:3]), int(g["tz"][4:6])
        tz = timezone(sign * timedelta(hours=hh, minutes=mm))
    try:
        y = int(g["y"])
        if g["m"] is None:
            return DateRange(datetime(y, 1, 1, tzinfo=UTC), datetime(y + 1, 1, 1, tzinfo=UTC))
        mo = int(g["m"])
        if g["d"] is None:
            lo = datetime(y, mo, 1, tzinfo=UTC)
            hi = datetime(y + (mo == 12), mo % 12 + 1, 1, tzinfo=UTC)
            return DateRange(lo, hi)
        d = int(g["d"])
        if g["H"] is None:
            lo = datetime(y, mo, d, tzinfo=UTC)
            return DateRange(lo, lo + timedelta(days=1))
        sec = int(g["S"] or 0)
        micros = int(g["f"][1:7].ljust(6, "0")) if g["f"] else 0  # digits, not a float: .252231 stays 252231
        lo = datetime(y, mo, d, int(g["H"]), int(g["M"]), sec, micros, tzinfo=tz).astimezone(UTC)
    except ValueError as exc:
        raise ValueError(f"invalid date {text!r}: {exc}") from None
    step = timedelta(minutes=1) if g["S"] is None else timedelta(seconds=1) if not g["f"] else timedelta(
        microseconds=1
    )
    return DateRange(lo, lo + step)


def parse_number(text: str) -> tuple[float, float, float]:
    """(value, low, high): the value and the range its written precision implies (``100`` → [99.5, 100.5))."""
    try:
        dec = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"invalid number {text!r}") from None
    if not dec.is_finite():
        raise ValueError(f"invalid number {text!r}")
    exponent = dec.as_tuple().exponent
    half = Decimal(5).scaleb(int(exponent) - 1) if isinstance(exponent, int) else Decimal(0)
    return float(dec), float(dec - half), float(dec + half)


@dataclass(frozen=True)
class QuantityValue:
    """A quantity search value ``[prefix]number|system|code``."""

    prefix: str
    number: str
    system: str | None
    code: str | None


def parse_quantity(value: str) -> QuantityValue:
    """Split a quantity search value into its parts (system/code may be empty)."""
    prefix, rest = split_prefix(value)
    parts = rest.split("|")
    if len(parts) not in (1, 3):
        raise ValueError(f"invalid quantity {value!r}: expected number or number|system|code")
    number = parts[0]
    parse_number(number)
    system = parts[1] or None if len(parts) == 3 else None
    code = parts[2] or None if len(parts) == 3 else None
    return QuantityValue(prefix, number, system, code)


def split_token(value: str) -> tuple[str | None, str | None, bool]:
    """(system, code, has_bar): ``s|c``, ``|c`` (no system), ``s|`` (any code in s), ``c`` (any system)."""
    if "|" not in value:
        return None, value, False
    system, _, code = value.partition("|")
    return system, code or None, True


def split_or(value: str) -> list[str]:
    """Comma-separated alternatives, honouring the ``\\,`` escape."""
    if "\\" not in value:
        return value.split(",")
    parts, cur, i = [], [], 0
    while i < len(value):
        ch = value[i]
        if ch == "\\" and i + 1 < len(value) and value[i + 1] in ",$|\\":
            cur.append(value[i + 1])
            i += 2
            continue
        if ch == ",":
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    parts.append("".join(cur))
    return parts


def reference_target(value: str, modifier: str | None) -> tuple[str, str | None] | str:
    """What a plain (not ``:identifier``) reference search value names: (resource id, required type
    or None), or an absolute URL, which matches only references to that URL: it is another server's
    resource (the search layer has already made URLs on this server's own base relative, see
    :func:`local_reference`)."""
    want_type = modifier if modifier in R4_RESOURCE_TYPES else None
    ref = value.rstrip("/")
    if ref.startswith(("http:", "https:", "urn:")):
        return ref
    parts = ref.split("/_history/")[0].split("/") if "/_history/" in ref else ref.split("/")
    if len(parts) >= 2 and parts[-2] in R4_RESOURCE_TYPES:
        return parts[-1], parts[-2]
    return ref, want_type


def local_reference(value: str, base: str | None) -> str:
    """A reference search value with this server's base (``http://host/fhir``) removed: an absolute
    URL on the server's own base names the local resource, like the relative ``Type/id``."""
    if base and value.startswith(base.rstrip("/") + "/"):
        return value[len(base.rstrip("/")) + 1:]
    return value
