# SPDX-License-Identifier: BSD-3-Clause
"""The listening socket: one client at a time, then the next, until stopped.

A second client that connects while one is being served is accepted and closed
at once (it sees EOF instead of a silent 5 s timeout).  The socket file is created
mode 0600 and removed on shutdown; SIGINT/SIGTERM stop the server cleanly.
"""
from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import stat
from collections.abc import Callable

from vfu_platform.server.device_api import ServedDevice
from vfu_platform.server.loop import EventLoop
from vfu_platform.server.session import Session, SessionOptions
from vfu_platform.trace import Tracer
from vfu_platform.transport import Channel

log = logging.getLogger("vfu_platform.server")


class SocketPathError(Exception):
    """The socket path cannot be used (busy, stale, not a socket, no directory)."""


def check_socket_path(path: str) -> None:
    """Refuse a path that is in use or left over, with a message that says which."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise SocketPathError(f"socket directory {parent} does not exist") from None
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise SocketPathError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
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

    # ------------------------------------------------------------ setup / teardown
    def listen(self) -> None:
        check_socket_path(self.path)
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
        if self.session is not None and not self.session.closed:
            log.warning("refusing a second client while one is being served")
            conn.close()
            return
        if self._listener is None:  # shut down meanwhile
            conn.close()
            return
        conn.setblocking(True)
        self.sessions_served += 1
        if self.tracer:
            self.tracer.event("client-connected", number=self.sessions_served)
        log.info("client %d connected", self.sessions_served)
        self.session = Session(Channel(conn, self.options.max_message_size), self.device, self.loop, self.options, self.tracer)
        self.session.start()

    def serve_forever(self) -> None:
        self.loop.run_until(lambda: False)
