# SPDX-License-Identifier: BSD-3-Clause
"""Kernel bypass (bridge/irq_bypass.py), driven on the bridge object with a recording backend and loop.

A backend that implements `KernelIrqBypass` and has one INTx line gets the
client's trigger (and, for a level line, its resamplefd) handed to it once the
client wired both; INTX_DISABLE and the client's MASK hold the host line while
bypassed; any INTx SET_IRQS, a reset or the client's departure hand the line
back to the IRQ engine.  The real-kernel suite (tests/kernel) covers the same
path against vfio-platform.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import pytest

from vfu_platform import vfio_abi
from vfu_platform.backends.base import DeviceBackend, DeviceContext, IrqInfo, RegionInfo
from vfu_platform.backends.sim.edu import EduDevice
from vfu_platform.backends.vfio import VfioHostBackend
from vfu_platform.bridge.api import ClientContext
from vfu_platform.bridge.device import BridgeOptions, PciBridge
from vfu_platform.bridge.irq_bypass import KernelIrqBypass
from vfu_platform.dma import DmaMapTable
from vfu_platform.protocol import messages as m

INTX = vfio_abi.PCI_INTX_IRQ_INDEX
TRIGGER, UNMASK, MASK = (vfio_abi.IRQ_SET_ACTION_TRIGGER, vfio_abi.IRQ_SET_ACTION_UNMASK,
                         vfio_abi.IRQ_SET_ACTION_MASK)
NONE, EVENTFD = vfio_abi.IRQ_SET_DATA_NONE, vfio_abi.IRQ_SET_DATA_EVENTFD
CONFIG = vfio_abi.PCI_CONFIG_REGION_INDEX
LEVEL = vfio_abi.IRQ_INFO_EVENTFD | vfio_abi.IRQ_INFO_MASKABLE | vfio_abi.IRQ_INFO_AUTOMASKED


class HostLike(DeviceBackend):
    """One region, `lines` level IRQs; records the IRQ calls; `KernelIrqBypass` when `kernel`."""

    name = "host-like"

    def __init__(self, lines: int = 1) -> None:
        self.lines = lines
        self.calls: list[tuple[object, ...]] = []
        self.triggers: dict[int, int | None] = {}

    def regions(self) -> Sequence[RegionInfo]:
        return [RegionInfo(index=0, size=0x1000, flags=3, name="regs")]

    def irqs(self) -> Sequence[IrqInfo]:
        return [IrqInfo(index=i, count=1, flags=LEVEL, name=f"irq{i}") for i in range(self.lines)]

    def read(self, region: int, offset: int, size: int) -> bytes:
        return bytes(size)

    def write(self, region: int, offset: int, data: bytes) -> None:
        pass

    def set_irq_trigger(self, irq: int, eventfd: int | None) -> None:
        self.calls.append(("trigger", irq, eventfd))
        self.triggers[irq] = eventfd

    def mask_irq(self, irq: int) -> None:
        self.calls.append(("mask", irq))

    def unmask_irq(self, irq: int) -> None:
        self.calls.append(("unmask", irq))

    def reset(self) -> None:
        self.calls.append(("reset",))

    def attach(self, context: DeviceContext | None) -> None:
        pass


class KernelHost(HostLike):
    def set_irq_unmask_eventfd(self, irq: int, eventfd: int | None) -> None:
        self.calls.append(("unmask-eventfd", irq, eventfd))


class Loop:
    def __init__(self) -> None:
        self.readers: dict[int, Callable[[], None]] = {}

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        self.readers[fd] = callback

    def remove_reader(self, fd: int) -> None:
        self.readers.pop(fd, None)

    def call_later(self, delay: float, callback: Callable[[], None]) -> object:
        raise AssertionError("not used")


def eventfd() -> int:
    return os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)


def set_irqs(bridge: PciBridge, flags: int, count: int = 1, fds: Sequence[int] = ()) -> None:
    bridge.set_irqs(m.IrqSet(0, flags, INTX, 0, count, b""), [os.dup(fd) for fd in fds])


@pytest.fixture
def wired() -> object:
    backend = KernelHost()
    bridge = PciBridge(backend, BridgeOptions(reset_on_client_loss=False))
    loop = Loop()
    bridge.client_attached(ClientContext(DmaMapTable(), loop, None))
    trigger, resample = eventfd(), eventfd()
    yield backend, bridge, loop, trigger, resample
    bridge.close()
    os.close(trigger)
    os.close(resample)


def test_the_protocol_is_what_vfio_host_backend_implements() -> None:
    assert issubclass(VfioHostBackend, KernelIrqBypass)
    assert not isinstance(EduDevice(), KernelIrqBypass)
    assert isinstance(KernelHost(), KernelIrqBypass) and not isinstance(HostLike(), KernelIrqBypass)


def test_trigger_and_resamplefd_hand_the_line_to_the_kernel(wired) -> None:
    backend, bridge, loop, trigger, resample = wired
    set_irqs(bridge, TRIGGER | EVENTFD, fds=[trigger])
    assert not bridge.irqs.bypass.on, "a level line needs the resamplefd too"
    set_irqs(bridge, UNMASK | EVENTFD, fds=[resample])
    assert bridge.irqs.bypass.on and bridge.counters["bypass-on"] == 1
    (host_trigger, host_unmask) = backend.calls[-3:-1]
    assert bridge.irqs.intx.trigger is not None and bridge.irqs.intx.resample is not None
    assert host_trigger == ("trigger", 0, bridge.irqs.intx.trigger), "the client's trigger, given to the host"
    assert host_unmask == ("unmask-eventfd", 0, bridge.irqs.intx.resample)
    assert bridge.irqs.intx.resample not in loop.readers, "the host kernel consumes the resamplefd now"
    assert backend.calls[-1] == ("unmask", 0), "nothing holds the line"


def test_intx_disable_and_client_mask_hold_the_host_line(wired) -> None:
    backend, bridge, loop, trigger, resample = wired
    set_irqs(bridge, TRIGGER | EVENTFD, fds=[trigger])
    set_irqs(bridge, UNMASK | EVENTFD, fds=[resample])
    command = int.from_bytes(bridge.region_read(CONFIG, 4, 2), "little")
    bridge.region_write(CONFIG, 4, (command | 0x400).to_bytes(2, "little"))
    assert backend.calls[-1] == ("mask", 0) and bridge.irqs.bypass.on
    bridge.region_write(CONFIG, 4, command.to_bytes(2, "little"))
    assert backend.calls[-1] == ("unmask", 0)
    set_irqs(bridge, MASK | NONE)  # an INTx SET_IRQS: back to the engine, then on again, held
    assert bridge.counters["bypass-off"] == 1 and bridge.counters["bypass-on"] == 2
    assert backend.calls[-1] == ("mask", 0)


def test_disabling_intx_gives_the_line_back_to_the_engine(wired) -> None:
    backend, bridge, loop, trigger, resample = wired
    set_irqs(bridge, TRIGGER | EVENTFD, fds=[trigger])
    set_irqs(bridge, UNMASK | EVENTFD, fds=[resample])
    line_fd = backend.triggers[0]
    set_irqs(bridge, TRIGGER | NONE, count=0)
    assert not bridge.irqs.bypass.on and bridge.counters["bypass-off"] == 1
    assert ("unmask-eventfd", 0, None) in backend.calls
    assert backend.triggers[0] != line_fd and backend.triggers[0] in loop.readers, "the line's own eventfd again"


def test_client_loss_ends_bypass_and_drops_the_client_fds(wired) -> None:
    backend, bridge, loop, trigger, resample = wired
    set_irqs(bridge, TRIGGER | EVENTFD, fds=[trigger])
    set_irqs(bridge, UNMASK | EVENTFD, fds=[resample])
    bridge.client_lost()
    assert not bridge.irqs.bypass.on and bridge.counters["bypass-off"] == 1
    assert bridge.irqs.intx.trigger is None and bridge.irqs.intx.resample is None
    assert loop.readers == {}


@pytest.mark.parametrize("backend", [HostLike(), KernelHost(lines=2)], ids=["no-kernel", "two-lines"])
def test_no_bypass_without_a_kernel_or_with_several_lines(backend: HostLike) -> None:
    bridge = PciBridge(backend)
    loop = Loop()
    bridge.client_attached(ClientContext(DmaMapTable(), loop, None))
    trigger, resample = eventfd(), eventfd()
    set_irqs(bridge, TRIGGER | EVENTFD, fds=[trigger])
    set_irqs(bridge, UNMASK | EVENTFD, fds=[resample])
    assert not bridge.irqs.bypass.on and "bypass-on" not in bridge.counters
    assert not any(call[0] == "unmask-eventfd" for call in backend.calls)
    bridge.close()
    os.close(trigger)
    os.close(resample)
