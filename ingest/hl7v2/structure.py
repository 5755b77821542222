"""Group a message's segments by its abstract message structure (ORU_R01, ADT_A01, …).

The structure definitions come from ``data/structures.json`` (generated offline from
hl7apy by :mod:`ingest.hl7v2.build_structures`). Matching is a greedy walk of the
definition tree: a group instance starts when the next segment is in the group's
*first set* (the segments that may open it), and a repeating group restarts when its
opening segment comes round again. That is what puts each OBX and NTE under the OBR
it follows, opens a new ORDER_OBSERVATION for each OBR, and a new PATIENT_RESULT for
each PID.

Real feeds carry Z-segments and segments the structure does not list at that place:
those are kept, attached to the innermost open group, and reported in
``Group.unexpected`` instead of being dropped or failing the message.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

from ingest.hl7v2.er7 import Message, Segment
from ingest.hl7v2.errors import ErrorCode, HL7StructureError

_DATA = Path(__file__).with_name("data")


@dataclass(slots=True)
class Node:
    """One element of a structure definition: a segment or a group."""

    name: str
    min: int
    max: int  # -1 = unbounded
    children: list[Node] | None = None
    first: frozenset[str] = frozenset()

    @property
    def is_group(self) -> bool:
        return self.children is not None


@dataclass(slots=True)
class Group:
    """One instance of a group; ``items`` holds segments and sub-groups in message order."""

    name: str
    items: list[Segment | Group] = field(default_factory=list)
    unexpected: list[Segment] = field(default_factory=list)
    repeats: bool = False  # the structure allows several instances: each one scopes its own resources
    family: str = ""
    """On the root: the version family whose structure definitions grouped the message (the mapper
    reads its tables for the same family)."""
    flat: tuple[list[Segment], list[tuple[Group, ...]], tuple[Any, ...]] | None = None
    """On a root rebuilt from a recipe: its segments in message order, the groups around each
    (outermost first, the root left out), and a key equal for every message grouped alike."""

    def segment(self, seg_id: str) -> Segment | None:
        """First direct child segment with this id."""
        for item in self.items:
            if isinstance(item, Segment) and item.id == seg_id:
                return item
        return None

    def segments(self, seg_id: str) -> list[Segment]:
        """Direct child segments with this id."""
        return [i for i in self.items if isinstance(i, Segment) and i.id == seg_id]

    def groups(self, name: str) -> list[Group]:
        """Direct child groups with this name."""
        return [i for i in self.items if isinstance(i, Group) and i.name == name]

    def group(self, name: str) -> Group | None:
        found = self.groups(name)
        return found[0] if found else None

    def find_groups(self, name: str) -> Iterator[Group]:
        """Every group with this name at any depth, in message order."""
        for item in self.items:
            if isinstance(item, Group):
                if item.name == name:
                    yield item
                yield from item.find_groups(name)

    def walk(self) -> Iterator[Segment]:
        """All segments under this group, in message order."""
        for item in self.items:
            if isinstance(item, Group):
                yield from item.walk()
            else:
                yield item

    def all_unexpected(self) -> list[Segment]:
        out = list(self.unexpected)
        for item in self.items:
            if isinstance(item, Group):
                out.extend(item.all_unexpected())
        return out

    def outline(self, indent: int = 0) -> str:
        """Indented listing of the grouping, for debugging and documentation."""
        lines = []
        for item in self.items:
            if isinstance(item, Group):
                lines.append(" " * indent + f"[{item.name}]")
                lines.append(item.outline(indent + 2))
            else:
                lines.append(" " * indent + item.id)
        return "\n".join(line for line in lines if line)


def _build(raw: list[Any]) -> Node:
    if len(raw) == 3:
        return Node(raw[0], raw[1], raw[2], None, frozenset((raw[0],)))
    children = [_build(c) for c in raw[3]]
    return Node(raw[0], raw[1], raw[2], children, _first_set(children))


def _first_set(children: list[Node]) -> frozenset[str]:
    first: set[str] = set()
    for child in children:
        first |= child.first
        if child.min > 0:
            break
    return frozenset(first)


@cache
def _definitions(family: str = "2.5.1") -> dict[str, Node]:
    raw = json.loads((_DATA / "structures.json").read_text())[family]
    return {name: _build([name, 1, 1, children]) for name, children in raw.items()}


@lru_cache(maxsize=64)
def _family(version: str) -> str:
    """v2.7 and later carry PRT/ARV and friends: group them with the 2.8 definitions."""
    parts = version.split(".")
    minor = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 5
    return "2.8" if minor >= 7 else "2.5.1"


@cache
def _event_map() -> dict[str, str]:
    return json.loads((_DATA / "event_structures.json").read_text())


def structure_of(msg: Message) -> str:
    """Canonical structure id: MSH-9.3 when it names a known structure, else table 0354."""
    defs = _definitions()
    declared = msg.msh.get(9, 1, 3)
    if declared in defs:
        return declared
    events = _event_map()
    key = f"{msg.message_type}^{msg.trigger_event}"
    if key in events:
        return events[key]
    return declared or f"{msg.message_type}_{msg.trigger_event}"


def required_segments(structure: str, version: str) -> frozenset[str]:
    """Segments every message of ``structure`` holds: required ones at its top level or inside groups
    that are themselves required all the way up (none for an unknown structure)."""
    return _required(structure, _family(version))


@cache
def _required(structure: str, family: str) -> frozenset[str]:
    return _required_in(_definitions(family).get(structure))


def _required_in(node: Node | None) -> frozenset[str]:
    if node is None or node.children is None:
        return frozenset()
    out: set[str] = set()
    for child in node.children:
        if child.min > 0:
            out |= _required_in(child) if child.is_group else {child.name}
    return frozenset(out)


def known_structures() -> list[str]:
    return sorted(_definitions())


class _Matcher:
    def __init__(self, segments: list[Segment], strict: bool) -> None:
        self.segs = segments
        self.i = 0
        self.strict = strict
        self.known: frozenset[str] = frozenset()

    def peek(self) -> str | None:
        return self.segs[self.i].id if self.i < len(self.segs) else None

    def match_group(self, node: Node, inst: Group) -> None:
        assert node.children is not None
        for child in node.children:
            count = 0
            while True:
                sid = self.peek()
                if sid is None or sid not in child.first:
                    break
                if child.is_group:
                    sub = Group(child.name, repeats=child.max != 1)
                    self.match_group(child, sub)
                    inst.items.append(sub)
                else:
                    inst.items.append(self.segs[self.i])
                    self.i += 1
                count += 1
                self.absorb_unknown(inst)
                if child.max != -1 and count >= child.max:
                    break
            if count < child.min and self.strict:
                seg = self.segs[self.i] if self.i < len(self.segs) else None
                raise HL7StructureError(
                    f"required {'group' if child.is_group else 'segment'} {child.name} missing in {node.name}",
                    code=ErrorCode.SEGMENT_SEQUENCE_ERROR,
                    segment_id=seg.id if seg else child.name,
                    segment_seq=seg.seq if seg else None,
                    rejects=False,
                )

    def absorb_unknown(self, inst: Group) -> None:
        """Z-segments and segments foreign to this structure stay with the current group."""
        while self.i < len(self.segs) and self.segs[self.i].id not in self.known:
            seg = self.segs[self.i]
            inst.items.append(seg)
            if not seg.id.startswith("Z"):
                inst.unexpected.append(seg)
            self.i += 1


def _all_ids(node: Node) -> set[str]:
    if not node.is_group:
        return {node.name}
    out: set[str] = set()
    for c in node.children or ():
        out |= _all_ids(c)
    return out


@cache
def _known_ids(family: str, name: str) -> frozenset[str]:
    """Every segment id a structure names (segments outside it are "unexpected")."""
    return frozenset(_all_ids(_definitions(family)[name]))


def group_message(msg: Message, *, strict: bool = False, structure: str | None = None) -> Group:
    """Group ``msg`` by its structure; the root group is named after the structure.

    Unknown structures yield a flat root group. With ``strict=True`` a missing
    required segment or an out-of-place segment raises :class:`HL7StructureError`
    (ACK AE, HL7 code 100); otherwise out-of-place segments are attached to the
    innermost open group and listed in ``unexpected``.

    The grouping depends only on the structure, the version family and the sequence of
    segment ids, so it is worked out once per such sequence and rebuilt from a recipe
    for every later message of that shape.
    """
    name = structure or structure_of(msg)
    family = _family(msg.version)
    segments = msg.segments
    key = (family, name, strict, tuple(s.id for s in segments))
    build = _RECIPES.get(key)
    if build is None:
        root = _match(segments, name, family, strict)
        if len(_RECIPES) >= _RECIPE_LIMIT:
            _RECIPES.clear()
        _RECIPES[key] = _builder(_recipe(root, {id(s): i for i, s in enumerate(segments)}), key)
    else:
        root = build(segments)
    root.family = family
    return root


_Recipe = tuple[str, bool, tuple[Any, ...], tuple[int, ...]]
_RECIPES: dict[tuple[Any, ...], Any] = {}
"""Grouping key (family, structure, strictness, segment ids) → the generated function rebuilding
such a grouping from a message's segments (:func:`_builder`)."""
_RECIPE_LIMIT = 10_000


def _recipe(group: Group, index: dict[int, int]) -> _Recipe:
    """A grouping as segment positions: (name, repeats, items, unexpected)."""
    items = tuple(_recipe(item, index) if isinstance(item, Group) else index[id(item)] for item in group.items)
    return group.name, group.repeats, items, tuple(index[id(seg)] for seg in group.unexpected)


def _builder(recipe: _Recipe, key: tuple[Any, ...]) -> Any:
    """The recipe as one generated function of the segments: every group made with its items by
    position, the root given its ``flat`` view (``key`` as the grouping's key), no recursion."""
    lines: list[str] = []
    walk: list[str] = []
    chains: list[str] = []

    def make(recipe: _Recipe, chain: tuple[str, ...]) -> str:
        name, repeats, items, unexpected = recipe
        var = f"g{len(lines)}"
        lines.append("")  # this group's line, filled once its subgroups exist
        parts = []
        for item in items:
            if item.__class__ is int:
                parts.append(f"S[{item}]")
                walk.append(f"S[{item}]")
                chains.append(f"({''.join(f'{g}, ' for g in chain)})")
            else:
                parts.append(make(item, (*chain, f"g{len(lines)}")))
        lines[int(var[1:])] = (f"    {var} = Group({name!r}, [{', '.join(parts)}], "
                               f"[{', '.join(f'S[{i}]' for i in unexpected)}], {repeats!r})")
        return var

    make(recipe, ())
    lines.reverse()  # subgroups before the groups holding them
    source = "\n".join(["def build(S):", *lines, f"    g0.flat = ([{', '.join(walk)}], [{', '.join(chains)}], KEY)",
                         "    return g0"])
    scope: dict[str, Any] = {"Group": Group, "KEY": key}
    exec(source, scope)  # the source is built above from the recipe only
    return scope["build"]


def _match(segments: list[Segment], name: str, family: str, strict: bool) -> Group:
    root = Group(name)
    node = _definitions(family).get(name)
    if node is None:
        root.items.extend(segments)
        return root
    m = _Matcher(segments, strict)
    m.known = _known_ids(family, name)
    while m.i < len(m.segs):
        before = m.i
        m.match_group(node, root)
        if m.i < len(m.segs):
            seg = m.segs[m.i]
            if strict:
                raise HL7StructureError(
                    f"segment {seg.id} not allowed here in {name}",
                    code=ErrorCode.SEGMENT_SEQUENCE_ERROR,
                    segment_id=seg.id,
                    segment_seq=seg.seq,
                    rejects=False,
                )
            last = _innermost(root)
            last.items.append(seg)
            last.unexpected.append(seg)
            m.i += 1
        if m.i == before:
            break
    return root


def _innermost(group: Group) -> Group:
    while group.items and isinstance(group.items[-1], Group):
        group = group.items[-1]
    return group
