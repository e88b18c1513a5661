# SPDX-License-Identifier: BSD-3-Clause
"""Opening a host device through VFIO, turning every failure into one actionable line.

The order of the checks is the order a person fixes things in: the device must
exist, be bound to its vfio driver (sysfs can tell, and print the commands),
have an IOMMU group, VFIO must be loaded (/dev/vfio), the group must be free,
accessible and viable, and the container must offer an IOMMU model.  Only then
is the device fd requested.
"""
from __future__ import annotations

import errno
import logging
import os
from dataclasses import dataclass, field

from vfu_platform.backends.vfio import iommufd
from vfu_platform.backends.vfio.container import Container, Group, IommuType
from vfu_platform.backends.vfio.errors import Problem, VfioHostError, kernel_error
from vfu_platform.backends.vfio.sysfs import (
    NOIOMMU_PARAM,
    SysfsDevice,
    blocking_members,
    group_holders,
    require_vfio_driver,
    require_vfio_loaded,
)

log = logging.getLogger(__name__)

#: accepted values of the `iommu` option
IOMMU_CHOICES = ("auto", "type1v2", "type1", "noiommu", "iommufd")


@dataclass(slots=True)
class VfioHandle:
    """An open device: its fd and the group and container that keep it usable."""

    device: SysfsDevice
    container: Container
    group: Group
    fd: int
    iommu: IommuType
    notes: list[str] = field(default_factory=list)

    def close(self) -> None:
        """Device fd first: the kernel refuses to detach a container that still has open devices."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.group.close()
        self.container.close()


def _module_for(device: SysfsDevice) -> str:
    return device.vfio_driver


def _open_container(device: SysfsDevice, dev: str) -> Container:
    path = f"{dev}/vfio/vfio"
    try:
        return Container(path)
    except FileNotFoundError:
        raise VfioHostError(
            Problem.NO_VFIO,
            f"no {path}: the VFIO modules are not loaded (or /dev is not devtmpfs): "
            f"run `modprobe {_module_for(device)}`",
        ) from None
    except PermissionError as e:
        raise VfioHostError(
            Problem.PERMISSION, f"no permission to open {path}: run as root or `chmod 0666 {path}`", e.errno
        ) from None
    except OSError as e:
        raise kernel_error(f"opening {path}", e) from None


def _open_group(device: SysfsDevice, node: str) -> Group:
    try:
        return Group(node)
    except FileNotFoundError:
        if not os.path.isdir(os.path.dirname(node)):
            raise VfioHostError(
                Problem.NO_VFIO,
                f"no {os.path.dirname(node)}: the VFIO modules are not loaded: run `modprobe {_module_for(device)}`",
            ) from None
        raise VfioHostError(
            Problem.NO_VFIO,
            f"no {node} for {device.name}'s IOMMU group {device.iommu_group}: /dev is not devtmpfs or udev "
            f"did not create it; check `ls -l {os.path.dirname(node)}`",
        ) from None
    except OSError as e:
        if e.errno == errno.EBUSY:
            holders = [pid for pid in group_holders(node) if pid != os.getpid()]
            who = f" (held by pid {', '.join(map(str, holders))})" if holders else ""
            if not holders and group_holders(node):
                who = " (by this process)"
            raise VfioHostError(
                Problem.BUSY,
                f"{device.name} is in use: {node} is already open{who}; stop that user "
                "(a QEMU or another vfu-platform) first",
                e.errno,
            ) from None
        if e.errno == errno.EPERM and os.path.basename(node).startswith("noiommu-"):
            raise VfioHostError(
                Problem.PERMISSION,
                f"no permission to open {node}: no-IOMMU groups need CAP_SYS_RAWIO; run as root",
                e.errno,
            ) from None
        if e.errno in (errno.EACCES, errno.EPERM):
            raise VfioHostError(
                Problem.PERMISSION,
                f"no permission to open {node}: run as root or `chown {_user()} {node}`",
                e.errno,
            ) from None
        raise kernel_error(f"opening {node}", e) from None


def _user() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except (KeyError, ImportError):
        return str(os.geteuid())


def _check_viable(device: SysfsDevice, group: Group) -> None:
    try:
        viable = group.viable
    except OSError as e:
        raise kernel_error("VFIO_GROUP_GET_STATUS", e) from None
    if viable:
        return
    blockers = blocking_members(device)
    if blockers:
        names = ", ".join(f"{name} ({driver})" for name, driver in blockers)
        unbind = "; ".join(f"echo {name} > {device.sysfs}/bus/{device.bus}/devices/{name}/driver/unbind"
                           for name, _ in blockers)
        raise VfioHostError(
            Problem.GROUP_NOT_VIABLE,
            f"IOMMU group {device.iommu_group} of {device.name} is not viable: {names} "
            f"{'is' if len(blockers) == 1 else 'are'} in the same group and bound to a host driver; "
            f"bind {'it' if len(blockers) == 1 else 'them'} to {device.vfio_driver} as well, or unbind with `{unbind}`",
        )
    raise VfioHostError(
        Problem.GROUP_NOT_VIABLE,
        f"IOMMU group {device.iommu_group} of {device.name} is not viable: some device in "
        f"{device.sysfs}/kernel/iommu_groups/{device.iommu_group}/devices is bound to a host driver; "
        f"bind every member to {device.vfio_driver} or unbind it",
    )


def _choose_iommu(device: SysfsDevice, group: Group, container: Container, wanted: str) -> IommuType:
    try:
        offered = container.supported()
    except OSError as e:
        raise kernel_error("VFIO_CHECK_EXTENSION", e) from None
    if group.noiommu:
        if wanted not in ("auto", "noiommu"):
            raise VfioHostError(
                Problem.NO_IOMMU_BACKEND,
                f"{device.name} is in a no-IOMMU group ({group.path}) but iommu={wanted} was asked: "
                "use iommu=auto or iommu=noiommu, or give the machine an IOMMU",
            )
        if IommuType.NOIOMMU not in offered:
            raise VfioHostError(
                Problem.NO_IOMMU_BACKEND,
                f"{device.name} is in a no-IOMMU group but vfio's no-IOMMU mode is off now: "
                f"run `echo Y > {NOIOMMU_PARAM}`",
            )
        return IommuType.NOIOMMU
    order = {"auto": [IommuType.TYPE1v2, IommuType.TYPE1], "type1v2": [IommuType.TYPE1v2],
             "type1": [IommuType.TYPE1], "noiommu": [IommuType.NOIOMMU]}[wanted]
    for choice in order:
        if choice in offered:
            return choice
    if wanted == "noiommu":
        raise VfioHostError(
            Problem.NO_IOMMU_BACKEND,
            f"iommu=noiommu was asked but {device.name} has a real IOMMU group ({group.path}); use iommu=auto",
        )
    raise VfioHostError(
        Problem.NO_IOMMU_BACKEND,
        f"the VFIO container offers no {'/'.join(t.name for t in order)} IOMMU model: run `modprobe vfio_iommu_type1`",
    )


def open_device(device: SysfsDevice, iommu: str = "auto", dev: str = "/dev") -> VfioHandle:
    """Open `device` through the legacy group/container API; raise VfioHostError with the fix."""
    if iommu not in IOMMU_CHOICES:
        raise ValueError(f"iommu must be one of {', '.join(IOMMU_CHOICES)}, not {iommu!r}")
    require_vfio_loaded(device, dev)
    require_vfio_driver(device)
    notes: list[str] = []
    status = iommufd.probe(device, dev)
    if iommu == "iommufd":
        raise VfioHostError(
            Problem.IOMMUFD_UNAVAILABLE,
            f"iommufd unavailable for {device.name}: {status.reason}; use iommu=auto (legacy group/container API)",
        )
    notes.append(status.message)
    log.info("%s: %s", device.name, status.message)
    node = device.group_node(dev)
    if node is None:
        raise VfioHostError(
            Problem.NO_IOMMU_GROUP,
            f"{device.name} has no IOMMU group: enable the IOMMU (intel_iommu=on, amd_iommu=on, an arm SMMU) "
            f"or, unsafe and without DMA isolation, `echo Y > {NOIOMMU_PARAM}` and rebind the device",
        )
    container = _open_container(device, dev)
    try:
        group = _open_group(device, node)
        try:
            _check_viable(device, group)
            try:
                group.set_container(container)
            except OSError as e:
                raise kernel_error("VFIO_GROUP_SET_CONTAINER", e) from None
            chosen = _choose_iommu(device, group, container, iommu)
            try:
                container.set_iommu(chosen)
            except PermissionError as e:
                raise VfioHostError(
                    Problem.PERMISSION,
                    f"VFIO_SET_IOMMU({chosen.name}) was refused: no-IOMMU containers need CAP_SYS_RAWIO; run as root",
                    e.errno,
                ) from None
            except OSError as e:
                raise kernel_error(f"VFIO_SET_IOMMU({chosen.name})", e) from None
            try:
                fd = group.device_fd(device.name)
            except OSError as e:
                if e.errno == errno.EBUSY:
                    raise VfioHostError(
                        Problem.BUSY, f"{device.name} is in use: the kernel refused a second open (EBUSY)", e.errno
                    ) from None
                raise kernel_error(f"VFIO_GROUP_GET_DEVICE_FD({device.name})", e) from None
        except BaseException:
            group.close()
            raise
    except BaseException:
        container.close()
        raise
    return VfioHandle(device=device, container=container, group=group, fd=fd, iommu=chosen, notes=notes)
