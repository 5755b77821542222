"""The asyncio MLLP listener: frames in, durable inbox, mapped resources, honest ACKs out.

Three stages, joined by bounded queues so a flood slows the senders down
instead of growing memory:

1. one reader and one writer task per connection. The reader decodes frames and
   queues them both on the connection's ACK queue (bounded: when full the reader
   stops reading the socket, and TCP pushes back on the sender) and on the
   shared intake queue. The writer answers in the order frames arrived.
2. the committer takes whatever is waiting on the intake queue from *all*
   connections and records it in the inbox in one DuckDB transaction, in a worker
   thread (group commit). Only then can an AA/CA exist for those frames.
3. the processor maps committed messages and writes resources, in batches, in
   another worker thread; its outcome is the application ACK (AA/AE).

Original mode (MSH-15/16 empty) answers once, with the application ACK, so AA
means "stored in the inbox and mapped into the store". Enhanced mode answers the
commit ACK (CA/CE/CR) as soon as the inbox commit is done and, when MSH-16 asks,
the application ACK after it on the same connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ingest.hl7v2.ack import build_ack
from ingest.hl7v2.errors import ErrorCode, HL7Error
from ingest.hl7v2.inbox import Arrival, Inbox, Receipt, ack_code, refusal
from ingest.hl7v2.mllp import DEFAULT_MAX_FRAME_BYTES, Frame, MLLPDecoder, encode_frame
from ingest.hl7v2.processor import Mapper, Work, default_mapper, parse_stored, process_batch
from store.store import Store

log = logging.getLogger(__name__)

DEFAULT_PORT = 2575


@dataclass(frozen=True, slots=True)
class Options:
    """Tuning knobs of the listener (all bounded, so memory is bounded)."""

    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    max_inflight_per_connection: int = 256
    intake_queue_size: int = 4096
    work_queue_size: int = 4096
    batch_max: int = 1024
    read_size_bytes: int = 256 * 1024
    shutdown_timeout_s: float = 30.0


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
        self.inbox = Inbox(store)
        self.stats: Counter[str] = Counter()
        self._mapper = mapper
        self._intake: asyncio.Queue[_Pending | None] = asyncio.Queue(options.intake_queue_size)
        self._work: asyncio.Queue[Work | None] = asyncio.Queue(options.work_queue_size)
        self._waiting: dict[int, asyncio.Future[str]] = {}
        self._connections: set[_Connection] = set()
        self._closing = False
        self._server: asyncio.Server | None = None
        self._stages: list[asyncio.Task[Any]] = []
        self.port = 0

    async def _start(self, host: str, port: int) -> None:
        recovered = await asyncio.to_thread(self._recover)
        self._stages = [
            asyncio.create_task(self._commit_loop(), name="mllp-commit"),
            asyncio.create_task(self._process_loop(recovered), name="mllp-process"),
        ]
        self._server = await asyncio.start_server(self._handle, host, port, limit=self.options.read_size_bytes)
        self.port = self._server.sockets[0].getsockname()[1]

    def _recover(self) -> list[Work]:
        """Rows committed but not processed before the last stop are processed first, in order."""
        works = []
        for inbox_id, raw in self.inbox.rows(("received",)):
            try:
                works.append(Work(inbox_id, parse_stored(raw)))
            except HL7Error as err:
                ack = build_ack(raw, errors=[err], mode="original")
                self.inbox.record_outcomes(
                    [{"inbox_id": inbox_id, "status": "rejected", "ack": ack, "error": {"diagnostics": str(err)}}]
                )
        return works

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
        fut = self._waiting.get(receipt.inbox_id)
        if fut is not None:
            return await asyncio.shield(fut)
        stored = await asyncio.to_thread(self.inbox.final_ack, receipt.inbox_id)
        return stored or _deferred_ack(receipt.message or arrival.payload)

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

    async def _commit_loop(self) -> None:
        loop = asyncio.get_running_loop()
        done = False
        while not done:
            batch, done = await self._batch(self._intake)
            if not batch:
                continue
            try:
                receipts = await asyncio.to_thread(self.inbox.accept, [p.arrival for p in batch])
            except Exception as exc:  # the store failed: nothing was committed, so nothing may be AA'd
                log.exception("inbox commit failed")
                for p in batch:
                    p.receipt.set_result(refusal(p.arrival, f"receiver could not store the message: {exc}"))
                continue
            self.stats["committed_batches"] += 1
            new: list[Work] = []
            for p, receipt in zip(batch, receipts, strict=True):
                self.stats[f"receipt_{receipt.kind}"] += 1
                if receipt.kind == "new" and receipt.message is not None:
                    self._waiting[receipt.inbox_id] = loop.create_future()
                    new.append(Work(receipt.inbox_id, receipt.message))
                p.receipt.set_result(receipt)
            for work in new:
                await self._work.put(work)

    async def _process_loop(self, recovered: list[Work]) -> None:
        loop = asyncio.get_running_loop()
        for work in recovered:
            self._waiting[work.inbox_id] = loop.create_future()
        backlog = list(recovered)
        done = False
        while not done:
            if backlog:
                batch, backlog = backlog[: self.options.batch_max], backlog[self.options.batch_max :]
            else:
                batch, done = await self._batch(self._work)
            if not batch:
                continue
            try:
                outcomes = await asyncio.to_thread(process_batch, self.store, self.inbox, batch, self._mapper)
            except Exception:  # rows stay 'received' and are processed again at the next start
                log.exception("processing batch failed")
                for work in batch:
                    self._resolve(work.inbox_id, _deferred_ack(work.message))
                continue
            self.stats["processed_batches"] += 1
            for out in outcomes:
                self.stats[f"status_{out.status}"] += 1
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
                await self._stages[1]
        except TimeoutError:
            log.warning("MLLP shutdown timed out; unprocessed rows stay 'received' for the next start")
            for task in [*self._stages, *(t for c in self._connections for t in c.tasks)]:
                task.cancel()
            await asyncio.gather(*self._stages, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()


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
