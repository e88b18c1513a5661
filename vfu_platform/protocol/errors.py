# SPDX-License-Identifier: BSD-3-Clause
"""Protocol errors: each carries the errno a peer is answered with."""
from __future__ import annotations

import errno as _errno


class ProtocolError(Exception):
    """A message that cannot be honoured: answer it with `errno` and keep serving."""

    def __init__(self, errno: int, message: str) -> None:
        super().__init__(message)
        self.errno = errno

    @classmethod
    def invalid(cls, message: str) -> "ProtocolError":
        return cls(_errno.EINVAL, message)


class FramingError(Exception):
    """The byte stream cannot be framed any more (e.g. msg_size < 16): drop the connection."""
