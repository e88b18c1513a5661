# SPDX-License-Identifier: BSD-3-Clause
"""Protocol errors: each carries the errno a peer is answered with (see `vfu_platform.errors`)."""
from __future__ import annotations

import errno as _errno

from vfu_platform.errors import VfuError


class ProtocolError(VfuError):
    """A message that cannot be honoured: answer it with `errno` and keep serving."""

    @classmethod
    def invalid(cls, message: str) -> "ProtocolError":
        return cls(_errno.EINVAL, message)


class FramingError(VfuError):
    """The byte stream cannot be framed any more (e.g. msg_size < 16): drop the connection.

    Never answered (there is no message to answer); `errno` is EPROTO for logs.
    """

    def __init__(self, message: str) -> None:
        super().__init__(_errno.EPROTO, message)
