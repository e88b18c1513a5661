# SPDX-License-Identifier: BSD-3-Clause
"""Kernel bypass: one host INTx line handed to the host kernel, so an interrupt never wakes this process.

With a single platform IRQ on INTx, a client trigger and, for a level line, a
resamplefd, the host kernel can do it all: signal the client's trigger, and
unmask the line when the guest's EOI signals the resamplefd (the seed's KVM
irqfd + resamplefd path).  Several lines need the FIFO and the single-active
rule, which only the IRQ engine keeps; simulated devices have no kernel to
hand it to.  A backend offers this by implementing `KernelIrqBypass`
(`VfioHostBackend` does); the IRQ router (`irq_routing`) decides when.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from vfu_platform.backends.base import DeviceBackend, IrqInfo, Scheduler
from vfu_platform.counters import Counters
from vfu_platform.irq import IrqEngine, Route
from vfu_platform.trace import TraceFn


@runtime_checkable
class KernelIrqBypass(Protocol):
    """A backend whose host kernel can unmask a line itself when an eventfd is signalled."""

    def set_irq_unmask_eventfd(self, irq: int, eventfd: int | None) -> None:
        """Let the host unmask `irq` whenever `eventfd` is signalled (None: stop); the caller keeps the fd."""


@dataclass(slots=True)
class IntxClient:
    """The client's INTx wiring, kept by the IRQ router and read by the bypass."""

    #: the client's INTx trigger eventfd (None: INTx not enabled)
    trigger: int | None = None
    #: the client's resamplefd (KVM signals it at the guest's EOI)
    resample: int | None = None
    #: the client's last INTx MASK / UNMASK said "masked"
    masked: bool = False


class IrqBypass:
    """Switches the single line between the engine's eventfd and the client's (`on`)."""

    def __init__(self, backend: DeviceBackend, irqs: Sequence[IrqInfo], allowed: bool,
                 counters: Counters, trace: TraceFn) -> None:
        self._backend = backend
        host = backend if isinstance(backend, KernelIrqBypass) else None
        #: the host side, when bypass can ever happen for this device
        self._host = host if allowed and len(irqs) == 1 else None
        self._line = irqs[0] if self._host is not None else None
        self._counters = counters
        self._trace = trace
        #: the line is wired straight from the host to the client
        self.on = False

    @property
    def possible(self) -> bool:
        """Bypass can happen at all (one line, a backend with a kernel, allowed by the options)."""
        return self._host is not None

    def wanted(self, intx: IntxClient, engine: IrqEngine) -> bool:
        """The client's wiring lets the kernel do the engine's job for the one line."""
        line = self._line
        if line is None or intx.trigger is None or engine.route is not Route.INTX:
            return False
        return intx.resample is not None or not line.automasked

    def start(self, intx: IntxClient, engine: IrqEngine, loop: Scheduler, held: bool) -> None:
        """Switch on, if wanted and no interrupt is in flight through the engine."""
        if self.on or not self.wanted(intx, engine):
            return
        if engine.active is not None or engine.pending:
            return  # an interrupt is in flight through the engine: switch once it completes
        line, host = self._line, self._host
        assert line is not None and host is not None
        self._backend.set_irq_trigger(line.index, intx.trigger)
        if line.automasked:
            assert intx.resample is not None
            loop.remove_reader(intx.resample)  # the host kernel consumes it now
            host.set_irq_unmask_eventfd(line.index, intx.resample)
        self.on = True
        self._counters.bump("bypass-on")
        self._trace("irq-bypass", on=True, line=line.index)
        self.hold(held)

    def hold(self, held: bool) -> None:
        """In bypass, INTx-disable and the client's INTx MASK hold the host line itself."""
        if not self.on:
            return
        assert self._line is not None
        if held:
            self._backend.mask_irq(self._line.index)
        else:
            self._backend.unmask_irq(self._line.index)

    def stop(self, line_fd: int, rewatch: Callable[[], None] | None) -> None:
        """Back to the engine: `line_fd` is the line's own eventfd; `rewatch` watches the resamplefd again."""
        if not self.on:
            return
        line, host = self._line, self._host
        assert line is not None and host is not None
        self.on = False
        if line.automasked:
            host.set_irq_unmask_eventfd(line.index, None)
        self._backend.set_irq_trigger(line.index, line_fd)
        if rewatch is not None:
            rewatch()
        # A line the host masked for a bypassed interrupt would stay masked: unmask it;
        # if it is still asserted it fires again, now through the engine.
        self._backend.unmask_irq(line.index)
        self._counters.bump("bypass-off")
        self._trace("irq-bypass", on=False, line=line.index)


__all__ = ["IntxClient", "IrqBypass", "KernelIrqBypass"]
