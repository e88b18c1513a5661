# SPDX-License-Identifier: BSD-3-Clause
"""The gpio/timer model served over vfio-user: its registers (BAR0) and its SRAM (BAR1),
which the client maps through the fd that comes with GET_REGION_INFO."""
from __future__ import annotations

import errno
import mmap
import os
from collections.abc import Callable, Iterator

import pytest

from vfu_platform.testing import ProcessServer, install_intx, intx_unmask, irq_reg
from vfu_platform import vfio_abi
from vfu_platform.backends.sim import gpio
from vfu_platform.bridge import irq_page
from vfu_platform.client import VfioUserClient
from vfu_platform.protocol import messages as m
from vfu_platform.protocol.constants import Command

REGS = 0
SRAM = 1


@pytest.fixture
def client(gpio_server: ProcessServer) -> VfioUserClient:
    return gpio_server.connect()


@pytest.fixture
def sram_map(client: VfioUserClient) -> Iterator[mmap.mmap]:
    info, fd = client.region_info(SRAM)
    assert fd is not None
    mapping = mmap.mmap(fd, info.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=info.offset)
    os.close(fd)
    yield mapping
    mapping.close()


# --------------------------------------------------------------------------- registers


def test_identity_registers(client: VfioUserClient) -> None:
    assert client.read32(REGS, gpio.REG_ID) == gpio.GPIO_ID
    assert client.read32(REGS, gpio.REG_NLINES) == 4


def test_scratch_is_read_write_with_partial_accesses(client: VfioUserClient) -> None:
    client.write32(REGS, gpio.REG_SCRATCH, 0x1122_3344)
    assert client.read32(REGS, gpio.REG_SCRATCH) == 0x1122_3344
    client.region_write(REGS, gpio.REG_SCRATCH + 1, b"\xaa")
    client.region_write(REGS, gpio.REG_SCRATCH + 2, b"\xbb\xcc")
    assert client.read32(REGS, gpio.REG_SCRATCH) == 0xCCBB_AA44
    assert client.region_read(REGS, gpio.REG_SCRATCH + 2, 2) == b"\xbb\xcc"
    assert client.region_read(REGS, gpio.REG_SCRATCH + 3, 1) == b"\xcc"


def test_8_byte_access_is_two_words(client: VfioUserClient) -> None:
    client.write64(REGS, gpio.REG_SCRATCH, 0x0000_0099_DEAD_BEEF)  # SCRATCH, then 0x0c (nothing)
    assert client.read32(REGS, gpio.REG_SCRATCH) == 0xDEAD_BEEF
    assert client.read64(REGS, gpio.REG_ID) == 4 << 32 | gpio.GPIO_ID


def test_raise_status_ack(client: VfioUserClient) -> None:
    client.write32(REGS, gpio.REG_RAISE, 0b1010)
    assert client.read32(REGS, gpio.REG_STATUS) == 0b1010
    for line in range(4):
        assert client.read32(REGS, gpio.line_register(line, gpio.LINE_STATUS)) == (0b1010 >> line) & 1
    client.write32(REGS, gpio.REG_ACK, 0b0010)  # write-1-to-clear
    assert client.read32(REGS, gpio.REG_STATUS) == 0b1000
    client.write32(REGS, gpio.line_register(3, gpio.LINE_ACK), 1)
    client.write32(REGS, gpio.line_register(0, gpio.LINE_RAISE), 1)
    assert client.read32(REGS, gpio.REG_STATUS) == 0b0001


def test_raise_of_lines_past_the_last_is_ignored(client: VfioUserClient) -> None:
    client.write32(REGS, gpio.REG_RAISE, 0xFFFF_FFF0)
    assert client.read32(REGS, gpio.REG_STATUS) == 0


@pytest.mark.parametrize("offset", [gpio.REG_RAISE, gpio.REG_ACK, gpio.REG_EDGE_PULSE, 0x20, 0x3C, 0x4C, 0x500, 0xFFC])
def test_write_only_and_unknown_registers_read_zero(client: VfioUserClient, offset: int) -> None:
    assert client.read32(REGS, offset) == 0


def test_line_registers_past_the_last_line_read_zero(client: VfioUserClient) -> None:
    client.write32(REGS, gpio.line_register(4, gpio.LINE_RAISE), 1)
    assert client.read32(REGS, gpio.line_register(4, gpio.LINE_STATUS)) == 0
    assert client.read32(REGS, gpio.REG_STATUS) == 0


def test_timer_one_shot_raises_its_line(client: VfioUserClient, vfu_eventfds) -> None:
    (trigger,) = vfu_eventfds(1)
    install_intx(client, trigger)
    client.write32(REGS, gpio.REG_TIMER_LINE, 2)
    client.write32(REGS, gpio.REG_TIMER_DELAY_US, 300_000)
    client.write32(REGS, gpio.REG_TIMER_CTRL, gpio.TIMER_ENABLE)
    assert client.read32(REGS, gpio.REG_TIMER_CTRL) == gpio.TIMER_ENABLE  # armed, not yet expired
    trigger.expect_none(what="timer IRQ before the delay")
    trigger.expect_one(what="timer IRQ")
    assert client.read32(REGS, gpio.REG_STATUS) == 0b100
    assert irq_reg(client, "gpio", irq_page.IRQ_ACTIVE) == 2
    assert client.read32(REGS, gpio.REG_TIMER_CTRL) == 0  # one-shot: disabled after expiry


def test_timer_periodic_keeps_raising(client: VfioUserClient, vfu_eventfds) -> None:
    (trigger,) = vfu_eventfds(1)
    install_intx(client, trigger)
    client.write32(REGS, gpio.REG_TIMER_LINE, 1)
    client.write32(REGS, gpio.REG_TIMER_DELAY_US, 1000)
    client.write32(REGS, gpio.REG_TIMER_CTRL, gpio.TIMER_ENABLE | gpio.TIMER_PERIODIC)
    for _ in range(3):
        trigger.expect_one(what="periodic timer IRQ")
        client.write32(REGS, gpio.line_register(1, gpio.LINE_ACK), 1)
        intx_unmask(client)
    client.write32(REGS, gpio.REG_TIMER_CTRL, 0)
    assert client.read32(REGS, gpio.REG_TIMER_CTRL) == 0


def test_timer_stopped_before_expiry_raises_nothing(client: VfioUserClient, vfu_eventfds) -> None:
    (trigger,) = vfu_eventfds(1)
    install_intx(client, trigger)
    client.write32(REGS, gpio.REG_TIMER_DELAY_US, 50_000)
    client.write32(REGS, gpio.REG_TIMER_CTRL, gpio.TIMER_ENABLE)
    client.write32(REGS, gpio.REG_TIMER_CTRL, 0)
    trigger.expect_none(wait=0.1)
    assert client.read32(REGS, gpio.REG_STATUS) == 0


def test_model_options_from_the_command_line(vfu_server: Callable[..., ProcessServer]) -> None:
    client = vfu_server("gpio", extra=["-o", "lines=6", "-o", "edge=false"]).connect()
    assert client.read32(REGS, gpio.REG_NLINES) == 6
    assert irq_reg(client, "gpio", irq_page.IRQ_LINES) == 6


# --------------------------------------------------------------------------- SRAM


def test_sram_region_info_offers_an_mmap_fd(client: VfioUserClient) -> None:
    info, fd = client.region_info(SRAM)
    assert fd is not None
    try:
        assert info.size == gpio.SRAM_SIZE
        assert info.flags & vfio_abi.REGION_FLAG_MMAP
        assert info.flags & vfio_abi.REGION_FLAG_READ and info.flags & vfio_abi.REGION_FLAG_WRITE
        assert info.sparse_areas == ((0, gpio.SRAM_SIZE),)
        assert info.offset % mmap.PAGESIZE == 0
        assert os.fstat(fd).st_size >= info.offset + info.size
    finally:
        os.close(fd)


def test_register_bar_has_no_mmap(client: VfioUserClient) -> None:
    info, fd = client.region_info(REGS)
    assert fd is None
    assert not info.flags & vfio_abi.REGION_FLAG_MMAP


def test_sram_writes_through_the_mapping_are_read_over_the_socket(client: VfioUserClient, sram_map: mmap.mmap) -> None:
    sram_map[0x100:0x108] = b"mmapped!"
    assert client.region_read(SRAM, 0x100, 8) == b"mmapped!"


def test_sram_writes_over_the_socket_show_in_the_mapping(client: VfioUserClient, sram_map: mmap.mmap) -> None:
    client.region_write(SRAM, 0xFF0, b"0123456789abcdef")
    assert sram_map[0xFF0:0x1000] == b"0123456789abcdef"


def test_sram_fd_cannot_be_resized(client: VfioUserClient) -> None:
    info, fd = client.region_info(SRAM)
    assert fd is not None
    try:
        with pytest.raises(PermissionError) as error:
            os.ftruncate(fd, 0)  # a client shrinking it would make the server fault
        assert error.value.errno == errno.EPERM
    finally:
        os.close(fd)
    client.region_write(SRAM, 0xFFC, b"ok!!")
    assert client.region_read(SRAM, 0xFFC, 4) == b"ok!!"


def test_sram_survives_the_client_and_clears_on_reset(gpio_server: ProcessServer) -> None:
    with gpio_server.connect() as first:
        first.region_write(SRAM, 0, b"kept")
    second = gpio_server.connect()
    assert second.region_read(SRAM, 0, 4) == b"kept"
    second.reset()
    assert second.region_read(SRAM, 0, 4) == bytes(4)


def test_region_info_with_small_argsz_omits_caps_and_fd(client: VfioUserClient) -> None:
    reply = client.request(Command.DEVICE_GET_REGION_INFO, m.RegionInfo(32, index=SRAM).pack())
    info = m.RegionInfo.unpack(reply.body)
    assert info.argsz > 32  # the size needed for the caps
    assert reply.fds == []
    assert not info.flags & vfio_abi.REGION_FLAG_CAPS
