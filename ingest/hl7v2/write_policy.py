"""Which mapped resources a message may replace, and which it only creates when they are missing.

Every v2 message that carries a PID (results, orders, vaccinations, schedules) maps it to a
Patient, and most a PV1 to an Encounter: the resources the message's own resources point to. A
lab system's PID holds a name, a birth date and an identifier; the admission system's holds the
address, telecom and the rest. Written as sent, each result would replace the demographics and the
visit the ADT feed built. So the message types that own a resource type (``data/write_policy.json``:
ADT for Patient, Encounter, RelatedPerson and Coverage) replace it; other messages create it only
when it is missing, and otherwise leave the stored one as it is.

Some resources are sent in part: the record a merge (A40) retires is named by its identifier and
linked to the survivor, a result whose status changes may come without its value. Those are
combined with the stored version (``merges`` in the data file, :mod:`store.merge`) instead of
replacing it.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

from store.merge import Merge, present

T = TypeVar("T")
_POLICY = Path(__file__).with_name("data") / "write_policy.json"


@cache
def _owners() -> dict[str, frozenset[str]]:
    raw = json.loads(_POLICY.read_text())["owners"]
    return {rtype: frozenset(kinds) for rtype, kinds in raw.items()}


@cache
def _merge_rules() -> dict[str, list[tuple[dict[str, str], tuple[str, ...], Merge]]]:
    rules: dict[str, list[tuple[dict[str, str], tuple[str, ...], Merge]]] = {}
    for rule in json.loads(_POLICY.read_text())["merges"]:
        merge = Merge(rule["default"], dict(rule["elements"]))
        rules.setdefault(rule["resourceType"], []).append((rule.get("has", {}), tuple(rule.get("lacks", ())), merge))
    return rules


def _values(item: Any, path: list[str]) -> Iterator[Any]:
    """The values at a dotted ``path`` below ``item``, through lists."""
    if isinstance(item, list):
        for x in item:
            yield from _values(x, path)
    elif not path:
        yield item
    elif isinstance(item, dict) and path[0] in item:
        yield from _values(item[path[0]], path[1:])


def merges(resources: list[dict[str, Any]]) -> dict[int, Merge]:
    """Positions of the ``resources`` to combine with their stored version, and how."""
    rules = _merge_rules()
    out: dict[int, Merge] = {}
    for i, res in enumerate(resources):
        for has, lacks, merge in rules.get(res.get("resourceType", ""), ()):
            if (all(value in _values(res, path.split(".")) for path, value in has.items())
                    and not any(present(res, name) for name in lacks)):
                out[i] = merge
                break
    return out


def create_only(message_type: str, resources: list[dict[str, Any]]) -> frozenset[int]:
    """Positions of the ``resources`` a message of ``message_type`` (MSH-9.1) may only create."""
    owners = _owners()
    return frozenset(i for i, res in enumerate(resources)
                     if (owned := owners.get(res.get("resourceType", ""))) is not None and message_type not in owned)


def in_one_write(parts: Iterable[tuple[int, Mapping[int, T] | Collection[int]]]) -> dict[int, T | None]:
    """The positions of several messages' resources written as one list; ``parts`` holds, per message
    in order, its number of resources and its positions (:func:`create_only`, :func:`merges`; the
    values of a mapping are kept)."""
    out: dict[int, T | None] = {}
    start = 0
    for count, positions in parts:
        if isinstance(positions, Mapping):
            out.update((start + k, v) for k, v in positions.items())
        else:
            out.update((start + k, None) for k in positions)
        start += count
    return out
