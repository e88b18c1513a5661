# SPDX-License-Identifier: BSD-3-Clause
"""cffi (API mode) build of the kernel VFIO uAPI, compiled against <linux/vfio.h>.

Every struct layout, ioctl number and flag constant that vfu_platform uses is
taken from the system header by the C compiler: the `...;` in a struct lets the
compiler fill in the real offsets, and `#define NAME ...` lets it evaluate the
macro.  Nothing here is a retyped number.
"""
from cffi import FFI

STRUCTS = """
struct vfio_info_cap_header { uint16_t id; uint16_t version; uint32_t next; ...; };
struct vfio_group_status { uint32_t argsz; uint32_t flags; ...; };
struct vfio_device_info { uint32_t argsz; uint32_t flags; uint32_t num_regions; uint32_t num_irqs; ...; };
struct vfio_region_info { uint32_t argsz; uint32_t flags; uint32_t index; uint32_t cap_offset;
                          uint64_t size; uint64_t offset; ...; };
struct vfio_region_sparse_mmap_area { uint64_t offset; uint64_t size; ...; };
struct vfio_region_info_cap_sparse_mmap { struct vfio_info_cap_header header; uint32_t nr_areas;
                                          uint32_t reserved; ...; };
struct vfio_region_info_cap_type { struct vfio_info_cap_header header; uint32_t type; uint32_t subtype; ...; };
struct vfio_irq_info { uint32_t argsz; uint32_t flags; uint32_t index; uint32_t count; ...; };
struct vfio_irq_set { uint32_t argsz; uint32_t flags; uint32_t index; uint32_t start; uint32_t count; ...; };
struct vfio_device_feature { uint32_t argsz; uint32_t flags; ...; };
struct vfio_iommu_type1_dma_map { uint32_t argsz; uint32_t flags; uint64_t vaddr; uint64_t iova;
                                  uint64_t size; ...; };
struct vfio_iommu_type1_dma_unmap { uint32_t argsz; uint32_t flags; uint64_t iova; uint64_t size; ...; };
/* host VFIO backend: container info (page sizes, usable IOVA ranges, DMA mapping budget) */
struct vfio_iommu_type1_info { uint32_t argsz; uint32_t flags; uint64_t iova_pgsizes; uint32_t cap_offset; ...; };
struct vfio_iova_range { uint64_t start; uint64_t end; ...; };
struct vfio_iommu_type1_info_cap_iova_range { struct vfio_info_cap_header header; uint32_t nr_iovas;
                                              uint32_t reserved; ...; };
struct vfio_iommu_type1_info_dma_avail { struct vfio_info_cap_header header; uint32_t avail; ...; };
"""

CONSTANTS = """
VFIO_API_VERSION VFIO_TYPE1_IOMMU VFIO_TYPE1v2_IOMMU VFIO_NOIOMMU_IOMMU
VFIO_GET_API_VERSION VFIO_CHECK_EXTENSION VFIO_SET_IOMMU
VFIO_GROUP_FLAGS_VIABLE VFIO_GROUP_FLAGS_CONTAINER_SET
VFIO_GROUP_GET_STATUS VFIO_GROUP_SET_CONTAINER VFIO_GROUP_UNSET_CONTAINER VFIO_GROUP_GET_DEVICE_FD
VFIO_DEVICE_FLAGS_RESET VFIO_DEVICE_FLAGS_PCI VFIO_DEVICE_FLAGS_PLATFORM VFIO_DEVICE_FLAGS_AMBA
VFIO_DEVICE_FLAGS_CAPS
VFIO_DEVICE_GET_INFO VFIO_DEVICE_GET_REGION_INFO VFIO_DEVICE_GET_IRQ_INFO VFIO_DEVICE_SET_IRQS
VFIO_DEVICE_RESET VFIO_DEVICE_FEATURE
VFIO_REGION_INFO_FLAG_READ VFIO_REGION_INFO_FLAG_WRITE VFIO_REGION_INFO_FLAG_MMAP VFIO_REGION_INFO_FLAG_CAPS
VFIO_REGION_INFO_CAP_SPARSE_MMAP VFIO_REGION_INFO_CAP_TYPE VFIO_REGION_INFO_CAP_MSIX_MAPPABLE
VFIO_IRQ_INFO_EVENTFD VFIO_IRQ_INFO_MASKABLE VFIO_IRQ_INFO_AUTOMASKED VFIO_IRQ_INFO_NORESIZE
VFIO_IRQ_SET_DATA_NONE VFIO_IRQ_SET_DATA_BOOL VFIO_IRQ_SET_DATA_EVENTFD
VFIO_IRQ_SET_ACTION_MASK VFIO_IRQ_SET_ACTION_UNMASK VFIO_IRQ_SET_ACTION_TRIGGER
VFIO_IRQ_SET_DATA_TYPE_MASK VFIO_IRQ_SET_ACTION_TYPE_MASK
VFIO_DEVICE_FEATURE_MASK VFIO_DEVICE_FEATURE_GET VFIO_DEVICE_FEATURE_SET VFIO_DEVICE_FEATURE_PROBE
VFIO_DEVICE_FEATURE_MIGRATION VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE
VFIO_DMA_MAP_FLAG_READ VFIO_DMA_MAP_FLAG_WRITE
VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP VFIO_DMA_UNMAP_FLAG_ALL
VFIO_IOMMU_MAP_DMA VFIO_IOMMU_UNMAP_DMA
VFIO_DEVICE_FLAGS_CCW VFIO_DEVICE_FLAGS_AP VFIO_DEVICE_FLAGS_FSL_MC
VFIO_IOMMU_GET_INFO VFIO_IOMMU_INFO_PGSIZES VFIO_IOMMU_INFO_CAPS
VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL
""".split()

ENUMS = """
VFIO_PCI_BAR0_REGION_INDEX VFIO_PCI_ROM_REGION_INDEX VFIO_PCI_CONFIG_REGION_INDEX
VFIO_PCI_VGA_REGION_INDEX VFIO_PCI_NUM_REGIONS
VFIO_PCI_INTX_IRQ_INDEX VFIO_PCI_MSI_IRQ_INDEX VFIO_PCI_MSIX_IRQ_INDEX VFIO_PCI_ERR_IRQ_INDEX
VFIO_PCI_REQ_IRQ_INDEX VFIO_PCI_NUM_IRQS
""".split()

ffibuilder = FFI()
ffibuilder.cdef(
    STRUCTS
    + "".join(f"#define {name} ...\n" for name in CONSTANTS)
    + "".join(f"static const int {name};\n" for name in ENUMS)
)
ffibuilder.set_source(
    "vfu_platform._vfio",
    "#include <stdint.h>\n#include <linux/vfio.h>\n",
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
