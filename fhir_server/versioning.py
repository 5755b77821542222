"""ETag, Last-Modified and the conditional request headers (If-Match, If-None-Match, If-Modified-Since)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime, parsedate_to_datetime

from fhir_server.responses import FHIRError
from store.search_values import parse_date

_ETAG = re.compile(r'^\s*(?:W/)?"?([^"\s]+)"?\s*$')


def etag(version_id: int) -> str:
    """A weak ETag as FHIR uses it: ``W/"3"``."""
    return f'W/"{version_id}"'


def http_date(ts: datetime) -> str:
    """An RFC 7231 date for ``Last-Modified``."""
    return format_datetime(ts.astimezone(UTC), usegmt=True)


def version_headers(version_id: int, last_updated: datetime) -> dict[str, str]:
    """ETag and Last-Modified of one resource version."""
    return {"ETag": etag(version_id), "Last-Modified": http_date(last_updated)}


def parse_version(value: str, header: str) -> int:
    """The version in ``W/"3"``, ``"3"`` or a bare ``3`` (fhirpy sends the bare form)."""
    match = _ETAG.match(value)
    if match is None or not match.group(1).isdigit():
        raise FHIRError(400, f"{header} must name a version like W/\"3\", got {value!r}", code="invalid")
    return int(match.group(1))


def if_match_version(value: str | None) -> int | None:
    """The version an update is conditional on, if the client sent If-Match."""
    return None if value is None else parse_version(value, "If-Match")


def not_modified(if_none_match: str | None, modified_since: datetime | None, version_id: int,
                 last_updated: datetime) -> bool:
    """True when a read should answer 304 (the client's copy is current); ``If-None-Match`` wins over
    ``If-Modified-Since`` as in HTTP."""
    if if_none_match is not None:
        tags = [t.strip() for t in if_none_match.split(",") if t.strip()]
        if "*" in tags:
            return True
        return any((m := _ETAG.match(t)) is not None and m.group(1) == str(version_id) for t in tags)
    if modified_since is not None:
        return last_updated <= modified_since
    return False


def http_since(value: str | None) -> datetime | None:
    """An ``If-Modified-Since`` header (an HTTP date) as an aware datetime: the last instant of the second
    it names, since an HTTP date cannot say more (a version written later in that second counts as
    seen). An unreadable one is ignored, as HTTP says."""
    if value is None:
        return None
    try:
        since = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return (since if since.tzinfo else since.replace(tzinfo=UTC)) + timedelta(microseconds=999_999)


def parse_period(value: str, name: str) -> tuple[datetime, datetime]:
    """A FHIR date/dateTime query value (``_at``) as the half-open period its precision covers:
    ``2026-11-22`` is the whole day, an instant one microsecond (or the second or minute it names)."""
    try:
        found = parse_date(value.strip().replace(" ", "+"))
    except ValueError as exc:
        raise FHIRError(400, f"{name}: {exc}", code="invalid") from None
    return found.lo, found.hi


def parse_instant(value: str, name: str) -> datetime:
    """A FHIR dateTime/instant query value (``_since``, ``_at``) as an aware datetime (UTC if no zone)."""
    try:
        ts = datetime.fromisoformat(value.strip().replace(" ", "+"))
    except ValueError:
        raise FHIRError(400, f"{name} must be a FHIR instant, got {value!r}", code="invalid") from None
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)
