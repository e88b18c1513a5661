# SPDX-License-Identifier: BSD-3-Clause
"""The host VFIO backend: a real device bound to vfio-platform, vfio-amba or vfio-pci.

    sysfs.py      find the device, its driver, IOMMU group, compatible strings
    attach.py     open it (legacy group + container), every failure one actionable line
    container.py  the group and container ioctls (TYPE1v2 / TYPE1 / no-IOMMU)
    iommufd.py    whether the iommufd + cdev path could be used, and why not
    discovery.py  device / region (capability chain) / IRQ info
    device.py     VfioHostBackend, the DeviceBackend implementation
    guest_devices.py  describe_host_guest_devices: the guest descriptor's devices from sysfs + DT
    inspect.py    the report behind `vfu-platform inspect`
    errors.py     VfioHostError and its Problem kinds
"""
from vfu_platform.backends.vfio.device import DmaMapping, VfioHostBackend
from vfu_platform.backends.vfio.errors import Problem, VfioHostError


def open_host_device(
    host: str | None = None,
    sysfsdev: str | None = None,
    *,
    iommu: str = "auto",
    allow_unsafe_noiommu_dma: bool = False,
) -> VfioHostBackend:
    """Open a host device by name or sysfs path (what `vfu-platform serve --host/--sysfsdev` calls)."""
    return VfioHostBackend(host, sysfsdev=sysfsdev, iommu=iommu, allow_unsafe_noiommu_dma=allow_unsafe_noiommu_dma)


__all__ = ["DmaMapping", "Problem", "VfioHostBackend", "VfioHostError", "open_host_device"]
