# SPDX-License-Identifier: BSD-3-Clause
"""The host-side control channel: drive a served model while a client uses it.

`vfu-platform serve --control PATH` listens on a second unix stream socket, in
the server's own event loop (so a command runs between vfio-user messages, never
inside one).  The protocol is lines of UTF-8 text: the client sends one line of
words ("gpio set 3 1"), the server answers one line, starting with "ok" or
"error:"; a client may send several lines on one connection, each gets its
answer in order.  The words go to a handler (the CLI passes the backend's
`control` through `route_control`, so a device group can route by the first word).

A bad line, an unknown command or a handler that raises costs that line an
"error:" answer and nothing else.  Limits keep a misbehaving client from costing
the server more than a few fds: at most `MAX_CLIENTS` connections at once (more
are closed at once), a line of at most `MAX_LINE` bytes (a longer one is answered
with an error and its connection closed), and `IDLE_TIMEOUT` seconds without a
complete line closes a connection.  Replies are short; a client that does not
read them is dropped rather than waited for.

`request(path, words)` is the client side (`vfu-platform control`).
"""
from __future__ import annotations

import errno
import logging
import os
import socket
from collections.abc import Callable, Sequence

from vfu_platform.endpoint import SUN_PATH_MAX, SocketPathError, bind_listening, check_existing, check_socket_path
from vfu_platform.server.loop import EventLoop, TimerHandle

log = logging.getLogger("vfu_platform.control")

Handler = Callable[[list[str]], str]

MAX_CLIENTS = 8
MAX_LINE = 4096
IDLE_TIMEOUT = 30.0


class _Connection:
    __slots__ = ("sock", "buffer", "timer")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()
        self.timer: TimerHandle | None = None


class ControlServer:
    """The control socket at `path`, served by `loop`, answering through `handler`."""

    def __init__(self, path: str, loop: EventLoop, handler: Handler, *, idle_timeout: float = IDLE_TIMEOUT) -> None:
        self.path = path
        self.loop = loop
        self.handler = handler
        self.idle_timeout = idle_timeout
        self.commands_served = 0
        self._listener: socket.socket | None = None
        self._clients: dict[int, _Connection] = {}

    # ------------------------------------------------------------ setup / teardown
    def listen(self, mode: int = 0o600, gid: int | None = None, replace_stale: bool = False) -> None:
        """Create the socket (given `mode` and group `gid` in a private folder, renamed into place once listening).

        `replace_stale`: the caller holds the lock that owns this path (the main socket's),
        so a socket file nobody listens on was left by a dead server and is replaced.
        """
        if replace_stale:
            check_existing(self.path, lock_held=False)
        else:
            check_socket_path(self.path)
        if len(os.fsencode(self.path)) > SUN_PATH_MAX:
            raise SocketPathError(f"cannot listen on {self.path}: longer than the {SUN_PATH_MAX}-byte socket path limit")
        listener = bind_listening(self.path, mode, gid, MAX_CLIENTS)  # as the main socket: renamed into place
        listener.setblocking(False)
        self._listener = listener
        self.loop.add_reader(listener.fileno(), self._on_connection)
        log.info("control socket on %s", self.path)

    def close(self) -> None:
        for fd in list(self._clients):
            self._drop(fd)
        if self._listener is not None:
            self.loop.remove_reader(self._listener.fileno())
            self._listener.close()
            self._listener = None
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    @property
    def clients(self) -> int:
        return len(self._clients)

    # ------------------------------------------------------------ serving
    def _on_connection(self) -> None:
        assert self._listener is not None
        try:
            sock, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                log.error("control: cannot accept a client: %s", exc.strerror)
                return
            raise
        if len(self._clients) >= MAX_CLIENTS:
            log.warning("control: refusing a client (%d connected)", len(self._clients))
            _send_quietly(sock, b"error: too many control clients\n")
            sock.close()
            return
        sock.setblocking(False)
        conn = _Connection(sock)
        fd = sock.fileno()
        self._clients[fd] = conn
        self._arm_idle(fd, conn)
        self.loop.add_reader(fd, lambda: self._on_readable(fd))

    def _arm_idle(self, fd: int, conn: _Connection) -> None:
        if conn.timer is not None:
            conn.timer.cancel()
        conn.timer = self.loop.call_later(self.idle_timeout, lambda: self._on_idle(fd, conn))

    def _on_idle(self, fd: int, conn: _Connection) -> None:
        if self._clients.get(fd) is conn:
            log.info("control: closing an idle client")
            self._drop(fd)

    def _on_readable(self, fd: int) -> None:
        conn = self._clients.get(fd)
        if conn is None:
            return
        try:
            data = conn.sock.recv(MAX_LINE + 1)
        except (BlockingIOError, InterruptedError):
            return  # spurious wakeup
        except OSError:
            self._drop(fd)
            return
        if not data:  # EOF: a last line without its newline still gets its answer
            if conn.buffer and len(conn.buffer) <= MAX_LINE:
                self._reply(fd, conn, self._answer(bytes(conn.buffer)))
            self._drop(fd)
            return
        conn.buffer += data
        while (end := conn.buffer.find(b"\n")) >= 0:
            if end > MAX_LINE:
                break
            line = bytes(conn.buffer[:end])
            del conn.buffer[: end + 1]
            if not self._reply(fd, conn, self._answer(line)):
                return
        if len(conn.buffer) > MAX_LINE:
            self._reply(fd, conn, f"error: command longer than {MAX_LINE} bytes")
            self._drop(fd)
            return
        self._arm_idle(fd, conn)

    def _answer(self, line: bytes) -> str:
        self.commands_served += 1
        try:
            text = line.decode("utf-8").strip()
        except UnicodeDecodeError:
            return "error: command is not UTF-8 text"
        words = text.split()
        if not words:
            return "error: empty command"
        try:
            reply = self.handler(words)
        except Exception as exc:  # a model bug must not stop the server
            log.exception("control: command %r failed", text)
            return f"error: command failed: {type(exc).__name__}: {exc}"
        if not isinstance(reply, str):
            return f"error: handler returned {type(reply).__name__}, not a reply line"
        return " ".join(reply.splitlines()) or "ok"

    def _reply(self, fd: int, conn: _Connection, reply: str) -> bool:
        """Send one reply line; False (and the client dropped) when it cannot be sent at once."""
        try:
            data = (reply + "\n").encode("utf-8")
            sent = conn.sock.send(data)
        except OSError:
            self._drop(fd)
            return False
        if sent != len(data):
            log.warning("control: dropping a client that does not read its replies")
            self._drop(fd)
            return False
        return True

    def _drop(self, fd: int) -> None:
        conn = self._clients.pop(fd, None)
        if conn is None:
            return
        if conn.timer is not None:
            conn.timer.cancel()
        self.loop.remove_reader(fd)
        conn.sock.close()


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    try:
        sock.setblocking(False)
        sock.send(data)
    except OSError:
        pass


# ---------------------------------------------------------------------- client side


class ControlError(Exception):
    """The control socket could not be reached or did not answer."""


def request(path: str, words: Sequence[str], timeout: float = 5.0) -> str:
    """Send one command to the control socket at `path`; the reply line (without newline)."""
    line = " ".join(words)
    if "\n" in line:
        raise ControlError("a command is one line")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except OSError as exc:
            raise ControlError(f"cannot connect to control socket {path}: {exc.strerror or exc}") from None
        try:
            sock.sendall(line.encode("utf-8") + b"\n")
            reply = bytearray()
            while not reply.endswith(b"\n"):
                chunk = sock.recv(MAX_LINE)
                if not chunk:
                    break
                reply += chunk
        except TimeoutError:
            raise ControlError(f"control socket {path}: no answer within {timeout} s") from None
        except OSError as exc:
            raise ControlError(f"control socket {path}: {exc.strerror or exc}") from None
    finally:
        sock.close()
    if not reply.endswith(b"\n"):
        raise ControlError(f"control socket {path}: connection closed without an answer")
    return reply[:-1].decode("utf-8", errors="replace")
