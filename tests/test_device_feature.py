# SPDX-License-Identifier: BSD-3-Clause
"""DEVICE_FEATURE (16): no feature is offered; QEMU 11's DMA_BUF probe gets ENOTTY (brief 2.13, 4.7)."""
from __future__ import annotations

import errno
import os
import struct

import pytest

from conftest import assert_serving, expect_error, expect_no_reply_to
from vfu_platform.client import VfioUserError, make_eventfd
from vfu_platform.protocol.constants import Command

GET, SET, PROBE = 1 << 16, 1 << 17, 1 << 18
MIGRATION, DMA_BUF = 1, 11


def feature_payload(flags: int, data: bytes = b"", argsz: int | None = None) -> bytes:
    return struct.pack("<II", 8 + len(data) if argsz is None else argsz, flags) + data


@pytest.mark.parametrize("flags", [DMA_BUF | GET, DMA_BUF | SET, DMA_BUF | PROBE | GET, DMA_BUF | PROBE | SET],
                         ids=["get", "set", "probe-get", "probe-set"])
def test_dma_buf_is_enotty(client, flags):
    # QEMU treats ENOTTY as "not supported", warns once and carries on.
    expect_error(client, Command.DEVICE_FEATURE, feature_payload(flags, bytes(16)), errno.ENOTTY)
    assert_serving(client)


def test_client_library_device_feature_raises_the_errno(client):
    with pytest.raises(VfioUserError) as raised:
        client.device_feature(DMA_BUF | GET, bytes(16))
    assert raised.value.command == Command.DEVICE_FEATURE and raised.value.errno == errno.ENOTTY
    assert_serving(client)


@pytest.mark.parametrize("flags", [
    MIGRATION | GET,
    MIGRATION | PROBE | GET,
    0 | GET,
    0xFFFF | GET,
    12 | SET,
    MIGRATION,                      # neither GET, SET nor PROBE
    MIGRATION | GET | SET,          # GET and SET without PROBE
    MIGRATION | GET | (1 << 31),    # unknown high bit
], ids=["migration-get", "migration-probe", "feature-0", "feature-ffff", "feature-12-set", "no-op",
        "get-and-set", "high-bit"])
def test_unsupported_feature_is_einval(client, flags):
    expect_error(client, Command.DEVICE_FEATURE, feature_payload(flags, bytes(8)), errno.EINVAL)
    assert_serving(client)


@pytest.mark.parametrize("payload", [b"\0" * 4, b"\0" * 7], ids=["4-bytes", "7-bytes"])
def test_short_payload_is_einval(client, payload):
    expect_error(client, Command.DEVICE_FEATURE, payload, errno.EINVAL)
    assert_serving(client)


def test_refused_no_reply_feature_gets_no_reply(client):
    expect_no_reply_to(client, Command.DEVICE_FEATURE, feature_payload(DMA_BUF | GET))
    assert_serving(client)


def test_fds_with_a_feature_request_are_closed(server, client):
    fd = make_eventfd()
    expect_error(client, Command.DEVICE_FEATURE, feature_payload(DMA_BUF | GET, bytes(16)), errno.ENOTTY, [fd])
    os.close(fd)
    server.wait_fd_count(server.idle_fds + 1)
