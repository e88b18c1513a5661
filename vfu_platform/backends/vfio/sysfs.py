# SPDX-License-Identifier: BSD-3-Clause
"""Finding a host device in sysfs: its bus, driver, IOMMU group and firmware description.

Everything here only reads sysfs (and /proc for who holds a group open), so it
works, and its errors can be tested, on any Linux machine, with or without VFIO.
The checks that need no ioctl are made here, before any /dev/vfio node is
touched, because sysfs can say precisely what is wrong and how to fix it.
"""
from __future__ import annotations

import difflib
import os
import re
import stat
from dataclasses import dataclass

from vfu_platform.backends.vfio.errors import Problem, VfioHostError

#: buses VFIO serves, with the vfio driver each one's devices must be bound to
VFIO_DRIVERS: dict[str, str] = {"platform": "vfio-platform", "amba": "vfio-amba", "pci": "vfio-pci"}
#: vfio-pci variant drivers (mlx5_vfio_pci, hisi_acc_vfio_pci, ...) serve the same uAPI
_VFIO_VARIANT = re.compile(r"(^|[-_])vfio[-_]pci$")
_PCI_BDF = re.compile(r"^(?:[0-9a-fA-F]{4}:)?[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$")
#: drivers the kernel accepts in a viable group next to a vfio device (vfio_driver_allowed)
_HARMLESS_DRIVERS = frozenset({"pci-stub", "pcieport"})


def _read(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except OSError:
        return None


def _strings(path: str) -> tuple[str, ...]:
    """A device-tree string-list property (NUL-separated) as a tuple."""
    raw = _read(path)
    if raw is None:
        return ()
    return tuple(s for s in raw.split("\0") if s)


@dataclass(frozen=True, slots=True)
class SysfsDevice:
    """One device as sysfs shows it, resolved once."""

    name: str  # e.g. "0000:00:05.0", "9010000.pl031"
    bus: str  # "pci", "platform" or "amba"
    path: str  # canonical /sys/devices/... path
    sysfs: str = "/sys"

    @property
    def bus_path(self) -> str:
        """/sys/bus/BUS/devices/NAME: the path people type (and the one printed in fixes)."""
        return f"{self.sysfs}/bus/{self.bus}/devices/{self.name}"

    @property
    def driver(self) -> str | None:
        link = os.path.join(self.path, "driver")
        return os.path.basename(os.readlink(link)) if os.path.islink(link) else None

    @property
    def vfio_driver(self) -> str:
        return VFIO_DRIVERS[self.bus]

    @property
    def bound_to_vfio(self) -> bool:
        driver = self.driver
        return driver is not None and (driver == self.vfio_driver or bool(_VFIO_VARIANT.search(driver)))

    @property
    def iommu_group(self) -> int | None:
        link = os.path.join(self.path, "iommu_group")
        if not os.path.islink(link):
            return None
        return int(os.path.basename(os.readlink(link)))

    def group_is_noiommu(self) -> bool:
        """vfio names the group it fakes for an IOMMU-less device "vfio-noiommu"."""
        group = self.iommu_group
        return group is not None and (_read(f"{self.sysfs}/kernel/iommu_groups/{group}/name") or "").strip() == (
            "vfio-noiommu"
        )

    def group_node(self, dev: str = "/dev") -> str | None:
        """The legacy group character device: /dev/vfio/N, or /dev/vfio/noiommu-N."""
        group = self.iommu_group
        if group is None:
            return None
        return f"{dev}/vfio/noiommu-{group}" if self.group_is_noiommu() else f"{dev}/vfio/{group}"

    def group_members(self) -> list[SysfsDevice]:
        group = self.iommu_group
        if group is None:
            return [self]
        folder = f"{self.sysfs}/kernel/iommu_groups/{group}/devices"
        members = []
        for name in sorted(os.listdir(folder)):
            members.append(from_path(os.path.join(folder, name), self.sysfs))
        return members

    def vfio_cdev(self) -> str | None:
        """The vfio device cdev name (vfioN) when the kernel made one (6.6+, CONFIG_VFIO_DEVICE_CDEV)."""
        folder = os.path.join(self.path, "vfio-dev")
        try:
            names = sorted(n for n in os.listdir(folder) if n.startswith("vfio"))
        except OSError:
            return None
        return names[0] if names else None

    # ---- firmware description -------------------------------------------------
    @property
    def compatible(self) -> tuple[str, ...]:
        """Device-tree compatible strings, most specific first ("" tuple if none)."""
        return _strings(os.path.join(self.path, "of_node", "compatible"))

    def of_strings(self, prop: str) -> tuple[str, ...]:
        """A string-list property of the device-tree node (reg-names, interrupt-names)."""
        return _strings(os.path.join(self.path, "of_node", prop))

    def pci_ids(self) -> tuple[int, int, int] | None:
        """(vendor, device, class) of a PCI function."""
        if self.bus != "pci":
            return None
        values = [_read(os.path.join(self.path, attr)) for attr in ("vendor", "device", "class")]
        if any(v is None for v in values):
            return None
        return tuple(int(v, 16) for v in values)  # type: ignore[return-value, arg-type]


def from_path(path: str, sysfs: str = "/sys") -> SysfsDevice:
    """A device from any of its sysfs paths (/sys/bus/.../devices/X or /sys/devices/...)."""
    real = os.path.realpath(path)
    if not os.path.isdir(real):
        raise VfioHostError(
            Problem.NO_DEVICE,
            f"no device at {path}: give a path under {sysfs}/bus/{{platform,amba,pci}}/devices/",
        )
    subsystem = os.path.join(real, "subsystem")
    bus = os.path.basename(os.readlink(subsystem)) if os.path.islink(subsystem) else ""
    return SysfsDevice(name=os.path.basename(real), bus=bus, path=real, sysfs=sysfs)


def _all_names(sysfs: str) -> list[str]:
    names = []
    for bus in VFIO_DRIVERS:
        try:
            names += os.listdir(f"{sysfs}/bus/{bus}/devices")
        except OSError:
            pass
    return names


def find_device(host: str | None = None, sysfsdev: str | None = None, sysfs: str = "/sys") -> SysfsDevice:
    """Resolve a device given by name (`host`: "9010000.pl031", "0000:00:05.0", "00:05.0")
    or by sysfs path (`sysfsdev`), and check it is on a bus VFIO serves."""
    if (host is None) == (sysfsdev is None):
        raise ValueError("give exactly one of host= or sysfsdev=")
    if sysfsdev is not None:
        device = from_path(sysfsdev, sysfs)
    else:
        assert host is not None
        candidates = [host]
        if _PCI_BDF.match(host) and host.count(":") == 1:
            candidates.append("0000:" + host)  # a BDF without its PCI domain
        device = None
        for name in candidates:
            for bus in VFIO_DRIVERS:
                path = f"{sysfs}/bus/{bus}/devices/{name}"
                if os.path.exists(path):
                    device = SysfsDevice(name=name, bus=bus, path=os.path.realpath(path), sysfs=sysfs)
                    break
            if device:
                break
        if device is None:
            close = difflib.get_close_matches(host, _all_names(sysfs), n=3, cutoff=0.5)
            hint = (f"did you mean {', '.join(close)}?" if close
                    else "list them with `ls /sys/bus/{platform,amba,pci}/devices`")
            raise VfioHostError(
                Problem.NO_DEVICE, f"no device named {host!r} on the platform, amba or pci bus: {hint}"
            )
    if device.bus not in VFIO_DRIVERS:
        raise VfioHostError(
            Problem.UNSUPPORTED,
            f"{device.name} is on the {device.bus or 'unknown'} bus: VFIO serves only platform, amba and pci "
            "devices; give one of those",
        )
    return device


NOIOMMU_PARAM = "/sys/module/vfio/parameters/enable_unsafe_noiommu_mode"


def host_has_iommu(sysfs: str = "/sys") -> bool:
    """Whether any IOMMU registered with the kernel (dmar0, an SMMU, virtio-iommu...)."""
    try:
        return bool(os.listdir(f"{sysfs}/class/iommu"))
    except OSError:
        return False


def bind_fix(device: SysfsDevice) -> tuple[tuple[str, str], ...]:
    """The sysfs writes that rebind `device` to its vfio driver, in order."""
    writes = [(f"{device.bus_path}/driver_override", device.vfio_driver)]
    if device.driver is not None:
        writes.append((f"{device.bus_path}/driver/unbind", device.name))
    writes.append((f"{device.sysfs}/bus/{device.bus}/drivers_probe", device.name))
    return tuple(writes)


def setup_fix(device: SysfsDevice) -> tuple[str, tuple[tuple[str, str], ...]]:
    """The shell line, and its sysfs writes, that get `device` onto its vfio driver from here.

    Loads the vfio module when its driver is not registered, and turns on
    no-IOMMU mode first when the machine has no IOMMU (else vfio refuses the
    device: it would have no IOMMU group).  The line then ends with a warning,
    because that mode gives up DMA isolation.
    """
    param = NOIOMMU_PARAM.replace("/sys", device.sysfs, 1)
    needs_noiommu = device.iommu_group is None and not host_has_iommu(device.sysfs)
    noiommu_on = (_read(param) or "").strip() == "Y"
    module = device.vfio_driver + (" reset_required=0" if device.bus == "platform" else "")
    commands: list[str] = []
    writes: list[tuple[str, str]] = []
    if not os.path.isdir(f"{device.sysfs}/bus/{device.bus}/drivers/{device.vfio_driver}"):
        if needs_noiommu:
            commands.append("modprobe vfio enable_unsafe_noiommu_mode=1")
        commands.append(f"modprobe {module}")
    elif needs_noiommu and not noiommu_on:
        writes.append((param, "Y"))
    writes += bind_fix(device)
    commands += [f"echo {value} > {path}" for path, value in writes]
    line = "; ".join(commands)
    if needs_noiommu:
        line += "` (this machine has no IOMMU: only vfio's unsafe no-IOMMU mode, without DMA isolation, works)"
    else:
        line += "`"
    return line, tuple(writes)


def require_vfio_driver(device: SysfsDevice) -> None:
    """Raise WRONG_DRIVER, with the exact rebinding commands, unless a vfio driver holds `device`."""
    if device.bound_to_vfio:
        return
    if device.driver:
        now, verb = f"is bound to {device.driver}, not {device.vfio_driver}", "rebind it"
    else:
        now, verb = f"is not bound to {device.vfio_driver} (no driver)", "bind it"
    line, writes = setup_fix(device)
    raise VfioHostError(Problem.WRONG_DRIVER, f"{device.name} {now}: {verb} with `{line}", fix_writes=writes)


def require_vfio_loaded(device: SysfsDevice, dev: str = "/dev") -> None:
    """Raise NO_VFIO unless /dev/vfio/vfio exists; the fix also binds the device when it is not bound yet."""
    node = f"{dev}/vfio/vfio"
    if os.path.exists(node):
        return
    if device.bound_to_vfio:
        raise VfioHostError(
            Problem.NO_VFIO,
            f"no {node} although {device.name} is bound to {device.driver}: this /dev is not devtmpfs "
            "(a container?); bind-mount the host's /dev/vfio into it",
        )
    line, writes = setup_fix(device)
    raise VfioHostError(
        Problem.NO_VFIO,
        f"no {node}: the VFIO modules are not loaded; load them and bind {device.name} with `{line}",
        fix_writes=writes,
    )


def blocking_members(device: SysfsDevice) -> list[tuple[str, str]]:
    """Other devices in `device`'s IOMMU group bound to a host driver (name, driver): they make it not viable."""
    blockers = []
    for member in device.group_members():
        if member.path == device.path:
            continue
        driver = member.driver
        if driver is None or driver in _HARMLESS_DRIVERS:
            continue
        if member.bus in VFIO_DRIVERS and member.bound_to_vfio:
            continue
        blockers.append((member.name, driver))
    return blockers


def group_holders(node: str) -> list[int]:
    """PIDs with `node` (a /dev/vfio group) open, as far as /proc lets us see."""
    holders = []
    try:
        target = os.stat(node)
    except OSError:
        return holders
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        folder = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(folder)
        except OSError:
            continue
        for fd in fds:
            try:
                st = os.stat(os.path.join(folder, fd))
            except OSError:
                continue
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == target.st_rdev:
                holders.append(int(pid))
                break
    return holders
