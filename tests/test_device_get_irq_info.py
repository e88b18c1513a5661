# SPDX-License-Identifier: BSD-3-Clause
"""DEVICE_GET_IRQ_INFO (7): the five PCI IRQ indexes, and the refusals (brief 2.7, 4.4)."""
from __future__ import annotations

import errno
import struct

import pytest

from conftest import assert_serving, expect_error, raw_request
from vfu_platform.protocol import messages as m
from vfu_platform.protocol.constants import Command

EVENTFD, MASKABLE, AUTOMASKED, NORESIZE = 0x1, 0x2, 0x4, 0x8
INTX, MSI, MSIX, ERR, REQ = range(5)

# index: (flags, count) for edu in INTx mode
EDU_IRQS = {
    INTX: (EVENTFD | MASKABLE | AUTOMASKED, 1),  # the interrupt pin is 1
    MSI: (EVENTFD, 0),
    MSIX: (EVENTFD, 0),
    ERR: (EVENTFD, 1),
    REQ: (EVENTFD, 0),
}


def irq_payload(index: int, argsz: int = 16) -> bytes:
    return struct.pack("<IIII", argsz, 0, index, 0)


@pytest.mark.parametrize("index", EDU_IRQS, ids=["intx", "msi", "msix", "err", "req"])
def test_irq_index(client, index):
    reply = raw_request(client, Command.DEVICE_GET_IRQ_INFO, irq_payload(index))
    assert reply.header.size == 32 and reply.fds == []  # QEMU's reply buffer: 32 bytes
    flags, count = EDU_IRQS[index]
    assert m.IrqInfo.unpack(reply.body) == m.IrqInfo(16, flags, index, count)


def test_larger_argsz_still_gets_16_bytes(client):
    reply = raw_request(client, Command.DEVICE_GET_IRQ_INFO, irq_payload(INTX, argsz=1024))
    assert len(reply.body) == 16 and m.IrqInfo.unpack(reply.body).argsz == 16


def test_msix_mode_has_one_vector_per_platform_irq(start_server):
    gpio = start_server("gpio", "--irq-mode", "msix")
    with gpio.connect() as client:
        info = client.irq_info(MSIX)
        assert (info.flags, info.count) == (EVENTFD, 5)  # 4 level lines and the edge line


@pytest.mark.parametrize("index", [5, 6, 0xFFFF_FFFF])
def test_index_past_req_is_einval(client, index):
    expect_error(client, Command.DEVICE_GET_IRQ_INFO, irq_payload(index), errno.EINVAL)
    assert_serving(client)


@pytest.mark.parametrize("argsz", [0, 8, 15])
def test_argsz_below_16_is_einval(client, argsz):
    expect_error(client, Command.DEVICE_GET_IRQ_INFO, irq_payload(INTX, argsz), errno.EINVAL)
    assert_serving(client)


@pytest.mark.parametrize("length", [4, 12, 15])
def test_short_payload_is_einval(client, length):
    expect_error(client, Command.DEVICE_GET_IRQ_INFO, irq_payload(INTX)[:length], errno.EINVAL)
    assert_serving(client)
