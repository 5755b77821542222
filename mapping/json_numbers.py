"""Whole numbers read from text (HL7 v2 NM, FHIR XML decimals) as JSON readers give them.

The store serializes resources with orjson, which writes integers up to 64 bits and refuses
larger ones; orjson itself reads a larger JSON integer as a float. Text readers follow the
same rule, so a result of 2**70 maps to the same value whether it came as JSON, XML or v2.
"""

from __future__ import annotations

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def whole_number(text: str) -> int | float:
    """``int(text)``, or its float when it does not fit in 64 bits."""
    value = int(text)
    return value if _INT64_MIN <= value <= _INT64_MAX else float(value)
