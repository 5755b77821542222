"""From inbox rows to FHIR resources in the store: map, write, record, dead-letter, replay.

A batch of committed messages is mapped one by one (a mapper exception only
dead-letters its own message, so a poison message never blocks the ones behind
it), then all resources of the batch go to ``Store.write`` in one transaction.
If the store refuses that batch, messages are written one by one to find the
culprit. Batches are taken in inbox order by a single worker, so messages about
one patient are applied in the order they were received.

Re-processing is always safe: the mapper gives deterministic ids and the store
makes no new version for identical content. That is what crash recovery
(rows left ``received``) and :func:`replay_dead_letters` rely on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ingest.hl7v2.ack import build_ack
from ingest.hl7v2.er7 import Message, parse_segments, split_segments
from ingest.hl7v2.errors import ErrorCode, HL7Error
from ingest.hl7v2.inbox import Inbox, error_issue
from ingest.hl7v2.structure import group_message, structure_of
from mapping.v2 import map_grouped
from store.store import Store, StoreError


class MapResult(Protocol):
    """What the v2 mapper returns for one message."""

    resources: list[dict[str, Any]]
    mapped: bool
    notes: list[Any]


Mapper = Callable[[Message], MapResult]


def map_v2(msg: Message) -> MapResult:
    """The project's HL7 v2 → FHIR mapper: group by message structure, then ``mapping.v2.map_grouped``."""
    structure = structure_of(msg)
    root = group_message(msg, structure=structure)
    return map_grouped(msg, root, structure, event=f"{msg.message_type}^{msg.trigger_event}")


def default_mapper() -> Mapper:
    """The mapper used when the caller names none."""
    return map_v2


@dataclass(slots=True)
class Work:
    """One committed inbox row waiting to be processed."""

    inbox_id: int
    message: Message


@dataclass(slots=True)
class Outcome:
    """Result of processing one row; ``ack`` is the application-level ACK (AA/AE)."""

    inbox_id: int
    status: str
    ack: str
    resource_ids: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: HL7Error | None = None

    def as_row(self) -> dict[str, Any]:
        return {
            "inbox_id": self.inbox_id,
            "status": self.status,
            "ack": self.ack,
            "resource_ids": self.resource_ids or None,
            "notes": self.notes or None,
            "error": error_issue(self.error) if self.error else None,
        }


@dataclass(slots=True)
class _Mapped:
    work: Work
    resources: list[dict[str, Any]]
    notes: list[str]


def _note_text(note: Any) -> str:
    return note if isinstance(note, str) else str(note)


def _failure(work: Work, err: HL7Error) -> Outcome:
    ack = build_ack(work.message, errors=[err], mode="original")
    return Outcome(work.inbox_id, "dead", ack, error=err)


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


def process_batch(store: Store, inbox: Inbox, works: list[Work], mapper: Mapper) -> list[Outcome]:
    """Map, write and record a batch of inbox rows (blocking: call from a worker thread)."""
    outcomes: dict[int, Outcome] = {}
    mapped: list[_Mapped] = []
    for work in works:
        try:
            result = mapper(work.message)
        except Exception as exc:  # a mapper bug must dead-letter this message only
            outcomes[work.inbox_id] = _failure(work, _mapping_error(exc))
            continue
        notes = [_note_text(n) for n in result.notes or []]
        if not result.mapped:
            outcomes[work.inbox_id] = _not_mapped(work, notes)
            continue
        mapped.append(_Mapped(work, list(result.resources), notes))
    for item, written in _write(store, mapped):
        if isinstance(written, StoreError):
            outcomes[item.work.inbox_id] = _failure(item.work, _store_error(written))
        else:
            ack = build_ack(item.work.message, mode="original")
            outcomes[item.work.inbox_id] = Outcome(item.work.inbox_id, "processed", ack, written, item.notes)
    ordered = [outcomes[w.inbox_id] for w in works]
    for work, out in zip(works, ordered, strict=True):
        if out.status == "dead" and out.error is not None:
            store.dead_letter(_dl_source(work.inbox_id), None, "hl7v2", work.message.raw, [error_issue(out.error)])
    inbox.record_outcomes([o.as_row() for o in ordered])
    return ordered


def _not_mapped(work: Work, notes: list[str]) -> Outcome:
    msg = work.message
    text = f"stored, not mapped: no FHIR mapping for {msg.message_type} {msg.trigger_event}"
    info = HL7Error(
        text, code=ErrorCode.UNSUPPORTED_MESSAGE_TYPE, segment_id="MSH", segment_seq=1, field=9, severity="I"
    )
    ack = build_ack(msg, errors=[info], mode="original", text=text)
    return Outcome(work.inbox_id, "not-mapped", ack, notes=[text, *notes])


def _write(store: Store, mapped: list[_Mapped]) -> list[tuple[_Mapped, list[str] | StoreError]]:
    """Write all in one transaction; on refusal, message by message to isolate the bad one."""
    if not mapped:
        return []
    try:
        results = store.write([r for m in mapped for r in m.resources])
    except StoreError:
        out: list[tuple[_Mapped, list[str] | StoreError]] = []
        for m in mapped:
            try:
                out.append((m, [f"{r.resource_type}/{r.id}" for r in store.write(m.resources)]))
            except StoreError as exc:
                out.append((m, exc))
        return out
    out = []
    pos = 0
    for m in mapped:
        part = results[pos : pos + len(m.resources)]
        pos += len(m.resources)
        out.append((m, [f"{r.resource_type}/{r.id}" for r in part]))
    return out


def _dl_source(inbox_id: int) -> str:
    return f"mllp/hl7_inbox/{inbox_id}"


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
    works: list[Work] = []
    for inbox_id, raw in inbox.rows(("dead", "rejected")):
        summary.attempted += 1
        try:
            works.append(Work(inbox_id, parse_stored(raw)))
        except HL7Error as err:
            summary.unreadable += 1
            summary.errors.append(f"inbox {inbox_id}: {err}")
    for start in range(0, len(works), batch_size):
        for out in process_batch(store, inbox, works[start : start + batch_size], mapper):
            if out.status == "dead":
                summary.still_dead += 1
                summary.errors.append(f"inbox {out.inbox_id}: {out.error}")
                continue
            summary.processed += out.status == "processed"
            summary.not_mapped += out.status == "not-mapped"
            for dl_id in letters.get(_dl_source(out.inbox_id), []):
                store.mark_replayed(dl_id)
    return summary
