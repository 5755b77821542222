"""One generated function per segment map, derived from the compiled tables on first use.

The table interpreter spent most of a message's time on generic steps repeated for every
segment: a loop over the map's fields, building memo keys through closures, looking up
the condition inputs. The function generated for ``OBX[Observation]`` applied to an OBX
has all of that as constants: it reads each mapped field by number, skips it when empty,
builds the memo key from the raw fields the rules' conditions read, and appends the
remembered writes to the resource's write log (creating the remembered resources). A
plain value of a field whose texts stopped repeating goes to its generated primitive
conversion; only a field text seen for the first time otherwise goes through the rule
interpreter (:func:`field_rules.run_field`).

The tables stay the source: the code is built from :func:`field_rules.segment_plan` and its
memo keys are the ones the interpreter uses, so both share one memo.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from functools import cache
from operator import itemgetter
from typing import Any

from mapping.v2.engine import NULL, Context, SegmentLike, ref_value
from mapping.v2.field_rules import (
    ENTRY,
    ENVELOPE_SEGMENTS,
    PLAIN,
    STANDARD,
    STOPS,
    FieldPlan,
    MemoTable,
    SegmentMemo,
    WriteLog,
    compared_texts,
    cond_refs,
    condition_expression,
    direct_function,
    outcomes_function,
    plain_key,
    replay,
    replay_created,
    run_field,
    segment_plan,
    value_lines,
)

SegmentFunction = Callable[
    [SegmentLike, WriteLog, Context, Callable[[str], SegmentLike | None], int], None
]


@cache
def segment_function(mapname: str, seg_id: str) -> SegmentFunction | None:
    """The generated function applying ``mapname`` to a segment with id ``seg_id``.

    Before the fields, the whole segment is looked up in a segment memo (:func:`_segment_key`):
    an OBX whose coded fields, units, ranges and performers repeat one seen before, whatever
    its new result and time, replays that segment's steps (memo entries logged, new values
    converted) instead of one memo lookup per field. A segment is remembered only when every
    field took a memo entry or a primitive conversion (not the interpreter, not a masked
    field text looked up by itself)."""
    plan = segment_plan(mapname)
    if plan is None:
        return None
    scope: dict[str, Any] = {"NULL": NULL, "run_field": run_field, "ref_value": ref_value, "ENTRY": ENTRY,
                             "replay_created": replay_created, "replay": replay, "PLAIN": PLAIN,
                             "STANDARD": STANDARD, "direct_function": direct_function, "MISS": _MISS,
                             "DIRECT_KEYS": DIRECT_KEYS, "plain_key": plain_key, "remember": _remember_segment,
                             "CREATED": CREATED, "LINK": _linker(plan), "missed": _missed}
    masks = _maskable(plan, seg_id)
    lines = ["def apply(seg, log, ctx, others, rep_base):",
             "    fields = seg.fields",
             "    n = len(fields)",
             "    memos = ctx.memos",
             "    tz = ctx.default_tz",
             "    standard = ctx.delimiters[1:5] == STANDARD",
             f"    whole = memos[{next(_SEGMENT_NUMBERS)}]",
             "    if whole.keep and standard:",
             *[f"        {line}" for line in _segment_key(plan, seg_id, masks, scope)],
             "        hit = whole.get(skey)",
             "        if hit is not None:",
             "            whole.hits += 1",
             "            steps, n_values = hit",
             "            whole_log = not log",
             "            for what, arg in steps:",
             "                if what is None: log.extend(arg)",
             "                elif what is CREATED: replay_created(arg, log, ctx, rep_base)",
             "                else: what(fields[arg].strip(), log, rep_base, tz)",
             "            if whole_log and len(log.values) == n_values: log.replayed = (steps, len(log))",
             "            return",
             "    else:",
             "        skey = None",
             "    rec = []",
             "    if not whole.linked: LINK(memos, whole)"]
    for i, fp in enumerate(plan):
        scope[f"FP{i}"] = fp
        f = fp.field
        lines += [f"    raw = fields[{f}] if n > {f} else ''",
                  "    if raw == NULL: raw = ''"]
        inline_replay = ["elif hit.__class__ is bytes:",  # replay(), inlined
                  "    memo.hits += 1",
                  "    log.append((ENTRY, hit, rep_base))",
                  "    log.fresh = True",
                  "    rec.append(hit)",
                  "else:",
                  "    memo.hits += 1",
                  "    replay_created(hit, log, ctx, rep_base)",
                  "    rec.append((CREATED, hit))"]
        inputs: list[str] = []
        if fp.deps:
            # the field text and the other fields its conditions read; only when that is new,
            # which conditions hold (OBX-6 with a new OBX-5 finds the units converted before)
            scope[f"OUT{i}"] = outcomes_function(fp, seg_id)
            own_fields: list[int] = []
            for ref in fp.deps:
                if ref[0] != seg_id:
                    scope[f"REF{i}_{len(inputs)}"] = ref
                    inputs.append(f"ref_value(seg, others, REF{i}_{len(inputs)})")
                elif ref[1] != f and ref[1] not in own_fields:
                    own_fields.append(ref[1])
                    text = f"fields[{ref[1]}] if n > {ref[1]} else ''"
                    compared = compared_texts(fp, seg_id, ref[1])
                    if compared is None:
                        inputs.append(text)
                    else:  # OBX-6 keyed with a new OBX-5 result would never be found again
                        scope[f"C{i}_{ref[1]}"] = compared
                        inputs.append(f"plain_key({text}, C{i}_{ref[1]}, standard)")
            body = [f"memo = memos[{fp.number}]",
                    f"key = ({', '.join(['raw', *inputs])})" if inputs else "key = raw",
                    "hit = memo.get(key)",
                    "if hit is None:",
                    f"    holds = OUT{i}(seg, others)",
                    "    by_outcome = (raw, holds)",
                    "    hit = memo.get(by_outcome)",
                    f"    if hit is None: run_field(FP{i}, raw, by_outcome, holds, memo, seg, log, ctx, others, "
                    "rep_base); skey = None",
                    "    else: memo.alias(key, hit); replay(hit, log, ctx, rep_base); rec.append(hit if hit.__class__ "
                    "is bytes else (CREATED, hit))",
                    *inline_replay]
        else:
            body = [f"memo = memos[{fp.number}]",
                    "hit = memo.get(raw)",
                    f"if hit is None: run_field(FP{i}, raw, raw, None, memo, seg, log, ctx, others, rep_base); "
                    "skey = None",
                    *inline_replay]
        if not (f <= 2 and seg_id in ENVELOPE_SEGMENTS):
            # a field whose texts stopped repeating: a plain value goes straight to its conversion
            choose = [f"    direct = direct_function(FP{i}, None)"]
            if fp.deps:
                # which conditions hold follows from the other fields they read and, for a plain
                # value, from whether it is one of the texts they compare it with
                constants = compared_texts(fp, seg_id, f)
                scope[f"C{i}"] = constants
                scope[f"D{i}"] = {}
                own = "raw" if constants is None else f"raw if raw in C{i} else None"
                choose = [f"    dkey = ({', '.join([*inputs, own])},)",
                          f"    direct = D{i}.get(dkey, MISS)",
                          "    if direct is MISS:",
                          f"        if len(D{i}) >= DIRECT_KEYS: D{i}.clear()",
                          f"        direct = D{i}[dkey] = direct_function(FP{i}, OUT{i}(seg, others))"]
            if f in masks:  # the segment key left this text out: its memo entry is no step to replay
                choose.append("    if direct is None: skey = None")
            body = [f"memo = memos[{fp.number}]",
                    "if memo.keep or not standard or PLAIN(raw) is None: direct = None",
                    "else:",
                    *choose,
                    "if direct is not None:",
                    "    direct(raw.strip(), log, rep_base, tz)",
                    f"    rec.append((direct, {f}))",
                    "else:",
                    *[f"    {line}" for line in body[1:]]]
        if fp.when_empty:
            lines += [f"    {line}" for line in body]
        else:
            lines.append("    if raw:")
            lines += [f"        {line}" for line in body]
    lines += ["    if skey is not None: remember(whole, skey, rec, rep_base)",
              "    elif whole.keep: missed(whole)"]
    exec("\n".join(lines), scope)  # the source is built above from the compiled tables only
    return scope["apply"]


_SEGMENT_NUMBERS = itertools.count(-1, -1)
"""Memo table numbers of the segment memos (field plans count up from 0)."""
CREATED = object()
"""A replay step: a memo entry whose rules also created resources."""
MASKED = "\uffffmasked"
"""What a segment key holds for a plain text of a field whose texts stopped repeating."""
SEGMENT_MISSES = 2048
"""Segments a segment memo stores before it gives up if fewer than as many were found again."""


def _maskable(plan: tuple[FieldPlan, ...], seg_id: str) -> dict[int, frozenset[str]]:
    """The fields whose plain texts a segment key may leave out when their memo stopped
    remembering them, with the texts the conditions compare them with (kept in the key):
    for such a text, what every field of the map does depends only on that, never on the
    text itself (see :func:`field_rules.compared_texts`)."""
    out: dict[int, frozenset[str]] = {}
    for fp in plan:
        f = fp.field
        if f <= 2 and seg_id in ENVELOPE_SEGMENTS:
            continue
        found: set[str] = set()
        for other in plan:
            if other is fp or any(ref[0] == seg_id and ref[1] == f for ref in other.deps):
                compared = compared_texts(other, seg_id, f) if other.deps else frozenset()
                if compared is None:
                    break
                found |= compared
        else:
            out[f] = frozenset(found)
    return out


def _segment_key(plan: tuple[FieldPlan, ...], seg_id: str, masks: dict[int, frozenset[str]],
                 scope: dict[str, Any]) -> list[str]:
    """Source lines making ``skey``: the list offset, every field the map reads (a field in
    ``masks`` as :data:`MASKED` when its memo stopped remembering and its text is plain,
    unless the conditions name that text) and the other segments' values conditions read."""
    fields = sorted({fp.field for fp in plan} | {ref[1] for fp in plan for ref in fp.deps if ref[0] == seg_id})
    foreign = sorted({ref for fp in plan for ref in fp.deps if ref[0] != seg_id})
    numbers = {fp.field: fp.number for fp in plan}
    top = max(fields, default=0)
    scope["FETCH"] = itemgetter(*fields, 0)  # field 0 too: a tuple however few fields the map reads
    scope["PAD"] = [""] * (top + 1)
    lines = [f"texts = FETCH(fields if n > {top} else fields + PAD[n:])"]
    masked = [f for f in fields if f in masks]
    if masked:
        scope["STOPS"] = STOPS
        scope["MASKED"] = MASKED
        scope["MASKABLE"] = tuple((fields.index(f), masks[f]) for f in masked)
        # which fields to leave out changes only when a memo stops remembering: the positions
        # (and the texts kept) of those fields are worked out then, and only they are looked at
        lines += ["if whole.stops != STOPS[0]:",
                  "    whole.stops = STOPS[0]",
                  "    whole.masks = tuple([at for at, stopped in zip(MASKABLE, "
                  f"({', '.join(f'not memos[{numbers[f]}].keep' for f in masked)},)) if stopped])",
                  "if whole.masks:",
                  "    texts = list(texts)",
                  "    for k, kept in whole.masks:",
                  "        text = texts[k]",
                  "        if text not in kept and PLAIN(text) is not None: texts[k] = MASKED",
                  "    texts = tuple(texts)"]
    parts = ["rep_base", "texts"]
    for k, ref in enumerate(foreign):
        scope[f"SKREF{k}"] = ref
        parts.append(f"ref_value(seg, others, SKREF{k})")
    lines.append(f"skey = ({', '.join(parts)})")
    return lines


def _linker(plan: tuple[FieldPlan, ...]) -> Callable[[MemoTable, SegmentMemo], None]:
    """Tell the map's field memos their segment memo (its replays count as their hits)."""
    numbers = [fp.number for fp in plan]

    def link(memos: MemoTable, whole: SegmentMemo) -> None:
        for number in numbers:
            memos[number].segment = whole
        whole.linked = True
    return link


def _remember_segment(whole: SegmentMemo, skey: tuple[Any, ...], rec: list[Any], rep_base: int) -> None:
    """Store a segment's steps: runs of memo entries as ready log items, primitive conversions
    as (function, field), entries that created resources as (``CREATED``, entry); with them,
    :func:`_shared_values`."""
    if not _missed(whole):
        return
    steps: list[tuple[Any, Any]] = []
    items: list[tuple[int, bytes, int]] = []
    for step in rec:
        if step.__class__ is bytes:
            items.append((ENTRY, step, rep_base))
            continue
        if items:
            steps.append((None, tuple(items)))
            items = []
        steps.append(step)
    if items:
        steps.append((None, tuple(items)))
    whole.store(skey, (tuple(steps), _shared_values(steps, rep_base)))


def _missed(whole: SegmentMemo) -> bool:
    """Count a segment not found in its memo, whether or not it can be remembered (a PID whose
    identifier and names are new every time never can); False when the memo gives up then."""
    whole.misses += 1
    if whole.misses >= SEGMENT_MISSES and whole.hits < whole.misses:
        whole.keep = False
    return whole.keep


def _shared_values(steps: list[tuple[Any, Any]], rep_base: int) -> int:
    """How many values the steps log when every primitive conversion logs all its rules' values,
    if then every item they log is one the steps share (no created resources, no list offset);
    else -1. A replay into an empty log that logs as many values logged only shared items, so
    the steps stand for them (``WriteLog.replayed``)."""
    if rep_base:
        return -1
    n_values = 0
    for what, _ in steps:
        if what is CREATED:
            return -1
        if what is not None:
            n_values += what.width
    return n_values


_MISS = object()
DIRECT_KEYS = 4096
"""Condition inputs a field remembers its primitive conversion for before it starts over."""


ConditionFunction = Callable[[SegmentLike, Callable[[str], SegmentLike | None]], bool]


def row_condition(row: dict[str, Any], seg_id: str) -> ConditionFunction:
    """The message-table row's condition (``OBX → DocumentReference IF OBX-2 = "ED"``) for a
    segment with id ``seg_id``, as a generated function."""
    fns = row.setdefault("conditions", {})
    fn = fns.get(seg_id)
    if fn is None:
        refs = {ref: i for i, ref in enumerate(sorted(set(cond_refs(row["cond"]))))}
        scope: dict[str, Any] = {"ref_value": ref_value}
        test = condition_expression(row["cond"], refs, scope)
        lines = ["def holds(seg, others):", *value_lines(refs, seg_id, scope, test), f"    return {test}"]
        exec("\n".join(lines), scope)  # the source is built above from the compiled tables only
        fn = fns[seg_id] = scope["holds"]
    return fn


OutcomesFunction = Callable[[list[SegmentLike], Callable[[str], SegmentLike | None]], tuple[tuple[bool, ...], ...]]


def outcomes_of_rows(conditions: list[tuple[int, tuple[dict[str, Any], ...]]], seg_ids: list[str]
                     ) -> OutcomesFunction:
    """The conditions of a grouping's message-table rows, ``(segment position, rows)``, as one
    generated function of the message's segments telling, per position, which of them hold
    (each segment's values fetched once, no call per segment)."""
    scope: dict[str, Any] = {"ref_value": ref_value}
    lines = ["def outcomes(segs, others):", "    d = None"]
    for k, (i, rows) in enumerate(conditions):
        refs = {ref: j for j, ref in enumerate(sorted({ref for row in rows for ref in cond_refs(row["cond"])}))}
        tests = ", ".join(condition_expression(row["cond"], refs, scope) for row in rows)
        lines += [f"    seg = segs[{i}]", *value_lines(refs, seg_ids[i], scope, tests, f"P{k}_"),
                  f"    o{k} = ({tests},)"]
    lines.append(f"    return ({''.join(f'o{k}, ' for k in range(len(conditions)))})")
    exec("\n".join(lines), scope)  # the source is built above from the compiled tables only
    return scope["outcomes"]
