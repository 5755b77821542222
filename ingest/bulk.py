"""Parallel bulk NDJSON import: parse, validate and prepare in worker processes, commit in this one.

Per resource, JSON parsing, R4 validation, the content hash, the patient compartment, the
serialized body and the search-index rows depend only on the line itself, and they are most of
the cost of an import. Worker processes compute them for chunks of lines
(:func:`store.prepare.prepare`) and send back a :class:`~store.prepare.PreparedBatch` (a few lists
and Arrow tables per chunk, not objects per row). The single writer keeps what must be
serialized: the comparison with current versions, version numbers, the commit timestamp and the
DuckDB transaction, on a thread of its own (:class:`ImportWriter`). While DuckDB inserts one chunk
(it releases the GIL), the workers already prepare the next ones; a bounded window of chunks in
flight keeps memory flat for any file size.

Records the workers cannot settle alone go through the ordinary path in this process: Bundles
(their conditional references are resolved against the store).
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ingest.fhir_files import ndjson_lines, open_file, resources_from_json
from ingest.r4_check import r4_validator
from ingest.records import Problem, Record
from store.gc_pause import paused_gc
from store.prepare import PreparedBatch, load_arrow_conversions, prepare

if TYPE_CHECKING:  # workers import this module: not the store, which they do not use
    from store.store import Store, WriteResult

CHUNK_LINES = 5000


@dataclass(slots=True)
class Refused:
    """A line a worker refused: where it was, its raw text and why."""

    line: int
    raw: bytes
    problems: list[Problem]


@dataclass(slots=True)
class ChunkResult:
    """What a worker returns for one chunk of lines."""

    prepared: PreparedBatch
    refused: list[Refused] = field(default_factory=list)
    deferred: list[tuple[int, bytes]] = field(default_factory=list)  # (line, raw) for the writer's own path


def prepare_chunk(source: str, first_line: int, data: bytes, validate: bool) -> ChunkResult:
    """Parse, validate and prepare the NDJSON lines of ``data`` (line numbers from ``first_line``).

    The cyclic garbage collector is paused meanwhile: the chunk's parsed resources (tens of
    thousands of dicts and lists, no cycles) would otherwise be walked by its passes again and again,
    ~20 µs per resource, a fifth of the chunk's CPU (docs/benchmarks/ingest.md)."""
    with paused_gc():
        return _prepare_chunk(source, first_line, data, validate)


def _prepare_chunk(source: str, first_line: int, data: bytes, validate: bool) -> ChunkResult:
    accepted: list[dict[str, Any]] = []
    lines: list[tuple[int, bytes]] = []  # (line, raw) of each accepted resource
    out = ChunkResult(PreparedBatch())
    for lineno, raw, obj, problem in ndjson_lines(data.split(b"\n"), first_line):
        if problem is not None:
            out.refused.append(Refused(lineno, raw, [problem]))
            continue
        rtype = obj.get("resourceType") if isinstance(obj, dict) else None
        if rtype == "Bundle":
            out.deferred.append((lineno, raw))
            continue
        if not (rtype and isinstance(rtype, str)):  # the plain reader's record says what is wrong
            out.refused.append(Refused(lineno, raw, resources_from_json(obj, source, lineno, raw, "ndjson").problems))
            continue
        problems = r4_validator(obj) if validate else None
        if problems:
            out.refused.append(Refused(lineno, raw, problems))
            continue
        accepted.append(obj)
        lines.append((lineno, raw))
    out.prepared, store_refused = prepare(accepted)
    for pos, exc in store_refused:
        lineno, raw = lines[pos]
        out.refused.append(Refused(lineno, raw, [Problem(str(exc), exc.expression, exc.code)]))
    out.refused.sort(key=lambda r: r.line)
    return out


def line_chunks(path: Path, lines_per_chunk: int = CHUNK_LINES) -> Iterator[tuple[int, bytes]]:
    """(first line number, bytes of up to ``lines_per_chunk`` lines), streaming the (gzip) file."""
    with open_file(path) as fh:
        first, lines = 1, []
        for line in fh:
            lines.append(line)
            if len(lines) == lines_per_chunk:
                yield first, b"".join(lines)
                first, lines = first + len(lines), []
        if lines:
            yield first, b"".join(lines)


@contextmanager
def worker_pool(workers: int) -> Iterator[ProcessPoolExecutor | None]:
    """Worker processes for the chunks of every file of an import (None: prepare in this process).

    A worker costs about a second of CPU before its first chunk (imports, the validator's tables, the
    generated indexers), so one pool serves all the files of an import, not one pool per file.
    Processes start at the first chunk submitted.
    """
    if workers <= 0:
        yield None
        return
    ctx = multiprocessing.get_context("spawn")  # the writer holds DuckDB threads: never fork it
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=load_arrow_conversions) as pool:
        yield pool


def prepared_chunks(
    path: Path, *, validate: bool, pool: ProcessPoolExecutor | None, in_flight: int,
    lines_per_chunk: int = CHUNK_LINES,
) -> Iterator[tuple[int, ChunkResult]]:
    """Chunk results in file order, prepared by ``pool`` with at most ``in_flight`` chunks submitted
    ahead (bounded memory; enough to keep the workers busy while the consumer commits), or in this
    process one at a time when ``pool`` is None."""
    if pool is None:
        for first, data in line_chunks(path, lines_per_chunk):
            yield first, prepare_chunk(str(path), first, data, validate)
        return
    window: deque[tuple[int, Future[ChunkResult]]] = deque()
    for first, data in line_chunks(path, lines_per_chunk):
        window.append((first, pool.submit(prepare_chunk, str(path), first, data, validate)))
        if len(window) >= in_flight:
            first_done, fut = window.popleft()
            yield first_done, fut.result()
    while window:
        first_done, fut = window.popleft()
        yield first_done, fut.result()


def refused_record(source: str, refused: Refused) -> Record:
    """The dead-letter record of a refused line, as the plain reader would have built it."""
    return Record(source=source, line=refused.line, raw=refused.raw, problems=refused.problems, format="ndjson")


class ImportWriter:
    """An import's store writes, in the order they are given: on a thread of their own when worker
    processes prepare the chunks, else in the calling thread.

    Prepared chunks are added to one :class:`~store.store.WriteGroup` (one DuckDB transaction per
    ``commit_resources``): on its thread, its inserts of one chunk run beside the preparation of the
    next ones instead of after them. When this process prepares the chunks itself, a thread would only
    make the two take turns at the GIL (DuckDB sets up each insert's Arrow scan in Python): measured
    2–12 µs more CPU per resource and no faster (docs/benchmarks/ingest.md), so it writes inline. The
    group holds the store's writer lock until it commits, and the lock is the thread's that took it,
    so everything the import writes meanwhile, dead letters included, goes through :meth:`call`. At
    most ``queued`` calls wait. When a call fails, the open group is rolled back at once and the calls
    after it do nothing; its error is raised by a later :meth:`call`, :meth:`commit` or the end of the
    ``with`` block.
    """

    def __init__(self, store: Store, commit_resources: int, *, threaded: bool, queued: int = 4) -> None:
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="fhirtwin-writer") if threaded else None
        self._group = store.write_group()
        self._commit_resources = commit_resources
        self._queued = queued
        self._pending: deque[Future[None]] = deque()
        self._failed = False

    def __enter__(self) -> ImportWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        try:
            if exc_type is None:
                self.commit()
                return
            for fut in self._pending:
                fut.cancel()
            if self._thread is None:
                self._group.rollback()
            else:
                self._thread.submit(self._group.rollback).result()
        finally:
            if self._thread is not None:
                self._thread.shutdown()

    def call(self, fn: Callable[..., object], *args: object) -> None:
        """Run ``fn(*args)`` after the calls before it."""
        if self._thread is None:
            self._run(fn, args)
            return
        self._pending.append(self._thread.submit(self._run, fn, args))
        while self._pending and (len(self._pending) > self._queued or self._pending[0].done()):
            self._pending.popleft().result()

    def _run(self, fn: Callable[..., object], args: tuple[object, ...]) -> None:
        if self._failed:
            return
        try:
            fn(*args)
        except BaseException:
            self._failed = True
            self._group.rollback()
            raise

    def write(self, batch: PreparedBatch, then: Callable[[list[WriteResult]], None]) -> None:
        """Add ``batch`` to the open group, hand its results to ``then`` (on the writer's thread) and
        commit once the group holds ``commit_resources``."""
        self.call(self._write, batch, then)

    def _write(self, batch: PreparedBatch, then: Callable[[list[WriteResult]], None]) -> None:
        then(self._group.add(batch))
        if len(self._group) >= self._commit_resources:
            self._group.commit()

    def commit(self) -> None:
        """Commit what was written so far and wait until it is."""
        self.call(self._group.commit)
        while self._pending:
            self._pending.popleft().result()
