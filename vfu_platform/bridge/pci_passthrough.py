# SPDX-License-Identifier: BSD-3-Clause
"""A host PCI function (vfio-pci) served as itself: no bridge, no plan.

A platform device needs the bridge to look like PCI; a PCI function already
is one, and vfio-pci already gives userspace exactly what a vfio-user client
expects (QEMU's vfio-user-pci reuses the vfio-pci code that drives it).  So
this device forwards, and emulates only what has to be:

* regions keep their index: BAR0-5, ROM, CONFIG, VGA and any device-specific
  region, with the host's size, flags and capabilities (sparse mmap areas,
  MSI-X mappable, region type).  An mmappable region is offered with the VFIO
  *device fd* at the host's region offset, so the client's mmap maps the real
  BAR (the fast path; protocol brief 5.4).  Trapped accesses are pread/pwrite
  on the device fd;
* config space is forwarded to the device's config region (region 7), except
  the BAR and ROM BAR registers (`pci_bars`: host physical addresses mean
  nothing to the client, and the client needs the type bits);
* SET_IRQS goes to the host's VFIO_DEVICE_SET_IRQS - INTx (the kernel
  automasks it until the client's UNMASK), MSI, MSI-X, ERR, REQ - with the
  client's eventfds passed straight to the kernel, so an interrupt never wakes
  this process.  The kernel keeps its own reference to each eventfd, so the
  server's copies are closed at once.  DATA_BOOL becomes one DATA_NONE per
  selected vector, which is what the kernel does with it.  The answers are the
  simulated bridge's, not the kernel's stricter ones where the two differ
  (tests/test_conformance_strict.py holds them side by side): disabling an index
  that is not enabled - or has no vectors at all, as QEMU does blindly - succeeds
  without an ioctl, a loopback trigger of an index without eventfds does nothing,
  enabling INTx, MSI or MSI-X first disables whichever of them is on, and INTx
  MASK / UNMASK / resamplefd sent before INTx is enabled are kept and applied when
  it is.  MSI / MSI-X MASK and UNMASK are forwarded, and vfio-pci refuses them
  (ENOTTY; QEMU masks a vector by swapping its eventfd instead);
* DMA windows are programmed into the host IOMMU (`host_dma`);
* DEVICE_RESET is VFIO_DEVICE_RESET, or a plain report for a function that has
  no reset (`device_reset`); DEVICE_GET_INFO reports RESET only if the host can.

When the client goes away its interrupts are torn down on the host, the device
is reset (unless `reset_on_client_loss` is off) and its DMA windows leave the
IOMMU before the session unmaps them.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vfu_platform import vfio_abi
from vfu_platform.backends.base import BackendError
from vfu_platform.bridge.api import ClientContext
from vfu_platform.bridge.device_reset import DeviceResetter
from vfu_platform.bridge.host_dma import HostDma, supports_host_dma
from vfu_platform.bridge.pci_bars import BAR_COUNT, EmulatedBars
from vfu_platform.counters import Counters
from vfu_platform.fds import close_quietly as _close
from vfu_platform.protocol import messages as m
from vfu_platform.trace import TraceHook, Tracer

if TYPE_CHECKING:
    from vfu_platform.backends.vfio import VfioHostBackend

log = logging.getLogger("vfu_platform.passthrough")

_CONFIG = vfio_abi.PCI_CONFIG_REGION_INDEX
_ROM = vfio_abi.PCI_ROM_REGION_INDEX
_REGION_FLAGS = vfio_abi.REGION_FLAG_READ | vfio_abi.REGION_FLAG_WRITE | vfio_abi.REGION_FLAG_MMAP
_TRIGGER = vfio_abi.IRQ_SET_ACTION_TRIGGER
_NONE = vfio_abi.IRQ_SET_DATA_NONE
_BOOL = vfio_abi.IRQ_SET_DATA_BOOL
_EVENTFD = vfio_abi.IRQ_SET_DATA_EVENTFD
_MASK = vfio_abi.IRQ_SET_ACTION_MASK
_INTX = vfio_abi.PCI_INTX_IRQ_INDEX
#: INTx, MSI and MSI-X: at most one of them is enabled on the host at a time
_EXCLUSIVE = (vfio_abi.PCI_INTX_IRQ_INDEX, vfio_abi.PCI_MSI_IRQ_INDEX, vfio_abi.PCI_MSIX_IRQ_INDEX)


def serves_as_pci_function(backend: object) -> bool:
    """A host device that is a PCI function (vfio-pci): serve it as is, not through the bridge."""
    return supports_host_dma(backend) and bool(getattr(backend, "device_flags", 0) & vfio_abi.DEVICE_FLAGS_PCI)


@dataclass(slots=True)
class PassthroughOptions:
    #: reset the function when a client goes away (the next client must not inherit its state)
    reset_on_client_loss: bool = True


class PciPassthrough:
    """A `ServedDevice` for a host PCI function opened by `VfioHostBackend`."""

    def __init__(self, backend: VfioHostBackend, options: PassthroughOptions | None = None) -> None:
        if not serves_as_pci_function(backend):
            raise ValueError(f"{backend.name} is not a host PCI function (vfio-pci): use the bridge")
        self.backend = backend
        self.options = options or PassthroughOptions()
        self.regions = backend.host_regions
        self.irqs = backend.host_irqs
        #: the one trace hook (records while a client's tracer is set) and counters
        self.trace = TraceHook()
        self.counters = Counters()
        sizes = [self._size(i) for i in range(BAR_COUNT)]
        type_bits = [0] * BAR_COUNT
        if self._size(_CONFIG) >= 0x28:
            raw = backend.read(_CONFIG, 0x10, 4 * BAR_COUNT)
            type_bits = [int.from_bytes(raw[4 * i : 4 * i + 4], "little") & 0xF for i in range(BAR_COUNT)]
        self.bars = EmulatedBars(sizes, type_bits, self._size(_ROM))
        self._resetter = DeviceResetter(backend, self.trace)
        self._host_dma: HostDma | None = None
        self._client: ClientContext | None = None
        #: IRQ indexes the client wired (eventfds the kernel holds): torn down when it goes
        self._wired: set[int] = set()
        #: which of INTx / MSI / MSI-X is enabled on the host (None: none)
        self._mode: int | None = None
        #: the client's INTx MASK state and resamplefd, kept while INTx is not enabled
        self._intx_masked = False
        self._pending_resample: int | None = None

    def _size(self, index: int) -> int:
        if index >= len(self.regions) or not self.regions[index].present:
            return 0
        return self.regions[index].size

    @property
    def tracer(self) -> Tracer | None:
        return self.trace.tracer

    # ------------------------------------------------------------ info
    def device_info(self) -> tuple[int, int, int]:
        flags = vfio_abi.DEVICE_FLAGS_PCI | (self.backend.device_flags & vfio_abi.DEVICE_FLAGS_RESET)
        return flags, len(self.regions), len(self.irqs)

    def region_size(self, index: int) -> int:
        return self._size(index)

    def region_info(self, index: int) -> tuple[m.RegionInfo, int | None]:
        size = self._size(index)
        if size == 0:
            return m.RegionInfo(0, 0, index, 0, 0, 0), None
        region = self.regions[index]
        flags = region.flags & _REGION_FLAGS
        caps: list[m.RegionCap] = []
        fd = None
        if flags & vfio_abi.REGION_FLAG_MMAP and index != _CONFIG:
            fd = self.backend.device_fd  # the client maps the real BAR at the host's offset
            if region.sparse_areas is not None:
                caps.append(m.SparseMmapCap(region.sparse_areas))
        else:
            flags &= ~vfio_abi.REGION_FLAG_MMAP
        if region.msix_mappable:
            caps.append(m.MsixMappableCap())
        if region.region_type is not None:
            caps.append(m.TypeCap(*region.region_type))
        return m.RegionInfo(0, flags, index, 0, size, region.offset, tuple(caps)), fd

    def irq_info(self, index: int) -> tuple[int, int]:
        irq = self.irqs[index]
        return irq.flags, irq.count

    # ------------------------------------------------------------ region access
    def region_read(self, index: int, offset: int, count: int) -> bytes:
        if index != _CONFIG:
            return self.backend.read(index, offset, count)
        if self.bars.covers(offset, count):
            data = bytearray(count)
        else:
            data = bytearray(self.backend.read(_CONFIG, offset, count))
        self.bars.overlay(offset, data)
        return bytes(data)

    def region_write(self, index: int, offset: int, data: bytes) -> None:
        if index != _CONFIG:
            self.backend.write(index, offset, data)
            return
        for where, chunk in self.bars.write(offset, data):
            self.backend.write(_CONFIG, where, chunk)

    # ------------------------------------------------------------ interrupts
    def set_irqs(self, request: m.IrqSet, fds: list[int]) -> None:
        """Forward to VFIO_DEVICE_SET_IRQS; the kernel takes its own eventfd references."""
        try:
            self._set_irqs(request, fds)
        finally:
            for fd in fds:
                _close(fd)
            fds.clear()

    def _set_irqs(self, request: m.IrqSet, fds: list[int]) -> None:
        index, action, data_type = request.index, request.action, request.data_type
        start, count = request.start, request.count
        self.trace("set-irqs", index=index, flags=request.flags, start=start, count=count, fds=len(fds))
        self.counters.bump("set-irqs")
        if action == _TRIGGER and data_type == _NONE and count == 0:
            self._disable(index)  # also on an index with no vectors: QEMU disables blindly
            return
        if action == _TRIGGER and data_type == _EVENTFD:
            if index in _EXCLUSIVE and self._mode not in (None, index):
                self._disable(self._mode)  # the bridge switches its route the same way
            self._forward(request, fds)
            self._wired.add(index)
            if index in _EXCLUSIVE and self._mode != index:
                self._mode = index
                if index == _INTX:
                    self._apply_pending_intx()
            return
        if action == _TRIGGER:  # DATA_NONE / DATA_BOOL: a loopback trigger
            if index in self._wired and (index not in _EXCLUSIVE or self._mode == index):
                self._forward(request, fds)
            return  # nothing wired: nothing to signal
        if index == _INTX and self._mode != _INTX:
            # INTx is not enabled on the host (vfio-pci would say EINVAL): keep what the
            # client said for when it is.
            if data_type == _EVENTFD:
                self._keep_resample(fds.pop() if fds else None)
            elif _selected(request):
                self._intx_masked = action == _MASK
            return
        self._forward(request, fds)
        if index == _INTX and data_type != _EVENTFD and _selected(request):
            self._intx_masked = action == _MASK

    def _forward(self, request: m.IrqSet, fds: list[int]) -> None:
        index, action, data_type = request.index, request.action, request.data_type
        start, count = request.start, request.count
        if data_type == _BOOL:
            for vector in _selected(request):
                self.backend.set_irqs(index, action, _NONE, vector, 1)
        elif data_type == _EVENTFD:
            # No fds for count n: QEMU's way to say "these vectors have no eventfd" (-1 each).
            cells = list(fds) if fds else [-1] * count
            self.backend.set_irqs(index, action, _EVENTFD, start, count, cells)
        else:
            self.backend.set_irqs(index, action, _NONE, start, count)

    def _disable(self, index: int) -> None:
        """TRIGGER | DATA_NONE, count 0 on the host, if the index is enabled there."""
        if index == _INTX:
            self._keep_resample(None)
        if index not in self._wired or (index in _EXCLUSIVE and self._mode != index):
            return
        self.backend.set_irqs(index, _TRIGGER, _NONE, 0, 0)
        self._wired.discard(index)
        if self._mode == index:
            self._mode = None

    def _keep_resample(self, fd: int | None) -> None:
        if self._pending_resample is not None:
            _close(self._pending_resample)
        self._pending_resample = fd

    def _apply_pending_intx(self) -> None:
        """INTx just got enabled: the client's earlier MASK and resamplefd take effect now."""
        if self._intx_masked:
            self.backend.set_irqs(_INTX, _MASK, _NONE, 0, 1)
        fd, self._pending_resample = self._pending_resample, None
        if fd is not None:
            try:
                self.backend.set_irqs(_INTX, vfio_abi.IRQ_SET_ACTION_UNMASK, _EVENTFD, 0, 1, [fd])
            finally:
                _close(fd)

    def _unwire_all(self) -> None:
        for index in sorted(self._wired):
            try:
                self.backend.set_irqs(index, _TRIGGER, _NONE, 0, 0)
            except BackendError as exc:
                log.warning("%s: disabling IRQ index %d: %s", self.backend.name, index, exc)
        self._wired.clear()
        self._mode = None
        self._intx_masked = False
        self._keep_resample(None)

    # ------------------------------------------------------------ reset
    def reset(self, reason: str = "DEVICE_RESET") -> None:
        self._resetter.reset(reason)  # a function without reset is reported, never an error
        self.bars.reset()
        self.trace("device-reset", reason=reason)

    # ------------------------------------------------------------ client lifecycle
    def client_attached(self, context: ClientContext) -> None:
        self._client = context
        self.trace.tracer = context.tracer
        self._host_dma = HostDma(self.backend, self.trace)
        self._host_dma.attach(context.dma)

    def client_lost(self) -> None:
        """Interrupts off, reset, then the IOMMU unmaps (the session munmaps the windows after)."""
        self._unwire_all()
        if self.options.reset_on_client_loss:
            self.reset("client lost")
        if self._host_dma is not None:
            self._host_dma.detach()
            self._host_dma = None
        self._client = None
        self.trace("client-lost-cleanup")

    def close(self) -> None:
        """Server shutdown: release the device (the kernel drops what is left)."""
        self._unwire_all()
        self.backend.close()


def _selected(request: m.IrqSet) -> list[int]:
    """The vectors a request applies to (DATA_BOOL picks some)."""
    vectors = range(request.start, request.start + request.count)
    if request.data_type == _BOOL:
        return [v for v, flag in zip(vectors, request.data) if flag]
    return list(vectors)


__all__ = ["PassthroughOptions", "PciPassthrough", "serves_as_pci_function"]
