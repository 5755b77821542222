"""HL7 v2 → FHIR R4 in one call: parse (if needed), group by structure, map.

Mapping itself lives in :mod:`mapping.v2` and knows nothing of this parser; this
module is the glue that hands it a grouped message.
"""

from __future__ import annotations

from ingest.hl7v2.er7 import Message, parse_message
from ingest.hl7v2.inferred_types import with_inferred_types
from ingest.hl7v2.structure import group_message, structure_of
from mapping.v2 import MappingResult, map_grouped


def map_message(message: Message | str | bytes, *, default_tz: str | None = "+00:00",
                structure: str | None = None) -> MappingResult:
    """FHIR R4 resources (with a Provenance) for one HL7 v2 message.

    ``result.mapped`` is False for message types without a map; store the raw
    message and acknowledge it anyway. Value types the sender left out are inferred first
    (:mod:`ingest.hl7v2.inferred_types`), each with a warning among ``result.notes``.
    ``default_tz`` applies to times sent without an offset when MSH-7 carries none either;
    ``structure``: the message's structure, when the caller has read it already.
    """
    msg = message if isinstance(message, Message) else parse_message(message)
    msg, warnings = with_inferred_types(msg)
    structure = structure or structure_of(msg)
    root = group_message(msg, structure=structure)
    event = f"{msg.message_type}^{msg.trigger_event}"
    result = map_grouped(msg, root, structure, event=event, default_tz=default_tz)
    result.notes[:0] = warnings  # HL7Error warnings (severity W): the ACK carries them as ERR
    return result
