"""From inbox rows to FHIR resources in the store: map, write, record, dead-letter, replay.

Two halves, so the CPU-bound one can run in another process:

- :func:`map_batch` is pure: it parses each raw message, maps it (a mapper
  exception only dead-letters its own message, so a poison message never blocks
  the ones behind it), builds its ACK and prepares all resources of the batch for
  the store (:func:`store.prepare.prepare`: ids, hashes, bodies, search-index rows).
  Its result pickles, so the listener runs it in a worker process.
- :func:`commit_mapped` runs in the writer: one ``Store.write_prepared`` for the
  whole batch, dead letters, and the outcome rows in one inbox statement. If the
  store refuses the batch, messages are written one by one to find the culprit.

Batches are written in inbox order by a single writer (mapping of the next batch
may run meanwhile: mapping reads nothing from the store), so messages about one
patient are applied in the order they were received.

Re-processing is always safe: the mapper gives deterministic ids and the store
makes no new version for identical content. That is what crash recovery
(rows left ``received``) and :func:`replay_dead_letters` rely on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

from ingest.hl7v2.ack import build_ack
from ingest.hl7v2.convert import map_message
from ingest.hl7v2.er7 import Message, parse_segments, split_segments
from ingest.hl7v2.errors import ErrorCode, HL7Error
from ingest.hl7v2.inbox import Inbox, error_issue
from ingest.hl7v2.structure import required_segments, structure_of
from ingest.hl7v2.timezone import DEFAULT_TIMEZONE, offset_at
from ingest.hl7v2.write_policy import create_only, in_one_write, merges
from store.prepare import PreparedBatch, prepare
from store.store import Store, StoreError


class MapResult(Protocol):
    """What the v2 mapper returns for one message."""

    resources: list[dict[str, Any]]
    mapped: bool
    notes: list[Any]


Mapper = Callable[[Message], MapResult]


ESSENTIAL_SEGMENTS = ("PID",)
"""Required segments a message is not mapped without (AE, HL7 code 100). Grouping is otherwise lenient:
real feeds often leave out segments their structure requires (an ADT without EVN) and still map well,
but every resource of a patient-centred message hangs on its PID."""


def map_v2(msg: Message, timezone: str = DEFAULT_TIMEZONE) -> MapResult:
    """The project's HL7 v2 → FHIR mapper: group by message structure, then ``mapping.v2.map_grouped``;
    times sent without an offset (and without one in MSH-7) are in the sender's ``timezone``
    (:mod:`ingest.hl7v2.timezone`)."""
    structure = structure_of(msg)
    required = required_segments(structure, msg.version)
    for seg_id in ESSENTIAL_SEGMENTS:
        if seg_id in required and msg.segment(seg_id) is None:
            raise HL7Error(f"required segment {seg_id} missing in {structure}",
                           code=ErrorCode.SEGMENT_SEQUENCE_ERROR, segment_id=seg_id, rejects=False)
    return map_message(msg, default_tz=offset_at(timezone, msg.msh.get(7)), structure=structure)


def default_mapper(timezone: str = DEFAULT_TIMEZONE) -> Mapper:
    """The mapper used when the caller names none (a partial of :func:`map_v2`: it travels to worker processes)."""
    return map_v2 if timezone == DEFAULT_TIMEZONE else partial(map_v2, timezone=timezone)


@dataclass(slots=True)
class Work:
    """One committed inbox row waiting to be processed (the raw text travels; workers parse it)."""

    inbox_id: int
    raw: str
    answered: bool = False
    """Its final ACK went out when it was committed (``ack_on_commit``): the inbox keeps that one,
    so mapping builds none."""


@dataclass(slots=True)
class Outcome:
    """Result of processing one row; ``ack`` is the application-level ACK (AA/AE, or AR if unreadable).

    ``error`` is the reason as a JSON-able issue (see :func:`ingest.hl7v2.inbox.error_issue`).
    """

    inbox_id: int
    status: str
    ack: str
    resource_ids: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: dict[str, Any] | None = None

    def as_row(self) -> dict[str, Any]:
        return {
            "inbox_id": self.inbox_id,
            "status": self.status,
            "ack": self.ack,
            "resource_ids": self.resource_ids or None,
            "notes": self.notes or None,
            "error": self.error,
        }


@dataclass(slots=True)
class Mapped:
    """What :func:`map_batch` hands the writer: one outcome per work, and the batch's prepared resources.

    Outcomes with status ``processed`` still lack their resource ids: ``spans[i]`` is the
    range of positions of work ``i``'s resources in ``prepared``, filled in by the writer.
    """

    outcomes: list[Outcome]
    prepared: PreparedBatch
    spans: list[tuple[int, int]]


def _note_text(note: Any) -> str:
    return note if isinstance(note, str) else str(note)


def _failure(inbox_id: int, message: Message | str, err: HL7Error, status: str = "dead") -> Outcome:
    return Outcome(inbox_id, status, build_ack(message, errors=[err], mode="original"), error=error_issue(err))


def _mapping_error(exc: Exception) -> HL7Error:
    if isinstance(exc, HL7Error):
        exc.rejects = False
        return exc
    return HL7Error(
        f"mapping to FHIR failed: {type(exc).__name__}: {exc}",
        code=ErrorCode.APPLICATION_INTERNAL_ERROR,
        rejects=False,
    )


def _store_error(exc: StoreError) -> HL7Error:
    where = f" at {exc.expression}" if exc.expression else ""
    return HL7Error(
        f"store refused the mapped resources: {exc}{where}",
        code=ErrorCode.APPLICATION_INTERNAL_ERROR,
        rejects=False,
    )


def _map_one(work: Work, mapper: Mapper) -> tuple[Outcome, list[dict[str, Any]], frozenset[int]]:
    """Parse and map one row: its outcome (final unless ``processed``), its resources and the positions
    of those it may only create (:mod:`ingest.hl7v2.write_policy`)."""
    try:
        msg = parse_stored(work.raw)
    except HL7Error as err:  # stored before a parser change made it unreadable: answer as a reject
        return _failure(work.inbox_id, work.raw, err, "rejected"), [], frozenset()
    try:
        result = mapper(msg)
    except Exception as exc:  # a mapper bug must dead-letter this message only
        return _failure(work.inbox_id, msg, _mapping_error(exc)), [], frozenset()
    notes = [_note_text(n) for n in result.notes or []]
    if not result.mapped:
        return _not_mapped(work.inbox_id, msg, notes), [], frozenset()
    warnings = [n for n in result.notes or [] if isinstance(n, HL7Error)]
    ack = "" if work.answered else build_ack(msg, errors=warnings, mode="original")
    resources = list(result.resources)
    return (Outcome(work.inbox_id, "processed", ack, notes=notes), resources,
            create_only(msg.message_type, resources))


def unmapped(work: Work, reason: str) -> Mapped:
    """What a message whose mapping never came back gets (it hung, or its worker died): dead-lettered,
    AE, like a mapper failure."""
    err = HL7Error(f"mapping to FHIR {reason}", code=ErrorCode.APPLICATION_INTERNAL_ERROR, rejects=False)
    try:
        msg: Message | str = parse_stored(work.raw)
    except HL7Error:
        msg = work.raw
    return Mapped([_failure(work.inbox_id, msg, err)], PreparedBatch(), [(0, 0)])


def map_batch(works: list[Work], mapper: Mapper | None = None) -> Mapped:
    """Parse, map, acknowledge and prepare a batch (pure: reads nothing from the store; runs in any process).

    A message with a resource the store would refuse is failed whole (its other
    resources are not written either), like a refused ``Store.write``.
    """
    mapper = mapper or default_mapper()
    outcomes: list[Outcome] = []
    resources: list[list[dict[str, Any]]] = []
    creates: list[frozenset[int]] = []
    for work in works:
        out, res, only = _map_one(work, mapper)
        outcomes.append(out)
        resources.append(res)
        creates.append(only)
    while True:
        flat = [r for res in resources for r in res]
        owner = [i for i, res in enumerate(resources) for _ in res]
        counts = list(map(len, resources))
        prepared, refused = prepare(flat, in_one_write(zip(counts, creates, strict=True)),
                                    in_one_write((n, merges(res)) for n, res in zip(counts, resources, strict=True)))
        if not refused:
            break
        for pos, exc in refused:  # rare: drop the messages concerned and prepare the rest again
            i = owner[pos]
            if resources[i]:
                outcomes[i] = _failure(works[i].inbox_id, works[i].raw, _store_error(exc))
                resources[i], creates[i] = [], frozenset()
    spans, pos = [], 0
    for res in resources:
        spans.append((pos, pos + len(res)))
        pos += len(res)
    return Mapped(outcomes, prepared, spans)


def commit_mapped(
    store: Store, inbox: Inbox, works: list[Work], mapped: Mapped, mapper: Mapper | None = None
) -> list[Outcome]:
    """Write a mapped batch, its dead letters and its outcome rows (blocking: call from a worker thread)."""
    outcomes = write_mapped(store, works, mapped, mapper)
    record_batch(store, inbox, works, outcomes)
    return outcomes


def write_mapped(store: Store, works: list[Work], mapped: Mapped, mapper: Mapper | None = None) -> list[Outcome]:
    """The store write of a mapped batch; afterwards every outcome is final (blocking).

    Once this returns the ACKs may go out: what AA promises is in the store, and if the
    outcome rows are not recorded (a crash), the rows stay ``received`` and are processed
    again, idempotently.
    """
    outcomes = mapped.outcomes
    todo = [i for i, out in enumerate(outcomes) if out.status == "processed"]
    try:
        results = store.write_prepared(mapped.prepared) if todo else []
    except StoreError:  # find the culprit: message by message, from a fresh mapping
        _write_one_by_one(store, works, outcomes, todo, mapper or default_mapper())
    else:
        ids = [f"{r.resource_type}/{r.id}" for r in results]
        for i in todo:
            start, stop = mapped.spans[i]
            outcomes[i].resource_ids = ids[start:stop]
    return outcomes


def record_batch(store: Store, inbox: Inbox, works: list[Work], outcomes: list[Outcome]) -> None:
    """Dead letters of the failed messages, and every outcome row in one statement (blocking)."""
    for work, out in zip(works, outcomes, strict=True):
        if out.status == "dead" and out.error is not None:
            store.dead_letter(_dl_source(work.inbox_id), None, "hl7v2", work.raw, [out.error])
    inbox.record_outcomes([o.as_row() for o in outcomes])


def _write_one_by_one(
    store: Store, works: list[Work], outcomes: list[Outcome], todo: list[int], mapper: Mapper
) -> None:
    for i in todo:
        msg = parse_stored(works[i].raw)
        try:
            resources = mapper(msg).resources
            written = store.write(resources, if_absent=create_only(msg.message_type, resources),
                                  merge=merges(resources))
        except StoreError as exc:
            outcomes[i] = _failure(works[i].inbox_id, msg, _store_error(exc))
            continue
        outcomes[i].resource_ids = [f"{r.resource_type}/{r.id}" for r in written]


def process_batch(store: Store, inbox: Inbox, works: list[Work], mapper: Mapper | None = None) -> list[Outcome]:
    """Map, write and record a batch of inbox rows in this process (blocking: call from a worker thread)."""
    return commit_mapped(store, inbox, works, map_batch(works, mapper), mapper)


def _not_mapped(inbox_id: int, msg: Message, notes: list[str]) -> Outcome:
    text = f"stored, not mapped: no FHIR mapping for {msg.message_type} {msg.trigger_event}"
    info = HL7Error(
        text, code=ErrorCode.UNSUPPORTED_MESSAGE_TYPE, segment_id="MSH", segment_seq=1, field=9, severity="I"
    )
    ack = build_ack(msg, errors=[info], mode="original", text=text)
    return Outcome(inbox_id, "not-mapped", ack, notes=[text, *notes])


INBOX_LETTERS = "mllp/hl7_inbox/"
"""Where the dead letters of inbox rows say they come from (the row's id follows)."""


def _dl_source(inbox_id: int) -> str:
    return f"{INBOX_LETTERS}{inbox_id}"


def parse_stored(raw: str) -> Message:
    """Re-parse a stored raw message (recovery and replay)."""
    return parse_segments(split_segments(raw), raw)


@dataclass(slots=True)
class ReplaySummary:
    """What a replay of dead letters did."""

    attempted: int = 0
    processed: int = 0
    not_mapped: int = 0
    still_dead: int = 0
    unreadable: int = 0
    errors: list[str] = field(default_factory=list)


def replay_dead_letters(store: Store, mapper: Mapper | None = None, *, batch_size: int = 500) -> ReplaySummary:
    """Re-process every ``dead`` inbox row (e.g. after a mapper fix); successes leave the dead letters.

    Rows rejected as unreadable are re-parsed too, so a parser fix also recovers them.
    Conflicts are not replayed: they need a person to decide which content is right.
    """
    inbox = Inbox(store)
    mapper = mapper or default_mapper()
    summary = ReplaySummary()
    letters: dict[str, list[str]] = {}
    for dl in store.dead_letters():
        letters.setdefault(dl["source"], []).append(dl["dl_id"])
    works = [Work(inbox_id, raw) for inbox_id, raw in inbox.rows(("dead", "rejected"))]
    summary.attempted = len(works)
    for start in range(0, len(works), batch_size):
        for out in process_batch(store, inbox, works[start : start + batch_size], mapper):
            if out.status in ("dead", "rejected"):
                summary.still_dead += out.status == "dead"
                summary.unreadable += out.status == "rejected"
                reason = out.error["diagnostics"] if out.error else out.status
                summary.errors.append(f"inbox {out.inbox_id}: {reason}")
                continue
            summary.processed += out.status == "processed"
            summary.not_mapped += out.status == "not-mapped"
            for dl_id in letters.get(_dl_source(out.inbox_id), []):
                store.mark_replayed(dl_id)
    return summary
