# SPDX-License-Identifier: BSD-3-Clause
"""Is the iommufd + vfio device cdev path (/dev/iommu, /dev/vfio/devices/vfioN) usable?

Newer kernels (6.6+) can hand out a device through its own cdev bound to an
iommufd context instead of a group + container.  Using it needs three things:
a kernel with CONFIG_IOMMUFD (/dev/iommu), a cdev for this device
(CONFIG_VFIO_DEVICE_CDEV; never made for no-IOMMU devices), and bindings built
from a <linux/vfio.h> that has the cdev uAPI plus <linux/iommufd.h> - the
project never types those numbers by hand.  Debian 12's headers (Linux 6.1)
have neither, so on such a build the answer is always "no": this module says
exactly why, and the opener falls back to the legacy group/container API,
which every kernel with /dev/vfio/vfio (VFIO_CONTAINER or its iommufd
emulation) still serves.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from vfu_platform._vfio import lib
from vfu_platform.backends.vfio.sysfs import SysfsDevice

#: the uAPI names the cdev path would need from the bindings
REQUIRED_NAMES = ("VFIO_DEVICE_BIND_IOMMUFD", "VFIO_DEVICE_ATTACH_IOMMUFD_PT", "IOMMU_IOAS_ALLOC", "IOMMU_IOAS_MAP")


@dataclass(frozen=True, slots=True)
class IommufdStatus:
    kernel: bool  # /dev/iommu exists
    cdev: str | None  # /dev/vfio/devices/vfioN of this device, if the kernel made one
    bindings: bool  # this build's headers had the cdev + iommufd uAPI
    usable: bool
    reason: str  # why not, one clause

    @property
    def message(self) -> str:
        """The line logged when the opener falls back."""
        return f"iommufd unavailable: {self.reason}; using the legacy group/container API"


def bindings_have_iommufd() -> bool:
    return all(hasattr(lib, name) for name in REQUIRED_NAMES)


def probe(device: SysfsDevice, dev: str = "/dev") -> IommufdStatus:
    kernel = os.path.exists(f"{dev}/iommu")
    cdev = device.vfio_cdev()
    cdev_path = f"{dev}/vfio/devices/{cdev}" if cdev and os.path.exists(f"{dev}/vfio/devices/{cdev}") else None
    bindings = bindings_have_iommufd()
    if not kernel:
        why = "this kernel has no /dev/iommu (CONFIG_IOMMUFD is off)"
    elif cdev_path is None:
        why = (
            f"{device.name} has no vfio device cdev (CONFIG_VFIO_DEVICE_CDEV is off, or the device is "
            "in no-IOMMU mode, which the cdev does not support)"
        )
    elif not bindings:
        why = (
            "vfu-platform was built against a <linux/vfio.h> without the cdev uAPI and without "
            "<linux/iommufd.h> (Linux >= 6.6 headers needed; rebuild with `pip install -e .`)"
        )
    else:
        why = "the iommufd path is not implemented by this vfu-platform version"
    return IommufdStatus(
        kernel=kernel,
        cdev=cdev_path,
        bindings=bindings,
        usable=False,
        reason=why,
    )
