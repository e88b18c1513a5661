# SPDX-License-Identifier: BSD-3-Clause
"""The listening socket: one client at a time, then the next, until stopped.

A second client that connects while one is being served is refused at once: it
gets an EBUSY error reply to its VERSION (msg_id 0, QEMU's first id) and EOF, not a
silent 5 s timeout.  Two cases are not a second client: a client that closed and
reconnected at once (its old connection's last messages and EOF are still queued:
they are handled first, then the new one is served), and a new client that arrives
while the current one is stalled (not negotiated, or in the middle of a message):
it waits until the stalled one finishes or is dropped (`message_timeout`).

The socket (endpoint.py) is created with its mode and group before it is visible, or
passed by systemd, and removed on shutdown (unless systemd's).  A live server holds an
exclusive `flock` on SOCKET.lock for as long as it listens, so a socket file left by a
server that was killed (SIGKILL, a crash) is told from a busy one and replaced, and
two servers never share a path.  SIGINT/SIGTERM stop the server cleanly; SIGHUP calls
`on_reopen`.
"""
from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import time
from collections.abc import Callable

from vfu_platform.endpoint import Endpoint, InheritedSocket
from vfu_platform.protocol.codec import encode_error
from vfu_platform.protocol.constants import Command
from vfu_platform.server.connection import Connection
from vfu_platform.server.device_api import ServedDevice
from vfu_platform.server.loop import EventLoop, TimerHandle
from vfu_platform.server.session import DeviceLog, MessageObserver, Session, SessionOptions

log = logging.getLogger("vfu_platform.server")

#: refused connections answered at once when more than this many wait for their first message
_MAX_REFUSING = 8
#: how long a refused connection may take to send its first message
_REFUSAL_WAIT = 1.0




class Server:
    def __init__(
        self,
        path: str,
        device: ServedDevice,
        options: SessionOptions | None = None,
        tracer: MessageObserver | None = None,
        loop: EventLoop | None = None,
        label: str = "",
    ) -> None:
        self.path = path
        #: prefixes this server's log lines (its socket, when a process serves several devices)
        self.label = label
        self.log = DeviceLog(log, label)
        self.device = device
        self.options = options or SessionOptions()
        #: the one observer of every message and event (a Tracer, a -vv log, or both)
        self.tracer = tracer
        self.loop = loop or EventLoop()
        #: the client being served (its I/O edge) and its protocol state
        self.connection: Connection | None = None
        self.session: Session | None = None
        self.sessions_served = 0
        #: wall-clock time (time.time()) the current or last client was admitted
        self.session_started: float | None = None
        self.on_session_end: list[Callable[[Session], None]] = []
        self._listener: socket.socket | None = None
        self._wakeup_r: int | None = None
        self._wakeup_w: int | None = None
        self._endpoint: Endpoint | None = None
        self._stop_signal = 0
        #: called on SIGHUP (reopen the log and trace files: logrotate)
        self.on_reopen: list[Callable[[], None]] = []
        #: a connection waiting for a stalled session to end, and its deadline timer
        self._pending: socket.socket | None = None
        self._pending_timer: TimerHandle | None = None
        #: refused connections waiting for their first message, to answer it EBUSY
        self._refusing: dict[int, tuple[socket.socket, TimerHandle]] = {}
        self.refused = 0

    # ------------------------------------------------------------ setup / teardown
    def listen(self, mode: int = 0o600, gid: int | None = None, inherited: InheritedSocket | None = None) -> None:
        """Listen on `path` (mode and group set before it is visible), or serve on `inherited`.

        Either way the path's lock is taken (endpoint.PathLock); SocketPathError says why not.
        """
        if inherited is not None:
            endpoint = Endpoint.adopt(inherited, self.path)
        else:
            endpoint = Endpoint.create(self.path, mode, gid)
        endpoint.sock.setblocking(False)
        self._endpoint = endpoint
        self._listener = endpoint.sock
        self.loop.add_reader(endpoint.sock.fileno(), self._on_connection)
        self.log.info("listening on %s%s", self.path, " (socket passed by the service manager)" if inherited else "")

    def install_signal_handlers(self) -> None:
        """SIGINT/SIGTERM end the loop; SIGHUP calls `on_reopen`, from the loop (never inside a write).

        The wakeup fd gets epoll out of its wait and carries the signal numbers.
        """
        self._wakeup_r, self._wakeup_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._wakeup_w, warn_on_full_buffer=False)
        self.loop.add_reader(self._wakeup_r, self._drain_wakeup)
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._on_signal)
        signal.signal(signal.SIGHUP, lambda _signum, _frame: None)  # the work is done in _drain_wakeup

    def _on_signal(self, signum: int, _frame: object) -> None:
        # No logging here: the signal may have interrupted a log write (a reentrant flush).
        self._stop_signal = signum
        self.loop.stopping = True

    def _drain_wakeup(self) -> None:
        try:
            signals = os.read(self._wakeup_r, 512)  # type: ignore[arg-type]
        except BlockingIOError:
            return
        if signal.SIGHUP in signals:
            log.info("SIGHUP: reopening the log and trace files")
            for reopen in self.on_reopen:
                reopen()

    def close(self) -> None:
        self._refuse_pending("server shutting down")
        for fd in list(self._refusing):
            self._finish_refusal(fd, b"")
        if self.connection is not None and not self.connection.closed:
            self.connection.close("server shutting down")
        if self._endpoint is not None:  # the socket file (unless systemd's) and the lock go
            self.loop.remove_reader(self._endpoint.sock.fileno())
            self._endpoint.close()
            self._endpoint = None
            self._listener = None
        if self._wakeup_r is not None:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGHUP, signal.SIG_DFL)
            self.loop.remove_reader(self._wakeup_r)
            os.close(self._wakeup_r)
            os.close(self._wakeup_w)  # type: ignore[arg-type]
            self._wakeup_r = self._wakeup_w = None

    # ------------------------------------------------------------ serving
    def _on_connection(self) -> None:
        assert self._listener is not None
        try:
            conn, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                self.log.error("cannot accept a client: %s", exc.strerror)
                return
            raise
        # Decide once the other events of this loop turn have run: a client that
        # disconnected and reconnected at once has its EOF in the same turn, and the
        # listener's fd sorts before the session's, so deciding now would refuse it.
        self.loop.call_later(0, lambda: self._admit(conn))

    def _admit(self, conn: socket.socket) -> None:
        if self._listener is None:  # shut down meanwhile
            conn.close()
            return
        current = self.connection
        if current is not None and not current.closed and not current.finish_if_hung_up():
            if current.session.stalled and self._pending is None:
                # The current client may be on its way out (it is dropped once it has been
                # stalled for message_timeout): let the new one wait for that, not fail.
                self.log.info("a new client waits: the current one is stalled")
                self._pending = conn
                self._pending_timer = self.loop.call_later(  # its stall began before: a little slack
                    self.options.message_timeout * 1.1 + 0.05,
                    lambda: self._refuse_pending("the current client is still served"))
                return
            self._refuse(conn, "a client is already being served")
            return
        self._start_session(conn)

    def _start_session(self, conn: socket.socket) -> None:
        conn.setblocking(True)
        self.sessions_served += 1
        self.session_started = time.time()
        if self.tracer:
            self.tracer.event("client-connected", number=self.sessions_served)
        self.log.info("client %d connected", self.sessions_served)
        self.connection = Connection(conn, self.device, self.loop, self.options, self.tracer, self.label)
        self.session = self.connection.session
        self.connection.on_close = self._session_closed
        self.connection.start()

    def _session_closed(self, connection: Connection) -> None:
        for callback in self.on_session_end:
            callback(connection.session)
        if self._pending is not None:
            conn, self._pending = self._pending, None
            if self._pending_timer is not None:
                self._pending_timer.cancel()
                self._pending_timer = None
            # Not from inside the old session's close: once this loop turn is over.
            self.loop.call_later(0, lambda: self._admit(conn))

    def _refuse_pending(self, why: str) -> None:
        if self._pending_timer is not None:
            self._pending_timer.cancel()
            self._pending_timer = None
        if self._pending is not None:
            conn, self._pending = self._pending, None
            self._refuse(conn, why)

    def _refuse(self, conn: socket.socket, why: str) -> None:
        """Tell a client it cannot be served: EBUSY in answer to its first message (VERSION), then EOF.

        The answer waits for that message (at most a second): a client still sending its
        VERSION to a socket already closed would see EPIPE instead of the reason.
        """
        self.refused += 1
        self.log.warning("refusing a second client: %s", why)
        if self.tracer:
            self.tracer.event("client-refused", reason=why)
        if len(self._refusing) >= _MAX_REFUSING:
            self._answer_busy(conn, b"")
            return
        conn.setblocking(False)
        fd = conn.fileno()
        timer = self.loop.call_later(_REFUSAL_WAIT, lambda: self._finish_refusal(fd, b""))
        self._refusing[fd] = (conn, timer)
        self.loop.add_reader(fd, lambda: self._on_refused_readable(fd))

    def _on_refused_readable(self, fd: int) -> None:
        entry = self._refusing.get(fd)
        if entry is None:
            return
        try:
            data = entry[0].recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        self._finish_refusal(fd, data)

    def _finish_refusal(self, fd: int, data: bytes) -> None:
        entry = self._refusing.pop(fd, None)
        if entry is None:
            return
        conn, timer = entry
        timer.cancel()
        self.loop.remove_reader(fd)
        self._answer_busy(conn, data)

    @staticmethod
    def _answer_busy(conn: socket.socket, data: bytes) -> None:
        msg_id = int.from_bytes(data[0:2], "little") if len(data) >= 2 else 0
        command = int.from_bytes(data[2:4], "little") if len(data) >= 4 else Command.VERSION
        try:
            conn.setblocking(False)
            conn.send(encode_error(msg_id, command, errno.EBUSY))
            # Read what else it sent: closing with unread data resets the connection, and
            # the peer could lose the error reply.
            for _ in range(16):
                if not conn.recv(65536):
                    break
        except OSError:
            pass
        conn.close()

    def serve_forever(self) -> None:
        self.loop.run_until(lambda: False)
        if self._stop_signal:
            log.info("%s: shutting down", signal.Signals(self._stop_signal).name)
