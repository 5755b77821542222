"""``Location?near``: positions within a great-circle distance of a point (FHIR R4 ``near``, the one
search parameter of type special).

The value is ``latitude|longitude[|distance[|units]]``: WGS84 degrees, the distance in UCUM units of
length (km when none are given). Without a distance the specification leaves "near" to the server:
:data:`NEAR_DEFAULT_KM`. Positions are read from the stored Locations, not from an index table: a
deployment holds few Locations next to its clinical data, and the distance is a formula over two
numbers of each, which no range index answers directly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mapping.ucum import canonical

EARTH_RADIUS_M = 6_371_008.8
"""Mean radius of the Earth (IUGG): distances are great-circle distances on that sphere (haversine)."""

NEAR_DEFAULT_KM = 10.0


@dataclass(frozen=True, slots=True)
class Near:
    """A point and the distance around it."""

    latitude_deg: float
    longitude_deg: float
    distance_m: float


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"near: {what} must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"near: {what} must be a finite number, got {text!r}")
    return value


def parse_near(value: str) -> Near:
    """The point and distance of one ``near`` value; ValueError saying what is wrong."""
    parts = value.split("|")
    if not 2 <= len(parts) <= 4:
        raise ValueError(f"near must be latitude|longitude[|distance[|units]], got {value!r}")
    latitude, longitude = _number(parts[0], "latitude"), _number(parts[1], "longitude")
    if not (-90 <= latitude <= 90 and -180 <= longitude <= 180):
        raise ValueError(f"near: latitude must be within ±90 and longitude within ±180 degrees, got {value!r}")
    if len(parts) < 3 or not parts[2]:
        return Near(latitude, longitude, NEAR_DEFAULT_KM * 1000)
    distance = _number(parts[2], "distance")
    unit = parts[3] if len(parts) == 4 and parts[3] else "km"
    meters = canonical(distance, unit)
    if meters is None or meters[1] != "m":
        raise ValueError(f"near: {unit!r} is not a UCUM unit of length")
    if meters[0] < 0:
        raise ValueError(f"near: the distance must not be negative, got {value!r}")
    return Near(latitude, longitude, meters[0])


def near_sql(near: Near, latitude_sql: str, longitude_sql: str, arg: Callable[[Any], str]) -> str:
    """SQL that is true when the point (``latitude_sql``, ``longitude_sql``, degrees) lies within the
    distance of ``near`` (haversine; ``arg`` renders a number as a literal)."""
    lat, lon = arg(near.latitude_deg), arg(near.longitude_deg)
    half_chord = (f"pow(sin(radians({latitude_sql} - {lat}) / 2), 2) + cos(radians({lat})) * "
                  f"cos(radians({latitude_sql})) * pow(sin(radians({longitude_sql} - {lon}) / 2), 2)")
    return f"2 * {arg(EARTH_RADIUS_M)} * asin(sqrt(least(1.0, {half_chord}))) <= {arg(near.distance_m)}"
