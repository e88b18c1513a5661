# SPDX-License-Identifier: BSD-3-Clause
"""REGION_WRITE_MULTI (15): batches of small writes, only when negotiated (brief 2.12, 4.1)."""
from __future__ import annotations

import errno
import struct

import pytest

from conftest import assert_serving, expect_error, expect_no_reply_to, raw_request
from vfu_platform.protocol.caps import Capabilities
from vfu_platform.protocol.constants import Command

BAR0, CONFIG = 0, 7
LIVENESS, DMA_SRC, DMA_DST = 0x04, 0x80, 0x88


def entry(region: int, offset: int, data: bytes, count: int | None = None) -> bytes:
    return struct.pack("<QII8s", offset, region, len(data) if count is None else count, data)


def batch(*entries: bytes, wr_cnt: int | None = None) -> bytes:
    return struct.pack("<Q", len(entries) if wr_cnt is None else wr_cnt) + b"".join(entries)


def liveness(client) -> int:
    return ~client.read32(BAR0, LIVENESS) & 0xFFFF_FFFF


def test_write_multiple_is_negotiated(client):
    assert client.server_caps.write_multiple is True


def test_posted_batch_is_applied_in_order(client):
    client.write_multi([
        (BAR0, LIVENESS, struct.pack("<I", 1)),
        (BAR0, DMA_SRC, struct.pack("<Q", 0x1122_3344_5566_7788)),
        (BAR0, LIVENESS, struct.pack("<I", 2)),
    ])
    client.expect_no_reply()
    assert liveness(client) == 2
    assert client.read64(BAR0, DMA_SRC) == 0x1122_3344_5566_7788


def test_reply_carries_the_entry_count(client):
    reply = raw_request(client, Command.REGION_WRITE_MULTI, batch(
        entry(BAR0, LIVENESS, struct.pack("<I", 5)), entry(BAR0, DMA_DST, struct.pack("<I", 6))))
    assert not reply.header.is_error
    assert reply.body == struct.pack("<Q", 2)
    assert liveness(client) == 5 and client.read64(BAR0, DMA_DST) == 6


def test_only_count_bytes_of_an_entry_are_written(client):
    client.write64(BAR0, DMA_SRC, 0)
    raw_request(client, Command.REGION_WRITE_MULTI, batch(entry(BAR0, DMA_SRC, b"\x11" * 8, count=4)))
    assert client.read64(BAR0, DMA_SRC) == 0x1111_1111


def test_empty_batch(client):
    reply = raw_request(client, Command.REGION_WRITE_MULTI, batch())
    assert reply.body == struct.pack("<Q", 0)


def test_config_writes_in_a_batch(client):
    client.write_multi([(CONFIG, 0x04, struct.pack("<H", 0x4))])
    assert struct.unpack("<H", client.region_read(CONFIG, 0x04, 2))[0] & 0x4
    client.write_multi([(CONFIG, 0x04, struct.pack("<H", 0))])


# ---------------------------------------------------------------- refused
def test_not_negotiated_is_einval(server, client):
    client.close()
    server.wait_idle()
    with server.connect(caps=Capabilities(max_msg_fds=16)) as plain:
        assert plain.server_caps.write_multiple is None
        expect_error(plain, Command.REGION_WRITE_MULTI, batch(entry(BAR0, LIVENESS, bytes(4))), errno.EINVAL)
        assert_serving(plain)


@pytest.mark.parametrize("payload", [b"\0" * 4, b"\0" * 7], ids=["4-bytes", "7-bytes"])
def test_short_payload_is_einval(client, payload):
    expect_error(client, Command.REGION_WRITE_MULTI, payload, errno.EINVAL)
    assert_serving(client)


@pytest.mark.parametrize("wr_cnt", [0, 2, 1 << 40])
def test_count_other_than_the_entries_is_einval(client, wr_cnt):
    client.write32(BAR0, LIVENESS, 0x33)
    payload = batch(entry(BAR0, LIVENESS, bytes(4)), wr_cnt=wr_cnt)
    expect_error(client, Command.REGION_WRITE_MULTI, payload, errno.EINVAL)
    assert liveness(client) == 0x33


def test_entry_count_over_8_is_einval(client):
    expect_error(client, Command.REGION_WRITE_MULTI, batch(entry(BAR0, LIVENESS, bytes(8), count=9)), errno.EINVAL)
    assert_serving(client)


def test_more_than_256_entries_is_einval(client):
    entries = [entry(BAR0, LIVENESS, bytes(4))] * 257
    expect_error(client, Command.REGION_WRITE_MULTI, batch(*entries), errno.EINVAL)
    assert_serving(client)


@pytest.mark.parametrize("bad", [entry(9, 0, bytes(4)), entry(BAR0, (1 << 20) - 2, bytes(4)), entry(2, 0, bytes(4))],
                         ids=["bad-region", "past-bar0", "absent-bar"])
def test_one_bad_entry_fails_the_whole_batch(client, bad):
    client.write32(BAR0, LIVENESS, 0x44)
    payload = batch(entry(BAR0, LIVENESS, struct.pack("<I", 9)), bad)
    expect_error(client, Command.REGION_WRITE_MULTI, payload, errno.EINVAL)
    assert liveness(client) == 0x44  # the good entry before it was not applied


def test_refused_posted_batch_gets_no_reply(client):
    client.write32(BAR0, LIVENESS, 0x55)
    payload = batch(entry(BAR0, LIVENESS, bytes(4)), entry(9, 0, bytes(4)))
    expect_no_reply_to(client, Command.REGION_WRITE_MULTI, payload)
    assert liveness(client) == 0x55
