# SPDX-License-Identifier: BSD-3-Clause
"""Which payload class each command uses, in each direction, and whole-message encoding."""
from __future__ import annotations

from vfu_platform.protocol import messages as m
from vfu_platform.protocol.constants import HEADER_SIZE, Command, MsgFlags
from vfu_platform.protocol.errors import ProtocolError
from vfu_platform.protocol.header import HEADER

REQUEST_TYPES: dict[int, type] = {
    Command.VERSION: m.Version,
    Command.DMA_MAP: m.DmaMap,
    Command.DMA_UNMAP: m.DmaUnmap,
    Command.DEVICE_GET_INFO: m.DeviceInfo,
    Command.DEVICE_GET_REGION_INFO: m.RegionInfo,
    Command.DEVICE_GET_REGION_IO_FDS: m.RegionIoFds,
    Command.DEVICE_GET_IRQ_INFO: m.IrqInfo,
    Command.DEVICE_SET_IRQS: m.IrqSet,
    Command.REGION_READ: m.RegionAccess,
    Command.REGION_WRITE: m.RegionAccess,
    Command.DMA_READ: m.DmaAccess,
    Command.DMA_WRITE: m.DmaAccess,
    Command.DEVICE_RESET: m.Empty,
    Command.REGION_WRITE_MULTI: m.RegionWriteMulti,
    Command.DEVICE_FEATURE: m.DeviceFeature,
    Command.MIG_DATA_READ: m.MigData,
    Command.MIG_DATA_WRITE: m.MigData,
}

REPLY_TYPES: dict[int, type] = {
    **REQUEST_TYPES,
    Command.DMA_MAP: m.Empty,
    Command.DMA_WRITE: m.Empty,  # QEMU replies header-only; address/count, if sent, are ignored
}


def decode_request(command: int, body: m.Buffer) -> m.Message:
    kind = REQUEST_TYPES.get(command)
    if kind is None:
        raise ProtocolError.invalid(f"bad command {command}")
    return kind.unpack(body)


def decode_reply(command: int, body: m.Buffer) -> m.Message:
    kind = REPLY_TYPES.get(command)
    if kind is None:
        raise ProtocolError.invalid(f"reply to unknown command {command}")
    return kind.unpack(body)


def encode(msg_id: int, command: int, payload: bytes, flags: int = 0, error: int = 0) -> bytes:
    """A whole message: header + payload."""
    return HEADER.pack(msg_id, command, HEADER_SIZE + len(payload), flags, error) + payload


def encode_reply(msg_id: int, command: int, payload: bytes = b"") -> bytes:
    return encode(msg_id, command, payload, MsgFlags.TYPE_REPLY)


def encode_error(msg_id: int, command: int, errno: int) -> bytes:
    return HEADER.pack(msg_id, command, HEADER_SIZE, MsgFlags.TYPE_REPLY | MsgFlags.ERROR, errno)
