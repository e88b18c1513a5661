# SPDX-License-Identifier: BSD-3-Clause
"""DEVICE_RESET (13): power-on device state, DMA maps kept, no payload either way (brief 2.11)."""
from __future__ import annotations

import errno
import os
import struct

import pytest

from conftest import expect_error, expect_no_reply_to, raw_request
from vfu_platform.client import make_eventfd, wait_eventfd
from vfu_platform.protocol.constants import Command

BAR0, CONFIG = 0, 7
LIVENESS, DMA_SRC = 0x04, 0x80
COMMAND_REGISTER, BUS_MASTER = 0x04, 0x4
INTX, TRIGGER, DATA_NONE, DATA_EVENTFD = 0, 0x20, 0x1, 0x4
PAGE = 0x1000


def dirty(client) -> None:
    client.write32(BAR0, LIVENESS, 5)
    client.write64(BAR0, DMA_SRC, 0x1234)
    client.region_write(CONFIG, COMMAND_REGISTER, struct.pack("<H", BUS_MASTER))


def is_power_on(client) -> bool:
    command = struct.unpack("<H", client.region_read(CONFIG, COMMAND_REGISTER, 2))[0]
    return client.read32(BAR0, LIVENESS) == 0 and client.read64(BAR0, DMA_SRC) == 0 and not command & BUS_MASTER


def test_reset_reply_is_header_only(client):
    reply = raw_request(client, Command.DEVICE_RESET)
    assert not reply.header.is_error
    assert reply.header.size == 16 and reply.body == b"" and reply.fds == []


def test_reset_restores_power_on_state(client):
    dirty(client)
    assert not is_power_on(client)
    client.reset()
    assert is_power_on(client)


def test_reset_keeps_dma_maps(server, client):
    fd = os.memfd_create("guest-ram", os.MFD_CLOEXEC)
    os.ftruncate(fd, 4 * PAGE)
    client.dma_map(0x100000, 4 * PAGE, fd=fd)
    client.dma_map(0x200000, PAGE)
    os.close(fd)
    client.reset()
    server.wait_fd_count(server.idle_fds + 2)  # the window's fd is still held
    client.dma_unmap(0x100000, 4 * PAGE)
    client.dma_unmap(0x200000, PAGE)


def test_interrupts_can_be_rewired_after_reset(client):
    """QEMU's sequence: tear INTx down, reset, wire it again."""
    trigger = make_eventfd()
    try:
        client.set_irqs(INTX, TRIGGER | DATA_NONE, 0, 0)
        client.reset()
        client.set_irqs(INTX, TRIGGER | DATA_EVENTFD, 0, 1, [trigger])
        client.write32(BAR0, 0x60, 1)  # edu: raise its interrupt
        assert wait_eventfd(trigger, 2.0) == 1
        client.write32(BAR0, 0x64, 1)
    finally:
        os.close(trigger)


def test_repeated_resets(client):
    for _ in range(3):
        client.reset()
    assert is_power_on(client)


def test_no_reply_reset_still_resets(client):
    dirty(client)
    expect_no_reply_to(client, Command.DEVICE_RESET, b"")
    assert is_power_on(client)


@pytest.mark.parametrize("payload", [b"\0", bytes(16)], ids=["1-byte", "16-bytes"])
def test_reset_with_a_payload_is_einval_and_resets_nothing(client, payload):
    dirty(client)
    expect_error(client, Command.DEVICE_RESET, payload, errno.EINVAL)
    assert client.read32(BAR0, LIVENESS) == ~5 & 0xFFFF_FFFF
