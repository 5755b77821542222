"""Conversions of single HL7 v2 values to FHIR primitives and small datatypes.

These are the parts of the IG's datatype maps that are arithmetic rather than
structure (DTM → dateTime with offset, NM → decimal, ID Y/N → boolean, coding system
name → URI, unit text → UCUM), so they live in code; everything structural is in
the compiled tables.
"""

from __future__ import annotations

import csv
import re
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

from mapping.json_numbers import whole_number
from mapping.ucum import to_ucum

DATA = Path(__file__).resolve().parent / "data"
UCUM_SYSTEM = "http://unitsofmeasure.org"
LOCAL_SYSTEM_BASE = "urn:fhirtwin:v2:codesystem:"

PRIMITIVE_TYPES = frozenset(
    ["base64Binary", "boolean", "canonical", "code", "date", "dateTime", "decimal", "id", "instant", "integer", "markdown", "oid", "positiveInt", "string", "time", "unsignedInt", "uri", "url", "uuid"]
)

_DTM = re.compile(
    r"^(?P<y>\d{4})(?P<mo>\d{2})?(?P<d>\d{2})?(?P<h>\d{2})?(?P<mi>\d{2})?(?P<s>\d{2})?"
    r"(?:\.(?P<frac>\d{1,4}))?(?P<tz>[+-]\d{4})?$"
)
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)$")
_OID = re.compile(r"^\d+(\.\d+)+$")


@cache
def coding_systems() -> dict[str, str]:
    """HL7 table 0396 names (LN, SCT, I10, …) → FHIR system URIs."""
    with (DATA / "coding_systems.csv").open(newline="") as fh:
        return {row["name"].upper(): row["uri"] for row in csv.DictReader(fh)}


def system_uri(name: str) -> str:
    """URI for a v2 coding system name; HL7nnnn tables and OIDs by rule; else a stable local URI."""
    key = name.strip().upper()
    known = coding_systems().get(key)
    if known:
        return known
    m = re.match(r"^HL7(\d{4})$", key)
    if m:
        return f"http://terminology.hl7.org/CodeSystem/v2-{m.group(1)}"
    if _OID.match(key):
        return f"urn:oid:{key}"
    if key.startswith(("HTTP://", "HTTPS://", "URN:")):
        return name.strip()
    return LOCAL_SYSTEM_BASE + re.sub(r"[^A-Za-z0-9.\-]+", "-", name.strip()).strip("-")


def dtm(value: str, fhir_type: str, default_tz: str | None) -> str | None:
    """v2 DTM/DT/TS → FHIR date, dateTime or instant (``None`` when unreadable).

    The offset is kept as sent; a time without offset gets ``default_tz`` (the
    sending system's offset from MSH-7) because FHIR requires a zone on any time.
    """
    text = value.strip()
    body, tz = text, None
    if len(text) > 9 and text[-5] in "+-":
        body, tz = text[:-5], text[-4:]
        if not tz.isdecimal():
            body, tz = text, None
    if body.isdecimal() and len(body) in _DIGIT_LENGTHS:
        if len(body) >= 12 and fhir_type != "date":  # to the minute at least: what results carry
            if tz is not None:
                zone = f"{text[-5:-2]}:{tz[2:]}"
            elif default_tz is None:
                return f"{body[:4]}-{body[4:6]}-{body[6:8]}"
            else:
                zone = "Z" if default_tz in ("+00:00", "-00:00") else default_tz
            return f"{body[:4]}-{body[4:6]}-{body[6:8]}T{body[8:10]}:{body[10:12]}:{body[12:14] or '00'}{zone}"
        # the usual shapes (no fraction): the regular expression's groups are fixed slices
        y, mo, d, h, mi, s = body[:4], body[4:6], body[6:8], body[8:10], body[10:12], body[12:14]
        frac = ""
        if tz is not None:
            tz = text[-5:]
    else:
        m = _DTM.match(text)
        if not m:
            return None
        y, mo, d, h, mi, s, fraction, tz = m.groups(default="")
        frac = f".{fraction}" if fraction else ""
        tz = tz or None
    date = y + (f"-{mo}" if mo else "") + (f"-{d}" if mo and d else "")
    if fhir_type == "date" or not h or not (mo and d):
        return None if fhir_type == "instant" else date
    zone = f"{tz[:3]}:{tz[3:]}" if tz else default_tz
    if zone is None:
        return date
    if zone in ("+00:00", "-00:00"):
        zone = "Z" if not tz else zone
    return f"{date}T{h}:{mi or '00'}:{s or '00'}{frac}{zone}"


_DIGIT_LENGTHS = frozenset({4, 6, 8, 10, 12, 14})


def tz_of(value: str) -> str | None:
    """The ``±hh:mm`` offset a DTM carries, if any."""
    text = value.strip()
    if text.isdecimal():  # digits only: no offset, whether or not it is a valid DTM
        return None
    m = _DTM.match(text)
    if not m or not m.group("tz"):
        return None
    tz = m.group("tz")
    return f"{tz[:3]}:{tz[3:]}"


def number(value: str) -> int | float | None:
    """NM text → int or float, keeping integers integral (``41`` stays ``41``)."""
    text = value.strip()
    if text.isdecimal():
        return whole_number(text)
    whole, dot, fraction = text.partition(".")
    if dot and (whole.isdecimal() or not whole) and (fraction.isdecimal() or (not fraction and whole)):
        return float(text)
    if not _NUMBER.match(text):
        return None
    if "." not in text:
        return whole_number(text)
    return float(text)


def boolean(value: str) -> bool | None:
    text = value.strip().upper()
    if text in ("Y", "YES", "TRUE", "T", "1"):
        return True
    if text in ("N", "NO", "FALSE", "F", "0"):
        return False
    return None


@lru_cache(maxsize=4096)
def _ucum(text: str) -> str | None:
    """UCUM code for a unit string; a bare number is valid UCUM but never a real unit here."""
    code = to_ucum(text)
    return None if code is None or number(code) is not None else code


def normalize_quantity(q: dict[str, Any]) -> dict[str, Any]:
    """Put a Quantity's unit into UCUM when it can be recognised (mg/dl → mg/dL).

    The original unit text stays in ``unit`` (what the sender displayed); ``system``
    and ``code`` are only set for a real UCUM code, as FHIR requires.
    """
    unit = q.get("unit")
    code = q.get("code")
    system = q.get("system")
    if system and system != UCUM_SYSTEM and not system.startswith(LOCAL_SYSTEM_BASE) and code:
        return q  # a unit coded in a standard terminology (SNOMED "tablet"): keep it as sent
    source = code or unit
    if not source:
        return q
    ucum = _ucum(source) or (_ucum(unit) if unit and unit != source else None)
    if ucum:
        if code and code != ucum and not unit:
            q["unit"] = code
        q["system"] = UCUM_SYSTEM
        q["code"] = ucum
        if not unit:
            q["unit"] = source
    elif not system or system == UCUM_SYSTEM:
        q.pop("system", None)
        q.pop("code", None)
        q["unit"] = unit or source
    return q
