"""File ingestion into the store: detect, read, check, write in batches, keep the refused.

Valid records in a file land even when others in the same file are refused; the
refused ones go to the store's dead-letter table with the raw text and the
reason, from which they can be re-ingested after a fix.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from itertools import count
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import orjson

from ingest import bulk
from ingest.fhir_files import detect_format, iter_files, read_json, read_ndjson, read_xml, resources_from_json
from ingest.fhir_xml import FhirXmlError, xml_to_resource
from ingest.hl7v2 import HL7Error, read_batch
from ingest.hl7v2.processor import INBOX_LETTERS, Mapper, default_mapper, map_v2
from ingest.hl7v2.timezone import DEFAULT_TIMEZONE
from ingest.hl7v2.write_policy import create_only, in_one_write, merges
from ingest.r4_check import r4_validator
from ingest.records import Problem, Record
from store.gc_pause import paused_gc
from store.search import SearchError, SearchRequest, search
from store.store import Store, StoreError

BATCH_SIZE = 5000

Validator = Callable[[dict[str, Any]], list[Problem]]


@dataclass
class IngestSummary:
    """What an ingest run did, for people and for tests."""

    files: int = 0
    accepted: int = 0
    unchanged: int = 0
    rejected: int = 0
    not_mapped: int = 0
    """HL7 v2 messages of a type without a FHIR map: not an error; kept raw (see :meth:`Ingestor._keep`)."""
    skipped: int = 0
    """Files inside the given folders that no reader knows by name (manifests, READMEs)."""
    by_type: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """Where and why each not-mapped message was kept."""
    warnings: list[str] = field(default_factory=list)
    """Where and what was accepted with a caveat (``Record.warnings``)."""

    def add(self, other: IngestSummary) -> None:
        self.files += other.files
        self.accepted += other.accepted
        self.unchanged += other.unchanged
        self.rejected += other.rejected
        self.not_mapped += other.not_mapped
        self.skipped += other.skipped
        self.by_type.update(other.by_type)
        self.errors.extend(other.errors)
        self.notes.extend(other.notes)
        self.warnings.extend(other.warnings)


def hl7_records(data: str | bytes, source: str, mapper: Mapper = map_v2) -> Iterator[Record]:
    """One record per message of ER7 text (a file, a batch, or one kept message), mapped to FHIR with
    the v2 mapper."""
    for entry in read_batch(data).entries:
        rec = Record(source=source, line=entry.first_line, raw=entry.raw, format="hl7v2")
        if entry.message is None:
            err = entry.error
            rec.problems.append(Problem(_hl7_text(err), _hl7_location(err), "structure"))
        else:
            try:
                result = mapper(entry.message)
            except Exception as exc:  # a mapper bug must dead-letter this message only, not end the import
                rec.problems.append(Problem(f"mapping failed: {_hl7_text(exc)}", _hl7_location(exc), "processing"))
            else:
                if result.mapped:
                    rec.resources = result.resources
                    rec.create_only = create_only(entry.message.message_type, result.resources)
                    rec.merges = merges(result.resources)
                    rec.warnings = [f"{rec.where()}: {_hl7_text(n)} at {_hl7_location(n)}"
                                    for n in result.notes if isinstance(n, HL7Error)]
                else:
                    msg = entry.message
                    rec.problems.append(Problem(f"{msg.message_type}^{msg.trigger_event} is not mapped to FHIR",
                                                "MSH-9", "not-supported", "information"))
        yield rec


def _hl7_text(err: object) -> str:
    """An HL7 error's text with its HL7 0357 code; where it is goes in the issue's expression."""
    if isinstance(err, HL7Error):
        return f"{err.text} (HL7 0357 code {int(err.code)})"
    return f"{type(err).__name__}: {err}"


def _hl7_location(err: object) -> str | None:
    """``PID[3]-5.1``-style location of an HL7 error, when it says where."""
    return err.location() or None if isinstance(err, HL7Error) else None


def _records(path: Path, resolve: Callable[[str], str | None], mapper: Mapper) -> Iterator[Record]:
    try:
        fmt = detect_format(path)
        if fmt == "ndjson":
            yield from read_ndjson(path, resolve)
        elif fmt == "json":
            yield from read_json(path, resolve)
        elif fmt == "xml":
            yield from read_xml(path, resolve)
        elif fmt == "hl7":
            yield from hl7_records(path.read_bytes(), str(path), mapper)
        elif not path.is_file():
            yield _file_problem(path, "no such file", "not-found")
        else:
            yield _file_problem(path, "not a format fhirtwin reads (FHIR JSON, NDJSON or XML; HL7 v2 ER7)",
                                "not-supported")
    except OSError as exc:  # gone or unreadable since the walk: this file is refused, the import goes on
        yield _file_problem(path, f"cannot read the file: {exc.strerror or exc}", "exception")


def _file_problem(path: Path, text: str, code: str) -> Record:
    rec = Record(source=str(path), line=None, raw=b"", format="unknown")
    rec.problems.append(Problem(text, None, code))
    return rec


def _counting(report: Callable[[int], None]) -> Callable[[Record], None]:
    """A per-record callback telling ``report`` how many records are done."""
    done = count(1)
    return lambda _rec: report(next(done))


BULK_MIN_BYTES = 8_000_000
# Resources per DuckDB transaction of a bulk import: DuckDB's row group size. Such appends skip the
# write-ahead log and fill whole row groups, compressed once instead of rewritten at the next commit.
BULK_COMMIT_RESOURCES = 122_880


class Ingestor:
    """Moves records into a store in batches, checking each resource on the way.

    NDJSON files of at least ``bulk_min_bytes`` are imported in bulk (:mod:`ingest.bulk`: chunks
    prepared by ``workers`` processes, or in this one with ``workers=0``, committed in large
    transactions) when the validator is the built-in R4 one (or none) and no per-record callback
    is asked for; the result in the store is the same as record by record.
    """

    def __init__(
        self,
        store: Store,
        validator: Validator | None = r4_validator,
        *,
        workers: int = 2,
        bulk_min_bytes: int = BULK_MIN_BYTES,
        hl7_timezone: str = DEFAULT_TIMEZONE,
    ) -> None:
        self.store = store
        self.validator = validator
        self.workers = workers
        self.bulk_min_bytes = bulk_min_bytes
        self.hl7_mapper = default_mapper(hl7_timezone)
        """The HL7 v2 mapper, with the zone of senders' times that carry no offset (``ingest.hl7v2.timezone``)."""

    def resolve_conditional(self, reference: str) -> str | None:
        """``Type/id`` of the one stored resource a conditional reference (``Type?query``) matches."""
        rtype, _, query = reference.partition("?")
        try:
            result = search(self.store, SearchRequest(rtype, parse_qsl(query, keep_blank_values=True), count=2,
                                                      strict=True))
        except SearchError:
            return None
        return f"{rtype}/{result.keys[0][1]}" if result.total == 1 else None

    def _check(self, rec: Record) -> None:
        if self.validator is None or not rec.ok:
            return
        for i, res in enumerate(rec.resources):
            for problem in self.validator(res):
                if len(rec.resources) > 1 and problem.expression and rec.format != "hl7v2":
                    problem.expression = f"Bundle.entry[{i}].resource.{problem.expression}"
                rec.problems.append(problem)

    def ingest_records(self, records: Iterable[Record], on_record: Callable[[Record], None] | None = None) -> IngestSummary:
        """Write good records in batches; dead-letter the rest. Bundles are written whole."""
        summary = IngestSummary()
        pending: list[Record] = []
        pending_count = 0
        for rec in records:
            self._check(rec)
            if not rec.ok:
                if all(p.severity == "information" for p in rec.problems):
                    self._keep(rec, summary)
                else:
                    self._refuse(rec, summary)
            else:
                pending.append(rec)
                pending_count += len(rec.resources)
                if pending_count >= BATCH_SIZE:
                    self._flush(pending, summary)
                    pending, pending_count = [], 0
            if on_record:
                on_record(rec)
        if pending:
            self._flush(pending, summary)
        return summary

    def _flush(self, batch: list[Record], summary: IngestSummary) -> None:
        creates = in_one_write((len(rec.resources), rec.create_only) for rec in batch)
        merged = in_one_write((len(rec.resources), rec.merges) for rec in batch)
        try:
            results = self.store.write([res for rec in batch for res in rec.resources], if_absent=creates,
                                       merge=merged)
        except StoreError:
            # One bad resource must not sink the batch: retry record by record to isolate it.
            for rec in batch:
                try:
                    results = self.store.write(rec.resources, if_absent=rec.create_only, merge=rec.merges)
                except StoreError as exc:
                    rec.problems.append(Problem(str(exc), exc.expression, exc.code))
                    self._refuse(rec, summary)
                    continue
                self._tally(results, summary)
                summary.warnings.extend(rec.warnings)
            return
        self._tally(results, summary)
        for rec in batch:
            summary.warnings.extend(rec.warnings)

    @staticmethod
    def _tally(results: list[Any], summary: IngestSummary) -> None:
        for r in results:
            if r.outcome == "unchanged":
                summary.unchanged += 1
            else:
                summary.accepted += 1
            summary.by_type[r.resource_type] += 1

    def _refuse(self, rec: Record, summary: IngestSummary) -> None:
        summary.rejected += 1
        summary.errors.append(self._dead_letter(rec))

    def _keep(self, rec: Record, summary: IngestSummary) -> None:
        """A message nothing maps (yet): kept raw with its note among the dead letters, so that
        ``fhirtwin replay`` maps it once a map exists; counted apart, since it is not an error."""
        summary.not_mapped += 1
        summary.notes.append(self._dead_letter(rec))

    def _dead_letter(self, rec: Record) -> str:
        """Keep ``rec`` raw with its reasons; what to tell people about it."""
        first = rec.problems[0]
        where = f" at {first.expression}" if first.expression else ""
        self.store.dead_letter(rec.source, rec.line, rec.format, rec.raw, [p.as_issue() for p in rec.problems])
        return f"{rec.where()}: {first.diagnostics}{where}"

    def ingest_paths(self, paths: Iterable[Path], on_progress: Callable[[Path, int], None] | None = None
                     ) -> IngestSummary:
        """Ingest every file under ``paths``. ``on_progress(path, n)``: ``n`` records of ``path`` are
        done (for a bulk import, ``n`` lines, reported per chunk)."""
        summary = IngestSummary()
        skipped: list[Path] = []
        with ExitStack() as stack:
            pool: ProcessPoolExecutor | None = None  # one for all the bulk files, from the first one on
            for path in iter_files(list(paths), skipped):
                report = None if on_progress is None else partial(on_progress, path)
                if self.bulk_eligible(path):
                    if pool is None and self.workers > 0:
                        pool = stack.enter_context(bulk.worker_pool(self.workers))
                    part = self.ingest_ndjson_parallel(path, pool=pool, on_lines=report)
                else:
                    counted = None if report is None else _counting(report)
                    part = self.ingest_records(_records(path, self.resolve_conditional, self.hl7_mapper), counted)
                part.files = 1
                summary.add(part)
        summary.skipped = len(skipped)
        return summary

    def bulk_eligible(self, path: Path) -> bool:
        """Whether a file takes the bulk path (large NDJSON, built-in validation); one that cannot be
        read does not (the record-by-record path refuses it with the reason)."""
        try:
            return (
                self.validator in (r4_validator, None)
                and detect_format(path) == "ndjson"
                and path.stat().st_size >= self.bulk_min_bytes
            )
        except OSError:
            return False

    def ingest_ndjson_parallel(
        self,
        path: Path,
        lines_per_chunk: int = bulk.CHUNK_LINES,
        commit_resources: int = BULK_COMMIT_RESOURCES,
        pool: ProcessPoolExecutor | None = None,
        on_lines: Callable[[int], None] | None = None,
    ) -> IngestSummary:
        """Import one (gzip) NDJSON file in bulk: chunks prepared by the worker processes (in this one
        with ``workers=0``), ``commit_resources`` per store commit. ``pool``: the import's workers
        (:func:`ingest.bulk.worker_pool`), started for this file alone when not given.

        Refused lines are dead-lettered as on the in-process path; Bundles take that path, after
        everything before them is committed (their conditional references search the store).
        With workers, a writer thread inserts chunks while the next ones are prepared
        (:class:`ingest.bulk.ImportWriter`). The cyclic collector is paused throughout: between the
        writer's own pauses its passes walked the map of current versions again as this thread
        unpickled the workers' chunks (~2–4 µs per resource; the import makes no reference cycles).
        ``on_lines(n)``: the lines up to ``n`` are done (reported per chunk).
        """
        if pool is None and self.workers > 0:
            with bulk.worker_pool(self.workers) as own:
                return self.ingest_ndjson_parallel(path, lines_per_chunk, commit_resources, own, on_lines)
        summary = IngestSummary()
        source = str(path)
        chunks = bulk.prepared_chunks(path, validate=self.validator is not None, pool=pool,
                                      in_flight=4 * self.workers, lines_per_chunk=lines_per_chunk)
        with paused_gc(), bulk.ImportWriter(self.store, commit_resources, threaded=pool is not None) as writer:
            for first, chunk in chunks:
                for refused in chunk.refused:
                    writer.call(self._refuse, bulk.refused_record(source, refused), summary)
                if len(chunk.prepared):
                    writer.write(chunk.prepared, partial(self._tally, summary=summary))
                if chunk.deferred:
                    writer.commit()
                    summary.add(self.ingest_records(
                        resources_from_json(orjson.loads(raw), source, line, raw, "ndjson", self.resolve_conditional)
                        for line, raw in chunk.deferred
                    ))
                if on_lines is not None:
                    on_lines(first + lines_per_chunk - 1)
        return summary

    def replay_dead_letters(self) -> IngestSummary:
        """Re-ingest the records files left in the dead letters (after a fix upstream or in fhirtwin):
        FHIR records, and HL7 v2 messages that failed or had no map; successes are marked replayed.

        The MLLP listener's dead letters are replayed with their inbox rows instead
        (:func:`ingest.hl7v2.processor.replay_dead_letters`).
        """
        summary = IngestSummary()
        for dl in self.store.dead_letters():
            fmt, raw = dl["format"], dl["raw"]
            if fmt == "hl7v2" and not dl["source"].startswith(INBOX_LETTERS):
                records: Iterable[Record] = list(hl7_records(raw, dl["source"], self.hl7_mapper))
                for rec in records:  # at the letter's place: a refusal updates that letter, never adds one
                    rec.line, rec.raw = dl["line"], raw
                if any(p.code == "structure" for rec in records for p in rec.problems):
                    # Text the file's batch structure left outside any message reads no better alone.
                    summary.rejected += 1
                    summary.errors.append(f"{dl['source']}:{dl['line']}: still unreadable: "
                                          f"{dl['reason'][0]['diagnostics']}")
                    continue
            elif fmt in ("json", "ndjson", "xml"):
                try:
                    obj = xml_to_resource(raw) if fmt == "xml" else orjson.loads(raw)
                except (orjson.JSONDecodeError, FhirXmlError) as exc:
                    summary.rejected += 1
                    summary.errors.append(f"{dl['source']}:{dl['line']}: still unreadable: {exc}")
                    continue
                records = [resources_from_json(obj, dl["source"], dl["line"], raw, fmt, self.resolve_conditional)]
            else:
                continue
            part = self.ingest_records(records)
            summary.add(part)
            if not (part.rejected or part.not_mapped):
                self.store.mark_replayed(dl["dl_id"])
        return summary
