"""MLLP framing: ``<VT> payload <FS><CR>`` over a byte stream.

TCP delivers bytes, not messages: one read may hold half a frame, or three
pipelined frames and the start of a fourth. The decoder is therefore a small
state machine fed with whatever arrived; it returns the frames completed so far
and keeps the rest. Bytes outside a frame (keep-alive newlines, a sender's
stray text) are dropped and counted, because refusing the whole connection for
them would stall every message queued behind. A frame larger than the limit is
not buffered: its first bytes are kept (enough to read MSH and answer with a
reject naming MSH-10) and the rest is skipped until its end.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

VT = b"\x0b"
FS = b"\x1c"
CR = b"\r"

DEFAULT_MAX_FRAME_BYTES = 16 * 1024 * 1024
OVERSIZE_HEAD_BYTES = 4096


def encode_frame(payload: bytes) -> bytes:
    """Wrap one message (already encoded) in MLLP start and end blocks."""
    return VT + payload + FS + CR


@dataclass(frozen=True, slots=True)
class Frame:
    """One complete frame; ``oversize`` frames carry only their first bytes in ``payload``."""

    payload: bytes
    size_bytes: int
    oversize: bool = False


class MLLPDecoder:
    """Incremental MLLP decoder: ``feed(bytes) -> [Frame]``, tolerant of garbage between frames.

    A ``<VT>`` inside an open frame means the sender abandoned the frame (it
    reconnected or restarted mid-message): the partial frame is discarded as
    garbage and a new one starts. ``<FS>`` not followed by ``<CR>`` still ends the
    frame; the byte after it is treated as outside any frame.
    """

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self.max_frame_bytes = max_frame_bytes
        self.garbage_bytes = 0
        self._buf = bytearray()
        self._in_frame = False
        self._skipping = False  # inside an oversize frame, discarding
        self._head = b""
        self._skipped_bytes = 0
        self._await_cr = False

    @property
    def buffered_bytes(self) -> int:
        """Bytes held for a frame not yet complete (what a caller may bound)."""
        return len(self._buf)

    @property
    def in_frame(self) -> bool:
        """True while a frame has started and not yet ended."""
        return self._in_frame

    def feed(self, data: bytes) -> list[Frame]:
        """Consume ``data``; return the frames it completed, in order."""
        frames: list[Frame] = []
        pos, end = 0, len(data)
        while pos < end:
            if self._await_cr:
                self._await_cr = False
                if data[pos] == 0x0D:
                    pos += 1
                    continue
            if not self._in_frame:
                start = data.find(VT, pos)
                if start < 0:
                    self.garbage_bytes += end - pos
                    break
                self.garbage_bytes += start - pos
                pos = start + 1
                self._in_frame = True
                continue
            stop = data.find(FS, pos)
            restart = data.find(VT, pos, stop if stop >= 0 else end)
            if restart >= 0:
                self._abandon(restart - pos)
                pos = restart
                continue
            chunk_end = stop if stop >= 0 else end
            self._take(data, pos, chunk_end)
            if stop < 0:
                break
            frames.append(self._finish())
            pos = stop + 1
            self._await_cr = True
        return frames

    def _take(self, data: bytes, start: int, stop: int) -> None:
        if self._skipping:
            self._skipped_bytes += stop - start
            return
        self._buf += data[start:stop]
        if len(self._buf) > self.max_frame_bytes:
            self._head = bytes(self._buf[:OVERSIZE_HEAD_BYTES])
            self._skipped_bytes = len(self._buf)
            self._skipping = True
            self._buf = bytearray()

    def _finish(self) -> Frame:
        self._in_frame = False
        if self._skipping:
            frame = Frame(self._head, self._skipped_bytes, oversize=True)
            self._skipping, self._head, self._skipped_bytes = False, b"", 0
            return frame
        payload = bytes(self._buf)
        self._buf = bytearray()
        return Frame(payload, len(payload))

    def _abandon(self, tail_bytes: int) -> None:
        self.garbage_bytes += len(self._buf) + self._skipped_bytes + tail_bytes
        self._buf = bytearray()
        self._in_frame = self._skipping = False
        self._head, self._skipped_bytes = b"", 0


async def exchange(
    host: str, port: int, payloads: list[bytes], *, acks_per_message: int = 1, window: int = 1
) -> list[bytes]:
    """Send messages on one connection and collect their ACK payloads (a minimal sender).

    ``window`` is how many messages may await their ACKs at once: 1 is the classic
    stop-and-wait sender, more is pipelining. Used by the benchmark and the tests.
    """
    reader, writer = await asyncio.open_connection(host, port)
    decoder = MLLPDecoder()
    acks: list[bytes] = []
    expected = len(payloads) * acks_per_message
    sent = 0
    try:
        while len(acks) < expected:
            while sent < len(payloads) and sent - len(acks) // acks_per_message < window:
                writer.write(encode_frame(payloads[sent]))
                sent += 1
            await writer.drain()
            data = await reader.read(65536)
            if not data:
                break
            acks.extend(f.payload for f in decoder.feed(data))
    finally:
        writer.close()
    return acks
