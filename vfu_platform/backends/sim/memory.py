# SPDX-License-Identifier: BSD-3-Clause
"""`MemoryRegion`: RAM a client may mmap (the fast path), backed by a sealed memfd.

Part of the model author's API, which `vfu_platform.backends.sim.device` gathers.
"""
from __future__ import annotations

import errno
import fcntl
import mmap
import os

from vfu_platform import vfio_abi
from vfu_platform.backends.base import BackendError, RegionInfo


class MemoryRegion:
    """RAM-like region backed by a memfd, so the client can mmap it (the fast path).

    The memfd is sealed against shrinking and growing before it is handed out:
    the client receives the fd itself, and a client that truncated it would
    otherwise make the server's own mapping fault (SIGBUS) on the next access.
    Contents are zeroed on reset.
    """

    def __init__(self, size: int, *, name: str = "", writable: bool = True) -> None:
        if size <= 0:
            raise ValueError(f"region size must be positive, not {size}")
        self.size = size
        self.name = name
        self.writable = writable
        self._map_size = -(-size // mmap.PAGESIZE) * mmap.PAGESIZE
        fd = os.memfd_create(name or "vfu-sim", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, self._map_size)
            fcntl.fcntl(
                fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
            )
            self._map: mmap.mmap | None = mmap.mmap(fd, self._map_size)
        except BaseException:
            os.close(fd)
            raise
        self._fd: int | None = fd

    @property
    def fd(self) -> int:
        if self._fd is None:
            raise BackendError(errno.ENODEV, f"region {self.name!r} is closed")
        return self._fd

    def _mapping(self) -> mmap.mmap:
        if self._map is None:
            raise BackendError(errno.ENODEV, f"region {self.name!r} is closed")
        return self._map

    def info(self, index: int) -> RegionInfo:
        flags = vfio_abi.REGION_FLAG_READ | vfio_abi.REGION_FLAG_MMAP
        if self.writable:
            flags |= vfio_abi.REGION_FLAG_WRITE
        return RegionInfo(
            index=index, size=self.size, flags=flags, mmap_fd=self._fd, name=self.name
        )

    def read(self, offset: int, size: int) -> bytes:
        return self._mapping()[offset : offset + size]

    def write(self, offset: int, data: bytes) -> None:
        if not self.writable:
            raise BackendError(errno.EINVAL, f"region {self.name!r} is read-only")
        self._mapping()[offset : offset + len(data)] = data

    def reset(self) -> None:
        mapping = self._mapping()
        mapping.seek(0)
        mapping.write(bytes(self._map_size))
        mapping.seek(0)

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


__all__ = ["MemoryRegion"]
