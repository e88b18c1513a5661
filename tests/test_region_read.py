# SPDX-License-Identifier: BSD-3-Clause
"""REGION_READ (9): BAR, IRQ page and config reads, the reply layout, and the refusals (brief 2.9, 4.6)."""
from __future__ import annotations

import errno
import struct

import pytest

from conftest import assert_serving, expect_error, expect_no_reply_to, raw_request
from vfu_platform.protocol import messages as m
from vfu_platform.protocol.constants import Command

# Run against a traced server (general path) and an untraced one (REGION_READ/WRITE fast path).
BOTH_PATHS = True

BAR0, IRQ_PAGE, CONFIG = 0, 1, 7
BAR0_SIZE = 1 << 20
MAX_DATA = 1 << 20
EDU_ID = 0x010000ED


def read_payload(region: int, offset: int, count: int) -> bytes:
    return m.RegionAccess(offset, region, count).pack()


def test_edu_identification(client):
    assert client.read32(BAR0, 0x00) == EDU_ID


def test_reply_echoes_the_access_and_carries_count_bytes(client):
    reply = raw_request(client, Command.REGION_READ, read_payload(BAR0, 0x00, 4))
    assert reply.header.size == 32 + 4  # QEMU's reply buffer: 32 + count
    assert reply.body == read_payload(BAR0, 0x00, 4) + struct.pack("<I", EDU_ID)
    assert reply.fds == []


def test_trailing_bytes_after_the_access_header_are_ignored(client):
    # libvfio-user checks a READ's payload only for its 16-byte access header; both of the
    # server's paths (framed and fast) must answer it the same way.
    reply = raw_request(client, Command.REGION_READ, read_payload(BAR0, 0x00, 4) + b"\xaa" * 4)
    assert not reply.header.is_error
    access = m.RegionAccess.unpack(reply.body)
    assert (access.offset, access.region, access.count) == (0x00, BAR0, 4)
    assert struct.unpack("<I", access.data) == (0x010000ED,)


def test_liveness_reads_the_inverse_of_the_last_write(client):
    client.write32(BAR0, 0x04, 0x12345678)
    assert client.read32(BAR0, 0x04) == ~0x12345678 & 0xFFFF_FFFF


def test_eight_byte_register(client):
    client.write64(BAR0, 0x80, 0x1122_3344_5566_7788)
    assert client.read64(BAR0, 0x80) == 0x1122_3344_5566_7788


def test_count_0_echoes_the_access_header(client):
    reply = raw_request(client, Command.REGION_READ, read_payload(BAR0, 0x10, 0))
    assert not reply.header.is_error
    assert reply.body == read_payload(BAR0, 0x10, 0)


def test_irq_page_registers(client):
    assert client.read32(IRQ_PAGE, 0xD00) == 0x50554656  # "VFUP"
    assert client.read32(IRQ_PAGE, 0xC08) == 1  # edu has one platform IRQ
    assert client.read32(IRQ_PAGE, 0xC00) == 0xFFFF_FFFF  # none active


def test_whole_config_space_in_one_read(client):
    config = client.region_read(CONFIG, 0, 256)
    vendor, device = struct.unpack_from("<HH", config, 0)
    assert (vendor, device) == (0x1234, 0x11E8)
    assert config[0x3D] == 1  # interrupt pin INTA
    bar0, bar1 = struct.unpack_from("<II", config, 0x10)
    assert bar0 & 0x1 == 0 and bar1 & 0x1 == 0  # memory BARs


def test_read_up_to_the_end_of_the_region(client):
    assert len(client.region_read(CONFIG, 252, 4)) == 4
    assert len(client.region_read(IRQ_PAGE, 0xFFC, 4)) == 4


def test_max_data_xfer_size_in_one_read(client):
    reply = raw_request(client, Command.REGION_READ, read_payload(BAR0, 0, MAX_DATA))
    assert reply.header.size == 32 + MAX_DATA
    assert len(reply.body) == 16 + MAX_DATA


def test_no_reply_read_gets_no_reply(client):
    expect_no_reply_to(client, Command.REGION_READ, read_payload(BAR0, 0, 4))
    assert_serving(client)


# ---------------------------------------------------------------- refused
@pytest.mark.parametrize("length", [8, 12, 15])
def test_short_payload_is_einval(client, length):
    expect_error(client, Command.REGION_READ, read_payload(BAR0, 0, 4)[:length], errno.EINVAL)
    assert_serving(client)


@pytest.mark.parametrize("count", [MAX_DATA + 1, 0xFFFF_FFFF])
def test_count_over_max_data_xfer_size_is_einval(client, count):
    expect_error(client, Command.REGION_READ, read_payload(BAR0, 0, count), errno.EINVAL)
    assert_serving(client)


@pytest.mark.parametrize("region", [9, 10, 0xFFFF_FFFF])
def test_bad_region_is_einval(client, region):
    expect_error(client, Command.REGION_READ, read_payload(region, 0, 4), errno.EINVAL)
    assert_serving(client)


@pytest.mark.parametrize("region, offset, count", [
    (BAR0, BAR0_SIZE - 2, 4),
    (BAR0, BAR0_SIZE, 4),
    (BAR0, (1 << 64) - 1, 4),           # offset + count wraps a u64
    (BAR0, (1 << 64) - 4, 8),
    (IRQ_PAGE, 0xFFC, 8),
    (CONFIG, 255, 2),
    (CONFIG, 0, 257),
    (2, 0, 4),                          # absent BAR
    (6, 0, 4),                          # absent ROM
    (8, 0, 1),                          # absent VGA
], ids=["bar0-straddle", "bar0-past", "u64-wrap", "u64-wrap-8", "irq-page-straddle", "config-straddle",
        "config-257", "absent-bar", "rom", "vga"])
def test_access_past_the_region_is_einval(client, region, offset, count):
    expect_error(client, Command.REGION_READ, read_payload(region, offset, count), errno.EINVAL)
    assert_serving(client)


def test_refused_no_reply_read_gets_no_reply(client):
    expect_no_reply_to(client, Command.REGION_READ, read_payload(9, 0, 4))
    assert_serving(client)
