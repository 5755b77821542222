"""The asyncio MLLP listener: frames in, durable inbox, mapped resources, honest ACKs out.

Stages joined by bounded queues, so a flood slows the senders down instead of
growing memory:

1. one reader and one writer task per connection. The reader decodes frames and
   queues them both on the connection's ACK queue (bounded: when full the reader
   stops reading the socket, and TCP pushes back on the sender) and on the
   shared intake queue. The writer answers in the order frames arrived.
2. the committer takes whatever is waiting on the intake queue from *all*
   connections and records it in the inbox in one DuckDB transaction, in a worker
   thread (group commit). Only then can an AA/CA exist for those frames.
3. processing: a feeder takes committed messages in inbox order, in batches, and
   has them mapped (parse, map, prepare for the store: in a worker process under
   ``ack_after="commit"``, in a thread under ``"processed"``); the
   writer stores each mapped batch in order and records the outcomes. When more
   is committed than the work queue holds, the rest stays in the inbox only and
   the feeder reads it back from there (the inbox is the queue), so a backlog
   costs disk, not memory.

Original mode (MSH-15/16 empty) answers once. With ``ack_after="processed"`` (the
default) AA means "stored in the inbox and mapped into the store"; with
``ack_after="commit"`` AA means "stored in the inbox" and goes out right after the
group commit, mapping following in the background (failures go to dead letters).
Enhanced mode answers the commit ACK (CA/CE/CR) as soon as the inbox commit is
done and, when MSH-16 asks, the application ACK after processing, on the same
connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

from ingest.hl7v2.ack import build_ack
from ingest.hl7v2.errors import ErrorCode, HL7Error
from ingest.hl7v2.inbox import ACK_AFTER, Arrival, Inbox, Receipt, ack_code, refusal
from ingest.hl7v2.mllp import DEFAULT_MAX_FRAME_BYTES, Frame, MLLPDecoder, encode_frame
from ingest.hl7v2.processor import (
    Mapped,
    Mapper,
    Outcome,
    Work,
    default_mapper,
    map_batch,
    record_batch,
    unmapped,
    write_mapped,
)
from store.prepare import load_arrow_conversions
from store.store import Store

log = logging.getLogger(__name__)

DEFAULT_PORT = 2575
# Under ack_after="commit" mapping is background work: its processes yield the CPU to receipt and ACKs.
BACKGROUND_MAP_NICENESS = 10
# How long an inbox commit waits for the other connections' frames (see MLLPServer._gather_group).
GROUP_WAIT_S = 0.002


@dataclass(frozen=True, slots=True)
class Options:
    """Tuning knobs of the listener (all bounded, so memory is bounded).

    ``ack_after``: ``"processed"`` (AA once mapped into the store) or ``"commit"``
    (AA once durably in the inbox; mapping follows). ``map_workers``: processes
    that parse and map; 0 maps in a thread of this process (also what a custom
    mapper that cannot be pickled needs). By default 1 under ``commit``, where
    mapping in this process would hold the GIL that receipt and ACKs need, and 0
    under ``processed``, where ACKs wait for mapping anyway and a second process
    only adds the hand-over (measured: docs/benchmarks/mllp.md).
    """

    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    max_inflight_per_connection: int = 256
    intake_queue_size: int = 4096
    work_queue_size: int = 4096
    batch_max: int = 1024
    read_size_bytes: int = 256 * 1024
    shutdown_timeout_s: float = 30.0
    ack_after: str = "processed"
    map_workers: int | None = None
    map_timeout_s: float = 60.0  # a batch's mapping taking longer: each message alone, a hanging one dead-lettered

    def __post_init__(self) -> None:
        if self.ack_after not in ACK_AFTER:
            raise ValueError(f"ack_after must be one of {', '.join(ACK_AFTER)}, got {self.ack_after!r}")
        if self.map_workers is not None and self.map_workers < 0:
            raise ValueError("map_workers must be 0 or more")
        if self.map_timeout_s <= 0:
            raise ValueError("map_timeout_s must be positive")

    @property
    def mapping_processes(self) -> int:
        """``map_workers``, or its default for the ACK policy."""
        if self.map_workers is not None:
            return self.map_workers
        return 1 if self.ack_after == "commit" else 0


@dataclass(frozen=True, slots=True)
class _Mapping:
    """A batch's mapping under way, and the worker pool it runs on (None: a thread)."""

    future: asyncio.Future[Mapped]
    pool: ProcessPoolExecutor | None


@dataclass(eq=False, slots=True)
class _Pending:
    arrival: Arrival
    receipt: asyncio.Future[Receipt]


@dataclass(eq=False)
class _Connection:
    peer: str
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    acks: asyncio.Queue[_Pending | None]
    reading: bool = False
    broken: bool = False
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)


class MLLPServer:
    """A running listener; create it with :func:`start_mllp_server`."""

    def __init__(self, store: Store, options: Options, mapper: Mapper) -> None:
        self.store = store
        self.options = options
        self.inbox = Inbox(store, ack_after=options.ack_after)
        self.stats: Counter[str] = Counter()
        self._mapper = mapper
        self._intake: asyncio.Queue[_Pending | None] = asyncio.Queue(options.intake_queue_size)
        self._work: asyncio.Queue[Work | None] = asyncio.Queue(options.work_queue_size)
        self._mapping: asyncio.Queue[tuple[list[Work], _Mapping] | None] = asyncio.Queue()
        # Batches in flight: one being written and one being mapped per worker. The next batch waits
        # in the work queue meanwhile, so it grows while the store is busy (fewer, larger writes).
        self._slots = asyncio.Semaphore(max(1, options.mapping_processes) + 1)
        self._pool: ProcessPoolExecutor | None = None
        # Committed rows not on the work queue (recovered, or more than it holds) are read back from the
        # inbox: ids from _spill_from up to _committed_upto.
        self._spill_from: int | None = self.inbox.first_received()
        self._committed_upto = self.inbox.last_id
        self._waiting: dict[int, asyncio.Future[str]] = {}
        self._unprocessed: set[int] = set()
        self._connections: set[_Connection] = set()
        self._closing = False
        self._server: asyncio.Server | None = None
        self._stages: list[asyncio.Task[Any]] = []
        self.port = 0

    def _new_pool(self) -> ProcessPoolExecutor:
        ctx = multiprocessing.get_context("spawn")  # this process holds DuckDB threads: never fork it
        niceness = BACKGROUND_MAP_NICENESS if self.options.ack_after == "commit" else 0
        return ProcessPoolExecutor(
            self.options.mapping_processes, mp_context=ctx, initializer=_init_map_worker, initargs=(niceness,)
        )

    async def _start(self, host: str, port: int) -> None:
        if self.options.mapping_processes:
            self._pool = self._new_pool()
            await asyncio.get_running_loop().run_in_executor(self._pool, map_batch, [], self._mapper)
        self._stages = [
            asyncio.create_task(self._commit_loop(), name="mllp-commit"),
            asyncio.create_task(self._feed_loop(), name="mllp-map"),
            asyncio.create_task(self._write_loop(), name="mllp-write"),
        ]
        try:
            self._server = await asyncio.start_server(self._handle, host, port, limit=self.options.read_size_bytes)
        except OSError as exc:  # the port is taken or not ours: stop what started, say where
            await self.shutdown()
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise OSError(f"cannot listen for MLLP on {host}:{port}: {reason}") from exc
        self.port = self._server.sockets[0].getsockname()[1]

    # -- connections ---------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peername = writer.get_extra_info("peername")
        peer = f"{peername[0]}:{peername[1]}" if isinstance(peername, tuple) else str(peername)
        conn = _Connection(peer, reader, writer, asyncio.Queue(self.options.max_inflight_per_connection))
        self._connections.add(conn)
        self.stats["connections"] += 1
        writer_task = asyncio.create_task(self._write_acks(conn))
        conn.tasks = [asyncio.current_task(), writer_task]  # type: ignore[list-item]
        try:
            await self._read_frames(conn)
            await writer_task
        finally:
            self._connections.discard(conn)
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _read_frames(self, conn: _Connection) -> None:
        decoder = MLLPDecoder(self.options.max_frame_bytes)
        try:
            while not self._closing:
                conn.reading = True
                try:
                    data = await conn.reader.read(self.options.read_size_bytes)
                except asyncio.CancelledError:
                    break  # shutdown: bytes not yet read were never acknowledged, the sender keeps them
                finally:
                    conn.reading = False
                if not data:
                    break
                for frame in decoder.feed(data):
                    await self._submit(conn, frame)
        except ConnectionError:
            pass
        finally:
            self.stats["garbage_bytes"] += decoder.garbage_bytes
            await conn.acks.put(None)

    async def _submit(self, conn: _Connection, frame: Frame) -> None:
        pending = _Pending(
            Arrival(frame.payload, conn.peer, frame.size_bytes, frame.oversize),
            asyncio.get_running_loop().create_future(),
        )
        self.stats["frames"] += 1
        await conn.acks.put(pending)
        if self._closing:
            pending.receipt.set_result(refusal(pending.arrival, "receiver is shutting down; send again later"))
            return
        await self._intake.put(pending)

    async def _write_acks(self, conn: _Connection) -> None:
        while (pending := await conn.acks.get()) is not None:
            receipt = await pending.receipt
            if receipt.send_commit and receipt.commit_ack is not None:
                await self._send(conn, receipt.commit_ack)
            if not receipt.wants_final:
                continue
            final = receipt.final_ack or await self._final_ack(receipt, pending.arrival)
            if receipt.send_final(final):
                await self._send(conn, final)

    async def _final_ack(self, receipt: Receipt, arrival: Arrival) -> str:
        """The application ACK of a row still being processed (a resend of it, or a new message)."""
        rid = receipt.inbox_id
        if rid in self._unprocessed:
            return _deferred_ack(receipt.message or arrival.payload)
        fut = self._waiting.get(rid)
        if fut is None:  # a resend of a row committed earlier: wait for processing, unless it is done
            fut = self._waiting[rid] = asyncio.get_running_loop().create_future()
            stored = await asyncio.to_thread(self.inbox.final_ack, rid)
            if stored is not None:
                self._resolve(rid, stored)
        return await asyncio.shield(fut)

    async def _send(self, conn: _Connection, ack: str) -> None:
        self.stats[f"ack_{ack_code(ack)}"] += 1
        if conn.broken:
            return
        try:
            conn.writer.write(encode_frame(ack.encode("utf-8")))
            await conn.writer.drain()
        except (ConnectionError, OSError):
            conn.broken = True  # keep consuming so the reader never blocks on a dead peer

    # -- stages ----------------------------------------------------------------
    async def _batch(self, queue: asyncio.Queue[Any]) -> tuple[list[Any], bool]:
        """Wait for one item, then take whatever else is already queued (up to batch_max)."""
        first = await queue.get()
        if first is None:
            return [], True
        batch, done = [first], False
        while len(batch) < self.options.batch_max and not queue.empty():
            item = queue.get_nowait()
            if item is None:
                done = True
                break
            batch.append(item)
        return batch, done

    async def _gather_group(self, batch: list[_Pending]) -> bool:
        """Wait up to GROUP_WAIT_S for more frames while the group has fewer than there are open
        connections: stop-and-wait senders whose ACKs just went out send their next message within
        a millisecond or so, and one commit for all of them costs about what one commit for one
        costs. Returns True when the listener is shutting down."""
        deadline = asyncio.get_running_loop().time() + GROUP_WAIT_S
        while len(batch) < min(len(self._connections), self.options.batch_max):
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            try:
                item = await asyncio.wait_for(self._intake.get(), remaining)
            except TimeoutError:
                break
            if item is None:
                return True
            batch.append(item)
        return False

    async def _commit_loop(self) -> None:
        loop = asyncio.get_running_loop()
        done = False
        while not done:
            batch, done = await self._batch(self._intake)
            if not batch:
                continue
            done = done or await self._gather_group(batch)
            try:
                receipts = await asyncio.to_thread(self.inbox.accept, [p.arrival for p in batch])
            except Exception as exc:  # the store failed: nothing was committed, so nothing may be AA'd
                log.exception("inbox commit failed")
                for p in batch:
                    p.receipt.set_result(refusal(p.arrival, f"receiver could not store the message: {exc}"))
                continue
            self.stats["committed_batches"] += 1
            for p, receipt in zip(batch, receipts, strict=True):
                self.stats[f"receipt_{receipt.kind}"] += 1
                if receipt.kind == "new" and receipt.message is not None:
                    answered = receipt.final_ack is not None
                    if not answered:
                        self._waiting[receipt.inbox_id] = loop.create_future()
                    self._queue(Work(receipt.inbox_id, receipt.message.raw, answered))
                p.receipt.set_result(receipt)

    def _queue(self, work: Work) -> None:
        """Hand a committed row to processing: on the work queue while it has room, else via the inbox."""
        self._committed_upto = work.inbox_id
        if self._spill_from is None and not self._work.full():
            self._work.put_nowait(work)
        elif self._spill_from is None:
            self._spill_from = work.inbox_id
            self.stats["spilled"] += 1

    async def _next_works(self) -> tuple[list[Work], bool]:
        """The next batch in inbox order: the work queue first, then rows only the inbox holds."""
        if self._spill_from is None or not self._work.empty():
            return await self._batch(self._work)
        first, last, limit = self._spill_from, self._committed_upto, self.options.batch_max
        rows = await asyncio.to_thread(self.inbox.received, first, last, limit)
        self._spill_from = rows[-1][0] + 1 if len(rows) == limit else last + 1
        if self._spill_from > self._committed_upto:
            self._spill_from = None
        return [Work(rid, raw) for rid, raw in rows], False

    async def _feed_loop(self) -> None:
        """Take batches in inbox order and start their mapping (in the pool); the writer awaits them in order."""
        done = False
        while not done or self._spill_from is not None:
            await self._slots.acquire()
            if done:  # shutting down: the queue is drained, finish what only the inbox holds
                works, _ = await self._next_works()
            else:
                works, done = await self._next_works()
            if not works:
                self._slots.release()
                continue
            await self._mapping.put((works, self._start_mapping(works)))
        await self._mapping.put(None)

    async def _write_loop(self) -> None:
        while (item := await self._mapping.get()) is not None:
            works, mapping = item
            try:
                await self._write(works, mapping)
            finally:
                self._slots.release()

    def _start_mapping(self, works: list[Work]) -> _Mapping:
        if self._pool is not None:
            return _Mapping(asyncio.get_running_loop().run_in_executor(self._pool, map_batch, works, self._mapper),
                            self._pool)
        return _Mapping(asyncio.ensure_future(asyncio.to_thread(map_batch, works, self._mapper)), None)

    async def _mapped_in_time(self, works: list[Work], mapping: _Mapping) -> list[tuple[list[Work], Mapped]]:
        """The batch's mapping; if it takes longer than ``map_timeout_s`` or kills its worker process,
        each message mapped alone, and one that fails so again dead-lettered: a message whose mapping
        hangs or crashes does not hold back the ones behind it. A batch whose workers were replaced
        because of another is mapped again."""
        timeout_s = self.options.map_timeout_s
        try:
            return [(works, await asyncio.wait_for(asyncio.shield(mapping.future), timeout_s))]
        except BrokenProcessPool:
            if mapping.pool is not self._pool:  # stopped because of a batch ahead of it: not this one's doing
                return await self._mapped_in_time(works, self._start_mapping(works))
            self.stats["mapping_crashes"] += 1
            reason = "stopped its worker process"
        except TimeoutError:
            self.stats["mapping_timeouts"] += 1
            mapping.future.add_done_callback(_consume)  # it ends broken (process killed) or late (thread): unused
            reason = f"did not finish within {timeout_s:g} s"
        await self._replace_workers()
        if len(works) == 1:
            log.error("mapping inbox row %d %s: dead-lettered", works[0].inbox_id, reason)
            return [(works, unmapped(works[0], reason))]
        log.error("mapping a batch of %d %s: mapping each alone", len(works), reason)
        out = []
        for work in works:
            out += await self._mapped_in_time([work], self._start_mapping([work]))
        return out

    async def _replace_workers(self) -> None:
        """After a mapping that hangs or crashed: the worker processes are killed and replaced (the new
        ones started before anything is timed on them). A thread cannot be stopped: it is left running
        (and said so), later batches go to new threads."""
        if self._pool is None:
            log.error("a mapping thread does not finish; it keeps running until the listener stops")
            return
        old, self._pool = self._pool, self._new_pool()
        for process in list((getattr(old, "_processes", None) or {}).values()):  # no public API stops a task
            process.kill()
        old.shutdown(wait=False, cancel_futures=True)
        await asyncio.get_running_loop().run_in_executor(self._pool, map_batch, [], self._mapper)

    async def _write(self, works: list[Work], mapping: _Mapping) -> None:
        try:
            outcomes = []
            for part, part_mapped in await self._mapped_in_time(works, mapping):
                outcomes += await asyncio.to_thread(write_mapped, self.store, part, part_mapped, self._mapper)
        except Exception:  # rows stay 'received' and are processed again at the next start
            log.exception("processing batch failed")
            for work in works:
                self._unprocessed.add(work.inbox_id)
                self._resolve(work.inbox_id, _deferred_ack(work.raw))
            return
        self.stats["processed_batches"] += 1
        for out in outcomes:
            self.stats[f"status_{out.status}"] += 1
        self._answer(outcomes)  # the store holds what AA promises; the rows below are bookkeeping
        try:
            await asyncio.to_thread(record_batch, self.store, self.inbox, works, outcomes)
        except Exception:  # the rows stay 'received': processed again (idempotently) at the next start
            log.exception("recording outcomes failed")
        self._answer(outcomes)  # resends that arrived while the rows were being recorded

    def _answer(self, outcomes: list[Outcome]) -> None:
        for out in outcomes:
            self._resolve(out.inbox_id, out.ack)

    def _resolve(self, inbox_id: int, ack: str) -> None:
        fut = self._waiting.pop(inbox_id, None)
        if fut is not None and not fut.done():
            fut.set_result(ack)

    # -- shutdown ----------------------------------------------------------------
    async def shutdown(self, timeout_s: float | None = None) -> None:
        """Stop accepting, answer every frame already read, drain the worker, then close.

        Frames complete in the read buffer are committed and answered as usual;
        reading stops, so bytes the sender wrote after that get no ACK and will be
        sent again. If draining exceeds the timeout, connections are closed anyway:
        committed rows stay ``received`` in the inbox and are processed at the next start.
        """
        timeout = self.options.shutdown_timeout_s if timeout_s is None else timeout_s
        self._closing = True
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            if conn.reading:
                conn.tasks[0].cancel()
        handlers = [c.tasks[0] for c in self._connections]
        try:
            async with asyncio.timeout(timeout):
                if handlers:
                    await asyncio.gather(*handlers, return_exceptions=True)
                await self._intake.put(None)
                await self._stages[0]
                await self._work.put(None)
                await asyncio.gather(*self._stages[1:])
        except TimeoutError:
            log.warning("MLLP shutdown timed out; unprocessed rows stay 'received' for the next start")
            for task in [*self._stages, *(t for c in self._connections for t in c.tasks)]:
                task.cancel()
            await asyncio.gather(*self._stages, return_exceptions=True)
        if self._pool is not None:
            await asyncio.to_thread(self._pool.shutdown, cancel_futures=True)
        await asyncio.to_thread(self.inbox.close)
        if self._server is not None:
            await self._server.wait_closed()


def _init_map_worker(niceness: int) -> None:
    """Set a mapping process's priority, make it end with the listener, and load what its first
    batch would otherwise wait for.

    A pool worker waits on a pipe it holds both ends of, so a listener killed
    without a shutdown (SIGKILL, a crash) would leave it waiting forever.
    """
    os.nice(niceness)
    load_arrow_conversions()
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()


def _exit_with_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(1.0)
    os._exit(0)


def _consume(future: asyncio.Future[Any]) -> None:
    """Retrieve an abandoned future's outcome (asyncio reports exceptions nobody retrieved)."""
    if not future.cancelled():
        future.exception()


def _deferred_ack(message: Any) -> str:
    err = HL7Error(
        "message stored in the inbox but not processed yet; it will be processed without resending",
        code=ErrorCode.APPLICATION_INTERNAL_ERROR,
        rejects=False,
    )
    return build_ack(message, errors=[err], mode="original")


async def start_mllp_server(
    store: Store, host: str, port: int, *, mapper: Mapper | None = None, **options: Any
) -> MLLPServer:
    """Start listening; ``port=0`` binds a free port, read back from ``server.port``.

    ``options`` are the fields of :class:`Options` (frame limit, queue sizes,
    batch size, shutdown timeout). Rows left ``received`` by a previous run are
    processed before new messages.
    """
    server = MLLPServer(store, Options(**options), mapper or default_mapper())
    await server._start(host, port)
    return server


def run_mllp_forever(store: Store, host: str, port: int = DEFAULT_PORT, **options: Any) -> None:
    """Serve MLLP until SIGINT/SIGTERM, then shut down gracefully (the standalone command)."""

    async def main() -> None:
        server = await start_mllp_server(store, host, port, **options)
        print(f"MLLP listening on {host}:{server.port}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await server.shutdown()

    asyncio.run(main())
