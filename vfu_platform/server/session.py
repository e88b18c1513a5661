# SPDX-License-Identifier: BSD-3-Clause
"""One client connection: negotiation, dispatch, validation, replies.

The peer is untrusted.  Every length, offset, index, count and fd is checked
before use; a bad message is answered with the errno libvfio-user gives (or
dropped silently when it carried NO_REPLY) and the session keeps serving.
Every fd received is either owned by something (DMA window, IRQ wiring) or
closed before the next message is read.
"""
from __future__ import annotations

import enum
from collections.abc import Callable
import errno
import logging
import select
import struct
import time

from vfu_platform import vfio_abi
from vfu_platform.dma import DmaMapError, DmaMapTable
from vfu_platform.errors import BackendError, DmaError
from vfu_platform.fds import close_quietly as _close_quietly
from vfu_platform.protocol import messages as m
from vfu_platform.protocol.caps import Capabilities
from vfu_platform.protocol.codec import encode, encode_error, encode_reply
from vfu_platform.protocol.constants import (
    COMMAND_NAMES,
    DEFAULT_MAX_DATA_XFER_SIZE,
    DEFAULT_MESSAGE_TIMEOUT,
    HEADER_SIZE,
    QEMU_MAX_MSG_FDS,
    VERSION_MAJOR,
    VERSION_MINOR,
    Command,
    MsgFlags,
)
from vfu_platform.protocol.errors import FramingError, ProtocolError
from vfu_platform.protocol.framing import Frame
from vfu_platform.protocol.header import HEADER, Header
from vfu_platform.server.device_api import ClientContext, ServedDevice
from vfu_platform.server.loop import EventLoop, TimerHandle
from vfu_platform.trace import Tracer
from vfu_platform.transport import Channel, ConnectionClosed

log = logging.getLogger("vfu_platform.session")

_ACCESS = m.REGION_ACCESS
_ACCESS_MESSAGE = HEADER_SIZE + _ACCESS.size
_READ_REPLY_HEAD = struct.Struct("<HHIII" + _ACCESS.format.lstrip("<"))
_REPLY_FLAGS = int(MsgFlags.TYPE_REPLY)
_NO_REPLY = int(MsgFlags.NO_REPLY)
_REGION_READ = int(Command.REGION_READ)
_DMA_BUF_FEATURE = 11  # VFIO_DEVICE_FEATURE_DMA_BUF: QEMU 11 asks, ENOTTY means "not supported"
_HANGUP = select.POLLHUP | select.POLLRDHUP | select.POLLERR


class SessionState(enum.Enum):
    AWAIT_VERSION = "await-version"
    READY = "ready"
    CLOSED = "closed"


class SessionOptions:
    def __init__(
        self,
        max_data_xfer_size: int = DEFAULT_MAX_DATA_XFER_SIZE,
        max_msg_fds: int = QEMU_MAX_MSG_FDS,
        max_dma_maps: int = 65535,
        pgsizes: int = 4096,
        write_multiple: bool = True,
        dma_timeout: float = 5.0,
        message_timeout: float = DEFAULT_MESSAGE_TIMEOUT,
    ) -> None:
        self.max_data_xfer_size = max_data_xfer_size
        self.max_msg_fds = max_msg_fds
        self.max_dma_maps = max_dma_maps
        self.pgsizes = pgsizes
        self.write_multiple = write_multiple
        self.dma_timeout = dma_timeout
        #: A client that stalls is dropped after this many seconds: one that has not sent
        #: VERSION, one that started a message and did not finish it, one that does not
        #: take a reply.  A negotiated client that sends nothing is idle, not stalled
        #: (a guest that leaves its device alone), and is never dropped.
        if not message_timeout > 0:
            raise ValueError(f"message_timeout must be > 0 seconds, not {message_timeout}")
        self.message_timeout = message_timeout

    @property
    def max_message_size(self) -> int:
        # Largest legal request: a REGION_WRITE of max_data_xfer_size bytes (header + access header + data).
        return self.max_data_xfer_size + HEADER_SIZE + _ACCESS.size


class Session:
    def __init__(
        self,
        channel: Channel,
        device: ServedDevice,
        loop: EventLoop,
        options: SessionOptions | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self.channel = channel
        self.device = device
        self.loop = loop
        self.options = options or SessionOptions()
        self.tracer = tracer
        self.state = SessionState.AWAIT_VERSION
        self.client_caps = Capabilities()
        self.dma = DmaMapTable(self.options.max_dma_maps)
        self.dma.remote_read = self._remote_dma_read
        self.dma.remote_write = self._remote_dma_write
        self._next_request_id = 0x8000  # our requests' ids: apart from QEMU's low counter, purely cosmetic
        self._replies: dict[int, tuple[Header, bytes]] = {}
        self._waiting: set[int] = set()
        #: ids of our requests whose wait ended without a reply: a late reply is dropped, not refused
        self._abandoned: set[int] = set()
        self._stall_timer: TimerHandle | None = None
        self._stall_mark = -1  # stream position when the stall timer was armed
        #: called once when the session closes (the listener admits a waiting client)
        self.on_close: Callable[[Session], None] | None = None
        self.closed_reason = ""
        self.counters: dict[str, int] = {}
        self._region_sizes: list[int] = []  # filled by start()
        self._handlers = {
            Command.VERSION: self._version,
            Command.DMA_MAP: self._dma_map,
            Command.DMA_UNMAP: self._dma_unmap,
            Command.DEVICE_GET_INFO: self._get_info,
            Command.DEVICE_GET_REGION_INFO: self._get_region_info,
            Command.DEVICE_GET_REGION_IO_FDS: self._get_region_io_fds,
            Command.DEVICE_GET_IRQ_INFO: self._get_irq_info,
            Command.DEVICE_SET_IRQS: self._set_irqs,
            Command.REGION_READ: self._region_read,
            Command.REGION_WRITE: self._region_write,
            Command.DEVICE_RESET: self._reset,
            Command.REGION_WRITE_MULTI: self._write_multi,
            Command.DEVICE_FEATURE: self._device_feature,
            Command.MIG_DATA_READ: self._migration,
            Command.MIG_DATA_WRITE: self._migration,
        }

    # ------------------------------------------------------------ lifecycle
    @property
    def closed(self) -> bool:
        return self.state is SessionState.CLOSED

    @property
    def stalled(self) -> bool:
        """Not negotiated yet, or in the middle of a message: may be dropped within message_timeout."""
        return self.state is SessionState.AWAIT_VERSION or (
            self.state is SessionState.READY and self.channel.buffer.buffered > 0)

    def start(self) -> None:
        # Region sizes never change while a device is served: the hot path reads them from here.
        num_regions = self.device.device_info()[1]
        self._region_sizes = [self.device.region_size(i) for i in range(num_regions)]
        self.device.client_attached(ClientContext(self.dma, self.loop, self.tracer))
        self.loop.add_reader(self.channel.fileno(), self._on_readable)
        self._arm_stall_timer()  # VERSION is due within message_timeout

    def close(self, reason: str) -> None:
        """Client gone (or dropped): release its DMA windows and fds; keep device state."""
        if self.state is SessionState.CLOSED:
            return
        self.state = SessionState.CLOSED
        self.closed_reason = reason
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        self.loop.remove_reader(self.channel.fileno())
        try:
            self.device.client_lost()
        finally:
            self.dma.unmap_all()
            self.channel.close()
        log.info("client gone: %s", reason)
        if self.tracer:
            self.tracer.event("client-gone", reason=reason)
        callback, self.on_close = self.on_close, None
        self._handlers.clear()  # no reference cycles keep a closed session (and its device refs) alive
        self.dma.remote_read = self.dma.remote_write = None  # type: ignore[assignment]
        if callback is not None:
            callback(self)

    def _on_readable(self) -> None:
        if self.state is SessionState.CLOSED:
            return
        channel = self.channel
        buffer = channel.buffer
        try:
            channel.receive()
            while self.state is not SessionState.CLOSED:
                # The hot path: whole REGION_READ / REGION_WRITE messages, no fds, no tracer.
                if self.state is SessionState.READY and self.tracer is None and not channel.truncated_fds:
                    access = buffer.take_access()
                    if access is not None:
                        self._fast_access(*access)
                        continue
                frame = buffer.next_message()
                if frame is None:
                    break
                try:
                    self._dispatch(frame)
                finally:
                    buffer.release()
        except ConnectionClosed as exc:
            self.close(f"connection closed ({exc})")
            return
        except FramingError as exc:
            log.warning("dropping client: %s", exc)
            self.close(f"framing error: {exc}")
            return
        if self.state is SessionState.CLOSED:
            return
        if buffer.buffered:
            # Part of a message is here: the rest is due within message_timeout of its start.
            if self._stall_timer is None or (buffer.position != self._stall_mark
                                             and self.state is SessionState.READY):
                self._arm_stall_timer()  # (before VERSION the deadline stays the one from connecting)
        elif self._stall_timer is not None and self.state is SessionState.READY:
            self._stall_timer.cancel()  # nothing pending: an idle client is no stalled one
            self._stall_timer = None

    # ------------------------------------------------------------ stalled clients
    def _arm_stall_timer(self) -> None:
        if self._stall_timer is not None:
            self._stall_timer.cancel()
        self._stall_mark = self.channel.buffer.position
        self._stall_timer = self.loop.call_later(self.options.message_timeout, self._on_stall_timer)

    def _on_stall_timer(self) -> None:
        self._stall_timer = None
        if self.state is SessionState.CLOSED:
            return
        buffer = self.channel.buffer
        timeout = self.options.message_timeout
        if self.state is SessionState.AWAIT_VERSION:
            self._drop_stalled(f"no VERSION within {timeout:g} s of connecting"
                               + (f" ({buffer.buffered} bytes of a message received)" if buffer.buffered else ""))
        elif buffer.buffered and buffer.position == self._stall_mark:
            self._drop_stalled(f"a message stayed incomplete for {timeout:g} s ({buffer.buffered} bytes received)")
        elif buffer.buffered:
            self._arm_stall_timer()  # messages went through meanwhile: time the one now in progress

    def _drop_stalled(self, why: str) -> None:
        self._bump("stalled-clients")
        log.warning("dropping a stalled client: %s", why)
        self.close(f"stalled: {why}")

    def peer_hung_up(self) -> bool:
        """True if the client has closed (or shut down) its end: what it sent is all there will be."""
        if self.state is SessionState.CLOSED:
            return True
        poller = select.poll()
        poller.register(self.channel.fileno(), select.POLLIN | select.POLLRDHUP)
        return any(mask & _HANGUP for _fd, mask in poller.poll(0))

    def finish_if_hung_up(self) -> bool:
        """A client that hung up: handle what it sent before going, then close.  True if closed.

        The listener asks before it refuses a new connection: a client that closed and
        reconnected at once has its last messages and its EOF still queued, and must not
        be taken for a second client.
        """
        if not self.peer_hung_up():
            return self.state is SessionState.CLOSED
        deadline = time.monotonic() + self.options.message_timeout
        while self.state is not SessionState.CLOSED and time.monotonic() < deadline:
            self._on_readable()  # each call reads once; a hung-up peer's stream ends in EOF
        if self.state is not SessionState.CLOSED:
            self.close("client hung up")
        return True

    def _fast_access(self, msg_id: int, command: int, size: int, flags: int, start: int) -> None:
        """REGION_READ / REGION_WRITE straight from the receive buffer, without frame objects."""
        try:
            self._access(msg_id, command, flags, self.channel.buffer.data, start + HEADER_SIZE, size - HEADER_SIZE)
        except Exception as exc:
            self._report(Header(msg_id, command, size, flags, 0), exc)

    # ------------------------------------------------------------ dispatch
    def _bump(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    def _dispatch(self, frame: Frame) -> None:
        header, body, fds = frame
        try:
            if header.msg_type == MsgFlags.TYPE_REPLY:
                self._on_reply(header, body)
                return
            self._bump(COMMAND_NAMES.get(header.command, "UNKNOWN"))
            if self.tracer:
                self.tracer.message("in", header, len(fds))
            if self.channel.truncated_fds:
                self.channel.truncated_fds = False
                raise ProtocolError(errno.EFAULT, "file descriptors were truncated in transit")
            if header.msg_type != MsgFlags.TYPE_COMMAND:
                raise ProtocolError.invalid(f"bad message type {header.msg_type}")
            if body is None:
                raise ProtocolError.invalid(
                    f"message size {header.size} exceeds the maximum {self.channel.buffer.max_message_size}"
                )
            if len(fds) > self.options.max_msg_fds:
                raise ProtocolError.invalid(f"{len(fds)} fds in one message, at most {self.options.max_msg_fds}")
            handler = self._handlers.get(header.command)
            if handler is None:
                raise ProtocolError.invalid(f"bad command {header.command}")
            if header.size == HEADER_SIZE and header.command != Command.DEVICE_RESET:
                raise ProtocolError.invalid(f"{COMMAND_NAMES[header.command]} without payload")
            if self.state is SessionState.AWAIT_VERSION and header.command != Command.VERSION:
                raise ProtocolError.invalid(f"{COMMAND_NAMES[header.command]} before VERSION")
            handler(header, body, fds)
        except Exception as exc:
            self._report(header, exc)
        finally:
            for fd in fds:
                _close_quietly(fd)
            fds.clear()

    def _report(self, header: Header, exc: Exception) -> None:
        """Answer a failed message with its errno (call from the except block)."""
        if isinstance(exc, (ProtocolError, BackendError, DmaMapError)):
            self._fail(header, exc.errno, str(exc))
        else:  # a bug must not take the session down
            log.exception("internal error handling %s", COMMAND_NAMES.get(header.command, header.command))
            self._fail(header, errno.EIO, f"internal error: {exc!r}")

    def _fail(self, header: Header, errno_value: int, message: str) -> None:
        self._bump("errors")
        name = COMMAND_NAMES.get(header.command, str(header.command))
        log.info("%s (id %d) failed: %s [%s]", name, header.msg_id, message, errno.errorcode.get(errno_value, errno_value))
        if self.tracer:
            # A NO_REPLY failure is answered by nothing: trace it as "dropped", not as a reply sent.
            direction = "dropped" if header.no_reply else "out"
            self.tracer.message(direction, header, 0, error=errno_value, note=message)
        if not header.no_reply:
            self._send(encode_error(header.msg_id, header.command, errno_value))

    def _reply(self, header: Header, payload: bytes = b"", fds: tuple[int, ...] = ()) -> None:
        if header.no_reply:
            return
        data = encode_reply(header.msg_id, header.command, payload)
        if self.tracer:
            self.tracer.message("out", Header(header.msg_id, header.command, len(data), _REPLY_FLAGS, 0), len(fds))
        self._send(data, fds)

    def _send(self, data: bytes, fds: tuple[int, ...] = ()) -> None:
        if self.state is SessionState.CLOSED:  # gone while the message was handled (a DMA wait)
            return
        try:
            self.channel.send(data, fds)
        except ConnectionClosed as exc:
            self.close(f"connection closed while replying ({exc})")

    # ------------------------------------------------------------ negotiation
    def _version(self, header: Header, body: memoryview, fds: list[int]) -> None:
        if self.state is not SessionState.AWAIT_VERSION:
            raise ProtocolError.invalid("VERSION after negotiation")
        if fds:
            raise ProtocolError.invalid("VERSION carries file descriptors")
        request = m.Version.unpack(body)
        if request.major != VERSION_MAJOR:
            raise ProtocolError.invalid(f"unsupported major version {request.major}")
        caps = request.caps or Capabilities()
        self.client_caps = caps
        reply_caps = Capabilities(
            max_msg_fds=self.options.max_msg_fds,
            max_data_xfer_size=self.options.max_data_xfer_size,
            max_dma_maps=self.options.max_dma_maps,
            pgsizes=self.options.pgsizes,
        )
        if self.options.write_multiple and caps.write_multiple:
            reply_caps.write_multiple = True
        reply = m.Version(VERSION_MAJOR, min(request.minor, VERSION_MINOR), reply_caps)
        self.state = SessionState.READY
        self._reply(header, reply.pack())
        log.info("negotiated with client caps %s", caps)

    # ------------------------------------------------------------ DMA windows
    def _dma_map(self, header: Header, body: memoryview, fds: list[int]) -> None:
        request = m.DmaMap.unpack(body)
        if request.argsz < m.DMA_MAP.size:
            raise ProtocolError.invalid(f"DMA_MAP argsz {request.argsz} < {m.DMA_MAP.size}")
        if len(fds) > 1:
            raise ProtocolError.invalid(f"DMA_MAP with {len(fds)} fds")
        fd = fds.pop() if fds else None
        self.dma.map(request.address, request.size, request.flags, request.offset, fd)
        self._reply(header)

    def _dma_unmap(self, header: Header, body: memoryview, fds: list[int]) -> None:
        request = m.DmaUnmap.unpack(body)
        if request.flags & vfio_abi.DMA_UNMAP_FLAG_GET_DIRTY_BITMAP:
            raise ProtocolError.invalid("DMA_UNMAP: dirty page logging is not enabled")
        if request.flags & ~vfio_abi.DMA_UNMAP_FLAG_ALL:
            raise ProtocolError.invalid(f"DMA_UNMAP: bad flags {request.flags:#x}")
        if request.argsz < m.DMA_UNMAP.size or request.argsz > DEFAULT_MAX_DATA_XFER_SIZE:
            raise ProtocolError.invalid(f"DMA_UNMAP: bad argsz {request.argsz}")
        if request.flags & vfio_abi.DMA_UNMAP_FLAG_ALL:
            if request.address or request.size:
                raise ProtocolError.invalid("DMA_UNMAP_ALL with a non-zero address or size")
            self.dma.unmap_all()
        else:
            try:
                self.dma.unmap(request.address, request.size)
            except DmaMapError as exc:
                # QEMU behind a vIOMMU unmaps ranges it never mapped: answer, quietly.
                self._bump("unmap-not-found")
                if not header.no_reply:
                    self._send(encode_error(header.msg_id, header.command, exc.errno))
                return
        self._reply(header, m.DmaUnmap(m.DMA_UNMAP.size, request.flags, request.address, request.size).pack())

    # ------------------------------------------------------------ info
    def _get_info(self, header: Header, body: memoryview, fds: list[int]) -> None:
        request = m.DeviceInfo.unpack(body)
        if request.argsz < m.DeviceInfo.LAYOUT.size:
            raise ProtocolError.invalid(f"DEVICE_GET_INFO argsz {request.argsz}")
        flags, num_regions, num_irqs = self.device.device_info()
        self._reply(header, m.DeviceInfo(m.DeviceInfo.LAYOUT.size, flags, num_regions, num_irqs).pack())

    def _check_region_index(self, index: int) -> None:
        regions = len(self._region_sizes)
        if index >= regions:
            raise ProtocolError.invalid(f"region {index} does not exist ({regions} regions)")

    def _get_region_info(self, header: Header, body: memoryview, fds: list[int]) -> None:
        request = m.RegionInfo.unpack(body)
        if request.argsz < m.RegionInfo.LAYOUT.size:
            raise ProtocolError.invalid(f"DEVICE_GET_REGION_INFO argsz {request.argsz}")
        self._check_region_index(request.index)
        info, fd = self.device.region_info(request.index)
        payload, complete = info.pack_reply(request.argsz)
        send_fd = (fd,) if fd is not None and complete and self.client_caps.effective_max_msg_fds() >= 1 else ()
        self._reply(header, payload, send_fd)

    def _get_region_io_fds(self, header: Header, body: memoryview, fds: list[int]) -> None:
        request = m.RegionIoFds.unpack(body)
        if request.flags or request.count:
            raise ProtocolError.invalid("DEVICE_GET_REGION_IO_FDS: flags and count must be 0")
        if request.argsz < m.REGION_IO_FDS.size or request.argsz > DEFAULT_MAX_DATA_XFER_SIZE:
            raise ProtocolError.invalid(f"DEVICE_GET_REGION_IO_FDS argsz {request.argsz}")
        self._check_region_index(request.index)
        info, _fd = self.device.region_info(request.index)
        if not info.flags & (vfio_abi.REGION_FLAG_READ | vfio_abi.REGION_FLAG_WRITE):
            raise ProtocolError.invalid(f"region {request.index} is not accessible")
        # No ioeventfds are offered: zero sub-regions.
        self._reply(header, m.RegionIoFds(m.REGION_IO_FDS.size, 0, request.index, 0).pack())

    def _get_irq_info(self, header: Header, body: memoryview, fds: list[int]) -> None:
        request = m.IrqInfo.unpack(body)
        if request.argsz < m.IrqInfo.LAYOUT.size:
            raise ProtocolError.invalid(f"DEVICE_GET_IRQ_INFO argsz {request.argsz}")
        num_irqs = self.device.device_info()[2]
        if request.index >= num_irqs:
            raise ProtocolError.invalid(f"IRQ index {request.index} does not exist ({num_irqs} indexes)")
        flags, count = self.device.irq_info(request.index)
        self._reply(header, m.IrqInfo(m.IrqInfo.LAYOUT.size, flags, request.index, count).pack())

    # ------------------------------------------------------------ interrupts
    def _set_irqs(self, header: Header, body: memoryview, fds: list[int]) -> None:
        request = m.IrqSet.unpack(body)
        validate_irq_set(request, len(fds), self.device)
        taken = list(fds)
        fds.clear()
        self.device.set_irqs(request, taken)
        self._reply(header)

    # ------------------------------------------------------------ region access
    def _check_access(self, region: int, offset: int, count: int) -> None:
        if count > self.options.max_data_xfer_size:
            raise ProtocolError.invalid(f"count {count} > max_data_xfer_size {self.options.max_data_xfer_size}")
        self._check_region_index(region)
        size = self._region_sizes[region]
        if offset + count > size:
            raise ProtocolError.invalid(f"region {region}: [{offset:#x}, +{count:#x}) is past its size {size:#x}")

    def _region_read(self, header: Header, body: memoryview, fds: list[int]) -> None:
        self._access(header.msg_id, header.command, header.flags, body, 0, len(body))

    _region_write = _region_read

    def _access(self, msg_id: int, command: int, flags: int, data: m.Buffer, at: int, length: int) -> None:
        """REGION_READ / REGION_WRITE whose `length`-byte payload starts at `data[at]`.

        One implementation for both paths (framed messages, and the fast path that
        reads straight from the receive buffer).  Everything needed is copied out of
        `data` before the device runs.
        """
        if length < _ACCESS.size:
            raise ProtocolError.invalid(f"{COMMAND_NAMES[command]} payload {length} bytes")
        offset, region, count = _ACCESS.unpack_from(data, at)
        if command == _REGION_READ:
            self._check_access(region, offset, count)
            payload = self.device.region_read(region, offset, count) if count else b""
            if len(payload) != count:
                raise ProtocolError(errno.EIO, f"device returned {len(payload)} of {count} bytes")
            if flags & _NO_REPLY:
                return
            size = _ACCESS_MESSAGE + count
            reply = _READ_REPLY_HEAD.pack(msg_id, command, size, _REPLY_FLAGS, 0, offset, region, count) + payload
        else:
            if length - _ACCESS.size != count:
                raise ProtocolError.invalid(f"REGION_WRITE count {count} but {length - _ACCESS.size} data bytes")
            self._check_access(region, offset, count)
            echo = bytes(data[at : at + _ACCESS.size])
            if count:
                self.device.region_write(region, offset, bytes(data[at + _ACCESS.size : at + length]))
            if flags & _NO_REPLY:
                return
            size = _ACCESS_MESSAGE
            reply = HEADER.pack(msg_id, command, size, _REPLY_FLAGS, 0) + echo
        if self.tracer:
            self.tracer.message("out", Header(msg_id, command, size, _REPLY_FLAGS, 0), 0)
        self._send(reply)

    def _write_multi(self, header: Header, body: memoryview, fds: list[int]) -> None:
        if not (self.options.write_multiple and self.client_caps.write_multiple):
            raise ProtocolError.invalid("REGION_WRITE_MULTI was not negotiated")
        request = m.RegionWriteMulti.unpack(body)
        # Validate the whole batch first: a bad entry fails the batch before any write happens.
        for entry in request.entries:
            self._check_access(entry.region, entry.offset, entry.count)
        for entry in request.entries:
            if entry.count:
                self.device.region_write(entry.region, entry.offset, entry.data)
        self._reply(header, m.RegionWriteMulti(wr_cnt=len(request.entries)).pack())

    # ------------------------------------------------------------ reset, features, migration
    def _reset(self, header: Header, body: memoryview, fds: list[int]) -> None:
        if len(body):
            raise ProtocolError.invalid("DEVICE_RESET carries a payload")
        self.device.reset()
        self._reply(header)

    def _device_feature(self, header: Header, body: memoryview, fds: list[int]) -> None:
        request = m.DeviceFeature.unpack(body)
        feature = request.flags & vfio_abi.DEVICE_FEATURE_MASK
        if feature == _DMA_BUF_FEATURE:
            raise ProtocolError(errno.ENOTTY, "DEVICE_FEATURE DMA_BUF is not supported")
        raise ProtocolError.invalid(f"DEVICE_FEATURE {feature} is not supported")

    def _migration(self, header: Header, body: memoryview, fds: list[int]) -> None:
        raise ProtocolError.invalid("migration is not supported")

    # ------------------------------------------------------------ server -> client DMA
    def _on_reply(self, header: Header, body: memoryview | None) -> None:
        if header.msg_id in self._waiting:
            self._replies[header.msg_id] = (header, b"" if body is None else bytes(body))
            if self.tracer:
                self.tracer.message("in", header, 0, error=header.error)
        elif header.msg_id in self._abandoned:
            # The late reply to one of our own DMA requests: answering it would confuse the client.
            self._abandoned.discard(header.msg_id)
            self._bump("late-replies")
            log.warning("dropping a late reply (id %d) to a request that timed out", header.msg_id)
        else:
            # A "reply" nobody asked for is a malformed request: EINVAL, as libvfio-user answers
            # (its test_unsolicited_reply), unless the client asked for no reply.
            self._bump("unexpected-replies")
            if self.tracer:
                self.tracer.message("in", header, 0, error=header.error)
            self._fail(header, errno.EINVAL, f"unsolicited reply (id {header.msg_id})")

    def _request(self, command: int, payload: bytes) -> tuple[Header, bytes]:
        if self.closed:
            raise DmaError(errno.ENOTCONN, "no client")
        msg_id = self._next_request_id
        self._next_request_id = (self._next_request_id + 1) & 0xFFFF
        self._waiting.add(msg_id)
        try:
            data = encode(msg_id, command, payload)
            if self.tracer:
                self.tracer.message("out", Header(msg_id, command, len(data), 0, 0), 0)
            self._send(data)
            arrived = self.loop.run_until(lambda: msg_id in self._replies or self.closed, self.options.dma_timeout)
            if msg_id not in self._replies:
                raise DmaError(errno.ENOTCONN if self.closed else errno.ETIMEDOUT,
                               f"no reply to {COMMAND_NAMES[command]} (id {msg_id})" + ("" if arrived else " in time"))
            reply_header, reply_body = self._replies.pop(msg_id)
        except BaseException:
            if len(self._abandoned) >= 64:  # bounded: the oldest are forgotten
                self._abandoned.pop()
            self._abandoned.add(msg_id)
            raise
        finally:
            self._waiting.discard(msg_id)
        if reply_header.is_error:
            raise DmaError(reply_header.error or errno.EIO, f"client answered {COMMAND_NAMES[command]} with error {reply_header.error}")
        return reply_header, reply_body

    def _dma_chunk(self) -> int:
        return min(self.options.max_data_xfer_size, self.client_caps.effective_max_data_xfer_size())

    def _remote_dma_read(self, iova: int, size: int) -> bytes:
        out = bytearray()
        chunk = self._dma_chunk()
        for start in range(iova, iova + size, chunk):
            count = min(chunk, iova + size - start)
            _h, body = self._request(Command.DMA_READ, m.DmaAccess(start, count).pack())
            reply = m.DmaAccess.unpack(body)
            if len(reply.data) != count:
                raise DmaError(errno.EIO, f"DMA_READ reply carries {len(reply.data)} of {count} bytes")
            out += reply.data
        return bytes(out)

    def _remote_dma_write(self, iova: int, data: bytes) -> None:
        chunk = self._dma_chunk()
        for pos in range(0, len(data), chunk):
            piece = data[pos : pos + chunk]
            self._request(Command.DMA_WRITE, m.DmaAccess(iova + pos, len(piece), piece).pack())


def validate_irq_set(request: m.IrqSet, nfds: int, device: ServedDevice) -> None:
    """libvfio-user's SET_IRQS checks, in its order (protocol brief 4.5)."""
    if request.argsz < m.IrqSet.LAYOUT.size:
        raise ProtocolError.invalid(f"SET_IRQS argsz {request.argsz}")
    data_type, action = request.data_type, request.action
    if data_type == vfio_abi.IRQ_SET_DATA_BOOL and len(request.data) != request.count:
        raise ProtocolError.invalid(f"SET_IRQS DATA_BOOL with {len(request.data)} bytes for count {request.count}")
    num_irqs = device.device_info()[2]
    if request.index >= num_irqs:
        raise ProtocolError.invalid(f"SET_IRQS index {request.index} does not exist")
    if action not in (vfio_abi.IRQ_SET_ACTION_MASK, vfio_abi.IRQ_SET_ACTION_UNMASK, vfio_abi.IRQ_SET_ACTION_TRIGGER):
        raise ProtocolError.invalid(f"SET_IRQS flags {request.flags:#x}: not exactly one action")
    if data_type not in (vfio_abi.IRQ_SET_DATA_NONE, vfio_abi.IRQ_SET_DATA_BOOL, vfio_abi.IRQ_SET_DATA_EVENTFD):
        raise ProtocolError.invalid(f"SET_IRQS flags {request.flags:#x}: not exactly one data type")
    if request.flags & ~(vfio_abi.IRQ_SET_DATA_TYPE_MASK | vfio_abi.IRQ_SET_ACTION_TYPE_MASK):
        raise ProtocolError.invalid(f"SET_IRQS flags {request.flags:#x}: unknown bits")
    _flags, vectors = device.irq_info(request.index)
    disable = request.count == 0 and request.start == 0
    if not disable:
        if request.start >= vectors:
            raise ProtocolError.invalid(f"SET_IRQS start {request.start} >= {vectors} vectors")
        if request.start + request.count > vectors:
            raise ProtocolError.invalid(f"SET_IRQS [{request.start}, +{request.count}) past {vectors} vectors")
    if request.index in (vfio_abi.PCI_ERR_IRQ_INDEX, vfio_abi.PCI_REQ_IRQ_INDEX):
        if action != vfio_abi.IRQ_SET_ACTION_TRIGGER or request.count > 1:
            raise ProtocolError.invalid("SET_IRQS on ERR/REQ: only TRIGGER of one vector")
    if request.count == 0:
        if request.start != 0:
            raise ProtocolError.invalid("SET_IRQS count 0 with start != 0")
        if not (action == vfio_abi.IRQ_SET_ACTION_TRIGGER and data_type == vfio_abi.IRQ_SET_DATA_NONE):
            raise ProtocolError.invalid("SET_IRQS count 0 is only TRIGGER|DATA_NONE (disable)")
    if nfds and data_type != vfio_abi.IRQ_SET_DATA_EVENTFD:
        raise ProtocolError.invalid("SET_IRQS: fds without DATA_EVENTFD")
    if nfds and nfds != request.count:
        raise ProtocolError.invalid(f"SET_IRQS: {nfds} fds for count {request.count}")
    if data_type == vfio_abi.IRQ_SET_DATA_EVENTFD and action == vfio_abi.IRQ_SET_ACTION_MASK:
        raise ProtocolError.invalid("SET_IRQS MASK|EVENTFD is not supported")
    if data_type == vfio_abi.IRQ_SET_DATA_EVENTFD and action == vfio_abi.IRQ_SET_ACTION_UNMASK and request.count > 1:
        raise ProtocolError.invalid("SET_IRQS UNMASK|EVENTFD takes one vector")
