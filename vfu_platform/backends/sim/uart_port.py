# SPDX-License-Identifier: BSD-3-Clause
"""The host end of a simulated UART: a pseudo-terminal or a unix stream socket.

A UART model (pl011, dw-apb-uart) owns one `HostPort`, built from its `port`
option:

* ``pty`` (default) or ``pty:LINK``: a pseudo-terminal.  A user opens the slave
  (`path`, e.g. /dev/pts/3; with LINK also a symlink to it) with any terminal
  program.  The port keeps its own slave fd open, so the master never sees a
  hang-up (which would make epoll report it forever) when the user's program
  exits, and sets the slave to raw mode, so that the line discipline neither
  echoes the guest's output back into its input nor translates bytes.
* ``unix:PATH``: the port listens on a unix stream socket; one host client at
  a time (a second one waits in the listen backlog until the first leaves, as
  with QEMU's socket chardev).  Bytes flow both ways unchanged.

The path is logged at WARNING level when the port opens (so it shows without
``-v``, like QEMU's "char device redirected to" line) and is the model's
`pty_path` / `port_path`.

Guest -> host (`write`) never blocks and never stalls the guest's transmitter:
a guest console polls its FIFO with interrupts off and would hang if the host
side stopped reading.  What the host does not take at once waits in a backlog
of `BACKLOG_LIMIT` bytes (flushed when the fd can take more: on the next
write and on a short retry timer); bytes beyond it, and bytes sent while no
unix client is connected and the backlog is full, are dropped and counted.

Host -> guest is flow-controlled: the port reads only when its model asks
(`set_receiving(True)`, meaning "my RX FIFO has room and the receiver takes
data") and only as many bytes as the model says (`read(limit)`).  Everything
else stays in the kernel's pty or socket buffer.  The port watches its fd in
the server's event loop only while the model wants data and a scheduler is
lent (`attach`); when no vfio-user client is attached, host bytes wait.
(A unix client that leaves while the model is not reading is noticed at the
next read or write.)

`UartDevice` is the base of both UART models: it owns the port, wires it to
the model's RX FIFO with that flow control, and carries the test kit
(`host_write` / `host_read` on a pty port, `line_receive` / `line_break` for
characters with line errors, which a byte stream cannot carry).
"""

from __future__ import annotations

import enum
import errno
import logging
import os
import socket
import stat
import tty
from collections.abc import Callable

from vfu_platform.backends.base import Counters, DeviceContext, Scheduler, Timer
from vfu_platform.backends.sim.device import SimDevice

log = logging.getLogger("vfu_platform.uart")

#: Guest output kept for a host end that is not reading (bytes beyond it are dropped).
BACKLOG_LIMIT = 64 * 1024
#: How often a non-empty backlog is retried (the event loop has no writer watch).
FLUSH_RETRY = 0.01
#: Largest single read from the host fd.
READ_CHUNK = 4096


class HostPortError(ValueError):
    """A bad `port` option or a port that cannot be opened (one line)."""


class HostPort:
    """One host end; see the module docstring."""

    def __init__(self, spec: str, *, name: str) -> None:
        self.name = name
        self.spec = spec
        #: called (from the event loop) when host bytes may be waiting; set by the model
        self.on_readable: Callable[[], None] | None = None
        #: "rx" / "tx" bytes moved, "tx_dropped", "clients" (unix)
        self.counters = Counters({"rx": 0, "tx": 0, "tx_dropped": 0, "clients": 0})
        self._scheduler: Scheduler | None = None
        self._receiving = False
        self._watched: int | None = None
        self._backlog = bytearray()
        self._flush_timer: Timer | None = None
        self._closed = False
        self._master: int | None = None  # pty master (the model's end)
        self._slave: int | None = None  # pty slave, kept open (also the test kit's end)
        self._link: str | None = None
        self._listener: socket.socket | None = None
        self._conn: socket.socket | None = None
        kind, _, arg = spec.partition(":")
        if kind == "pty":
            self.kind = "pty"
            self._open_pty(arg or None)
        elif kind == "unix":
            if not arg:
                raise HostPortError(f"{name}: port=unix:PATH needs a path")
            self.kind = "unix"
            self._open_unix(arg)
        else:
            raise HostPortError(f"{name}: unknown port {spec!r} (expected pty, pty:LINK or unix:PATH)")
        log.warning("%s: serial port on %s (%s)", name, self.path, self.kind)

    # ------------------------------------------------------------ opening
    def _open_pty(self, link: str | None) -> None:
        master, slave = os.openpty()
        try:
            tty.setraw(slave)
            os.set_blocking(master, False)
            os.set_blocking(slave, False)
            self.path = os.ttyname(slave)
            if link is not None:
                self._make_link(link, self.path)
        except BaseException:
            os.close(master)
            os.close(slave)
            raise
        self._master, self._slave = master, slave

    def _make_link(self, link: str, target: str) -> None:
        try:
            if not stat.S_ISLNK(os.lstat(link).st_mode):
                raise HostPortError(f"{self.name}: {link} exists and is not a symlink")
            os.unlink(link)  # an old link (a previous run): replace it
        except FileNotFoundError:
            pass
        try:
            os.symlink(target, link)
        except OSError as exc:
            raise HostPortError(f"{self.name}: cannot create {link}: {exc.strerror}") from None
        self._link = link

    def _open_unix(self, path: str) -> None:
        from vfu_platform.endpoint import SocketPathError, check_socket_path

        try:
            check_socket_path(path)
        except SocketPathError as exc:
            raise HostPortError(f"{self.name}: port {exc}") from None
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            listener.bind(path)
            listener.listen(1)
            listener.setblocking(False)
        except OSError as exc:
            listener.close()
            raise HostPortError(f"{self.name}: cannot listen on {path}: {exc.strerror}") from None
        self._listener = listener
        self.path = path

    # ------------------------------------------------------------ state
    @property
    def connected(self) -> bool:
        """A host end is there to talk to (a pty always is; a unix port needs a client)."""
        return self.kind == "pty" or self._conn is not None

    @property
    def backlog(self) -> int:
        """Guest output bytes waiting for the host end."""
        return len(self._backlog)

    def _data_fd(self) -> int | None:
        if self._master is not None:
            return self._master
        return self._conn.fileno() if self._conn is not None else None

    def attach(self, scheduler: Scheduler | None) -> None:
        """Lend (or with None withdraw) the event loop: watch fds only while lent."""
        self._unwatch()
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        self._scheduler = scheduler
        if scheduler is not None:
            self._accept()  # a client that connected while detached
            self._flush()
            self._rewatch()

    def set_receiving(self, wanted: bool) -> None:
        """The model has room for host bytes (True) or not (False)."""
        if wanted != self._receiving:
            self._receiving = wanted
            self._rewatch()

    def _rewatch(self) -> None:
        if self._closed or self._scheduler is None:
            return
        if self._conn is None and self._listener is not None:
            want = self._listener.fileno()
        elif self._receiving:
            want = self._data_fd()
        else:
            want = None
        if want == self._watched:
            return
        self._unwatch()
        if want is not None:
            self._scheduler.add_reader(want, self._on_ready)
            self._watched = want

    def _unwatch(self) -> None:
        if self._watched is not None and self._scheduler is not None:
            self._scheduler.remove_reader(self._watched)
        self._watched = None

    def _on_ready(self) -> None:
        if self._conn is None and self._listener is not None:
            self._accept()
            self._flush()
            self._rewatch()
            return
        if self.on_readable is not None:
            self.on_readable()

    # ------------------------------------------------------------ unix clients
    def _accept(self) -> None:
        if self._listener is None or self._conn is not None:
            return
        try:
            conn, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        conn.setblocking(False)
        self._conn = conn
        self.counters.bump("clients")
        log.info("%s: host client connected on %s", self.name, self.path)

    def _drop_client(self, why: str) -> None:
        if self._conn is None:
            return
        self._unwatch()
        self._conn.close()
        self._conn = None
        self._backlog.clear()  # what was meant for that client
        log.info("%s: host client left (%s)", self.name, why)
        self._accept()  # the next one may be waiting already
        self._rewatch()

    # ------------------------------------------------------------ data
    def read(self, limit: int) -> bytes:
        """Up to `limit` host bytes, without blocking (b"" when none wait)."""
        fd = self._data_fd()
        if fd is None or limit <= 0 or self._closed:
            return b""
        try:
            data = os.read(fd, min(limit, READ_CHUNK))
        except (BlockingIOError, InterruptedError):
            return b""
        except OSError as exc:
            if self._conn is not None:
                self._drop_client(exc.strerror or str(exc))
            return b""
        if not data:
            if self._conn is not None:
                self._drop_client("end of file")
            return b""
        self.counters.bump("rx", len(data))
        return data

    def write(self, data: bytes) -> None:
        """Send guest output to the host end; never blocks (see the module docstring)."""
        if self._closed or not data:
            return
        room = BACKLOG_LIMIT - len(self._backlog)
        if len(data) > room:
            self.counters.bump("tx_dropped", len(data) - room)
            data = data[:room]
        self._backlog += data
        self._flush()

    def _flush(self) -> None:
        fd = self._data_fd()
        while self._backlog and fd is not None:
            try:
                sent = os.write(fd, self._backlog)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if self._conn is not None:
                    self._drop_client(exc.strerror or str(exc))
                    return
                if exc.errno == errno.EIO:  # a pty whose slave is gone: cannot happen while we hold it
                    self.counters.bump("tx_dropped", len(self._backlog))
                    self._backlog.clear()
                break
            self.counters.bump("tx", sent)
            del self._backlog[:sent]
        if self._backlog and fd is not None and self._scheduler is not None and self._flush_timer is None:
            self._flush_timer = self._scheduler.call_later(FLUSH_RETRY, self._retry_flush)

    def _retry_flush(self) -> None:
        self._flush_timer = None
        self._flush()

    # ------------------------------------------------------------ test kit
    def host_write(self, data: bytes) -> None:
        """As a user typing into the pty: write `data` to the slave end (pty ports only)."""
        os.write(self._test_end(), data)

    def host_read(self) -> bytes:
        """What the guest sent that the pty slave end holds now (pty ports only; b"" if none)."""
        chunks = []
        while True:
            try:
                chunk = os.read(self._test_end(), READ_CHUNK)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def _test_end(self) -> int:
        if self._slave is None:
            raise HostPortError(f"{self.name}: host_write/host_read need a pty port (connect to {self.path})")
        return self._slave

    # ------------------------------------------------------------ teardown
    def close(self) -> None:
        if self._closed:
            return
        self._unwatch()
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        self._closed = True
        for fd in (self._master, self._slave):
            if fd is not None:
                os.close(fd)
        self._master = self._slave = None
        if self._link is not None:
            try:
                os.unlink(self._link)
            except OSError:
                pass
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            try:
                os.unlink(self.path)
            except OSError:
                pass

    def status(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "path": self.path,
            "connected": self.connected,
            "receiving": self._receiving,
            "backlog": len(self._backlog),
            **self.counters.snapshot(),
        }


# ---------------------------------------------------------------------------- models


class LineError(enum.IntFlag):
    """Receive errors a character can carry (`UartDevice.line_receive`)."""

    NONE = 0
    FRAMING = 1
    PARITY = 2
    BREAK = 4


class UartDevice(SimDevice):
    """What both UART models share: the host port, flow control and the test kit.

    A subclass implements `_rx_room` (how many host bytes its receiver takes now:
    0 while it is disabled, in loopback, RTS is deasserted or the FIFO is full)
    and `_receive` (put characters into the RX FIFO), and calls
    `_update_rx_flow` after anything that changes `_rx_room`.
    """

    def __init__(self, port: str) -> None:
        super().__init__()
        self.port = HostPort(port, name=self.name)
        self.port.on_readable = self._pull_host

    # ---- for subclasses -----------------------------------------------------

    def _rx_room(self) -> int:
        raise NotImplementedError

    def _receive(self, data: bytes, errors: LineError = LineError.NONE) -> int:
        """Put characters into the RX FIFO; returns how many fitted (the rest overran)."""
        raise NotImplementedError

    def _update_rx_flow(self) -> None:
        self.port.set_receiving(self._rx_room() > 0)

    def _pull_host(self) -> None:
        room = self._rx_room()
        if room > 0:
            data = self.port.read(room)
            if data:
                self._receive(data)
        self._update_rx_flow()

    # ---- public -------------------------------------------------------------

    @property
    def pty_path(self) -> str | None:
        """The pty slave to open (None for a unix port)."""
        return self.port.path if self.port.kind == "pty" else None

    @property
    def port_path(self) -> str:
        """Where the host side is: the pty slave or the unix socket path."""
        return self.port.path

    def host_write(self, data: bytes) -> None:
        """Test kit: bytes a user types on the pty (they reach the guest with flow control)."""
        self.port.host_write(data)

    def host_read(self) -> bytes:
        """Test kit: what the guest has transmitted to the pty and nobody has read yet."""
        return self.port.host_read()

    def line_receive(self, data: bytes, errors: LineError = LineError.NONE) -> int:
        """Test kit: characters arriving on the serial line itself, bypassing the port.

        No flow control here: characters beyond the FIFO's space overrun, as on a
        real line.  `errors` marks every character (framing, parity, break).
        Returns how many were stored.
        """
        stored = self._receive(data, errors)
        self._update_rx_flow()
        return stored

    def line_break(self) -> None:
        """Test kit: a break condition on the line (a NUL with the break error)."""
        self.line_receive(b"\0", LineError.BREAK)

    # ---- SimDevice ----------------------------------------------------------

    def attach(self, context: DeviceContext | None) -> None:
        super().attach(context)
        self.port.attach(context.scheduler if context is not None else None)
        if context is not None:
            self._update_rx_flow()

    def close(self) -> None:
        self.port.close()
        super().close()

    def status(self) -> dict[str, object]:
        snapshot = super().status()
        snapshot["port"] = self.port.status()
        return snapshot
