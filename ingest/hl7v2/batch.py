"""HL7 v2 batch files: FHS/BHS … BTS/FTS envelopes, or bare concatenated messages.

A batch is split into messages without parsing each one first, so one bad message
becomes one error entry (to be dead-lettered and negatively acknowledged) instead of
losing the whole file. Envelope errors (a nested FHS, segments before any MSH) are
located by line number in the file, which is what an operator needs to fix it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from ingest.hl7v2.er7 import Message, decode, parse_segments, read_delimiters, split_segments
from ingest.hl7v2.errors import ErrorCode, HL7Error, HL7ParseError

_ENVELOPE = ("FHS", "BHS", "BTS", "FTS")


@dataclass(slots=True)
class BatchEntry:
    """One message slot of a batch: parsed message or the error that prevented it."""

    index: int
    first_line: int
    lines: list[str]
    message: Message | None = None
    error: HL7Error | None = None

    @property
    def raw(self) -> str:
        """The message as CR-separated ER7, for storing the original next to the error."""
        return "\r".join(self.lines)


@dataclass(slots=True)
class Batch:
    """What a batch file held: envelope segments, entries, and count mismatches noticed."""

    file_header: str | None = None
    batch_headers: list[str] = field(default_factory=list)
    entries: list[BatchEntry] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def messages(self) -> list[Message]:
        return [e.message for e in self.entries if e.message is not None]

    @property
    def errors(self) -> list[HL7Error]:
        return [e.error for e in self.entries if e.error is not None]


def read_batch(data: str | bytes) -> Batch:
    """Split a batch (or a single message, or concatenated messages) into entries."""
    text = decode(data) if isinstance(data, bytes | bytearray) else data
    lines = split_segments(text)
    batch = Batch()
    current: BatchEntry | None = None
    in_batch = False
    batch_count = 0
    file_closed = False
    msgs_in_batch = 0

    def close() -> None:
        nonlocal current
        if current is not None:
            _finish(current)
            batch.entries.append(current)
            current = None

    for lineno, line in enumerate(lines, 1):
        seg_id = line[:3]
        if seg_id in _ENVELOPE:
            close()
            if seg_id == "FHS":
                if batch.file_header is not None or lineno != 1:
                    batch.entries.append(_envelope_error(len(batch.entries), lineno, line,
                                                         "FHS is only allowed as the first segment of a file"))
                    continue
                if (bad := _unreadable_header(len(batch.entries), lineno, line)) is not None:
                    batch.entries.append(bad)
                    continue
                batch.file_header = line
            elif seg_id == "BHS":
                if (bad := _unreadable_header(len(batch.entries), lineno, line)) is not None:
                    batch.entries.append(bad)
                    continue
                batch.batch_headers.append(line)
                in_batch, msgs_in_batch = True, 0
                batch_count += 1
            elif seg_id == "BTS":
                _check_count(batch, line, msgs_in_batch, "BTS-1 batch message count")
                in_batch = False
            else:
                _check_count(batch, line, batch_count, "FTS-1 file batch count")
                file_closed = True
            continue
        if seg_id == "MSH":
            close()
            current = BatchEntry(len(batch.entries), lineno, [line])
            msgs_in_batch += 1
            continue
        if current is None:
            last = batch.entries[-1] if batch.entries else None
            if last is not None and last.error is not None and last.first_line + len(last.lines) == lineno:
                last.lines.append(line)  # keep one error per run of orphaned segments
                continue
            where = "batch" if in_batch or batch.batch_headers else "file"
            batch.entries.append(_envelope_error(len(batch.entries), lineno, line,
                                                 f"segment {seg_id} outside a message in {where}: expected MSH"))
            continue
        current.lines.append(line)
    close()
    if batch.file_header and not file_closed:
        batch.warnings.append("file has FHS but no FTS")
    return batch


def _finish(entry: BatchEntry) -> None:
    try:
        entry.message = parse_segments(entry.lines, "\r".join(entry.lines))
    except HL7Error as err:
        entry.error = err


def _unreadable_header(index: int, lineno: int, line: str) -> BatchEntry | None:
    """An FHS/BHS whose delimiters cannot be read, as an entry with its error (None when readable):
    one bad header must not stop the rest of the file from being read."""
    try:
        read_delimiters(line, lineno)
    except HL7Error as err:
        return BatchEntry(index, lineno, [line], error=err)
    return None


def _envelope_error(index: int, lineno: int, line: str, text: str) -> BatchEntry:
    err = HL7ParseError(text, code=ErrorCode.SEGMENT_SEQUENCE_ERROR, segment_id=line[:3], segment_seq=lineno)
    return BatchEntry(index, lineno, [line], error=err)


def _check_count(batch: Batch, trailer: str, actual: int, what: str) -> None:
    parts = trailer.split(trailer[3]) if len(trailer) > 3 else []
    declared = parts[1] if len(parts) > 1 else ""
    if declared.isdigit() and int(declared) != actual:
        batch.warnings.append(f"{what} says {declared}, found {actual}")


def iter_messages(data: str | bytes) -> Iterator[Message]:
    """Yield each message of a file or batch; raise the first error met.

    Use :func:`read_batch` to keep going past bad messages.
    """
    for entry in read_batch(data).entries:
        if entry.error is not None:
            raise entry.error
        if entry.message is not None:
            yield entry.message
