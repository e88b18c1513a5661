# SPDX-License-Identifier: BSD-3-Clause
"""VERSION capabilities: the JSON object both peers send, as msgspec Structs.

Every key is optional on the wire.  Fields left as None were not sent; the
`effective_*` helpers apply the spec's defaults.  Type errors in known keys are
protocol errors (EINVAL), unknown keys are ignored (QEMU only warns about them).
"""
from __future__ import annotations

from typing import Annotated

import msgspec

from vfu_platform.protocol.constants import (
    DEFAULT_MAX_DATA_XFER_SIZE,
    DEFAULT_MAX_MSG_FDS,
    MAX_PEER_MSG_FDS,
)
from vfu_platform.protocol.errors import ProtocolError

U32 = Annotated[int, msgspec.Meta(ge=0, le=0xFFFFFFFF)]
# msgspec bounds must fit an int64; no real size comes near 2**63.
U64 = Annotated[int, msgspec.Meta(ge=0, le=(1 << 63) - 1)]


class Migration(msgspec.Struct, omit_defaults=True):
    pgsize: U64 | None = None
    max_bitmap_size: U64 | None = None


class TwinSocket(msgspec.Struct, omit_defaults=True):
    supported: bool | None = None
    fd_index: U32 | None = None


class Capabilities(msgspec.Struct, omit_defaults=True):
    max_msg_fds: Annotated[int, msgspec.Meta(ge=0, le=MAX_PEER_MSG_FDS)] | None = None
    max_data_xfer_size: U64 | None = None
    max_dma_maps: U32 | None = None
    pgsizes: U64 | None = None
    migration: Migration | None = None
    twin_socket: TwinSocket | None = None
    write_multiple: bool | None = None

    def effective_max_msg_fds(self, default: int = DEFAULT_MAX_MSG_FDS) -> int:
        return default if self.max_msg_fds is None else self.max_msg_fds

    def effective_max_data_xfer_size(self) -> int:
        value = self.max_data_xfer_size
        return DEFAULT_MAX_DATA_XFER_SIZE if value is None else value


class VersionDocument(msgspec.Struct, omit_defaults=True):
    capabilities: Capabilities | None = None


_decoder = msgspec.json.Decoder(VersionDocument)
_encoder = msgspec.json.Encoder()


def decode_capabilities(raw: bytes) -> Capabilities:
    """Parse the NUL-terminated JSON of a VERSION message (without the NUL)."""
    try:
        document = _decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise ProtocolError.invalid(f"bad VERSION capabilities: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise ProtocolError.invalid(f"VERSION JSON does not parse: {exc}") from exc
    return document.capabilities or Capabilities()


def encode_capabilities(caps: Capabilities) -> bytes:
    """The JSON text for a VERSION message (without the NUL)."""
    return _encoder.encode(VersionDocument(capabilities=caps))
