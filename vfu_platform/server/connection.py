# SPDX-License-Identifier: BSD-3-Clause
"""The I/O edge of one client: its socket, its sans-I/O `Session`, and the event loop.

The only place a client's socket is read or written, and it never waits: every
device of the process shares the loop, so one client must not hold up another.
When the socket is readable, one recvmsg goes straight into the session's
receive buffer, the session handles what arrived, and what it queued is sent
on the non-blocking socket.  What the socket does not take at once waits in a
backlog; meanwhile the client is not read (backpressure: a client that does not
read its replies cannot make the server buffer without bound), and the socket's
writability resumes both.  A timer follows the session's `deadline` (a stalled
client, a DMA request left unanswered).  Output the session queues between reads
(a device's DMA request from its own timer) is sent at once (`Session.on_output`).

A client that stops reading its replies is dropped after message_timeout: when
its backlog has not moved for that long, or, for replies small enough to sit in
the socket buffer, when it took no byte of them (SIOCOUTQ), checked every
quarter of message_timeout.
"""
from __future__ import annotations

import array
import collections
import fcntl
import logging
import select
import socket
import termios
import time
from collections.abc import Callable

from vfu_platform.server.device_api import ServedDevice
from vfu_platform.server.loop import EventLoop, TimerHandle
from vfu_platform.server.session import MessageObserver, Session, SessionOptions
from vfu_platform.transport import Channel, ConnectionClosed

log = logging.getLogger("vfu_platform.connection")

_HANGUP = select.POLLHUP | select.POLLRDHUP | select.POLLERR
_SIOCOUTQ = termios.TIOCOUTQ  # bytes queued on a socket that the peer has not read


class Connection:
    """One served client: receive, let the session handle, send, keep its deadline armed."""

    def __init__(self, sock: socket.socket, device: ServedDevice, loop: EventLoop,
                 options: SessionOptions, observer: MessageObserver | None = None, label: str = "") -> None:
        self.loop = loop
        self.session = Session(device, loop, options, observer, label=label)
        self.channel = Channel(sock, buffer=self.session.buffer, send_timeout=0.0)  # non-blocking
        #: output the socket did not take yet, in order: (bytes, fds to go with the first byte)
        self._backlog: collections.deque[tuple[bytes | memoryview, tuple[int, ...] | list[int]]] = collections.deque()
        self._blocked_since: float | None = None  # when the backlog began (reading paused)
        self._fd = self.channel.fileno()
        self._timer: TimerHandle | None = None
        self._timer_when: float | None = None
        self.session.on_output = self._on_output
        self._unread_check: TimerHandle | None = None
        self._last_unread = 0
        self._unread_since: float | None = None
        self._flushes = 0  # sends so far (the unread check sees whether more went out)
        self._flushes_seen = 0
        #: called once when the connection is over (the listener admits a waiting client)
        self.on_close: Callable[[Connection], None] | None = None
        self.session.on_close = self._session_closed

    @property
    def closed(self) -> bool:
        return self.session.closed

    def start(self) -> None:
        self.session.start()
        self.loop.add_reader(self._fd, self._on_readable)
        self._follow_deadline()
        self._arm_unread_check()

    def close(self, reason: str) -> None:
        self.session.close(reason)

    # ------------------------------------------------------------ events
    def _on_readable(self) -> None:
        session = self.session
        if session.closed:
            return
        channel = self.channel
        try:
            channel.receive()
        except ConnectionClosed as exc:
            session.connection_lost(f"connection closed ({exc})")
            return
        truncated, channel.truncated_fds = channel.truncated_fds, False
        session.process(truncated)
        if session.outbox:
            self._flush()
        self._follow_deadline()

    def _flush(self) -> None:
        """Send what the session queued; consecutive messages without fds go in one send."""
        session = self.session
        out = session.take_output()
        self._flushes += 1
        backlog = self._backlog
        try:
            if len(out) == 1 and not backlog:  # the usual case: one reply
                data, fds = out[0]
                sent = self.channel.send_some(data, fds)
                if sent == len(data):
                    return
                backlog.append((memoryview(data)[sent:], ()) if sent else (data, fds))
            else:
                batch: list[bytes] = []
                for data, fds in out:
                    if fds:
                        if batch:
                            backlog.append((b"".join(batch), ()))
                            batch = []
                        backlog.append((data, fds))
                    else:
                        batch.append(data)
                if batch:
                    backlog.append((b"".join(batch), ()))
            self._drain()
        except ConnectionClosed as exc:
            session.connection_lost(f"connection closed while replying ({exc})")

    def _drain(self) -> None:
        """Send the backlog as far as the socket takes it; pause reading while any is left."""
        backlog = self._backlog
        while backlog:
            data, fds = backlog[0]
            sent = self.channel.send_some(data, fds)
            if sent == len(data):
                backlog.popleft()
            elif sent:
                backlog[0] = (memoryview(data)[sent:], ())  # the fds went with the first byte
            else:
                if self._blocked_since is None:
                    self._blocked_since = time.monotonic()
                    self.loop.remove_reader(self._fd)
                    self.loop.add_writer(self._fd, self._on_writable)
                return
        if self._blocked_since is not None:
            self._blocked_since = None
            self.loop.remove_writer(self._fd)
            self.loop.add_reader(self._fd, self._on_readable)

    def _on_writable(self) -> None:
        if self.session.closed:
            return
        try:
            self._drain()
        except ConnectionClosed as exc:
            self.session.connection_lost(f"connection closed while replying ({exc})")

    def _on_output(self) -> None:
        """The session queued output between reads (a device's DMA request): send it now."""
        self._flush()
        self._follow_deadline()

    def _follow_deadline(self) -> None:
        when = None if self.session.closed else self.session.deadline
        if when == self._timer_when:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_when = when
        if when is not None:
            self._timer = self.loop.call_later(when - time.monotonic(), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_when = None
        session = self.session
        session.handle_timeout()
        if session.outbox:
            self._flush()
        self._follow_deadline()

    # ------------------------------------------------------------ a client that does not read
    def _arm_unread_check(self) -> None:
        self._unread_check = self.loop.call_later(self.session.options.message_timeout / 4, self._check_unread)

    def _unread_bytes(self) -> int:
        out = array.array("i", [0])
        try:
            fcntl.ioctl(self._fd, _SIOCOUTQ, out, True)
        except OSError:
            return 0
        return out[0]

    def _check_unread(self) -> None:
        """Drop a client that has not taken one byte of its queued replies for message_timeout."""
        self._unread_check = None
        if self.session.closed:
            return
        now = time.monotonic()
        timeout = self.session.options.message_timeout
        if self._blocked_since is not None and now - self._blocked_since >= timeout:
            pending = sum(len(data) for data, _fds in self._backlog)
            self.session.drop_stalled(f"the client did not take a message within {timeout:g} s "
                                      f"({pending} bytes waiting, its socket buffer full)")
            return
        unread = self._unread_bytes()
        sent_more, self._flushes_seen = self._flushes != self._flushes_seen, self._flushes
        if unread == 0 or unread < self._last_unread or sent_more:
            # It reads, or there is nothing to read, or we sent more meanwhile (a client that
            # keeps sending and never reads fills the buffer: the send times out instead).
            self._unread_since = None if unread == 0 or unread < self._last_unread else now
        elif self._unread_since is None:
            self._unread_since = now
        elif now - self._unread_since >= timeout:
            self.session.drop_stalled(f"the client did not take a message within {timeout:g} s "
                                      f"({unread} bytes unread)")
            return
        self._last_unread = unread
        self._arm_unread_check()

    def _session_closed(self, _session: Session) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._unread_check is not None:
            self._unread_check.cancel()
            self._unread_check = None
        self.loop.remove_reader(self._fd)
        self.loop.remove_writer(self._fd)
        # Replies queued before the close (framing lost after them): sent if the socket takes them now.
        last_words = [*self._backlog, *self.session.take_output()]
        self._backlog.clear()
        for data, fds in last_words:
            if not self.channel.send_nowait(data, fds):
                break
        self.channel.close()
        callback, self.on_close = self.on_close, None
        if callback is not None:
            callback(self)

    # ------------------------------------------------------------ a client that hung up
    def peer_hung_up(self) -> bool:
        """True if the client has closed (or shut down) its end: what it sent is all there will be."""
        if self.session.closed:
            return True
        poller = select.poll()
        poller.register(self._fd, select.POLLIN | select.POLLRDHUP)
        return any(mask & _HANGUP for _fd, mask in poller.poll(0))

    def finish_if_hung_up(self) -> bool:
        """A client that hung up: handle what it sent before going, then close.  True if closed.

        The listener asks before it refuses a new connection: a client that closed and
        reconnected at once has its last messages and its EOF still queued, and must not
        be taken for a second client.
        """
        if not self.peer_hung_up():
            return self.session.closed
        deadline = time.monotonic() + self.session.options.message_timeout
        while not self.session.closed and time.monotonic() < deadline:
            self._on_readable()  # each call reads once; a hung-up peer's stream ends in EOF
        if not self.session.closed:
            self.session.close("client hung up")
        return True
