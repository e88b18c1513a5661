# SPDX-License-Identifier: BSD-3-Clause
"""The error hierarchy: every error the server answers a client with carries an errno.

A shared leaf: it imports nothing from the package, and every layer may import it.

    VfuError(errno, message)              vfu_platform.errors
    ├── ProtocolError                     vfu_platform.protocol.errors: a message that cannot be honoured
    ├── FramingError                      vfu_platform.protocol.errors: the stream cannot be framed (EPROTO)
    ├── BackendError                      here (re-exported by vfu_platform.backends.base): a device operation failed
    │   ├── DmaError                      here: a device-initiated DMA access could not be performed
    │   └── VfioHostError                 vfu_platform.backends.vfio.errors: host VFIO set-up
    ├── DmaMapError                       vfu_platform.dma: a DMA_MAP / DMA_UNMAP the table refuses
    └── ClientError                       vfu_platform.client: the client library's failures
        └── VfioUserError                 vfu_platform.client: the server answered a request with an error

`errno` is what the peer is told (the vfio-user error reply); `str(error)` is the
message for logs and traces.
"""
from __future__ import annotations


class VfuError(Exception):
    """An error with the errno a vfio-user peer is (or was) answered with."""

    def __init__(self, errno: int, message: str) -> None:
        super().__init__(message)
        self.errno = errno


class BackendError(VfuError):
    """A device operation failed; `errno` is what the client is told."""


class DmaError(BackendError):
    """A device-initiated DMA access could not be performed."""


__all__ = ["BackendError", "DmaError", "VfuError"]
