"""Value types a sender left out, inferred before mapping and answered with a warning.

OBX-2 says how to read OBX-5; HL7 requires it whenever OBX-5 is valued, and the v2-to-FHIR mapping
picks ``Observation.value[x]`` by it. Some senders leave it empty. Mapped as sent, such a result is an
Observation without a value: the number lost without a word. So a plain number is read as NM and
other plain text as ST (``data/inferred_types.json``), and the ACK says so in an ERR of severity W
(the message is still accepted: AA). A value with components, repetitions or escapes cannot be read
without its type: the warning says it was not mapped.

The message given is not changed: a new one is returned with the inferred types in its segments
(the inbox keeps the text as sent).
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

from ingest.hl7v2.er7 import NULL, Message, Segment
from ingest.hl7v2.errors import ErrorCode, HL7Error

_RULES = Path(__file__).with_name("data") / "inferred_types.json"
_NUMBER = re.compile(r"\s*[+-]?(?:\d+(?:\.\d*)?|\.\d+)\s*")


@cache
def _rules() -> dict[str, dict[str, Any]]:
    return {rule["segment"]: rule for rule in json.loads(_RULES.read_text())["rules"]}


def with_inferred_types(msg: Message) -> tuple[Message, list[HL7Error]]:
    """``msg`` with the value types its sender left out, and a warning for each (``msg`` itself when
    there is nothing to infer)."""
    rules = _rules()
    d = msg.delimiters
    structural = (d.component, d.repetition, d.escape, d.subcomponent)
    segments: list[Segment] | None = None
    warnings: list[HL7Error] = []
    for i, seg in enumerate(msg.segments):
        rule = rules.get(seg.id)
        if rule is None:
            continue
        type_field, value_field = rule["type_field"], rule["value_field"]
        value = seg[value_field]
        if seg.has(type_field) or not value or value == NULL:
            continue
        where = {"segment_id": seg.id, "segment_seq": seg.seq, "field": type_field}
        if any(c in value for c in structural):
            warnings.append(HL7Error(f"{seg.id}-{type_field} is empty and {seg.id}-{value_field} is not plain text: "
                                     "its value is not mapped", code=ErrorCode.REQUIRED_FIELD_MISSING,
                                     severity="W", rejects=False, **where))
            continue
        inferred = rule["number"] if _NUMBER.fullmatch(value) else rule["text"]
        fields = list(seg.fields)
        fields += [""] * (type_field + 1 - len(fields))
        fields[type_field] = inferred
        if segments is None:
            segments = list(msg.segments)
        segments[i] = Segment(d.field.join(fields), seg.seq, d)
        warnings.append(HL7Error(f"{seg.id}-{type_field} is empty: {seg.id}-{value_field} read as {inferred}",
                                 code=ErrorCode.REQUIRED_FIELD_MISSING, severity="W", rejects=False, **where))
    return (msg if segments is None else Message(msg.raw, d, segments)), warnings
