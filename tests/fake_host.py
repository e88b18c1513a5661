# SPDX-License-Identifier: BSD-3-Clause
"""A stand-in for `VfioHostBackend` on machines without /dev/vfio, and an in-process server.

The real backend is tested against real kernels in tests/kernel/; these tests
check what the layers above do with a host device (IOMMU programming of DMA
windows, reset reporting, PCI passthrough forwarding) where no VFIO exists.
The stand-in behaves like the kernel where it matters to them:

* its "device fd" is a memfd, so the client's mmap of a region really maps
  the memory `read`/`write` reach (region offsets as vfio-pci: index << 40,
  except the BARs tests mmap, at offset 0);
* SET_IRQS with eventfds keeps its own duplicate, as the kernel keeps an
  eventfd reference, so `fire()` reaches the client after the server closed
  its copy;
* `dma_map` reads the memory at `vaddr` (proving it is the client's window)
  and `dma_unmap` records whether that address was still mapped in this
  process, which is how the tests see the IOMMU unmap happen before munmap.
"""
from __future__ import annotations

import ctypes
import errno
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from vfu_platform import vfio_abi
from vfu_platform.backends.base import DeviceBackend, DmaError, IrqInfo, RegionInfo
from vfu_platform.backends.vfio.discovery import HostIrq, HostRegion
from vfu_platform.backends.vfio.errors import Problem, VfioHostError
from vfu_platform.server.listener import Server
from vfu_platform.trace import Tracer

RW = vfio_abi.REGION_FLAG_READ | vfio_abi.REGION_FLAG_WRITE
RWM = RW | vfio_abi.REGION_FLAG_MMAP
LEVEL = vfio_abi.IRQ_INFO_EVENTFD | vfio_abi.IRQ_INFO_MASKABLE | vfio_abi.IRQ_INFO_AUTOMASKED
EDGE = vfio_abi.IRQ_INFO_EVENTFD
MEMFD_SIZE = 0x10000


@dataclass
class DmaCall:
    iova: int
    size: int
    vaddr: int
    readable: bool
    writable: bool
    head: bytes  # the first bytes at vaddr when mapped


def _mapped(vaddr: int) -> bool:
    with open("/proc/self/maps") as f:
        for line in f:
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            if lo <= vaddr < hi:
                return True
    return False


class FakeHostBackend(DeviceBackend):
    """A host device as VfioHostBackend presents one (PCI by default: edu's shape)."""

    def __init__(self, *, pci: bool = True, can_reset: bool = False, noiommu: bool = False,
                 allow_unsafe_noiommu_dma: bool = False, regions: Sequence[HostRegion] | None = None,
                 irqs: Sequence[HostIrq] | None = None, config: bytes | None = None,
                 kernel_checks: bool = False) -> None:
        self.name = "0000:00:05.0" if pci else "9010000.fake"
        self.device_flags = (vfio_abi.DEVICE_FLAGS_PCI if pci else vfio_abi.DEVICE_FLAGS_PLATFORM) | (
            vfio_abi.DEVICE_FLAGS_RESET if can_reset else 0)
        self.noiommu = noiommu
        self.allow_unsafe_noiommu_dma = allow_unsafe_noiommu_dma
        self._fd = os.memfd_create("fake-vfio-device", os.MFD_CLOEXEC)
        os.ftruncate(self._fd, MEMFD_SIZE)
        if regions is None:
            regions = self.pci_regions() if pci else [HostRegion(index=0, flags=RWM, size=0x1000, offset=0)]
        if irqs is None:
            irqs = self.pci_irqs() if pci else [HostIrq(index=0, flags=LEVEL, count=1)]
        self.host_regions = tuple(regions)
        self.host_irqs = tuple(irqs)
        self.config = bytearray(config if config is not None else self.pci_config())
        self.calls: list[tuple] = []  # every set_irqs / mask / unmask / reset, in order
        self.kernel_fds: dict[tuple[int, int], int] = {}  # (index, vector) -> our duplicate
        self.unmask_fd: int | None = None
        self.line_fds: dict[int, int] = {}  # bridge-owned line triggers (platform devices)
        self.dma_maps: list[DmaCall] = []
        self.dma_unmaps: list[tuple[int, int, bool]] = []  # (iova, size, vaddr still mapped)
        self.resets = 0
        self.closed = False
        #: answer SET_IRQS as vfio-pci does (VfioPciIrqs): validation, the action table,
        #: the interrupt mode; off, every call succeeds (what most tests want to see)
        self.kernel = VfioPciIrqs([q.count for q in self.host_irqs]) if kernel_checks else None

    # ---- shapes -----------------------------------------------------------------
    @staticmethod
    def pci_regions() -> list[HostRegion]:
        """BAR0 4 KiB mmappable at 0, BAR2 64-bit prefetchable 8 KiB trapped, config 256 bytes."""
        return [
            HostRegion(index=0, flags=RWM, size=0x1000, offset=0),
            HostRegion(index=1, flags=0, size=0, offset=1 << 40),
            HostRegion(index=2, flags=RW, size=0x2000, offset=0x2000),
            HostRegion(index=3, flags=0, size=0, offset=3 << 40),
            HostRegion(index=4, flags=RWM, size=0x1000, offset=0x4000, sparse_areas=((0, 0x800),)),
            HostRegion(index=5, flags=0, size=0, offset=5 << 40),
            HostRegion(index=6, flags=vfio_abi.REGION_FLAG_READ, size=0x800, offset=0x6000),
            HostRegion(index=7, flags=RW, size=0x100, offset=7 << 40),
            HostRegion(index=8, flags=0, size=0, offset=0, present=False),
        ]

    @staticmethod
    def pci_irqs() -> list[HostIrq]:
        return [HostIrq(0, LEVEL, 1), HostIrq(1, EDGE | vfio_abi.IRQ_INFO_NORESIZE, 1),
                HostIrq(2, EDGE | vfio_abi.IRQ_INFO_NORESIZE, 4), HostIrq(3, 0, 0), HostIrq(4, EDGE, 1)]

    @staticmethod
    def pci_config() -> bytes:
        cfg = bytearray(256)
        cfg[0:4] = (0x11E81234).to_bytes(4, "little")
        cfg[4:6] = (0x0000).to_bytes(2, "little")
        cfg[0x10:0x14] = (0xFEA00000).to_bytes(4, "little")  # host physical address, 32-bit memory
        cfg[0x18:0x1C] = (0xC000000C).to_bytes(4, "little")  # 64-bit prefetchable
        cfg[0x1C:0x20] = (0x00000001).to_bytes(4, "little")
        cfg[0x20:0x24] = (0xFEB00000).to_bytes(4, "little")
        cfg[0x2C:0x30] = (0xABCD1AF4).to_bytes(4, "little")
        cfg[0x30:0x34] = (0xFEC00000).to_bytes(4, "little")
        cfg[0x3D] = 1
        return bytes(cfg)

    # ---- DeviceBackend ----------------------------------------------------------
    @property
    def device_fd(self) -> int:
        return self._fd

    @property
    def can_reset(self) -> bool:
        return bool(self.device_flags & vfio_abi.DEVICE_FLAGS_RESET)

    def regions(self) -> Sequence[RegionInfo]:
        return [RegionInfo(index=r.index, size=r.size, flags=r.flags,
                           mmap_fd=self._fd if r.flags & vfio_abi.REGION_FLAG_MMAP else None,
                           mmap_offset=r.offset, sparse_areas=r.sparse_areas or (), name=f"reg{r.index}")
                for r in self.host_regions]

    def irqs(self) -> Sequence[IrqInfo]:
        return [IrqInfo(index=q.index, count=q.count, flags=q.flags) for q in self.host_irqs]

    def read(self, region: int, offset: int, size: int) -> bytes:
        if self.device_flags & vfio_abi.DEVICE_FLAGS_PCI and region == vfio_abi.PCI_CONFIG_REGION_INDEX:
            self.calls.append(("config-read", offset, size))
            return bytes(self.config[offset : offset + size])
        return os.pread(self._fd, size, self.host_regions[region].offset + offset)

    def write(self, region: int, offset: int, data: bytes) -> None:
        if self.device_flags & vfio_abi.DEVICE_FLAGS_PCI and region == vfio_abi.PCI_CONFIG_REGION_INDEX:
            self.calls.append(("config-write", offset, bytes(data)))
            self.config[offset : offset + len(data)] = data
            return
        os.pwrite(self._fd, data, self.host_regions[region].offset + offset)

    def set_irqs(self, irq: int, action: int, data: int, start: int = 0, count: int = 1,
                 fds: Sequence[int] = ()) -> None:
        self.calls.append(("set_irqs", irq, action, data, start, count, tuple(fds)))
        if self.kernel is not None:
            self.kernel.set_irqs(irq, action, data, start, count, fds)
        if action == vfio_abi.IRQ_SET_ACTION_TRIGGER and data == vfio_abi.IRQ_SET_DATA_EVENTFD:
            for vector, fd in enumerate(fds, start):
                old = self.kernel_fds.pop((irq, vector), None)
                if old is not None:
                    os.close(old)
                if fd >= 0:
                    self.kernel_fds[(irq, vector)] = os.dup(fd)  # the kernel's eventfd reference
        elif action == vfio_abi.IRQ_SET_ACTION_TRIGGER and count == 0:
            for key in [k for k in self.kernel_fds if k[0] == irq]:
                os.close(self.kernel_fds.pop(key))

    def fire(self, irq: int, vector: int = 0) -> None:
        os.eventfd_write(self.kernel_fds[(irq, vector)], 1)

    def set_irq_trigger(self, irq: int, eventfd: int | None) -> None:
        self.calls.append(("trigger", irq, eventfd))
        if eventfd is None:
            self.line_fds.pop(irq, None)
        else:
            self.line_fds[irq] = eventfd

    def mask_irq(self, irq: int) -> None:
        self.calls.append(("mask", irq))

    def unmask_irq(self, irq: int) -> None:
        self.calls.append(("unmask", irq))

    def reset(self) -> None:
        self.calls.append(("reset",))
        if not self.can_reset:
            raise VfioHostError(Problem.UNSUPPORTED, f"{self.name} cannot be reset: no VFIO_DEVICE_RESET",
                                errno.ENOTTY)
        self.resets += 1

    # ---- DMA ----------------------------------------------------------------------
    def dma_map(self, iova: int, size: int, vaddr: int, readable: bool = True, writable: bool = True) -> None:
        if self.noiommu and not self.allow_unsafe_noiommu_dma:
            raise VfioHostError(Problem.UNSAFE_NOIOMMU_DMA, f"{self.name} is in no-IOMMU mode: mapping refused")
        if (iova | size | vaddr) & 0xFFF:
            raise DmaError(errno.EINVAL, f"VFIO_IOMMU_MAP_DMA iova {iova:#x}: Invalid argument")
        self.dma_maps.append(DmaCall(iova, size, vaddr, readable, writable, ctypes.string_at(vaddr, 16)))

    def dma_unmap(self, iova: int, size: int) -> int:
        vaddr = next(m.vaddr for m in self.dma_maps if (m.iova, m.size) == (iova, size))
        self.dma_unmaps.append((iova, size, _mapped(vaddr)))
        return size

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            for fd in self.kernel_fds.values():
                os.close(fd)
            self.kernel_fds.clear()
            os.close(self._fd)


class VfioPciIrqs:
    """VFIO_DEVICE_SET_IRQS answers of vfio-pci (drivers/vfio/pci/vfio_pci_intrs.c), as errnos.

    Modelled where a client's request can get a different answer than "success":
    `vfio_set_irqs_validate_and_prepare` (start/count against the index's vectors:
    start 0 count 0 on an index with no vectors is EINVAL), the action table
    (MASK/UNMASK of MSI/MSI-X, anything but TRIGGER on ERR/REQ: ENOTTY), and the
    interrupt mode: INTx, MSI and MSI-X exclude each other, INTx MASK/UNMASK and a
    loopback trigger need the index enabled, disabling an index that is not enabled
    is EINVAL.  ERR/REQ are single eventfd contexts (loopback or disable without one: EINVAL).
    """

    NONE_MODE = -1

    def __init__(self, counts: Sequence[int]) -> None:
        self.counts = list(counts)
        self.mode = self.NONE_MODE  # INTx (0), MSI (1), MSI-X (2) or none
        self.ctx: dict[int, bool] = {}  # ERR/REQ: an eventfd is set

    @staticmethod
    def _fail(code: int, what: str) -> None:
        from vfu_platform.backends.base import BackendError

        raise BackendError(code, f"fake VFIO_DEVICE_SET_IRQS: {what}: {os.strerror(code)}")

    def set_irqs(self, index: int, action: int, data: int, start: int, count: int, fds: Sequence[int]) -> None:
        inval = errno.EINVAL
        num = self.counts[index] if index < len(self.counts) else 0
        if index >= 5 or count >= 0xFFFFFFFF - start:
            self._fail(inval, "bad index or count")
        if start >= num or start + count > num:
            self._fail(inval, f"[{start}, +{count}) outside {num} vectors")
        trigger = action == vfio_abi.IRQ_SET_ACTION_TRIGGER
        none = data == vfio_abi.IRQ_SET_DATA_NONE
        eventfd = data == vfio_abi.IRQ_SET_DATA_EVENTFD
        if index in (1, 2) and not trigger:
            self._fail(errno.ENOTTY, "MSI/MSI-X masking is not exported")
        if index in (3, 4) and not trigger:
            self._fail(errno.ENOTTY, "ERR/REQ take TRIGGER only")
        if index == 0 and not trigger:  # vfio_pci_set_intx_mask / _unmask
            if self.mode != 0 or start != 0 or count != 1:
                self._fail(inval, "INTx mask/unmask without INTx enabled")
            return
        if index in (0, 1, 2):  # vfio_pci_set_intx_trigger / vfio_pci_set_msi_trigger
            if self.mode == index and count == 0 and none:
                self.mode = self.NONE_MODE
                return
            if self.mode not in (index, self.NONE_MODE):
                self._fail(inval, f"index {index} while index {self.mode} is enabled")
            if eventfd:
                if index == 0 and (start != 0 or count != 1):  # intx: one eventfd, or -1
                    self._fail(inval, "INTx takes one eventfd")
                self.mode = index
                return
            if self.mode != index:
                self._fail(inval, f"index {index} is not enabled")
            return
        # ERR / REQ: vfio_pci_set_ctx_trigger_single
        if start != 0 or count > 1:
            self._fail(inval, "ERR/REQ: one vector")
        if eventfd:
            self.ctx[index] = bool(fds) and fds[0] >= 0
            return
        if self.ctx.get(index):
            if count == 0 and none:
                self.ctx[index] = False
            return
        self._fail(inval, "ERR/REQ loopback or disable without an eventfd")


@dataclass
class RunningServer:
    server: Server
    socket_path: str
    trace_path: Path
    errors: list[BaseException] = field(default_factory=list)

    def trace_events(self, name: str) -> list[dict]:
        from vfu_platform.trace import EventRecord, read_trace

        return [r.fields for r in read_trace(str(self.trace_path)) if isinstance(r, EventRecord) and r.event == name]

    @property
    def session_closed(self) -> bool:
        session = self.server.session
        return session is None or session.closed


@contextmanager
def serve_in_thread(device: object, tmp_path: Path) -> Iterator[RunningServer]:
    """Our server, in this process, on a thread of its own, serving `device` (a ServedDevice)."""
    socket_path = str(tmp_path / "fake.sock")
    trace_path = tmp_path / "trace.jsonl"
    tracer = Tracer.open(str(trace_path))
    server = Server(socket_path, device, tracer=tracer)  # type: ignore[arg-type]
    server.listen()
    running = RunningServer(server, socket_path, trace_path)
    stop = threading.Event()

    def loop() -> None:
        try:
            while not stop.is_set():
                server.loop.run_once(0.02)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            running.errors.append(exc)

    thread = threading.Thread(target=loop, name="vfu-server", daemon=True)
    thread.start()
    try:
        yield running
    finally:
        stop.set()
        thread.join(5)
        server.close()
        tracer.close()
        assert not running.errors, running.errors
