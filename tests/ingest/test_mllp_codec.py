"""MLLP framing: frames split across reads, pipelined frames, garbage and oversize frames."""

from __future__ import annotations

from ingest.hl7v2.mllp import FS, VT, MLLPDecoder, encode_frame

MSG_A = b"MSH|^~\\&|A|B|C|D|20240101||ADT^A01|1|P|2.5\rPID|1||123\r"
MSG_B = b"MSH|^~\\&|A|B|C|D|20240101||ADT^A08|2|P|2.5\rPID|1||456\r"


def test_frame_split_at_every_byte_boundary() -> None:
    wire = encode_frame(MSG_A)
    for cut in range(1, len(wire)):
        dec = MLLPDecoder()
        frames = dec.feed(wire[:cut]) + dec.feed(wire[cut:])
        assert [f.payload for f in frames] == [MSG_A], cut
        assert dec.garbage_bytes == 0


def test_byte_by_byte_pipelined_frames() -> None:
    dec = MLLPDecoder()
    frames = []
    for b in encode_frame(MSG_A) + encode_frame(MSG_B):
        frames += dec.feed(bytes([b]))
    assert [f.payload for f in frames] == [MSG_A, MSG_B]


def test_pipelined_frames_in_one_read_keep_order() -> None:
    dec = MLLPDecoder()
    frames = dec.feed(encode_frame(MSG_A) + encode_frame(MSG_B) + encode_frame(MSG_A)[:10])
    assert [f.payload for f in frames] == [MSG_A, MSG_B]
    assert dec.in_frame and dec.buffered_bytes == 9
    assert [f.payload for f in dec.feed(encode_frame(MSG_A)[10:])] == [MSG_A]


def test_garbage_between_frames_is_dropped_and_counted() -> None:
    dec = MLLPDecoder()
    frames = dec.feed(b"\r\nhello" + encode_frame(MSG_A) + b"\n\n" + encode_frame(MSG_B) + b"xx")
    assert [f.payload for f in frames] == [MSG_A, MSG_B]
    assert dec.garbage_bytes == len(b"\r\nhello") + 2 + 2


def test_fs_without_cr_still_ends_the_frame() -> None:
    dec = MLLPDecoder()
    frames = dec.feed(VT + MSG_A + FS + VT + MSG_B + FS + b"\r")
    assert [f.payload for f in frames] == [MSG_A, MSG_B]


def test_start_block_inside_a_frame_abandons_the_partial_one() -> None:
    dec = MLLPDecoder()
    frames = dec.feed(VT + b"MSH|half a mess" + encode_frame(MSG_B))
    assert [f.payload for f in frames] == [MSG_B]
    assert dec.garbage_bytes == len(b"MSH|half a mess")


def test_oversize_frame_keeps_only_its_head_and_the_next_frame_survives() -> None:
    dec = MLLPDecoder(max_frame_bytes=100)
    big = MSG_A + b"OBX|" + b"x" * 5000 + b"\r"
    wire = encode_frame(big) + encode_frame(MSG_B)
    frames = []
    for i in range(0, len(wire), 64):
        frames += dec.feed(wire[i : i + 64])
    assert len(frames) == 2
    assert frames[0].oversize and frames[0].size_bytes == len(big)
    assert frames[0].payload.startswith(MSG_A[:50]) and len(frames[0].payload) <= 4096
    assert not frames[1].oversize and frames[1].payload == MSG_B
    assert dec.buffered_bytes == 0
