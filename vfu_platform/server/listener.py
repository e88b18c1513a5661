# SPDX-License-Identifier: BSD-3-Clause
"""The listening socket: one client at a time, then the next, until stopped.

A second client that connects while one is being served is refused at once: it
gets an EBUSY error reply to its VERSION (msg_id 0, QEMU's first id) and EOF, not a
silent 5 s timeout.  Two cases are not a second client: a client that closed and
reconnected at once (its old connection's last messages and EOF are still queued:
they are handled first, then the new one is served), and a new client that arrives
while the current one is stalled (not negotiated, or in the middle of a message):
it waits until the stalled one finishes or is dropped (`message_timeout`).

The socket file is created mode 0600 and removed on shutdown; SIGINT/SIGTERM stop
the server cleanly.  A live server holds an exclusive `flock` on SOCKET.lock for as
long as it listens, so a socket file left by a server that was killed (SIGKILL, a
crash) is told from a busy one and replaced, and two servers never share a path.
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import signal
import socket
import stat
from collections.abc import Callable

from vfu_platform.protocol.codec import encode_error
from vfu_platform.protocol.constants import Command

from vfu_platform.server.device_api import ServedDevice
from vfu_platform.server.loop import EventLoop, TimerHandle
from vfu_platform.server.session import Session, SessionOptions
from vfu_platform.trace import Tracer
from vfu_platform.transport import Channel

log = logging.getLogger("vfu_platform.server")

#: refused connections answered at once when more than this many wait for their first message
_MAX_REFUSING = 8
#: how long a refused connection may take to send its first message
_REFUSAL_WAIT = 1.0


class SocketPathError(Exception):
    """The socket path cannot be used (busy, stale, not a socket, no directory)."""


def lock_path(path: str) -> str:
    """The lock file a live server holds for socket `path`."""
    return f"{path}.lock"


def _lock_held(path: str) -> bool | None:
    """Whether a live server holds the lock of `path` (None: no lock file)."""
    try:
        fd = os.open(lock_path(path), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def check_socket_path(path: str) -> None:
    """Refuse a path that is in use or left over, with a message that says which.

    A socket file whose server left its lock file unlocked (it died) is not refused:
    `Server.listen` replaces it.
    """
    _check_socket_path(path, _lock_held(path))


def _check_socket_path(path: str, lock_held: bool | None) -> bool:
    """Raise SocketPathError if `path` cannot be used; True if it is a stale socket to replace."""
    if lock_held:
        raise SocketPathError(f"{path} is busy: a live server holds {lock_path(path)}")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise SocketPathError(f"socket directory {parent} does not exist") from None
        return False
    if not stat.S_ISSOCK(st.st_mode):
        raise SocketPathError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        if lock_held is False:  # its server's lock is free: that server is gone
            return True
        raise SocketPathError(f"{path} is a stale socket (no server listens): remove it first") from None
    except OSError as exc:
        raise SocketPathError(f"{path}: {exc.strerror}") from None
    else:
        raise SocketPathError(f"{path} is busy: another server is listening on it")
    finally:
        probe.close()


class Server:
    def __init__(
        self,
        path: str,
        device: ServedDevice,
        options: SessionOptions | None = None,
        tracer: Tracer | None = None,
        loop: EventLoop | None = None,
    ) -> None:
        self.path = path
        self.device = device
        self.options = options or SessionOptions()
        self.tracer = tracer
        self.loop = loop or EventLoop()
        self.session: Session | None = None
        self.sessions_served = 0
        self.on_session_end: list[Callable[[Session], None]] = []
        self._listener: socket.socket | None = None
        self._wakeup_r: int | None = None
        self._wakeup_w: int | None = None
        self._lock_fd: int | None = None
        #: a connection waiting for a stalled session to end, and its deadline timer
        self._pending: socket.socket | None = None
        self._pending_timer: TimerHandle | None = None
        #: refused connections waiting for their first message, to answer it EBUSY
        self._refusing: dict[int, tuple[socket.socket, TimerHandle]] = {}
        self.refused = 0

    # ------------------------------------------------------------ setup / teardown
    def _take_lock(self) -> None:
        """flock SOCKET.lock for as long as this server listens (exclusive, never waits)."""
        path = lock_path(self.path)
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                raise SocketPathError(f"cannot create {path}: {exc.strerror}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise SocketPathError(f"{self.path} is busy: a live server holds {path}") from None
            try:  # the file may have been removed (a server shutting down) between open and flock
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                self._lock_fd = fd
                return
            os.close(fd)

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            try:
                os.unlink(lock_path(self.path))  # while still holding it: nobody can take a removed file
            except FileNotFoundError:
                pass
            os.close(self._lock_fd)
            self._lock_fd = None

    def listen(self) -> None:
        self._take_lock()
        try:
            stale = _check_socket_path(self.path, lock_held=False)
        except SocketPathError:
            self._release_lock()
            raise
        if stale:
            log.warning("replacing %s: a stale socket left by a server that is gone", self.path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # Bind under a private name and rename into place once listening: whoever sees
        # the socket file can connect at once.  Born 0600: no window for others.
        staging = f"{self.path}.{os.getpid()}.tmp"
        old_umask = os.umask(0o177)
        try:
            listener.bind(staging)
            listener.listen(4)
            os.rename(staging, self.path)
        except OSError as exc:
            listener.close()
            try:
                os.unlink(staging)
            except FileNotFoundError:
                pass
            self._release_lock()
            raise SocketPathError(f"cannot listen on {self.path}: {exc.strerror}") from None
        finally:
            os.umask(old_umask)
        listener.setblocking(False)
        self._listener = listener
        self.loop.add_reader(listener.fileno(), self._on_connection)
        log.info("listening on %s", self.path)

    def install_signal_handlers(self) -> None:
        """SIGINT/SIGTERM end the loop; the wakeup fd gets epoll out of its wait."""
        self._wakeup_r, self._wakeup_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._wakeup_w, warn_on_full_buffer=False)
        self.loop.add_reader(self._wakeup_r, self._drain_wakeup)
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, _frame: object) -> None:
        log.info("signal %d: shutting down", signum)
        self.loop.stopping = True

    def _drain_wakeup(self) -> None:
        try:
            os.read(self._wakeup_r, 512)  # type: ignore[arg-type]
        except BlockingIOError:
            pass

    def close(self) -> None:
        self._refuse_pending("server shutting down")
        for fd in list(self._refusing):
            self._finish_refusal(fd, b"")
        if self.session is not None and not self.session.closed:
            self.session.close("server shutting down")
        if self._listener is not None:
            self.loop.remove_reader(self._listener.fileno())
            self._listener.close()
            self._listener = None
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        self._release_lock()
        if self._wakeup_r is not None:
            signal.set_wakeup_fd(-1)
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
                log.error("cannot accept a client: %s", exc.strerror)
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
        session = self.session
        if session is not None and not session.closed and not session.finish_if_hung_up():
            if session.stalled and self._pending is None:
                # The current client may be on its way out (it is dropped once it has been
                # stalled for message_timeout): let the new one wait for that, not fail.
                log.info("a new client waits: the current one is stalled")
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
        if self.tracer:
            self.tracer.event("client-connected", number=self.sessions_served)
        log.info("client %d connected", self.sessions_served)
        channel = Channel(conn, self.options.max_message_size, send_timeout=self.options.message_timeout)
        self.session = Session(channel, self.device, self.loop, self.options, self.tracer)
        self.session.on_close = self._session_closed
        self.session.start()

    def _session_closed(self, session: Session) -> None:
        for callback in self.on_session_end:
            callback(session)
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
        log.warning("refusing a second client: %s", why)
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
