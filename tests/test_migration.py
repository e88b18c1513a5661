# SPDX-License-Identifier: BSD-3-Clause
"""Migration: not supported, so every migration message is EINVAL (brief 2.13, 2.14, 4.7).

vfio-user-pci has no live migration yet; QEMU still sends the legacy migration
capability in VERSION, which must be accepted.
"""
from __future__ import annotations

import errno
import json
import struct

import pytest

from conftest import assert_serving, expect_error, expect_no_reply_to, raw_request
from vfu_platform.protocol.constants import Command

GET, SET = 1 << 16, 1 << 17
MIGRATION, MIG_DEVICE_STATE = 1, 2
DMA_LOGGING_START, DMA_LOGGING_STOP, DMA_LOGGING_REPORT = 6, 7, 8
STOP, RUNNING, STOP_COPY, RESUMING = 1, 2, 3, 4


def feature_payload(flags: int, data: bytes = b"") -> bytes:
    return struct.pack("<II", 8 + len(data), flags) + data


def mig_data(size: int, data: bytes = b"") -> bytes:
    return struct.pack("<II", 8 + len(data), size) + data


def test_migration_capability_in_version_is_accepted(raw_client):
    text = b'{"capabilities":{"migration":{"pgsize":4096,"max_bitmap_size":268435456}}}'
    reply = raw_request(raw_client, Command.VERSION, struct.pack("<HH", 0, 0) + text + b"\0")
    assert not reply.header.is_error
    assert "migration" not in json.loads(reply.body[4:-1])["capabilities"]


FEATURES = {
    "migration-get": feature_payload(MIGRATION | GET, bytes(8)),
    "device-state-get": feature_payload(MIG_DEVICE_STATE | GET, bytes(8)),
    "device-state-stop": feature_payload(MIG_DEVICE_STATE | SET, struct.pack("<II", STOP, 0)),
    "device-state-stop-copy": feature_payload(MIG_DEVICE_STATE | SET, struct.pack("<II", STOP_COPY, 0)),
    "device-state-resuming": feature_payload(MIG_DEVICE_STATE | SET, struct.pack("<II", RESUMING, 0)),
    "logging-start": feature_payload(DMA_LOGGING_START | SET, struct.pack("<QIIQQ", 4096, 1, 0, 0, 1 << 30)),
    "logging-stop": feature_payload(DMA_LOGGING_STOP | SET),
    "logging-report": feature_payload(DMA_LOGGING_REPORT | GET, struct.pack("<QQQ", 0, 1 << 20, 4096) + bytes(32)),
}


@pytest.mark.parametrize("payload", FEATURES.values(), ids=FEATURES.keys())
def test_migration_features_are_einval(client, payload):
    expect_error(client, Command.DEVICE_FEATURE, payload, errno.EINVAL)
    assert_serving(client)


@pytest.mark.parametrize("command, payload", [
    (Command.MIG_DATA_READ, mig_data(4096)),
    (Command.MIG_DATA_READ, mig_data(0)),
    (Command.MIG_DATA_WRITE, mig_data(16, bytes(16))),
    (Command.MIG_DATA_WRITE, mig_data(16)),
    (Command.MIG_DATA_READ, b"\0" * 4),
    (Command.MIG_DATA_WRITE, b"\0" * 4),
], ids=["read", "read-0", "write", "write-missing-data", "read-short", "write-short"])
def test_migration_data_is_einval(client, command, payload):
    expect_error(client, command, payload, errno.EINVAL)
    assert_serving(client)


def test_legacy_dirty_pages_command_is_einval(client):
    expect_error(client, Command.DIRTY_PAGES, struct.pack("<IIQQ", 24, 0, 0, 0), errno.EINVAL)
    assert_serving(client)


def test_refused_no_reply_migration_data_gets_no_reply(client):
    expect_no_reply_to(client, Command.MIG_DATA_WRITE, mig_data(4, bytes(4)))
    assert_serving(client)
