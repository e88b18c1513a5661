# SPDX-License-Identifier: BSD-3-Clause
"""The legacy VFIO group + container API: /dev/vfio/vfio and /dev/vfio/[noiommu-]N.

These classes are thin: each method is one ioctl, and a failure surfaces as the
kernel's OSError.  Turning an errno into advice needs to know which device was
being opened, so that happens one layer up (`attach.py`).  The legacy API is
the one every Debian kernel has, and the only one that supports no-IOMMU mode
(the vfio cdev is never created for no-IOMMU devices).
"""
from __future__ import annotations

import enum
import os
from dataclasses import dataclass

from vfu_platform._vfio import ffi, lib
from vfu_platform.backends.vfio import uapi


class IommuType(enum.IntEnum):
    """Container IOMMU models, in the order `auto` prefers them."""

    TYPE1v2 = lib.VFIO_TYPE1v2_IOMMU
    TYPE1 = lib.VFIO_TYPE1_IOMMU
    NOIOMMU = lib.VFIO_NOIOMMU_IOMMU


@dataclass(frozen=True, slots=True)
class IommuInfo:
    """What VFIO_IOMMU_GET_INFO says about a type1 container."""

    iova_pgsizes: int  # bitmap of supported IOMMU page sizes
    iova_ranges: tuple[tuple[int, int], ...]  # usable (start, end) inclusive; empty: not reported
    dma_avail: int | None  # how many more mappings the kernel allows (dma_entry_limit)


class Container:
    """An open /dev/vfio/vfio."""

    def __init__(self, path: str = "/dev/vfio/vfio") -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            self.api_version = uapi.ioctl_int(self.fd, lib.VFIO_GET_API_VERSION)
        except OSError:
            os.close(self.fd)
            raise
        self.iommu: IommuType | None = None

    def check_extension(self, extension: int) -> bool:
        return uapi.ioctl_int(self.fd, lib.VFIO_CHECK_EXTENSION, extension) > 0

    def supported(self) -> list[IommuType]:
        return [t for t in IommuType if self.check_extension(t)]

    def set_iommu(self, iommu: IommuType) -> None:
        """Needs a group attached first (GROUP_SET_CONTAINER)."""
        uapi.ioctl_int(self.fd, lib.VFIO_SET_IOMMU, int(iommu))
        self.iommu = iommu

    def info(self) -> IommuInfo:
        """Page sizes and usable IOVA ranges of a type1 container (with its capability chain)."""
        probe = uapi.new("struct vfio_iommu_type1_info")
        uapi.ioctl_struct(self.fd, lib.VFIO_IOMMU_GET_INFO, probe)
        buf = probe
        if probe.s.argsz > probe.nbytes:  # the kernel asks for room for its capabilities
            buf = uapi.new("struct vfio_iommu_type1_info", probe.s.argsz)
            uapi.ioctl_struct(self.fd, lib.VFIO_IOMMU_GET_INFO, buf)
        ranges: list[tuple[int, int]] = []
        avail = None
        if buf.s.flags & lib.VFIO_IOMMU_INFO_CAPS:
            offset = buf.s.cap_offset
            seen = set()
            while offset and offset not in seen:
                seen.add(offset)
                header = buf.at("struct vfio_info_cap_header", offset)
                if header.id == lib.VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE:
                    cap = buf.at("struct vfio_iommu_type1_info_cap_iova_range", offset)
                    first = offset + ffi.sizeof("struct vfio_iommu_type1_info_cap_iova_range")
                    for i in range(cap.nr_iovas):
                        item = buf.at("struct vfio_iova_range", first + i * ffi.sizeof("struct vfio_iova_range"))
                        ranges.append((int(item.start), int(item.end)))
                elif header.id == lib.VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL:
                    avail = int(buf.at("struct vfio_iommu_type1_info_dma_avail", offset).avail)
                offset = header.next
        pgsizes = int(buf.s.iova_pgsizes) if buf.s.flags & lib.VFIO_IOMMU_INFO_PGSIZES else 0
        return IommuInfo(iova_pgsizes=pgsizes, iova_ranges=tuple(ranges), dma_avail=avail)

    def map_dma(self, iova: int, size: int, vaddr: int, flags: int) -> None:
        request = uapi.new("struct vfio_iommu_type1_dma_map")
        request.s.flags = flags
        request.s.vaddr = vaddr
        request.s.iova = iova
        request.s.size = size
        uapi.ioctl_struct(self.fd, lib.VFIO_IOMMU_MAP_DMA, request)

    def unmap_dma(self, iova: int, size: int) -> int:
        """Returns how many bytes the kernel unmapped."""
        request = uapi.new("struct vfio_iommu_type1_dma_unmap")
        request.s.iova = iova
        request.s.size = size
        uapi.ioctl_struct(self.fd, lib.VFIO_IOMMU_UNMAP_DMA, request)
        return int(request.s.size)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Group:
    """An open group node; owns the link to its container."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        self.container: Container | None = None

    @property
    def noiommu(self) -> bool:
        return os.path.basename(self.path).startswith("noiommu-")

    def status(self) -> int:
        status = uapi.new("struct vfio_group_status")
        uapi.ioctl_struct(self.fd, lib.VFIO_GROUP_GET_STATUS, status)
        return int(status.s.flags)

    @property
    def viable(self) -> bool:
        return bool(self.status() & lib.VFIO_GROUP_FLAGS_VIABLE)

    def set_container(self, container: Container) -> None:
        uapi.ioctl_int_pointer(self.fd, lib.VFIO_GROUP_SET_CONTAINER, container.fd)
        self.container = container

    def device_fd(self, name: str) -> int:
        return uapi.ioctl_bytes(self.fd, lib.VFIO_GROUP_GET_DEVICE_FD, name.encode() + b"\0")

    def close(self) -> None:
        """Detach from the container (the kernel would on close, too) and close."""
        if self.fd < 0:
            return
        if self.container is not None:
            try:
                uapi.ioctl_int(self.fd, lib.VFIO_GROUP_UNSET_CONTAINER)
            except OSError:
                pass  # device fds still open keep it set; closing the group is enough
            self.container = None
        os.close(self.fd)
        self.fd = -1
