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

from collections.abc import Callable
from functools import cache
from typing import Any

from mapping.v2.engine import NULL, Context, SegmentLike, ref_value
from mapping.v2.field_rules import (
    ENTRY,
    ENVELOPE_SEGMENTS,
    PLAIN,
    STANDARD,
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


def apply_segment(mapname: str, seg: SegmentLike, log: WriteLog, ctx: Context,
                  others: Callable[[str], SegmentLike | None], rep_base: int = 0) -> None:
    """Apply a segment map (``OBX[Observation]``) to a resource under construction: add its
    writes to the resource's write log (``field_rules.LOG_KINDS``).

    ``rep_base`` separates the list elements of several segments feeding one resource
    (each AIP of an SIU adds its own Appointment.participant).
    """
    fn = segment_function(mapname, seg.id)
    if fn is None:
        ctx.notes.append(f"no segment map {mapname}")
        return
    fn(seg, log, ctx, others, rep_base)


@cache
def segment_function(mapname: str, seg_id: str) -> SegmentFunction | None:
    """The generated function applying ``mapname`` to a segment with id ``seg_id``."""
    plan = segment_plan(mapname)
    if plan is None:
        return None
    scope: dict[str, Any] = {"NULL": NULL, "run_field": run_field, "ref_value": ref_value, "ENTRY": ENTRY,
                             "replay_created": replay_created, "replay": replay, "PLAIN": PLAIN,
                             "STANDARD": STANDARD, "direct_function": direct_function, "MISS": _MISS,
                             "DIRECT_KEYS": DIRECT_KEYS, "plain_key": plain_key}
    lines = ["def apply(seg, log, ctx, others, rep_base):",
             "    fields = seg.fields",
             "    n = len(fields)",
             "    memos = ctx.memos",
             "    tz = ctx.default_tz",
             "    standard = ctx.delimiters[1:5] == STANDARD"]
    for i, fp in enumerate(plan):
        scope[f"FP{i}"] = fp
        f = fp.field
        lines += [f"    raw = fields[{f}] if n > {f} else ''",
                  "    if raw == NULL: raw = ''"]
        inline_replay = ["elif hit.__class__ is bytes:",  # replay(), inlined
                  "    memo.hits += 1",
                  "    log.append((ENTRY, hit, rep_base))",
                  "else:",
                  "    memo.hits += 1",
                  "    replay_created(hit, log, ctx, rep_base)"]
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
                    "rep_base)",
                    "    else: memo.alias(key, hit); replay(hit, log, ctx, rep_base)",
                    *inline_replay]
        else:
            body = [f"memo = memos[{fp.number}]",
                    "hit = memo.get(raw)",
                    f"if hit is None: run_field(FP{i}, raw, raw, None, memo, seg, log, ctx, others, rep_base)",
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
            body = [f"memo = memos[{fp.number}]",
                    "if memo.keep or not standard or PLAIN(raw) is None: direct = None",
                    "else:",
                    *choose,
                    "if direct is not None:",
                    "    direct(raw.strip(), log, rep_base, tz)",
                    "else:",
                    *[f"    {line}" for line in body[1:]]]
        if fp.when_empty:
            lines += [f"    {line}" for line in body]
        else:
            lines.append("    if raw:")
            lines += [f"        {line}" for line in body]
    exec("\n".join(lines), scope)  # the source is built above from the compiled tables only
    return scope["apply"]


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


RowsFunction = Callable[[SegmentLike, Callable[[str], SegmentLike | None]], tuple[bool, ...]]
_ROWS_CONDITIONS: dict[tuple[tuple[int, ...], str], RowsFunction] = {}


def rows_condition(rows: tuple[dict[str, Any], ...], seg_id: str) -> RowsFunction:
    """The conditions of several message-table rows for one segment, as one generated
    function (the values they read fetched once) telling which of them hold."""
    key = (tuple(id(row) for row in rows), seg_id)
    fn = _ROWS_CONDITIONS.get(key)
    if fn is None:
        refs = {ref: i for i, ref in enumerate(sorted({ref for row in rows for ref in cond_refs(row["cond"])}))}
        scope: dict[str, Any] = {"ref_value": ref_value, "ROWS": rows}  # keeps the rows (and their ids) alive
        tests = ", ".join(condition_expression(row["cond"], refs, scope) for row in rows)
        lines = ["def holds(seg, others):", *value_lines(refs, seg_id, scope, tests), f"    return ({tests},)"]
        exec("\n".join(lines), scope)  # the source is built above from the compiled tables only
        fn = _ROWS_CONDITIONS[key] = scope["holds"]
    return fn
