# SPDX-License-Identifier: BSD-3-Clause
"""The gpio model: several level lines, per-line and W1C acks, edge line, timer, SRAM."""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator

import pytest

from vfu_platform import vfio_abi
from vfu_platform.backends.base import AckRegister, DeviceContext
from vfu_platform.backends.sim.gpio import GpioDevice, line_register
from sim_doubles import ManualScheduler, take

# ---- test doubles -----------------------------------------------------------


class NoDma:
    def read(self, iova: int, size: int) -> bytes:
        raise AssertionError("gpio does no DMA")

    def write(self, iova: int, data: bytes) -> None:
        raise AssertionError("gpio does no DMA")


class Gpio:
    """A gpio device with every line wired (trigger + unmask) and a virtual clock."""

    def __init__(self, dev: GpioDevice) -> None:
        self.dev = dev
        self.sched = ManualScheduler()
        dev.attach(DeviceContext(dma=NoDma(), scheduler=self.sched))
        self.fds: list[int] = []
        self.order: list[int] = []
        dev.on_irq = lambda irq, what: self.order.append(irq) if what == "fired" else None
        for info in dev.irqs():
            fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self.fds.append(fd)
            dev.set_irq_trigger(info.index, fd)
            if info.automasked:
                dev.unmask_irq(info.index)

    def r32(self, offset: int) -> int:
        return int.from_bytes(self.dev.read(0, offset, 4), "little")

    def w32(self, offset: int, value: int) -> None:
        self.dev.write(0, offset, value.to_bytes(4, "little"))

    def signals(self) -> list[int]:
        return [take(fd) for fd in self.fds]

    def close(self) -> None:
        self.dev.close()
        for fd in self.fds:
            os.close(fd)


@pytest.fixture
def gpio() -> Iterator[Gpio]:
    g = Gpio(GpioDevice())
    yield g
    g.close()


# ---- description ------------------------------------------------------------


def test_description() -> None:
    dev = GpioDevice()
    regs, sram = dev.regions()
    assert (regs.size, regs.mmappable) == (0x1000, False)
    assert (sram.size, sram.mmappable) == (0x1000, True)
    assert sram.flags & vfio_abi.REGION_FLAG_MMAP and sram.mmap_fd is not None
    irqs = dev.irqs()
    assert len(irqs) == 5
    assert all(i.automasked for i in irqs[:4]) and irqs[4].flags == vfio_abi.IRQ_INFO_EVENTFD
    assert dev.irq_regions == frozenset({0})
    assert AckRegister(irq=2, region=0, offset=0x124, mask=1) in dev.ack_registers
    assert AckRegister(irq=2, region=0, offset=0x18, mask=4) in dev.ack_registers
    assert len(dev.ack_registers) == 8
    dev.close()


@pytest.mark.parametrize("lines, edge", [(3, False), (16, True)])
def test_options(lines: int, edge: bool) -> None:
    dev = GpioDevice(lines=lines, edge=edge)
    assert len(dev.irqs()) == lines + edge
    assert int.from_bytes(dev.read(0, 0x04, 4), "little") == lines
    dev.close()


@pytest.mark.parametrize("lines", [2, 17])
def test_line_count_limits(lines: int) -> None:
    with pytest.raises(ValueError):
        GpioDevice(lines=lines)


# ---- registers --------------------------------------------------------------


def test_id_scratch_unknown(gpio: Gpio) -> None:
    assert gpio.r32(0x00) == 0x47504F31
    assert gpio.dev.read(0, 0x00, 4) == b"1OPG"
    gpio.w32(0x00, 0)
    assert gpio.r32(0x00) == 0x47504F31
    gpio.w32(0x08, 0xCAFEF00D)
    assert gpio.r32(0x08) == 0xCAFEF00D
    gpio.dev.write(0, 0x09, b"\x11")  # byte write: only that byte changes
    assert gpio.r32(0x08) == 0xCAFE110D
    assert gpio.dev.read(0, 0x0A, 2) == b"\xfe\xca"
    assert gpio.r32(0x0C) == 0 and gpio.r32(0x800) == 0 and gpio.r32(0x10) == 0
    gpio.w32(0x800, 1)
    assert gpio.r32(0x800) == 0


def test_raise_several_fires_in_index_order(gpio: Gpio) -> None:
    gpio.w32(0x10, 0b1101)
    assert gpio.order == [0, 2, 3]
    assert gpio.signals() == [1, 0, 1, 1, 0]
    assert gpio.r32(0x14) == 0b1101
    gpio.w32(0x10, 0xFFFF_0000)  # no such lines: ignored
    assert gpio.r32(0x14) == 0b1101


def test_per_line_status_and_ack(gpio: Gpio) -> None:
    gpio.w32(line_register(1, 0x8), 1)
    assert gpio.signals() == [0, 1, 0, 0, 0]
    assert [gpio.r32(line_register(k, 0)) for k in range(4)] == [0, 1, 0, 0]
    gpio.w32(line_register(1, 0x4), 0x2)  # bit0 clear: no ack
    assert gpio.r32(line_register(1, 0)) == 1
    gpio.w32(line_register(1, 0x4), 0x1)
    assert gpio.r32(line_register(1, 0)) == 0 and gpio.r32(0x14) == 0
    gpio.dev.unmask_irq(1)  # EOI done: quiet
    assert gpio.signals() == [0, 0, 0, 0, 0]
    assert gpio.r32(line_register(4, 0)) == 0  # line 4 does not exist


def test_w1c_ack_and_refire_on_unmask(gpio: Gpio) -> None:
    gpio.w32(0x10, 0b0111)
    assert gpio.signals() == [1, 1, 1, 0, 0]
    gpio.w32(0x18, 0b0101)
    assert gpio.r32(0x14) == 0b0010
    for k in range(3):
        gpio.dev.unmask_irq(k)
    assert gpio.signals() == [0, 1, 0, 0, 0]  # line 1 still asserted: fires again
    gpio.w32(0x10, 0b0001)
    assert gpio.signals() == [1, 0, 0, 0, 0]


def test_edge_pulse(gpio: Gpio) -> None:
    gpio.w32(0x1C, 0)
    gpio.w32(0x1C, 0x1234)
    assert gpio.signals() == [0, 0, 0, 0, 2]
    gpio.dev.set_irq_trigger(4, None)
    gpio.w32(0x1C, 1)  # no handler: lost
    gpio.dev.set_irq_trigger(4, gpio.fds[4])
    assert gpio.signals() == [0, 0, 0, 0, 0]
    assert gpio.dev.counters.values["irq4.lost"] == 1


def test_edge_disabled() -> None:
    dev = GpioDevice(edge=False)
    dev.write(0, 0x1C, b"\1\0\0\0")  # ignored
    assert dev.counters.values == {}
    dev.close()


# ---- timer ------------------------------------------------------------------


def test_timer_one_shot(gpio: Gpio) -> None:
    gpio.w32(0x40, 2)
    gpio.w32(0x44, 500)
    gpio.w32(0x48, 0x1)
    assert gpio.r32(0x48) == 0x1
    gpio.sched.advance(0.0004)
    assert gpio.signals() == [0, 0, 0, 0, 0]
    gpio.sched.advance(0.0002)
    assert gpio.signals() == [0, 0, 1, 0, 0]
    assert gpio.r32(0x48) == 0 and gpio.r32(0x14) == 0b100
    gpio.sched.advance(1)
    assert gpio.dev.counters.values["gpio.timer_expired"] == 1


def test_timer_periodic_and_stop(gpio: Gpio) -> None:
    gpio.w32(0x40, 0)
    gpio.w32(0x44, 1000)
    gpio.w32(0x48, 0x3)
    gpio.sched.advance(0.0035)
    assert gpio.dev.counters.values["gpio.timer_expired"] == 3
    assert gpio.r32(0x48) == 0x3
    # Line 0 fired once and stays automasked until the EOI + unmask.
    assert gpio.signals() == [1, 0, 0, 0, 0]
    gpio.w32(0x18, 1)
    gpio.dev.unmask_irq(0)
    gpio.sched.advance(0.001)
    assert gpio.signals() == [1, 0, 0, 0, 0]
    gpio.w32(0x48, 0)
    assert gpio.sched.pending() == 0
    gpio.sched.advance(1)
    assert gpio.dev.counters.values["gpio.timer_expired"] == 4


def test_timer_periodic_minimum_period(gpio: Gpio) -> None:
    gpio.w32(0x44, 0)
    gpio.w32(0x48, 0x3)
    gpio.sched.advance(0.001)
    assert gpio.dev.counters.values["gpio.timer_expired"] == 10  # 100 us floor


def test_timer_bad_line_is_recorded(gpio: Gpio) -> None:
    gpio.w32(0x40, 9)
    gpio.w32(0x48, 0x1)
    gpio.sched.advance(0.001)
    assert "timer line 9" in gpio.dev.errors[-1]
    assert gpio.signals() == [0, 0, 0, 0, 0]


def test_timer_waits_while_detached(gpio: Gpio) -> None:
    gpio.w32(0x44, 100)
    gpio.w32(0x48, 0x1)
    gpio.dev.attach(None)
    gpio.sched.advance(1)
    assert gpio.r32(0x48) == 0x1
    later = ManualScheduler()
    gpio.dev.attach(DeviceContext(dma=NoDma(), scheduler=later))
    later.advance(0.001)
    assert gpio.r32(0x48) == 0 and gpio.signals()[0] == 1


def test_reset_stops_timer_and_lines(gpio: Gpio) -> None:
    gpio.w32(0x08, 5)
    gpio.w32(0x10, 0b11)
    gpio.w32(0x44, 100)
    gpio.w32(0x48, 0x3)
    gpio.signals()
    gpio.dev.reset()
    assert gpio.sched.pending() == 0
    assert [gpio.r32(o) for o in (0x08, 0x14, 0x40, 0x44, 0x48)] == [0, 0, 0, 0, 0]
    assert all(gpio.dev.line_masked(k) for k in range(4))


# ---- SRAM (mmap fast path) --------------------------------------------------


def test_sram_through_memfd(gpio: Gpio) -> None:
    info = gpio.dev.regions()[1]
    assert info.mmap_fd is not None
    view = mmap.mmap(info.mmap_fd, info.size)
    try:
        gpio.dev.write(1, 0x100, b"through the backend")
        assert view[0x100:0x113] == b"through the backend"
        view[0xFF0:0x1000] = b"Z" * 16
        assert gpio.dev.read(1, 0xFF0, 16) == b"Z" * 16
    finally:
        view.close()
