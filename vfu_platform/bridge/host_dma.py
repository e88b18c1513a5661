# SPDX-License-Identifier: BSD-3-Clause
"""Client memory made reachable by a host device: DMA windows -> the host IOMMU.

A host device DMAs by IOVA, in hardware, without asking this process.  So each
client DMA window must be programmed into the host IOMMU at the client's IOVA
(protocol brief 5.5): `VFIO_IOMMU_MAP_DMA` with vaddr = where the session
mmapped the window's fd.  This module hooks a session's `DmaMapTable`:

* on map: a window with a mapping is programmed; a failure (EINVAL for an
  unaligned window, the no-IOMMU refusal...) fails the DMA_MAP, and the table
  drops the window.  A window without an fd has nothing this process could
  hand to the IOMMU: it is accepted (QEMU's default RAM has no fd, and refusing
  a RAM map breaks QEMU's realize) and reported as unreachable by the device;
* on unmap: the IOMMU mapping goes away *before* the table munmaps the window
  (the table runs its on_unmap hooks first), so the device can never reach
  pages this process no longer maps;
* on client loss (`detach`): every window still programmed is unmapped from
  the IOMMU, then the hooks are removed; the session munmaps afterwards.

In no-IOMMU mode the backend refuses maps unless the server was started with
`--unsafe-noiommu-dma` (the device would see raw physical addresses); the
error the client's DMA_MAP gets says so.
"""
from __future__ import annotations

import logging
import mmap
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from vfu_platform._vfio import ffi
from vfu_platform.backends.base import BackendError, DmaError
from vfu_platform.dma import DmaMapTable, DmaWindow

log = logging.getLogger("vfu_platform.bridge.host_dma")

Trace = Callable[..., None]


@runtime_checkable
class HostIommu(Protocol):
    """What a backend offers when it has a host IOMMU behind it (VfioHostBackend does)."""

    name: str

    def dma_map(self, iova: int, size: int, vaddr: int, readable: bool = True, writable: bool = True) -> None: ...

    def dma_unmap(self, iova: int, size: int) -> int: ...


def supports_host_dma(backend: object) -> bool:
    """True for a backend whose device DMAs by itself, through an IOMMU this process programs."""
    return isinstance(backend, HostIommu)


def mapping_address(mapping: mmap.mmap) -> int:
    """The address of an mmap in this process (the buffer export is released at once).

    A live export would make `mapping.close()` fail later with BufferError.
    """
    view = ffi.from_buffer(mapping)
    try:
        return int(ffi.cast("uintptr_t", view))
    finally:
        ffi.release(view)


class HostDma:
    """Keeps a host IOMMU in step with one client's DMA windows."""

    def __init__(self, backend: HostIommu, trace: Trace | None = None) -> None:
        self.backend = backend
        self._trace = trace
        self._table: DmaMapTable | None = None
        #: (iova, size) -> vaddr of every window programmed into the IOMMU
        self.programmed: dict[tuple[int, int], int] = {}
        #: windows accepted without an fd: the device cannot reach them
        self.unreachable = 0

    def trace(self, event: str, **fields: object) -> None:
        if self._trace is not None:
            self._trace(event, **fields)

    # ------------------------------------------------------------ lifetime
    def attach(self, table: DmaMapTable) -> None:
        """Program every window the table already holds, then follow its changes."""
        self._table = table
        for window in table:
            self._on_map(window)
        table.on_map.append(self._on_map)
        table.on_unmap.append(self._on_unmap)

    def detach(self) -> None:
        """Client gone: unmap what is programmed (before the session munmaps), drop the hooks."""
        table, self._table = self._table, None
        if table is not None:
            _remove(table.on_map, self._on_map)
            _remove(table.on_unmap, self._on_unmap)
        for iova, size in list(self.programmed):
            self._unmap(iova, size, reason="client lost")

    # ------------------------------------------------------------ hooks
    def _on_map(self, window: DmaWindow) -> None:
        if window.mapping is None:
            self.unreachable += 1
            log.info("%s: DMA window [%#x, +%#x) came without an fd: the device cannot reach it "
                     "(give the client shared memory, e.g. memory-backend-memfd,share=on)",
                     self.backend.name, window.iova, window.size)
            self.trace("dma-unreachable", iova=window.iova, size=window.size, reason="no fd")
            return
        vaddr = mapping_address(window.mapping)
        try:
            self.backend.dma_map(window.iova, window.size, vaddr, readable=window.readable,
                                 writable=window.writable)
        except BackendError as exc:
            hint = ""
            if getattr(self.backend, "noiommu", False):
                hint = "; to allow it anyway start the server with --unsafe-noiommu-dma"
            log.warning("DMA_MAP [%#x, +%#x) refused: %s%s", window.iova, window.size, exc, hint)
            self.trace("dma-map-refused", iova=window.iova, size=window.size, errno=exc.errno, error=str(exc))
            raise DmaError(exc.errno, f"{exc}{hint}") from exc
        self.programmed[(window.iova, window.size)] = vaddr
        self.trace("dma-iommu-map", iova=window.iova, size=window.size, vaddr=vaddr,
                   flags=window.flags)

    def _on_unmap(self, window: DmaWindow) -> None:
        if (window.iova, window.size) in self.programmed:
            self._unmap(window.iova, window.size, reason="DMA_UNMAP")

    def _unmap(self, iova: int, size: int, reason: str) -> None:
        """Never raises: the window goes away for the client whatever the kernel says."""
        del self.programmed[(iova, size)]
        try:
            self.backend.dma_unmap(iova, size)
        except BackendError as exc:
            log.warning("%s: IOMMU unmap of [%#x, +%#x) failed: %s", self.backend.name, iova, size, exc)
            self.trace("dma-iommu-unmap-failed", iova=iova, size=size, errno=exc.errno, error=str(exc))
            return
        self.trace("dma-iommu-unmap", iova=iova, size=size, reason=reason)


def _remove(hooks: list, hook: object) -> None:
    try:
        hooks.remove(hook)
    except ValueError:
        pass
