"""ACK building: original and enhanced modes, MSA-2, ERR segments per version."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from ingest.hl7v2 import AckCode, HL7ParseError, build_ack, parse_message, read_batch
from ingest.hl7v2.ack import header_of
from ingest.hl7v2.errors import ErrorCode, HL7Error

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "hl7v2"
NOW = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def segments(ack: str) -> list[list[str]]:
    assert ack.endswith("\r")
    return [s.split("|") for s in ack.rstrip("\r").split("\r")]


def test_original_mode_accept_echoes_control_id_and_swaps_endpoints() -> None:
    msg = parse_message((FIXTURES / "adt_a01_admit.hl7").read_bytes())
    msh, msa = segments(build_ack(msg, now=NOW, mode="original"))
    assert msh[:7] == ["MSH", "^~\\&", "EHR", "GENHOSP", "ADT", "GENHOSP", "20260301090000+0000"]
    assert msh[8] == "ACK^A01^ACK"
    assert msh[9] == "ACKCTRL-A01-1"
    assert msh[11] == "2.5"
    assert msa == ["MSA", "AA", "CTRL-A01-1"]


def test_a_header_read_once_builds_the_same_ack_as_its_message() -> None:
    raw = (FIXTURES / "oru_r01_value_types_2patients.hl7").read_bytes()
    header = header_of(parse_message(raw))
    err = HL7Error("cannot store", code=ErrorCode.APPLICATION_INTERNAL_ERROR, rejects=False)
    for mode in ("original", "enhanced"):
        assert build_ack(header, errors=[err], mode=mode, now=NOW) == build_ack(raw, errors=[err], mode=mode, now=NOW)


def test_enhanced_mode_follows_msh15_16() -> None:
    msg = parse_message((FIXTURES / "oru_r01_value_types_2patients.hl7").read_bytes())  # MSH-15 = AL
    assert segments(build_ack(msg))[1][:3] == ["MSA", "CA", "CTRL-ALL-1"]
    err = HL7Error("cannot store", code=ErrorCode.APPLICATION_INTERNAL_ERROR, rejects=False)
    assert segments(build_ack(msg, errors=[err]))[1][1] == "CE"
    rej = HL7ParseError("bad", segment_id="OBX", segment_seq=4, field=5)
    assert segments(build_ack(msg, errors=[rej]))[1][1] == "CR"


def test_parse_failure_gives_ar_with_err_locating_segment_and_field() -> None:
    raw = "MSH|^~\\&|LAB|FAC|EHR|FAC|20260301||ORU^R01|X9|P|2.5.1\rPID|1\robx|bad"
    with pytest.raises(HL7ParseError) as info:
        parse_message(raw)
    msh, msa, err = segments(build_ack(raw, errors=[info.value], now=NOW))
    assert msa[:3] == ["MSA", "AR", "X9"]
    assert err[2] == "obx^3"
    assert err[3] == "100^Segment sequence error^HL70357"
    assert err[4] == "E"
    assert "invalid segment id" in err[8]


def test_missing_required_field_error_names_the_field() -> None:
    raw = "MSH|^~\\&|LAB|FAC|EHR|FAC|20260301||ORU^R01||P|2.6"
    with pytest.raises(HL7ParseError) as info:
        parse_message(raw)
    _, msa, err = segments(build_ack(raw, errors=[info.value], now=NOW))
    assert msa[1] == "AR"
    assert err[2] == "MSH^1^10"
    assert err[3].startswith("101^Required field missing")


def test_malformed_batch_entry_is_rejected_with_err() -> None:
    batch = read_batch((FIXTURES / "pyhl7_MALFORMED_batch_missing_MSH.hl7").read_bytes())
    entry = batch.entries[0]
    _, msa, err = segments(build_ack(entry.raw, errors=[entry.error] if entry.error else [], now=NOW))
    assert msa[1] == "AR"
    assert err[2] == "EVN^2"


def test_pre_25_messages_use_err1_eld() -> None:
    raw = "MSH|^~\\&|A|B|C|D|2020||ADT^A01|7|P|2.3\rPID|1"
    err = HL7Error("unknown patient", code=ErrorCode.UNKNOWN_KEY_IDENTIFIER, segment_id="PID", segment_seq=2,
                   field=3, rejects=False)
    _, msa, err_seg = segments(build_ack(raw, errors=[err], now=NOW))
    assert msa[1] == "AE"
    assert err_seg == ["ERR", "PID^2^3^204&Unknown key identifier&HL70357"]


def test_explicit_code_and_escaped_text() -> None:
    ack = build_ack("MSH|^~\\&|A|B|C|D|2020||ADT^A01|7|P|2.5", code=AckCode.AE, text="a|b^c", now=NOW)
    assert segments(ack)[1] == ["MSA", "AE", "7", "a\\F\\b\\S\\c"]


def test_unreadable_input_still_gets_an_ack() -> None:
    ack = build_ack(b"\x00garbage", errors=[HL7ParseError("no MSH")], now=NOW)
    assert segments(ack)[1][:3] == ["MSA", "AR", ""]
