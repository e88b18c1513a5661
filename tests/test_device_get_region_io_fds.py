# SPDX-License-Identifier: BSD-3-Clause
"""DEVICE_GET_REGION_IO_FDS (6): no ioeventfds are offered; the refusals follow lvu (brief 2.6, 4.4)."""
from __future__ import annotations

import errno
import struct

import pytest

from conftest import assert_serving, expect_error, raw_request
from vfu_platform.protocol import messages as m
from vfu_platform.protocol.constants import Command


def io_fds_payload(index: int, argsz: int = 16, flags: int = 0, count: int = 0) -> bytes:
    return struct.pack("<IIII", argsz, flags, index, count)


@pytest.mark.parametrize("index", [0, 1, 7], ids=["bar0", "irq-page", "config"])
def test_accessible_region_has_no_sub_regions(client, index):
    reply = raw_request(client, Command.DEVICE_GET_REGION_IO_FDS, io_fds_payload(index, argsz=1 << 20))
    assert not reply.header.is_error and reply.fds == []
    assert m.RegionIoFds.unpack(reply.body) == m.RegionIoFds(16, 0, index, 0)
    assert len(reply.body) == 16


@pytest.mark.parametrize("index", [2, 6, 8], ids=["absent-bar", "rom", "vga"])
def test_region_without_access_is_einval(client, index):
    expect_error(client, Command.DEVICE_GET_REGION_IO_FDS, io_fds_payload(index), errno.EINVAL)
    assert_serving(client)


@pytest.mark.parametrize("index", [9, 0xFFFF_FFFF])
def test_bad_index_is_einval(client, index):
    expect_error(client, Command.DEVICE_GET_REGION_IO_FDS, io_fds_payload(index), errno.EINVAL)
    assert_serving(client)


@pytest.mark.parametrize("flags, count", [(1, 0), (0x8000_0000, 0), (0, 1), (0, 40)])
def test_nonzero_flags_or_count_is_einval(client, flags, count):
    expect_error(client, Command.DEVICE_GET_REGION_IO_FDS, io_fds_payload(0, flags=flags, count=count), errno.EINVAL)
    assert_serving(client)


@pytest.mark.parametrize("argsz", [0, 15, (1 << 20) + 1])
def test_argsz_out_of_range_is_einval(client, argsz):
    expect_error(client, Command.DEVICE_GET_REGION_IO_FDS, io_fds_payload(0, argsz), errno.EINVAL)
    assert_serving(client)


@pytest.mark.parametrize("length", [4, 12, 15])
def test_short_payload_is_einval(client, length):
    expect_error(client, Command.DEVICE_GET_REGION_IO_FDS, io_fds_payload(0)[:length], errno.EINVAL)
    assert_serving(client)
