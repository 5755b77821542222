"""HL7 v2 files through ``fhirtwin ingest``: what lands, what is kept raw and why, what replay does,
which files a folder walk takes, and the progress an import reports."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import pytest

from fhirtwin.demo import expected_records
from ingest.hl7v2 import read_batch
from ingest.pipeline import Ingestor
from store.store import Store

HL7 = Path(__file__).resolve().parents[2] / "fixtures" / "hl7v2"
ADMIT = (HL7 / "adt_a01_admit.hl7").read_bytes()
UPDATE = (HL7 / "adt_a08_update.hl7").read_bytes()
CUSTOM = (HL7 / "hl7apy_ZDT_Z01_custom_Z_message.hl7").read_bytes()  # a Z message: no FHIR map


def _lines(data: bytes) -> list[int]:
    return [entry.first_line for entry in read_batch(data).entries]


def test_a_message_without_a_map_is_kept_raw_not_rejected_and_stays_so_on_replay(tmp_path: Path) -> None:
    src = tmp_path / "feed.hl7"
    src.write_bytes(ADMIT + CUSTOM)
    store = Store(":memory:")
    summary = Ingestor(store).ingest_paths([src])
    assert (summary.rejected, summary.not_mapped) == (0, 1)
    assert summary.accepted > 0 and not summary.errors
    line = _lines(ADMIT + CUSTOM)[1]
    assert summary.notes == [f"{src}:{line}: ZDT^Z01 is not mapped to FHIR at MSH-9"]
    (letter,) = store.dead_letters()
    assert (letter["format"], letter["line"]) == ("hl7v2", line)
    assert letter["raw"].startswith("MSH|") and "ZDT^Z01" in letter["raw"]
    assert letter["reason"] == [{"severity": "information", "code": "not-supported",
                                 "diagnostics": "ZDT^Z01 is not mapped to FHIR", "expression": ["MSH-9"]}]
    for _ in range(2):  # still no map: kept as it was, one letter, not counted as a failure
        again = Ingestor(store).replay_dead_letters()
        assert (again.not_mapped, again.rejected, again.accepted) == (1, 0, 0)
        assert [d["dl_id"] for d in store.dead_letters()] == [letter["dl_id"]]


def test_a_mapper_bug_dead_letters_one_message_and_replay_maps_it_after_the_fix(tmp_path: Path) -> None:
    src = tmp_path / "feed.hl7"
    src.write_bytes(ADMIT + UPDATE)
    store = Store(":memory:")
    ingestor = Ingestor(store)
    real = ingestor.hl7_mapper

    def buggy(msg: Any) -> Any:
        if msg.control_id == "CTRL-A08-1":
            raise KeyError("PV1-3 table")
        return real(msg)

    ingestor.hl7_mapper = buggy
    summary = ingestor.ingest_paths([src])  # the import goes on past the bug
    line = _lines(ADMIT + UPDATE)[1]
    assert summary.rejected == 1 and summary.accepted > 0
    assert summary.errors == [f"{src}:{line}: mapping failed: KeyError: 'PV1-3 table'"]
    (letter,) = store.dead_letters()
    assert letter["line"] == line and "CTRL-A08-1" in letter["raw"]
    provenances = store.count("Provenance")

    replay = Ingestor(store).replay_dead_letters()  # the fix: the real mapper
    assert (replay.rejected, replay.not_mapped) == (0, 0) and replay.accepted > 0
    assert store.dead_letters() == []
    assert store.dead_letters(include_replayed=True)[0]["replayed"]
    assert store.count("Provenance") == provenances + 1  # the A08 landed, with its Provenance


def test_the_listeners_dead_letters_are_left_to_the_inbox_replay(tmp_path: Path) -> None:
    store = Store(":memory:")
    store.dead_letter("mllp/hl7_inbox/7", None, "hl7v2", ADMIT.decode(), [{"severity": "error"}])
    summary = Ingestor(store).replay_dead_letters()
    assert (summary.accepted, summary.rejected, summary.not_mapped) == (0, 0, 0)
    assert len(store.dead_letters()) == 1


def test_a_folder_walk_takes_the_known_files_and_counts_the_others(tmp_path: Path) -> None:
    folder = tmp_path / "export"
    (folder / "nested").mkdir(parents=True)
    (folder / "nested" / "admit.hl7").write_bytes(ADMIT)
    (folder / "nested" / "update.txt").write_bytes(b"\xef\xbb\xbf" + UPDATE)  # ER7 as engines often name it
    (folder / "README.md").write_text("what this export holds\n")
    (folder / "README.txt").write_text("MSH segments start each message\n")
    (folder / "MANIFEST.tsv").write_text("file\tcount\n")
    named = tmp_path / "notes.docx"
    named.write_bytes(b"PK\x03\x04")
    store = Store(":memory:")
    summary = Ingestor(store).ingest_paths([folder, named])
    assert (summary.files, summary.skipped, summary.rejected) == (3, 3, 1)
    assert summary.accepted > 0 and store.count("Provenance") == 2  # the admit and the update
    # named on its own: refused, and said why
    assert summary.errors == [f"{named}: not a format fhirtwin reads (FHIR JSON, NDJSON or XML; HL7 v2 ER7)"]


def test_progress_counts_messages_lines_and_files(tmp_path: Path) -> None:
    batch = HL7 / "pyhl7_batch_FHS_BHS_3msgs.hl7"
    gz = tmp_path / "p.ndjson.gz"
    gz.write_bytes(gzip.compress(b'{"resourceType":"Patient","id":"a"}\n\n{"resourceType":"Patient","id":"b"}\n'))
    bundle = tmp_path / "b.json"
    bundle.write_text('{"resourceType":"Patient","id":"c"}')
    assert [expected_records(p) for p in (batch, gz, bundle)] == [3, 2, 1]
    seen: dict[Path, int] = {}
    store = Store(":memory:")
    Ingestor(store).ingest_paths([batch, gz, bundle], on_progress=lambda path, n: seen.__setitem__(path, n))
    assert seen == {batch: 3, gz: 2, bundle: 1}


def test_a_bulk_import_reports_progress_per_chunk(tmp_path: Path) -> None:
    src = tmp_path / "p.ndjson"
    src.write_text("".join(f'{{"resourceType":"Patient","id":"p{i}"}}\n' for i in range(25)))
    reported: list[int] = []
    store = Store(":memory:")
    summary = Ingestor(store, workers=0, bulk_min_bytes=0).ingest_ndjson_parallel(
        src, lines_per_chunk=10, on_lines=reported.append)
    assert summary.accepted == 25
    assert reported == [10, 20, 30]  # the lines reached, chunk by chunk (the last chunk is partial)


@pytest.mark.parametrize("name", ["pyhl7_MALFORMED_file_nested_FHS.hl7", "pyhl7_MALFORMED_batch_missing_MSH.hl7"])
def test_text_outside_any_message_stays_one_letter_with_its_reason_on_replay(name: str) -> None:
    store = Store(":memory:")
    summary = Ingestor(store).ingest_paths([HL7 / name])
    cut_short = name == "pyhl7_MALFORMED_file_nested_FHS.hl7"  # the nested FHS leaves the message before it no PID
    assert summary.rejected == 1 + cut_short
    (letter,) = [d for d in store.dead_letters() if "required segment PID" not in d["reason"][0]["diagnostics"]]
    for _ in range(2):
        replay = Ingestor(store).replay_dead_letters()
        assert (replay.rejected, replay.accepted) == (1 + cut_short, 0)
        reason = letter["reason"][0]["diagnostics"]
        assert f"{HL7 / name}:{letter['line']}: still unreadable: {reason}" in replay.errors
        assert letter in store.dead_letters()  # the same letter, its reason as the file gave it
        assert len(store.dead_letters()) == 1 + cut_short


def test_a_named_file_that_is_missing_or_unreadable_is_refused_and_the_rest_goes_on(tmp_path: Path) -> None:
    good = tmp_path / "admit.hl7"
    good.write_bytes(ADMIT)
    looped = tmp_path / "looped.hl7"  # a symlink to itself: unreadable, for root too
    looped.symlink_to(looped)
    missing_json, missing_txt, missing_doc = (tmp_path / f"gone.{suffix}" for suffix in ("json", "txt", "doc"))
    store = Store(":memory:")
    summary = Ingestor(store).ingest_paths([missing_json, missing_txt, missing_doc, looped, good])
    expected = [expected_records(p) for p in (missing_json, missing_txt, looped)]  # the progress bar too
    assert summary.accepted > 0 and store.count("Provenance") >= 1
    reasons = dict(e.split(": ", 1) for e in summary.errors)
    assert reasons[str(missing_json)] == reasons[str(missing_txt)] == "cannot read the file: No such file or directory"
    assert reasons[str(missing_doc)] == "no such file"
    assert reasons[str(looped)] == "cannot read the file: Too many levels of symbolic links"
    assert expected == [1, 1, 1]
