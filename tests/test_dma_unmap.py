# SPDX-License-Identifier: BSD-3-Clause
"""DMA_UNMAP (3): exact-match unmaps, UNMAP_ALL, and every refusal (brief 2.3, 4.3)."""
from __future__ import annotations

import errno
import os

import pytest

from conftest import assert_serving, expect_error, expect_no_reply_to, raw_request
from vfu_platform.protocol import messages as m
from vfu_platform.protocol.constants import Command

GET_DIRTY_BITMAP, UNMAP_ALL = 0x1, 0x2
PAGE = 0x1000
BASE = 0x100000


def unmap_payload(address: int, size: int, flags: int = 0, argsz: int = 24) -> bytes:
    return m.DmaUnmap(argsz, flags, address, size).pack()


def memfd(size: int = 4 * PAGE) -> int:
    fd = os.memfd_create("dma-test", os.MFD_CLOEXEC)
    os.ftruncate(fd, size)
    return fd


# ---------------------------------------------------------------- accepted
def test_unmap_replies_with_a_copy_of_the_request(client):
    client.dma_map(BASE, 4 * PAGE)
    reply = raw_request(client, Command.DMA_UNMAP, unmap_payload(BASE, 4 * PAGE))
    assert not reply.header.is_error
    assert reply.header.size == 40  # QEMU's reply buffer for DMA_UNMAP
    assert reply.body == unmap_payload(BASE, 4 * PAGE)


def test_unmap_with_a_larger_argsz(client):
    client.dma_map(BASE, PAGE)
    reply = raw_request(client, Command.DMA_UNMAP, unmap_payload(BASE, PAGE, argsz=1 << 20))
    assert m.DmaUnmap.unpack(reply.body) == m.DmaUnmap(24, 0, BASE, PAGE)


def test_unmapped_range_is_free_again(client):
    client.dma_map(BASE, 4 * PAGE)
    client.dma_unmap(BASE, 4 * PAGE)
    client.dma_map(BASE + PAGE, 8 * PAGE)
    client.dma_unmap(BASE + PAGE, 8 * PAGE)


def test_unmap_closes_the_window_fd(server, client):
    fd = memfd()
    client.dma_map(BASE, 4 * PAGE, fd=fd)
    os.close(fd)
    server.wait_fd_count(server.idle_fds + 2)
    client.dma_unmap(BASE, 4 * PAGE)
    server.wait_fd_count(server.idle_fds + 1)


def test_unmap_all_removes_every_window(server, client):
    fds = [memfd(), memfd()]
    client.dma_map(BASE, 4 * PAGE, fd=fds[0])
    client.dma_map(2 * BASE, 4 * PAGE, fd=fds[1])
    client.dma_map(3 * BASE, PAGE)
    for fd in fds:
        os.close(fd)
    reply = client.dma_unmap(0, 0, flags=UNMAP_ALL)
    assert reply == m.DmaUnmap(24, UNMAP_ALL, 0, 0)
    server.wait_fd_count(server.idle_fds + 1)
    for address in (BASE, 2 * BASE, 3 * BASE):
        expect_error(client, Command.DMA_UNMAP, unmap_payload(address, PAGE), errno.ENOENT)


def test_unmap_all_without_windows(client):
    client.dma_unmap(0, 0, flags=UNMAP_ALL)


# ---------------------------------------------------------------- not found
@pytest.mark.parametrize("address, size", [
    (5 * BASE, PAGE),            # never mapped
    (BASE, PAGE),                # the window's first page only
    (BASE, 8 * PAGE),            # larger than the window
    (BASE + PAGE, 4 * PAGE),     # same size, other start
], ids=["never-mapped", "prefix", "larger", "shifted"])
def test_no_exact_match_is_enoent(client, address, size):
    client.dma_map(BASE, 4 * PAGE)
    expect_error(client, Command.DMA_UNMAP, unmap_payload(address, size), errno.ENOENT)
    client.dma_unmap(BASE, 4 * PAGE)  # the window survived


def test_no_match_with_no_reply_gets_no_reply(client):
    expect_no_reply_to(client, Command.DMA_UNMAP, unmap_payload(BASE, PAGE))
    assert_serving(client)


# ---------------------------------------------------------------- refused
@pytest.mark.parametrize("address, size", [(BASE, 0), (0, PAGE), (BASE, 4 * PAGE)])
def test_unmap_all_with_an_address_or_size_is_einval(client, address, size):
    client.dma_map(BASE, 4 * PAGE)
    expect_error(client, Command.DMA_UNMAP, unmap_payload(address, size, UNMAP_ALL), errno.EINVAL)
    client.dma_unmap(BASE, 4 * PAGE)  # nothing was unmapped


@pytest.mark.parametrize("flags", [0x4, 0x8, UNMAP_ALL | 0x4, 0x8000_0000], ids=hex)
def test_unknown_flags_are_einval(client, flags):
    client.dma_map(BASE, PAGE)
    expect_error(client, Command.DMA_UNMAP, unmap_payload(BASE, PAGE, flags), errno.EINVAL)
    client.dma_unmap(BASE, PAGE)


@pytest.mark.parametrize("flags", [GET_DIRTY_BITMAP, GET_DIRTY_BITMAP | UNMAP_ALL])
def test_dirty_bitmap_without_logging_is_einval(client, flags):
    client.dma_map(BASE, PAGE)
    bitmap = m.DmaUnmap(40 + 8, flags, BASE, PAGE, bitmap_pgsize=PAGE, bitmap_size=8, bitmap=bytes(8)).pack()
    expect_error(client, Command.DMA_UNMAP, bitmap, errno.EINVAL)
    expect_error(client, Command.DMA_UNMAP, unmap_payload(BASE, PAGE, flags), errno.EINVAL)  # no bitmap header
    client.dma_unmap(BASE, PAGE)


@pytest.mark.parametrize("length", [8, 16, 23])
def test_short_payload_is_einval(client, length):
    expect_error(client, Command.DMA_UNMAP, unmap_payload(0, 0, UNMAP_ALL)[:length], errno.EINVAL)
    assert_serving(client)


@pytest.mark.parametrize("argsz", [0, 23, (1 << 20) + 1, 0xFFFF_FFFF])
def test_argsz_out_of_range_is_einval(client, argsz):
    client.dma_map(BASE, PAGE)
    expect_error(client, Command.DMA_UNMAP, unmap_payload(BASE, PAGE, argsz=argsz), errno.EINVAL)
    client.dma_unmap(BASE, PAGE)
