"""Batch files: FHS/BHS envelopes, bare concatenated messages, and broken envelopes."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest.hl7v2 import ErrorCode, HL7ParseError, iter_messages, read_batch

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "hl7v2"


def test_fhs_bhs_file_with_three_messages() -> None:
    batch = read_batch((FIXTURES / "pyhl7_batch_FHS_BHS_3msgs.hl7").read_bytes())
    assert batch.file_header is not None and batch.file_header.startswith("FHS")
    assert len(batch.batch_headers) == 2
    assert [m.control_id for m in batch.messages] == ["12334456778890", "12334456778891", "12334456778890"]
    assert batch.errors == []
    assert batch.warnings == []


def test_bare_concatenated_messages() -> None:
    msgs = list(iter_messages((FIXTURES / "pyhl7_batch_no_BHS_2msgs.hl7").read_text()))
    assert [m.control_id for m in msgs] == ["12334456778890", "12334456778891"]
    assert all(m.segments[-1].id == "PV1" for m in msgs)


def test_single_message_is_a_batch_of_one() -> None:
    msgs = list(iter_messages((FIXTURES / "adt_a01_admit.hl7").read_bytes()))
    assert len(msgs) == 1


def test_batch_without_msh_is_an_envelope_error_located_at_the_orphan_segment() -> None:
    batch = read_batch((FIXTURES / "pyhl7_MALFORMED_batch_missing_MSH.hl7").read_bytes())
    assert batch.messages == []
    [err] = batch.errors
    assert err.code == ErrorCode.SEGMENT_SEQUENCE_ERROR
    assert (err.segment_id, err.segment_seq) == ("EVN", 2)
    assert "expected MSH" in err.text
    assert any("BTS-1" in w for w in batch.warnings)
    with pytest.raises(HL7ParseError):
        list(iter_messages((FIXTURES / "pyhl7_MALFORMED_batch_missing_MSH.hl7").read_bytes()))


def test_nested_fhs_keeps_the_good_message_and_reports_the_rest() -> None:
    batch = read_batch((FIXTURES / "pyhl7_MALFORMED_file_nested_FHS.hl7").read_bytes())
    assert [m.control_id for m in batch.messages] == ["12334456778890"]
    [err] = batch.errors
    assert (err.segment_id, err.segment_seq) == ("FHS", 5)
    bad = [e for e in batch.entries if e.error is not None][0]
    assert bad.raw.split("\r")[1].startswith("PID")  # the orphaned segments travel with the error


def test_trailer_count_mismatch_is_a_warning() -> None:
    text = "BHS|^~\\&|A\rMSH|^~\\&|A|B|C|D|2020||ADT^A01|1|P|2.5\rPID|1\rBTS|3"
    batch = read_batch(text)
    assert len(batch.messages) == 1
    assert batch.warnings == ["BTS-1 batch message count says 3, found 1"]


@pytest.mark.parametrize("header", ["FHS|", "BHS|^"])
def test_an_unreadable_envelope_header_is_an_entry_error_and_the_messages_after_it_are_read(header: str) -> None:
    admit = (FIXTURES / "adt_a01_admit.hl7").read_text().strip("\r\n")
    batch = read_batch(f"{header}\r{admit}\r")
    assert [e.first_line for e in batch.entries] == [1, 2]
    assert isinstance(batch.entries[0].error, HL7ParseError)
    assert batch.entries[0].error.segment_id == header[:3]
    assert [m.control_id for m in batch.messages] == ["CTRL-A01-1"]
