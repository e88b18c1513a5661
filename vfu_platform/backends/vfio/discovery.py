# SPDX-License-Identifier: BSD-3-Clause
"""What an open VFIO device says about itself: device, region and IRQ info.

Kept apart from the backend because `inspect` needs exactly this, and because
region info is the one VFIO answer with a variable-size tail (the capability
chain: sparse mmap areas, region type, MSI-X mappable), whose parsing deserves
its own small, readable home.
"""
from __future__ import annotations

import errno
from dataclasses import dataclass

from vfu_platform._vfio import ffi, lib
from vfu_platform.backends.vfio import uapi

_SPARSE = "struct vfio_region_info_cap_sparse_mmap"
_AREA = "struct vfio_region_sparse_mmap_area"
_CAP_TYPE = "struct vfio_region_info_cap_type"
_HEADER = "struct vfio_info_cap_header"


@dataclass(frozen=True, slots=True)
class HostDeviceInfo:
    flags: int
    num_regions: int
    num_irqs: int


@dataclass(frozen=True, slots=True)
class HostRegion:
    index: int
    flags: int
    size: int
    offset: int  # where the region lives in the device fd (pread/pwrite/mmap)
    sparse_areas: tuple[tuple[int, int], ...] | None = None  # None: no sparse-mmap capability
    region_type: tuple[int, int] | None = None  # (type, subtype) from the type capability
    msix_mappable: bool = False
    other_caps: tuple[int, ...] = ()  # capability ids this code does not decode
    present: bool = True  # False: the driver refused the index (vfio-pci's VGA region without VGA)


@dataclass(frozen=True, slots=True)
class HostIrq:
    index: int
    flags: int
    count: int


def device_info(fd: int) -> HostDeviceInfo:
    info = uapi.new("struct vfio_device_info")
    uapi.ioctl_struct(fd, lib.VFIO_DEVICE_GET_INFO, info)
    return HostDeviceInfo(flags=int(info.s.flags), num_regions=int(info.s.num_regions), num_irqs=int(info.s.num_irqs))


def _region_buffer(fd: int, index: int) -> uapi.KernelBuffer:
    """Ask once with the bare struct; if the kernel wants room for capabilities, ask again with it."""
    size = None
    for _ in range(3):  # the chain cannot grow between calls, but never loop forever on a broken driver
        info = uapi.new("struct vfio_region_info", size)
        info.s.index = index
        uapi.ioctl_struct(fd, lib.VFIO_DEVICE_GET_REGION_INFO, info)
        if info.s.argsz <= info.nbytes:
            return info
        size = int(info.s.argsz)
    return info


def region_info(fd: int, index: int) -> HostRegion:
    """One region; an index the driver refuses with EINVAL is reported absent (size 0).

    vfio-pci counts the VGA region in num_regions but answers EINVAL for it
    when the function has no VGA, as QEMU expects; other errors propagate.
    """
    try:
        info = _region_buffer(fd, index)
    except OSError as e:
        if e.errno == errno.EINVAL:
            return HostRegion(index=index, flags=0, size=0, offset=0, present=False)
        raise
    flags = int(info.s.flags)
    sparse = None
    region_type = None
    msix = False
    other: list[int] = []
    if flags & lib.VFIO_REGION_INFO_FLAG_CAPS and info.s.argsz <= info.nbytes:
        offset = int(info.s.cap_offset)
        seen: set[int] = set()
        while offset and offset not in seen:
            seen.add(offset)
            header = info.at(_HEADER, offset)
            if header.id == lib.VFIO_REGION_INFO_CAP_SPARSE_MMAP:
                cap = info.at(_SPARSE, offset)
                first = offset + ffi.sizeof(_SPARSE)  # the flexible areas[] array follows the fixed part
                areas = []
                for i in range(cap.nr_areas):
                    area = info.at(_AREA, first + i * ffi.sizeof(_AREA))
                    areas.append((int(area.offset), int(area.size)))
                sparse = tuple(areas)
            elif header.id == lib.VFIO_REGION_INFO_CAP_TYPE:
                cap = info.at(_CAP_TYPE, offset)
                region_type = (int(cap.type), int(cap.subtype))
            elif header.id == lib.VFIO_REGION_INFO_CAP_MSIX_MAPPABLE:
                msix = True
            else:
                other.append(int(header.id))
            offset = int(header.next)
    return HostRegion(
        index=index,
        flags=flags,
        size=int(info.s.size),
        offset=int(info.s.offset),
        sparse_areas=sparse,
        region_type=region_type,
        msix_mappable=msix,
        other_caps=tuple(other),
    )


def irq_info(fd: int, index: int) -> HostIrq:
    """One IRQ index; one the driver refuses with EINVAL is reported with count 0.

    vfio-pci counts ERR and REQ in num_irqs but refuses ERR for a conventional
    (non-PCIe) function; QEMU likewise treats that as "no such IRQ".
    """
    info = uapi.new("struct vfio_irq_info")
    info.s.index = index
    try:
        uapi.ioctl_struct(fd, lib.VFIO_DEVICE_GET_IRQ_INFO, info)
    except OSError as e:
        if e.errno == errno.EINVAL:
            return HostIrq(index=index, flags=0, count=0)
        raise
    return HostIrq(index=index, flags=int(info.s.flags), count=int(info.s.count))


_PCI_REGION_NAMES = {
    lib.VFIO_PCI_ROM_REGION_INDEX: "ROM",
    lib.VFIO_PCI_CONFIG_REGION_INDEX: "CONFIG",
    lib.VFIO_PCI_VGA_REGION_INDEX: "VGA",
}
_PCI_IRQ_NAMES = {
    lib.VFIO_PCI_INTX_IRQ_INDEX: "INTX",
    lib.VFIO_PCI_MSI_IRQ_INDEX: "MSI",
    lib.VFIO_PCI_MSIX_IRQ_INDEX: "MSIX",
    lib.VFIO_PCI_ERR_IRQ_INDEX: "ERR",
    lib.VFIO_PCI_REQ_IRQ_INDEX: "REQ",
}


def region_name(device_flags: int, index: int, reg_names: tuple[str, ...] = ()) -> str:
    """PCI: BAR0..BAR5, ROM, CONFIG, VGA; platform: the device tree's reg-names, else regN."""
    if device_flags & lib.VFIO_DEVICE_FLAGS_PCI:
        if lib.VFIO_PCI_BAR0_REGION_INDEX <= index < lib.VFIO_PCI_ROM_REGION_INDEX:
            return f"BAR{index - lib.VFIO_PCI_BAR0_REGION_INDEX}"
        return _PCI_REGION_NAMES.get(index, f"region{index}")
    if index < len(reg_names):
        return reg_names[index]
    return f"reg{index}"


def irq_name(device_flags: int, index: int, irq_names: tuple[str, ...] = ()) -> str:
    """PCI: INTX, MSI, MSIX, ERR, REQ; platform: the device tree's interrupt-names, else irqN."""
    if device_flags & lib.VFIO_DEVICE_FLAGS_PCI:
        return _PCI_IRQ_NAMES.get(index, f"irq{index}")
    if index < len(irq_names):
        return irq_names[index]
    return f"irq{index}"
