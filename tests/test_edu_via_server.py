# SPDX-License-Identifier: BSD-3-Clause
"""QEMU's edu device served over vfio-user, register for register (QEMU docs/specs/edu.rst).

    0x00 RO identification 0x010000ed      0x24 RO interrupt status
    0x04 RW liveness: inversion            0x60 WO interrupt raise (OR)
    0x08 RW factorial                      0x64 WO interrupt acknowledge (clear)
    0x20 RW status: 0x01 computing (RO),   0x80/0x88/0x90 DMA source/destination/count
            0x80 IRQ after factorial       0x98 DMA command: 0x1 start, 0x2 EDU->RAM, 0x4 IRQ 0x100

DMA moves data between client memory (DMA_MAP windows: real memfds, or windows the
client serves with DMA_READ/DMA_WRITE) and edu's 4 KiB buffer at device address 0x40000.
"""
from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from vfu_platform.testing import MemfdWindow, ProcessServer, install_intx, intx_unmask, set_command
from vfu_platform.backends.sim import edu
from vfu_platform.client import VfioUserClient

BAR = 0
BUFFER = edu.DMA_BUFFER_ADDR
COMMAND_MEMORY_MASTER = 0x0006
ALL_ONES_32 = 0xFFFF_FFFF


def read(client: VfioUserClient, offset: int, size: int = 4) -> int:
    return int.from_bytes(client.region_read(BAR, offset, size), "little")


def write(client: VfioUserClient, offset: int, value: int, size: int = 4) -> None:
    client.region_write(BAR, offset, value.to_bytes(size, "little"))


def wait_status_clear(client: VfioUserClient, bit: int, register: int = edu.REG_STATUS, timeout: float = 3.0) -> int:
    """Poll a register (as a driver does) until `bit` clears; returns how many polls it took."""
    deadline = time.monotonic() + timeout
    polls = 0
    while read(client, register) & bit:
        polls += 1
        assert time.monotonic() < deadline, f"register {register:#x} bit {bit:#x} never cleared"
        time.sleep(0.001)
    return polls


def run_dma(client: VfioUserClient, src: int, dst: int, count: int, command: int) -> None:
    write(client, edu.REG_DMA_SRC, src, 8)
    write(client, edu.REG_DMA_DST, dst, 8)
    write(client, edu.REG_DMA_COUNT, count, 8)
    write(client, edu.REG_DMA_CMD, command | edu.DMA_CMD_RUN, 8)
    wait_status_clear(client, edu.DMA_CMD_RUN, edu.REG_DMA_CMD)


@pytest.fixture
def client(edu_server: ProcessServer) -> VfioUserClient:
    return edu_server.connect()


# --------------------------------------------------------------------------- plain registers


def test_identification(client: VfioUserClient) -> None:
    assert read(client, edu.REG_ID) == 0x010000ED


@pytest.mark.parametrize("value", [0, 1, 0x1234_5678, 0xFFFF_FFFF, 0xA5A5_0000])
def test_liveness_is_an_inversion(client: VfioUserClient, value: int) -> None:
    write(client, edu.REG_LIVENESS, value)
    assert read(client, edu.REG_LIVENESS) == ~value & ALL_ONES_32


def test_liveness_powers_on_zero(client: VfioUserClient) -> None:
    assert read(client, edu.REG_LIVENESS) == 0


@pytest.mark.parametrize(("n", "expected"), [(0, 1), (1, 1), (5, 120), (12, 479001600), (13, 6227020800 % 2**32), (34, 0)])
def test_factorial(client: VfioUserClient, n: int, expected: int) -> None:
    write(client, edu.REG_FACTORIAL, n)
    wait_status_clear(client, edu.STATUS_COMPUTING)
    assert read(client, edu.REG_FACTORIAL) == expected


def test_factorial_status_polling(vfu_server: Callable[..., ProcessServer]) -> None:
    server = vfu_server("edu", extra=["-o", "fact_delay=0.2"])
    client = server.connect()
    write(client, edu.REG_FACTORIAL, 6)
    assert read(client, edu.REG_STATUS) & edu.STATUS_COMPUTING
    assert read(client, edu.REG_FACTORIAL) == 6  # the input, until it is done
    write(client, edu.REG_FACTORIAL, 9)  # ignored while computing
    assert wait_status_clear(client, edu.STATUS_COMPUTING) > 0
    assert read(client, edu.REG_FACTORIAL) == 720


def test_status_computing_bit_is_read_only(client: VfioUserClient) -> None:
    write(client, edu.REG_STATUS, 0x01)
    assert read(client, edu.REG_STATUS) == 0
    write(client, edu.REG_STATUS, 0x81)
    assert read(client, edu.REG_STATUS) == 0x80
    write(client, edu.REG_STATUS, 0)
    assert read(client, edu.REG_STATUS) == 0


def test_factorial_completion_interrupt(client: VfioUserClient, vfu_eventfds) -> None:
    (trigger,) = vfu_eventfds(1)
    install_intx(client, trigger)
    write(client, edu.REG_STATUS, edu.STATUS_IRQFACT)
    write(client, edu.REG_FACTORIAL, 4)
    trigger.expect_one(what="factorial completion IRQ")
    assert read(client, edu.REG_IRQ_STATUS) == edu.FACT_IRQ
    assert read(client, edu.REG_FACTORIAL) == 24
    write(client, edu.REG_IRQ_ACK, edu.FACT_IRQ)
    intx_unmask(client)
    assert read(client, edu.REG_IRQ_STATUS) == 0
    trigger.expect_none()


def test_factorial_without_irq_bit_raises_nothing(client: VfioUserClient, vfu_eventfds) -> None:
    (trigger,) = vfu_eventfds(1)
    install_intx(client, trigger)
    write(client, edu.REG_FACTORIAL, 3)
    wait_status_clear(client, edu.STATUS_COMPUTING)
    trigger.expect_none()
    assert read(client, edu.REG_IRQ_STATUS) == 0


def test_interrupt_raise_status_and_ack(client: VfioUserClient, vfu_eventfds) -> None:
    (trigger,) = vfu_eventfds(1)
    install_intx(client, trigger)
    write(client, edu.REG_IRQ_RAISE, 0x10)
    trigger.expect_one()
    write(client, edu.REG_IRQ_RAISE, 0x03)
    assert read(client, edu.REG_IRQ_STATUS) == 0x13  # bitwise OR
    write(client, edu.REG_IRQ_ACK, 0x12)
    assert read(client, edu.REG_IRQ_STATUS) == 0x01
    write(client, edu.REG_IRQ_ACK, 0x01)
    assert read(client, edu.REG_IRQ_STATUS) == 0
    intx_unmask(client)
    trigger.expect_none()


def test_raise_with_zero_is_no_interrupt(client: VfioUserClient, vfu_eventfds) -> None:
    (trigger,) = vfu_eventfds(1)
    install_intx(client, trigger)
    write(client, edu.REG_IRQ_RAISE, 0)
    trigger.expect_none()


# --------------------------------------------------------------------------- access sizes


@pytest.mark.parametrize(
    ("offset", "size"),
    [(edu.REG_ID, 1), (edu.REG_ID, 2), (edu.REG_ID, 8), (edu.REG_LIVENESS, 2), (0x02, 4)],
    ids=["1-byte", "2-byte", "8-byte-low", "2-byte-liveness", "unaligned"],
)
def test_wrong_read_sizes_read_all_ones(client: VfioUserClient, offset: int, size: int) -> None:
    assert client.region_read(BAR, offset, size) == b"\xff" * size


def test_wrong_write_sizes_are_ignored(client: VfioUserClient) -> None:
    write(client, edu.REG_LIVENESS, 0x1111_1111)
    write(client, edu.REG_LIVENESS, 0x2222, 2)
    write(client, edu.REG_LIVENESS, 0x33, 1)
    write(client, edu.REG_LIVENESS, 0x4444_4444_4444_4444, 8)  # 8 bytes only from 0x80 on
    assert read(client, edu.REG_LIVENESS) == 0xEEEE_EEEE
    # That unaligned 8-byte write covered the factorial register too: it must not start one.
    assert read(client, edu.REG_STATUS) == 0
    assert read(client, edu.REG_FACTORIAL) == 0
    assert client.region_read(BAR, edu.REG_LIVENESS, 8) == b"\xff" * 8


@pytest.mark.parametrize("offset", [0x0C, 0x28, 0x30, 0x60, 0x64, 0xA0, 0x1000, 0xFFFFC])
def test_undefined_and_write_only_registers_read_all_ones(client: VfioUserClient, offset: int) -> None:
    assert read(client, offset) == ALL_ONES_32


def test_dma_registers_take_8_and_4_byte_accesses(client: VfioUserClient) -> None:
    write(client, edu.REG_DMA_SRC, 0x1122_3344_5566_7788, 8)
    assert read(client, edu.REG_DMA_SRC, 8) == 0x1122_3344_5566_7788
    write(client, edu.REG_DMA_SRC, 0x0ABC, 4)  # a 4-byte write replaces the whole register
    assert read(client, edu.REG_DMA_SRC, 8) == 0x0ABC
    assert read(client, edu.REG_DMA_SRC, 4) == 0x0ABC
    write(client, edu.REG_DMA_COUNT, 0x40, 4)
    assert read(client, edu.REG_DMA_COUNT, 8) == 0x40


# --------------------------------------------------------------------------- DMA


@pytest.fixture
def dma_client(client: VfioUserClient, vfu_memfds) -> tuple[VfioUserClient, MemfdWindow, MemfdWindow]:
    source = vfu_memfds(0x2000, "edu-src")
    target = vfu_memfds(0x1000, "edu-dst")
    client.dma_map(0x10_0000, 0x2000, fd=source.fd)
    client.dma_map(0x20_0000, 0x1000, fd=target.fd)
    set_command(client, COMMAND_MEMORY_MASTER)
    return client, source, target


def test_dma_ram_to_edu_to_ram(dma_client) -> None:
    client, source, target = dma_client
    pattern = bytes(range(256)) * 4
    source.map[0x1000 : 0x1000 + len(pattern)] = pattern
    run_dma(client, 0x10_1000, BUFFER + 0x100, len(pattern), 0)  # RAM -> EDU
    run_dma(client, BUFFER + 0x100, 0x20_0800, len(pattern), edu.DMA_CMD_TO_RAM)  # EDU -> RAM
    assert target.map[0x800 : 0x800 + len(pattern)] == pattern
    assert target.map[:0x800] == bytes(0x800)


def test_dma_completion_interrupt(dma_client, vfu_eventfds) -> None:
    client, source, target = dma_client
    (trigger,) = vfu_eventfds(1)
    install_intx(client, trigger)
    source.map[0:8] = b"edu-dma!"
    write(client, edu.REG_DMA_SRC, 0x10_0000, 8)
    write(client, edu.REG_DMA_DST, BUFFER, 8)
    write(client, edu.REG_DMA_COUNT, 8, 8)
    write(client, edu.REG_DMA_CMD, edu.DMA_CMD_RUN | edu.DMA_CMD_IRQ, 8)
    trigger.expect_one(what="DMA completion IRQ")
    assert read(client, edu.REG_IRQ_STATUS) == edu.DMA_IRQ
    assert read(client, edu.REG_DMA_CMD, 8) & edu.DMA_CMD_RUN == 0
    write(client, edu.REG_IRQ_ACK, edu.DMA_IRQ)
    intx_unmask(client)
    run_dma(client, BUFFER, 0x20_0000, 8, edu.DMA_CMD_TO_RAM)
    assert target.map[0:8] == b"edu-dma!"


def test_dma_address_is_clamped_to_28_bits(dma_client) -> None:
    client, source, target = dma_client
    target.map[0:4] = b"\0\0\0\0"
    source.map[0:4] = b"clmp"
    run_dma(client, 0x10_0000, BUFFER, 4, 0)
    run_dma(client, BUFFER, (1 << 40) | 0x20_0000, 4, edu.DMA_CMD_TO_RAM)
    assert target.map[0:4] == b"clmp"


def test_dma_needs_bus_master(dma_client) -> None:
    client, source, target = dma_client
    source.map[0:4] = b"data"
    set_command(client, 0x0002)  # memory only, no bus master
    run_dma(client, 0x10_0000, BUFFER, 4, 0)
    set_command(client, COMMAND_MEMORY_MASTER)
    run_dma(client, BUFFER, 0x20_0000, 4, edu.DMA_CMD_TO_RAM)
    assert target.map[0:4] == bytes(4), "a DMA without bus mastering must not read client memory"
    source.map[0:4] = b"late"
    set_command(client, 0x0002)
    run_dma(client, BUFFER, 0x20_0000, 4, edu.DMA_CMD_TO_RAM)
    assert target.map[0:4] == bytes(4), "a DMA without bus mastering must not write client memory"


def test_dma_outside_the_buffer_moves_nothing_and_completes(dma_client, vfu_eventfds) -> None:
    client, source, target = dma_client
    (trigger,) = vfu_eventfds(1)
    install_intx(client, trigger)
    target.map[0:4] = b"keep"
    run_dma(client, BUFFER + 0xFFE, 0x20_0000, 4, edu.DMA_CMD_TO_RAM | edu.DMA_CMD_IRQ)
    trigger.expect_one(what="completion IRQ of a failed DMA")
    assert target.map[0:4] == b"keep"


def test_dma_to_unmapped_address_moves_nothing_and_completes(dma_client) -> None:
    client, source, target = dma_client
    run_dma(client, 0x30_0000, BUFFER, 16, 0)  # nothing mapped there
    run_dma(client, BUFFER, 0x20_0FF8, 16, edu.DMA_CMD_TO_RAM)  # crosses the window's end
    assert target.map[0xFF8:0x1000] == bytes(8)


def test_dma_registers_are_locked_while_running(vfu_server: Callable[..., ProcessServer], vfu_memfds) -> None:
    client = vfu_server("edu", extra=["-o", "dma_delay=0.2"]).connect()
    window = vfu_memfds(0x1000)
    client.dma_map(0x10_0000, 0x1000, fd=window.fd)
    set_command(client, COMMAND_MEMORY_MASTER)
    window.map[0:4] = b"abcd"
    write(client, edu.REG_DMA_SRC, 0x10_0000, 8)
    write(client, edu.REG_DMA_DST, BUFFER, 8)
    write(client, edu.REG_DMA_COUNT, 4, 8)
    write(client, edu.REG_DMA_CMD, edu.DMA_CMD_RUN, 8)
    write(client, edu.REG_DMA_SRC, 0x99, 8)  # ignored: a transfer runs
    write(client, edu.REG_DMA_COUNT, 0x99, 8)
    assert read(client, edu.REG_DMA_SRC, 8) == 0x10_0000
    assert read(client, edu.REG_DMA_CMD, 8) & edu.DMA_CMD_RUN
    wait_status_clear(client, edu.DMA_CMD_RUN, edu.REG_DMA_CMD)
    run_dma(client, BUFFER, 0x10_0800, 4, edu.DMA_CMD_TO_RAM)
    assert window.map[0x800:0x804] == b"abcd"


def test_dma_through_messages_without_fd(client: VfioUserClient) -> None:
    """Guest RAM without an fd: the server asks with DMA_READ / DMA_WRITE, the client answers."""
    window = client.dma_map(0x40_0000, 0x1000)
    assert window is not None
    set_command(client, COMMAND_MEMORY_MASTER)
    window.buffer[0:16] = b"message-based-DM"
    run_dma(client, 0x40_0000, BUFFER, 16, 0)
    run_dma(client, BUFFER, 0x40_0100, 16, edu.DMA_CMD_TO_RAM)
    assert bytes(window.buffer[0x100:0x110]) == b"message-based-DM"
    assert client.served_dma_reads >= 1 and client.served_dma_writes >= 1


def test_dma_read_only_window_refuses_device_writes(client: VfioUserClient, vfu_memfds) -> None:
    window = vfu_memfds(0x1000)
    client.dma_map(0x10_0000, 0x1000, fd=window.fd, writable=False)
    set_command(client, COMMAND_MEMORY_MASTER)
    window.map[0:4] = b"rom!"
    run_dma(client, 0x10_0000, BUFFER, 4, 0)  # reading a read-only window is fine
    run_dma(client, BUFFER, 0x10_0010, 4, edu.DMA_CMD_TO_RAM)
    assert window.map[0x10:0x14] == bytes(4)


def test_dma_after_unmap_fails(dma_client) -> None:
    client, source, target = dma_client
    client.dma_unmap(0x20_0000, 0x1000)
    source.map[0:4] = b"gone"
    run_dma(client, 0x10_0000, BUFFER, 4, 0)
    run_dma(client, BUFFER, 0x20_0000, 4, edu.DMA_CMD_TO_RAM)
    assert target.map[0:4] == bytes(4)


def test_reset_restores_power_on_registers(client: VfioUserClient) -> None:
    write(client, edu.REG_LIVENESS, 1)
    write(client, edu.REG_STATUS, edu.STATUS_IRQFACT)
    write(client, edu.REG_DMA_SRC, 0x1234, 8)
    write(client, edu.REG_IRQ_RAISE, 4)
    client.reset()
    for register in (edu.REG_LIVENESS, edu.REG_STATUS, edu.REG_IRQ_STATUS, edu.REG_FACTORIAL):
        assert read(client, register) == 0
    assert read(client, edu.REG_DMA_SRC, 8) == 0

