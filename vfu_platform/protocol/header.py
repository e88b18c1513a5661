# SPDX-License-Identifier: BSD-3-Clause
"""The 16-byte message header."""
from __future__ import annotations

import struct
from typing import NamedTuple

from vfu_platform.protocol.constants import HEADER_SIZE, TYPE_MASK, MsgFlags

# Plain ints: IntFlag arithmetic costs about half a microsecond per use on the hot path.
_TYPE_REPLY = int(MsgFlags.TYPE_REPLY)
_NO_REPLY = int(MsgFlags.NO_REPLY)
_ERROR = int(MsgFlags.ERROR)

HEADER = struct.Struct("<HHIII")
assert HEADER.size == HEADER_SIZE


class Header(NamedTuple):
    msg_id: int
    command: int
    size: int  # whole message, header included
    flags: int
    error: int

    @property
    def is_reply(self) -> bool:
        return self.flags & TYPE_MASK == _TYPE_REPLY

    @property
    def msg_type(self) -> int:
        return self.flags & TYPE_MASK

    @property
    def no_reply(self) -> bool:
        return bool(self.flags & _NO_REPLY)

    @property
    def is_error(self) -> bool:
        return bool(self.flags & _ERROR)

    @property
    def body_size(self) -> int:
        return self.size - HEADER_SIZE


def pack_header(msg_id: int, command: int, size: int, flags: int = 0, error: int = 0) -> bytes:
    return HEADER.pack(msg_id, command, size, flags, error)


def parse_header(data: bytes | bytearray | memoryview, offset: int = 0) -> Header:
    return Header._make(HEADER.unpack_from(data, offset))
