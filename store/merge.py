"""Writes that combine an incoming resource with the stored version instead of replacing it.

A write replaces the stored resource with the one given. Some senders describe only part of a
resource they do not own: an HL7 v2 merge (A40) names the record merged away by its identifier
and says it is now replaced by another; its name, birth date and address were sent earlier, by the
admission feed. Written as given, that stub replaces the stored demographics. A :class:`Merge`
says, element by element, what the stored version keeps: the store applies it under its writer
lock, to the version current at that moment (or written earlier in the same batch), so no
concurrent write is lost between a read and a write.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

POLICIES = frozenset({"replace", "incoming", "stored", "union"})
"""``replace``: the incoming element or none (a plain write); ``incoming``: the incoming element, else
the stored one; ``stored``: the stored element, else the incoming one; ``union``: the stored list
with the incoming items it lacks appended."""

_CHOICE = re.compile(r"^(?P<base>[a-z][A-Za-z0-9]*)\[x\]$")


@dataclass(frozen=True, slots=True)
class Merge:
    """How an incoming resource combines with its stored version, element by element.

    Element names are top-level; ``value[x]`` stands for every ``value…`` choice element at once
    (an incoming ``valueString`` takes the place of a stored ``valueQuantity``).
    """

    default: str = "replace"
    elements: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for policy in (self.default, *self.elements.values()):
            if policy not in POLICIES:
                raise ValueError(f"unknown merge policy {policy!r} (one of {sorted(POLICIES)})")


def present(res: dict[str, Any], name: str) -> bool:
    """True when ``res`` has the top-level element ``name`` (``value[x]``: any of its choices)."""
    m = _CHOICE.match(name)
    if m is None:
        return res.get(name) not in (None, [], {}, "")
    base = m["base"]
    return any(_group(k, {base: name}) == name for k in res)


def _group(name: str, choices: dict[str, str]) -> str:
    """The element group ``name`` belongs to: its choice (``value[x]``) or itself."""
    for prefix, group in choices.items():
        if name.startswith(prefix) and len(name) > len(prefix) and name[len(prefix)].isupper():
            return group
    return name


def merged(stored: dict[str, Any], incoming: dict[str, Any], rule: Merge) -> dict[str, Any]:
    """``incoming`` combined with ``stored`` by ``rule``; ``resourceType``, ``id`` from ``incoming``;
    ``meta`` is an element like the others, without the store's ``versionId``/``lastUpdated``."""
    choices = {m["base"]: name for name in rule.elements if (m := _CHOICE.match(name))}
    groups: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    for side, res in ((0, stored), (1, incoming)):
        for name, value in res.items():
            if name == "meta" and isinstance(value, dict):  # the store's versionId, lastUpdated: set by the write
                value = {k: v for k, v in value.items() if k not in ("versionId", "lastUpdated")} or None
            if name in ("resourceType", "id") or value is None:
                continue
            groups.setdefault(_group(name, choices), ({}, {}))[side][name] = value
    out: dict[str, Any] = {"resourceType": incoming["resourceType"], "id": incoming["id"]}
    for group, (old, new) in groups.items():
        policy = rule.elements.get(group, rule.default)
        if policy == "replace":
            out.update(new)
        elif policy == "incoming":
            out.update(new or old)
        elif policy == "stored":
            out.update(old or new)
        else:
            for name in [*old, *(k for k in new if k not in old)]:
                items = _listed(old.get(name))
                items += [item for item in _listed(new.get(name)) if item not in items]
                out[name] = items
    return out


def _listed(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]
