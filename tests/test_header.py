# SPDX-License-Identifier: BSD-3-Clause
"""The 16-byte header and framing rules every message goes through (brief 1.2-1.4, 4.1).

A message that cannot be framed (msg_size < 16, EOF inside a message) costs the
client its connection and nothing else: the server keeps listening.  Every other
bad header is answered with EINVAL and the same connection keeps working.
"""
from __future__ import annotations

import errno
import os
import socket

import pytest

from conftest import assert_serving, expect_error, expect_no_reply_to, header_bytes, raw_request
from vfu_platform.client import make_eventfd
from vfu_platform.protocol import messages as m
from vfu_platform.protocol.codec import encode
from vfu_platform.protocol.constants import Command, MsgFlags

MAX_MESSAGE = (1 << 20) + 32  # a REGION_WRITE of max_data_xfer_size bytes
DEVICE_INFO = m.DeviceInfo(16).pack()


def assert_dropped(client) -> None:
    """The server closed this connection: the next read sees EOF."""
    sock = client.channel.sock
    sock.settimeout(3)
    assert sock.recv(64) == b""


# ---------------------------------------------------------------- framing errors: drop the connection
@pytest.mark.parametrize("sent", [b"\x01\x00\x04", header_bytes(1, Command.DEVICE_GET_INFO, 32)[:15],
                                  header_bytes(1, Command.DEVICE_GET_INFO, 32) + DEVICE_INFO[:7]],
                         ids=["3-byte-header", "15-byte-header", "short-body"])
def test_eof_inside_a_message_drops_only_that_client(server, client, sent):
    client.send_raw(sent)
    client.channel.sock.shutdown(socket.SHUT_WR)
    assert_dropped(client)
    server.wait_idle()
    with server.connect() as fresh:
        assert_serving(fresh)


@pytest.mark.parametrize("size", [0, 8, 15])
def test_msg_size_below_16_drops_the_connection(server, client, size):
    fd = make_eventfd()
    client.send_raw(header_bytes(7, Command.DEVICE_GET_INFO, size), [fd])
    os.close(fd)
    assert_dropped(client)
    server.wait_idle()  # the fd that came with it is closed too
    with server.connect() as fresh:
        assert_serving(fresh)


# ---------------------------------------------------------------- bad headers: EINVAL, keep serving
def test_oversized_message_is_drained_and_answered_einval(server, client):
    body = bytes(MAX_MESSAGE + 4096 - 16)
    fd = make_eventfd()
    msg_id = client.next_id()
    client.send_raw(header_bytes(msg_id, Command.REGION_WRITE, 16 + len(body)), [fd])
    os.close(fd)
    client.send_raw(body)
    reply = client.wait_reply(msg_id)
    assert reply.header.is_error and reply.header.error == errno.EINVAL
    # The body was consumed: the next message is framed correctly.
    assert_serving(client)
    server.wait_fd_count(server.idle_fds + 1)  # the fd that came with it is closed


def test_fds_sent_with_the_body_of_an_oversized_message_are_closed(server, client):
    fd = make_eventfd()
    msg_id = client.next_id()
    client.send_raw(header_bytes(msg_id, Command.REGION_WRITE, 16 + MAX_MESSAGE + 16))
    assert client.wait_reply(msg_id).header.error == errno.EINVAL
    client.send_raw(bytes(MAX_MESSAGE), [fd])
    client.send_raw(bytes(16))
    os.close(fd)
    assert_serving(client)
    server.wait_fd_count(server.idle_fds + 1)


def test_fds_sent_in_two_parts_of_one_message_are_all_closed(server, client):
    fds = [make_eventfd(), make_eventfd()]
    msg_id = client.next_id()
    message = encode(msg_id, Command.DEVICE_GET_INFO, DEVICE_INFO)
    client.send_raw(message[:20], fds[:1])
    client.send_raw(message[20:], fds[1:])
    for fd in fds:
        os.close(fd)
    assert not client.wait_reply(msg_id).header.is_error
    server.wait_fd_count(server.idle_fds + 1)


def test_oversized_no_reply_message_is_drained_silently(client):
    body = bytes(MAX_MESSAGE)
    client.send_raw(header_bytes(client.next_id(), Command.REGION_WRITE, 16 + len(body), MsgFlags.NO_REPLY) + body)
    client.expect_no_reply()
    assert_serving(client)


@pytest.mark.parametrize("command", [0, 14, 19, 0xFFFF, Command.DMA_READ, Command.DMA_WRITE])
def test_unknown_or_server_only_command_is_einval(client, command):
    expect_error(client, command, bytes(16), errno.EINVAL)
    assert_serving(client)


@pytest.mark.parametrize("msg_type", [2, 3, 0xF])
def test_message_type_other_than_command_or_reply_is_einval(client, msg_type):
    msg_id = client.next_id()
    client.send_raw(encode(msg_id, Command.DEVICE_GET_INFO, DEVICE_INFO, flags=msg_type))
    reply = client.wait_reply(msg_id)
    assert reply.header.is_error and reply.header.error == errno.EINVAL
    assert_serving(client)


def test_stray_reply_from_the_client_is_einval(client):
    """A request carrying the reply bit is answered EINVAL, as libvfio-user does (its
    test_unsolicited_reply); the session goes on (tests/test_conformance_strict.py has more)."""
    client.send_raw(encode(0x4242, Command.DEVICE_GET_INFO, DEVICE_INFO, flags=MsgFlags.TYPE_REPLY))
    reply = client.wait_reply(0x4242)
    assert reply.header.is_error and reply.header.error == errno.EINVAL
    assert_serving(client)


@pytest.mark.parametrize("command, payload", [
    (Command.DEVICE_GET_INFO, b""),
    (Command.DEVICE_GET_INFO, DEVICE_INFO[:8]),
    (Command.DMA_MAP, bytes(16)),
    (Command.REGION_READ, bytes(12)),
    (Command.DEVICE_SET_IRQS, bytes(16)),
], ids=["get-info-no-payload", "get-info-8", "dma-map-16", "region-read-12", "set-irqs-16"])
def test_payload_too_short_for_the_command_is_einval(client, command, payload):
    expect_error(client, command, payload, errno.EINVAL)
    assert_serving(client)


def test_reply_echoes_msg_id_and_command(client):
    msg_id = 0xFFFF
    client.send_raw(encode(msg_id, Command.DEVICE_GET_INFO, DEVICE_INFO))
    reply = client.wait_reply(msg_id)
    assert (reply.header.msg_id, reply.header.command) == (msg_id, Command.DEVICE_GET_INFO)
    assert reply.header.flags == MsgFlags.TYPE_REPLY and reply.header.error == 0


def test_error_field_of_a_command_is_ignored(client):
    msg_id = client.next_id()
    client.send_raw(encode(msg_id, Command.DEVICE_GET_INFO, DEVICE_INFO, error=errno.EIO))
    assert not client.wait_reply(msg_id).header.is_error


# ---------------------------------------------------------------- stream handling
def test_several_messages_in_one_send_are_answered_in_order(client):
    ids = [client.next_id() for _ in range(3)]
    client.send_raw(b"".join(encode(i, Command.DEVICE_GET_INFO, DEVICE_INFO) for i in ids))
    for msg_id in ids:
        assert not client.wait_reply(msg_id).header.is_error


def test_message_sent_one_byte_at_a_time_is_answered(client):
    msg_id = client.next_id()
    for byte in encode(msg_id, Command.DEVICE_GET_INFO, DEVICE_INFO):
        client.send_raw(bytes([byte]))
    assert not client.wait_reply(msg_id).header.is_error


def test_client_that_stops_reading_is_dropped(server, client):
    """Replies nobody reads must not block the server for good (it is single-threaded)."""
    flood = b"".join(encode(i, Command.REGION_READ, m.RegionAccess(0, 1, 4096).pack()) for i in range(1, 2001))
    client.send_raw(flood)  # 8 MiB of replies: far more than the socket buffers hold
    server.wait_fd_count(server.idle_fds, timeout=10)  # given up after the 5 s send timeout
    with server.connect() as fresh:
        assert_serving(fresh)


def test_second_client_is_turned_away_while_one_is_served(server, client):
    """Refused with an EBUSY error reply (msg_id 0, QEMU's first), then EOF: never a silent hang."""
    with server.connect(negotiate=False) as second:
        refusal = second.wait_reply(0)
        assert refusal.header.is_error and refusal.header.error == errno.EBUSY
        assert_dropped(second)
    assert_serving(client)


# ---------------------------------------------------------------- session state
def test_command_before_version_is_einval(raw_client):
    expect_error(raw_client, Command.DEVICE_GET_INFO, DEVICE_INFO, errno.EINVAL)
    raw_client.negotiate()
    assert_serving(raw_client)


def test_second_version_is_einval(client):
    expect_error(client, Command.VERSION, m.Version(0, 0).pack(), errno.EINVAL)
    assert_serving(client)


# ---------------------------------------------------------------- NO_REPLY
@pytest.mark.parametrize("command, payload", [
    (Command.DEVICE_GET_INFO, DEVICE_INFO[:4]),
    (Command.REGION_READ, m.RegionAccess(0, 42, 4).pack()),
    (Command.REGION_WRITE, m.RegionAccess(0, 0, 8, b"\0" * 4).pack()),
    (19, b"\0" * 8),
    (Command.VERSION, m.Version(0, 0).pack()),
], ids=["short-get-info", "bad-region", "write-count-mismatch", "unknown-command", "second-version"])
def test_failing_no_reply_message_gets_no_reply(client, command, payload):
    expect_no_reply_to(client, command, payload)
    assert_serving(client)


def test_successful_no_reply_message_gets_no_reply(client):
    expect_no_reply_to(client, Command.DEVICE_GET_INFO, DEVICE_INFO)
    assert_serving(client)


# ---------------------------------------------------------------- file descriptors
def test_fds_on_a_command_that_takes_none_are_closed(server, client):
    fds = [make_eventfd() for _ in range(3)]
    reply = raw_request(client, Command.DEVICE_GET_INFO, DEVICE_INFO, fds)
    for fd in fds:
        os.close(fd)
    assert not reply.header.is_error and reply.fds == []
    server.wait_fd_count(server.idle_fds + 1)


def test_max_msg_fds_is_accepted(server, client):
    fds = [make_eventfd() for _ in range(16)]
    reply = raw_request(client, Command.REGION_READ, m.RegionAccess(0, 0, 4).pack(), fds)
    for fd in fds:
        os.close(fd)
    assert not reply.header.is_error
    server.wait_fd_count(server.idle_fds + 1)


@pytest.mark.parametrize("command, payload", [
    (Command.DEVICE_GET_INFO, DEVICE_INFO),
    (Command.DEVICE_SET_IRQS, m.IrqSet(20, 0x24, 0, 0, 17).pack()),
], ids=["get-info", "set-irqs"])
def test_more_fds_than_max_msg_fds_is_einval_and_all_are_closed(server, client, command, payload):
    fds = [make_eventfd() for _ in range(17)]
    expect_error(client, command, payload, errno.EINVAL, fds)
    for fd in fds:
        os.close(fd)
    server.wait_fd_count(server.idle_fds + 1)
    assert_serving(client)


def test_as_many_fds_as_linux_passes_are_einval_and_all_closed(server, client):
    fds = [make_eventfd() for _ in range(253)]  # SCM_MAX_FD
    expect_error(client, Command.DEVICE_GET_INFO, DEVICE_INFO, errno.EINVAL, fds)
    for fd in fds:
        os.close(fd)
    server.wait_fd_count(server.idle_fds + 1)
    assert_serving(client)


def test_fds_with_a_failing_no_reply_message_are_closed(server, client):
    fd = make_eventfd()
    expect_no_reply_to(client, Command.DEVICE_GET_INFO, DEVICE_INFO[:4], [fd])
    os.close(fd)
    server.wait_fd_count(server.idle_fds + 1)
    assert_serving(client)


def test_fds_of_a_dropped_connection_are_closed(server, client):
    fd = make_eventfd()
    client.send_raw(header_bytes(1, Command.DEVICE_GET_INFO, 32) + DEVICE_INFO[:4], [fd])
    os.close(fd)
    client.close()
    server.wait_idle()

