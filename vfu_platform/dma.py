# SPDX-License-Identifier: BSD-3-Clause
"""The client's DMA windows, and device DMA through them.

A window that came with an fd is mmapped (offset and protection honoured) and
reached directly; one without an fd is reached through DMA_READ / DMA_WRITE
messages to the client (`remote_read` / `remote_write`, supplied by the session).
Every device access is bounds-checked against the table: it must lie inside one
window and the window must allow the direction.

Two forms of access: `read` / `write` answer at once and work on mmapped windows
only (a window that needs the client raises EWOULDBLOCK); `read_then` /
`write_then` take a continuation, `done(result)`, called with the bytes read (b""
for a write) or the `DmaError`: at once for an mmapped window, when the client's
reply arrives for the others.  The server never waits inside a device callback.
"""
from __future__ import annotations

import bisect
import errno
import mmap
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass

from vfu_platform import vfio_abi
from vfu_platform.errors import DmaError, VfuError
from vfu_platform.protocol.constants import DEFAULT_MAX_DMA_MAPS, MAX_DMA_WINDOW_SIZE

#: a DMA continuation: called once, with the bytes read (b"" after a write) or the error
DmaDone = Callable[[bytes | DmaError], None]
#: the session's side of a window without fd: send the request(s), call `done` when answered
RemoteRead = Callable[[int, int, DmaDone], None]
RemoteWrite = Callable[[int, bytes, DmaDone], None]


class DmaMapError(VfuError):
    """A DMA_MAP or DMA_UNMAP the table refuses; `errno` is the client's answer."""


@dataclass(slots=True)
class DmaWindow:
    iova: int
    size: int
    flags: int  # vfio_abi.DMA_MAP_FLAG_READ | WRITE
    offset: int  # file offset inside fd
    fd: int | None
    mapping: mmap.mmap | None = None
    fd_identity: tuple[int, int] | None = None  # (st_dev, st_ino) for idempotent re-maps

    @property
    def end(self) -> int:
        return self.iova + self.size

    @property
    def readable(self) -> bool:
        return bool(self.flags & vfio_abi.DMA_MAP_FLAG_READ)

    @property
    def writable(self) -> bool:
        return bool(self.flags & vfio_abi.DMA_MAP_FLAG_WRITE)


class DmaMapTable:
    """Windows sorted by IOVA; non-overlapping by construction."""

    def __init__(self, max_windows: int = DEFAULT_MAX_DMA_MAPS) -> None:
        self.max_windows = max_windows
        self._starts: list[int] = []
        self._windows: list[DmaWindow] = []
        self.remote_read: RemoteRead | None = None
        self.remote_write: RemoteWrite | None = None
        #: called with the DmaWindow before it goes away (host IOMMU unmap hooks in here)
        self.on_unmap: list[Callable[[DmaWindow], None]] = []
        self.on_map: list[Callable[[DmaWindow], None]] = []

    def __len__(self) -> int:
        return len(self._windows)

    def __iter__(self):
        return iter(list(self._windows))

    # ------------------------------------------------------------ map / unmap
    def map(self, iova: int, size: int, flags: int, offset: int, fd: int | None) -> bool:
        """Add a window, taking ownership of `fd`.  Returns False for an exact duplicate
        (accepted idempotently, and `fd` is closed).  Raises DmaMapError (fd closed)."""
        try:
            return self._map(iova, size, flags, offset, fd)
        except BaseException:
            if fd is not None:
                os.close(fd)
            raise

    def _map(self, iova: int, size: int, flags: int, offset: int, fd: int | None) -> bool:
        allowed = vfio_abi.DMA_MAP_FLAG_READ | vfio_abi.DMA_MAP_FLAG_WRITE
        if flags & ~allowed:
            raise DmaMapError(errno.EINVAL, f"DMA_MAP: unknown flags {flags:#x}")
        if size == 0:
            raise DmaMapError(errno.EINVAL, "DMA_MAP: size 0")
        if size > MAX_DMA_WINDOW_SIZE:
            raise DmaMapError(errno.ENOSPC, f"DMA_MAP: size {size:#x} over the {MAX_DMA_WINDOW_SIZE:#x} cap")
        if iova + size > 1 << 64:
            raise DmaMapError(errno.EINVAL, "DMA_MAP: window wraps past 2^64")
        identity = _identity(fd)
        index = bisect.bisect_right(self._starts, iova)
        for neighbour in self._windows[max(0, index - 1) : index + 1]:
            if neighbour.iova < iova + size and iova < neighbour.end:
                if (neighbour.iova, neighbour.size, neighbour.flags, neighbour.offset, neighbour.fd_identity) == (
                    iova, size, flags, offset, identity
                ):
                    if fd is not None:
                        os.close(fd)
                    return False
                raise DmaMapError(
                    errno.EINVAL,
                    f"DMA_MAP [{iova:#x}, {iova + size:#x}) overlaps [{neighbour.iova:#x}, {neighbour.end:#x})",
                )
        if len(self._windows) >= self.max_windows:
            raise DmaMapError(errno.EINVAL, f"DMA_MAP: already {len(self._windows)} windows (the maximum)")
        mapping = None
        if fd is not None:
            prot = (mmap.PROT_READ if flags & vfio_abi.DMA_MAP_FLAG_READ else 0) | (
                mmap.PROT_WRITE if flags & vfio_abi.DMA_MAP_FLAG_WRITE else 0
            )
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode) and st.st_size < offset + size:
                # Touching pages past the end of a file would SIGBUS the server.
                raise DmaMapError(errno.EINVAL, f"DMA_MAP: fd holds {st.st_size:#x} bytes, window needs {offset + size:#x}")
            if offset % mmap.ALLOCATIONGRANULARITY:
                raise DmaMapError(errno.EINVAL, f"DMA_MAP: fd offset {offset:#x} not page aligned")
            try:
                mapping = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=prot or mmap.PROT_READ, offset=offset)
            except OSError as exc:
                raise DmaMapError(exc.errno or errno.EINVAL, f"DMA_MAP: mmap failed: {exc.strerror}") from exc
            except (ValueError, OverflowError) as exc:
                raise DmaMapError(errno.EINVAL, f"DMA_MAP: mmap failed: {exc}") from exc
        window = DmaWindow(iova, size, flags, offset, fd, mapping, identity)
        self._starts.insert(index, iova)
        self._windows.insert(index, window)
        try:
            for hook in self.on_map:
                hook(window)
        except BaseException:
            # A hook refused the window (e.g. the host IOMMU could not map it): it never
            # existed.  `map` closes the fd; the mapping is ours to close.
            del self._starts[index]
            del self._windows[index]
            if mapping is not None:
                mapping.close()
            raise
        if window.mapping is not None and window.fd is not None:
            # mmap() keeps its own duplicate of the fd: hold one fd per window, not two.
            os.close(window.fd)
            window.fd = None
        return True

    def unmap(self, iova: int, size: int) -> DmaWindow:
        """Remove the window that matches exactly; ENOENT otherwise."""
        index = bisect.bisect_left(self._starts, iova)
        if index < len(self._windows) and self._windows[index].iova == iova and self._windows[index].size == size:
            window = self._windows.pop(index)
            self._starts.pop(index)
            self._release(window)
            return window
        raise DmaMapError(errno.ENOENT, f"DMA_UNMAP [{iova:#x}, +{size:#x}): no such window")

    def unmap_all(self) -> int:
        count = len(self._windows)
        while self._windows:
            window = self._windows.pop()
            self._starts.pop()
            self._release(window)
        return count

    def _release(self, window: DmaWindow) -> None:
        for hook in self.on_unmap:
            hook(window)
        if window.mapping is not None:
            window.mapping.close()
        if window.fd is not None:
            os.close(window.fd)

    # ------------------------------------------------------------ device access
    def find(self, iova: int, size: int) -> DmaWindow:
        index = bisect.bisect_right(self._starts, iova) - 1
        if index >= 0:
            window = self._windows[index]
            if iova + size <= window.end:
                return window
        raise DmaError(errno.EFAULT, f"DMA [{iova:#x}, +{size:#x}) is outside every mapped window")

    def read(self, iova: int, size: int) -> bytes:
        """Read an mmapped window now (EWOULDBLOCK for a window reached through the client)."""
        window = self._readable(iova, size)
        if window.mapping is None:
            raise DmaError(errno.EWOULDBLOCK, f"DMA read at {iova:#x}: the window has no fd (use read_then)")
        start = iova - window.iova
        return window.mapping[start : start + size]

    def write(self, iova: int, data: bytes) -> None:
        """Write an mmapped window now (EWOULDBLOCK for a window reached through the client)."""
        window = self._writable(iova, len(data))
        if window.mapping is None:
            raise DmaError(errno.EWOULDBLOCK, f"DMA write at {iova:#x}: the window has no fd (use write_then)")
        start = iova - window.iova
        window.mapping[start : start + len(data)] = data

    def read_then(self, iova: int, size: int, done: DmaDone) -> None:
        """Read `size` bytes at `iova`; `done(bytes | DmaError)` once they are here (maybe at once)."""
        try:
            window = self._readable(iova, size)
            if window.mapping is None:
                remote = self.remote_read
                if remote is None:
                    raise DmaError(errno.ENODEV, "DMA to a window without fd, and no client to ask")
            else:
                start = iova - window.iova
                data = window.mapping[start : start + size]
        except DmaError as exc:
            done(exc)
            return
        if window.mapping is None:
            remote(iova, size, done)
        else:
            done(data)

    def write_then(self, iova: int, data: bytes, done: DmaDone) -> None:
        """Write `data` at `iova`; `done(b"" | DmaError)` once it is written (maybe at once)."""
        try:
            window = self._writable(iova, len(data))
            if window.mapping is None:
                remote = self.remote_write
                if remote is None:
                    raise DmaError(errno.ENODEV, "DMA to a window without fd, and no client to ask")
            else:
                start = iova - window.iova
                window.mapping[start : start + len(data)] = data
        except DmaError as exc:
            done(exc)
            return
        if window.mapping is None:
            remote(iova, data, done)
        else:
            done(b"")

    def _readable(self, iova: int, size: int) -> DmaWindow:
        window = self.find(iova, size)
        if not window.readable:
            raise DmaError(errno.EPERM, f"DMA read from write-only window at {window.iova:#x}")
        return window

    def _writable(self, iova: int, size: int) -> DmaWindow:
        window = self.find(iova, size)
        if not window.writable:
            raise DmaError(errno.EPERM, f"DMA write to read-only window at {window.iova:#x}")
        return window


def _identity(fd: int | None) -> tuple[int, int] | None:
    if fd is None:
        return None
    st = os.fstat(fd)
    return (st.st_dev, st.st_ino)
