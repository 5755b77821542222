"""Segment grouping by message structure: the part converters most often get wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest.hl7v2 import Group, HL7StructureError, group_message, parse_message, structure_of

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "hl7v2"


def load(name: str) -> Group:
    return group_message(parse_message((FIXTURES / name).read_bytes()))


def obx_ids(group: Group) -> list[str]:
    return [s.get(3, 1, 1) for s in group.walk() if s.id == "OBX"]


def test_two_obr_each_with_their_own_obx() -> None:
    root = load("fc_ORU_R01_LAB_2obr_10obx.hl7")
    orders = list(root.find_groups("ORDER_OBSERVATION"))
    assert len(orders) == 2
    for order in orders:
        assert order.segment("OBR") is not None
        assert len(order.groups("OBSERVATION")) == 5
        assert len(order.groups("SPECIMEN")) == 1
    assert obx_ids(orders[0]) != obx_ids(orders[1])


def test_nte_goes_under_its_parent_and_specimen_obx_under_spm() -> None:
    root = load("oru_r01_value_types_2patients.hl7")
    first, second, third = root.find_groups("ORDER_OBSERVATION")
    assert [s.get(3) for s in first.segments("NTE")] == ["Specimen slightly hemolysed"]
    obs = first.groups("OBSERVATION")
    assert len(obs) == 15
    assert [s.get(3) for s in obs[0].segments("NTE")] == ["Fasting sample"]
    assert obs[1].segments("NTE") == []
    [specimen] = second.groups("SPECIMEN")
    assert specimen.segment("SPM") is not None
    assert [s.get(3, 1, 1) for s in specimen.segments("OBX")] == ["33747-0"]
    assert obx_ids(second)[:2] == ["718-7", "6690-2"]
    assert obx_ids(third) == ["2339-0"]


def test_patient_result_repeats_per_pid() -> None:
    root = load("oru_r01_value_types_2patients.hl7")
    results = root.groups("PATIENT_RESULT")
    assert len(results) == 2
    assert [r.group("PATIENT").segment("PID").get(3, 1, 1) for r in results] == ["MRN001", "MRN002"]  # type: ignore[union-attr]
    assert [len(r.groups("ORDER_OBSERVATION")) for r in results] == [2, 1]
    assert all(g.repeats for g in results)


def test_z_segment_stays_with_the_current_group_and_is_not_unexpected() -> None:
    root = load("oru_r01_value_types_2patients.hl7")
    first = next(root.find_groups("ORDER_OBSERVATION"))
    last_obs = first.groups("OBSERVATION")[-1]
    assert [s.id for s in last_obs.items] == ["OBX", "ZXT"]
    assert root.all_unexpected() == []


def test_multiple_specimen_and_order_groups_in_oml_o33() -> None:
    root = load_shared_oml()
    specimens = root.groups("SPECIMEN")
    assert len(specimens) == 2
    assert all(s.group("ORDER") is not None for s in specimens)
    prior = list(root.find_groups("ORDER_PRIOR"))
    assert len(prior) >= 2


def load_shared_oml() -> Group:
    path = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "hl7v2" / "samples"
    return group_message(parse_message((path / "hl7apy_OML_O33_multi_groups.hl7").read_bytes()))


def test_pharmacy_administration_groups() -> None:
    root = load("ras_o17_insulin_vancomycin.hl7")
    orders = root.groups("ORDER")
    assert len(orders) == 2
    assert [len(o.groups("ADMINISTRATION")) for o in orders] == [2, 1]
    assert orders[0].group("ENCODING").segment("RXR").get(1, 1, 1) == "SC"  # type: ignore[union-attr]


def test_structure_from_event_when_msh9_3_is_missing_or_an_event_name() -> None:
    msg = parse_message("MSH|^~\\&|A|B|C|D|2020||ADT^A08|1|P|2.3\rEVN|A08\rPID|1")
    assert structure_of(msg) == "ADT_A01"
    msg = parse_message("MSH|^~\\&|A|B|C|D|2020||ADT^A40^ADT_A40|1|P|2.8\rEVN|A40\rPID|1\rMRG|X")
    assert structure_of(msg) == "ADT_A39"


def test_v28_messages_use_v28_groups() -> None:
    root = load("fc_ADT_A01_v28_rich_escapes.hl7")
    assert root.all_unexpected() == [] or {s.id for s in root.all_unexpected()} <= {"RF1"}


def test_unknown_structure_is_a_flat_group() -> None:
    root = group_message(parse_message("MSH|^~\\&|A|B|C|D|2020||ZZZ^Z99|1|P|2.5\rZA1|1"))
    assert [s.id for s in root.items] == ["MSH", "ZA1"]


def test_strict_mode_rejects_misplaced_segments() -> None:
    msg = parse_message("MSH|^~\\&|A|B|C|D|2020||ORU^R01^ORU_R01|1|P|2.5\rOBX|1|NM|X||1")
    with pytest.raises(HL7StructureError) as info:
        group_message(msg, strict=True)
    assert info.value.segment_id == "OBX"
    lenient = group_message(msg)
    assert [s.id for s in lenient.all_unexpected()] == ["OBX"]


@pytest.mark.parametrize("name", ["oru_r01_value_types_2patients.hl7", "RDS-O13-01.hl7", "v2tofhir_ORU_R01.hl7",
                                  "pyhl7_ADT_A01_v23_nulls_multi_IN1.hl7"])
def test_a_second_message_of_one_shape_is_grouped_alike_with_its_own_segments(name: str) -> None:
    """The grouping of a segment-id sequence is worked out once and rebuilt for later messages."""
    first = parse_message((FIXTURES / name).read_bytes())
    second = parse_message((FIXTURES / name).read_bytes())
    a, b = group_message(first), group_message(second)
    assert b.outline() == a.outline()
    assert all(x is y for x, y in zip(b.walk(), second.segments, strict=True))  # its own segments, in order
    assert [s.raw for s in b.all_unexpected()] == [s.raw for s in a.all_unexpected()]
    assert all(any(s is t for t in second.segments) for s in b.all_unexpected())
    assert groups_of(b) == groups_of(a)


def groups_of(group: Group) -> list[tuple[str, bool, int]]:
    """Every group with whether it repeats and how many items it holds, depth first."""
    out = []
    for item in group.items:
        if isinstance(item, Group):
            out += [(item.name, item.repeats, len(item.items)), *groups_of(item)]
    return out
