# SPDX-License-Identifier: BSD-3-Clause
"""DEVICE_GET_REGION_INFO (5): the region table, the argsz/caps retry, the mmap fd (brief 2.5, 4.4).

Served device: gpio, whose BAR1 is a 4 KiB SRAM backed by a memfd and offered for mmap.
"""
from __future__ import annotations

import errno
import mmap
import os
import struct

import pytest

from conftest import assert_serving, expect_error, raw_request
from vfu_platform.protocol import messages as m
from vfu_platform.protocol.caps import Capabilities
from vfu_platform.protocol.constants import Command

SERVER_DEVICE = "gpio"

READ, WRITE, MMAP, CAPS = 0x1, 0x2, 0x4, 0x8
RW = READ | WRITE
SRAM = 1  # BAR1
SPARSE_CAP_LEN = 8 + 8 + 16  # cap header, nr_areas + reserved, one area

# index: (flags, size) as gpio is presented
GPIO_REGIONS = {
    0: (RW, 0x1000),          # registers: trapped (they hold the IRQ acknowledge registers)
    1: (RW | MMAP, 0x1000),   # SRAM
    2: (RW, 0x1000),          # the IRQ page
    3: (0, 0), 4: (0, 0), 5: (0, 0),
    6: (0, 0),                # ROM: absent
    7: (RW, 256),             # config space
    8: (0, 0),                # VGA: absent
}


def info_payload(index: int, argsz: int = 32) -> bytes:
    return m.RegionInfo(argsz, index=index).pack()


def request_info(client, index: int, argsz: int = 32):
    reply = raw_request(client, Command.DEVICE_GET_REGION_INFO, info_payload(index, argsz))
    assert not reply.header.is_error, f"errno {reply.header.error}"
    assert reply.header.size <= 16 + argsz  # QEMU's reply buffer is argsz + 16
    return reply


@pytest.mark.parametrize("index", GPIO_REGIONS)
def test_region_table(client, index):
    reply = request_info(client, index, argsz=256)
    try:
        info = m.RegionInfo.unpack(reply.body)
        flags, size = GPIO_REGIONS[index]
        assert (info.index, info.flags & ~CAPS, info.size) == (index, flags, size)
        assert size & (size - 1) == 0  # QEMU aborts on a BAR that is not a power of two
        assert len(reply.fds) == (1 if flags & MMAP else 0)
    finally:
        reply.close_fds()


def test_small_argsz_gets_32_bytes_the_size_needed_and_no_fd(client):
    reply = request_info(client, SRAM, argsz=32)
    assert len(reply.body) == 32 and reply.fds == []
    argsz, flags, index, cap_offset, size, _offset = struct.unpack("<IIIIQQ", reply.body)
    assert argsz == 32 + SPARSE_CAP_LEN
    assert flags == RW | MMAP  # no CAPS: the caps are not in this reply
    assert (index, cap_offset, size) == (SRAM, 0, 0x1000)


@pytest.mark.parametrize("argsz", [32 + SPARSE_CAP_LEN, 4096])
def test_retry_with_the_size_needed_gets_the_sparse_cap_and_one_fd(client, argsz):
    reply = request_info(client, SRAM, argsz=argsz)
    try:
        assert len(reply.body) == 32 + SPARSE_CAP_LEN  # never more than needed
        info = m.RegionInfo.unpack(reply.body)
        assert info.flags == RW | MMAP | CAPS
        assert info.cap_offset == 32 and info.argsz == 32 + SPARSE_CAP_LEN
        assert info.caps == (m.SparseMmapCap(((0, 0x1000),)),)
        assert len(reply.fds) == 1
    finally:
        reply.close_fds()


def test_regions_without_caps_ignore_a_large_argsz(client):
    reply = request_info(client, 0, argsz=4096)
    assert len(reply.body) == 32 and m.RegionInfo.unpack(reply.body).argsz == 32


def test_sending_the_fd_leaks_nothing(server, client):
    for _ in range(3):
        _info, fd = client.region_info(SRAM)
        os.close(fd)
    server.wait_fd_count(server.idle_fds + 1)


def test_mmapped_sram_and_region_access_see_the_same_bytes(client):
    info, fd = client.region_info(SRAM)
    ((area_offset, area_size),) = info.sparse_areas
    with mmap.mmap(fd, area_size, mmap.MAP_SHARED, offset=info.offset + area_offset) as sram:
        os.close(fd)
        client.region_write(SRAM, 0x10, b"written by REGION_WRITE")
        assert sram[0x10 : 0x10 + 23] == b"written by REGION_WRITE"
        sram[0x800:0x808] = b"mmapped!"
        assert client.region_read(SRAM, 0x800, 8) == b"mmapped!"
        assert client.read32(SRAM, 0x800) == int.from_bytes(b"mmap", "little")


def test_client_that_takes_no_fds_gets_none(server, client):
    client.close()
    server.wait_idle()
    with server.connect(caps=Capabilities(max_msg_fds=0)) as no_fds:
        info, fd = no_fds.region_info(SRAM)
        assert fd is None and info.flags & MMAP


# ---------------------------------------------------------------- refused
@pytest.mark.parametrize("index", [9, 10, 0xFFFF_FFFF])
def test_index_past_the_regions_is_einval(client, index):
    expect_error(client, Command.DEVICE_GET_REGION_INFO, info_payload(index), errno.EINVAL)
    assert_serving(client)


@pytest.mark.parametrize("argsz", [0, 16, 31])
def test_argsz_below_32_is_einval(client, argsz):
    expect_error(client, Command.DEVICE_GET_REGION_INFO, info_payload(SRAM, argsz), errno.EINVAL)
    assert_serving(client)


@pytest.mark.parametrize("length", [8, 16, 31])
def test_short_payload_is_einval(client, length):
    expect_error(client, Command.DEVICE_GET_REGION_INFO, info_payload(SRAM)[:length], errno.EINVAL)
    assert_serving(client)


# ---------------------------------------------------------------- the edu layout
def test_edu_regions(start_server):
    edu = start_server("edu")
    with edu.connect() as client:
        sizes = {i: client.region_info(i) for i in range(9)}
        assert {i: (info.flags, info.size) for i, (info, _fd) in sizes.items()} == {
            0: (RW, 1 << 20), 1: (RW, 0x1000), 2: (0, 0), 3: (0, 0), 4: (0, 0), 5: (0, 0),
            6: (0, 0), 7: (RW, 256), 8: (0, 0),
        }
        assert all(fd is None for _info, fd in sizes.values())
