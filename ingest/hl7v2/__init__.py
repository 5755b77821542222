"""HL7 v2 (ER7) reading: parse, split batches, group by message structure, acknowledge.

Public API::

    parse_message(data: str | bytes) -> Message          # one message, raises HL7ParseError
    iter_messages(data: str | bytes) -> Iterator[Message] # file / batch, raises on first error
    read_batch(data: str | bytes) -> Batch                 # file / batch, one entry per message or error
    group_message(msg, strict=False) -> Group              # segments grouped by message structure
    build_ack(msg_or_raw, errors=(), mode=None) -> str     # ACK (AA/AE/AR or CA/CE/CR) with ERR segments
    map_message(msg_or_raw) -> MappingResult               # parse + group + map to FHIR R4 (mapping.v2)

See docs/hl7v2.md.
"""

from ingest.hl7v2.ack import AckCode, build_ack, sniff_header
from ingest.hl7v2.batch import Batch, BatchEntry, iter_messages, read_batch
from ingest.hl7v2.convert import map_message
from ingest.hl7v2.er7 import NULL, Delimiters, Message, Segment, parse_message
from ingest.hl7v2.errors import ErrorCode, HL7Error, HL7ParseError, HL7StructureError
from ingest.hl7v2.structure import Group, group_message, structure_of

__all__ = [
    "NULL",
    "AckCode",
    "Batch",
    "BatchEntry",
    "Delimiters",
    "ErrorCode",
    "Group",
    "HL7Error",
    "HL7ParseError",
    "HL7StructureError",
    "Message",
    "Segment",
    "build_ack",
    "group_message",
    "iter_messages",
    "map_message",
    "parse_message",
    "read_batch",
    "sniff_header",
    "structure_of",
]
