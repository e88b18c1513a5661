# SPDX-License-Identifier: BSD-3-Clause
"""Message framing over a byte stream, sans I/O.

The transport receives straight into `ReceiveBuffer.writable()` (no copy) and
reports what arrived with `commit()` (or a caller hands it bytes with `feed()`);
`next_message()` then hands out whole messages as memoryviews into the buffer, and
`next_plain()` the header fields and position of a whole message that carries no
fds (the hot path: no objects built).  Framing knows headers and sizes only; what a
command means is the session's business.

A body handed out stays valid until the next `writable()`/`feed()`: the session
handles each message before it lets anything more be received.

File descriptors: the sender attaches fds to the sendmsg() that carries a
message's header, and Linux stops a stream recvmsg() right after the chunk that
carried fds.  So fds that arrive with a read belong to the *last* message that
starts inside that read (or, if none starts there, to the message in progress).
Positions are tracked as absolute stream offsets so compaction cannot confuse them.
"""
from __future__ import annotations

import os
from typing import NamedTuple

from vfu_platform.protocol.constants import HEADER_SIZE
from vfu_platform.protocol.errors import FramingError
from vfu_platform.protocol.header import HEADER, Header

_COMPACT_BELOW = 4096
_unpack_header = HEADER.unpack_from

#: (msg_id, command, size, flags, error, index of the message's first byte in `ReceiveBuffer.data`)
PlainMessage = tuple[int, int, int, int, int, int]


class Frame(NamedTuple):
    header: Header
    body: memoryview | None  # None: the message was too large and its body was discarded
    fds: list[int]


class ReceiveBuffer:
    def __init__(self, max_message_size: int) -> None:
        self.max_message_size = max_message_size
        self._buf = bytearray(max_message_size + _COMPACT_BELOW)
        self._start = 0  # buffer index of the first unconsumed byte
        self._end = 0  # buffer index one past the last received byte
        self._base = 0  # absolute stream offset of buffer index 0
        self._scan = 0  # absolute offset of the next message start not yet located
        self._located = 0  # absolute offset of the last message start located (the one ending at _scan)
        self._fds: dict[int, list[int]] = {}  # absolute message start -> fds
        self._discard = 0  # bytes of an oversized body still to drop

    # ------------------------------------------------------------ receiving side
    def writable(self) -> memoryview:
        """Free space to receive into (compacting first when little is left).

        Release the view before handing out messages: a body handed out later views the same bytes.
        """
        if self._start == self._end:
            self._base += self._start
            self._start = self._end = 0
        elif len(self._buf) - self._end < _COMPACT_BELOW:
            pending = self._end - self._start
            self._buf[:pending] = self._buf[self._start : self._end]
            self._base += self._start
            self._start, self._end = 0, pending
        return memoryview(self._buf)[self._end :]

    def feed(self, data: bytes | bytearray | memoryview, fds: list[int] | tuple[int, ...] = ()) -> None:
        """Take `data` as one receive (with the fds that came with it); copies into the buffer.

        Raises FramingError if more arrived than the buffer can hold: a peer cannot send
        more than one message's worth before its messages are handled.
        """
        view = self.writable()
        try:
            if len(data) > len(view):
                raise FramingError(f"{len(data)} bytes received at once, room for {len(view)}")
            view[: len(data)] = data
        finally:
            view.release()
        self.commit(len(data), fds)

    def commit(self, nbytes: int, fds: list[int] | tuple[int, ...] = ()) -> None:
        chunk_start = self._base + self._end
        self._end += nbytes
        if fds:
            owner = self._last_start_from(chunk_start)
            if owner < self._base + self._start:
                # The rest of a message already handed out (an oversized one being
                # discarded): nobody will ever take these fds.
                for fd in fds:
                    os.close(fd)
                return
            self._fds.setdefault(owner, []).extend(fds)

    def _last_start_from(self, chunk_start: int) -> int:
        """Locate message starts up to the received end; return the one owning fds of this chunk."""
        end = self._base + self._end
        last = None
        pos = self._scan
        owner_in_progress = self._located
        while pos < end:
            owner_in_progress = pos
            if pos >= chunk_start:
                last = pos
            index = pos - self._base
            if index + HEADER_SIZE > self._end or index < 0:
                break
            size = HEADER.unpack_from(self._buf, index)[2]
            if size < HEADER_SIZE:
                break  # next_message() reports the framing error
            pos += size
        if pos >= end:
            self._scan, self._located = pos, owner_in_progress
        else:
            self._scan = owner_in_progress
        if last is not None:
            return last
        # No message starts in this chunk: the fds came with the body of the one in progress.
        return owner_in_progress

    # ------------------------------------------------------------ consuming side
    def next_message(self) -> Frame | None:
        """The next whole message, or None until more bytes arrive.

        A returned body stays valid until more is received.
        """
        if self._discard:
            dropped = min(self._discard, self._end - self._start)
            self._start += dropped
            self._discard -= dropped
            if self._discard:
                return None
        if self._end - self._start < HEADER_SIZE:
            return None
        header = Header._make(HEADER.unpack_from(self._buf, self._start))
        if header.size < HEADER_SIZE:
            raise FramingError(f"message size {header.size} is smaller than a header")
        msg_start = self._base + self._start
        if header.size > self.max_message_size:
            # Drop the body as it arrives and let the caller answer EINVAL.
            self._start += HEADER_SIZE
            self._discard = header.size - HEADER_SIZE
            self._advance_scan(msg_start, header.size)
            return Frame(header, None, self._fds.pop(msg_start, []))
        if self._end - self._start < header.size:
            return None
        body = memoryview(self._buf)[self._start + HEADER_SIZE : self._start + header.size]
        self._start += header.size
        self._advance_scan(msg_start, header.size)
        return Frame(header, body, self._fds.pop(msg_start, []))

    def next_plain(self) -> PlainMessage | None:
        """The next message's header fields and position, if it is whole and plain.

        Plain: no fds are waiting for any message, nothing is being discarded, and it
        fits `max_message_size`.  None means "use `next_message()`" (which also reports
        what is wrong with the stream).  The message is consumed; its bytes stay in
        `data[index : index + size]` until more is received.
        """
        start = self._start
        if self._fds or self._discard or self._end - start < HEADER_SIZE:
            return None
        msg_id, command, size, flags, error = _unpack_header(self._buf, start)
        if size < HEADER_SIZE or size > self._end - start or size > self.max_message_size:
            return None
        self._start = start + size
        msg_start = self._base + start
        if self._scan <= msg_start:
            self._scan, self._located = msg_start + size, msg_start
        return msg_id, command, size, flags, error, start

    @property
    def data(self) -> bytearray:
        return self._buf

    def _advance_scan(self, msg_start: int, size: int) -> None:
        if self._scan <= msg_start:
            self._scan, self._located = msg_start + size, msg_start

    def close_fds(self) -> None:
        """Close fds received for messages that will never be handled."""
        for fds in self._fds.values():
            for fd in fds:
                os.close(fd)
        self._fds.clear()

    def discard(self) -> None:
        """The connection is gone: close its fds and give the buffer's memory back now.

        Without this a closed session's buffer (max_message_size bytes) lives until the
        cycle collector finds the session, and a client that reconnects quickly makes the
        server's RSS climb by a buffer per connection in the meantime.
        """
        self.close_fds()
        self._buf = bytearray()
        self._start = self._end = self._discard = 0

    @property
    def position(self) -> int:
        """Absolute stream offset of the first byte not yet consumed (progress marker)."""
        return self._base + self._start

    @property
    def buffered(self) -> int:
        return self._end - self._start
