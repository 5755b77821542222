"""A feed of new values maps exactly as a mapper that has never seen anything maps it.

Once a field's texts stop repeating (OBX-5 results, OBX-14 times), its plain values are
converted by generated primitive conversions, and resources whose write logs share a shape
are filled into a JSON template made once. A mapper with every memo, plan and template
cleared takes none of those paths (rule interpreter, resource tree, finishing pass), so it
is the reference each fast result is compared with.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from support import forget_mappings, hl7_variants, mapped_json, warm_then_results

from ingest.hl7v2.convert import map_message
from mapping.v2 import field_rules, shapes
from mapping.v2.tables import segment_maps

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "hl7v2"


def _new_results(f: list[str], rng: random.Random) -> None:
    if f[0] == "OBX" and len(f) > 5 and f[2] == "NM":
        f[5] = rng.choice([f"{rng.uniform(0.1, 500):.2f}", str(rng.randint(0, 900)), f"-{rng.randint(1, 9)}.5"])
        if len(f) > 14 and f[14]:
            f[14] = f"2026{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}{rng.randint(0, 23):02d}" \
                    f"{rng.randint(0, 59):02d}" + rng.choice(["", "-0500", "+0000"])


def variants(name: str, n: int, seed: int) -> list[str]:
    """``n`` copies of a fixture with new control ids, patient ids, names, times and results."""
    return hl7_variants(FIXTURES / name, n, seed, _new_results)


def cold(text: str) -> Any:
    forget_mappings()
    return map_message(text)


@pytest.mark.parametrize("fixture", ["derived_ORU_R01_LRI_CBC_first20obx.hl7", "oru_r01_value_types_2patients.hl7",
                                     "v2tofhir_ADT_A01.hl7"])
def test_a_feed_of_new_values_maps_as_a_cold_mapper(fixture: str) -> None:
    texts = variants(fixture, 300, seed=5)
    forget_mappings()
    warm = [mapped_json(map_message(text)) for text in texts]
    if "OBX" in texts[0]:
        memos = [m for table in field_rules.MEMO_TABLES.values() for m in table.values()]
        assert any(not m.keep for m in memos), "the results stopped being remembered"
    assert shapes.SHAPES, "templates were made"
    for i in range(0, len(texts), 37):
        assert warm[i] == mapped_json(cold(texts[i])), f"variant {i} differs"


def test_text_that_looks_like_a_placeholder_is_kept_as_sent() -> None:
    texts = variants("derived_ORU_R01_LRI_CBC_first20obx.hl7", 40, seed=9)
    forget_mappings()
    for text in texts:
        map_message(text)  # the OBX-5 results now take the primitive conversions
    odd = [shapes.value_placeholder(1), shapes.value_placeholder(0), shapes.reference_placeholder(0), shapes.ID_PLACEHOLDER,
           f"x{shapes.MARK}y"]
    segs = texts[-1].split("\r")
    for k, value in enumerate(odd):
        f = segs[4 + k].split("|")
        f[2], f[5] = "ST", value
        segs[4 + k] = "|".join(f)
    text = "\r".join(segs)
    map_message(text)  # ST results are new to OBX-6's memo: the second time they are templated
    warm = mapped_json(map_message(text))
    strings = [o.get("valueString") for o in warm[0] if o["resourceType"] == "Observation"]
    assert all(value in strings for value in odd)
    assert warm == mapped_json(cold(text))


def test_blank_values_of_fields_that_stopped_repeating_are_not_mapped() -> None:
    texts = variants("derived_ORU_R01_LRI_CBC_first20obx.hl7", 40, seed=13)
    text, warm = warm_then_results(texts, [("ST", "   "), ("NM", "  "), ("ST", " padded  ")])
    observations = [o for o in warm[0] if o["resourceType"] == "Observation"]
    assert "valueString" not in observations[0] and "value" not in observations[1].get("valueQuantity", {})
    assert observations[2]["valueString"] == "padded"
    assert warm == mapped_json(cold(text))


def test_condition_inputs_that_are_plain_text_are_keyed_by_the_texts_conditions_name() -> None:
    """OBX-6 and OBX-5's conversion are remembered by OBX-2 and by what OBX-5 is for their
    conditions (one of the texts they compare it with, or any other plain text), not by
    every new result: results the conditions name must still take their own rules."""
    texts = variants("derived_ORU_R01_LRI_CBC_first20obx.hl7", 300, seed=17)
    forget_mappings()
    for text in texts:
        map_message(text)
    segs = texts[-1].split("\r")
    for k, (vtype, value) in enumerate([("SN", "12"), ("SN", "<>"), ("SN", "^12^:^3"), ("SN", "<>^5"),
                                        ("NM", "7.5"), ("SN", "-"), ("ST", "<>")]):
        f = segs[4 + k].split("|")
        f[2], f[5], f[6] = vtype, value, "mg/dL^milligram per deciliter^UCUM"  # one OBX-6 text for all
        segs[4 + k] = "|".join(f)
    text = "\r".join(segs)
    map_message(text)
    warm = mapped_json(map_message(text))
    assert warm == mapped_json(cold(text))
    observations = [o for o in warm[0] if o["resourceType"] == "Observation"]
    assert "valueRatio" in observations[2]
    assert observations[6]["valueString"] == "<>"


def test_the_texts_conditions_compare_a_field_with() -> None:
    plan = {fp.field: fp for fp in field_rules.segment_plan("OBX[Observation]") or ()}
    assert field_rules.compared_texts(plan[5], "OBX", 5) == {"<>"}  # SN: comparator "<>" is not a value
    assert field_rules.compared_texts(plan[6], "OBX", 5) == {"<>"}
    assert field_rules.compared_texts(plan[6], "OBX", 2) is None  # OBX-2 has value aliases (TS → DTM)
    compared = frozenset({"<>"})
    assert field_rules.plain_key("12.5", compared, True) == field_rules.plain_key("7", compared, True)
    assert field_rules.plain_key("<>", compared, True) == "<>"
    assert field_rules.plain_key("^12^:^3", compared, True) == "^12^:^3"  # not plain: as sent
    assert field_rules.plain_key("12.5", compared, False) == "12.5"  # other delimiters: as sent
    assert field_rules.plain_key("", compared, True) == ""


def _literals(cond: Any) -> set[str]:
    if cond is None:
        return set()
    if cond[0] in ("and", "or"):
        return _literals(cond[1]) | _literals(cond[2])
    if cond[0] in ("eq", "ne"):
        return {cond[2]}
    if cond[0] in ("in", "not_in"):
        return set(cond[2])
    return set()


def test_plain_texts_no_condition_names_decide_the_conditions_alike() -> None:
    """For every field whose conditions read another field of its segment, with that field's
    compared texts known: two plain texts of it that no condition names give the same outcome
    of every condition, whatever the segment's other fields hold (drawn from the literals the
    conditions name, and a few others). That is what keying by ``plain_key`` relies on."""
    from ingest.hl7v2.er7 import parse_message

    rng = random.Random(5)
    words = ["12", "7.5", "abc", "Q1", "X Y", "-3", "2020"]
    checked = 0
    for mapname in sorted(segment_maps()):
        seg_id = mapname.split("[")[0]
        if seg_id in ("MSH", "FHS", "BHS"):
            continue
        for fp in field_rules.segment_plan(mapname) or ():
            own = sorted({ref[1] for ref in fp.deps if ref[0] == seg_id and ref[1] != fp.field})
            literals = sorted({lit for rule in fp.rules for lit in _literals(rule["cond"])}) or ["A"]
            outcomes = field_rules.outcomes_function(fp, seg_id)
            for k in own:
                compared = field_rules.compared_texts(fp, seg_id, k)
                if compared is None:
                    continue
                plain = [w for w in words + literals if w not in compared and field_rules.PLAIN(w)]
                width = max(max(own), fp.field, k) + 1
                for _ in range(12):
                    fields = [rng.choice(["", *literals, "^".join(rng.sample(literals, 1) * 2)]) for _ in range(width)]
                    seen = set()
                    for text in rng.sample(plain, min(3, len(plain))):
                        fields[k] = text
                        msg = parse_message("MSH|^~\\&|A|B|C|D|20200101||ADT^A01|1|P|2.5\r"
                                            + "|".join([seg_id, *fields[1:]]) + "\r")
                        seg = msg.segments[1]
                        first = {s.id: s for s in reversed(msg.segments)}
                        seen.add(outcomes(seg, first.get))
                    assert len(seen) == 1, (mapname, fp.field, k)
                    checked += 1
    assert checked > 100
