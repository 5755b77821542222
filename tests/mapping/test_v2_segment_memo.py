"""A feed whose segments repeat, new values aside, maps exactly as a mapper that has seen nothing.

The fast paths under test: a segment whose fields repeat one seen before (new plain results
and times left out) replays that segment's steps (``segment_functions``); a plan is one
generated function; resources with one id (the Specimen OBR and SPM both describe) are merged
by a merged template; templates are found by the identities of their log items and filled as
one Python display. A mapper with every memo, plan and template cleared takes none of them,
so it is the reference: the variants below change values, ids, names and times, and some
carry what must not be replayed (escapes, repetitions, empty or odd results, other value
types, a changed order-level field another segment's conditions read).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from support import forget_mappings, hl7_variants, mapped_json, warm_then_results

from ingest.hl7v2.convert import map_message
from mapping.v2 import field_rules, shapes

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "hl7v2"
ODD_RESULTS = ["", "12", "<>", "^12^:^3", "<>^5", "a\\F\\b", "x~y", "  ", " 7.5 ", '""', "1e999", "NaN", "12^34",
               "-3", "abc", "\\T\\", "\ufffftext"]
VALUE_TYPES = ["ST", "NM", "SN", "TX", "CWE", "DT", "TS", "FT"]


def _time(rng: random.Random) -> str:
    return (f"2026{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}{rng.randint(0, 23):02d}{rng.randint(0, 59):02d}"
            + rng.choice(["", "", "-0500", "+0000", "30"]))


def _obx(f: list[str], rng: random.Random) -> None:
    """New results and times mostly; now and then what a replayed segment must not get wrong."""
    roll = rng.random()
    if f[2] == "NM" and roll < 0.75:
        f[5] = rng.choice([f"{rng.uniform(0.1, 500):.2f}", str(rng.randint(0, 900)), f"-{rng.randint(1, 9)}.5"])
    elif roll < 0.88:
        f[5] = rng.choice(ODD_RESULTS)
    else:
        f[2] = rng.choice(VALUE_TYPES)
        f[5] = rng.choice([*ODD_RESULTS, "20260101", f"{rng.randint(1, 99)}"])
    if len(f) > 14:
        f[14] = _time(rng) if rng.random() < 0.93 else rng.choice(["", '""', "2026"])
    if len(f) > 8 and rng.random() < 0.05:
        f[8] = rng.choice(["H", "L~H", "", "N", "A\\S\\B"])
    if len(f) > 3 and rng.random() < 0.03:
        f[3] = rng.choice([f[3] + "~" + f[3], f[3].replace("Blood", "Blood \\T\\ serum")])


def _edit(f: list[str], rng: random.Random) -> None:
    if f[0] == "MSH":
        f[6] = _time(rng)[:12] + "00"
    elif f[0] == "OBR" and len(f) > 8:  # the Specimen's collection time, merged with SPM's
        f[7] = _time(rng)
        f[8] = _time(rng) if rng.random() < 0.5 else f[8]
    elif f[0] == "SPM":
        f += [""] * (19 - len(f))
        f[18] = _time(rng)
    elif f[0] == "ORC" and len(f) > 12 and rng.random() < 0.1:
        f[12] = rng.choice(["", "999^Other^Doctor", f[12]])  # OBR-16's conditions read it
    elif f[0] == "OBX" and len(f) > 5:
        _obx(f, rng)


def variants(name: str, n: int, seed: int) -> list[str]:
    """``n`` copies of a fixture with new control ids, patient ids, names, times and results."""
    return hl7_variants(FIXTURES / name, n, seed, _edit)


def _segment_memo_hits() -> int:
    return sum(memo.hits for table in field_rules.MEMO_TABLES.values() for number, memo in table.items() if number < 0)


@pytest.mark.parametrize("fixture", ["derived_ORU_R01_LRI_CBC_first20obx.hl7", "oru_r01_value_types_2patients.hl7",
                                     "v2tofhir_ADT_A01.hl7"])
def test_replayed_segments_map_as_a_cold_mapper(fixture: str) -> None:
    texts = variants(fixture, 400, seed=23)
    forget_mappings()
    warm = [mapped_json(map_message(text)) for text in texts]
    assert _segment_memo_hits() > len(texts), "segments were replayed"
    for i in range(0, len(texts), 23):
        forget_mappings()
        assert warm[i] == mapped_json(map_message(texts[i])), f"variant {i} differs"


def test_the_specimen_obr_and_spm_describe_is_merged_by_a_template() -> None:
    texts = variants("derived_ORU_R01_LRI_CBC_first20obx.hl7", 320, seed=29)  # the times stop being remembered
    forget_mappings()
    warm = [mapped_json(map_message(text)) for text in texts]
    merged = [key for key in shapes.SHAPES if key[1] is None]
    assert merged, "a merged template was made"
    every_part_valued = [all(any(item[0] == field_rules.VALUE for item in log) for _, log in key[2]) for key in merged]
    assert any(every_part_valued), "from parts that each hold new values (OBR-7 and SPM-18 times)"
    for i in (len(texts) - 3, len(texts) - 2, len(texts) - 1):
        specimens = [r for r in warm[i][0] if r["resourceType"] == "Specimen"]
        assert len(specimens) == 1
        forget_mappings()
        assert warm[i] == mapped_json(map_message(texts[i]))


def test_a_segment_with_a_result_conditions_name_is_not_replayed_as_another() -> None:
    """OBX-5 "<>" is a text the SN conditions compare with: a segment key keeps it, while any
    other plain result of a field that stopped remembering stands for all such results."""
    texts = variants("derived_ORU_R01_LRI_CBC_first20obx.hl7", 300, seed=31)
    text, warm = warm_then_results(texts, [("SN", "<>"), ("SN", "^12"), ("NM", "<>"), ("NM", "7")])
    observations = [o for o in warm[0] if o["resourceType"] == "Observation"]
    assert not any(k.startswith("value") for k in observations[0])
    assert observations[1]["valueQuantity"]["value"] == 12
    assert "value" not in observations[2].get("valueQuantity", {})
    assert observations[3]["valueQuantity"]["value"] == 7
    forget_mappings()
    assert warm == mapped_json(map_message(text))


OTHER_DELIMITERS = str.maketrans("|^~\\&", "!$@`;")


def _with_other_delimiters(text: str) -> str:
    """The same message sent with other encoding characters."""
    assert not set("!$@`;") & set(text)
    return text.translate(OTHER_DELIMITERS)


def _id_and_condition_variants(n: int, seed: int) -> list[str]:
    """Set ids, codes, sub-ids and OBX-29 changed now and then (the texts the remembered id parts
    and the rows' conditions read), every fifth message with other encoding characters and an
    OBX-4 that reads as one component or two depending on them."""
    rng = random.Random(seed)
    out = []
    for k, text in enumerate(variants("derived_ORU_R01_LRI_CBC_first20obx.hl7", n, seed)):
        segs = text.strip("\r").split("\r")
        for j, seg in enumerate(segs):
            f = seg.split("|")
            if f[0] != "OBX":
                continue
            f += [""] * (30 - len(f))
            if rng.random() < 0.1:
                f[1] = rng.choice(["", "1", "99", "2\\T\\3"])
            if rng.random() < 0.1:
                f[3] = rng.choice(["718-7", "718-7^Hb^LN", "71\\S\\8-7^Hb^LN", "^Hb^LN", ""])
            if rng.random() < 0.1:
                f[4] = rng.choice(["1", "a^b", "\\E\\", "1~2"])
            if rng.random() < 0.1:
                f[29] = rng.choice(["QC", "RSLT", "SCI", "x^y", "SCI^x"])
            segs[j] = "|".join(f)
        text = "\r".join(segs) + "\r"
        if k % 5 == 4:
            text = _with_other_delimiters(text)
            segs = text.split("\r")
            f = segs[4].split("!")
            f[1], f[3], f[4] = "1", "718-7", "7^1"  # the component separator is "$" here: one component
            segs[4] = "!".join(f)
            text = "\r".join(segs)
        elif k % 5 == 3:
            segs = text.split("\r")
            f = segs[4].split("|")
            f[1], f[3], f[4] = "1", "718-7", "7^1"  # two components, the first of which an id reads
            segs[4] = "|".join(f)
            text = "\r".join(segs)
        out.append(text)
    return out


def test_remembered_id_parts_and_row_conditions_map_as_a_cold_mapper() -> None:
    """Observation ids take the creating segment's run of fields (OBX-1, OBX-3.1, OBX-4) from a
    memo keyed by their texts and the delimiters; a grouping's row conditions are one generated
    function of the message's segments. Both must give what a cold mapper gives."""
    texts = _id_and_condition_variants(300, seed=37)
    forget_mappings()
    warm = [mapped_json(map_message(text)) for text in texts]
    # six ORC/OBR/SPM maps a message could replay: beyond that, OBX segments with new results
    assert _segment_memo_hits() > 12 * len(texts), "OBX segments were replayed"
    for i in [*range(0, len(texts), 17), 298, 299]:
        forget_mappings()
        assert warm[i] == mapped_json(map_message(texts[i])), f"variant {i} differs"
    assert warm[298][0] and warm[299][0]
    first = [[r["id"] for r in result[0] if r["resourceType"] == "Observation"][0] for result in warm[298:300]]
    assert first[0] != first[1], "OBX-4 7^1 is one id part with other encoding characters, another with ^"


def _without(text: str, seg_id: str) -> str:
    return "\r".join(seg for seg in text.split("\r") if not seg.startswith(seg_id + "|"))


@pytest.mark.parametrize("left_out", ["PID", "SPM"])
def test_a_segment_replayed_into_other_links_takes_a_shape_of_its_own(left_out: str) -> None:
    """Observations written whole by one OBX's replayed steps find their shape by those steps and
    their links: the same OBX steps under a message without the patient (no subject fallback) or
    without the specimen (no specimen link) must not take the shape the full message made."""
    texts = variants("derived_ORU_R01_LRI_CBC_first20obx.hl7", 300, seed=37)
    forget_mappings()
    for text in texts:
        map_message(text)
    assert shapes._BY_STEPS, "shapes were found by replayed steps"
    before = set(shapes._BY_STEPS)
    last = [texts[-1], _without(texts[-1], left_out), texts[-1]]
    warm = [mapped_json(map_message(text)) for text in last]
    other_links = set(shapes._BY_STEPS) - before
    assert {key[2] for key in other_links} & {key[2] for key in before}, "the same steps under other links"
    for text, mapped in zip(last, warm, strict=True):
        forget_mappings()
        assert mapped == mapped_json(map_message(text))
    assert warm[0] == warm[2]


def test_a_segment_never_found_again_stops_being_looked_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """A PID with a new identifier and name every time can never be replayed (those texts go to
    the field memos with holes): its segment memo counts it a miss and gives up, as it does for
    segments it remembers and never finds again; the results keep being replayed."""
    from mapping.v2 import segment_functions

    monkeypatch.setattr(segment_functions, "SEGMENT_MISSES", 300)
    texts = hl7_variants(FIXTURES / "derived_ORU_R01_LRI_CBC_first20obx.hl7", 320, seed=31)  # new patients only
    forget_mappings()
    for text in texts:
        map_message(text)
    def segment_memo(mapname: str, field: int) -> field_rules.SegmentMemo:
        number = next(fp.number for fp in field_rules.segment_plan(mapname) or () if fp.field == field)
        (memo,) = [table[number].segment for table in field_rules.MEMO_TABLES.values() if number in table]
        return memo

    pid, obx = segment_memo("PID[Patient]", 5), segment_memo("OBX[Observation]", 3)
    assert (pid.keep, pid.hits, pid.misses) == (False, 0, 300), "the PID's segment memo gave up"
    assert obx.keep and obx.hits > obx.misses, "the results are still replayed"
    last = mapped_json(map_message(texts[-1]))
    forget_mappings()
    assert last == mapped_json(map_message(texts[-1]))
