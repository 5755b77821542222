"""Search values as ranges: fractional seconds are read as digits (a float would turn .252231 into
252230 µs, and an ``_at`` or ``date`` search on an instant this server wrote would miss it)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from store.search_values import parse_date


def test_every_microsecond_of_a_second_is_read_exactly() -> None:
    base = datetime(2026, 11, 23, 2, 5, 19, tzinfo=UTC)
    for us in range(0, 1_000_000, 7):
        instant = base + timedelta(microseconds=us)
        text = instant.isoformat(timespec="microseconds").replace("+00:00", "Z")
        found = parse_date(text)
        assert (found.lo, found.hi) == (instant, instant + timedelta(microseconds=1)), text


@pytest.mark.parametrize(("text", "lo_us"), [
    ("2026-11-23T02:05:19.5Z", 500_000),
    ("2026-11-23T02:05:19.25223Z", 252_230),
    ("2026-11-23T02:05:19.2522319Z", 252_231),  # beyond microseconds: cut, as DuckDB stores them
    ("2026-11-23T03:05:19.000001+01:00", 1),
])
def test_fractions_of_other_lengths(text: str, lo_us: int) -> None:
    assert parse_date(text).lo == datetime(2026, 11, 23, 2, 5, 19, lo_us, tzinfo=UTC)
