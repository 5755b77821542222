"""Property tests of the HL7 v2 path on damaged messages: reading a file or batch never raises, a
frame either parses or gets an HL7 error, and whatever parses maps to FHIR or says why in an HL7
error, never another exception (a mapper exception dead-letters the message: it must be a real bug);
what it maps, the store takes or refuses with a reason."""

from __future__ import annotations

import contextlib
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.hl7v2 import HL7Error, parse_message, read_batch
from ingest.hl7v2.processor import map_v2
from store.prepare import prepare

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "hl7v2"
SAMPLES = [p.read_bytes() for p in sorted(FIXTURES.glob("*.hl7"))]
# Bytes that matter to ER7: delimiters, escapes, segment ends, nulls, segment ids, digits, non-UTF-8.
PIECES = st.sampled_from([b"|", b"^", b"~", b"\\", b"&", b"\r", b"\n", b'""', b"MSH|", b"OBX|", b"\\X4\\", b"\\E",
                          b"1180591620717411303424", b"-", b".", b"0", b"\xff", b"\x00", b" ", b"NM", b"ST", b"CWE"])
edits = st.lists(st.tuples(st.floats(0, 1), st.integers(0, 12), st.lists(PIECES, max_size=3)), max_size=5)
# Whole field values: ER7 structure and escapes inside one field, where the mapper reads them.
field_texts = st.one_of(st.text(alphabet="ab1.-^&~\\XE\"", max_size=12),
                        st.sampled_from(["1180591620717411303424", "-" + "9" * 20]))  # beyond 64 bits
field_edits = st.lists(st.tuples(st.floats(0, 1), st.integers(1, 30), field_texts), max_size=4)


def damaged(sample: bytes, changes: list[tuple[float, int, list[bytes]]],
            fields: list[tuple[float, int, str]]) -> bytes:
    segments = sample.replace(b"\n", b"\r").split(b"\r")
    for where, number, text in fields:  # set field ``number`` of a segment
        k = int(where * (len(segments) - 1))
        parts = segments[k].split(b"|")
        if len(parts) > number and not segments[k].startswith(b"MSH"):
            parts[number] = text.encode()
            segments[k] = b"|".join(parts)
    data = bytearray(b"\r".join(segments))
    for where, cut, insert in changes:
        k = int(where * len(data))
        data[k:k + cut] = b"".join(insert)
    return bytes(data)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SAMPLES), edits, field_edits)
def test_a_damaged_message_is_read_or_refused_and_what_parses_maps_or_says_why(sample: bytes, changes: list,
                                                                                fields: list) -> None:
    data = damaged(sample, changes, fields)
    batch = read_batch(data)  # never raises: errors are entries
    for entry in batch.entries:
        assert (entry.message is None) != (entry.error is None)
        if entry.message is not None:
            try:
                result = map_v2(entry.message)
            except HL7Error:
                continue
            prepare(list(result.resources))  # what the store would refuse comes back as refusals
    with contextlib.suppress(HL7Error):  # a frame: parsed, or refused with an HL7 error
        parse_message(data)

