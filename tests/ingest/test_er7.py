"""ER7 parsing: delimiters, escapes, separators, encodings, nulls, errors with locations."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest.hl7v2 import NULL, ErrorCode, HL7ParseError, er7, parse_message, read_batch

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "fixtures" / "hl7v2"
SHARED = REPO / ".." / "shared" / "data" / "hl7v2"

MSH = "MSH|^~\\&|APP|FAC|RAPP|RFAC|20260301080000+0100||ADT^A01^ADT_A01|C1|P|2.5"


def test_fields_components_subcomponents_and_repetitions() -> None:
    msg = parse_message(MSH + "\rPID|1||MRN1^^^HOSP&1.2.3&ISO^MR~SSN9^^^USSSA^SS||Doe^Jane^Q\r")
    pid = msg.segment("PID")
    assert pid is not None
    assert pid[5] == "Doe^Jane^Q"
    assert pid.get(3, 1, 1) == "MRN1"
    assert pid.get(3, 1, 4, 2) == "1.2.3"
    assert pid.get(3, 2, 1) == "SSN9"
    assert pid.get(3, 3, 1) == ""
    assert len(pid.reps(3)) == 2
    assert pid.value("5.2") == "Jane"


def test_msh_numbering_follows_the_standard() -> None:
    msg = parse_message(MSH)
    assert msg.msh[1] == "|"
    assert msg.msh[2] == "^~\\&"
    assert msg.msh.get(9, 1, 2) == "A01"
    assert (msg.message_type, msg.trigger_event, msg.structure_id) == ("ADT", "A01", "ADT_A01")
    assert msg.control_id == "C1"
    assert msg.version == "2.5"


@pytest.mark.parametrize("sep", ["\r", "\n", "\r\n"])
def test_segment_separators(sep: str) -> None:
    msg = parse_message(sep.join([MSH, "EVN|A01", "PID|1||X"]) + sep)
    assert [s.id for s in msg] == ["MSH", "EVN", "PID"]


def test_leading_bom_is_dropped_for_str_and_bytes() -> None:
    text = "\ufeff" + MSH + "\rPID|1"
    assert parse_message(text).segments[1].id == "PID"
    assert parse_message(text.encode("utf-8")).segments[1].id == "PID"


def test_escape_sequences() -> None:
    raw = MSH + "\rNTE|1||a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f\\.br\\g\\X41C3A9\\h\\H\\bold\\N\\"
    nte = parse_message(raw).segment("NTE")
    assert nte is not None
    assert nte.get(3) == "a|b^c&d~e\\f\ngAéhbold"


@pytest.mark.parametrize(("text", "value"), [
    ("C:\\temp", "C:\\temp"),  # one escape character, no sequence: kept as sent
    ("\\", "\\"),
    ("a\\F\\b\\c", "a|b\\c"),  # a sequence, then a lone escape character
    ("\\S\\x\\T\\y\\", "^x&y\\"),
])
def test_an_odd_escape_character_is_kept_literally_after_the_sequences_before_it(text: str, value: str) -> None:
    nte = parse_message(MSH + "\rNTE|1||" + text).segment("NTE")
    assert nte is not None
    assert nte.get(3) == value


def test_unescaped_value_keeps_component_structure() -> None:
    nte = parse_message(MSH + "\rOBX|1|ST|X||A \\T\\ B^second").segment("OBX")
    assert nte is not None
    assert nte.get(5, 1, 1) == "A & B"
    assert nte.get(5, 1, 2) == "second"


def test_custom_delimiters_and_v27_truncation_character() -> None:
    msg = parse_message((FIXTURES / "hl7apy_RSP_K21_v27_truncation_char.hl7").read_bytes())
    assert msg.delimiters.truncation == "#"
    assert msg.delimiters.encoding_characters == "^~\\&#"
    pid = msg.segment("PID")
    assert pid is not None
    assert pid.get(3, 1, 4, 2) == "1.3.6.1.4.1.21367.2011.2.5.17"
    other = parse_message("MSH*:!$@*A*B*C*D*2020**ADT:A01*X*P*2.5\rPID*1**ID1:::AUTH@1.2")
    assert other.segment("PID").get(3, 1, 4, 2) == "1.2"  # type: ignore[union-attr]


def test_empty_versus_explicit_null() -> None:
    pid = parse_message(MSH + '\rPID|1||ID||""||').segment("PID")
    assert pid is not None
    assert pid.get(5) == NULL
    assert not pid.has(5)
    assert pid.get(6) == ""
    assert pid.reps(5) == []


def test_z_segments_and_custom_z_messages_are_kept() -> None:
    msg = parse_message(MSH + "\rPID|1\rZPI|1|custom^data")
    zpi = msg.segment("ZPI")
    assert zpi is not None and zpi.get(2, 1, 2) == "data"
    custom = parse_message((FIXTURES / "hl7apy_ZDT_Z01_custom_Z_message.hl7").read_bytes())
    assert custom.message_type == "ZDT"


def test_msh18_charset_decodes_latin1_bytes() -> None:
    text = MSH + "|||||8859/1\rPID|1||X||Müller^Zoë"
    msg = parse_message(text.encode("latin-1"))
    assert msg.segment("PID").get(5, 1, 1) == "Müller"  # type: ignore[union-attr]
    utf = parse_message((MSH + "|||||UNICODE UTF-8\rPID|1||X||Müller").encode("utf-8"))
    assert utf.segment("PID").get(5, 1, 1) == "Müller"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("raw", "code", "seg", "seq", "field"),
    [
        ("", ErrorCode.SEGMENT_SEQUENCE_ERROR, None, None, None),
        ("PID|1||X", ErrorCode.SEGMENT_SEQUENCE_ERROR, "PID", 1, None),
        ("MSH|^~", ErrorCode.REQUIRED_FIELD_MISSING, "MSH", 1, 2),
        ("MSH|^^\\&|A|B|C|D|2020||ADT^A01|1|P|2.5", ErrorCode.DATA_TYPE_ERROR, "MSH", 1, 2),
        ("MSH|^~\\&|A|B|C|D|2020|||1|P|2.5", ErrorCode.REQUIRED_FIELD_MISSING, "MSH", 1, 9),
        ("MSH|^~\\&|A|B|C|D|2020||ADT^A01||P|2.5", ErrorCode.REQUIRED_FIELD_MISSING, "MSH", 1, 10),
        ("MSH|^~\\&|A|B|C|D|2020||ADT^A01|1|X|2.5", ErrorCode.UNSUPPORTED_PROCESSING_ID, "MSH", 1, 11),
        ("MSH|^~\\&|A|B|C|D|2020||ADT^A01|1|P|3.0", ErrorCode.UNSUPPORTED_VERSION_ID, "MSH", 1, 12),
        (MSH + "\rPID|1\rpv1|bad", ErrorCode.SEGMENT_SEQUENCE_ERROR, "pv1", 3, None),
        (MSH + "\rPID|1\r" + MSH, ErrorCode.SEGMENT_SEQUENCE_ERROR, "MSH", 3, None),
    ],
)
@pytest.mark.parametrize("warm", [False, True], ids=["first message", "after valid ones"])
def test_errors_carry_location_and_table_0357_code(
    raw: str, code: ErrorCode, seg: str | None, seq: int | None, field: int | None, warm: bool
) -> None:
    er7.forget()
    if warm:  # the parser remembers the delimiters, MSH-11/12 and segment ids it has accepted
        for ok in (MSH + "\rPID|1\rPV1|1", "MSH|^~\\&|A|B|C|D|2020||ADT^A01|1|P|2.5\rPID|1||X"):
            parse_message(ok)
    with pytest.raises(HL7ParseError) as info:
        parse_message(raw)
    err = info.value
    assert err.code == code
    assert err.segment_id == seg
    assert err.segment_seq == seq
    assert err.field == field
    assert "0357 code" in str(err) or seg is None


def test_every_shared_sample_parses_or_fails_with_a_located_error() -> None:
    files = sorted(SHARED.glob("*/*.hl7"))
    assert len(files) > 150
    parsed = 0
    for path in files:
        batch = read_batch(path.read_bytes())
        for entry in batch.entries:
            if entry.error is not None:
                assert "MALFORMED" in path.name, f"{path.name}: {entry.error}"
                assert entry.error.segment_id and entry.error.segment_seq
            else:
                parsed += 1
    assert parsed >= 170


def test_versions_23_to_28_all_parse() -> None:
    versions = set()
    for path in sorted(SHARED.glob("*/*.hl7")):
        for entry in read_batch(path.read_bytes()).entries:
            if entry.message is not None:
                versions.add(entry.message.version[:3])
    assert {"2.3", "2.4", "2.5", "2.6", "2.7", "2.8"} <= versions


@pytest.mark.parametrize("version", ["2.3", "2.5.1", "2.8.2", "2.9", "2.9.1"])
def test_versions_of_table_0104_are_accepted(version: str) -> None:
    assert parse_message(f"MSH|^~\\&|A|B|C|D|2020||ADT^A01|1|P|{version}\rPID|1").version == version
