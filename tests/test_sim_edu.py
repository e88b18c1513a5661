# SPDX-License-Identifier: BSD-3-Clause
"""The edu model, register for register against QEMU's hw/misc/edu.c behaviour."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from vfu_platform import vfio_abi
from vfu_platform.backends.base import AckRegister, DeviceContext
from vfu_platform.backends.sim.edu import (
    DMA_BUFFER_ADDR,
    DMA_CMD_IRQ,
    DMA_CMD_RUN,
    DMA_CMD_TO_RAM,
    DMA_IRQ,
    FACT_IRQ,
    EduDevice,
    factorial_u32,
)
from sim_doubles import ManualScheduler, RamDma, take

# ---- test doubles -----------------------------------------------------------


class Edu:
    """An edu device with a trigger installed and unmasked, attached to a virtual clock."""

    def __init__(self, dev: EduDevice, fd: int, attach: bool) -> None:
        self.dev, self.fd = dev, fd
        self.sched = ManualScheduler()
        self.ram = RamDma(0x10000)
        if attach:
            dev.attach(DeviceContext(dma=self.ram, scheduler=self.sched))
        dev.set_irq_trigger(0, fd)
        dev.unmask_irq(0)

    def r32(self, offset: int) -> int:
        return int.from_bytes(self.dev.read(0, offset, 4), "little")

    def r64(self, offset: int) -> int:
        return int.from_bytes(self.dev.read(0, offset, 8), "little")

    def w32(self, offset: int, value: int) -> None:
        self.dev.write(0, offset, value.to_bytes(4, "little"))

    def w64(self, offset: int, value: int) -> None:
        self.dev.write(0, offset, value.to_bytes(8, "little"))

    def signals(self) -> int:
        return take(self.fd)


def _make(attach: bool) -> Iterator[Edu]:
    fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    dev = EduDevice(fact_delay=0.001, dma_delay=0.002)
    yield Edu(dev, fd, attach)
    dev.close()
    os.close(fd)


@pytest.fixture
def edu() -> Iterator[Edu]:
    yield from _make(attach=True)


@pytest.fixture
def detached() -> Iterator[Edu]:
    yield from _make(attach=False)


# ---- description ------------------------------------------------------------


def test_description() -> None:
    dev = EduDevice()
    (region,) = dev.regions()
    assert (region.index, region.size, region.mmappable) == (0, 1 << 20, False)
    assert region.flags == vfio_abi.REGION_FLAG_READ | vfio_abi.REGION_FLAG_WRITE
    (irq,) = dev.irqs()
    assert irq.automasked and irq.count == 1
    assert dev.ack_registers == (AckRegister(irq=0, region=0, offset=0x64, mask=0xFFFFFFFF),)
    assert dev.irq_regions == frozenset({0})
    assert dev.compatible == ("vfu-platform,edu",)
    assert dev.dma_mask == (1 << 28) - 1
    dev.close()


# ---- plain registers --------------------------------------------------------


def test_identification_and_liveness(edu: Edu) -> None:
    assert edu.r32(0x00) == 0x010000ED
    edu.w32(0x00, 0)  # read-only
    assert edu.r32(0x00) == 0x010000ED
    assert edu.r32(0x04) == 0  # power-on
    edu.w32(0x04, 0x12345678)
    assert edu.r32(0x04) == 0xEDCBA987
    edu.w32(0x04, 0xFFFFFFFF)
    assert edu.r32(0x04) == 0


@pytest.mark.parametrize(
    "offset", [0x0C, 0x10, 0x28, 0x60, 0x64, 0x7C, 0x84, 0x8C, 0xA0, 0x1000, 0xFFFFC]
)
def test_undefined_and_write_only_registers_read_all_ones(edu: Edu, offset: int) -> None:
    assert edu.r32(offset) == 0xFFFFFFFF


def test_wrong_access_sizes(edu: Edu) -> None:
    edu.w32(0x04, 0)
    assert edu.dev.read(0, 0x00, 1) == b"\xff"
    assert edu.dev.read(0, 0x00, 2) == b"\xff\xff"
    assert edu.dev.read(0, 0x00, 8) == b"\xff" * 8  # 8 bytes only from 0x80 on
    assert edu.dev.read(0, 0x02, 4) == b"\xff" * 4  # unaligned: split into 2-byte pieces
    edu.dev.write(0, 0x04, b"\x00")
    edu.dev.write(0, 0x04, b"\x00\x00")
    edu.dev.write(0, 0x00, bytes(8))  # would cover 0x04
    assert edu.r32(0x04) == 0xFFFFFFFF  # none of those writes landed
    edu.dev.write(0, 0x80, b"\x01\x02")
    assert edu.r64(0x80) == 0
    assert edu.dev.read(0, 0x80, 2) == b"\xff\xff"


def test_dma_registers_are_64_bit(edu: Edu) -> None:
    edu.w64(0x80, 0x1122334455667788)
    assert edu.r64(0x80) == 0x1122334455667788
    assert edu.r32(0x80) == 0x55667788
    edu.w32(0x80, 0xAABBCCDD)  # a 4-byte write replaces the whole register
    assert edu.r64(0x80) == 0xAABBCCDD
    for offset in (0x88, 0x90):
        edu.w64(offset, 0x0102030405060708)
        assert edu.r64(offset) == 0x0102030405060708
    edu.w64(0x98, 0x2)  # no start bit: ignored
    assert edu.r64(0x98) == 0


# ---- factorial --------------------------------------------------------------


FACTORIALS = [1, 1, 2, 6, 24, 120, 720, 5040, 40320, 362880, 3628800, 39916800, 479001600]


@pytest.mark.parametrize("n", range(13))
def test_factorial_small(edu: Edu, n: int) -> None:
    edu.w32(0x08, n)
    assert edu.r32(0x20) & 1  # computing
    edu.sched.advance(0.01)
    assert edu.r32(0x20) & 1 == 0
    assert edu.r32(0x08) == FACTORIALS[n]


@pytest.mark.parametrize("n", [13, 14, 20, 33, 34, 1000, 0xFFFFFFFF])
def test_factorial_wraps_like_uint32(edu: Edu, n: int) -> None:
    expected = 1
    for i in range(2, min(n, 40) + 1):
        expected = expected * i & 0xFFFFFFFF
    assert factorial_u32(n) == expected
    edu.w32(0x08, n)
    edu.sched.advance(0.01)
    assert edu.r32(0x08) == expected
    assert factorial_u32(13) == 6227020800 & 0xFFFFFFFF


def test_factorial_write_while_computing_is_ignored(edu: Edu) -> None:
    edu.w32(0x08, 5)
    assert edu.r32(0x08) == 5  # QEMU reads back the operand until it is done
    edu.w32(0x08, 7)
    edu.sched.advance(0.01)
    assert edu.r32(0x08) == 120


def test_factorial_irq(edu: Edu) -> None:
    edu.w32(0x20, 0x80)
    assert edu.r32(0x20) == 0x80
    edu.w32(0x08, 4)
    assert edu.signals() == 0  # not before the work has run
    edu.sched.advance(0.01)
    assert edu.r32(0x08) == 24
    assert edu.r32(0x24) == FACT_IRQ
    assert edu.signals() == 1
    edu.w32(0x64, FACT_IRQ)
    assert edu.r32(0x24) == 0 and not edu.dev.line_asserted(0)
    edu.w32(0x20, 0x01)  # bit0 is read-only; bit7 cleared
    assert edu.r32(0x20) == 0
    edu.w32(0x08, 3)
    edu.sched.advance(0.01)
    assert edu.r32(0x24) == 0


def test_factorial_without_context_is_synchronous(detached: Edu) -> None:
    detached.w32(0x20, 0x80)
    detached.w32(0x08, 6)
    assert detached.r32(0x20) == 0x80
    assert detached.r32(0x08) == 720
    assert detached.r32(0x24) == FACT_IRQ and detached.signals() == 1


# ---- interrupt raise / acknowledge ------------------------------------------


def test_raise_ack_and_line_level(edu: Edu) -> None:
    edu.w32(0x60, 0x5)
    assert edu.r32(0x24) == 0x5 and edu.dev.line_asserted(0)
    assert edu.signals() == 1
    edu.w32(0x64, 0x1)  # partial ack: line stays up
    assert edu.r32(0x24) == 0x4 and edu.dev.line_asserted(0)
    edu.w32(0x64, 0x4)
    assert edu.r32(0x24) == 0 and not edu.dev.line_asserted(0)
    edu.w32(0x60, 0)  # raising nothing asserts nothing
    assert not edu.dev.line_asserted(0)
    edu.w32(0x24, 0xFF)  # read-only
    assert edu.r32(0x24) == 0


def test_automask_and_unmask_refire(edu: Edu) -> None:
    edu.w32(0x60, 0x1)
    assert edu.signals() == 1 and edu.dev.line_masked(0)
    edu.w32(0x60, 0x2)  # second raise while automasked: no signal
    assert edu.signals() == 0
    edu.dev.unmask_irq(0)  # still asserted: exactly one more signal
    assert edu.signals() == 1 and edu.dev.line_masked(0)
    edu.w32(0x64, 0x3)
    edu.dev.unmask_irq(0)
    assert edu.signals() == 0 and not edu.dev.line_masked(0)
    assert edu.dev.fired(0) == 2


def test_mask_unmask(edu: Edu) -> None:
    edu.dev.mask_irq(0)
    edu.w32(0x60, 0x8)
    assert edu.signals() == 0
    edu.dev.unmask_irq(0)
    assert edu.signals() == 1


def test_reset(edu: Edu) -> None:
    edu.w32(0x04, 1)
    edu.w32(0x20, 0x80)
    edu.w64(0x80, 0x1000)
    edu.w32(0x60, 0x3)
    edu.w32(0x08, 5)  # pending work is dropped by reset
    edu.signals()
    edu.dev.reset()
    assert [edu.r32(o) for o in (0x04, 0x08, 0x20, 0x24)] == [0, 0, 0, 0]
    assert edu.r64(0x80) == 0
    assert not edu.dev.line_asserted(0) and edu.dev.line_masked(0)
    edu.sched.advance(1)
    assert edu.r32(0x08) == 0 and edu.r32(0x24) == 0
    edu.w32(0x60, 0x1)  # trigger kept, line masked until unmasked
    assert edu.signals() == 0
    edu.dev.unmask_irq(0)
    assert edu.signals() == 1


# ---- DMA --------------------------------------------------------------------


def start_dma(edu: Edu, src: int, dst: int, count: int, cmd: int) -> None:
    edu.w64(0x80, src)
    edu.w64(0x88, dst)
    edu.w64(0x90, count)
    edu.w64(0x98, cmd)


def test_dma_round_trip(edu: Edu) -> None:
    edu.ram.ram[0x100:0x110] = bytes(range(16))
    start_dma(edu, 0x100, DMA_BUFFER_ADDR + 0x20, 16, DMA_CMD_RUN | DMA_CMD_IRQ)
    assert edu.r64(0x98) & DMA_CMD_RUN  # runs from the event loop, not inside the write
    assert edu.dev.dma_buffer[0x20:0x30] == bytes(16)
    edu.w64(0x80, 0x9999)  # DMA registers are frozen while it runs
    assert edu.r64(0x80) == 0x100
    edu.sched.advance(0.01)
    assert edu.dev.dma_buffer[0x20:0x30] == bytes(range(16))
    assert edu.r64(0x98) == DMA_CMD_IRQ
    assert edu.r32(0x24) == DMA_IRQ and edu.signals() == 1
    edu.w32(0x64, DMA_IRQ)

    start_dma(edu, DMA_BUFFER_ADDR + 0x20, 0x2000, 16, DMA_CMD_RUN | DMA_CMD_TO_RAM)
    edu.sched.advance(0.01)
    assert edu.ram.ram[0x2000:0x2010] == bytes(range(16))
    assert edu.r64(0x98) == DMA_CMD_TO_RAM
    assert edu.r32(0x24) == 0 and edu.signals() == 0  # no bit2: no IRQ
    assert not edu.dev.errors


def test_dma_bus_address_is_clamped(edu: Edu) -> None:
    edu.ram.ram[0x40:0x44] = b"wxyz"
    start_dma(edu, (1 << 28) | 0x40, DMA_BUFFER_ADDR, 4, DMA_CMD_RUN)
    edu.sched.advance(0.01)
    assert edu.dev.dma_buffer[0:4] == b"wxyz"


def test_dma_whole_buffer_edge(edu: Edu) -> None:
    edu.ram.ram[0:0x1000] = b"\xab" * 0x1000
    start_dma(edu, 0, DMA_BUFFER_ADDR, 0x1000, DMA_CMD_RUN)
    edu.sched.advance(0.01)
    assert edu.dev.dma_buffer == b"\xab" * 0x1000 and not edu.dev.errors


@pytest.mark.parametrize(
    "src, dst, count, cmd",
    [
        (0, DMA_BUFFER_ADDR + 0xFF0, 0x20, DMA_CMD_RUN),  # RAM -> EDU past the buffer end
        (0, 0x1000, 4, DMA_CMD_RUN),  # RAM -> EDU below the buffer
        (DMA_BUFFER_ADDR - 4, 0, 8, DMA_CMD_RUN | DMA_CMD_TO_RAM),  # EDU -> RAM, below
        (DMA_BUFFER_ADDR, 0, 0x1001, DMA_CMD_RUN | DMA_CMD_TO_RAM),  # EDU -> RAM, too long
    ],
)
def test_dma_out_of_buffer_is_an_error_not_a_crash(
    edu: Edu, src: int, dst: int, count: int, cmd: int
) -> None:
    edu.ram.ram[:] = b"\x55" * len(edu.ram.ram)
    start_dma(edu, src, dst, count, cmd | DMA_CMD_IRQ)
    edu.sched.advance(0.01)
    assert "outside the buffer" in edu.dev.errors[-1]
    assert edu.dev.counters.values["dma.errors"] == 1
    assert edu.dev.dma_buffer == bytes(0x1000)  # nothing moved
    assert edu.ram.ram == b"\x55" * len(edu.ram.ram)
    assert edu.r64(0x98) & DMA_CMD_RUN == 0  # completed (with an error)
    assert edu.r32(0x24) == DMA_IRQ and edu.signals() == 1


def test_dma_to_unmapped_client_memory(edu: Edu) -> None:
    start_dma(edu, DMA_BUFFER_ADDR, 0xFFFF000, 16, DMA_CMD_RUN | DMA_CMD_TO_RAM)
    edu.sched.advance(0.01)
    assert "not mapped" in edu.dev.errors[-1]
    assert edu.r64(0x98) & DMA_CMD_RUN == 0


def test_dma_without_context(detached: Edu) -> None:
    start_dma(detached, 0, DMA_BUFFER_ADDR, 16, DMA_CMD_RUN | DMA_CMD_IRQ)  # must not raise
    assert "no DMA context" in detached.dev.errors[-1]
    assert detached.r64(0x98) & DMA_CMD_RUN == 0
    assert detached.r32(0x24) == DMA_IRQ


def test_dma_start_while_running_is_ignored(edu: Edu) -> None:
    edu.ram.ram[0:4] = b"abcd"
    start_dma(edu, 0, DMA_BUFFER_ADDR, 4, DMA_CMD_RUN)
    edu.w64(0x98, DMA_CMD_RUN | DMA_CMD_TO_RAM | DMA_CMD_IRQ)
    assert edu.r64(0x98) == DMA_CMD_RUN
    edu.sched.advance(0.01)
    assert edu.dev.dma_buffer[0:4] == b"abcd"
    assert len([t for t in edu.sched.timers]) == 1
