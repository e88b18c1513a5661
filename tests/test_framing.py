# SPDX-License-Identifier: BSD-3-Clause
"""Unit tests of protocol/framing.py: messages out of an arbitrarily chunked byte stream.

The fd numbers below are labels, never real descriptors (except in the close_fds test).
"""
from __future__ import annotations

import os
import random
from collections.abc import Sequence

import pytest

from vfu_platform.protocol.codec import encode
from vfu_platform.protocol.errors import FramingError
from vfu_platform.protocol.framing import ReceiveBuffer
from vfu_platform.protocol.header import HEADER

Message = tuple[int, bytes]  # (msg_id, payload)


def feed(buf: ReceiveBuffer, data: bytes, fds: Sequence[int] = ()) -> None:
    """What the transport does with one recvmsg_into."""
    view = buf.writable()
    try:
        view[: len(data)] = data
    finally:
        view.release()
    buf.commit(len(data), list(fds))


def drain(buf: ReceiveBuffer) -> list[tuple[int, bytes | None, list[int]]]:
    """Every whole message available: (msg_id, body or None if discarded, fds)."""
    out = []
    while (frame := buf.next_message()) is not None:
        out.append((frame.header.msg_id, None if frame.body is None else bytes(frame.body), frame.fds))
    return out


def stream(messages: Sequence[Message]) -> bytes:
    return b"".join(encode(msg_id, 9, payload) for msg_id, payload in messages)


MESSAGES: list[Message] = [(1, b""), (2, bytes(range(16))), (3, b"x" * 33), (4, b"\x01")]


def test_one_whole_message():
    buf = ReceiveBuffer(1024)
    feed(buf, encode(7, 4, b"abcd"))
    frame = buf.next_message()
    assert frame is not None
    assert (frame.header.msg_id, frame.header.command, frame.header.size) == (7, 4, 20)
    assert bytes(frame.body) == b"abcd" and frame.fds == []
    assert buf.next_message() is None and buf.buffered == 0


def test_split_at_every_byte_boundary():
    data = stream(MESSAGES)
    expected = [(i, p, []) for i, p in MESSAGES]
    for cut in range(len(data) + 1):
        buf = ReceiveBuffer(1024)
        feed(buf, data[:cut])
        got = drain(buf)
        feed(buf, data[cut:])
        assert got + drain(buf) == expected, f"cut at {cut}"


def test_one_byte_at_a_time():
    buf = ReceiveBuffer(1024)
    got = []
    for byte in stream(MESSAGES):
        feed(buf, bytes([byte]))
        got += drain(buf)
    assert got == [(i, p, []) for i, p in MESSAGES]


def test_several_messages_in_one_read():
    buf = ReceiveBuffer(1024)
    feed(buf, stream(MESSAGES))
    assert drain(buf) == [(i, p, []) for i, p in MESSAGES]


def test_incomplete_header_or_body_waits():
    buf = ReceiveBuffer(1024)
    data = encode(1, 9, b"payload")
    feed(buf, data[:10])
    assert buf.next_message() is None
    feed(buf, data[10:20])
    assert buf.next_message() is None
    feed(buf, data[20:])
    assert drain(buf) == [(1, b"payload", [])]


# ---------------------------------------------------------------- fd attribution
def test_fds_go_to_the_message_whose_header_they_came_with():
    buf = ReceiveBuffer(1024)
    feed(buf, encode(1, 8, b"a" * 20), fds=[101, 102])
    feed(buf, encode(2, 8, b"b" * 20))
    assert drain(buf) == [(1, b"a" * 20, [101, 102]), (2, b"b" * 20, [])]


def test_fds_in_a_read_go_to_the_last_message_starting_in_it():
    # Linux ends a stream read right after the chunk that carried fds, so a read
    # holding several messages can only have fds for the last one.
    buf = ReceiveBuffer(1024)
    feed(buf, stream([(1, b"a"), (2, b"b"), (3, b"c")]), fds=[103])
    assert drain(buf) == [(1, b"a", []), (2, b"b", []), (3, b"c", [103])]


def test_fds_with_a_partial_header():
    buf = ReceiveBuffer(1024)
    data = stream([(1, b"first"), (2, b"second")])
    cut = len(encode(1, 9, b"first")) + 5  # 5 bytes into the second header
    feed(buf, data[:cut], fds=[104])
    feed(buf, data[cut:])
    assert drain(buf) == [(1, b"first", []), (2, b"second", [104])]


def test_fds_arriving_with_the_rest_of_a_message_in_progress():
    buf = ReceiveBuffer(1024)
    data = encode(1, 8, b"z" * 40)
    feed(buf, data[:24])
    feed(buf, data[24:], fds=[105])  # no message starts in this read
    assert drain(buf) == [(1, b"z" * 40, [105])]


def test_fds_with_the_tail_of_one_message_and_the_head_of_the_next():
    buf = ReceiveBuffer(1024)
    first, second = encode(1, 9, b"q" * 30), encode(2, 8, b"r" * 4)
    feed(buf, first[:20])
    feed(buf, first[20:] + second, fds=[106])
    assert drain(buf) == [(1, b"q" * 30, []), (2, b"r" * 4, [106])]


def test_fds_in_two_reads_of_one_message_all_go_to_it():
    buf = ReceiveBuffer(1024)
    data = encode(1, 8, b"w" * 40)
    feed(buf, data[:20], fds=[111])
    feed(buf, data[20:40], fds=[112])
    feed(buf, data[40:], fds=[113])
    assert drain(buf) == [(1, b"w" * 40, [111, 112, 113])]


def test_fds_of_consecutive_reads_stay_apart():
    buf = ReceiveBuffer(1024)
    feed(buf, encode(1, 8, b"a"), fds=[107])
    feed(buf, encode(2, 8, b"b"), fds=[108, 109])
    assert drain(buf) == [(1, b"a", [107]), (2, b"b", [108, 109])]


@pytest.mark.parametrize("seed", range(4))
def test_long_random_stream_through_a_small_buffer(seed):
    """Random sizes (some over the limit), random cuts, random fds: all attributed right."""
    rng = random.Random(seed)
    limit = 128  # a small buffer: compaction happens again and again
    messages = [(i, bytes(rng.randrange(256) for _ in range(rng.randrange(0, 160)))) for i in range(500)]
    with_fds = {i for i, _ in messages if rng.random() < 0.2}
    buf = ReceiveBuffer(limit)
    got = []
    for msg_id, payload in messages:
        data = encode(msg_id, 8, payload)
        cut = rng.randrange(1, len(data) + 1)
        feed(buf, data[:cut], fds=[10_000 + msg_id] if msg_id in with_fds else [])
        got += drain(buf)
        if cut < len(data):
            feed(buf, data[cut:])
            got += drain(buf)
    assert got == [(i, p if 16 + len(p) <= limit else None, [10_000 + i] if i in with_fds else [])
                   for i, p in messages]


# ---------------------------------------------------------------- size limits
def test_oversized_message_is_reported_at_once_and_its_body_discarded():
    buf = ReceiveBuffer(64)
    big = encode(1, 10, bytes(range(200)))
    feed(buf, big[:40], fds=[110])
    assert drain(buf) == [(1, None, [110])]  # reported as soon as the header is in
    feed(buf, big[40:150])
    assert drain(buf) == []
    feed(buf, big[150:] + encode(2, 4, b"next"))
    assert drain(buf) == [(2, b"next", [])]


def test_fds_with_the_body_of_an_oversized_message_are_closed():
    r, w = os.pipe()
    buf = ReceiveBuffer(64)
    big = encode(1, 10, bytes(200))
    feed(buf, big[:40])
    assert drain(buf) == [(1, None, [])]
    feed(buf, big[40:100], fds=[r, w])  # nobody can take them any more
    for fd in (r, w):
        with pytest.raises(OSError):
            os.fstat(fd)
    feed(buf, big[100:] + encode(2, 4, b"ok"))
    assert drain(buf) == [(2, b"ok", [])]


def test_oversized_message_and_the_next_in_one_read():
    buf = ReceiveBuffer(64)
    feed(buf, encode(1, 10, bytes(100)) + encode(2, 4, b"ok"))
    assert drain(buf) == [(1, None, []), (2, b"ok", [])]


def test_largest_allowed_message_fits():
    buf = ReceiveBuffer(64)
    feed(buf, encode(1, 10, bytes(48)))
    assert drain(buf) == [(1, bytes(48), [])]


@pytest.mark.parametrize("size", [0, 1, 15])
def test_size_below_a_header_cannot_be_framed(size):
    buf = ReceiveBuffer(1024)
    feed(buf, HEADER.pack(1, 4, size, 0, 0))
    with pytest.raises(FramingError):
        buf.next_message()


# ---------------------------------------------------------------- plain messages (the hot path)
def test_next_plain_gives_header_fields_and_position_of_any_command():
    buf = ReceiveBuffer(1024)
    feed(buf, encode(5, 9, b"abc") + encode(6, 12, b"hello"))
    first = buf.next_plain()
    assert first is not None
    msg_id, command, size, flags, error, index = first
    assert (msg_id, command, size, flags, error) == (5, 9, 19, 0, 0)
    assert bytes(buf.data[index + 16 : index + size]) == b"abc"
    second = buf.next_plain()
    assert second is not None and second[:3] == (6, 12, 21)
    assert buf.next_plain() is None and buf.next_message() is None


def test_next_plain_leaves_messages_with_fds_to_next_message():
    buf = ReceiveBuffer(1024)
    feed(buf, encode(1, 9, b"a"))
    feed(buf, encode(2, 9, b"b"), fds=[41])
    assert buf.next_plain() is None  # fds wait: the general path hands them out with their message
    assert drain(buf) == [(1, b"a", []), (2, b"b", [41])]


def test_next_plain_leaves_incomplete_oversized_and_malformed_messages():
    buf = ReceiveBuffer(64)
    data = encode(1, 9, b"x" * 10)
    feed(buf, data[:20])
    assert buf.next_plain() is None and buf.buffered == 20
    feed(buf, data[20:])
    assert buf.next_plain() is not None
    feed(buf, HEADER.pack(2, 9, 1000, 0, 0))
    assert buf.next_plain() is None
    frame = buf.next_message()
    assert frame is not None and frame.body is None  # oversized: reported by next_message
    buf2 = ReceiveBuffer(64)
    feed(buf2, HEADER.pack(3, 9, 4, 0, 0))
    assert buf2.next_plain() is None
    with pytest.raises(FramingError):
        buf2.next_message()


def test_plain_and_framed_messages_interleave_in_order():
    buf = ReceiveBuffer(128)
    sent = [(i, bytes([i % 256]) * (i % 7)) for i in range(1, 300)]
    got = []
    for msg_id, payload in sent:
        feed(buf, encode(msg_id, 9, payload))
        if msg_id % 2:
            plain = buf.next_plain()
            assert plain is not None
            got.append((plain[0], bytes(buf.data[plain[5] + 16 : plain[5] + plain[2]])))
        else:
            got += [(i, body) for i, body, _fds in drain(buf)]
    assert got == sent


def test_feed_refuses_more_than_the_buffer_holds():
    buf = ReceiveBuffer(64)
    with pytest.raises(FramingError):
        buf.feed(b"\0" * 10_000)


def test_close_fds_closes_what_was_never_handed_out():
    r, w = os.pipe()
    buf = ReceiveBuffer(1024)
    feed(buf, encode(1, 8, b"x" * 10)[:18], fds=[r, w])
    buf.close_fds()
    for fd in (r, w):
        with pytest.raises(OSError):
            os.fstat(fd)
