# SPDX-License-Identifier: BSD-3-Clause
"""A vfio-user client library: drive any vfio-user server without a VM.

Blocking and explicit: each method sends one request and waits for its reply.
While waiting it answers the server's own requests (DMA_READ / DMA_WRITE) from
the memory windows this client mapped, as QEMU does, so a server that needs
DMA in the middle of a request never deadlocks against it.

Regions and IRQ indexes are ints on the wire; the helpers also take the VFIO PCI
names (vfio-user carries no names): regions "bar0".."bar5", "rom", "config",
"vga" (`PciRegion`), IRQ indexes "intx", "msi", "msix", "err", "req" (`PciIrq`).
`set_irqs` takes either the raw `flags` word or a typed `action` and data type::

    client.set_irqs("intx", action=IrqAction.TRIGGER, data=IrqData.EVENTFD, fds=[efd])
    client.set_irqs(PciIrq.MSIX, action=IrqAction.MASK, bools=[True, False])
    client.set_irqs(0, 0x24, 0, 1, [efd])          # the raw form: TRIGGER | EVENTFD

Every error the client raises is a `ClientError` (a `VfuError`: it has `.errno`):

    ClientError                   a bad argument, or one of:
    ├── VfioUserError             the server answered with an error (`.command`, `.errno`)
    ├── ClientTimeout             no reply in time (also a TimeoutError)
    ├── ClientDisconnected        the connection ended (also a ConnectionError)
    ├── ClientProtocolError       the server broke the protocol (also a ConnectionError)
    └── ClientArgumentError       an unknown region/IRQ name or a contradictory call (also a ValueError)
"""
from __future__ import annotations

import enum
import errno as _errno
import mmap
import os
import select
import socket
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
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
from vfu_platform.transport import Channel, ConnectionClosed

DEFAULT_TIMEOUT = DEFAULT_MESSAGE_TIMEOUT
#: bytes a message may carry beside its data (header and access head: 32), with room to spare
_MESSAGE_HEADROOM = 64


# ------------------------------------------------------------ errors
class ClientError(VfuError):
    """Base of every error the client raises; `errno` says what went wrong."""


class VfioUserError(ClientError):
    """The server answered a request with an error: `command` and the reply's `errno`."""

    def __init__(self, command: int, errno: int) -> None:
        name = COMMAND_NAMES.get(command, str(command))
        super().__init__(errno, f"{name} failed: {os.strerror(errno)} (errno {errno})")
        self.command = command


class ClientTimeout(ClientError, TimeoutError):
    """No reply arrived in time (errno ETIMEDOUT)."""

    def __init__(self, message: str) -> None:
        super().__init__(_errno.ETIMEDOUT, message)


class ClientDisconnected(ClientError, ConnectionClosed, ConnectionError):
    """The connection could not be made or has ended (the server went away or closed it)."""


class ClientProtocolError(ClientError, ConnectionError):
    """The server sent something the protocol does not allow here (errno EPROTO)."""

    def __init__(self, message: str) -> None:
        super().__init__(_errno.EPROTO, message)


class ClientArgumentError(ClientError, ValueError):
    """A call the client cannot make: an unknown name, contradictory arguments (errno EINVAL)."""

    def __init__(self, message: str) -> None:
        super().__init__(_errno.EINVAL, message)


# ------------------------------------------------------------ names and flags
class IrqAction(enum.IntFlag):
    """What DEVICE_SET_IRQS does (VFIO_IRQ_SET_ACTION_*)."""

    MASK = vfio_abi.IRQ_SET_ACTION_MASK
    UNMASK = vfio_abi.IRQ_SET_ACTION_UNMASK
    TRIGGER = vfio_abi.IRQ_SET_ACTION_TRIGGER


class IrqData(enum.IntFlag):
    """What DEVICE_SET_IRQS carries (VFIO_IRQ_SET_DATA_*): nothing, one bool per IRQ, or eventfds."""

    NONE = vfio_abi.IRQ_SET_DATA_NONE
    BOOL = vfio_abi.IRQ_SET_DATA_BOOL
    EVENTFD = vfio_abi.IRQ_SET_DATA_EVENTFD


class PciRegion(enum.IntEnum):
    """The VFIO PCI region indexes (what a vfio-user PCI server serves)."""

    BAR0 = vfio_abi.PCI_BAR0_REGION_INDEX
    BAR1 = vfio_abi.PCI_BAR0_REGION_INDEX + 1
    BAR2 = vfio_abi.PCI_BAR0_REGION_INDEX + 2
    BAR3 = vfio_abi.PCI_BAR0_REGION_INDEX + 3
    BAR4 = vfio_abi.PCI_BAR0_REGION_INDEX + 4
    BAR5 = vfio_abi.PCI_BAR0_REGION_INDEX + 5
    ROM = vfio_abi.PCI_ROM_REGION_INDEX
    CONFIG = vfio_abi.PCI_CONFIG_REGION_INDEX
    VGA = vfio_abi.PCI_VGA_REGION_INDEX


class PciIrq(enum.IntEnum):
    """The VFIO PCI IRQ indexes."""

    INTX = vfio_abi.PCI_INTX_IRQ_INDEX
    MSI = vfio_abi.PCI_MSI_IRQ_INDEX
    MSIX = vfio_abi.PCI_MSIX_IRQ_INDEX
    ERR = vfio_abi.PCI_ERR_IRQ_INDEX
    REQ = vfio_abi.PCI_REQ_IRQ_INDEX


def region_index(region: int | str) -> int:
    """The index of a region given as an int or a PCI name ("bar0".."bar5", "rom", "config", "vga")."""
    return _index(region, PciRegion, "region")


def irq_index(irq: int | str) -> int:
    """The index of an IRQ given as an int or a PCI name ("intx", "msi", "msix", "err", "req")."""
    return _index(irq, PciIrq, "IRQ index")


def _index(value: int | str, names: type[enum.IntEnum], what: str) -> int:
    if isinstance(value, str):
        try:
            return int(names[value.strip().upper()])
        except KeyError:
            known = ", ".join(n.lower() for n in names.__members__)
            raise ClientArgumentError(f"unknown {what} name {value!r} (known: {known})") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ClientArgumentError(f"{what} must be an int or a name, not {value!r}")
    return int(value)


# ------------------------------------------------------------ replies and memory
@dataclass(slots=True)
class Reply:
    """One reply from the server: its header, body and the fds it carried (the caller owns them)."""

    header: Header
    body: bytes
    fds: list[int]

    def close_fds(self) -> None:
        """Close the fds the reply carried."""
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
    """A blocking vfio-user client over one connected unix socket; see the module docstring."""

    def __init__(self, sock: socket.socket, timeout: float = DEFAULT_TIMEOUT, max_message_size: int = DEFAULT_MAX_DATA_XFER_SIZE + _MESSAGE_HEADROOM) -> None:
        """Wrap a connected socket; `timeout` bounds every wait for a reply (and every send)."""
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
        """Connect to the server's socket at `path` and (by default) negotiate the version."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
        except OSError as exc:
            sock.close()
            raise ClientDisconnected(exc.errno or _errno.ECONNREFUSED,
                                     f"cannot connect to {path}: {exc.strerror or exc}") from exc
        client = cls(sock, timeout)
        if negotiate:
            try:
                client.negotiate(caps)
            except BaseException:
                client.close()
                raise
        return client

    def close(self) -> None:
        """Close the connection and drop the memory windows."""
        self.channel.close()
        for window in self.windows:
            if isinstance(window.buffer, mmap.mmap):
                window.buffer.close()
        self.windows.clear()

    def __enter__(self) -> "VfioUserClient":
        """The client itself; `close` at the end of the block."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close the client."""
        self.close()

    # ------------------------------------------------------------ raw messaging
    def next_id(self) -> int:
        """The next message id (16 bits, wrapping)."""
        msg_id = self._next_id
        self._next_id = (self._next_id + 1) & 0xFFFF
        return msg_id

    def send(self, command: int, payload: bytes = b"", fds: Sequence[int] = (), no_reply: bool = False,
             msg_id: int | None = None) -> int:
        """Send one command (not waiting for its reply); returns its message id."""
        msg_id = self.next_id() if msg_id is None else msg_id
        flags = MsgFlags.NO_REPLY if no_reply else 0
        with _disconnects():
            self.channel.send(encode(msg_id, command, payload, flags), tuple(fds))
        return msg_id

    def send_raw(self, data: bytes, fds: Sequence[int] = ()) -> None:
        """Send bytes exactly as given (for testing a server against malformed input)."""
        with _disconnects():
            self.channel.send(data, tuple(fds))

    def wait_reply(self, msg_id: int, timeout: float | None = None) -> Reply:
        """Wait for the reply to `msg_id`, serving the server's DMA requests meanwhile.

        Raises ClientTimeout when none comes in time, ClientDisconnected when the
        connection ends, ClientProtocolError on a reply to another message.
        """
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
                with _disconnects():
                    self.channel.receive()
                continue
            header, body, fds = frame
            data = b"" if body is None else bytes(body)
            if header.msg_type == MsgFlags.TYPE_COMMAND:
                self._serve(header, data, fds)
                continue
            if header.msg_id != msg_id:
                for fd in fds:
                    os.close(fd)
                raise ClientProtocolError(f"reply to message {header.msg_id} while waiting for {msg_id}")
            return Reply(header, data, list(fds))

    def expect_no_reply(self, wait: float = 0.2) -> None:
        """Assert that nothing arrives within `wait` seconds (posted writes, NO_REPLY errors)."""
        readable, _, _ = select.select([self.channel.sock], [], [], wait)
        if readable or self.channel.buffer.buffered:
            with _disconnects():
                self.channel.receive() if readable else None
            frame = self.channel.next_frame()
            raise AssertionError(f"unexpected message from the server: {frame.header if frame else 'partial'}")

    def request(self, command: int, payload: bytes = b"", fds: Sequence[int] = ()) -> Reply:
        """Send a command and wait for its reply; an error reply raises VfioUserError."""
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
            with _disconnects():
                self.channel.send(reply)

    def _window(self, iova: int, count: int) -> tuple[MemoryWindow, int]:
        for window in self.windows:
            if window.iova <= iova and iova + count <= window.iova + window.size:
                return window, iova - window.iova
        raise _DmaRefused(_errno.EFAULT)

    # ------------------------------------------------------------ commands
    def negotiate(self, caps: Capabilities | None = None, major: int = 0, minor: int = 0) -> m.Version:
        """VERSION: offer `caps` (QEMU's by default) and keep the server's in `server_caps`."""
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
        """DMA_UNMAP one mapping (or all, with DMA_UNMAP_FLAG_ALL); forgets the matching windows."""
        reply = self.request(Command.DMA_UNMAP, m.DmaUnmap(m.DMA_UNMAP.size, flags, iova, size).pack())
        if flags & vfio_abi.DMA_UNMAP_FLAG_ALL:
            self.windows.clear()
        else:
            self.windows = [w for w in self.windows if (w.iova, w.size) != (iova, size)]
        return m.DmaUnmap.unpack(reply.body)

    def device_info(self) -> m.DeviceInfo:
        """DEVICE_GET_INFO: flags, number of regions and IRQ indexes."""
        reply = self.request(Command.DEVICE_GET_INFO, m.DeviceInfo(m.DeviceInfo.LAYOUT.size).pack())
        return m.DeviceInfo.unpack(reply.body)

    def region_info(self, index: int | str, argsz: int = 32) -> tuple[m.RegionInfo, int | None]:
        """GET_REGION_INFO with QEMU's retry when the caps do not fit; returns (info, fd or None)."""
        index = region_index(index)
        while True:
            reply = self.request(Command.DEVICE_GET_REGION_INFO, m.RegionInfo(argsz, index=index).pack())
            info = m.RegionInfo.unpack(reply.body)
            if info.argsz > argsz:
                reply.close_fds()
                argsz = info.argsz
                continue
            if len(reply.fds) > 1:
                reply.close_fds()
                raise ClientProtocolError("GET_REGION_INFO reply carries more than one fd")
            return info, (reply.fds[0] if reply.fds else None)

    def irq_info(self, index: int | str) -> m.IrqInfo:
        """DEVICE_GET_IRQ_INFO for an IRQ index (an int or a name such as "intx")."""
        index = irq_index(index)
        reply = self.request(Command.DEVICE_GET_IRQ_INFO, m.IrqInfo(m.IrqInfo.LAYOUT.size, index=index).pack())
        return m.IrqInfo.unpack(reply.body)

    def set_irqs(self, index: int | str, flags: int | None = None, start: int = 0, count: int | None = None,
                 fds: Sequence[int] = (), data: bytes | IrqData = b"", *, action: IrqAction | None = None,
                 bools: Sequence[bool] | None = None) -> None:
        """DEVICE_SET_IRQS on IRQ `index` for IRQs `start`..`start + count - 1`.

        Raw form: `flags` is the whole VFIO_IRQ_SET_* word and `data` the payload
        bytes.  Typed form: `action` (IrqAction) with `data` an IrqData; without it
        the data type follows from the arguments (fds: EVENTFD, `bools`: BOOL,
        neither: NONE).  `bools` gives a BOOL payload as one flag per IRQ.  `count`
        defaults to the number of fds, else of payload bytes, else 1.
        """
        index = irq_index(index)
        data_type = data if isinstance(data, IrqData) else None
        payload = b"" if isinstance(data, IrqData) else bytes(data)
        if bools is not None:
            if payload:
                raise ClientArgumentError("set_irqs: give the payload as data bytes or as bools, not both")
            payload = bytes(1 if value else 0 for value in bools)
        if flags is None:
            if action is None:
                raise ClientArgumentError("set_irqs: give flags, or an action (IrqAction)")
            if data_type is None:
                data_type = IrqData.EVENTFD if fds else IrqData.BOOL if payload else IrqData.NONE
            flags = int(action) | int(data_type)
        elif action is not None or data_type is not None:
            raise ClientArgumentError("set_irqs: give raw flags or action/data types, not both")
        if count is None:
            count = len(fds) if fds else len(payload) if payload else 1
        body = m.IrqSet(m.IrqSet.LAYOUT.size + len(payload), int(flags), index, start, count, payload).pack()
        self.request(Command.DEVICE_SET_IRQS, body, fds)

    def region_read(self, region: int | str, offset: int, count: int) -> bytes:
        """REGION_READ `count` bytes at `offset` of a region (an int or a name such as "bar0")."""
        region = region_index(region)
        reply = self.request(Command.REGION_READ, m.RegionAccess(offset, region, count).pack())
        access = m.RegionAccess.unpack(reply.body)
        if (access.offset, access.region, access.count) != (offset, region, count) or len(access.data) != count:
            raise ClientProtocolError(f"REGION_READ reply does not match the request: {access}")
        return access.data

    def region_write(self, region: int | str, offset: int, data: bytes, posted: bool = False) -> None:
        """REGION_WRITE `data` at `offset`; `posted` sends it NO_REPLY (no wait, no error back)."""
        payload = m.RegionAccess(offset, region_index(region), len(data), data).pack()
        if posted:
            self.send(Command.REGION_WRITE, payload, no_reply=True)
        else:
            self.request(Command.REGION_WRITE, payload)

    def read32(self, region: int | str, offset: int) -> int:
        """A 4-byte little-endian REGION_READ."""
        return int.from_bytes(self.region_read(region, offset, 4), "little")

    def write32(self, region: int | str, offset: int, value: int, posted: bool = False) -> None:
        """A 4-byte little-endian REGION_WRITE."""
        self.region_write(region, offset, (value & 0xFFFFFFFF).to_bytes(4, "little"), posted)

    def read64(self, region: int | str, offset: int) -> int:
        """An 8-byte little-endian REGION_READ."""
        return int.from_bytes(self.region_read(region, offset, 8), "little")

    def write64(self, region: int | str, offset: int, value: int, posted: bool = False) -> None:
        """An 8-byte little-endian REGION_WRITE."""
        self.region_write(region, offset, value.to_bytes(8, "little"), posted)

    def write_multi(self, entries: Sequence[tuple[int | str, int, bytes]]) -> None:
        """REGION_WRITE_MULTI (posted, as QEMU sends it): entries of (region, offset, data<=8)."""
        batch = m.RegionWriteMulti(tuple(m.WriteMultiEntry(o, region_index(r), len(d), d) for r, o, d in entries))
        self.send(Command.REGION_WRITE_MULTI, batch.pack(), no_reply=True)

    def reset(self) -> None:
        """DEVICE_RESET."""
        self.wait_and_check(self.send(Command.DEVICE_RESET), Command.DEVICE_RESET)

    def wait_and_check(self, msg_id: int, command: int) -> Reply:
        """Wait for the reply to `msg_id` (a `command` sent earlier); an error reply raises VfioUserError."""
        reply = self.wait_reply(msg_id)
        if reply.header.is_error:
            reply.close_fds()
            raise VfioUserError(command, reply.header.error)
        return reply

    def device_feature(self, flags: int, data: bytes = b"", argsz: int | None = None) -> m.DeviceFeature:
        """DEVICE_FEATURE with the raw VFIO_DEVICE_FEATURE_* `flags` and payload."""
        size = argsz if argsz is not None else m.DeviceFeature.LAYOUT.size + len(data)
        reply = self.request(Command.DEVICE_FEATURE, m.DeviceFeature(size, flags, data).pack())
        return m.DeviceFeature.unpack(reply.body)

    def sync(self) -> None:
        """A round trip: every earlier posted message has been processed when it returns."""
        self.device_info()


class _DmaRefused(Exception):
    def __init__(self, errno: int) -> None:
        self.errno = errno


@contextmanager
def _disconnects() -> Iterator[None]:
    """Turn the transport's ConnectionClosed into ClientDisconnected."""
    try:
        yield
    except ClientDisconnected:
        raise
    except ConnectionClosed as exc:
        raise ClientDisconnected(_errno.ECONNRESET, f"the connection ended: {exc}") from exc


def make_eventfd() -> int:
    """A new non-blocking, close-on-exec eventfd (the caller closes it)."""
    return os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)


def eventfd_count(fd: int) -> int:
    """Read and clear an eventfd's counter (0 if nothing was signalled)."""
    try:
        return os.eventfd_read(fd)
    except BlockingIOError:
        return 0


def wait_eventfd(fd: int, timeout: float) -> int:
    """Wait up to `timeout` seconds for an eventfd; its counter, cleared (0 if it stayed quiet)."""
    readable, _, _ = select.select([fd], [], [], timeout)
    return eventfd_count(fd) if readable else 0


__all__ = ["VfioUserClient", "ClientError", "VfioUserError", "ClientTimeout", "ClientDisconnected",
           "ClientProtocolError", "ClientArgumentError", "IrqAction", "IrqData", "PciRegion", "PciIrq",
           "region_index", "irq_index", "Reply", "MemoryWindow", "make_eventfd", "eventfd_count",
           "wait_eventfd", "HEADER_SIZE", "DEFAULT_TIMEOUT"]
