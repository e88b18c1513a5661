# SPDX-License-Identifier: BSD-3-Clause
"""A vfio-user client library: drive any vfio-user server without a VM.

Blocking and explicit: each method sends one request and waits for its reply.
While waiting it answers the server's own requests (DMA_READ / DMA_WRITE) from
the memory windows this client mapped, as QEMU does, so a server that needs
DMA in the middle of a request never deadlocks against it.
"""
from __future__ import annotations

import errno as _errno
import mmap
import os
import select
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass

from vfu_platform import vfio_abi
from vfu_platform.errors import VfuError
from vfu_platform.protocol import messages as m
from vfu_platform.protocol.caps import Capabilities
from vfu_platform.protocol.codec import encode, encode_error, encode_reply
from vfu_platform.protocol.constants import (
    COMMAND_NAMES,
    DEFAULT_MAX_DATA_XFER_SIZE,
    DEFAULT_MAX_DMA_MAPS,
    DEFAULT_MESSAGE_TIMEOUT,
    DEFAULT_PGSIZES,
    HEADER_SIZE,
    QEMU_MAX_MSG_FDS,
    Command,
    MsgFlags,
)
from vfu_platform.protocol.header import Header
from vfu_platform.transport import Channel

DEFAULT_TIMEOUT = DEFAULT_MESSAGE_TIMEOUT
#: bytes a message may carry beside its data (header and access head: 32), with room to spare
_MESSAGE_HEADROOM = 64


class VfioUserError(VfuError):
    """The server answered a request with an error."""

    def __init__(self, command: int, errno: int) -> None:
        name = COMMAND_NAMES.get(command, str(command))
        super().__init__(errno, f"{name} failed: {os.strerror(errno)} (errno {errno})")
        self.command = command


class ClientTimeout(Exception):
    pass


@dataclass(slots=True)
class Reply:
    header: Header
    body: bytes
    fds: list[int]

    def close_fds(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()


@dataclass(slots=True)
class MemoryWindow:
    """Client memory the server may reach: mapped with DMA_MAP."""

    iova: int
    size: int
    buffer: bytearray | mmap.mmap
    writable: bool


class VfioUserClient:
    def __init__(self, sock: socket.socket, timeout: float = DEFAULT_TIMEOUT, max_message_size: int = DEFAULT_MAX_DATA_XFER_SIZE + _MESSAGE_HEADROOM) -> None:
        self.channel = Channel(sock, max_message_size + (64 << 10), send_timeout=timeout)
        self.timeout = timeout
        self._next_id = 1
        self.server_caps = Capabilities()
        self.windows: list[MemoryWindow] = []
        self.served_dma_reads = 0
        self.served_dma_writes = 0
        self.serve_dma = True

    @classmethod
    def connect(cls, path: str, timeout: float = DEFAULT_TIMEOUT, negotiate: bool = True,
                caps: Capabilities | None = None) -> "VfioUserClient":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
        client = cls(sock, timeout)
        if negotiate:
            client.negotiate(caps)
        return client

    def close(self) -> None:
        self.channel.close()
        for window in self.windows:
            if isinstance(window.buffer, mmap.mmap):
                window.buffer.close()
        self.windows.clear()

    def __enter__(self) -> "VfioUserClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ raw messaging
    def next_id(self) -> int:
        msg_id = self._next_id
        self._next_id = (self._next_id + 1) & 0xFFFF
        return msg_id

    def send(self, command: int, payload: bytes = b"", fds: Sequence[int] = (), no_reply: bool = False,
             msg_id: int | None = None) -> int:
        msg_id = self.next_id() if msg_id is None else msg_id
        flags = MsgFlags.NO_REPLY if no_reply else 0
        self.channel.send(encode(msg_id, command, payload, flags), tuple(fds))
        return msg_id

    def send_raw(self, data: bytes, fds: Sequence[int] = ()) -> None:
        """Send bytes exactly as given (for testing a server against malformed input)."""
        self.channel.send(data, tuple(fds))

    def wait_reply(self, msg_id: int, timeout: float | None = None) -> Reply:
        """Wait for the reply to `msg_id`, serving the server's DMA requests meanwhile."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            frame = self.channel.next_frame()
            if frame is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ClientTimeout(f"no reply to message {msg_id}")
                readable, _, _ = select.select([self.channel.sock], [], [], remaining)
                if not readable:
                    raise ClientTimeout(f"no reply to message {msg_id}")
                self.channel.receive()
                continue
            header, body, fds = frame
            data = b"" if body is None else bytes(body)
            self.channel.buffer.release()
            if header.msg_type == MsgFlags.TYPE_COMMAND:
                self._serve(header, data, fds)
                continue
            if header.msg_id != msg_id:
                for fd in fds:
                    os.close(fd)
                raise ConnectionError(f"reply to message {header.msg_id} while waiting for {msg_id}")
            return Reply(header, data, list(fds))

    def expect_no_reply(self, wait: float = 0.2) -> None:
        """Assert that nothing arrives within `wait` seconds (posted writes, NO_REPLY errors)."""
        readable, _, _ = select.select([self.channel.sock], [], [], wait)
        if readable or self.channel.buffer.buffered:
            self.channel.receive() if readable else None
            frame = self.channel.next_frame()
            raise AssertionError(f"unexpected message from the server: {frame.header if frame else 'partial'}")

    def request(self, command: int, payload: bytes = b"", fds: Sequence[int] = ()) -> Reply:
        reply = self.wait_reply(self.send(command, payload, fds))
        if reply.header.is_error:
            reply.close_fds()
            raise VfioUserError(command, reply.header.error)
        return reply

    # ------------------------------------------------------------ serving the server's DMA requests
    def _serve(self, header: Header, body: bytes, fds: list[int]) -> None:
        for fd in fds:
            os.close(fd)
        try:
            if not self.serve_dma or fds or header.command not in (Command.DMA_READ, Command.DMA_WRITE):
                raise _DmaRefused(_errno.EINVAL if fds else _errno.ENOSYS)
            access = m.DmaAccess.unpack(body)
            window, start = self._window(access.address, access.count)
            if header.command == Command.DMA_READ:
                self.served_dma_reads += 1
                data = bytes(window.buffer[start : start + access.count])
                reply = encode_reply(header.msg_id, header.command, m.DmaAccess(access.address, access.count, data).pack())
            else:
                if not window.writable:
                    raise _DmaRefused(_errno.EPERM)
                if len(access.data) < access.count:
                    raise _DmaRefused(_errno.E2BIG)
                window.buffer[start : start + access.count] = access.data[: access.count]
                self.served_dma_writes += 1
                reply = encode_reply(header.msg_id, header.command)  # header only, as QEMU answers
        except _DmaRefused as exc:
            reply = encode_error(header.msg_id, header.command, exc.errno)
        except Exception:
            reply = encode_error(header.msg_id, header.command, _errno.EINVAL)
        if not header.no_reply:
            self.channel.send(reply)

    def _window(self, iova: int, count: int) -> tuple[MemoryWindow, int]:
        for window in self.windows:
            if window.iova <= iova and iova + count <= window.iova + window.size:
                return window, iova - window.iova
        raise _DmaRefused(_errno.EFAULT)

    # ------------------------------------------------------------ commands
    def negotiate(self, caps: Capabilities | None = None, major: int = 0, minor: int = 0) -> m.Version:
        if caps is None:
            caps = Capabilities(max_msg_fds=QEMU_MAX_MSG_FDS, max_data_xfer_size=DEFAULT_MAX_DATA_XFER_SIZE,
                                max_dma_maps=DEFAULT_MAX_DMA_MAPS, pgsizes=DEFAULT_PGSIZES, write_multiple=True)
        reply = self.request(Command.VERSION, m.Version(major, minor, caps).pack())
        version = m.Version.unpack(reply.body)
        self.server_caps = version.caps or Capabilities()
        return version

    def dma_map(self, iova: int, size: int, *, readable: bool = True, writable: bool = True, fd: int | None = None,
                offset: int = 0, buffer: bytearray | mmap.mmap | None = None) -> MemoryWindow | None:
        """Map client memory at `iova`.  With `fd` the server mmaps it; with `buffer` (or neither:
        a fresh zeroed buffer) the server reaches it through DMA_READ / DMA_WRITE, answered here."""
        flags = (vfio_abi.DMA_MAP_FLAG_READ if readable else 0) | (vfio_abi.DMA_MAP_FLAG_WRITE if writable else 0)
        self.request(Command.DMA_MAP, m.DmaMap(m.DMA_MAP.size, flags, offset, iova, size).pack(),
                     () if fd is None else (fd,))
        if fd is not None:
            return None
        window = MemoryWindow(iova, size, buffer if buffer is not None else bytearray(size), writable)
        self.windows.append(window)
        return window

    def dma_unmap(self, iova: int, size: int, flags: int = 0) -> m.DmaUnmap:
        reply = self.request(Command.DMA_UNMAP, m.DmaUnmap(m.DMA_UNMAP.size, flags, iova, size).pack())
        if flags & vfio_abi.DMA_UNMAP_FLAG_ALL:
            self.windows.clear()
        else:
            self.windows = [w for w in self.windows if (w.iova, w.size) != (iova, size)]
        return m.DmaUnmap.unpack(reply.body)

    def device_info(self) -> m.DeviceInfo:
        reply = self.request(Command.DEVICE_GET_INFO, m.DeviceInfo(m.DeviceInfo.LAYOUT.size).pack())
        return m.DeviceInfo.unpack(reply.body)

    def region_info(self, index: int, argsz: int = 32) -> tuple[m.RegionInfo, int | None]:
        """GET_REGION_INFO with QEMU's retry when the caps do not fit; returns (info, fd or None)."""
        while True:
            reply = self.request(Command.DEVICE_GET_REGION_INFO, m.RegionInfo(argsz, index=index).pack())
            info = m.RegionInfo.unpack(reply.body)
            if info.argsz > argsz:
                reply.close_fds()
                argsz = info.argsz
                continue
            if len(reply.fds) > 1:
                reply.close_fds()
                raise ConnectionError("GET_REGION_INFO reply carries more than one fd")
            return info, (reply.fds[0] if reply.fds else None)

    def irq_info(self, index: int) -> m.IrqInfo:
        reply = self.request(Command.DEVICE_GET_IRQ_INFO, m.IrqInfo(m.IrqInfo.LAYOUT.size, index=index).pack())
        return m.IrqInfo.unpack(reply.body)

    def set_irqs(self, index: int, flags: int, start: int = 0, count: int = 1, fds: Sequence[int] = (),
                 data: bytes = b"") -> None:
        self.request(Command.DEVICE_SET_IRQS, m.IrqSet(m.IrqSet.LAYOUT.size + len(data), flags, index, start, count, data).pack(), fds)

    def region_read(self, region: int, offset: int, count: int) -> bytes:
        reply = self.request(Command.REGION_READ, m.RegionAccess(offset, region, count).pack())
        access = m.RegionAccess.unpack(reply.body)
        if (access.offset, access.region, access.count) != (offset, region, count) or len(access.data) != count:
            raise ConnectionError(f"REGION_READ reply does not match the request: {access}")
        return access.data

    def region_write(self, region: int, offset: int, data: bytes, posted: bool = False) -> None:
        payload = m.RegionAccess(offset, region, len(data), data).pack()
        if posted:
            self.send(Command.REGION_WRITE, payload, no_reply=True)
        else:
            self.request(Command.REGION_WRITE, payload)

    def read32(self, region: int, offset: int) -> int:
        return int.from_bytes(self.region_read(region, offset, 4), "little")

    def write32(self, region: int, offset: int, value: int, posted: bool = False) -> None:
        self.region_write(region, offset, (value & 0xFFFFFFFF).to_bytes(4, "little"), posted)

    def read64(self, region: int, offset: int) -> int:
        return int.from_bytes(self.region_read(region, offset, 8), "little")

    def write64(self, region: int, offset: int, value: int, posted: bool = False) -> None:
        self.region_write(region, offset, value.to_bytes(8, "little"), posted)

    def write_multi(self, entries: Sequence[tuple[int, int, bytes]]) -> None:
        """REGION_WRITE_MULTI (posted, as QEMU sends it): entries of (region, offset, data<=8)."""
        batch = m.RegionWriteMulti(tuple(m.WriteMultiEntry(o, r, len(d), d) for r, o, d in entries))
        self.send(Command.REGION_WRITE_MULTI, batch.pack(), no_reply=True)

    def reset(self) -> None:
        self.wait_and_check(self.send(Command.DEVICE_RESET), Command.DEVICE_RESET)

    def wait_and_check(self, msg_id: int, command: int) -> Reply:
        reply = self.wait_reply(msg_id)
        if reply.header.is_error:
            raise VfioUserError(command, reply.header.error)
        return reply

    def device_feature(self, flags: int, data: bytes = b"", argsz: int | None = None) -> m.DeviceFeature:
        size = argsz if argsz is not None else m.DeviceFeature.LAYOUT.size + len(data)
        reply = self.request(Command.DEVICE_FEATURE, m.DeviceFeature(size, flags, data).pack())
        return m.DeviceFeature.unpack(reply.body)

    def sync(self) -> None:
        """A round trip: every earlier posted message has been processed when it returns."""
        self.device_info()


class _DmaRefused(Exception):
    def __init__(self, errno: int) -> None:
        self.errno = errno


def make_eventfd() -> int:
    return os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)


def eventfd_count(fd: int) -> int:
    """Read and clear an eventfd's counter (0 if nothing was signalled)."""
    try:
        return os.eventfd_read(fd)
    except BlockingIOError:
        return 0


def wait_eventfd(fd: int, timeout: float) -> int:
    readable, _, _ = select.select([fd], [], [], timeout)
    return eventfd_count(fd) if readable else 0


__all__ = ["VfioUserClient", "VfioUserError", "ClientTimeout", "Reply", "MemoryWindow", "make_eventfd",
           "eventfd_count", "wait_eventfd", "HEADER_SIZE"]
