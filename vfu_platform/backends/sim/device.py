# SPDX-License-Identifier: BSD-3-Clause
"""The simulator base: a device model written as a plain Python class.

A model subclasses `SimDevice`, declares its regions and IRQ lines in
`__init__` and implements register callbacks::

    class Blinky(SimDevice):
        name = "blinky"
        compatible = ("acme,blinky",)

        def __init__(self) -> None:
            super().__init__()
            self.add_region(RegisterRegion(0x1000, self.reg_read, self.reg_write, name="regs"))
            self.done = self.add_level_irq("done")

        def reg_read(self, offset: int, size: int) -> int:
            return 0x1234 if offset == 0 else 0

        def reg_write(self, offset: int, size: int, value: int) -> None:
            self.set_line(self.done, bool(value & 1))

The base supplies the VFIO side of things (region and IRQ info, trigger
eventfds, mask/unmask, reset) with the kernel's vfio-platform semantics, so
that the layers above cannot tell a model from a host device:

* a level line that fires masks itself (AUTOMASKED) and stays masked until
  `unmask_irq`; a line that is still asserted when it is unmasked, or when a
  trigger is installed while it is unmasked, fires at once;
* an edge line is not maskable; a pulse with no trigger installed is lost;
* after construction and after `reset` all level lines are masked (whoever
  installs the triggers unmasks them); triggers survive `reset`.

Deferred work (`defer`) runs from the server's event loop.  Device work that
touches client memory (`dma_read`/`dma_write`) must run there, never inside a
region access: the server is in the middle of a message when it calls
`read`/`write`, and a DMA that needs the client could deadlock it.  The base
refuses such a DMA and records an error instead.  While the device is
detached time stands still: pending deferred work is parked and resumes on
the next `attach`.
"""

from __future__ import annotations

import enum
import errno
import fcntl
import mmap
import os
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from vfu_platform import vfio_abi
from vfu_platform.backends.base import (
    BackendError,
    Counters,
    DeviceBackend,
    DeviceContext,
    DmaError,
    IrqInfo,
    RegionInfo,
    Scheduler,
    Timer,
)

ReadCallback = Callable[[int, int], int]
"""read(offset, size) -> value; size is 1, 2, 4 or 8 and offset is size-aligned."""
WriteCallback = Callable[[int, int, int], None]
"""write(offset, size, value); size is 1, 2, 4 or 8 and offset is size-aligned."""

_SIZE_MASKS = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFF_FFFF, 8: 0xFFFF_FFFF_FFFF_FFFF}


def natural_chunks(offset: int, size: int) -> list[tuple[int, int]]:
    """Split an access into the largest naturally aligned pieces of 1/2/4/8 bytes.

    This is how an access the register callbacks cannot take in one go (an odd
    size, an unaligned offset, more than 8 bytes) reaches them: a 4-byte access
    at 0x2 becomes 2 bytes at 0x2 and 2 bytes at 0x4.
    """
    chunks: list[tuple[int, int]] = []
    end = offset + size
    while offset < end:
        width = 8
        while width > end - offset or offset % width:
            width //= 2
        chunks.append((offset, width))
        offset += width
    return chunks


class SimRegion(Protocol):
    """What `SimDevice.add_region` accepts."""

    size: int
    name: str

    def info(self, index: int) -> RegionInfo: ...

    def read(self, offset: int, size: int) -> bytes: ...

    def write(self, offset: int, data: bytes) -> None: ...

    def reset(self) -> None: ...

    def close(self) -> None: ...


class RegisterRegion:
    """A trapped MMIO region whose accesses go to Python callbacks (little-endian).

    Naturally aligned accesses of 1, 2, 4 or 8 bytes reach the callbacks as
    they are.  Anything else is split into naturally aligned pieces
    (`natural_chunks`), or, with `split=False`, refused with EINVAL.  The value
    a read callback returns is truncated to the access size, so returning ~0
    (-1) reads as all-ones.  A region without a read (write) callback is not
    readable (writable): its info lacks the flag and accesses get EINVAL.
    """

    def __init__(
        self,
        size: int,
        read: ReadCallback | None = None,
        write: WriteCallback | None = None,
        *,
        name: str = "",
        split: bool = True,
    ) -> None:
        if size <= 0:
            raise ValueError(f"region size must be positive, not {size}")
        self.size = size
        self.name = name
        self.split = split
        self._read = read
        self._write = write

    def info(self, index: int) -> RegionInfo:
        flags = 0
        if self._read is not None:
            flags |= vfio_abi.REGION_FLAG_READ
        if self._write is not None:
            flags |= vfio_abi.REGION_FLAG_WRITE
        return RegionInfo(index=index, size=self.size, flags=flags, name=self.name)

    def _pieces(self, offset: int, size: int) -> list[tuple[int, int]]:
        if not self.split:
            raise BackendError(
                errno.EINVAL,
                f"region {self.name!r}: {size}-byte access at {offset:#x} is not allowed",
            )
        return natural_chunks(offset, size)

    def read(self, offset: int, size: int) -> bytes:
        callback = self._read
        if callback is None:
            raise BackendError(errno.EINVAL, f"region {self.name!r} is not readable")
        mask = _SIZE_MASKS.get(size)
        if mask is not None and offset % size == 0:
            return (callback(offset, size) & mask).to_bytes(size, "little")
        return b"".join(
            (callback(at, width) & _SIZE_MASKS[width]).to_bytes(width, "little")
            for at, width in self._pieces(offset, size)
        )

    def write(self, offset: int, data: bytes) -> None:
        callback = self._write
        if callback is None:
            raise BackendError(errno.EINVAL, f"region {self.name!r} is not writable")
        size = len(data)
        if size in _SIZE_MASKS and offset % size == 0:
            callback(offset, size, int.from_bytes(data, "little"))
            return
        for at, width in self._pieces(offset, size):
            start = at - offset
            callback(at, width, int.from_bytes(data[start : start + width], "little"))

    def reset(self) -> None:
        """Register state belongs to the model (`SimDevice.on_reset`)."""

    def close(self) -> None:
        """Nothing to release."""


class MemoryRegion:
    """RAM-like region backed by a memfd, so the client can mmap it (the fast path).

    The memfd is sealed against shrinking and growing before it is handed out:
    the client receives the fd itself, and a client that truncated it would
    otherwise make the server's own mapping fault (SIGBUS) on the next access.
    Contents are zeroed on reset.
    """

    def __init__(self, size: int, *, name: str = "", writable: bool = True) -> None:
        if size <= 0:
            raise ValueError(f"region size must be positive, not {size}")
        self.size = size
        self.name = name
        self.writable = writable
        self._map_size = -(-size // mmap.PAGESIZE) * mmap.PAGESIZE
        fd = os.memfd_create(name or "vfu-sim", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, self._map_size)
            fcntl.fcntl(
                fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
            )
            self._map: mmap.mmap | None = mmap.mmap(fd, self._map_size)
        except BaseException:
            os.close(fd)
            raise
        self._fd: int | None = fd

    @property
    def fd(self) -> int:
        if self._fd is None:
            raise BackendError(errno.ENODEV, f"region {self.name!r} is closed")
        return self._fd

    def _mapping(self) -> mmap.mmap:
        if self._map is None:
            raise BackendError(errno.ENODEV, f"region {self.name!r} is closed")
        return self._map

    def info(self, index: int) -> RegionInfo:
        flags = vfio_abi.REGION_FLAG_READ | vfio_abi.REGION_FLAG_MMAP
        if self.writable:
            flags |= vfio_abi.REGION_FLAG_WRITE
        return RegionInfo(
            index=index, size=self.size, flags=flags, mmap_fd=self._fd, name=self.name
        )

    def read(self, offset: int, size: int) -> bytes:
        return self._mapping()[offset : offset + size]

    def write(self, offset: int, data: bytes) -> None:
        if not self.writable:
            raise BackendError(errno.EINVAL, f"region {self.name!r} is read-only")
        self._mapping()[offset : offset + len(data)] = data

    def reset(self) -> None:
        mapping = self._mapping()
        mapping.seek(0)
        mapping.write(bytes(self._map_size))
        mapping.seek(0)

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class LineKind(enum.Enum):
    LEVEL = "level"
    EDGE = "edge"


_LEVEL_FLAGS = vfio_abi.IRQ_INFO_EVENTFD | vfio_abi.IRQ_INFO_MASKABLE | vfio_abi.IRQ_INFO_AUTOMASKED
_LINE_FLAGS = {LineKind.LEVEL: _LEVEL_FLAGS, LineKind.EDGE: vfio_abi.IRQ_INFO_EVENTFD}


@dataclass(slots=True)
class _Line:
    kind: LineKind
    name: str
    asserted: bool = False
    masked: bool = False
    trigger: int | None = None


class Deferred:
    """A callback a model asked to run later (see `SimDevice.defer`)."""

    __slots__ = ("delay", "callback", "_owner", "_timer", "cancelled")

    def __init__(self, owner: SimDevice, delay: float, callback: Callable[[], None]) -> None:
        self.delay = delay
        self.callback = callback
        self._owner = owner
        self._timer: Timer | None = None
        self.cancelled = False

    @property
    def parked(self) -> bool:
        """Waiting for a scheduler (the device is detached)."""
        return not self.cancelled and self._timer is None

    def cancel(self) -> None:
        self.cancelled = True
        self._park()
        self._owner._deferred.discard(self)

    def _start(self, scheduler: Scheduler) -> None:
        self._timer = scheduler.call_later(self.delay, self._fire)

    def _park(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fire(self) -> None:
        if self.cancelled:
            return
        self._timer = None
        self._owner._deferred.discard(self)
        self.cancelled = True  # done: a later cancel() is a no-op
        self.callback()


class SimDevice(DeviceBackend):
    """Base class of simulated platform devices; see the module docstring."""

    device_flags = vfio_abi.DEVICE_FLAGS_PLATFORM | vfio_abi.DEVICE_FLAGS_RESET
    #: how many recent errors `errors` keeps
    max_errors: int = 64

    def __init__(self) -> None:
        self._regions: list[SimRegion] = []
        self._lines: list[_Line] = []
        self._deferred: set[Deferred] = set()
        self._access_depth = 0
        self._closed = False
        self.context: DeviceContext | None = None
        #: "irq<k>.fired", "irq<k>.lost", "errors", "dma.errors", plus model counters
        self.counters = Counters()
        #: the most recent errors the model hit (bad DMA, signalling failures), oldest first
        self.errors: deque[str] = deque(maxlen=self.max_errors)
        #: observer called as on_irq(irq, "fired" | "lost") (tracing, tests)
        self.on_irq: Callable[[int, str], None] | None = None

    # ---- declaring the device (for models) ----------------------------------

    def add_region(self, region: SimRegion) -> int:
        """Add a region; returns its index (regions are numbered in order)."""
        self._regions.append(region)
        return len(self._regions) - 1

    def add_level_irq(self, name: str = "") -> int:
        """Add a level (automasked) IRQ line; returns its index."""
        return self._add_line(LineKind.LEVEL, name)

    def add_edge_irq(self, name: str = "") -> int:
        """Add an edge IRQ line; returns its index."""
        return self._add_line(LineKind.EDGE, name)

    def _add_line(self, kind: LineKind, name: str) -> int:
        self._lines.append(_Line(kind=kind, name=name, masked=kind is LineKind.LEVEL))
        return len(self._lines) - 1

    def region(self, index: int) -> SimRegion:
        return self._regions[index]

    def on_reset(self) -> None:
        """Put the model's own state at power-on; called by `reset` (override)."""

    # ---- driving IRQ lines (for models) -------------------------------------

    def set_line(self, irq: int, asserted: bool) -> None:
        """Drive a level line; an asserted, unmasked line with a trigger fires."""
        line = self._model_line(irq, LineKind.LEVEL)
        line.asserted = asserted
        if asserted:
            self._evaluate(irq, line)

    def pulse(self, irq: int) -> None:
        """Pulse an edge line: signals its trigger, or is lost when there is none."""
        line = self._model_line(irq, LineKind.EDGE)
        if line.trigger is None:
            self.counters.bump(f"irq{irq}.lost")
            if self.on_irq is not None:
                self.on_irq(irq, "lost")
            return
        self._signal(irq, line.trigger)

    def line_asserted(self, irq: int) -> bool:
        return self._lines[irq].asserted

    def line_masked(self, irq: int) -> bool:
        return self._lines[irq].masked

    def fired(self, irq: int) -> int:
        """How many times `irq` has signalled its trigger."""
        return self.counters.values.get(f"irq{irq}.fired", 0)

    def _model_line(self, irq: int, kind: LineKind) -> _Line:
        if not 0 <= irq < len(self._lines):
            raise ValueError(f"{self.name}: no IRQ line {irq}")
        line = self._lines[irq]
        if line.kind is not kind:
            raise ValueError(f"{self.name}: IRQ {irq} is a {line.kind.value} line")
        return line

    def _evaluate(self, irq: int, line: _Line) -> None:
        if line.asserted and not line.masked and line.trigger is not None:
            line.masked = True  # automask first, as the kernel's handler does
            self._signal(irq, line.trigger)

    def _signal(self, irq: int, fd: int) -> None:
        try:
            os.eventfd_write(fd, 1)
        except OSError as exc:
            self.record_error(f"IRQ {irq}: cannot signal eventfd {fd}: {exc.strerror}")
            self.counters.bump(f"irq{irq}.signal_errors")
            return
        self.counters.bump(f"irq{irq}.fired")
        if self.on_irq is not None:
            self.on_irq(irq, "fired")

    # ---- deferred work and DMA (for models) ---------------------------------

    @property
    def attached(self) -> bool:
        return self.context is not None

    def defer(self, delay: float, callback: Callable[[], None]) -> Deferred:
        """Run `callback` from the event loop after `delay` seconds.

        While detached the callback is parked and starts (with its full delay)
        on the next `attach`.  `reset` and `close` cancel everything pending.
        """
        if self._closed:
            raise BackendError(errno.ENODEV, f"{self.name}: device is closed")
        job = Deferred(self, delay, callback)
        self._deferred.add(job)
        if self.context is not None:
            job._start(self.context.scheduler)
        return job

    def dma_read(self, iova: int, size: int) -> bytes | None:
        """Read client memory; None (and an error recorded) when it cannot be done."""
        context = self._dma_context("read", iova, size)
        if context is None:
            return None
        try:
            data = context.dma.read(iova, size)
        except DmaError as exc:
            self._dma_failed(f"DMA read of {size} bytes at {iova:#x} failed: {exc}")
            return None
        if len(data) != size:
            self._dma_failed(f"DMA read of {size} bytes at {iova:#x} returned {len(data)}")
            return None
        return bytes(data)

    def dma_write(self, iova: int, data: bytes) -> bool:
        """Write client memory; False (and an error recorded) when it cannot be done."""
        context = self._dma_context("write", iova, len(data))
        if context is None:
            return False
        try:
            context.dma.write(iova, data)
        except DmaError as exc:
            self._dma_failed(f"DMA write of {len(data)} bytes at {iova:#x} failed: {exc}")
            return False
        return True

    def _dma_context(self, what: str, iova: int, size: int) -> DeviceContext | None:
        if self.context is None:
            self._dma_failed(f"DMA {what} of {size} bytes at {iova:#x}: no DMA context (detached)")
            return None
        if self._access_depth:
            self._dma_failed(
                f"DMA {what} of {size} bytes at {iova:#x} inside a register access "
                "(models must DMA from deferred work)"
            )
            return None
        return self.context

    def _dma_failed(self, message: str) -> None:
        self.counters.bump("dma.errors")
        self.record_error(message)

    def record_error(self, message: str) -> None:
        """Note something that went wrong in the device (kept in `errors`)."""
        self.counters.bump("errors")
        self.errors.append(message)

    def status(self) -> dict[str, object]:
        """A snapshot for tests and debugging (models may extend it)."""
        return {
            "name": self.name,
            "attached": self.attached,
            "lines": [
                {
                    "index": i,
                    "name": line.name,
                    "kind": line.kind.value,
                    "asserted": line.asserted,
                    "masked": line.masked,
                    "trigger": line.trigger is not None,
                }
                for i, line in enumerate(self._lines)
            ],
            "pending_work": len(self._deferred),
            "counters": dict(self.counters.values),
            "errors": list(self.errors),
        }

    # ---- DeviceBackend ------------------------------------------------------

    def regions(self) -> Sequence[RegionInfo]:
        return [region.info(i) for i, region in enumerate(self._regions)]

    def irqs(self) -> Sequence[IrqInfo]:
        return [
            IrqInfo(index=i, count=1, flags=_LINE_FLAGS[line.kind], name=line.name)
            for i, line in enumerate(self._lines)
        ]

    def _checked_region(self, index: int, offset: int, size: int) -> SimRegion:
        if self._closed:
            raise BackendError(errno.ENODEV, f"{self.name}: device is closed")
        if not 0 <= index < len(self._regions):
            raise BackendError(errno.EINVAL, f"{self.name}: no region {index}")
        region = self._regions[index]
        if offset < 0 or size < 0 or offset + size > region.size:
            raise BackendError(
                errno.EINVAL, f"{self.name}: access {offset:#x}+{size} outside region {index}"
            )
        return region

    def read(self, region: int, offset: int, size: int) -> bytes:
        target = self._checked_region(region, offset, size)
        self._access_depth += 1
        try:
            return target.read(offset, size)
        finally:
            self._access_depth -= 1

    def write(self, region: int, offset: int, data: bytes) -> None:
        target = self._checked_region(region, offset, len(data))
        self._access_depth += 1
        try:
            target.write(offset, data)
        finally:
            self._access_depth -= 1

    def _irq(self, irq: int) -> _Line:
        if not 0 <= irq < len(self._lines):
            raise BackendError(errno.EINVAL, f"{self.name}: no IRQ {irq}")
        return self._lines[irq]

    def _maskable(self, irq: int) -> _Line:
        line = self._irq(irq)
        if line.kind is not LineKind.LEVEL:
            raise BackendError(errno.EINVAL, f"{self.name}: IRQ {irq} is not maskable")
        return line

    def set_irq_trigger(self, irq: int, eventfd: int | None) -> None:
        line = self._irq(irq)
        if eventfd is not None and (not isinstance(eventfd, int) or eventfd < 0):
            raise BackendError(errno.EINVAL, f"{self.name}: bad eventfd {eventfd!r} for IRQ {irq}")
        line.trigger = eventfd
        if line.kind is LineKind.LEVEL:
            self._evaluate(irq, line)

    def mask_irq(self, irq: int) -> None:
        self._maskable(irq).masked = True

    def unmask_irq(self, irq: int) -> None:
        line = self._maskable(irq)
        line.masked = False
        self._evaluate(irq, line)

    def reset(self) -> None:
        for job in list(self._deferred):
            job.cancel()
        if not self._closed:
            for region in self._regions:
                region.reset()
        for line in self._lines:
            line.asserted = False
            line.masked = line.kind is LineKind.LEVEL
        self.on_reset()

    def attach(self, context: DeviceContext | None) -> None:
        for job in self._deferred:
            job._park()
        self.context = context
        if context is not None:
            for job in list(self._deferred):
                job._start(context.scheduler)

    def close(self) -> None:
        for job in list(self._deferred):
            job.cancel()
        self._closed = True
        for region in self._regions:
            region.close()
