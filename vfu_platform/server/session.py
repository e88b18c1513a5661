# SPDX-License-Identifier: BSD-3-Clause
"""One client connection as a state machine, sans I/O (h11's `Connection` is the model).

Bytes and fds go in (`receive_data`, or straight into `buffer` and then
`process`), messages to send come out (`take_output`); the I/O edge
(`server/connection.py`) alone reads and writes the socket and arms a timer for
`deadline`.  A device's DMA_READ / DMA_WRITE to the client is a request in the
output and a continuation kept here: the reply resumes it (or the deadline, or
the end of the session, fails it).  Nothing here blocks or waits.

The peer is untrusted.  Every length, offset, index, count and fd is checked
before use; a bad message is answered with the errno libvfio-user gives (or
dropped silently when it carried NO_REPLY) and the session keeps serving.
Every fd received is either owned by something (DMA window, IRQ wiring) or
closed before the next message is handled.
"""
from __future__ import annotations

import enum
import errno
import logging
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from vfu_platform import vfio_abi
from vfu_platform.backends.base import Scheduler
from vfu_platform.bridge.irq_set import validate_irq_set
from vfu_platform.counters import Counters
from vfu_platform.dma import DmaDone, DmaMapError, DmaMapTable
from vfu_platform.errors import DmaError, VfuError
from vfu_platform.fds import close_quietly as _close_quietly
from vfu_platform.protocol import messages as m
from vfu_platform.protocol.caps import Capabilities
from vfu_platform.protocol.codec import encode, encode_error, encode_reply
from vfu_platform.protocol.constants import (
    COMMAND_NAMES,
    DEFAULT_MAX_DATA_XFER_SIZE,
    DEFAULT_MAX_DMA_MAPS,
    DEFAULT_MESSAGE_TIMEOUT,
    DEFAULT_PGSIZES,
    DMA_REQUEST_TIMEOUT,
    HEADER_SIZE,
    MAX_ABANDONED_REQUESTS,
    QEMU_MAX_MSG_FDS,
    VERSION_MAJOR,
    VERSION_MINOR,
    Command,
    MsgFlags,
)
from vfu_platform.protocol.errors import FramingError, ProtocolError
from vfu_platform.protocol.framing import ReceiveBuffer
from vfu_platform.protocol.header import HEADER, Header
from vfu_platform.server.device_api import ClientContext, ServedDevice

log = logging.getLogger("vfu_platform.session")


class DeviceLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A logger whose lines start with the device's label (its socket) when a process serves several."""

    def __init__(self, logger: logging.Logger, label: str = "") -> None:
        super().__init__(logger, {})
        self.prefix = f"{label}: " if label else ""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return (f"{self.prefix}{msg}" if self.prefix else msg), kwargs

_ACCESS = m.REGION_ACCESS
_ACCESS_MESSAGE = HEADER_SIZE + _ACCESS.size
_READ_REPLY_HEAD = struct.Struct("<HHIII" + _ACCESS.format.lstrip("<"))
_REPLY_FLAGS = int(MsgFlags.TYPE_REPLY)
_NO_REPLY = int(MsgFlags.NO_REPLY)
_TYPE_MASK = int(MsgFlags.TYPE_REPLY)  # the type field: 0 command, 1 reply
_REGION_READ = int(Command.REGION_READ)
_REGION_WRITE = int(Command.REGION_WRITE)
_DMA_BUF_FEATURE = 11  # VFIO_DEVICE_FEATURE_DMA_BUF: QEMU 11 asks, ENOTTY means "not supported"
_VALUE_SIZES = (1, 2, 4, 8)  # accesses whose value the observer is told


class MessageObserver(Protocol):
    """The one hook that sees every message (a `Tracer`, a `-vv` log, or both behind one object)."""

    def message(self, direction: str, header: Header, nfds: int, error: int = 0, note: str = "", *,
                region: int | None = None, offset: int | None = None, count: int | None = None,
                value: int | None = None) -> None: ...

    def event(self, event: str, **fields: Any) -> None: ...


#: one message to send: its bytes and the fds that travel with them
Outgoing = tuple[bytes, tuple[int, ...]]


class SessionState(enum.Enum):
    AWAIT_VERSION = "await-version"
    READY = "ready"
    CLOSED = "closed"


class SessionOptions:
    def __init__(
        self,
        max_data_xfer_size: int = DEFAULT_MAX_DATA_XFER_SIZE,
        max_msg_fds: int = QEMU_MAX_MSG_FDS,
        max_dma_maps: int = DEFAULT_MAX_DMA_MAPS,
        pgsizes: int = DEFAULT_PGSIZES,
        write_multiple: bool = True,
        dma_timeout: float = DMA_REQUEST_TIMEOUT,
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


@dataclass(slots=True)
class _DmaTransfer:
    """One device DMA through the client, split in requests of at most the negotiated size."""

    command: int
    done: DmaDone
    first_id: int  # msg id of the first request; the others follow in order
    sizes: list[int]  # byte count of each request
    parts: list[bytes | None] = field(default_factory=list)  # what each DMA_READ brought
    waiting: set[int] = field(default_factory=set)  # msg ids not answered yet
    deadline: float = 0.0
    finished: bool = False


class Session:
    """A vfio-user client connection's protocol state; see the module docstring."""

    def __init__(
        self,
        device: ServedDevice,
        scheduler: Scheduler,
        options: SessionOptions | None = None,
        observer: MessageObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
        label: str = "",
    ) -> None:
        self.device = device
        #: this session's log (lines prefixed with `label`: the device's socket, with several devices)
        self.log = DeviceLog(log, label)
        #: lent to the device while the client is attached (timers, fd watches): never used here
        self.scheduler = scheduler
        self.options = options or SessionOptions()
        self.observer = observer
        self.clock = clock
        self.state = SessionState.AWAIT_VERSION
        self.client_caps = Capabilities()
        #: the receive side: the edge receives into it (or `receive_data` copies into it)
        self.buffer = ReceiveBuffer(self.options.max_message_size)
        self.dma = DmaMapTable(self.options.max_dma_maps)
        self.dma.remote_read = self._remote_dma_read
        self.dma.remote_write = self._remote_dma_write
        #: messages to send, in order; the edge takes them with `take_output`
        self.outbox: list[Outgoing] = []
        #: called when output is queued outside `process` (a device's DMA from its own timer)
        self.on_output: Callable[[], None] | None = None
        #: called once when the session closes
        self.on_close: Callable[[Session], None] | None = None
        self.closed_reason = ""
        self._counters = Counters()
        #: REGION_READ / REGION_WRITE handled on the hot path, folded into `counters` when read
        self._fast_reads = 0
        self._fast_writes = 0
        self._processing = False
        self._truncated_fds = False
        self._next_request_id = 0x8000  # our requests' ids: apart from QEMU's low counter, purely cosmetic
        self._transfers: dict[int, _DmaTransfer] = {}  # request msg id -> its transfer
        #: ids of our requests that ended without a reply: a late reply is dropped, not refused
        self._abandoned: dict[int, None] = {}
        self._stall_deadline: float | None = None
        self._stall_mark = -1  # stream position when the stall deadline was set
        self._region_sizes: list[int] = []  # filled by start()
        self._handlers: dict[int, Callable[[Header, memoryview, list[int]], None]] = {
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
            self.state is SessionState.READY and self.buffer.buffered > 0)

    @property
    def counters(self) -> Counters:
        """Per-command and event counts of this client."""
        if self._fast_reads or self._fast_writes:
            self._counters.bump("REGION_READ", self._fast_reads)
            self._counters.bump("REGION_WRITE", self._fast_writes)
            self._counters.values = {k: v for k, v in self._counters.values.items() if v}
            self._fast_reads = self._fast_writes = 0
        return self._counters

    @property
    def dma_pending(self) -> int:
        """Device DMA transfers waiting for the client's reply."""
        return len({id(t) for t in self._transfers.values()})

    def start(self) -> None:
        """The client is connected: lend the device its context; VERSION is due within message_timeout."""
        # Region sizes never change while a device is served: the hot path reads them from here.
        num_regions = self.device.device_info()[1]
        self._region_sizes = [self.device.region_size(i) for i in range(num_regions)]
        self.device.client_attached(ClientContext(self.dma, self.scheduler, self.observer))  # type: ignore[arg-type]
        self._stall_deadline, self._stall_mark = self.clock() + self.options.message_timeout, 0

    def close(self, reason: str) -> None:
        """Client gone (or dropped): fail its DMA, release its windows and fds; keep device state."""
        if self.state is SessionState.CLOSED:
            return
        self.state = SessionState.CLOSED
        self.closed_reason = reason
        self._stall_deadline = None
        # The outbox is kept: replies to the messages before the one that closed the session
        # (framing lost in mid-stream) are still the client's; the edge sends what it can.
        try:
            self._fail_transfers(errno.ENOTCONN, "the client is gone")
            self.device.client_lost()
        finally:
            self.dma.unmap_all()
            self.buffer.discard()
        self.log.info("client gone: %s", reason)
        if self.observer:
            self.observer.event("client-gone", reason=reason)
        callback, self.on_close = self.on_close, None
        self._handlers.clear()  # no reference cycles keep a closed session (and its device refs) alive
        self.dma.remote_read = self.dma.remote_write = None
        self.on_output = None
        if callback is not None:
            callback(self)

    def connection_lost(self, reason: str) -> None:
        """The edge saw the stream end (EOF, reset, a send that failed)."""
        self.close(reason)

    # ------------------------------------------------------------ input / output
    def receive_data(self, data: bytes | bytearray | memoryview, fds: list[int] | tuple[int, ...] = ()) -> None:
        """Take bytes (and the fds received with them) and handle every whole message in them."""
        if self.state is SessionState.CLOSED:
            for fd in fds:
                _close_quietly(fd)
            return
        try:
            self.buffer.feed(data, fds)
        except FramingError as exc:
            self._framing_lost(exc)
            return
        self.process()

    def take_output(self) -> list[Outgoing]:
        """The messages to send, in order (the caller sends them; fds stay owned by their owner)."""
        out, self.outbox = self.outbox, []
        return out

    def process(self, truncated_fds: bool = False) -> None:
        """Handle every whole message in `buffer` (after the edge received into it)."""
        if self.state is SessionState.CLOSED:
            return
        if truncated_fds:
            self._truncated_fds = True  # the next message is answered EFAULT
        buffer = self.buffer
        self._processing = True
        try:
            while self.state is not SessionState.CLOSED:
                plain = buffer.next_plain()
                if plain is not None:
                    msg_id, command, size, flags, error, start = plain
                    if ((command == _REGION_READ or command == _REGION_WRITE) and not flags & ~_NO_REPLY
                            and self.observer is None and self.state is SessionState.READY
                            and not self._truncated_fds):
                        # The hot path: a plain access, handled straight from the receive buffer.
                        if command == _REGION_READ:
                            self._fast_reads += 1
                        else:
                            self._fast_writes += 1
                        try:
                            self._access(msg_id, command, flags, buffer.data, start + HEADER_SIZE, size - HEADER_SIZE)
                        except Exception as exc:
                            self._report(Header(msg_id, command, size, flags, error), exc)
                        continue
                    self._dispatch(Header(msg_id, command, size, flags, error),
                                   memoryview(buffer.data)[start + HEADER_SIZE : start + size], [])
                    continue
                frame = buffer.next_message()
                if frame is None:
                    break
                self._dispatch(*frame)
        except FramingError as exc:
            self._framing_lost(exc)
            return
        finally:
            self._processing = False
        if self.state is not SessionState.CLOSED:
            self._update_stall_deadline()

    def _framing_lost(self, exc: FramingError) -> None:
        self.log.warning("dropping client: %s", exc)
        self.close(f"framing error: {exc}")

    def _send(self, data: bytes, fds: tuple[int, ...] = ()) -> None:
        if self.state is SessionState.CLOSED:
            return
        self.outbox.append((data, fds))
        if not self._processing and self.on_output is not None:
            self.on_output()

    # ------------------------------------------------------------ time
    @property
    def deadline(self) -> float | None:
        """When `handle_timeout` is due next (clock time), or None."""
        when = self._stall_deadline
        for transfer in self._transfers.values():
            if when is None or transfer.deadline < when:
                when = transfer.deadline
        return when

    def handle_timeout(self) -> None:
        """Drop a client stalled for message_timeout; fail DMA the client did not answer in time."""
        if self.state is SessionState.CLOSED:
            return
        now = self.clock()
        for transfer in list(self._transfers.values()):
            if not transfer.finished and transfer.deadline <= now:
                ids = sorted(transfer.waiting)
                self._finish(transfer, DmaError(errno.ETIMEDOUT, f"no reply to {COMMAND_NAMES[transfer.command]} "
                                                f"(id {ids[0] if ids else '?'}) in {self.options.dma_timeout:g} s"))
        if self._stall_deadline is not None and self._stall_deadline <= now:
            self._stall_deadline = None
            self._on_stall(now)

    def _update_stall_deadline(self) -> None:
        buffer = self.buffer
        if buffer.buffered:
            # Part of a message is here: the rest is due within message_timeout of its start.
            # (Before VERSION the deadline stays the one from connecting.)
            if self._stall_deadline is None or (buffer.position != self._stall_mark
                                                and self.state is SessionState.READY):
                self._stall_deadline = self.clock() + self.options.message_timeout
                self._stall_mark = buffer.position
        elif self.state is SessionState.READY:
            self._stall_deadline = None  # nothing pending: an idle client is no stalled one

    def _on_stall(self, now: float) -> None:
        buffer = self.buffer
        timeout = self.options.message_timeout
        if self.state is SessionState.AWAIT_VERSION:
            self.drop_stalled(f"no VERSION within {timeout:g} s of connecting"
                               + (f" ({buffer.buffered} bytes of a message received)" if buffer.buffered else ""))
        elif buffer.buffered and buffer.position == self._stall_mark:
            self.drop_stalled(f"a message stayed incomplete for {timeout:g} s ({buffer.buffered} bytes received)")
        elif buffer.buffered:
            # Messages went through meanwhile: time the one now in progress.
            self._stall_deadline, self._stall_mark = now + timeout, buffer.position

    def drop_stalled(self, why: str) -> None:
        """Drop the client as stalled (counted, logged with `why`)."""
        self.counters.bump("stalled-clients")
        self.log.warning("dropping a stalled client: %s", why)
        self.close(f"stalled: {why}")

    # ------------------------------------------------------------ dispatch
    def _dispatch(self, header: Header, body: memoryview | None, fds: list[int]) -> None:
        try:
            if header.flags & _TYPE_MASK == _REPLY_FLAGS:
                self._on_reply(header, body)
                return
            self.counters.bump(COMMAND_NAMES.get(header.command, "UNKNOWN"))
            if self.observer:
                self._observe_in(header, body, len(fds))
            if self._truncated_fds:
                self._truncated_fds = False
                raise ProtocolError(errno.EFAULT, "file descriptors were truncated in transit")
            if header.msg_type != MsgFlags.TYPE_COMMAND:
                raise ProtocolError.invalid(f"bad message type {header.msg_type}")
            if body is None:
                raise ProtocolError.invalid(
                    f"message size {header.size} exceeds the maximum {self.buffer.max_message_size}"
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

    def _observe_in(self, header: Header, body: memoryview | None, nfds: int) -> None:
        """Tell the observer of a request; accesses with their region, offset, count and value."""
        assert self.observer is not None
        command = header.command
        if body is not None and command in (_REGION_READ, _REGION_WRITE) and len(body) >= _ACCESS.size:
            offset, region, count = _ACCESS.unpack_from(body, 0)
            value = None
            if command == _REGION_WRITE and count in _VALUE_SIZES and len(body) == _ACCESS.size + count:
                value = int.from_bytes(body[_ACCESS.size :], "little")
            self.observer.message("in", header, nfds, region=region, offset=offset, count=count, value=value)
        else:
            self.observer.message("in", header, nfds)

    def _report(self, header: Header, exc: Exception) -> None:
        """Answer a failed message with its errno (call from the except block)."""
        if isinstance(exc, VfuError):
            self._fail(header, exc.errno, str(exc))
        else:  # a bug must not take the session down
            self.log.exception("internal error handling %s", COMMAND_NAMES.get(header.command, header.command))
            self._fail(header, errno.EIO, f"internal error: {exc!r}")

    def _fail(self, header: Header, errno_value: int, message: str) -> None:
        self.counters.bump("errors")
        name = COMMAND_NAMES.get(header.command, str(header.command))
        self.log.info("%s (id %d) failed: %s [%s]", name, header.msg_id, message, errno.errorcode.get(errno_value, errno_value))
        if self.observer:
            # A NO_REPLY failure is answered by nothing: observed as "dropped", not as a reply sent.
            direction = "dropped" if header.no_reply else "out"
            self.observer.message(direction, header, 0, error=errno_value, note=message)
        if not header.no_reply:
            self._send(encode_error(header.msg_id, header.command, errno_value))

    def _reply(self, header: Header, payload: bytes = b"", fds: tuple[int, ...] = ()) -> None:
        if header.no_reply:
            return
        data = encode_reply(header.msg_id, header.command, payload)
        if self.observer:
            self.observer.message("out", Header(header.msg_id, header.command, len(data), _REPLY_FLAGS, 0), len(fds))
        self._send(data, fds)

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
        self.log.info("negotiated with client caps %s", caps)

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
                self.counters.bump("unmap-not-found")
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
        if self.observer:
            value = None
            if command == _REGION_READ and count in _VALUE_SIZES:
                value = int.from_bytes(payload, "little")
            self.observer.message("out", Header(msg_id, command, size, _REPLY_FLAGS, 0), 0,
                                  region=region, offset=offset, count=count, value=value)
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
        transfer = self._transfers.pop(header.msg_id, None)
        if transfer is not None:
            if self.observer:
                self.observer.message("in", header, 0, error=header.error)
            transfer.waiting.discard(header.msg_id)
            if not transfer.finished:
                self._transfer_answered(transfer, header, b"" if body is None else bytes(body))
        elif header.msg_id in self._abandoned:
            # The late reply to one of our own DMA requests: answering it would confuse the client.
            del self._abandoned[header.msg_id]
            self.counters.bump("late-replies")
            self.log.warning("dropping a late reply (id %d) to a request that timed out", header.msg_id)
        else:
            # A "reply" nobody asked for is a malformed request: EINVAL, as libvfio-user answers
            # (its test_unsolicited_reply), unless the client asked for no reply.
            self.counters.bump("unexpected-replies")
            if self.observer:
                self.observer.message("in", header, 0, error=header.error)
            self._fail(header, errno.EINVAL, f"unsolicited reply (id {header.msg_id})")

    def _transfer_answered(self, transfer: _DmaTransfer, header: Header, body: bytes) -> None:
        name = COMMAND_NAMES[transfer.command]
        if header.is_error:
            self._finish(transfer, DmaError(header.error or errno.EIO,
                                            f"client answered {name} with error {header.error}"))
            return
        if transfer.command == Command.DMA_READ:
            index, expected = self._part_of(transfer, header.msg_id)
            try:
                reply = m.DmaAccess.unpack(body)
            except ProtocolError as exc:
                self._finish(transfer, DmaError(errno.EIO, f"{name} reply: {exc}"))
                return
            if len(reply.data) != expected:
                self._finish(transfer, DmaError(errno.EIO, f"{name} reply carries {len(reply.data)} of {expected} bytes"))
                return
            transfer.parts[index] = reply.data
        if not transfer.waiting:
            self._finish(transfer, b"".join(part or b"" for part in transfer.parts))

    def _part_of(self, transfer: _DmaTransfer, msg_id: int) -> tuple[int, int]:
        """(chunk index, byte count) of request `msg_id` in a read transfer."""
        index = (msg_id - transfer.first_id) & 0xFFFF
        return index, transfer.sizes[index]

    def _finish(self, transfer: _DmaTransfer, result: bytes | DmaError) -> None:
        """End a transfer once: forget its outstanding requests, resume the device."""
        transfer.finished = True
        for msg_id in transfer.waiting:
            self._transfers.pop(msg_id, None)
            self._abandon(msg_id)
        transfer.waiting.clear()
        if isinstance(result, DmaError):
            self.counters.bump("dma-request-errors")
            self.log.info("device DMA through the client failed: %s", result)
        try:
            transfer.done(result)
        except Exception:  # a device's continuation must not take the session down
            self.log.exception("DMA continuation %r failed", transfer.done)

    def _abandon(self, msg_id: int) -> None:
        if len(self._abandoned) >= MAX_ABANDONED_REQUESTS:  # bounded: the oldest are forgotten
            del self._abandoned[next(iter(self._abandoned))]
        self._abandoned[msg_id] = None

    def _fail_transfers(self, errno_value: int, why: str) -> None:
        for transfer in list(self._transfers.values()):
            if not transfer.finished:
                self._finish(transfer, DmaError(errno_value, f"{COMMAND_NAMES[transfer.command]}: {why}"))
        self._transfers.clear()

    def _dma_chunk(self) -> int:
        return min(self.options.max_data_xfer_size, self.client_caps.effective_max_data_xfer_size())

    def _start_transfer(self, command: int, requests: list[bytes], sizes: list[int], done: DmaDone) -> None:
        """Send a transfer's requests (all at once: the client answers them in order) and keep its continuation."""
        if self.state is not SessionState.READY:
            done(DmaError(errno.ENOTCONN, f"{COMMAND_NAMES[command]}: no negotiated client"))
            return
        transfer = _DmaTransfer(command, done, self._next_request_id, sizes, [None] * len(requests),
                                deadline=self.clock() + self.options.dma_timeout)
        for payload in requests:
            msg_id = self._next_request_id
            self._next_request_id = (msg_id + 1) & 0xFFFF
            data = encode(msg_id, command, payload)
            transfer.waiting.add(msg_id)
            self._transfers[msg_id] = transfer
            if self.observer:
                self.observer.message("out", Header(msg_id, command, len(data), 0, 0), 0)
            self._send(data)
        if not transfer.waiting:  # a zero-length transfer
            self._finish(transfer, b"")

    def _remote_dma_read(self, iova: int, size: int, done: DmaDone) -> None:
        chunk = self._dma_chunk()
        starts = range(iova, iova + size, chunk)
        sizes = [min(chunk, iova + size - start) for start in starts]
        self._start_transfer(Command.DMA_READ, [m.DmaAccess(start, count).pack() for start, count in zip(starts, sizes)],
                             sizes, done)

    def _remote_dma_write(self, iova: int, data: bytes, done: DmaDone) -> None:
        chunk = self._dma_chunk()
        pieces = [data[pos : pos + chunk] for pos in range(0, len(data), chunk)]
        self._start_transfer(Command.DMA_WRITE,
                             [m.DmaAccess(iova + i * chunk, len(piece), piece).pack() for i, piece in enumerate(pieces)],
                             [len(piece) for piece in pieces], done)
