# SPDX-License-Identifier: BSD-3-Clause
"""VERSION (1): negotiation, the reply QEMU can accept, and every malformed request (brief 2.1, 4.2)."""
from __future__ import annotations

import errno
import json
import os
import struct

import pytest

from conftest import assert_serving, expect_error, raw_request
from vfu_platform.client import make_eventfd
from vfu_platform.protocol import messages as m
from vfu_platform.protocol.caps import Capabilities
from vfu_platform.protocol.constants import Command, MsgFlags

# QEMU 10.1-11's request, as the brief quotes it.
QEMU_JSON = (b'{"capabilities":{"migration":{"pgsize":4096,"max_bitmap_size":268435456},"max_msg_fds":16,'
             b'"max_data_xfer_size":1048576,"pgsizes":4096,"max_dma_maps":65535,"write_multiple":true}}')


def version_payload(text: bytes | None, major: int = 0, minor: int = 0) -> bytes:
    head = struct.pack("<HH", major, minor)
    return head if text is None else head + text + b"\0"


def test_qemu_request_gets_a_reply_qemu_accepts(raw_client):
    payload = version_payload(QEMU_JSON)
    reply = raw_request(raw_client, Command.VERSION, payload)
    assert reply.header.flags == MsgFlags.TYPE_REPLY and reply.header.error == 0
    assert reply.fds == []
    # QEMU's reply buffer is the request's size.
    assert reply.header.size <= 16 + len(payload)
    assert reply.body.endswith(b"\0")
    version = m.Version.unpack(reply.body)
    assert (version.major, version.minor) == (0, 0)
    caps = json.loads(reply.body[4:-1])["capabilities"]
    assert caps["max_msg_fds"] <= 16
    assert caps["max_data_xfer_size"] <= 64 << 20
    assert caps["max_dma_maps"] <= 65535
    assert caps["pgsizes"] & 0xFFF == 0
    assert "twin_socket" not in caps
    assert_serving(raw_client)


def test_reply_minor_is_never_above_the_request(raw_client):
    reply = raw_request(raw_client, Command.VERSION, version_payload(b"{}", minor=7))
    version = m.Version.unpack(reply.body)
    assert (version.major, version.minor) == (0, 0)


@pytest.mark.parametrize("text", [None, b"{}", b'{"capabilities":{}}',
                                  b'{"capabilities":{"x-unknown":[1,2]},"other":1}'],
                         ids=["no-json", "empty-object", "empty-capabilities", "unknown-keys"])
def test_minimal_requests_are_accepted(raw_client, text):
    reply = raw_request(raw_client, Command.VERSION, version_payload(text))
    assert not reply.header.is_error
    assert m.Version.unpack(reply.body).caps is not None
    assert_serving(raw_client)


def test_write_multiple_only_when_the_client_offers_it(server, raw_client):
    caps = Capabilities(max_msg_fds=16, max_data_xfer_size=1 << 20)
    version = raw_client.negotiate(caps)
    assert version.caps is not None and version.caps.write_multiple is None
    raw_client.close()
    server.wait_idle()
    with server.connect() as offered:  # the client library offers write_multiple
        assert offered.server_caps.write_multiple is True


def test_twin_socket_is_not_set_up(raw_client):
    text = b'{"capabilities":{"twin_socket":{"supported":true}}}'
    reply = raw_request(raw_client, Command.VERSION, version_payload(text))
    assert not reply.header.is_error and reply.fds == []
    assert m.Version.unpack(reply.body).caps.twin_socket is None


def test_max_msg_fds_upper_bound_is_accepted(raw_client):
    raw_client.negotiate(Capabilities(max_msg_fds=1024))
    assert_serving(raw_client)


MALFORMED = {
    "empty": b"",
    "short": b"\0\0",
    "major-1": version_payload(b"{}", major=1),
    "major-1-no-json": version_payload(None, major=1),
    "no-nul": struct.pack("<HH", 0, 0) + b"{}",
    "only-nul": struct.pack("<HH", 0, 0) + b"\0",
    "not-json": version_payload(b"{capabilities"),
    "nul-inside": version_payload(b"{}\0{}"),
    "top-level-array": version_payload(b"[]"),
    "capabilities-not-object": version_payload(b'{"capabilities":5}'),
    "max_msg_fds-string": version_payload(b'{"capabilities":{"max_msg_fds":"16"}}'),
    "max_msg_fds-negative": version_payload(b'{"capabilities":{"max_msg_fds":-1}}'),
    "max_msg_fds-1025": version_payload(b'{"capabilities":{"max_msg_fds":1025}}'),
    "max_msg_fds-float": version_payload(b'{"capabilities":{"max_msg_fds":1.5}}'),
    "max_data_xfer_size-negative": version_payload(b'{"capabilities":{"max_data_xfer_size":-1}}'),
    "max_dma_maps-bool": version_payload(b'{"capabilities":{"max_dma_maps":true}}'),
    "pgsizes-string": version_payload(b'{"capabilities":{"pgsizes":"4096"}}'),
    "migration-not-object": version_payload(b'{"capabilities":{"migration":5}}'),
    "migration-pgsize-string": version_payload(b'{"capabilities":{"migration":{"pgsize":"4k"}}}'),
    "write_multiple-int": version_payload(b'{"capabilities":{"write_multiple":1}}'),
    "twin_socket-supported-string": version_payload(b'{"capabilities":{"twin_socket":{"supported":"yes"}}}'),
}


@pytest.mark.parametrize("payload", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_version_is_einval_and_negotiation_still_possible(raw_client, payload):
    expect_error(raw_client, Command.VERSION, payload, errno.EINVAL)
    raw_client.negotiate()
    assert_serving(raw_client)


def test_version_with_an_fd_is_einval_and_the_fd_is_closed(server, raw_client):
    before = server.fd_count()
    fd = make_eventfd()
    try:
        expect_error(raw_client, Command.VERSION, version_payload(b"{}"), errno.EINVAL, fds=[fd])
    finally:
        os.close(fd)
    server.wait_fd_count(before)
    raw_client.negotiate()
    assert_serving(raw_client)


def test_second_version_is_einval(client):
    expect_error(client, Command.VERSION, version_payload(QEMU_JSON), errno.EINVAL)
    assert_serving(client)
