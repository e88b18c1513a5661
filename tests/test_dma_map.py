# SPDX-License-Identifier: BSD-3-Clause
"""DMA_MAP (2): windows with and without an fd, idempotent duplicates, and every refusal (brief 2.2, 4.3)."""
from __future__ import annotations

import errno
import os

import pytest

from conftest import assert_serving, expect_error, raw_request
from vfu_platform.client import make_eventfd
from vfu_platform.protocol import messages as m
from vfu_platform.protocol.codec import encode
from vfu_platform.protocol.constants import Command, MsgFlags

READ, WRITE = 0x1, 0x2
RW = READ | WRITE
PAGE = 0x1000
TIB = 1 << 40


def memfd(size: int = 4 * PAGE) -> int:
    fd = os.memfd_create("dma-test", os.MFD_CLOEXEC)
    os.ftruncate(fd, size)
    return fd


def map_payload(address: int, size: int, flags: int = RW, offset: int = 0, argsz: int = 32) -> bytes:
    return m.DmaMap(argsz, flags, offset, address, size).pack()


def dma_map(client, address: int, size: int, flags: int = RW, offset: int = 0, fds=()) -> None:
    reply = raw_request(client, Command.DMA_MAP, map_payload(address, size, flags, offset), fds)
    assert not reply.header.is_error, f"DMA_MAP failed with errno {reply.header.error}"
    assert reply.header.size == 16 and reply.fds == []  # header only


# ---------------------------------------------------------------- accepted
def test_map_without_fd(client):
    dma_map(client, 0x10000, 4 * PAGE)
    client.dma_unmap(0x10000, 4 * PAGE)


def test_map_with_fd_keeps_it_until_unmap(server, client):
    fd = memfd()
    dma_map(client, 0x10000, 4 * PAGE, fds=[fd])
    os.close(fd)
    server.wait_fd_count(server.idle_fds + 2)  # the session socket and the window's fd
    client.dma_unmap(0x10000, 4 * PAGE)
    server.wait_fd_count(server.idle_fds + 1)


def test_map_with_fd_at_an_offset(server, client):
    fd = memfd(8 * PAGE)
    dma_map(client, 0x20000, 4 * PAGE, offset=4 * PAGE, fds=[fd])
    os.close(fd)
    client.dma_unmap(0x20000, 4 * PAGE)


@pytest.mark.parametrize("flags", [READ, WRITE, 0])
def test_map_with_any_protection(client, flags):
    fd = memfd()
    dma_map(client, 0x10000, 4 * PAGE, flags=flags, fds=[fd])
    os.close(fd)
    client.dma_unmap(0x10000, 4 * PAGE)


def test_read_only_fd_can_be_mapped_read_only(client):
    fd = memfd()
    read_only = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY)
    dma_map(client, 0x10000, 4 * PAGE, flags=READ, fds=[read_only])
    os.close(read_only)
    os.close(fd)


def test_exact_duplicate_without_fd_is_accepted(client):
    dma_map(client, 0x10000, PAGE)
    dma_map(client, 0x10000, PAGE)
    client.dma_unmap(0x10000, PAGE)
    expect_error(client, Command.DMA_UNMAP, m.DmaUnmap(24, 0, 0x10000, PAGE).pack(), errno.ENOENT)


def test_exact_duplicate_with_the_same_file_is_accepted_and_its_fd_closed(server, client):
    fd = memfd()
    dma_map(client, 0x10000, 4 * PAGE, fds=[fd])
    dma_map(client, 0x10000, 4 * PAGE, fds=[fd])
    os.close(fd)
    server.wait_fd_count(server.idle_fds + 2)  # one window, one fd
    client.dma_unmap(0x10000, 4 * PAGE)
    server.wait_fd_count(server.idle_fds + 1)


def test_adjacent_windows_do_not_overlap(client):
    dma_map(client, 0x10000, PAGE)
    dma_map(client, 0x10000 + PAGE, PAGE)
    dma_map(client, 0x10000 - PAGE, PAGE)


def test_largest_window_is_8_tib(client):
    dma_map(client, 0, 8 * TIB)
    client.dma_unmap(0, 8 * TIB)


def test_window_may_end_at_the_top_of_the_address_space(client):
    dma_map(client, (1 << 64) - PAGE, PAGE)


def test_max_dma_maps_windows_then_einval(client):
    limit = client.server_caps.max_dma_maps
    assert limit == 65535
    for first in range(0, limit, 4096):  # in pieces: each send is done long before the send timeout
        client.send_raw(b"".join(
            encode(i & 0xFFFF, Command.DMA_MAP, map_payload(i * PAGE, PAGE), MsgFlags.NO_REPLY)
            for i in range(first, min(first + 4096, limit))
        ))
    dma_map(client, (limit - 1) * PAGE, PAGE)  # an exact duplicate is still fine
    expect_error(client, Command.DMA_MAP, map_payload(limit * PAGE, PAGE), errno.EINVAL)
    client.dma_unmap(0, PAGE)
    dma_map(client, limit * PAGE, PAGE)


# ---------------------------------------------------------------- refused
@pytest.mark.parametrize("payload", [map_payload(0x10000, PAGE)[:24], map_payload(0x10000, PAGE)[:31]],
                         ids=["24-bytes", "31-bytes"])
def test_short_payload_is_einval(client, payload):
    expect_error(client, Command.DMA_MAP, payload, errno.EINVAL)
    assert_serving(client)


@pytest.mark.parametrize("argsz", [0, 16, 31])
def test_argsz_below_32_is_einval(client, argsz):
    expect_error(client, Command.DMA_MAP, map_payload(0x10000, PAGE, argsz=argsz), errno.EINVAL)
    dma_map(client, 0x10000, PAGE)  # nothing was mapped


@pytest.mark.parametrize("flags", [0x4, 0x8, RW | 0x4, 0x100, 0x8000_0000], ids=hex)
def test_unknown_flags_are_einval(client, flags):
    expect_error(client, Command.DMA_MAP, map_payload(0x10000, PAGE, flags), errno.EINVAL)
    dma_map(client, 0x10000, PAGE)


def test_size_zero_is_einval(client):
    expect_error(client, Command.DMA_MAP, map_payload(0x10000, 0), errno.EINVAL)
    assert_serving(client)


@pytest.mark.parametrize("size", [8 * TIB + PAGE, 1 << 63, (1 << 64) - PAGE], ids=hex)
def test_size_over_8_tib_is_enospc(client, size):
    expect_error(client, Command.DMA_MAP, map_payload(0, size), errno.ENOSPC)
    assert_serving(client)


def test_window_wrapping_past_2_64_is_einval(client):
    expect_error(client, Command.DMA_MAP, map_payload((1 << 64) - PAGE, 2 * PAGE), errno.EINVAL)
    assert_serving(client)


@pytest.mark.parametrize("address, size", [
    (0x10000, 2 * PAGE),             # same start, larger
    (0x10000 + PAGE, PAGE),          # inside
    (0x10000 - PAGE, 2 * PAGE),      # straddles the start
    (0x10000 + 3 * PAGE, 2 * PAGE),  # straddles the end
    (0, 0x100000),                   # covers it
], ids=["same-start", "inside", "straddle-start", "straddle-end", "covering"])
def test_overlap_is_einval(client, address, size):
    dma_map(client, 0x10000, 4 * PAGE)
    expect_error(client, Command.DMA_MAP, map_payload(address, size), errno.EINVAL)
    client.dma_unmap(0x10000, 4 * PAGE)  # the original window is intact


def test_same_range_with_other_protection_is_einval(client):
    dma_map(client, 0x10000, PAGE, RW)
    expect_error(client, Command.DMA_MAP, map_payload(0x10000, PAGE, READ), errno.EINVAL)
    assert_serving(client)


def test_same_range_with_an_fd_instead_of_none_is_einval(server, client):
    dma_map(client, 0x10000, 4 * PAGE)
    fd = memfd()
    expect_error(client, Command.DMA_MAP, map_payload(0x10000, 4 * PAGE), errno.EINVAL, [fd])
    os.close(fd)
    server.wait_fd_count(server.idle_fds + 1)


def test_same_range_with_another_file_or_offset_is_einval(server, client):
    first, second = memfd(8 * PAGE), memfd(8 * PAGE)
    dma_map(client, 0x10000, 4 * PAGE, fds=[first])
    expect_error(client, Command.DMA_MAP, map_payload(0x10000, 4 * PAGE), errno.EINVAL, [second])
    expect_error(client, Command.DMA_MAP, map_payload(0x10000, 4 * PAGE, offset=PAGE), errno.EINVAL, [first])
    os.close(first)
    os.close(second)
    server.wait_fd_count(server.idle_fds + 2)  # only the mapped window's fd


def test_two_fds_are_einval_and_both_closed(server, client):
    fds = [memfd(), memfd()]
    expect_error(client, Command.DMA_MAP, map_payload(0x10000, 4 * PAGE), errno.EINVAL, fds)
    for fd in fds:
        os.close(fd)
    server.wait_fd_count(server.idle_fds + 1)
    dma_map(client, 0x10000, 4 * PAGE)


def test_fd_smaller_than_the_window_is_einval(server, client):
    fd = memfd(2 * PAGE)
    expect_error(client, Command.DMA_MAP, map_payload(0x10000, 4 * PAGE), errno.EINVAL, [fd])
    expect_error(client, Command.DMA_MAP, map_payload(0x10000, 2 * PAGE, offset=PAGE), errno.EINVAL, [fd])
    os.close(fd)
    server.wait_fd_count(server.idle_fds + 1)


def test_unaligned_fd_offset_is_einval(server, client):
    fd = memfd()
    expect_error(client, Command.DMA_MAP, map_payload(0x10000, PAGE, offset=0x800), errno.EINVAL, [fd])
    os.close(fd)
    server.wait_fd_count(server.idle_fds + 1)


def test_failed_mmap_gives_its_errno(server, client):
    fd = memfd()
    read_only = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY)
    expect_error(client, Command.DMA_MAP, map_payload(0x10000, PAGE, RW), errno.EACCES, [read_only])
    event = make_eventfd()
    expect_error(client, Command.DMA_MAP, map_payload(0x10000, PAGE, RW), errno.ENODEV, [event])
    for each in (fd, read_only, event):
        os.close(each)
    server.wait_fd_count(server.idle_fds + 1)
    dma_map(client, 0x10000, PAGE)


def test_windows_are_dropped_when_the_client_goes(server, client):
    fd = memfd()
    dma_map(client, 0x10000, 4 * PAGE, fds=[fd])
    os.close(fd)
    client = server.reconnect(client)
    try:
        expect_error(client, Command.DMA_UNMAP, m.DmaUnmap(24, 0, 0x10000, 4 * PAGE).pack(), errno.ENOENT)
        dma_map(client, 0x10000, PAGE)  # no overlap with the old client's window
    finally:
        client.close()
