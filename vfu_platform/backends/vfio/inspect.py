# SPDX-License-Identifier: BSD-3-Clause
"""The facts behind `vfu-platform inspect HOST`: everything VFIO and sysfs say about a device.

The report is a msgspec Struct tree, so the CLI can print it as a table or as
JSON (`msgspec.json.encode(report)`) without a second description of it.  A
device that exists but cannot be opened still gets a report - the sysfs half
plus the one-line error saying how to fix it - because that is exactly when a
person runs `inspect`.
"""
from __future__ import annotations

import msgspec

from vfu_platform._vfio import lib
from vfu_platform.backends.vfio import iommufd
from vfu_platform.backends.vfio.device import VfioHostBackend
from vfu_platform.backends.vfio.errors import Problem, VfioHostError
from vfu_platform.backends.vfio.sysfs import SysfsDevice, find_device
from vfu_platform.backends.vfio.uapi import flag_names


class GroupMember(msgspec.Struct, frozen=True):
    name: str
    bus: str
    driver: str | None


class PciIds(msgspec.Struct, frozen=True):
    vendor: int
    device: int
    class_code: int


class DeviceReport(msgspec.Struct, frozen=True):
    name: str
    bus: str
    sysfs_path: str
    driver: str | None
    vfio_driver: str
    iommu_group: int | None
    group_node: str | None
    group_members: list[GroupMember]
    pci: PciIds | None = None
    iommu: str | None = None  # TYPE1v2 / TYPE1 / NOIOMMU once opened
    flags: list[str] = []
    can_reset: bool = False
    num_regions: int = 0
    num_irqs: int = 0


class RegionReport(msgspec.Struct, frozen=True):
    index: int
    name: str
    size: int
    offset: int  # in the device fd
    flags: list[str]
    sparse_areas: list[tuple[int, int]] | None = None
    region_type: tuple[int, int] | None = None
    msix_mappable: bool = False
    present: bool = True  # False: the driver refuses this index (vfio-pci's VGA region without VGA)


class IrqReport(msgspec.Struct, frozen=True):
    index: int
    name: str
    count: int
    flags: list[str]
    trigger: str  # "level" (automasked), "edge", or "none" (count 0)


class IommuReport(msgspec.Struct, frozen=True):
    page_sizes: list[int]
    iova_ranges: list[tuple[int, int]]
    dma_avail: int | None


class HostReport(msgspec.Struct, frozen=True):
    device: DeviceReport
    compatible: list[str]
    regions: list[RegionReport] = []
    irqs: list[IrqReport] = []
    iommu_info: IommuReport | None = None
    iommufd: str = ""
    notes: list[str] = []
    error: str | None = None  # the VfioHostError line when the device could not be opened
    problem: str | None = None  # its Problem value


def _device_part(dev: SysfsDevice) -> dict:
    ids = dev.pci_ids()
    return dict(
        name=dev.name,
        bus=dev.bus,
        sysfs_path=dev.path,
        driver=dev.driver,
        vfio_driver=dev.vfio_driver,
        iommu_group=dev.iommu_group,
        group_node=dev.group_node(),
        group_members=[GroupMember(m.name, m.bus, m.driver) for m in dev.group_members()],
        pci=PciIds(*ids) if ids else None,
    )


def report_from_backend(backend: VfioHostBackend) -> HostReport:
    """The full report of an open backend (what a running server can show without reopening)."""
    dev = backend.sysfs_device
    device = DeviceReport(
        **_device_part(dev),
        iommu=backend.iommu.name,
        flags=flag_names("device", backend.device_flags),
        can_reset=backend.can_reset,
        num_regions=len(backend.host_regions),
        num_irqs=len(backend.host_irqs),
    )
    names = {r.index: r.name for r in backend.regions()}
    regions = [
        RegionReport(
            index=r.index,
            name=names[r.index],
            size=r.size,
            offset=r.offset,
            flags=flag_names("region", r.flags),
            sparse_areas=list(r.sparse_areas) if r.sparse_areas is not None else None,
            region_type=r.region_type,
            msix_mappable=r.msix_mappable,
            present=r.present,
        )
        for r in backend.host_regions
    ]
    irq_names = {q.index: q.name for q in backend.irqs()}
    irqs = [
        IrqReport(
            index=q.index,
            name=irq_names[q.index],
            count=q.count,
            flags=flag_names("irq", q.flags),
            trigger="none" if q.count == 0 else "level" if q.flags & lib.VFIO_IRQ_INFO_AUTOMASKED else "edge",
        )
        for q in backend.host_irqs
    ]
    info = backend.iommu_info()
    iommu = None
    if info is not None:
        sizes = [1 << bit for bit in range(64) if info.iova_pgsizes >> bit & 1]
        iommu = IommuReport(page_sizes=sizes, iova_ranges=list(info.iova_ranges), dma_avail=info.dma_avail)
    return HostReport(
        device=device,
        compatible=list(backend.compatible),
        regions=regions,
        irqs=irqs,
        iommu_info=iommu,
        iommufd=iommufd.probe(dev).message,
        notes=list(backend.notes),
    )


def inspect_host(host: str | None = None, sysfsdev: str | None = None, *, iommu: str = "auto") -> HostReport:
    """Open the device just long enough to describe it.

    Raises VfioHostError only when there is no such device; any later problem
    (wrong driver, busy, no permission...) is reported in `error` beside the
    sysfs facts.
    """
    dev = find_device(host, sysfsdev)
    try:
        backend = VfioHostBackend(sysfsdev=dev.path, iommu=iommu)
    except VfioHostError as e:
        if e.problem is Problem.NO_DEVICE:
            raise
        return HostReport(
            device=DeviceReport(**_device_part(dev)),
            compatible=list(dev.compatible),
            iommufd=iommufd.probe(dev).message,
            error=str(e),
            problem=e.problem.value,
        )
    try:
        return report_from_backend(backend)
    finally:
        backend.close()
