"""The time zone of an HL7 v2 sender whose times carry no UTC offset.

HL7 v2 times are local to the sender unless they end in an offset (``20240310083000-0500``); many
feeds never send one. The mapper keeps an offset as sent, else takes MSH-7's, else a default
offset for the message. A sender's zone is a setting (``--hl7-timezone``): a fixed offset
(``+01:00``), ``UTC``, or an IANA name (``America/Chicago``), whose offset is the one in force at
the message's MSH-7 time, so daylight-saving time follows the calendar. One offset per message:
a time inside the message on the other side of a clock change is an hour off, as the message
itself cannot say which side it meant.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DEFAULT_TIMEZONE = "UTC"
_OFFSET = re.compile(r"^[+-](?:[01]\d|2[0-3]):[0-5]\d$")
_MSH7 = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?")


def check_timezone(text: str) -> str:
    """``text`` if it names a zone this module understands (ValueError otherwise: argparse reports it)."""
    if text in ("UTC", "Z") or _OFFSET.match(text):
        return text
    try:
        _zone(text)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"not a UTC offset (+hh:mm), UTC or an IANA time zone name: {text!r}") from None
    return text


@lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def offset_at(zone: str, msh7: str) -> str:
    """The ``+hh:mm`` offset of ``zone`` at the local time MSH-7 gives (now, when MSH-7 gives none)."""
    if zone in ("UTC", "Z"):
        return "+00:00"
    if _OFFSET.match(zone):
        return zone
    tz = _zone(zone)
    when = _local(msh7)
    offset = (when.replace(tzinfo=tz) if when else datetime.now(tz)).utcoffset() or timedelta(0)
    minutes = int(offset.total_seconds()) // 60
    sign, minutes = ("-", -minutes) if minutes < 0 else ("+", minutes)
    return f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def _local(msh7: str) -> datetime | None:
    m = _MSH7.match(msh7)
    if not m:
        return None
    year, month, day, hour, minute = (int(g) if g else d for g, d in zip(m.groups(), (None, 1, 1, 0, 0), strict=True))
    try:
        return datetime(year, month, day, hour, minute)  # wall-clock time: the zone is applied by the caller
    except (ValueError, TypeError):
        return None

