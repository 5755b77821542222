"""Map a grouped HL7 v2 message to FHIR R4 resources, driven by the IG's message tables.

For every segment, the message table of its structure says which resources it feeds
(``OBX`` → ``Observation[2]`` via ``OBX[Observation]``) and how they reference each
other (``DiagnosticReport[1].result = Observation[2]``). A resource instance lives in
the innermost *repeating* group around the segment (one Observation per OBSERVATION
group, one Patient per PATIENT_RESULT), so ORC and OBR of one ORDER_OBSERVATION fill
the same DiagnosticReport, while each OBX gets its own Observation under the right one.

Ids are deterministic (see ``config.json`` → ``ids``), so replaying a message, or an
A08 update of the same patient, yields the same ids. Every mapped message also yields
a Provenance naming the source message.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Protocol

import orjson

from mapping.v2 import shapes, values
from mapping.v2.engine import (
    CONVERSIONS,
    ID_SEPARATOR,
    SHEET_STRIDE,
    Context,
    Node,
    Ref,
    SegmentLike,
    Writer,
    finalize,
    identifier_key,
    merge,
    name_key,
    stable_digest,
    stable_id,
    writer,
)
from mapping.v2.field_rules import (
    ENTRY,
    ENVELOPE_SEGMENTS,
    LINK,
    MEMO_TABLES,
    PLAIN,
    STANDARD,
    WriteLog,
    memo_table,
    writer_number,
)
from mapping.v2.segment_functions import OutcomesFunction, outcomes_of_rows, row_condition, segment_function
from mapping.v2.tables import config, message_maps, structure_groups

PROVENANCE_SOURCE_SYSTEM = "urn:fhirtwin:v2:message-control-id"


class GroupLike(Protocol):
    """A group instance of the message structure (as built by the ER7 grouping code)."""

    name: str
    items: Sequence[Any]
    repeats: bool
    family: str
    """On the root: the version family of the structure definitions that grouped the message."""
    flat: tuple[list[Any], list[tuple[Any, ...]], Any] | None
    """On the root, when the grouping has it: segments in message order, their enclosing groups,
    and a key the same for every message grouped alike (else the mapper walks the groups)."""


class MessageLike(Protocol):
    segments: Sequence[SegmentLike]

    @property
    def msh(self) -> SegmentLike: ...

    @property
    def control_id(self) -> str: ...


@dataclass
class MappingResult:
    """What a message became. ``mapped`` is False for message types without a map:
    the caller should store the raw message and acknowledge it anyway."""

    structure: str
    mapped: bool
    resources: list[dict[str, Any]] = field(default_factory=list)
    patient_id: str | None = None
    notes: list[str] = field(default_factory=list)

    def of_type(self, resource_type: str) -> list[dict[str, Any]]:
        return [r for r in self.resources if r["resourceType"] == resource_type]


class _Instance:
    """A resource under construction."""

    __slots__ = ("key", "type", "creator", "chain", "log", "links", "links_key", "node", "fallbacks", "shape",
                 "shaped", "targets", "patient", "order", "reference", "id", "alias", "merges", "bases",
                 "chain_ids", "referrers")

    log: WriteLog
    """What the segment maps write (``field_rules.LOG_KINDS``), in order."""
    links: list[Any] | tuple[()]
    """``(LINK, writer, target)`` or ``(ENTRY, a literal's write, None)``, written after the log."""
    links_key: tuple[Any, ...]
    """The links and fallback references as the plan numbers their targets (part of the shape key)."""
    node: Node | None
    """The resource tree, built from the log only when the resource is finished the long way."""
    fallbacks: tuple[Any, ...]
    """``(element, target instance)`` or ``None``: the patient and encounter references the
    resource gets when nothing else wrote them."""
    shape: shapes.Shape | None
    shaped: bool
    targets: list[Any] | tuple[()]
    """The distinct resources it refers to, in the order the shape numbers them."""
    referrers: tuple[int, ...]
    """The positions of the resources whose ``targets`` (as the plan made them) hold this one (not
    the resources: references both ways would make cycles only the garbage collector frees)."""
    patient: _Instance | None
    """The Patient the ``patient`` id token reads (not the resource itself)."""
    order: str | None
    """The ``order`` id token: the filler (else placer) order number of the innermost enclosing
    group that has one, made by the plan once per run of such groups."""
    reference: str | None
    """``Type/id``, once the id is known (what templates put in for a reference)."""
    id: str | None
    alias: _Instance | None
    merges: int
    bases: dict[str, int] | None
    chain_ids: frozenset[int]

    def __init__(self, key: str, rtype: str, creator: SegmentLike, chain: tuple[Any, ...]) -> None:
        self.key = key
        self.type = rtype
        self.creator = creator
        self.chain = chain
        self.log = WriteLog()
        self.links = self.links_key = self.fallbacks = self.targets = self.referrers = ()
        self.node = self.shape = self.patient = self.order = None
        self.reference = self.id = self.alias = None
        self.bases = None
        self.shaped = False
        self.merges = 0
        self.chain_ids = frozenset()

    def base_of(self, mapname: str) -> int:
        """List offset of a segment map's elements. The IG numbers list slots per sheet:
        PD1[Patient]'s ``extension[1]`` is not PID[Patient]'s, while RXR[MedicationRequest]'s
        ``dosageInstruction[1]`` completes RXE's. ``finalize`` joins such elements when they agree."""
        if self.bases is None:
            self.bases = {}
        base = self.bases.get(mapname)
        if base is None:
            base = self.bases[mapname] = len(self.bases) * SHEET_STRIDE
        return base

    def root(self) -> _Instance:
        inst = self
        while inst.alias is not None:
            inst = inst.alias
        return inst


@dataclass(eq=False)
class _Link:
    """One References entry of a message-table row (``DiagnosticReport[1].result =
    Observation[2]``) with its writers made once."""

    source: str
    target: str
    literal: Any
    path: tuple[tuple[Any, ...], ...]
    write: Writer
    listed: bool
    elements: dict[int, Writer] = field(default_factory=dict)
    literal_entry: bytes = b""
    """A literal value's write as a field memo entry."""

    def element(self, slot: int) -> Writer:
        """Writer for the list element ``slot`` of a list of references."""
        w = self.elements.get(slot)
        if w is None:
            w = self.elements[slot] = writer((*self.path[:-1], (self.path[-1][0], slot, True)))
        return w


def _links(row: dict[str, Any]) -> list[_Link]:
    links = row.get("links")
    if links is None:
        links = row["links"] = []
        for a, steps, b, literal in row["refs"]:
            path = tuple(tuple(step) for step in steps)
            link = _Link(a, b, literal, path, writer(path), bool(steps[-1][2]))
            if literal:
                link.literal_entry = orjson.dumps([[writer_number(link.write), literal, 0]])
            links.append(link)
    return links


def _walk(group: GroupLike, chain: tuple[Any, ...], path: tuple[str, ...]
          ) -> Iterator[tuple[SegmentLike, tuple[Any, ...], tuple[str, ...]]]:
    """Segments in message order with their enclosing groups and those groups' names."""
    for item in group.items:
        if hasattr(item, "items"):
            yield from _walk(item, (*chain, item), (*path, item.name))
        else:
            yield item, chain, path


class _Rows:
    """Message-table rows indexed by (group path, segment), with fallbacks by segment.

    The IG writes group paths of the newest structures; a message grouped by an older one
    (v2.5.1 has ORC directly in ORDER_OBSERVATION, not in COMMON_ORDER) matches a row by the
    row's path without the groups its structure lacks (``present``). A row whose path is
    complete wins over one that matches only that way.
    """

    def __init__(self, rows: list[dict[str, Any]], present: frozenset[str] | None) -> None:
        self.exact: dict[tuple[tuple[str, ...], str], list[dict[str, Any]]] = {}
        self.memo: dict[tuple[tuple[str, ...], str], list[dict[str, Any]]] = {}
        self.by_seg: dict[str, list[dict[str, Any]]] = {}
        reduced: dict[tuple[tuple[str, ...], str], list[dict[str, Any]]] = {}
        for row in rows:
            groups = tuple(row["groups"])
            kept = groups if present is None else tuple(g for g in groups if g in present)
            into = self.exact if kept == groups else reduced
            into.setdefault((kept, row["seg"]), []).append(row)
        for key, rs in reduced.items():
            self.exact.setdefault(key, rs)
        self.known_groups = {g for groups, _ in self.exact for g in groups}
        for (groups, seg), rs in self.exact.items():
            self.by_seg.setdefault(seg, [])
            if not self.by_seg[seg] or len(groups) < len(self.by_seg[seg][0]["groups"]):
                self.by_seg[seg] = rs

    def find_cached(self, path: tuple[str, ...], seg: str) -> list[dict[str, Any]]:
        """:meth:`find`, remembered, restricted to emitted resource types."""
        key = (path, seg)
        hit = self.memo.get(key)
        if hit is None:
            hit = self.memo[key] = [row for row in self.find(path, seg) if row["type"] in _emitted()]
        return hit

    def find(self, path: tuple[str, ...], seg: str) -> list[dict[str, Any]]:
        rows = self.exact.get((path, seg))
        if rows:
            return rows
        for (groups, s), rs in self.exact.items():
            if s == seg and groups and path[-len(groups):] == groups:
                return rs
        if path:
            for (groups, s), rs in self.exact.items():
                if s == seg and groups and groups[-1] == path[-1]:
                    return rs
        if path and path[-1] in self.known_groups:
            return []  # the table knows this group and does not map the segment there
        return self.by_seg.get(seg, [])


@cache
def _rows_for(structure: str, family: str) -> _Rows | None:
    maps = message_maps()
    name = config()["message_aliases"].get(structure, structure)
    rows = maps.get(name)
    if rows is None:
        return None
    groups = structure_groups()[family].get(structure)
    return _Rows(rows, frozenset(groups) if groups is not None else None)


def _scope(chain: tuple[Any, ...], root: GroupLike) -> Any:
    for g in reversed(chain):
        if getattr(g, "repeats", False):
            return g
    return root


@cache
def _emitted() -> frozenset[str]:
    """The resource types the mapper emits (``config.json`` → ``emit``)."""
    return frozenset(config()["emit"])


def _flatten(group: GroupLike, chain: tuple[Any, ...], segs: list[SegmentLike], chains: list[tuple[Any, ...]],
             sig: list[Any]) -> None:
    """Segments in message order with their enclosing groups, and the grouping's signature
    (group names, whether they repeat, segment ids, group ends)."""
    for item in group.items:
        if hasattr(item, "items"):
            sig.append(item.name)
            sig.append(item.repeats)
            _flatten(item, (*chain, item), segs, chains, sig)
            sig.append(None)
        else:
            segs.append(item)
            chains.append(chain)
            sig.append(item.id)


def _rooted(links_key: tuple[Any, ...], roots: list[Any], number: dict[int, int] | None = None,
            targets: list[Any] | None = None) -> tuple[tuple[Any, ...], list[Any]]:
    """A shape key's links and the targets with merged resources as one target (numbered after
    ``targets`` and ``number``, by identity, when given: the parts of a merged resource share them)."""
    if targets is None:
        targets = []
    if number is None:
        number = {}  # by identity: instances are never compared by value
    renumber = []
    for r in roots:
        k = number.get(id(r))
        if k is None:
            k = number[id(r)] = len(targets)
            targets.append(r)
        renumber.append(k)
    done = (id(links_key), *renumber)
    hit = _ROOTED.get(done)
    if hit is not None:
        return hit[1], targets
    items = []
    for item in links_key:
        if item is not None and item[0] == LINK:
            item = (item[0], item[1], renumber[item[2]], item[3])
        elif item is not None and len(item) == 3:  # a fallback reference
            item = (item[0], renumber[item[1]], item[2])
        items.append(item)
    if len(_ROOTED) >= _PLAN_LIMIT:
        _ROOTED.clear()
    rooted = _ROOTED[done] = (links_key, tuple(items))
    return rooted[1], targets


_ROOTED: dict[tuple[int, ...], tuple[tuple[Any, ...], tuple[Any, ...]]] = {}
"""Links key identity and renumbering → the links key (kept alive, so no other object takes its
identity while the entry exists) and the renumbered one, the same object every time."""


@dataclass(eq=False)
class _Plan:
    """What the message tables decided for one message shape, by position: the resources
    (key, type, creating segment), the segment maps applied (segment, map, resource, list
    offset); per resource its links (``LINK`` with a writer, or ``ENTRY`` with a literal's
    write; target), fallback references, patient (-1: none), the resources it refers to
    and those links as part of its shape key."""

    instances: list[tuple[str, str, int]]
    steps: list[tuple[int, str, int, int]]
    links: list[list[tuple[int, Any, int]]]
    fallbacks: list[tuple[Any, Any]]
    patients: list[int]
    targets: list[list[int]]
    keys: list[tuple[Any, ...]]
    orders: list[tuple[int, tuple[int, ...]]]
    """Per distinct run of enclosing groups carrying order numbers: a creating segment's position
    in it and the depths (innermost first) of those groups."""
    order_of: list[int]
    """Per resource, its entry in ``orders``."""
    follow: Callable[..., tuple[list[_Instance], list[_Instance]]] | None = None
    """``follow(segs, chains, ctx, others)``: the instances with their logs written and their
    links, fallbacks, targets and keys set, and in id order (:func:`_follow_function`)."""


@dataclass(eq=False)
class _ShapePlans:
    """The rows whose conditions a grouping's plan depends on, and the plan per outcome."""

    outcomes: OutcomesFunction
    """Which of the rows with a condition hold, per segment position (:func:`outcomes_of_rows`)."""
    plans: dict[tuple[tuple[bool, ...], ...], _Plan]


def _follow_function(plan: _Plan, seg_ids: list[str]
                     ) -> Callable[..., tuple[list[_Instance], list[_Instance]]]:
    """The plan as one generated function of the message's segments: create the resources,
    apply the segment maps (their generated functions called directly), then give every
    resource its links, fallback references, targets, referrers, Patient and keys, all by
    constant positions. Returns the resources in message order and in the order ids are made."""
    scope: dict[str, Any] = {"Instance": _Instance, "order_number": _order_number}
    lines = ["def follow(segs, chains, ctx, others):"]
    for m, (i, depths) in enumerate(plan.orders):
        lines.append(f"    o{m} = order_number(chains[{i}], {depths!r})" if depths else f"    o{m} = ''")
    for k, (key, rtype, i) in enumerate(plan.instances):
        lines += [f"    i{k} = Instance({key!r}, {rtype!r}, segs[{i}], chains[{i}])", f"    i{k}.order = o{plan.order_of[k]}"]
    for n, (i, mapname, k, base) in enumerate(plan.steps):
        fn = segment_function(mapname, seg_ids[i])
        if fn is None:
            lines.append(f"    ctx.notes.append({f'no segment map {mapname}'!r})")
        else:
            scope[f"S{n}"] = fn
            lines.append(f"    S{n}(segs[{i}], i{k}.log, ctx, others, {base})")
    for k, (links, (pf, ef), p, targets, key) in enumerate(
            zip(plan.links, plan.fallbacks, plan.patients, plan.targets, plan.keys, strict=True)):
        if links:
            items = []
            for j, (kind, what, t) in enumerate(links):
                scope[f"W{k}_{j}"] = what
                items.append(f"({kind}, W{k}_{j}, {f'i{t}' if t >= 0 else 'None'})")
            lines.append(f"    i{k}.links = [{', '.join(items)}]")
        fallbacks = [f"({f[0]!r}, i{f[1]})" if f else "None" for f in (pf, ef)]
        if pf or ef:
            lines.append(f"    i{k}.fallbacks = ({', '.join(fallbacks)})")
        if p >= 0:
            lines.append(f"    i{k}.patient = i{p}")
        scope[f"K{k}"] = key
        lines += [f"    i{k}.targets = [{', '.join(f'i{t}' for t in targets)}]",
                  f"    i{k}.links_key = K{k}"]
    referrers: dict[int, list[int]] = {}
    for k, targets in enumerate(plan.targets):
        for t in targets:
            referrers.setdefault(t, []).append(k)
    lines += [f"    i{t}.referrers = {tuple(ks)!r}" for t, ks in referrers.items()]
    types = [rtype for _, rtype, _ in plan.instances]  # ids: Patients first (the patient token reads theirs)
    ordered = sorted(range(len(types)), key=lambda k: types[k] != "Patient")
    lines.append(f"    return [{', '.join(f'i{k}' for k in range(len(types)))}], [{', '.join(f'i{k}' for k in ordered)}]")
    exec("\n".join(lines), scope)  # the source is built above from the plan only
    return scope["follow"]


_PLANS: dict[tuple[Any, ...], _ShapePlans] = {}
_PLAN_LIMIT = 10_000


class _Mapper:
    def __init__(self, msg: MessageLike, root: GroupLike, structure: str, family: str,
                 default_tz: str | None) -> None:
        self.msg = msg
        self.root = root
        self.structure = structure
        self.family = family
        self.emit = _emitted()
        self.instances: list[_Instance] = []
        self.ordered: list[_Instance] = []
        """The instances in the order their ids are made."""
        self.by_scope: dict[tuple[str, int], _Instance] = {}
        self.refs: list[tuple[_Instance, dict[str, Any]]] = []
        self.first_seg: dict[str, SegmentLike] = {}
        self.by_key: dict[str, list[_Instance]] = {}
        self.found: dict[tuple[str, int], _Instance | None] = {}
        self.merged = False
        for s in reversed(msg.segments):
            self.first_seg[s.id] = s
        msh7 = msg.msh.get(7)
        d = msg.msh.delimiters
        tz = values.tz_of(msh7) or default_tz
        dk = d.field + d.component + d.repetition + d.escape + d.subcomponent + d.truncation
        self.ctx = Context(tz, self.emit, dk, memos=memo_table(dk, tz))

    def run(self, rows: _Rows) -> None:
        """Apply the segment maps, links and fallback references.

        Which rows apply, which resource each fills, what refers to what: that depends only
        on the grouping (group names, instances, segment ids) and on the rows' conditions,
        so it is decided once per such shape (:class:`_Plan`) and followed by every later
        message of that shape.
        """
        flat = getattr(self.root, "flat", None)
        if flat is not None:  # the grouping's own walk and key (the same grouping, the same key)
            segs, chains, grouping = flat
            key: tuple[Any, ...] = (self.structure, self.family, grouping)
        else:
            segs, chains = [], []
            sig: list[Any] = [self.structure, self.family]  # the rows that apply differ by family
            _flatten(self.root, (), segs, chains, sig)
            key = tuple(sig)
        shaped = _PLANS.get(key)
        if shaped is None:
            if len(_PLANS) >= _PLAN_LIMIT:
                _PLANS.clear()
            shaped = _PLANS[key] = _ShapePlans(self._conditions(rows, segs), {})
        outcomes = shaped.outcomes(segs, self.first_seg.get)
        plan = shaped.plans.get(outcomes)
        if plan is None:
            plan = shaped.plans[outcomes] = self._decide(rows, segs)
        self._follow(plan, segs, chains)

    def _conditions(self, rows: _Rows, segs: list[SegmentLike]) -> OutcomesFunction:
        """The rows with a condition, by segment position: what else a plan depends on."""
        position = {id(seg): i for i, seg in enumerate(segs)}
        out = []
        for seg, _chain, path in _walk(self.root, (), ()):
            conditional = tuple(row for row in rows.find_cached(path, seg.id) if row["cond"] is not None)
            if conditional:
                out.append((position[id(seg)], conditional))
        return outcomes_of_rows(out, [seg.id for seg in segs])

    def _decide(self, rows: _Rows, segs: list[SegmentLike]) -> _Plan:
        """Work out the plan for this message's shape (the mapper's state is reset after)."""
        others = self.first_seg.get
        position = {id(seg): i for i, seg in enumerate(segs)}
        steps: list[tuple[int, str, int, int]] = []
        for seg, chain, path in _walk(self.root, (), ()):
            for row in rows.find_cached(path, seg.id):
                if row["cond"] is not None and not row_condition(row, seg.id)(seg, others):
                    continue
                found = self._existing(row, chain) if row["adds"] else self._instance(row, seg, chain)
                if found is None:
                    continue
                inst, rep_base = found
                steps.append((position[id(seg)], row["map"], self.instances.index(inst),
                              inst.base_of(row["map"]) + rep_base))
                if row["refs"]:
                    self.refs.append((inst, row))
        number = {id(inst): i for i, inst in enumerate(self.instances)}
        n = len(self.instances)
        links: list[list[tuple[int, Any, int]]] = [[] for _ in self.instances]
        for inst, row in self.refs:
            for link in _links(row):
                source = self._find(link.source, inst)
                if source is None:
                    continue
                if link.literal:
                    links[number[id(source)]].append((ENTRY, link.literal_entry, -1))
                    continue
                target = self._find(link.target, inst)
                if target is None or target is source:
                    continue
                w = link.element(n + number[id(target)]) if link.listed else link.write  # listed: one element per target
                links[number[id(source)]].append((LINK, w, number[id(target)]))
        cfg = config()
        fallbacks: list[tuple[Any, Any]] = []
        patients: list[int] = []
        targets: list[list[int]] = []
        keys: list[tuple[Any, ...]] = []
        for i, inst in enumerate(self.instances):
            pref = cfg["patient_reference"].get(inst.type)
            patient = self.patient(inst)
            p = number[id(patient)] if patient is not None and patient is not inst else -1
            eref = cfg["encounter_reference"].get(inst.type)
            enc = self._find("Encounter[1]", inst) if eref else None
            fallback = ((pref, p) if pref and p >= 0 else None, (eref, number[id(enc)]) if enc is not None else None)
            fallbacks.append(fallback)
            patients.append(p)
            distinct: list[int] = []
            key: list[Any] = []
            for kind, what, t in links[i]:
                if kind == LINK:
                    if t not in distinct:
                        distinct.append(t)
                    key.append((kind, what, distinct.index(t), self.instances[t].type))
                else:
                    key.append((kind, what))
            for f in fallback:
                if f is None:
                    key.append(None)
                else:
                    if f[1] not in distinct:
                        distinct.append(f[1])
                    key.append((f[0], distinct.index(f[1]), self.instances[f[1]].type))
            targets.append(distinct)
            keys.append(tuple(key))
        depths = [_carrier_depths(inst.chain) for inst in self.instances]
        orders: dict[tuple[int, ...], int] = {}  # the groups' identities → entry
        order_of = [orders.setdefault(tuple(id(inst.chain[d]) for d in ds), len(orders))
                    for inst, ds in zip(self.instances, depths, strict=True)]
        first = {m: k for k, m in reversed(list(enumerate(order_of)))}
        plan = _Plan([(inst.key, inst.type, position[id(inst.creator)]) for inst in self.instances],
                     steps, links, fallbacks, patients, targets, keys,
                     [(position[id(self.instances[first[m]].creator)], depths[first[m]]) for m in range(len(orders))],
                     order_of)
        self.instances, self.refs, self.by_scope, self.by_key, self.found = [], [], {}, {}, {}
        return plan

    def _follow(self, plan: _Plan, segs: list[SegmentLike], chains: list[tuple[Any, ...]]) -> None:
        if plan.follow is None:
            plan.follow = _follow_function(plan, [seg.id for seg in segs])
        self.instances, self.ordered = plan.follow(segs, chains, self.ctx, self.first_seg.get)

    def _instance(self, row: dict[str, Any], seg: SegmentLike, chain: tuple[Any, ...]) -> tuple[_Instance, int]:
        """The instance this row fills, and the list offset for its repeated elements.

        Same scope, other segment (ORC then OBR): fill the same resource. An enclosing
        scope already holding the key from another segment (TXA then each OBX of an
        MDM, SCH then each AIP of an SIU): add to that resource, each segment in its
        own list elements. Otherwise: a new resource for this scope.
        """
        scope = _scope(chain, self.root)
        k = (row["key"], id(scope))
        inst = self.by_scope.get(k)
        if inst is not None and (inst.creator.id != seg.id or inst.creator is seg):
            return inst, 0
        for outer in reversed((self.root, *chain)):
            if outer is scope:
                continue
            found = self.by_scope.get((row["key"], id(outer)))
            if found is not None and found.creator.id != seg.id and (outer is self.root or id(outer) in found.chain_ids):
                found.merges += 1
                return found, found.merges * 1000
        inst = _Instance(row["key"], row["type"], seg, chain)
        inst.chain_ids = frozenset(map(id, chain))
        self.by_scope[k] = inst
        self.by_key.setdefault(inst.key, []).append(inst)
        self.instances.append(inst)
        return inst, 0

    def _existing(self, row: dict[str, Any], chain: tuple[Any, ...]) -> tuple[_Instance, int] | None:
        """The resource a row naming an element (``Observation[2].note`` from NTE) adds to: the
        nearest of its key around the segment, never a new one; each such segment in its own
        list elements (two NTE, two notes)."""
        for outer in reversed((self.root, *chain)):
            inst = self.by_scope.get((row["key"], id(outer)))
            if inst is not None:
                inst.merges += 1
                return inst, inst.merges * 1000
        return None

    def _find(self, key: str, near: _Instance) -> _Instance | None:
        """The instance of ``key`` nearest to ``near`` (remembered: called only once all
        instances exist)."""
        k = (key, id(near))
        try:
            return self.found[k]
        except KeyError:
            found = self.found[k] = self._search(key, near)
            return found

    def _search(self, key: str, near: _Instance) -> _Instance | None:
        if key == near.key:
            return near
        candidates = self.by_key.get(key)
        if not candidates:
            return None
        for g in reversed(near.chain):
            inst = self.by_scope.get((key, id(g)))
            if inst is not None:
                return inst
        inst = self.by_scope.get((key, id(self.root)))
        if inst is not None:
            return inst
        for g in reversed(near.chain):  # a sibling scope inside the same enclosing group
            gid = id(g)
            for inst in reversed(candidates):
                if gid in inst.chain_ids:
                    return inst
        if not near.chain and len(candidates) == 1:
            return candidates[0]  # a message-level resource (SIU's Appointment) and the only Patient
        return None

    def patient(self, near: _Instance) -> _Instance | None:
        return self._find("Patient[1]", near)

    def _shape(self, inst: _Instance, rooted: bool = False) -> None:
        """Find (or make) the resource's shape; without one, build its tree. References are
        numbered by the resource they end at (two merged resources are one target: ``rooted``,
        when some of its targets were merged into another)."""
        inst.shaped = True
        links_key = inst.links_key
        if rooted:
            links_key, inst.targets = _rooted(links_key, [t.root() for t in inst.targets])
        inst.shape = shapes.shape_for(inst.type, inst.log, links_key, inst.links, inst.fallbacks, inst.targets,
                                      self.emit)
        if inst.shape is None:
            inst.node = shapes.materialize(inst.log, inst.links, inst.fallbacks, False)

    def keys_of(self, inst: _Instance) -> tuple[str, str]:
        """The identifier and name keys id recipes read."""
        if not inst.shaped:
            self._shape(inst)
        shape = inst.shape
        if shape is not None:
            return shapes.id_key(shape.identifier, inst.log.values), shapes.id_key(shape.name, inst.log.values)
        parts = shapes.keyed_parts(inst.node or {})
        return identifier_key(parts, inst.type), name_key(parts)

    def assign_ids(self) -> None:
        standard = self.ctx.delimiters[1:5] == STANDARD
        for inst in self.ordered:
            inst.id = _id_function(inst.type)(inst, self, standard)
        seen: dict[tuple[str, str], _Instance] = {}
        merged: dict[int, list[_Instance]] = {}  # by identity of the first: resources with one id
        for inst in self.instances:
            other = seen.get((inst.type, inst.id or ""))
            if other is None:
                seen[(inst.type, inst.id or "")] = inst
                continue
            inst.alias = other
            merged.setdefault(id(other), [other]).append(inst)
        rooted_at: set[int] = set()  # the positions of resources referring to a merged one
        if merged:
            self.merged = True
            for parts in merged.values():
                self._merge(parts)
            rooted_at = {k for parts in merged.values() for alias in parts[1:] for k in alias.referrers}
        for k, inst in enumerate(self.instances):
            rooted = k in rooted_at and id(inst) not in merged  # a first part refers to the merged whole
            if rooted and inst.shape is not None:
                inst.shape, inst.shaped = None, False  # shaped again with references to merged resources
            if not inst.shaped:
                self._shape(inst, rooted)

    def _merge(self, parts: list[_Instance]) -> None:
        """Merge resources with one id into the first: by a merged shape when every part has a
        plain log, else as trees (finished the long way)."""
        for each in parts:
            each.shape, each.shaped = None, True
        first = parts[0]
        logs = [shapes.key_of(each.type, each.log, ()) if not each.log.groups else None for each in parts]
        if None not in logs:
            number: dict[int, int] = {}
            targets: list[_Instance] = []
            keyed = tuple((_rooted(each.links_key, [t.root() for t in each.targets], number, targets)[0], log[2])
                          for each, log in zip(parts, logs, strict=True))  # type: ignore[index]
            shape = shapes.merged_shape((first.type, None, keyed), first.type,
                                        [(each.log, each.links, each.fallbacks) for each in parts], targets, self.emit)
            if shape is not None:
                first.shape, first.targets = shape, targets
                first.log.values = [v for each in parts for v in each.log.values]  # numbered as the shape numbers them
                return
        for each in parts:
            if each.node is None:
                each.node = shapes.materialize(each.log, each.links, each.fallbacks, False)
        for each in parts[1:]:
            merge(first.node, each.node)  # type: ignore[arg-type]

    def resolve(self, ref: Ref) -> dict[str, Any] | None:
        if isinstance(ref.target, str):
            return {"reference": ref.target}
        inst = ref.target.root()
        if inst.type not in self.emit:
            return None
        return {"reference": f"{inst.type}/{inst.id}"}

    def resources(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for inst in self.instances:
            if inst.alias is not None:
                continue
            shape = inst.shape
            if shape is not None:
                missing: list[str] | tuple[str, ...] = shape.missing
                if shape.fill is not None:
                    out.append(shape.fill(inst.id or "", inst.log.values, inst.targets))
                    continue
            else:
                body = finalize(inst.node, self.resolve) or {}
                missing = shapes.finish(body, inst.type)
                if not missing:
                    out.append({"resourceType": inst.type, "id": inst.id, **body})
                    continue
            self.ctx.notes.append(f"{inst.type} from {inst.creator.id}[{inst.creator.seq}] dropped: no {list(missing)}")
        out.extend(self.ctx.resources.values())
        return out


def forget() -> None:
    """Drop every field memo, conversion memo, plan and template: the mapper then works as on
    its first message (the reference its fast paths are tested against; also frees their memory)."""
    for table in MEMO_TABLES.values():
        table.clear()
    CONVERSIONS.clear()
    shapes.forget()
    _PLANS.clear()
    _ROOTED.clear()
    _id_function.cache_clear()  # its id part memos


_NAMED_FIELD = re.compile(r"^[A-Z][A-Z0-9]{2}-\d+(?:\.\d+)?$")
IdFunction = Callable[[_Instance, "_Mapper", bool], str]


@cache
def _id_function(rtype: str) -> IdFunction:
    """The id of a resource of type ``rtype`` from its recipes (``config.json`` → ``ids``), as one
    generated function: the first alternative whose tokens are all valued gives the id.

    Tokens: ``seg:3.1`` (that value of the creating segment, named, so an empty one still
    counts), ``OBR-4.1`` (that value of the group's OBR, whichever segment created the resource;
    named too), ``order`` (order number of the enclosing group), ``patient`` (the Patient's id),
    ``raw`` (the creating segment as sent), ``identifier``/``name`` (keys of the resource's
    finished identifier or name).
    """
    recipes = config()["ids"]
    scope: dict[str, Any] = {"stable_id": stable_id, "first_value": _first_value, "PLAIN": PLAIN,
                             "digest": stable_digest, "SEP": ID_SEPARATOR, "ENVELOPE": ENVELOPE_SEGMENTS,
                             "named_value": _named_value, "ID_PARTS": ID_PARTS}
    lines = ["def make_id(inst, mapper, standard):", "    creator = inst.creator", "    keys = None",
             "    fields = creator.fields", "    n = len(fields)"]
    for alt in recipes.get(rtype, recipes["_default"]):
        parts: list[str] = []
        lines.append("    while True:")
        runs: list[list[str]] = []  # the creating segment's fields next to each other are one part
        for tok in alt:
            if tok.startswith("seg:") and runs and runs[-1][0].startswith("seg:"):
                runs[-1].append(tok)
            else:
                runs.append([tok])
        for run in runs:
            tok = run[0]
            var = f"p{len(parts)}"
            if tok.startswith("seg:"):
                lines += _segment_part_lines(run, var, scope)
            elif _NAMED_FIELD.match(tok):
                seg_id, spec = tok.split("-")
                f, c = (int(x) for x in (spec.split(".") + ["1"])[:2])
                lines.append(f"        {var} = {tok + '='!r} + named_value(inst, mapper.root, {seg_id!r}, {f}, {c})")
            elif tok == "order":
                lines += [f"        {var} = inst.order", f"        if not {var}: break"]
            elif tok == "patient":
                lines += [f"        {var} = (inst.patient.id or '') if inst.patient is not None else ''",
                          f"        if not {var}: break"]
            elif tok == "raw":
                lines.append(f"        {var} = creator.raw")
            elif tok in ("identifier", "name"):
                lines += ["        if keys is None: keys = mapper.keys_of(inst)",
                          f"        {var} = keys[{0 if tok == 'identifier' else 1}]", f"        if not {var}: break"]
            else:
                raise ValueError(f"unknown id token {tok}")
            parts.append(var)
        lines.append(f"        return digest({rtype!r} {' '.join(f'+ SEP + {p}' for p in parts)})")
    lines.append(f"    return stable_id({rtype!r}, creator.raw)")
    exec("\n".join(lines), scope)  # the source is built above from the id recipes only
    return scope["make_id"]


ID_PARTS = 4096
"""Field texts an id recipe's run of ``seg:`` tokens remembers its part for before it starts over."""


def _segment_part_lines(tokens: list[str], var: str, scope: dict[str, Any]) -> list[str]:
    """Source lines setting ``var`` to the id text of a run of ``seg:`` tokens (``seg:1=1``,
    ``seg:3.1=718-7``, ``seg:4=`` joined by the id separator). The part depends only on the
    fields' texts, the delimiters and, for MSH-1/MSH-2-numbered fields, the segment id, and
    those texts (set ids, codes, sub-ids) repeat from message to message: it is remembered
    by them."""
    specs = []
    for tok in tokens:
        spec = tok[4:].split(".")
        specs.append((tok, int(spec[0]), int(spec[1]) if len(spec) > 1 else 1))
    memo = f"M{len(scope)}"
    scope[memo] = {}
    texts = ["mapper.ctx.delimiters", *(f"fields[{f}] if n > {f} else ''" for f in dict.fromkeys(f for _, f, _ in specs))]
    if any(f <= 2 for _, f, _ in specs):
        texts.append("creator.id")
    lines = [f"        key = ({', '.join(texts)},)",
             f"        {var} = {memo}.get(key)",
             f"        if {var} is None:"]
    made: list[str] = []
    for tok, f, c in specs:
        q = f"q{len(made)}"
        if c == 1 and f > 2:  # _first_value(), inlined (MSH-1/MSH-2 are not split as other fields)
            # a plain text before the first component separator is the first component
            lines += [f"            {q} = fields[{f}] if n > {f} else ''",
                      f"            if {q} and not (standard and PLAIN({q})):",
                      f"                first = {q}.partition('^')[0] if standard else ''",
                      f"                {q} = first if first and PLAIN(first) else creator.get({f}, 1, 1)"]
        elif c == 1:  # MSH-1 and MSH-2 are taken as sent
            lines += [f"            {q} = fields[{f}] if n > {f} else ''",
                      f"            if {q} and (creator.id in ENVELOPE or not (standard and PLAIN({q}))): "
                      f"{q} = creator.get({f}, 1, 1)"]
        else:
            lines.append(f"            {q} = first_value(creator, {f}, {c}, standard)")
        made.append(f"{tok + '='!r} + {q}")
    lines += [f"            {var} = {' + SEP + '.join(made)}",
              f"            if len({memo}) >= ID_PARTS: {memo}.clear()",
              f"            {memo}[key] = {var}"]
    return lines


@cache
def _order_specs() -> tuple[frozenset[str], tuple[tuple[str, str, int], ...]]:
    """The segments that carry order numbers, and ``(label, segment, field)`` in priority order
    (``config.json`` → ``order_numbers``: ORC-3 and OBR-3 are both ``filler``)."""
    specs = tuple((label, *spec.split("-"))
                  for label, fields in config()["order_numbers"].items() if not label.startswith("_")
                  for spec in fields)
    return frozenset(s for _, s, _ in specs), tuple((label, s, int(f)) for label, s, f in specs)


def _order_number_in(group: Any) -> str:
    carriers, specs = _order_specs()
    segs = [item for item in _segments_in(group) if item.id in carriers]
    for label, seg_id, fno in specs:
        for item in segs:
            if item.id == seg_id:
                v = item.get(fno, 1, 1) + "|" + item.get(fno, 1, 2)
                if v.strip("|"):
                    return f"{label}:{v}"
    return ""


def _order_number(chain: tuple[Any, ...], depths: tuple[int, ...]) -> str:
    """The order number of the innermost group at ``depths`` in ``chain`` that has one."""
    for d in depths:
        found = _order_number_in(chain[d])
        if found:
            return found
    return ""


def _named_value(inst: _Instance, root: Any, seg_id: str, f: int, c: int) -> str:
    """``SEG-f.c`` of the creating segment if it is a ``seg_id``, else of the first ``seg_id``
    of the resource's group (its innermost repeating group, with non-repeating subgroups):
    OBR-4 whether ORC or OBR created the DiagnosticReport."""
    creator = inst.creator
    if creator.id == seg_id:
        return creator.get(f, 1, c)
    scope = _scope(inst.chain, root)
    for item in _segments_in(scope):
        if item.id == seg_id:
            return item.get(f, 1, c)
    return ""


def _first_value(seg: SegmentLike, f: int, c: int, standard: bool) -> str:
    """``seg.get(f, 1, c)``; a field without delimiters, escapes or null is its own first
    component and is taken as it is."""
    fields = seg.fields
    v = fields[f] if len(fields) > f else ""
    if c == 1 and standard and (not v or PLAIN(v)) and not (f <= 2 and seg.id in ENVELOPE_SEGMENTS):
        return v
    return seg.get(f, 1, c)


def _carrier_depths(chain: tuple[Any, ...]) -> tuple[int, ...]:
    """The depths of the groups in ``chain`` that hold an order-number segment, innermost first."""
    carriers, _ = _order_specs()
    return tuple(d for d in reversed(range(len(chain)))
                 if any(item.id in carriers for item in _segments_in(chain[d])))


def _segments_in(group: Any) -> Iterator[SegmentLike]:
    """The group's own segments and those of its non-repeating subgroups: the same order
    whether ORC sits in ORDER_OBSERVATION (v2.5.1) or in its COMMON_ORDER group (v2.8)."""
    for item in group.items:
        if not hasattr(item, "items"):
            yield item
        elif not item.repeats:
            yield from _segments_in(item)


def _provenance(msg: MessageLike, targets: list[dict[str, Any]], tz: str | None) -> dict[str, Any]:
    """The Provenance of a mapped message; ``tz``: the message's own offset (MSH-7), else the default."""
    msh = msg.msh
    sender = " ".join(p for p in (msh.get(3), msh.get(4)) if p) or "unknown sender"
    control_id = msg.control_id
    msh7 = msh.get(7)
    recorded = values.dtm(msh7, "instant", tz)
    prov: dict[str, Any] = {
        "resourceType": "Provenance",
        "id": stable_id("Provenance", sender, control_id, msh7),
        "target": [{"reference": f"{r['resourceType']}/{r['id']}"} for r in targets],
        "recorded": recorded or "1970-01-01T00:00:00Z",
        "activity": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation", "code": "CREATE", "display": "create"}
            ]
        },
        "agent": [
            {
                "type": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                            "code": "author",
                        }
                    ]
                },
                "who": {"display": sender},
            }
        ],
        "entity": [
            {
                "role": "source",
                "what": {
                    "identifier": {"system": PROVENANCE_SOURCE_SYSTEM, "value": control_id},
                    "display": f"HL7 v2 {msh.get(9, 1, 1)}^{msh.get(9, 1, 2)} {control_id} from {sender}",
                },
            }
        ],
    }
    return prov


def is_mapped(structure: str, event: str) -> bool:
    cfg = config()
    return structure in cfg["mapped_structures"] and (event in cfg["mapped_events"] or not event)


def map_grouped(
    msg: MessageLike, root: GroupLike, structure: str, *, event: str = "", default_tz: str | None = "+00:00"
) -> MappingResult:
    """Map a message already grouped by its structure (see :func:`ingest.hl7v2.group_message`).

    ``default_tz`` is used for times sent without an offset when MSH-7 has none either.
    """
    family = root.family
    rows = _rows_for(structure, family)
    if rows is None or not is_mapped(structure, event):
        return MappingResult(structure, False, notes=[f"{event or structure} is not mapped"])
    m = _Mapper(msg, root, structure, family, default_tz)
    m.run(rows)
    m.assign_ids()
    resources = m.resources()
    patient = next((r for r in resources if r["resourceType"] == "Patient"), None)
    if resources:  # a Provenance must name at least one target
        resources.append(_provenance(msg, resources, m.ctx.default_tz))
    return MappingResult(structure, True, resources, patient["id"] if patient else None, m.ctx.notes)
