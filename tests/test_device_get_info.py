# SPDX-License-Identifier: BSD-3-Clause
"""DEVICE_GET_INFO (4): what QEMU requires of the reply, and the refusals (brief 2.4, 4.4)."""
from __future__ import annotations

import errno
import struct

import pytest

from conftest import assert_serving, expect_error, raw_request
from vfu_platform.protocol import messages as m
from vfu_platform.protocol.constants import Command

FLAGS_RESET, FLAGS_PCI, FLAGS_PLATFORM = 0x1, 0x2, 0x4


def info_payload(argsz: int = 16) -> bytes:
    return struct.pack("<IIII", argsz, 0, 0, 0)


def test_reply_describes_a_pci_function_with_reset(client):
    reply = raw_request(client, Command.DEVICE_GET_INFO, info_payload())
    assert reply.header.size == 32 and reply.fds == []  # QEMU's reply buffer: 32 bytes
    info = m.DeviceInfo.unpack(reply.body)
    assert info == m.DeviceInfo(16, FLAGS_PCI | FLAGS_RESET, 9, 5)
    assert not info.flags & FLAGS_PLATFORM


def test_larger_argsz_still_gets_16_bytes(client):
    reply = raw_request(client, Command.DEVICE_GET_INFO, info_payload(argsz=4096))
    assert len(reply.body) == 16
    assert m.DeviceInfo.unpack(reply.body).argsz == 16


def test_reply_is_within_qemu_limits(client):
    info = client.device_info()
    assert info.flags & FLAGS_PCI
    assert 8 <= info.num_regions <= 100
    assert 3 <= info.num_irqs <= 50


@pytest.mark.parametrize("length", [4, 8, 12, 15])
def test_short_payload_is_einval(client, length):
    expect_error(client, Command.DEVICE_GET_INFO, info_payload()[:length], errno.EINVAL)
    assert_serving(client)


@pytest.mark.parametrize("argsz", [0, 8, 15])
def test_argsz_below_16_is_einval(client, argsz):
    expect_error(client, Command.DEVICE_GET_INFO, info_payload(argsz), errno.EINVAL)
    assert_serving(client)
