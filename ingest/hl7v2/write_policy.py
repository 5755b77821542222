"""Which mapped resources a message may replace, and which it only creates when they are missing.

Every v2 message that carries a PID (results, orders, vaccinations, schedules) maps it to a
Patient, and most a PV1 to an Encounter: the resources the message's own resources point to. A
lab system's PID holds a name, a birth date and an identifier; the admission system's holds the
address, telecom and the rest. Written as sent, each result would replace the demographics and the
visit the ADT feed built. So the message types that own a resource type (``data/write_policy.json``:
ADT for Patient, Encounter, RelatedPerson and Coverage) replace it; other messages create it only
when it is missing, and otherwise leave the stored one as it is.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable
from functools import cache
from pathlib import Path
from typing import Any

_POLICY = Path(__file__).with_name("data") / "write_policy.json"


@cache
def _owners() -> dict[str, frozenset[str]]:
    raw = json.loads(_POLICY.read_text())["owners"]
    return {rtype: frozenset(kinds) for rtype, kinds in raw.items()}


def create_only(message_type: str, resources: list[dict[str, Any]]) -> frozenset[int]:
    """Positions of the ``resources`` a message of ``message_type`` (MSH-9.1) may only create."""
    owners = _owners()
    return frozenset(i for i, res in enumerate(resources)
                     if (owned := owners.get(res.get("resourceType", ""))) is not None and message_type not in owned)


def in_one_write(parts: Iterable[tuple[int, Collection[int]]]) -> set[int]:
    """The create-only positions of several messages' resources written as one list; ``parts`` holds,
    per message in order, its number of resources and its :func:`create_only` positions."""
    out: set[int] = set()
    start = 0
    for count, positions in parts:
        out.update(start + k for k in positions)
        start += count
    return out
