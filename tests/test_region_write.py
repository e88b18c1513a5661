# SPDX-License-Identifier: BSD-3-Clause
"""REGION_WRITE (10): replies, posted writes and their ordering, config writes, refusals (brief 2.9, 4.6)."""
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
LIVENESS = 0x04
COMMAND_REGISTER = 0x04
BUS_MASTER = 0x4


def write_payload(region: int, offset: int, data: bytes, count: int | None = None) -> bytes:
    return m.RegionAccess(offset, region, len(data) if count is None else count, data).pack()


def liveness(client) -> int:
    """edu's liveness register: the inverse of the last value written."""
    return ~client.read32(BAR0, LIVENESS) & 0xFFFF_FFFF


def test_reply_echoes_the_access_header_only(client):
    payload = write_payload(BAR0, LIVENESS, struct.pack("<I", 7))
    reply = raw_request(client, Command.REGION_WRITE, payload)
    assert not reply.header.is_error and reply.fds == []
    assert reply.body == payload[:16]
    assert reply.header.size == 32
    assert liveness(client) == 7


def test_count_0_is_accepted(client):
    client.write32(BAR0, LIVENESS, 1)
    reply = raw_request(client, Command.REGION_WRITE, write_payload(BAR0, LIVENESS, b""))
    assert reply.body == write_payload(BAR0, LIVENESS, b"")
    assert liveness(client) == 1


def test_posted_write_gets_no_reply_and_a_later_read_sees_it(client):
    client.write32(BAR0, LIVENESS, 0xA5A5, posted=True)
    client.expect_no_reply()
    assert liveness(client) == 0xA5A5


def test_posted_writes_are_applied_in_order(client):
    for value in range(1, 51):
        client.write32(BAR0, LIVENESS, value, posted=True)
    assert liveness(client) == 50


def test_config_command_register_is_writable(client):
    client.region_write(CONFIG, COMMAND_REGISTER, struct.pack("<H", BUS_MASTER))
    assert struct.unpack("<H", client.region_read(CONFIG, COMMAND_REGISTER, 2))[0] & BUS_MASTER
    client.region_write(CONFIG, COMMAND_REGISTER, struct.pack("<H", 0))
    assert not struct.unpack("<H", client.region_read(CONFIG, COMMAND_REGISTER, 2))[0] & BUS_MASTER


def test_config_read_only_fields_ignore_writes(client):
    client.region_write(CONFIG, 0, b"\xff\xff\xff\xff")  # vendor and device id
    assert client.region_read(CONFIG, 0, 4) == struct.pack("<HH", 0x1234, 0x11E8)


def test_config_rom_probe_is_accepted(client):
    client.write32(CONFIG, 0x30, 0xFFFF_F800)  # QEMU probes the ROM BAR at realize


def test_largest_message_is_accepted(client):
    # msg_size = 16 + 16 + max_data_xfer_size: the largest legal request.
    client.region_write(BAR0, 0, bytes(MAX_DATA))
    assert_serving(client)


def test_irq_page_ignores_writes(client):
    client.write32(IRQ_PAGE, 0xD00, 0)
    assert client.read32(IRQ_PAGE, 0xD00) == 0x50554656


# ---------------------------------------------------------------- refused
@pytest.mark.parametrize("length", [8, 15])
def test_short_payload_is_einval(client, length):
    expect_error(client, Command.REGION_WRITE, write_payload(BAR0, LIVENESS, bytes(4))[:length], errno.EINVAL)
    assert_serving(client)


@pytest.mark.parametrize("count, data", [(4, bytes(2)), (2, bytes(4)), (4, b""), (0, bytes(4))],
                         ids=["short-data", "extra-data", "no-data", "count-0-with-data"])
def test_data_length_other_than_count_is_einval_and_nothing_is_written(client, count, data):
    client.write32(BAR0, LIVENESS, 0x1111)
    expect_error(client, Command.REGION_WRITE, write_payload(BAR0, LIVENESS, data, count), errno.EINVAL)
    assert liveness(client) == 0x1111


def test_count_over_max_data_xfer_size_is_einval(client):
    expect_error(client, Command.REGION_WRITE, write_payload(BAR0, 0, b"", count=MAX_DATA + 1), errno.EINVAL)
    assert_serving(client)


def test_message_over_the_maximum_is_drained_and_einval(client):
    payload = write_payload(BAR0, 0, bytes(MAX_DATA + 1))
    expect_error(client, Command.REGION_WRITE, payload, errno.EINVAL)
    assert_serving(client)


@pytest.mark.parametrize("region", [9, 0xFFFF_FFFF])
def test_bad_region_is_einval(client, region):
    expect_error(client, Command.REGION_WRITE, write_payload(region, 0, bytes(4)), errno.EINVAL)
    assert_serving(client)


@pytest.mark.parametrize("region, offset, count", [
    (BAR0, BAR0_SIZE - 2, 4),
    (BAR0, BAR0_SIZE, 4),
    (BAR0, (1 << 64) - 1, 4),
    (IRQ_PAGE, 0x1000, 4),
    (CONFIG, 254, 4),
    (2, 0, 4),
    (6, 0, 4),
    (8, 0, 1),
], ids=["bar0-straddle", "bar0-past", "u64-wrap", "irq-page-past", "config-straddle", "absent-bar", "rom", "vga"])
def test_access_past_the_region_is_einval(client, region, offset, count):
    expect_error(client, Command.REGION_WRITE, write_payload(region, offset, bytes(count)), errno.EINVAL)
    assert_serving(client)


def test_refused_posted_write_gets_no_reply(client):
    client.write32(BAR0, LIVENESS, 0x2222)
    expect_no_reply_to(client, Command.REGION_WRITE, write_payload(BAR0, LIVENESS, bytes(2), count=4))
    expect_no_reply_to(client, Command.REGION_WRITE, write_payload(9, 0, bytes(4)))
    assert liveness(client) == 0x2222

