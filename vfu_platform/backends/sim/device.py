# SPDX-License-Identifier: BSD-3-Clause
"""The device model API: everything a model author subclasses and calls, in one module.

A model is a plain Python class.  Subclass `SimDevice`, declare regions and IRQ
lines in `__init__`, and implement register callbacks::

    from vfu_platform.backends.sim.device import RegisterRegion, SimDevice

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

Serve it with `vfu-platform serve --device package.module:Blinky`.

What a model uses:

* regions, numbered in the order added: `RegisterRegion` (trapped, Python
  callbacks; odd accesses split into aligned pieces) and `MemoryRegion` (RAM the
  client mmaps);
* IRQ lines, numbered in the order added: `add_level_irq` / `set_line`,
  `add_edge_irq` / `pulse`;
* deferred work: `defer(delay, callback)` returns a cancellable `Deferred`;
* DMA: `dma_read(iova, size, then)` / `dma_write(iova, data, then)`, from
  deferred work only, never inside a register callback (the server is in the
  middle of a message then; the base refuses and records an error).  `then`
  gets the result: at once for memory the server mapped, or when the client has
  answered a DMA_READ/DMA_WRITE (the server keeps serving meanwhile);
* hooks to override: `on_reset` (power-on state), `status` (extend the
  snapshot), `control(words)` (host-side commands, one reply line starting with
  "ok" or "error:"), `guest_devices()` (how a guest instantiates the device:
  `GuestDevice`, `GuestRegion`, `GuestIrq`, `Bind`, `Trigger`, `U64`);
* class attributes: `name`, `compatible`, `ack_registers` (`AckRegister`: a
  write that is an exact EOI), `irq_regions` (never mmapped), and the PCI
  identity the bridge gives the function: `pci_vendor`, `pci_device`,
  `pci_class` (24-bit class code).  A model without its own `pci_device` is
  served as 1234:56ff class ff0000, a device id reserved for unidentified
  models, with a warning naming it (`identity`);
* bookkeeping: `counters.bump(name)`, `record_error(message)`.

The base supplies the VFIO side (region and IRQ info, trigger eventfds,
mask/unmask, reset) with the kernel's vfio-platform semantics, so the layers
above cannot tell a model from a host device: a level line that fires masks
itself until unmasked and fires again at once if still asserted; an edge line
is not maskable and a pulse with no trigger is lost; after construction and
`reset` level lines are masked; triggers survive `reset`.  While the device is
detached time stands still: deferred work is parked until the next `attach`.

The helpers live beside this module (`registers`, `memory`, `lines`, `timers`);
the names above are all importable from here.
"""

from __future__ import annotations

import errno
import os
from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol

from vfu_platform import vfio_abi
from vfu_platform.backends.base import (
    AckRegister,
    BackendError,
    Counters,
    DeviceBackend,
    DeviceContext,
    DmaError,
    IrqInfo,
    RegionInfo,
)
from vfu_platform.backends.guest import U64, Bind, GuestDevice, GuestIrq, GuestRegion, PropertyValue, Trigger
from vfu_platform.backends.sim.identity import DEFAULT_PCI_CLASS, DEFAULT_PCI_VENDOR, UNIDENTIFIED_PCI_DEVICE
from vfu_platform.backends.sim.lines import IrqLines, LineKind
from vfu_platform.backends.sim.memory import MemoryRegion
from vfu_platform.backends.sim.registers import ReadCallback, RegisterRegion, WriteCallback
from vfu_platform.backends.sim.timers import Deferred, DeferredWork


class SimRegion(Protocol):
    """What `SimDevice.add_region` accepts (`RegisterRegion`, `MemoryRegion`, or your own)."""

    size: int
    name: str

    def info(self, index: int) -> RegionInfo: ...

    def read(self, offset: int, size: int) -> bytes: ...

    def write(self, offset: int, data: bytes) -> None: ...

    def reset(self) -> None: ...

    def close(self) -> None: ...


class SimDevice(DeviceBackend):
    """Base class of simulated platform devices; see the module docstring."""

    device_flags = vfio_abi.DEVICE_FLAGS_PLATFORM | vfio_abi.DEVICE_FLAGS_RESET
    #: PCI identity of the function the bridge makes of the model (override all three);
    #: the defaults are the reserved "unidentified model" identity (see `identity`)
    pci_vendor: int = DEFAULT_PCI_VENDOR
    pci_device: int = UNIDENTIFIED_PCI_DEVICE
    pci_class: int = DEFAULT_PCI_CLASS
    #: how many recent errors `errors` keeps
    max_errors: int = 64

    def __init__(self) -> None:
        self._regions: list[SimRegion] = []
        self._lines = IrqLines(lambda: self.name, self._signal)
        self._work = DeferredWork()
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
        return self._lines.add(LineKind.LEVEL, name)

    def add_edge_irq(self, name: str = "") -> int:
        """Add an edge IRQ line; returns its index."""
        return self._lines.add(LineKind.EDGE, name)

    def region(self, index: int) -> SimRegion:
        return self._regions[index]

    def on_reset(self) -> None:
        """Put the model's own state at power-on; called by `reset` (override)."""

    # ---- driving IRQ lines (for models) -------------------------------------

    def set_line(self, irq: int, asserted: bool) -> None:
        """Drive a level line; an asserted, unmasked line with a trigger fires."""
        self._lines.set_level(irq, asserted)

    def pulse(self, irq: int) -> None:
        """Pulse an edge line: signals its trigger, or is lost when there is none."""
        line = self._lines.model_line(irq, LineKind.EDGE)
        if line.trigger is None:
            self.counters.bump(f"irq{irq}.lost")
            if self.on_irq is not None:
                self.on_irq(irq, "lost")
            return
        self._signal(irq, line.trigger)

    def line_asserted(self, irq: int) -> bool:
        return self._lines.lines[irq].asserted

    def line_masked(self, irq: int) -> bool:
        return self._lines.lines[irq].masked

    def fired(self, irq: int) -> int:
        """How many times `irq` has signalled its trigger."""
        return self.counters.get(f"irq{irq}.fired")

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

    @property
    def closed(self) -> bool:
        """True once `close` ran: no more accesses, no more deferred work."""
        return self._closed

    def defer(self, delay: float, callback: Callable[[], None]) -> Deferred:
        """Run `callback` from the event loop after `delay` seconds.

        While detached the callback is parked and starts (with its full delay)
        on the next `attach`.  `reset` and `close` cancel everything pending.
        """
        if self._closed:
            raise BackendError(errno.ENODEV, f"{self.name}: device is closed")
        return self._work.add(delay, callback)

    def dma_read(self, iova: int, size: int, then: Callable[[bytes | None], None]) -> None:
        """Read client memory, then call `then(data)`: None (and an error recorded) if it failed.

        `then` runs at once for memory the server has mapped, and when the client has
        answered for memory it reaches through messages (the server never waits).
        """
        context = self._dma_context("read", iova, size)
        if context is None:
            then(None)
            return

        def done(result: bytes | DmaError) -> None:
            if isinstance(result, DmaError):
                self._dma_failed(f"DMA read of {size} bytes at {iova:#x} failed: {result}")
                then(None)
            elif len(result) != size:
                self._dma_failed(f"DMA read of {size} bytes at {iova:#x} returned {len(result)}")
                then(None)
            else:
                then(bytes(result))

        context.dma.read_then(iova, size, done)

    def dma_write(self, iova: int, data: bytes, then: Callable[[bool], None] | None = None) -> None:
        """Write client memory, then call `then(ok)`: False (and an error recorded) if it failed."""
        context = self._dma_context("write", iova, len(data))
        if context is None:
            if then is not None:
                then(False)
            return

        def done(result: bytes | DmaError) -> None:
            ok = not isinstance(result, DmaError)
            if not ok:
                self._dma_failed(f"DMA write of {len(data)} bytes at {iova:#x} failed: {result}")
            if then is not None:
                then(ok)

        context.dma.write_then(iova, data, done)

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
            "lines": self._lines.status(),
            "pending_work": len(self._work),
            "counters": self.counters.snapshot(),
            "errors": list(self.errors),
        }

    # ---- DeviceBackend ------------------------------------------------------

    def regions(self) -> Sequence[RegionInfo]:
        return [region.info(i) for i, region in enumerate(self._regions)]

    def irqs(self) -> Sequence[IrqInfo]:
        return self._lines.infos()

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

    def set_irq_trigger(self, irq: int, eventfd: int | None) -> None:
        self._lines.set_trigger(irq, eventfd)

    def mask_irq(self, irq: int) -> None:
        self._lines.mask(irq)

    def unmask_irq(self, irq: int) -> None:
        self._lines.unmask(irq)

    def reset(self) -> None:
        self._work.cancel_all()
        if not self._closed:
            for region in self._regions:
                region.reset()
        self._lines.reset()
        self.on_reset()

    def attach(self, context: DeviceContext | None) -> None:
        self.context = context
        self._work.attach(None if context is None else context.scheduler)

    def close(self) -> None:
        self._work.cancel_all()
        self._closed = True
        for region in self._regions:
            region.close()


__all__ = [
    "AckRegister",
    "Bind",
    "Deferred",
    "GuestDevice",
    "GuestIrq",
    "GuestRegion",
    "LineKind",
    "MemoryRegion",
    "PropertyValue",
    "ReadCallback",
    "RegisterRegion",
    "SimDevice",
    "SimRegion",
    "Trigger",
    "U64",
    "WriteCallback",
]
