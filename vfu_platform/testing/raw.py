# SPDX-License-Identifier: BSD-3-Clause
"""Hand-built messages: send any bytes, check the error reply a bad message gets."""
from __future__ import annotations

from collections.abc import Sequence

from vfu_platform.client import Reply, VfioUserClient
from vfu_platform.protocol.codec import encode
from vfu_platform.protocol.constants import HEADER_SIZE, MsgFlags
from vfu_platform.protocol.header import HEADER


def raw_request(client: VfioUserClient, command: int, payload: bytes = b"", fds: Sequence[int] = (),
                flags: int = 0) -> Reply:
    """Send one command exactly as given and return its reply (errors included)."""
    msg_id = client.next_id()
    client.send_raw(encode(msg_id, command, payload, flags), fds)
    return client.wait_reply(msg_id)


def expect_error(client: VfioUserClient, command: int, payload: bytes, errno_value: int,
                 fds: Sequence[int] = ()) -> None:
    """The command must get a header-only error reply carrying `errno_value`."""
    reply = raw_request(client, command, payload, fds)
    reply.close_fds()
    assert reply.header.is_error, f"expected errno {errno_value}, got a success reply {reply.header}"
    assert reply.header.error == errno_value, f"errno {reply.header.error}, expected {errno_value}"
    assert reply.header.size == HEADER_SIZE and reply.body == b""
    assert reply.header.command == command


def expect_no_reply_to(client: VfioUserClient, command: int, payload: bytes, fds: Sequence[int] = ()) -> None:
    """Sent with NO_REPLY, the command must get no reply at all (even when it fails)."""
    client.send_raw(encode(client.next_id(), command, payload, MsgFlags.NO_REPLY), fds)
    client.expect_no_reply()


def header_bytes(msg_id: int, command: int, size: int, flags: int = 0, error: int = 0) -> bytes:
    """A raw 16-byte message header with any field values, valid or not."""
    return HEADER.pack(msg_id, command, size, flags, error)
