"""Identifiers and names new in every message: the field memo keeps their texts out (``holes``).

Every case is compared with a mapper that has forgotten everything (rule interpreter, resource
tree, finishing pass), after a warm-up of new patients long enough for PID-3 and PID-5 to stop
being remembered text by text.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import random
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from ingest.hl7v2 import structure as grouping
from ingest.hl7v2.convert import map_message
from mapping.v2 import field_rules, forget, holes, shapes
from mapping.v2.tables import segment_maps

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "hl7v2"
ADT = (FIXTURES / "v2tofhir_ADT_A01.hl7").read_text().replace("\r\n", "\r").replace("\n", "\r").strip("\r")
D = SimpleNamespace(field="|", component="^", repetition="~", escape="\\", subcomponent="&", truncation="#")


def with_pid(text: str, i: int, pid3: str | None = None, pid5: str | None = None, pid2: str | None = None) -> str:
    segs = []
    for seg in text.split("\r"):
        f = seg.split("|")
        if f[0] == "MSH":
            f[9] = f"{f[9]}-{i}"
        elif f[0] == "PID":
            f[3] = pid3 if pid3 is not None else f"P{i:06d}^^^V2FHIR&1.2.3.4.5&ISO^MR~DL{i}^^^WADMV&1.3.4.7&ISO^DL"
            f[5] = pid5 if pid5 is not None else f"Family{i}^Given{i}^Q^Jr^Dr^^L~Maiden{i}^Given{i}^^^^^M"
            if pid2 is not None:
                f[2] = pid2
        segs.append("|".join(f))
    return "\r".join(segs) + "\r"


def as_json(result: Any) -> Any:
    return [result.resources, result.notes, result.patient_id]


def forget_everything() -> None:
    forget()
    grouping._RECIPES.clear()


def warmed() -> None:
    forget_everything()
    for i in range(300):
        map_message(with_pid(ADT, i))


def cold(text: str) -> Any:
    forget_everything()
    return as_json(map_message(text))


def plan_of(mapname: str, field: int) -> field_rules.FieldPlan:
    plan = field_rules.segment_plan(mapname)
    assert plan is not None
    return next(fp for fp in plan if fp.field == field)


def test_identifier_and_name_texts_are_left_out_and_coded_components_are_not() -> None:
    pid3 = plan_of("PID[Patient]", 3).holes
    pid5 = plan_of("PID[Patient]", 5).holes
    assert 1 in pid3 and 4 not in pid3 and 5 not in pid3  # CX.1 value; not the authority (a uri) nor the code
    assert {1, 2, 3} <= set(pid5) and 7 not in pid5  # family, given names; not the name type (vocabulary)
    assert not {10, 12, 13} & set(pid5)  # dates
    assert plan_of("PID[Patient]", 8).holes == ()  # administrative sex: a vocabulary
    assert plan_of("PID[Patient]", 2).holes == ()  # identifier[1] is also written by MRG[Patient]
    assert "PID[Patient]" in segment_maps()


def test_masking_refuses_what_is_not_plain_text() -> None:
    text, texts, groups = holes.masked("Smith^John^Q~Jones^John", (1, 2, 3), D)  # type: ignore[misc]
    assert texts == ["Smith", "John", "Q", "Jones", "John"]
    assert groups == [("Smith", "John", "Q"), ("Jones", "John")]
    assert text == "^".join(holes.placeholder(k) for k in range(3)) + "~" + "^".join(
        holes.placeholder(k) for k in range(3, 5))
    assert holes.masked("Smith^Smith", (1, 2), D) is None  # one repetition, the same text twice
    assert holes.masked("Smith^John~Smith^John", (1, 2), D) is None  # two repetitions alike
    for odd in ("O\\T\\Brien^John", "Smith&Jr^John", " Smith^John", '""^John', f"A{holes.MARK}B^John"):
        assert holes.masked(odd, (1, 2), D) is None
    assert holes.masked("^^^X^MR", (1, 2), D) is None  # nothing to leave out


def test_new_patients_share_one_patient_template() -> None:
    warmed()
    number = plan_of("PID[Patient]", 5).number
    memos = [table[number] for table in field_rules.MEMO_TABLES.values() if number in table]
    assert memos and all(not m.keep and m.holed for m in memos), "PID-5 texts stopped being remembered one by one"
    patient_shapes = [k for k, shape in shapes.SHAPES.items() if k[0] == "Patient" and shape.parts is not None]
    assert len(patient_shapes) == 1
    for i in (1000, 1001):
        text = with_pid(ADT, i)
        assert as_json(map_message(text)) == cold(text)
        warmed()


@pytest.mark.parametrize("case", [
    # the warm-up's field shapes, so the remembered masked entries and templates are used:
    {"pid5": "Fam9^Eve^Eve^Jr^Dr^^L~Maiden9^Eve^^^^^M"},  # given and middle name alike: one given name
    {"pid3": "P5^^^V2FHIR&1.2.3.4.5&ISO^MR~DL5^^^WADMV&1.3.4.7&ISO^DL",
     "pid2": "P5^^^V2FHIR&1.2.3.4.5&ISO^MR"},  # PID-2 (remembered as sent) repeats PID-3: one identifier
    {"pid5": "Fam9^Given9^M^Jr^Dr^^L~Maiden9^Given9^^^^^M"},  # a middle initial that is also a code
    # other shapes:
    {"pid3": "X77^^^V2FHIR&1.2.3.4.5&ISO^MR~X77^^^V2FHIR&1.2.3.4.5&ISO^MR"},  # the same identifier twice
    {"pid5": "M\\S\\ller^J\\T\\K~Müller^Jörg"},  # escapes, and text beyond ASCII
    {"pid5": f"Fam{holes.placeholder(0)}^Given~Other^Name"},  # text that looks like a placeholder
    {"pid5": "F^M~S^W"},  # one-letter names that are also codes elsewhere in the resource
    {"pid5": "Family5^^^^^^L~Maiden5"},  # empty components between
    {"pid3": "Z1^^^V2FHIR&1.2.3.4.5&ISO^MR^^20190101", "pid5": "Solo"},  # one component only
])
def test_new_patients_map_as_a_cold_mapper_maps_them(case: dict[str, str]) -> None:
    warmed()
    text = with_pid(ADT, 5000, **case)
    first = as_json(map_message(text))
    assert as_json(map_message(text)) == first, "the second time, the texts other fields remembered are memo hits"
    assert first == cold(text)


def test_a_masked_entry_that_does_not_reproduce_the_interpreter_is_not_used() -> None:
    """If the analysis took a coded component for text, the check against the interpreter
    catches it: the identifier type (CX.5, a vocabulary) made a placeholder is refused."""
    warmed()
    fp = plan_of("PID[Patient]", 3)
    wrong = dataclasses.replace(fp, holes=(1, 5))
    memo = field_rules.FieldMemo()
    memo.keep = False
    seg = SimpleNamespace(id="PID", delimiters=D, fields=[])
    ctx = SimpleNamespace(created=None, default_tz="+00:00", emit=frozenset(), delimiters="|^~\\&#")
    raw = "Q1^^^V2FHIR&1.2.3.4.5&ISO^MR"
    log = field_rules.WriteLog()
    field_rules.run_field(wrong, raw, raw, None, memo, seg, log, ctx, None, 0)  # type: ignore[arg-type]
    assert list(memo.holed.values()) == [b""]
    assert log[0][0] == field_rules.NEW_ENTRY and b'"MR"' in log[0][1]


def _renamed(text: str, rng: random.Random) -> str:
    """``text`` with the names and identifiers of its PID, NK1, PV1 and IN1 segments replaced by
    new ones (components that are words of three letters or more, or codes with digits)."""
    segs = []
    for seg in text.split("\r"):
        if seg[:3] in ("PID", "NK1", "PV1", "IN1"):
            fields = seg.split("|")
            for i in range(1, len(fields)):
                reps = fields[i].split("~")
                for r, rep in enumerate(reps):
                    comps = rep.split("^")
                    for c, comp in enumerate(comps):
                        if re.fullmatch(r"[A-Za-z][A-Za-z ]{2,}", comp):
                            comps[c] = rng.choice(["Ann", "Bo", "Cy", "Di", "Ed"]) + "".join(
                                rng.choice("aeioulmnrst") for _ in range(rng.randint(2, 6)))
                        elif re.fullmatch(r"[A-Z0-9]*[0-9][A-Z0-9-]{2,}", comp):
                            comps[c] = "".join(rng.choice("0123456789") for _ in range(len(comp)))
                    reps[r] = "^".join(comps)
                fields[i] = "~".join(reps)
            seg = "|".join(fields)
        segs.append(seg)
    return "\r".join(segs)


def test_every_corpus_message_with_new_names_and_identifiers_maps_as_a_cold_mapper() -> None:
    """The shared corpus, each message three times with other names and identifiers: the third
    (masked entries and templates made by the first two) equals a cold mapping of it."""
    spec = importlib.util.spec_from_file_location(
        "build_v2_corpus_snapshot", Path(__file__).resolve().parents[2] / "fixtures" / "scripts" /
        "build_v2_corpus_snapshot.py")
    assert spec is not None and spec.loader is not None
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    hl7v2 = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "hl7v2"
    rng = random.Random(3)
    compared = 0
    for where, msg in builder.corpus_messages(hl7v2):
        text = "\r".join(seg.raw for seg in msg.segments)
        variants = [_renamed(text, rng) for _ in range(3)]
        forget_everything()
        for v in variants[:2]:
            map_message(v)
        warm = as_json(map_message(variants[2]))
        assert warm == cold(variants[2]), where
        compared += 1
    assert compared >= 170


def _vocabularies_read(rules: Any, seen: set[str]) -> set[str]:
    """The vocabularies the rules (and the datatype maps they use, all the way down) look up."""
    from mapping.v2.tables import datatype_maps

    found = {rule["vocab"] for rule in rules if rule["vocab"]}
    for rule in rules:
        if rule["map"] and rule["map"] not in seen and datatype_maps().get(rule["map"]):
            seen.add(rule["map"])
            found |= _vocabularies_read(datatype_maps()[rule["map"]], seen)
    return found


def test_every_left_out_component_passes_its_text_through_whatever_the_text() -> None:
    """For every field of every segment map with components to leave out: texts drawn from the
    codes of the vocabularies its rules look up (anywhere), from all codes and new words, in
    those components, give exactly what the rule interpreter writes once put into the masked
    text's entry. So the analysis, not the one check made per masked text, is what later texts
    rely on."""
    from mapping.v2.engine import Context
    from mapping.v2.tables import vocabularies

    def plain(codes: Any) -> list[str]:
        return sorted(c for c in codes if holes.masked(c, (1,), D) is not None)  # type: ignore[arg-type]

    every_code = plain({code for table in vocabularies().values() for code in table})
    rng = random.Random(11)
    ctx = Context("+00:00", frozenset({"Patient", "Practitioner", "Organization", "Location"}))
    checked = 0
    for mapname in sorted(segment_maps()):
        for fp in field_rules.segment_plan(mapname) or ():
            if not fp.holes:
                continue
            own = plain({code for name in _vocabularies_read(fp.rules, set()) for code in vocabularies()[name]})
            seg = SimpleNamespace(id=mapname.split("[")[0], delimiters=D)
            for _ in range(40):
                comps = [rng.choice(["", "X", "L", "1", "20200101"]) for _ in range(max(fp.holes) + 2)]
                pick = [rng.choice(own) if own and rng.random() < 0.5 else rng.choice(every_code)
                        if rng.random() < 0.6 else f"W{rng.randint(0, 999)}x" for _ in fp.holes]
                if len(set(pick)) != len(pick):
                    continue
                for c, word in zip(fp.holes, pick, strict=True):
                    comps[c - 1] = word
                raw = "^".join(comps)
                cut = holes.masked(raw, fp.holes, D)  # type: ignore[arg-type]
                assert cut is not None
                masked_text, texts, _ = cut
                entry_placed, _ = field_rules._interpret(fp, masked_text, None, seg, ctx)  # type: ignore[arg-type]
                placed, _ = field_rules._interpret(fp, raw, None, seg, ctx)  # type: ignore[arg-type]
                entry = orjson.dumps([[w, field_rules._fragment(v), i] for w, v, i in entry_placed])
                writes = orjson.dumps([[w, field_rules._fragment(v), i] for w, v, i in placed])
                assert holes.fill(entry, texts) == writes, (mapname, fp.field, raw)
                checked += 1
    assert checked > 3000
