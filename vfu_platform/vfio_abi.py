# SPDX-License-Identifier: BSD-3-Clause
"""The kernel VFIO uAPI as Python sees it: constants and struct layouts from <linux/vfio.h>.

The cffi extension `vfu_platform._vfio` is compiled against the system header, so
every number here comes from the kernel's own definitions.  For the vfio-user
payloads that reuse kernel structs we build `struct.Struct` codecs whose field
offsets are read from the compiled layout (`kernel_struct`): the hot path then
packs with `struct` (fast) while the layout still comes from the header.
"""
from __future__ import annotations

import struct

from vfu_platform._vfio import ffi, lib

_FORMAT_BY_SIZE = {1: "B", 2: "H", 4: "I", 8: "Q"}


def kernel_struct(ctype: str, fields: list[str], size: int | None = None) -> struct.Struct:
    """A little-endian `struct.Struct` for the named leading fields of a kernel struct.

    `fields` must be listed in memory order; gaps between them become pad bytes.
    `size` truncates the struct (vfio-user's device info is the kernel's first
    16 bytes); by default it is the offset just past the last named field.
    """
    layout = dict(ffi.typeof(ctype).fields)
    fmt = "<"
    position = 0
    for name in fields:
        field = layout[name]
        if field.offset < position:
            raise ValueError(f"{ctype}.{name} is out of order")
        fmt += "x" * (field.offset - position)
        fmt += _FORMAT_BY_SIZE[ffi.sizeof(field.type)]
        position = field.offset + ffi.sizeof(field.type)
    if size is not None:
        if size < position:
            raise ValueError(f"{ctype}: size {size} cuts field data")
        fmt += "x" * (size - position)
    return struct.Struct(fmt)


# vfio-user payload layouts that are kernel structs (protocol brief, appendix A).
DEVICE_INFO = kernel_struct("struct vfio_device_info", ["argsz", "flags", "num_regions", "num_irqs"])
REGION_INFO = kernel_struct(
    "struct vfio_region_info", ["argsz", "flags", "index", "cap_offset", "size", "offset"]
)
CAP_HEADER = kernel_struct("struct vfio_info_cap_header", ["id", "version", "next"])
# The sparse-mmap cap nests the cap header; its layout is checked against the header below.
SPARSE_MMAP_HEAD = struct.Struct(CAP_HEADER.format + "II")
SPARSE_MMAP_AREA = kernel_struct("struct vfio_region_sparse_mmap_area", ["offset", "size"])
CAP_TYPE_BODY = struct.Struct("<II")
IRQ_INFO = kernel_struct("struct vfio_irq_info", ["argsz", "flags", "index", "count"])
IRQ_SET = kernel_struct("struct vfio_irq_set", ["argsz", "flags", "index", "start", "count"])
DEVICE_FEATURE = kernel_struct("struct vfio_device_feature", ["argsz", "flags"])


def _check_nested_layouts() -> None:
    sparse = dict(ffi.typeof("struct vfio_region_info_cap_sparse_mmap").fields)
    assert sparse["header"].offset == 0 and sparse["nr_areas"].offset == CAP_HEADER.size
    assert sparse["reserved"].offset == CAP_HEADER.size + 4
    assert ffi.sizeof("struct vfio_region_info_cap_sparse_mmap") == SPARSE_MMAP_HEAD.size
    cap_type = dict(ffi.typeof("struct vfio_region_info_cap_type").fields)
    assert cap_type["type"].offset == CAP_HEADER.size
    assert ffi.sizeof("struct vfio_region_info_cap_type") == CAP_HEADER.size + CAP_TYPE_BODY.size


_check_nested_layouts()

# Device flags.
DEVICE_FLAGS_RESET: int = lib.VFIO_DEVICE_FLAGS_RESET
DEVICE_FLAGS_PCI: int = lib.VFIO_DEVICE_FLAGS_PCI
DEVICE_FLAGS_PLATFORM: int = lib.VFIO_DEVICE_FLAGS_PLATFORM
DEVICE_FLAGS_AMBA: int = lib.VFIO_DEVICE_FLAGS_AMBA

# Region info.
REGION_FLAG_READ: int = lib.VFIO_REGION_INFO_FLAG_READ
REGION_FLAG_WRITE: int = lib.VFIO_REGION_INFO_FLAG_WRITE
REGION_FLAG_MMAP: int = lib.VFIO_REGION_INFO_FLAG_MMAP
REGION_FLAG_CAPS: int = lib.VFIO_REGION_INFO_FLAG_CAPS
REGION_CAP_SPARSE_MMAP: int = lib.VFIO_REGION_INFO_CAP_SPARSE_MMAP
REGION_CAP_TYPE: int = lib.VFIO_REGION_INFO_CAP_TYPE
REGION_CAP_MSIX_MAPPABLE: int = lib.VFIO_REGION_INFO_CAP_MSIX_MAPPABLE

# IRQ info and SET_IRQS.
IRQ_INFO_EVENTFD: int = lib.VFIO_IRQ_INFO_EVENTFD
IRQ_INFO_MASKABLE: int = lib.VFIO_IRQ_INFO_MASKABLE
IRQ_INFO_AUTOMASKED: int = lib.VFIO_IRQ_INFO_AUTOMASKED
IRQ_INFO_NORESIZE: int = lib.VFIO_IRQ_INFO_NORESIZE
IRQ_SET_DATA_NONE: int = lib.VFIO_IRQ_SET_DATA_NONE
IRQ_SET_DATA_BOOL: int = lib.VFIO_IRQ_SET_DATA_BOOL
IRQ_SET_DATA_EVENTFD: int = lib.VFIO_IRQ_SET_DATA_EVENTFD
IRQ_SET_ACTION_MASK: int = lib.VFIO_IRQ_SET_ACTION_MASK
IRQ_SET_ACTION_UNMASK: int = lib.VFIO_IRQ_SET_ACTION_UNMASK
IRQ_SET_ACTION_TRIGGER: int = lib.VFIO_IRQ_SET_ACTION_TRIGGER
IRQ_SET_DATA_TYPE_MASK: int = lib.VFIO_IRQ_SET_DATA_TYPE_MASK
IRQ_SET_ACTION_TYPE_MASK: int = lib.VFIO_IRQ_SET_ACTION_TYPE_MASK

# DEVICE_FEATURE.
DEVICE_FEATURE_MASK: int = lib.VFIO_DEVICE_FEATURE_MASK
DEVICE_FEATURE_GET: int = lib.VFIO_DEVICE_FEATURE_GET
DEVICE_FEATURE_SET: int = lib.VFIO_DEVICE_FEATURE_SET
DEVICE_FEATURE_PROBE: int = lib.VFIO_DEVICE_FEATURE_PROBE

# DMA map/unmap flags (vfio-user reuses the type1 values).
DMA_MAP_FLAG_READ: int = lib.VFIO_DMA_MAP_FLAG_READ
DMA_MAP_FLAG_WRITE: int = lib.VFIO_DMA_MAP_FLAG_WRITE
DMA_UNMAP_FLAG_GET_DIRTY_BITMAP: int = lib.VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP
DMA_UNMAP_FLAG_ALL: int = lib.VFIO_DMA_UNMAP_FLAG_ALL

# PCI region and IRQ indexes.
PCI_BAR0_REGION_INDEX: int = lib.VFIO_PCI_BAR0_REGION_INDEX
PCI_ROM_REGION_INDEX: int = lib.VFIO_PCI_ROM_REGION_INDEX
PCI_CONFIG_REGION_INDEX: int = lib.VFIO_PCI_CONFIG_REGION_INDEX
PCI_VGA_REGION_INDEX: int = lib.VFIO_PCI_VGA_REGION_INDEX
PCI_NUM_REGIONS: int = lib.VFIO_PCI_NUM_REGIONS
PCI_INTX_IRQ_INDEX: int = lib.VFIO_PCI_INTX_IRQ_INDEX
PCI_MSI_IRQ_INDEX: int = lib.VFIO_PCI_MSI_IRQ_INDEX
PCI_MSIX_IRQ_INDEX: int = lib.VFIO_PCI_MSIX_IRQ_INDEX
PCI_ERR_IRQ_INDEX: int = lib.VFIO_PCI_ERR_IRQ_INDEX
PCI_REQ_IRQ_INDEX: int = lib.VFIO_PCI_REQ_IRQ_INDEX
PCI_NUM_IRQS: int = lib.VFIO_PCI_NUM_IRQS
