# SPDX-License-Identifier: BSD-3-Clause
"""`RegisterRegion`: a trapped MMIO region whose accesses reach Python callbacks.

Part of the model author's API, which `vfu_platform.backends.sim.device` gathers.
"""
from __future__ import annotations

import errno
from collections.abc import Callable

from vfu_platform import vfio_abi
from vfu_platform.backends.base import BackendError, RegionInfo

ReadCallback = Callable[[int, int], int]
"""read(offset, size) -> value; size is 1, 2, 4 or 8 and offset is size-aligned."""
WriteCallback = Callable[[int, int, int], None]
"""write(offset, size, value); size is 1, 2, 4 or 8 and offset is size-aligned."""

_SIZE_MASKS = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFF_FFFF, 8: 0xFFFF_FFFF_FFFF_FFFF}


def natural_chunks(offset: int, size: int) -> list[tuple[int, int]]:
    """Split an access into the largest naturally aligned pieces of 1/2/4/8 bytes.

    This is how an access the register callbacks cannot take in one go (an odd
    size, an unaligned offset, more than 8 bytes) reaches them: a 4-byte access
    at 0x2 becomes 2 bytes at 0x2 and 2 bytes at 0x4.
    """
    chunks: list[tuple[int, int]] = []
    end = offset + size
    while offset < end:
        width = 8
        while width > end - offset or offset % width:
            width //= 2
        chunks.append((offset, width))
        offset += width
    return chunks


class RegisterRegion:
    """A trapped MMIO region whose accesses go to Python callbacks (little-endian).

    Naturally aligned accesses of 1, 2, 4 or 8 bytes reach the callbacks as
    they are.  Anything else is split into naturally aligned pieces
    (`natural_chunks`), or, with `split=False`, refused with EINVAL.  The value
    a read callback returns is truncated to the access size, so returning ~0
    (-1) reads as all-ones.  A region without a read (write) callback is not
    readable (writable): its info lacks the flag and accesses get EINVAL.
    """

    def __init__(
        self,
        size: int,
        read: ReadCallback | None = None,
        write: WriteCallback | None = None,
        *,
        name: str = "",
        split: bool = True,
    ) -> None:
        if size <= 0:
            raise ValueError(f"region size must be positive, not {size}")
        self.size = size
        self.name = name
        self.split = split
        self._read = read
        self._write = write

    def info(self, index: int) -> RegionInfo:
        flags = 0
        if self._read is not None:
            flags |= vfio_abi.REGION_FLAG_READ
        if self._write is not None:
            flags |= vfio_abi.REGION_FLAG_WRITE
        return RegionInfo(index=index, size=self.size, flags=flags, name=self.name)

    def _pieces(self, offset: int, size: int) -> list[tuple[int, int]]:
        if not self.split:
            raise BackendError(
                errno.EINVAL,
                f"region {self.name!r}: {size}-byte access at {offset:#x} is not allowed",
            )
        return natural_chunks(offset, size)

    def read(self, offset: int, size: int) -> bytes:
        callback = self._read
        if callback is None:
            raise BackendError(errno.EINVAL, f"region {self.name!r} is not readable")
        mask = _SIZE_MASKS.get(size)
        if mask is not None and offset % size == 0:
            return (callback(offset, size) & mask).to_bytes(size, "little")
        return b"".join(
            (callback(at, width) & _SIZE_MASKS[width]).to_bytes(width, "little")
            for at, width in self._pieces(offset, size)
        )

    def write(self, offset: int, data: bytes) -> None:
        callback = self._write
        if callback is None:
            raise BackendError(errno.EINVAL, f"region {self.name!r} is not writable")
        size = len(data)
        if size in _SIZE_MASKS and offset % size == 0:
            callback(offset, size, int.from_bytes(data, "little"))
            return
        for at, width in self._pieces(offset, size):
            start = at - offset
            callback(at, width, int.from_bytes(data[start : start + width], "little"))

    def reset(self) -> None:
        """Register state belongs to the model (`SimDevice.on_reset`)."""

    def close(self) -> None:
        """Nothing to release."""


__all__ = ["ReadCallback", "RegisterRegion", "WriteCallback", "natural_chunks"]
