# SPDX-License-Identifier: BSD-3-Clause
"""IRQ routing: platform lines to the client's INTx or MSI-X eventfds, through the IRQ engine.

Each platform line's trigger eventfd (between bridge and backend, owned here,
kept across clients) is watched by the event loop; its signal is an event for
the IRQ engine, whose actions are carried out here: write the client's INTx or
MSI-X eventfd, or unmask the line on the device.  The other engine inputs come
from SET_IRQS, the client's resamplefd, config space (INTx disable, MSI-X
function mask) and the IRQ page (docs/irq-page.md: IRQ_EOI, IRQ_CTRL, the MSI-X
table's mask bits).  IRQ indexes: INTx (count 1), MSI (0), MSI-X (one vector
per platform IRQ in `msix` mode, else 0), ERR (1, never signalled), REQ (0).
"""
from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable, Sequence
from functools import partial

from vfu_platform import vfio_abi
from vfu_platform.backends.base import BackendError, DeviceBackend, IrqInfo, Scheduler
from vfu_platform.bridge.config_space import ConfigSpace
from vfu_platform.bridge.irq_bypass import IntxClient, IrqBypass
from vfu_platform.bridge.irq_page import DESCRIPTOR_OFFSET, IRQ_ACTIVE, IRQ_CTRL, IRQ_CTRL_EXACT_EOI, IRQ_EOI, IrqPage
from vfu_platform.bridge.msix import ENTRY_SIZE, MsixTable
from vfu_platform.counters import Counters
from vfu_platform.fds import close_quietly as _close
from vfu_platform.irq import Actions, IrqEngine, Route, Signal, Transition, UnmaskLine
from vfu_platform.protocol import messages as m
from vfu_platform.trace import TraceFn

log = logging.getLogger(__name__)

_INTX = vfio_abi.PCI_INTX_IRQ_INDEX
_MSIX = vfio_abi.PCI_MSIX_IRQ_INDEX
_ERR = vfio_abi.PCI_ERR_IRQ_INDEX
_EVENTFD_ONE = (1).to_bytes(8, "little")
_VECTOR_CONTROL = 12  # offset of the vector control word (mask bit 0) in an MSI-X table entry


class IrqRouter:
    """The engine's inputs and actions, the client's IRQ eventfds, the IRQ page and the bypass."""

    def __init__(self, backend: DeviceBackend, irqs: Sequence[IrqInfo], engine: IrqEngine,
                 msix: MsixTable | None, config: ConfigSpace, descriptor: bytes, allow_bypass: bool,
                 counters: Counters, trace: TraceFn) -> None:
        self._backend = backend
        self._irqs = list(irqs)
        self.engine = engine
        self.msix = msix
        self._config = config
        self._counters = counters
        self._trace = trace
        #: times the server woke up for an interrupt (a line trigger or the resamplefd)
        self.wakeups = 0
        self.page = IrqPage(engine, msix, lambda: self.wakeups, descriptor)
        self.intx = IntxClient()
        self.bypass = IrqBypass(backend, self._irqs, allow_bypass, counters, trace)
        # Line trigger eventfds (bridge <-> backend), created once, kept across clients.
        self._line_fds: list[int] = []
        #: the client's event loop while one is attached
        self._loop: Scheduler | None = None
        self._err_trigger: int | None = None
        self._vector_fds: dict[int, int] = {}

    # ------------------------------------------------------------ info
    def irq_info(self, index: int) -> tuple[int, int]:
        eventfd = vfio_abi.IRQ_INFO_EVENTFD
        if index == _INTX:
            return eventfd | vfio_abi.IRQ_INFO_MASKABLE | vfio_abi.IRQ_INFO_AUTOMASKED, 1
        if index == _MSIX:
            # No NORESIZE: vectors may be added one at a time (QEMU would otherwise
            # tear the whole index down and set it up again for every new vector).
            return eventfd, (self.msix.vectors if self.msix else 0)
        if index == _ERR:
            return eventfd, 1
        return eventfd, 0  # MSI, REQ

    # ------------------------------------------------------------ client lifecycle
    def attach(self, loop: Scheduler) -> None:
        """A client arrived: watch the line eventfds (created, and given to the backend, once)."""
        self._loop = loop
        # The engine's transitions are recorded only while someone observes them.
        self.engine.record_transitions(bool(self._trace))
        if not self._line_fds:
            for irq in self._irqs:
                fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
                self._line_fds.append(fd)
                self._backend.set_irq_trigger(irq.index, fd)
        fire = self.engine.fire
        for line, fd in enumerate(self._line_fds):
            loop.add_reader(fd, partial(self._wake, fd, "line-fires", "irq-fire", {"line": line}, fire, line))

    def sync_config(self) -> None:
        """Config space outlives clients; the engine (reset when the last one left) must follow it."""
        self.apply(self.engine.set_intx_disable(self._config.intx_disabled))
        self.apply(self.engine.msix_function_mask(self._config.msix_function_masked))

    def detach(self) -> None:
        """The client left: unwatch and close its fds, reset the engine, mask the automasked lines."""
        if self._loop is not None:
            for fd in self._line_fds:
                self._loop.remove_reader(fd)
        self._drop_client_fds()
        self.apply(self.engine.reset())
        for irq in self._irqs:
            if irq.automasked:
                self._backend.mask_irq(irq.index)
        self._update_intx_status()
        self._loop = None

    def _drop_client_fds(self) -> None:
        # Stop watching the resamplefd before closing it: epoll watches the open file,
        # which lives on in the client (KVM) after our close, and an unregister by a
        # closed fd number fails, leaving a stale registration the loop spins on.
        intx = self.intx
        if intx.resample is not None and self._loop is not None:
            self._loop.remove_reader(intx.resample)
        for fd in [intx.trigger, intx.resample, self._err_trigger, *self._vector_fds.values()]:
            if fd is not None:
                _close(fd)
        intx.trigger = intx.resample = self._err_trigger = None
        self._vector_fds.clear()

    def reset(self) -> None:
        """DEVICE_RESET: MSI-X table and engine to power-on; the client's INTx wiring stays."""
        if self.msix is not None:
            self.msix.reset()
        for fd in self._vector_fds.values():
            _close(fd)
        self._vector_fds.clear()
        self.apply(self.engine.reset())
        if self.intx.trigger is not None:
            self.apply(self.engine.intx_enable(True))
        self._update_intx_status()
        self._update_bypass()

    def close(self) -> None:
        """Server shutdown: take the line eventfds back from the backend and close them."""
        for irq in self._irqs:
            self._backend.set_irq_trigger(irq.index, None)
        for fd in self._line_fds:
            _close(fd)
        self._line_fds.clear()

    # ------------------------------------------------------------ engine inputs
    def _wake(self, fd: int, counter: str, event: str, fields: dict[str, object],
              engine_input: Callable[..., Actions], *args: int) -> None:
        """An eventfd the loop watches (a line trigger, the resamplefd) was signalled: one engine input."""
        try:
            os.eventfd_read(fd)
        except BlockingIOError:
            return
        self.wakeups += 1
        self._counters.bump(counter)
        self._trace(event, **fields)
        self.apply(engine_input(*args), fields.get("source"))  # type: ignore[arg-type]

    def _resample_reader(self, fd: int) -> Callable[[], None]:
        return partial(self._wake, fd, "resample-eois", "intx-eoi", {"source": "resamplefd"},
                       self.engine.client_unmask)

    def intx_disable_changed(self) -> None:
        """COMMAND.INTX_DISABLE was written with a new value."""
        self._hold_bypass()
        self._trace("intx-disable", value=self._config.intx_disabled)
        log.info("INTx %s by the guest (COMMAND.INTX_DISABLE)", "disabled" if self._config.intx_disabled else "enabled")
        self.apply(self.engine.set_intx_disable(self._config.intx_disabled))

    def msix_function_mask_changed(self) -> None:
        """The MSI-X capability's function mask was written with a new value."""
        log.info("MSI-X function mask %s by the guest", "set" if self._config.msix_function_masked else "cleared")
        self.apply(self.engine.msix_function_mask(self._config.msix_function_masked))

    # ------------------------------------------------------------ the IRQ page BAR
    def page_read(self, offset: int, count: int) -> bytes:
        if offset <= IRQ_ACTIVE < offset + count:
            self.engine.active_read()  # the guest takes the interrupt (exact EOI; no actions)
        return self.page.read(offset, count)

    def page_write(self, offset: int, data: bytes) -> None:
        """IRQ_EOI and IRQ_CTRL writes, and MSI-X table writes: engine inputs."""
        engine = self.engine
        for register, value in self.page.register_writes(offset, data):
            if register == IRQ_EOI:
                ignored = engine.ignored_eois
                self.apply(engine.eoi(value), "IRQ_EOI write")
                if engine.ignored_eois != ignored:
                    self._counters.bump("irq-eoi-ignored")
                self._trace("irq-eoi-write", line=value, ignored=engine.ignored_eois != ignored)
            elif register == IRQ_CTRL:
                exact = bool(value & IRQ_CTRL_EXACT_EOI)
                self._trace("irq-ctrl", exact_eoi=exact)
                if exact != engine.exact_eoi:
                    log.info("exact EOI %s by the guest (IRQ_CTRL)", "on" if exact else "off")
                self.apply(engine.set_exact_eoi(exact))
        msix = self.msix
        if offset < DESCRIPTOR_OFFSET and msix is not None:
            self.page.write(offset, data)
            # Hand the engine every mask bit this write touched, changed or not: the
            # table powers on masked while the engine starts unmasked (QEMU emulates
            # the table itself and never writes it), so a driver's first "mask" write
            # changes no bit here, yet it must hold delivery.
            end = offset + len(data)
            for vector in range(msix.vectors):
                if offset <= vector * ENTRY_SIZE + _VECTOR_CONTROL < end:
                    self.apply(engine.msix_vector_mask(vector, msix.masked(vector)))

    # ------------------------------------------------------------ engine actions
    def apply(self, actions: Actions, source: str | None = None) -> None:
        """Carry out the engine's actions; `source` names the input, for the trace of an EOI.

        Without a source the input was a trapped region access (the `BarRouter`): an ack
        register write for a line that has one, else the first access after the signal.
        """
        for action in actions:
            if isinstance(action, Signal):
                self._signal(action.target)
            elif isinstance(action, UnmaskLine):
                self._trace("irq-unmask", line=action.line)
                self._backend.unmask_irq(action.line)
        # Also without actions: an index disable or an edge line's EOI changes the
        # engine's state without telling the bridge to do anything.
        self._update_intx_status()
        if not self.bypass.on and self.engine.active is None:
            self._update_bypass()
        transitions = self.engine.take_transitions()
        if transitions:
            self._trace_transitions(transitions, source)

    def _trace_transitions(self, transitions: list[Transition], source: str | None) -> None:
        """The engine's transitions as trace events: irq-raised, irq-queued, irq-delivered, irq-eoi, ..."""
        specs = self.engine.specs
        for transition in transitions:
            line = transition.line
            fields: dict[str, object] = {"line": line}
            name = self._irqs[line].name if line < len(self._irqs) else ""
            if name:
                fields["name"] = name
            if transition.kind == "delivered":
                fields["target"] = transition.target
            elif transition.kind == "eoi":
                fields["source"] = source or ("ack register" if specs[line].has_ack else "trapped access")
            self._trace(f"irq-{transition.kind}", **fields)

    def _update_intx_status(self) -> None:
        # STATUS.INTERRUPT is the function's interrupt state: set while a platform IRQ is
        # ACTIVE on the INTx route, whether or not delivery is held (INTX_DISABLE, client
        # MASK).  PCI: setting Interrupt Disable has no effect on this bit; QEMU's
        # pci_irq_handler likewise updates it before looking at pci_irq_disabled().
        engine = self.engine
        self._config.set_intx_status(engine.route is Route.INTX and engine.active is not None)

    def _signal(self, target: object) -> None:
        fd = self.intx.trigger if target == "intx" else self._vector_fds.get(target)  # type: ignore[call-overload]
        self._trace("irq-signal", target=target, active=self.engine.active)
        if fd is None:
            self._counters.bump("signals-without-fd")
            return
        self._counters.bump("signals")
        os.write(fd, _EVENTFD_ONE)

    # ------------------------------------------------------------ SET_IRQS
    def set_irqs(self, request: m.IrqSet, fds: list[int]) -> None:
        try:
            if request.index == _INTX:
                self.end_bypass()  # INTx wiring may change: decided again below
            self._set_irqs(request, fds)
            if request.index == _INTX:
                self._update_bypass()
        finally:
            for fd in fds:
                _close(fd)
            fds.clear()

    def _set_irqs(self, request: m.IrqSet, fds: list[int]) -> None:
        action, data_type = request.action, request.data_type
        index, start, count = request.index, request.start, request.count
        selected = _selected(request)
        self._trace("set-irqs", index=index, flags=request.flags, start=start, count=count, fds=len(fds))
        if action == vfio_abi.IRQ_SET_ACTION_TRIGGER:
            if data_type == vfio_abi.IRQ_SET_DATA_NONE and count == 0:
                self._disable_index(index)
            elif data_type == vfio_abi.IRQ_SET_DATA_EVENTFD:
                self._set_triggers(index, start, count, fds)
            else:
                self._loopback(index, selected)
            return
        if index == _INTX and selected:
            if data_type != vfio_abi.IRQ_SET_DATA_EVENTFD:
                self.intx.masked = action == vfio_abi.IRQ_SET_ACTION_MASK
            if action == vfio_abi.IRQ_SET_ACTION_MASK:
                self.apply(self.engine.client_mask())
            elif data_type == vfio_abi.IRQ_SET_DATA_EVENTFD:
                self._set_resample(fds.pop() if fds else None)
            else:
                self._trace("intx-eoi", source="unmask message")
                self.apply(self.engine.client_unmask(), "unmask message")
        elif index == _MSIX:
            for vector in selected:
                masked = action == vfio_abi.IRQ_SET_ACTION_MASK
                self.apply(self.engine.msix_vector_mask(vector, masked))
        # MASK/UNMASK of ERR/REQ are refused by validation; of MSI there are no vectors.

    def _disable_index(self, index: int) -> None:
        log.info("IRQ index %d disabled by the client", index)
        if index == _INTX:
            self._set_resample(None)
            if self.intx.trigger is not None:
                _close(self.intx.trigger)
                self.intx.trigger = None
            self.apply(self.engine.intx_enable(False))
        elif index == _MSIX:
            for fd in self._vector_fds.values():
                _close(fd)
            self._vector_fds.clear()
            self.apply(self.engine.msix_enable(False))
        elif index == _ERR and self._err_trigger is not None:
            _close(self._err_trigger)
            self._err_trigger = None

    def _set_triggers(self, index: int, start: int, count: int, fds: list[int]) -> None:
        new: list[int | None] = list(fds) if fds else [None] * count
        fds.clear()
        log.info("IRQ index %d vectors %d..%d: %s", index, start, start + count - 1,
                 "trigger eventfds set" if any(fd is not None for fd in new) else "trigger eventfds removed")
        if index == _INTX:
            if self.intx.trigger is not None:
                _close(self.intx.trigger)
            self.intx.trigger = new[0]
            self.apply(self.engine.intx_enable(new[0] is not None))
        elif index == _MSIX:
            if self.msix is None:
                raise BackendError(errno.EINVAL, "MSI-X is not offered (irq_mode is intx)")
            if self.engine.route is not Route.MSIX:
                self.apply(self.engine.msix_enable(True))
            for vector, fd in enumerate(new, start):
                old = self._vector_fds.pop(vector, None)
                if old is not None:
                    _close(old)
                if fd is not None:
                    self._vector_fds[vector] = fd
                self.apply(self.engine.vector_fd(vector, fd is not None))
        elif index == _ERR:
            if self._err_trigger is not None:
                _close(self._err_trigger)
            self._err_trigger = new[0]
        else:
            for fd in new:
                if fd is not None:
                    _close(fd)

    def _set_resample(self, fd: int | None) -> None:
        old, loop = self.intx.resample, self._loop
        if old is not None:
            if loop is not None:
                loop.remove_reader(old)
            _close(old)
        if fd is not None or old is not None:
            log.info("INTx resample eventfd %s", "set" if fd is not None else "removed")
        self.intx.resample = fd
        if fd is not None and loop is not None:
            loop.add_reader(fd, self._resample_reader(fd))

    def _loopback(self, index: int, selected: list[int]) -> None:
        """TRIGGER with DATA_NONE/BOOL: software-trigger the eventfds (as the kernel does)."""
        for sub in selected:
            if index == _INTX and self.intx.trigger is not None:
                os.write(self.intx.trigger, _EVENTFD_ONE)
            elif index == _MSIX and sub in self._vector_fds:
                os.write(self._vector_fds[sub], _EVENTFD_ONE)
            elif index == _ERR and self._err_trigger is not None:
                os.write(self._err_trigger, _EVENTFD_ONE)

    # ------------------------------------------------------------ bypass
    def _update_bypass(self) -> None:
        if self.bypass.possible and self._loop is not None:
            self.bypass.start(self.intx, self.engine, self._loop, self._held())

    def _held(self) -> bool:
        return self._config.intx_disabled or self.intx.masked

    def _hold_bypass(self) -> None:
        self.bypass.hold(self._held())

    def end_bypass(self) -> None:
        """Hand the line back to the engine (before its INTx wiring changes, a reset, a client loss)."""
        if not self.bypass.on:
            return
        line = self._irqs[0].index
        resample, loop = self.intx.resample, self._loop
        rewatch = None
        if resample is not None and loop is not None:
            rewatch = partial(loop.add_reader, resample, self._resample_reader(resample))
        self.bypass.stop(self._line_fds[line], rewatch)


def _selected(request: m.IrqSet) -> list[int]:
    """Sub-indexes a MASK/UNMASK/TRIGGER applies to (DATA_BOOL picks some)."""
    indexes = range(request.start, request.start + request.count)
    if request.data_type == vfio_abi.IRQ_SET_DATA_BOOL:
        return [i for i, flag in zip(indexes, request.data) if flag]
    return list(indexes)


__all__ = ["IrqRouter"]
