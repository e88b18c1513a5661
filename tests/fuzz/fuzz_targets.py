#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
"""Coverage-guided fuzz targets (atheris / libFuzzer) for the decoder and the whole session.

  fuzz_targets.py decoder [libFuzzer args] [CORPUS_DIR ...]
  fuzz_targets.py session [libFuzzer args] [CORPUS_DIR ...]

decoder: the bytes go through the framing buffer (in chunks, as a socket delivers
them) and every whole message through the request and reply decoders.  Anything but
a message or a `ProtocolError` (a `FramingError` once framing is lost) is a crash.

session: the bytes are what a client sends over a real socketpair to a `Connection`
(the server's I/O edge and its sans-I/O `Session`), in chunks, sometimes with eventfds attached, serving a simulated device through the
bridge (edu with INTx, or gpio with MSI-X).  Checked for every input:
  * no internal error: nothing logged at ERROR (an unexpected exception in a handler is
    logged and answered EIO: here it is a crash);
  * every whole command without NO_REPLY (a request carrying the reply bit included) got
    exactly one reply, NO_REPLY ones none; error replies are header-only with an errno;
  * when the framing is lost (msg_size < 16) the session is closed with a reason,
    otherwise it is still open, and it closes when the client goes;
  * every few thousand inputs: the process's fds are back to what they were (none leaked).
The device (and its state) is kept from one input to the next, as across a client's
reconnects, and reset after each.

Which device, chunk size and fds an input uses comes from a CRC of its bytes, so a
crash input replays alone: `fuzz_targets.py session CRASH_FILE`.
Progress lines "vfu-fuzz: ..." (execs, fds, RSS) go to stderr every `VFU_FUZZ_REPORT` inputs.
"""
from __future__ import annotations

import errno
import logging
import os
import resource
import socket
import sys
import zlib
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

with atheris.instrument_imports(include=["vfu_platform"]):
    from vfu_platform.backends.base import DmaError
    from vfu_platform.backends.sim.edu import EduDevice
    from vfu_platform.backends.sim.gpio import GpioDevice
    from vfu_platform.bridge.device import BridgeOptions, PciBridge
    from vfu_platform.protocol.codec import decode_reply, decode_request
    from vfu_platform.protocol.constants import HEADER_SIZE
    from vfu_platform.protocol.errors import FramingError, ProtocolError
    from vfu_platform.protocol.framing import ReceiveBuffer
    from vfu_platform.protocol.header import HEADER
    from vfu_platform.dma import DmaDone
    from vfu_platform.server.connection import Connection
    from vfu_platform.server.loop import EventLoop
    from vfu_platform.server.session import Session, SessionOptions
    from vfu_platform.trace import Tracer

MAX_XFER = 4096  # small: an oversized message fits in one fuzz input
NO_REPLY = 0x10
REPORT_EVERY = int(os.environ.get("VFU_FUZZ_REPORT", "10000"))
#: the targets' own memory ceiling (libFuzzer's -rss_limit_mb is off: see runner.py)
RSS_LIMIT_MB = 512
SOCKET_BUFFER = 16 << 20
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33  # <asm-generic/socket.h>; not in the socket module


class InternalError(AssertionError):
    """Something the server logged as a bug."""


class _FailOnError(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or record.exc_info:
            raise InternalError(f"logged: {record.getMessage()} {record.exc_info!r}")


def _quiet_logging() -> None:
    root = logging.getLogger()
    root.handlers[:] = [_FailOnError()]
    root.setLevel(logging.WARNING)
    logging.raiseExceptions = True


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / (1 << 20)


class ResourceWatch:
    """Every `REPORT_EVERY` inputs: fds back to the baseline, RSS (from statm) under the ceiling."""

    def __init__(self) -> None:
        self.runs = 0
        self.baseline_fds: int | None = None
        self.rss_first: float | None = None

    def count(self) -> None:
        self.runs += 1
        if self.runs % REPORT_EVERY == 0 or self.runs == 200:
            self.check()

    def check(self) -> None:
        fds, rss = open_fds(), rss_mb()
        if self.baseline_fds is None:
            self.baseline_fds, self.rss_first = fds, rss
        print(f"vfu-fuzz: execs {self.runs} fds {fds} baseline {self.baseline_fds} rss_mb {rss:.1f} "
              f"first_rss_mb {self.rss_first:.1f}", file=sys.stderr, flush=True)
        if fds != self.baseline_fds:
            raise AssertionError(f"fd leak: {fds} open, {self.baseline_fds} after the first inputs")
        if rss > RSS_LIMIT_MB:
            raise AssertionError(f"RSS {rss:.0f} MB, over the {RSS_LIMIT_MB} MB ceiling")


RESOURCES = ResourceWatch()


def chunks(data: bytes, crc: int) -> list[bytes]:
    """How the bytes arrive: mostly all at once, one input in four in pieces of 1..64 bytes."""
    if crc & 0x3:
        return [data]
    size = 1 + (crc >> 8) % 64
    return [data[i : i + size] for i in range(0, len(data), size)] or [b""]


# --------------------------------------------------------------------------- decoder


def fuzz_decoder(data: bytes) -> None:
    crc = zlib.crc32(data)
    buffer = ReceiveBuffer(MAX_XFER + 32)
    plain_first = bool(crc & 0x40)  # the session's hot path asks next_plain() before next_message()
    try:
        for piece in chunks(data, crc):
            buffer.feed(piece)
            while True:
                plain = buffer.next_plain() if plain_first else None
                if plain is not None:
                    _id, command, size, _flags, _error, start = plain
                    assert HEADER_SIZE <= size <= len(buffer.data) - start
                    _decode(command, memoryview(buffer.data)[start + HEADER_SIZE : start + size])
                    continue
                frame = buffer.next_message()
                if frame is None:
                    break
                header, body, _fds = frame
                if body is not None:
                    _decode(header.command, body)
    except FramingError:
        pass
    RESOURCES.count()


def _decode(command: int, body: memoryview) -> None:
    for decode in (decode_request, decode_reply):
        try:
            decode(command, body)
        except ProtocolError as exc:
            assert exc.errno > 0


# --------------------------------------------------------------------------- session


class SessionHarness:
    def __init__(self) -> None:
        self.loop = EventLoop()
        self.devices = [PciBridge(EduDevice()), PciBridge(GpioDevice(), BridgeOptions(irq_mode="msix"))]
        self.tracer = Tracer(open(os.devnull, "ab"))
        self.options = SessionOptions(max_data_xfer_size=MAX_XFER, dma_timeout=0.01, message_timeout=60.0)

    def expected(self, data: bytes) -> tuple[int, bool]:
        """(replies the input must get, whether its framing is lost): the framing rules, restated."""
        pos, replies, limit = 0, 0, self.options.max_message_size
        while len(data) - pos >= HEADER_SIZE:
            _id, _cmd, size, flags, _err = HEADER.unpack_from(data, pos)
            if size < HEADER_SIZE:
                return replies, True
            if size <= limit and len(data) - pos < size:
                break  # incomplete: waits for more
            if not flags & NO_REPLY:
                replies += 1  # an oversized one is answered at its header
            pos += size
        return replies, False

    def run(self, data: bytes) -> None:
        crc = zlib.crc32(data)
        device = self.devices[(crc >> 2) & 1]
        server_sock, client = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        for sock in (server_sock, client):
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, SOCKET_BUFFER)
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, SOCKET_BUFFER)
            except PermissionError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
        client.setblocking(False)
        connection = Connection(server_sock, device, self.loop, self.options, self.tracer if crc & 0x10 else None)
        session = connection.session
        session.dma.remote_read = _no_remote_dma
        session.dma.remote_write = _no_remote_dma
        connection.start()
        output = bytearray()
        try:
            for i, piece in enumerate(chunks(data, crc)):
                if i == 0 and crc & 0x20 and piece:  # eventfds with the first bytes
                    fds = [os.eventfd(0, os.EFD_CLOEXEC) for _ in range(1 + (crc >> 16) % 3)]
                    client.sendmsg([piece], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, bytes(
                        b"".join(fd.to_bytes(4, "little") for fd in fds)))])
                    for fd in fds:
                        os.close(fd)
                elif piece:
                    client.sendall(piece)
                self._settle(connection, output, client)
                if session.closed:
                    break
            replies, framing_lost = self.expected(data)
            got = _count_replies(bytes(output))
            if framing_lost:
                assert session.closed and session.closed_reason.startswith("framing error"), session.closed_reason
            else:
                assert not session.closed, f"session closed: {session.closed_reason}"
            assert got == replies, f"{got} replies to {replies} requests that want one"
        finally:
            client.close()
            self._settle(connection, output, None)
            assert session.closed, "the session must end when its client goes"
            device.reset("fuzz input done")
        RESOURCES.count()

    def _settle(self, connection: Connection, output: bytearray, client: socket.socket | None) -> None:
        """Run the loop until the session has handled everything sent so far."""
        session: Session = connection.session
        for _ in range(10000):
            self.loop.run_once(0)
            if client is not None:
                try:
                    while chunk := client.recv(1 << 20):
                        output += chunk
                except BlockingIOError:
                    pass
                except ConnectionResetError:
                    # The server dropped us (framing lost) with our bytes still unread on its
                    # side: unix sockets then report a reset after the data, instead of EOF.
                    assert session.closed, "a reset while the session is open"
            if session.closed or not _readable(connection.channel.fileno()):
                return
        raise AssertionError("the session never caught up with its input (a hang)")

def _no_remote_dma(_iova: int, _size_or_data: object, done: DmaDone) -> None:
    done(DmaError(errno.EFAULT, "fuzz: no client memory"))


def _readable(fd: int) -> bool:
    import select

    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


def _count_replies(stream: bytes) -> int:
    """Replies in the server's output; every message must be a well-formed reply."""
    pos = count = 0
    while pos < len(stream):
        assert len(stream) - pos >= HEADER_SIZE, "a partial message from the server"
        _id, _cmd, size, flags, error = HEADER.unpack_from(stream, pos)
        assert size >= HEADER_SIZE and flags & 0xF == 1, f"not a reply: size {size} flags {flags:#x}"
        if flags & 0x20:
            assert size == HEADER_SIZE and error > 0, f"error reply of {size} bytes, errno {error}"
            assert error != errno.EIO, "EIO: the server hit an internal error"
        pos += size
    assert pos == len(stream)
    return count + _count_headers(stream)


def _count_headers(stream: bytes) -> int:
    pos = count = 0
    while pos < len(stream):
        pos += HEADER.unpack_from(stream, pos)[2]
        count += 1
    return count


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in ("decoder", "session"):
        raise SystemExit(__doc__)
    target = sys.argv.pop(1)
    _quiet_logging()
    if target == "decoder":
        fn = fuzz_decoder
    else:
        harness = SessionHarness()
        fn = harness.run
    atheris.Setup(sys.argv, fn)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
