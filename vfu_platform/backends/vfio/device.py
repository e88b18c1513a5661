# SPDX-License-Identifier: BSD-3-Clause
"""`VfioHostBackend`: a real host device, through the kernel's VFIO, behind the backend contract.

The kernel already implements the contract's semantics (it is where they come
from): a level IRQ is automasked when it fires and stays masked until UNMASK;
regions are read and written at `region.offset` in the device fd, and mmapped
from it.  So this class mostly translates calls into ioctls and errnos into
BackendErrors, and owns the fds: the device fd, the group and the container.
DMA goes through the container's IOMMU (type1).  In no-IOMMU mode the device
would DMA to raw physical addresses, so mappings are refused unless the caller
opted in with `allow_unsafe_noiommu_dma`.
"""
from __future__ import annotations

import errno
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

from vfu_platform._vfio import ffi, lib
from vfu_platform.backends.base import BackendError, DeviceBackend, DmaError, IrqInfo, RegionInfo
from vfu_platform.backends.vfio import discovery, uapi
from vfu_platform.backends.vfio.attach import VfioHandle, open_device
from vfu_platform.backends.vfio.container import IommuInfo, IommuType
from vfu_platform.backends.guest import GuestDevice
from vfu_platform.backends.vfio.errors import Problem, VfioHostError, kernel_error
from vfu_platform.backends.vfio.sysfs import SysfsDevice, find_device

log = logging.getLogger(__name__)

_IRQ_SET = "struct vfio_irq_set"


@dataclass(frozen=True, slots=True)
class DmaMapping:
    iova: int
    size: int
    vaddr: int
    flags: int  # VFIO_DMA_MAP_FLAG_READ | WRITE
    programmed: bool  # False: recorded only (no-IOMMU mode, unsafe opt-in)


class VfioHostBackend(DeviceBackend):
    """A host platform, AMBA or PCI device bound to its vfio driver."""

    def __init__(
        self,
        host: str | None = None,
        *,
        sysfsdev: str | None = None,
        iommu: str = "auto",
        allow_unsafe_noiommu_dma: bool = False,
        dev: str = "/dev",
        sysfs: str = "/sys",
    ) -> None:
        """Open `host` (a device name such as "9010000.pl031" or a PCI BDF) or `sysfsdev`.

        Raises VfioHostError (one line, with the fix) for every misconfiguration.
        `iommu` is "auto" (TYPE1v2, else TYPE1, or no-IOMMU for a no-IOMMU
        group), one of those by name, or "iommufd" (refused with the reason
        while the bindings lack it).
        """
        self.sysfs_device: SysfsDevice = find_device(host, sysfsdev, sysfs)
        self._handle: VfioHandle | None = open_device(self.sysfs_device, iommu, dev)
        self.allow_unsafe_noiommu_dma = allow_unsafe_noiommu_dma
        self._dma: dict[int, DmaMapping] = {}
        try:
            self._discover()
        except BaseException:
            self.close()
            raise

    # ---- discovery ---------------------------------------------------------------
    def _discover(self) -> None:
        fd = self.device_fd
        step = "VFIO_DEVICE_GET_INFO"
        try:
            info = discovery.device_info(fd)
            regions = []
            for i in range(info.num_regions):
                step = f"VFIO_DEVICE_GET_REGION_INFO({i})"
                regions.append(discovery.region_info(fd, i))
            irqs = []
            for i in range(info.num_irqs):
                step = f"VFIO_DEVICE_GET_IRQ_INFO({i})"
                irqs.append(discovery.irq_info(fd, i))
        except OSError as e:
            raise kernel_error(f"{self.sysfs_device.name}: {step}", e) from None
        dev = self.sysfs_device
        self.name = dev.name
        self.device_flags = info.flags
        self.compatible = dev.compatible
        reg_names = dev.of_strings("reg-names")
        irq_names = dev.of_strings("interrupt-names")
        self.host_regions: tuple[discovery.HostRegion, ...] = tuple(regions)
        self.host_irqs: tuple[discovery.HostIrq, ...] = tuple(irqs)
        self._regions = tuple(
            RegionInfo(
                index=r.index,
                size=r.size,
                flags=r.flags,
                mmap_fd=fd if r.flags & lib.VFIO_REGION_INFO_FLAG_MMAP else None,
                mmap_offset=r.offset,
                sparse_areas=r.sparse_areas or (),
                name=discovery.region_name(info.flags, r.index, reg_names),
            )
            for r in self.host_regions
        )
        self._irqs = tuple(
            IrqInfo(index=q.index, count=q.count, flags=q.flags,
                    name=discovery.irq_name(info.flags, q.index, irq_names))
            for q in self.host_irqs
        )
        self._guest_devices: tuple[GuestDevice, ...] = ()
        if not info.flags & lib.VFIO_DEVICE_FLAGS_PCI:
            # imported here, so that `python -m ...vfio.guest_devices` runs it without a warning
            from vfu_platform.backends.vfio.guest_devices import HostDescriptionError, describe_host_guest_devices

            try:
                self._guest_devices = describe_host_guest_devices(
                    dev.path, num_regions=len(self._regions), irq_flags=[q.flags for q in self._irqs])
            except (OSError, HostDescriptionError) as e:  # the device still works; the guest gets no descriptor
                log.warning("%s: no guest descriptor: %s", dev.name, e)

    @property
    def device_fd(self) -> int:
        if self._handle is None or self._handle.fd < 0:
            raise BackendError(errno.EBADF, f"{self.sysfs_device.name}: the device is closed")
        return self._handle.fd

    @property
    def iommu(self) -> IommuType:
        assert self._handle is not None
        return self._handle.iommu

    @property
    def noiommu(self) -> bool:
        return self.iommu is IommuType.NOIOMMU

    @property
    def notes(self) -> tuple[str, ...]:
        """What the opener decided and why (e.g. the iommufd fallback), for logs and inspect."""
        return tuple(self._handle.notes) if self._handle else ()

    def regions(self) -> Sequence[RegionInfo]:
        return self._regions

    def irqs(self) -> Sequence[IrqInfo]:
        return self._irqs

    def guest_devices(self) -> tuple[GuestDevice, ...]:
        """The platform device as its DT describes it (vfio/guest_devices.py); () for PCI."""
        return self._guest_devices

    def iommu_info(self) -> IommuInfo | None:
        """IOMMU page sizes and usable IOVA ranges (type1 only; None in no-IOMMU mode)."""
        if self.noiommu or self._handle is None:
            return None
        try:
            return self._handle.container.info()
        except OSError as e:
            raise kernel_error("VFIO_IOMMU_GET_INFO", e) from None

    # ---- register access ---------------------------------------------------------
    def _region(self, region: int) -> discovery.HostRegion:
        try:
            return self.host_regions[region]
        except IndexError:
            raise BackendError(errno.EINVAL, f"{self.name}: no region {region}") from None

    def read(self, region: int, offset: int, size: int) -> bytes:
        where = self._region(region).offset + offset
        try:
            data = os.pread(self.device_fd, size, where)
        except OSError as e:
            raise BackendError(e.errno or errno.EIO, f"{self.name}: read {size}@{offset:#x} of region {region}: "
                               f"{e.strerror}") from None
        if len(data) != size:
            raise BackendError(errno.EIO,
                               f"{self.name}: short read {len(data)}/{size} at {offset:#x} of region {region}")
        return data

    def write(self, region: int, offset: int, data: bytes) -> None:
        where = self._region(region).offset + offset
        try:
            done = os.pwrite(self.device_fd, data, where)
        except OSError as e:
            raise BackendError(e.errno or errno.EIO, f"{self.name}: write {len(data)}@{offset:#x} of region {region}: "
                               f"{e.strerror}") from None
        if done != len(data):
            raise BackendError(errno.EIO,
                               f"{self.name}: short write {done}/{len(data)} at {offset:#x} of region {region}")

    # ---- IRQs --------------------------------------------------------------------
    def set_irqs(self, irq: int, action: int, data: int, start: int = 0, count: int = 1,
                 fds: Sequence[int] = ()) -> None:
        """VFIO_DEVICE_SET_IRQS as is: `action` | `data` on [start, start+count); `fds` for DATA_EVENTFD."""
        payload = ffi.sizeof("int32_t") * len(fds)
        request = uapi.new(_IRQ_SET, ffi.sizeof(_IRQ_SET) + payload)
        request.s.flags = action | data
        request.s.index = irq
        request.s.start = start
        request.s.count = count
        if fds:
            cells = request.array("int32_t", ffi.sizeof(_IRQ_SET), len(fds))
            for i, fd in enumerate(fds):
                cells[i] = fd
        try:
            uapi.ioctl_struct(self.device_fd, lib.VFIO_DEVICE_SET_IRQS, request)
        except OSError as e:
            names = {lib.VFIO_IRQ_SET_ACTION_TRIGGER: "TRIGGER", lib.VFIO_IRQ_SET_ACTION_MASK: "MASK",
                     lib.VFIO_IRQ_SET_ACTION_UNMASK: "UNMASK"}
            raise BackendError(
                e.errno or errno.EIO,
                f"{self.name}: SET_IRQS {names.get(action, action)} on irq {irq} [{start}+{count}]: {e.strerror}",
            ) from None

    def set_irq_trigger(self, irq: int, eventfd: int | None) -> None:
        if eventfd is None:  # count 0 + DATA_NONE: tear the index down (vfio-pci disables INTx/MSI)
            self.set_irqs(irq, lib.VFIO_IRQ_SET_ACTION_TRIGGER, lib.VFIO_IRQ_SET_DATA_NONE, count=0)
        else:
            self.set_irqs(irq, lib.VFIO_IRQ_SET_ACTION_TRIGGER, lib.VFIO_IRQ_SET_DATA_EVENTFD, fds=[eventfd])

    def set_irq_triggers(self, irq: int, eventfds: Sequence[int | None], start: int = 0) -> None:
        """Several vectors of one index (MSI/MSI-X); None leaves a vector without a trigger."""
        fds = [-1 if fd is None else fd for fd in eventfds]
        self.set_irqs(irq, lib.VFIO_IRQ_SET_ACTION_TRIGGER, lib.VFIO_IRQ_SET_DATA_EVENTFD, start, len(fds), fds)

    def mask_irq(self, irq: int) -> None:
        self.set_irqs(irq, lib.VFIO_IRQ_SET_ACTION_MASK, lib.VFIO_IRQ_SET_DATA_NONE)

    def unmask_irq(self, irq: int) -> None:
        self.set_irqs(irq, lib.VFIO_IRQ_SET_ACTION_UNMASK, lib.VFIO_IRQ_SET_DATA_NONE)

    def set_irq_unmask_eventfd(self, irq: int, eventfd: int | None) -> None:
        """Let the host kernel unmask `irq` whenever `eventfd` is signalled (None: stop).

        This is the bypass path: give it a KVM resamplefd (a guest EOI at the
        interrupt controller) and an automasked line is unmasked without a
        round trip through this process.  The caller keeps the fd open.
        """
        self.set_irqs(irq, lib.VFIO_IRQ_SET_ACTION_UNMASK, lib.VFIO_IRQ_SET_DATA_EVENTFD,
                      fds=[-1 if eventfd is None else eventfd])

    def signal_irq(self, irq: int) -> None:
        """Make the kernel signal `irq`'s trigger as if the device fired (a loopback for diagnostics)."""
        self.set_irqs(irq, lib.VFIO_IRQ_SET_ACTION_TRIGGER, lib.VFIO_IRQ_SET_DATA_NONE)

    # ---- reset -------------------------------------------------------------------
    @property
    def can_reset(self) -> bool:
        return bool(self.device_flags & lib.VFIO_DEVICE_FLAGS_RESET)

    def reset(self) -> None:
        if not self.can_reset:
            driver = self.sysfs_device.vfio_driver
            why = ("vfio-platform/vfio-amba found no reset module for its compatible string"
                   if self.sysfs_device.bus != "pci" else "the function has no FLR, PM or bus reset vfio-pci can use")
            raise VfioHostError(
                Problem.UNSUPPORTED,
                f"{self.name} cannot be reset: {driver} does not offer VFIO_DEVICE_RESET ({why})",
                errno.ENOTTY,
            )
        try:
            uapi.ioctl_int(self.device_fd, lib.VFIO_DEVICE_RESET)
        except OSError as e:
            raise kernel_error(f"{self.name}: VFIO_DEVICE_RESET", e) from None

    # ---- DMA ---------------------------------------------------------------------
    def dma_map(self, iova: int, size: int, vaddr: int, readable: bool = True, writable: bool = True) -> None:
        """Let the device reach [vaddr, vaddr+size) of this process at `iova` (VFIO_IOMMU_MAP_DMA).

        The memory must stay mapped until `dma_unmap`: the kernel pins it.
        """
        flags = (lib.VFIO_DMA_MAP_FLAG_READ if readable else 0) | (lib.VFIO_DMA_MAP_FLAG_WRITE if writable else 0)
        if self.noiommu:
            if not self.allow_unsafe_noiommu_dma:
                raise VfioHostError(
                    Problem.UNSAFE_NOIOMMU_DMA,
                    f"{self.name} is in no-IOMMU mode: nothing can translate or confine its DMA, so "
                    f"mapping iova {iova:#x}+{size:#x} is refused; give the machine an IOMMU, or opt in "
                    "with allow_unsafe_noiommu_dma=True (the device then sees physical addresses only)",
                )
            log.warning("%s: no-IOMMU DMA map of iova %#x+%#x recorded only: the device sees physical addresses",
                        self.name, iova, size)
            self._dma[iova] = DmaMapping(iova, size, vaddr, flags, programmed=False)
            return
        assert self._handle is not None
        try:
            self._handle.container.map_dma(iova, size, vaddr, flags)
        except OSError as e:
            raise DmaError(e.errno or errno.EIO, f"{self.name}: VFIO_IOMMU_MAP_DMA iova {iova:#x} size {size:#x} "
                           f"vaddr {vaddr:#x}: {e.strerror}") from None
        self._dma[iova] = DmaMapping(iova, size, vaddr, flags, programmed=True)

    def dma_unmap(self, iova: int, size: int) -> int:
        """Undo mappings inside [iova, iova+size); returns how many bytes were unmapped."""
        gone = [m for m in self._dma.values() if iova <= m.iova and m.iova + m.size <= iova + size]
        if self.noiommu:
            for m in gone:
                del self._dma[m.iova]
            return sum(m.size for m in gone)
        assert self._handle is not None
        try:
            unmapped = self._handle.container.unmap_dma(iova, size)
        except OSError as e:
            raise DmaError(e.errno or errno.EIO, f"{self.name}: VFIO_IOMMU_UNMAP_DMA iova {iova:#x} size {size:#x}: "
                           f"{e.strerror}") from None
        for m in gone:
            del self._dma[m.iova]
        return unmapped

    def dma_mappings(self) -> tuple[DmaMapping, ...]:
        return tuple(sorted(self._dma.values(), key=lambda m: m.iova))

    # ---- lifetime ----------------------------------------------------------------
    def close(self) -> None:
        """Release the device fd, the group and the container (the kernel drops DMA maps and IRQs)."""
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.close()
        self._dma.clear()

    def __enter__(self) -> VfioHostBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
