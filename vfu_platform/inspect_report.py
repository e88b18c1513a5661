# SPDX-License-Identifier: BSD-3-Clause
"""`vfu-platform inspect NAME [--json]`: a host device, and what the server would make of it.

It lives above the bridge and the backends, whose answers it puts together.
The host half is `backends.vfio.inspect.inspect_host()` (device, regions, IRQs, IOMMU).  The
second half is the *plan*: how `vfu-platform serve --host NAME` would present
the device to a client -

* a platform or AMBA device goes through the bridge: which platform region
  becomes which BAR (and its size, a power of two of whole pages), which BAR is
  mmapped through the device fd and which is trapped, where the IRQ page is,
  and which platform IRQ is delivered how (INTx by default; MSI-X vector k
  with `--irq-mode msix`);
* a PCI function (vfio-pci) is passed through as itself: region i is BAR i,
  config space is forwarded, IRQ indexes are forwarded.

The bridge plan is not recomputed here: a `PciBridge` is built over a stand-in
backend that has exactly the reported regions and IRQs, and asked, so what
`inspect` prints is what `serve` would do.  The report is one msgspec Struct
(the host report's fields plus `plan`), printed as an aligned table or as JSON.

Serving a host device means detaching it from its host driver, and the fix lines
of an unopenable device say how (`.../driver/unbind`).  That is refused for a
device the host itself runs on (`in_use`, from `host_in_use`): one holding a
mounted filesystem (through its disks, their partitions and the devices stacked
on them), an interface that is up, or a PCI bridge (the devices behind it
would go with it).  Its error then says so, and names no unbind command.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import TextIO

import msgspec

from vfu_platform import vfio_abi
from vfu_platform.backends.base import BackendError, DeviceBackend, IrqInfo, RegionInfo
from vfu_platform.backends.vfio.inspect import (
    HostReport,
    IrqReport,
    RegionReport,
    inspect_host,
)
from vfu_platform.backends.vfio.sysfs import SysfsDevice, find_device
from vfu_platform.bridge.bar_plan import BarPlanError
from vfu_platform.bridge.device import PciBridge

_REGION_FLAG_BITS = {"READ": vfio_abi.REGION_FLAG_READ, "WRITE": vfio_abi.REGION_FLAG_WRITE,
                     "MMAP": vfio_abi.REGION_FLAG_MMAP}
_IRQ_FLAG_BITS = {"EVENTFD": vfio_abi.IRQ_INFO_EVENTFD, "MASKABLE": vfio_abi.IRQ_INFO_MASKABLE,
                  "AUTOMASKED": vfio_abi.IRQ_INFO_AUTOMASKED}


class PlanBar(msgspec.Struct, frozen=True):
    """One BAR of the function the client sees (or, for passthrough, any served region)."""

    bar: int  # region index on the vfio-user side (0-5 BARs, 6 ROM, ...)
    size: int  # as the client sees it
    source: str  # "region" | "irq-page"
    access: str  # "mmap" (fast path, through the passed fd) | "trapped" (REGION_READ/WRITE)
    region: int | None = None  # host region behind it
    region_name: str = ""
    region_size: int = 0  # bytes of the BAR the region backs (the rest reads 0)
    mmap_offset: int | None = None  # offset in the device fd the client maps
    is_64bit: bool | None = None  # None: decided by the device's own BAR register (passthrough)
    prefetchable: bool | None = None


class PlanIrq(msgspec.Struct, frozen=True):
    irq: int  # host IRQ index
    name: str
    trigger: str  # "level" | "edge" | "none"
    route: str  # how the client gets it, in words
    intx: bool  # delivered on the client's INTx (default mode)
    msix_vector: int | None = None  # the bridge's MSI-X vector with --irq-mode msix


class PlanReport(msgspec.Struct, frozen=True):
    kind: str  # "bridge" | "passthrough"
    summary: str
    bars: list[PlanBar] = []
    irqs: list[PlanIrq] = []
    config: str = ""
    irq_page_bar: int | None = None
    page_size: int = 0
    error: str | None = None  # why the device cannot be served (e.g. too many regions)


class InspectReport(HostReport, frozen=True):
    """The host report plus the plan (None when the device could not be opened)."""

    plan: PlanReport | None = None
    #: why the host still needs the device (or a member of its IOMMU group): no unbind is proposed
    in_use: list[str] = msgspec.field(default_factory=list)


# ---------------------------------------------------------------- is the host using it?
#: PCI base class 0x06: bridges (host 0x0600, PCI-to-PCI 0x0604, ...)
PCI_BRIDGE_BASE_CLASS = 0x06
#: IFF_UP in /sys/class/net/IF/flags
IFF_UP = 0x1
MOUNTINFO = "/proc/self/mountinfo"


def _read_text(path: str) -> str | None:
    try:
        with open(path, "rb") as stream:
            return stream.read().decode("utf-8", "replace").strip()
    except OSError:
        return None


def _subtree_dirs(top: str, kind: str) -> list[str]:
    """Every SUBTREE/.../KIND/NAME directory under the device folder `top` (block disks, net interfaces).

    Only real directories are walked (no symlinks: subsystem, driver, of_node lead out
    of the device), so a bridge's whole hierarchy is seen and nothing else.
    """
    found = []
    for folder, dirs, _files in os.walk(top):
        if os.path.basename(folder) == kind:
            found += [os.path.join(folder, name) for name in sorted(dirs)]
            dirs[:] = []
    return found


def _block_devices(disk: str) -> dict[str, str]:
    """{maj:min: name} of a disk folder, its partitions and what is stacked on them (holders/: dm, md)."""
    seen: dict[str, str] = {}
    todo = [disk]
    while todo:
        folder = os.path.realpath(todo.pop())
        number = _read_text(os.path.join(folder, "dev"))
        if number is None or number in seen:
            continue
        seen[number] = os.path.basename(folder)
        try:
            entries = sorted(os.listdir(folder))
        except OSError:
            entries = []
        for entry in entries:  # partitions: subfolders with their own dev (vda1 under vda)
            if os.path.isfile(os.path.join(folder, entry, "dev")) and entry != "holders":
                todo.append(os.path.join(folder, entry))
        holders = os.path.join(folder, "holders")
        try:
            todo += [os.path.join(holders, name) for name in sorted(os.listdir(holders))]
        except OSError:
            pass
    return seen


def _mounts(mountinfo: str) -> list[tuple[str, str, str]]:
    """(maj:min, mount point, source) of each mount in a /proc/PID/mountinfo file."""
    mounts = []
    try:
        with open(mountinfo, encoding="utf-8", errors="replace") as stream:
            for line in stream:
                fields = line.split()
                if len(fields) < 5 or "-" not in fields[6:]:
                    continue
                after = fields.index("-", 6)
                source = fields[after + 2] if len(fields) > after + 2 else ""
                mounts.append((fields[2], fields[4].replace("\\040", " "), source))
    except OSError:
        pass
    return mounts


def in_use_reasons(device: SysfsDevice, mountinfo: str = MOUNTINFO) -> list[str]:
    """Why the host still needs `device`: one phrase per mounted filesystem, interface up, or bridge."""
    reasons = []
    ids = device.pci_ids()
    if ids is not None and ids[2] >> 16 == PCI_BRIDGE_BASE_CLASS:
        reasons.append(f"it is a PCI bridge (class {ids[2]:06x}): the devices behind it would lose their bus")
    mounts = _mounts(mountinfo)
    for disk in _subtree_dirs(device.path, "block"):
        numbers = _block_devices(disk)
        names = set(numbers.values())
        for number, point, source in mounts:
            held = numbers.get(number) or (os.path.basename(source) if source.startswith("/dev/")
                                           and os.path.basename(source) in names else None)
            if held is not None:
                reasons.append(f"{point} is mounted from {held} (disk {os.path.basename(disk)})")
    for interface in _subtree_dirs(device.path, "net"):
        flags = _read_text(os.path.join(interface, "flags"))
        try:
            up = flags is not None and int(flags, 16) & IFF_UP
        except ValueError:
            up = False
        if up:
            reasons.append(f"network interface {os.path.basename(interface)} is up")
    return reasons


def host_in_use(device: SysfsDevice, mountinfo: str = MOUNTINFO) -> list[str]:
    """`in_use_reasons` of the device and of every other member of its IOMMU group not on vfio."""
    reasons = [] if device.bound_to_vfio else in_use_reasons(device, mountinfo)
    try:
        members = device.group_members()
    except OSError:
        members = []
    for member in members:
        if member.path != device.path and member.bus in ("pci", "platform", "amba") and not member.bound_to_vfio:
            reasons += [f"{member.name} (same IOMMU group): {why}" for why in in_use_reasons(member, mountinfo)]
    return reasons


def refusal(device: SysfsDevice, reasons: Sequence[str]) -> str:
    """The one error line for a device the host still uses."""
    driver = f" from {device.driver}" if device.driver else ""
    return (f"refusing to propose unbinding {device.name}{driver}: the host uses it - {'; '.join(reasons)}; "
            "serve another device (inspect one whose host driver nothing here depends on)")


# ---------------------------------------------------------------- the plan
class _ReportedDevice(DeviceBackend):
    """A backend that only *describes* the reported device, for planning (no I/O)."""

    def __init__(self, report: HostReport) -> None:
        self.name = report.device.name
        self._regions = [
            RegionInfo(index=r.index, size=r.size, flags=_bits(r.flags, _REGION_FLAG_BITS),
                       mmap_fd=-1 if "MMAP" in r.flags else None, mmap_offset=r.offset,
                       sparse_areas=tuple(r.sparse_areas or ()), name=r.name)
            for r in report.regions
        ]
        self._irqs = [IrqInfo(index=q.index, count=q.count, flags=_bits(q.flags, _IRQ_FLAG_BITS), name=q.name)
                      for q in report.irqs]

    def regions(self) -> Sequence[RegionInfo]:
        return self._regions

    def irqs(self) -> Sequence[IrqInfo]:
        return self._irqs

    def read(self, region: int, offset: int, size: int) -> bytes:
        raise BackendError(0, "planning only")

    def write(self, region: int, offset: int, data: bytes) -> None:
        raise BackendError(0, "planning only")

    def set_irq_trigger(self, irq: int, eventfd: int | None) -> None:
        raise BackendError(0, "planning only")

    def mask_irq(self, irq: int) -> None:
        raise BackendError(0, "planning only")

    def unmask_irq(self, irq: int) -> None:
        raise BackendError(0, "planning only")

    def reset(self) -> None:
        raise BackendError(0, "planning only")


def _bits(names: Sequence[str], table: dict[str, int]) -> int:
    value = 0
    for name in names:
        value |= table.get(name, 0)
    return value


def bridge_plan(report: HostReport) -> PlanReport:
    """What the bridge makes of a platform/AMBA device (default options, irq mode intx)."""
    summary = "bridge: the platform device becomes one PCI function (emulated config space, IRQ page)"
    try:
        bridge = PciBridge(_ReportedDevice(report))
    except (BarPlanError, ValueError) as exc:
        return PlanReport(kind="bridge", summary=summary, error=str(exc))
    by_index = {r.index: r for r in report.regions}
    bars = []
    for bar in bridge.plan.bars:
        info, _fd = bridge.region_info(bar.index)
        mmapped = bool(info.flags & vfio_abi.REGION_FLAG_MMAP)
        if bar.region is None:
            bars.append(PlanBar(bar=bar.index, size=bar.size, source="irq-page", access="trapped",
                                region_size=bar.backed_size, is_64bit=bar.is_64bit,
                                prefetchable=bar.prefetchable))
            continue
        host = report.regions[bar.region] if bar.region < len(report.regions) else None
        region = host.index if host is not None else bar.region
        bars.append(PlanBar(
            bar=bar.index, size=bar.size, source="region", access="mmap" if mmapped else "trapped",
            region=region, region_name=by_index[region].name if region in by_index else bar.name,
            region_size=bar.backed_size, mmap_offset=info.offset if mmapped else None,
            is_64bit=bar.is_64bit, prefetchable=bar.prefetchable,
        ))
    irqs = []
    for vector, irq in enumerate(report.irqs):
        route = ("INTx, shared by all lines (the IRQ page names the active one)" if len(report.irqs) > 1
                 else "INTx")
        irqs.append(PlanIrq(irq=irq.index, name=irq.name, trigger=irq.trigger,
                            route=f"{route}; MSI-X vector {vector} with --irq-mode msix",
                            intx=True, msix_vector=vector))
    irq_bar = bridge.plan.irq_bar
    return PlanReport(
        kind="bridge", summary=summary, bars=bars, irqs=irqs,
        config="emulated by the server (type-0 header, BAR type bits, INTx pin A, MSI-X with --irq-mode msix)",
        irq_page_bar=irq_bar.index if irq_bar is not None else None, page_size=bridge.plan.page_size,
    )


def passthrough_plan(report: HostReport) -> PlanReport:
    """What the passthrough makes of a PCI function: itself."""
    bars = []
    for r in report.regions:
        if not r.present or r.size == 0 or r.index == vfio_abi.PCI_CONFIG_REGION_INDEX:
            continue
        mmapped = "MMAP" in r.flags
        bars.append(PlanBar(bar=r.index, size=r.size, source="region", access="mmap" if mmapped else "trapped",
                            region=r.index, region_name=r.name, region_size=r.size,
                            mmap_offset=r.offset if mmapped else None))
    irqs = []
    for q in report.irqs:
        if q.count == 0:
            continue
        if q.index == vfio_abi.PCI_INTX_IRQ_INDEX:
            route = "INTx, forwarded: the host automasks it until the client's UNMASK"
        else:
            vectors = f"{q.count} vector{'s' if q.count != 1 else ''}"
            route = f"{q.name} ({vectors}), forwarded: client eventfds go to the host"
        irqs.append(PlanIrq(irq=q.index, name=q.name, trigger=q.trigger, route=route,
                            intx=q.index == vfio_abi.PCI_INTX_IRQ_INDEX))
    return PlanReport(
        kind="passthrough",
        summary="passthrough: the PCI function is served as itself (region i is region i)",
        bars=bars, irqs=irqs,
        config="forwarded to the device's config region; BAR and ROM BAR registers emulated",
    )


def plan_for(report: HostReport) -> PlanReport | None:
    if report.error is not None or not report.regions:
        return None
    if "PCI" in report.device.flags:
        return passthrough_plan(report)
    return bridge_plan(report)


def with_plan(report: HostReport) -> InspectReport:
    fields = {name: getattr(report, name) for name in report.__struct_fields__}
    return InspectReport(**fields, plan=plan_for(report))


# ---------------------------------------------------------------- the table
def _table(rows: list[list[str]], indent: str) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [indent + "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]


def _key(key: str) -> str:
    return key.ljust(12)


def _region_caps(r: RegionReport) -> str:
    caps = []
    if r.sparse_areas is not None:
        caps.append("sparse " + (",".join(f"{o:#x}+{s:#x}" for o, s in r.sparse_areas) or "none"))
    if r.region_type is not None:
        caps.append(f"type {r.region_type[0]:#x}/{r.region_type[1]:#x}")
    if r.msix_mappable:
        caps.append("msix-mappable")
    if not r.present:
        caps.append("absent")
    return "; ".join(caps) or "-"


def _irq_flags(q: IrqReport) -> str:
    return " ".join(q.flags) or "-"


def format_table(report: HostReport) -> str:
    """The report as aligned text (what `inspect NAME` prints)."""
    full = report if isinstance(report, InspectReport) else with_plan(report)
    dev = full.device
    lines = [f"{_key('device')}{dev.name} ({dev.bus}) at {dev.sysfs_path}"]
    lines.append(f"{_key('driver')}{dev.driver or 'none'} (serving needs {dev.vfio_driver})")
    group = "none" if dev.iommu_group is None else f"{dev.iommu_group} ({dev.group_node})"
    members = ", ".join(f"{m.name} [{m.driver or 'no driver'}]" for m in dev.group_members) or "-"
    lines.append(f"{_key('iommu group')}{group}; members: {members}")
    if dev.pci is not None:
        lines.append(f"{_key('pci ids')}{dev.pci.vendor:04x}:{dev.pci.device:04x} class {dev.pci.class_code:06x}")
    if full.compatible:
        lines.append(f"{_key('compatible')}{', '.join(full.compatible)}")
    if dev.iommu is not None:
        lines.append(f"{_key('flags')}{' '.join(dev.flags) or '-'}; IOMMU mode {dev.iommu}; "
                     f"reset {'yes' if dev.can_reset else 'no'}")
    if full.iommu_info is not None:
        sizes = ", ".join(hex(s) for s in full.iommu_info.page_sizes[:4]) or "-"
        ranges = ", ".join(f"{lo:#x}-{hi:#x}" for lo, hi in full.iommu_info.iova_ranges) or "not reported"
        lines.append(f"{_key('iommu')}page sizes {sizes}{'...' if len(full.iommu_info.page_sizes) > 4 else ''}; "
                     f"iova {ranges}")
    if full.regions:
        lines.append("regions")
        rows = [["index", "name", "size", "offset", "flags", "caps"]]
        rows += [[f"region {r.index}", r.name, hex(r.size), hex(r.offset), " ".join(r.flags) or "-", _region_caps(r)]
                 for r in full.regions]
        lines += _table(rows, "  ")
    if full.irqs:
        lines.append("irqs")
        rows = [["index", "name", "count", "trigger", "flags"]]
        rows += [[f"irq {q.index}", q.name, str(q.count), q.trigger, _irq_flags(q)] for q in full.irqs]
        lines += _table(rows, "  ")
    if full.plan is not None:
        lines += plan_lines(full.plan)
    for note in full.notes:
        lines.append(f"{_key('note')}{note}")
    if full.iommufd:
        lines.append(f"{_key('iommufd')}{full.iommufd}")
    if full.error:
        lines.append(f"{_key('error')}{full.error}")
    return "\n".join(lines)


def plan_lines(plan: PlanReport) -> list[str]:
    """The plan part of the table: summary, one line per BAR and per IRQ, config space."""
    lines = [f"{_key('plan')}{plan.summary}"]
    if plan.error:
        lines.append(f"{_key('plan error')}{plan.error}")
    for bar in plan.bars:
        lines.append(_key(_bar_name(bar, plan)) + _bar_line(bar))
    for irq in plan.irqs:
        lines.append(f"{_key(f'irq {irq.irq}')}{irq.name} ({irq.trigger}) -> {irq.route}")
    if plan.config:
        lines.append(f"{_key('config')}{plan.config}")
    return lines


def _bar_name(bar: PlanBar, plan: PlanReport) -> str:
    if plan.kind == "passthrough" and bar.bar >= vfio_abi.PCI_ROM_REGION_INDEX:
        return bar.region_name or f"region {bar.bar}"
    return f"BAR{bar.bar}"


def _bar_line(bar: PlanBar) -> str:
    width = " 64-bit" if bar.is_64bit else ""
    if bar.source == "irq-page":
        return f"size {bar.size:#x}{width}: IRQ page (trapped: IRQ status, MSI-X table and PBA)"
    text = f"size {bar.size:#x}{width}: region {bar.region} ({bar.region_name})"
    if bar.region_size and bar.region_size != bar.size:
        text += f", {bar.region_size:#x} bytes backed (the rest reads 0)"
    if bar.access == "mmap":
        return text + f", mmapped (device fd at offset {bar.mmap_offset:#x})"
    return text + ", trapped"


# ---------------------------------------------------------------- the command
def print_inspect(name: str, as_json: bool, out: TextIO | None = None, err: TextIO | None = None, *,
                  sysfs: str = "/sys", mountinfo: str = MOUNTINFO, allow_in_use: bool = False) -> int:
    """`vfu-platform inspect NAME [--json]`; 0, or 1 when the device cannot be opened or the host uses it.

    NAME is a device name (9010000.pl031, 0000:00:05.0) or a sysfs path.  A
    missing device raises VfioHostError (the CLI prints its one line).  A device
    that exists but cannot be opened is still described, with the reason: in
    the JSON as `error`, in the table as its last line and on stderr.  A device
    the host uses (`host_in_use`) gets the refusal as its error instead, unless
    `allow_in_use`.  `sysfs` and `mountinfo` are where to look (a test's tree).
    """
    out = out or sys.stdout
    err = err or sys.stderr
    device = find_device(sysfsdev=name, sysfs=sysfs) if "/" in name else find_device(host=name, sysfs=sysfs)
    host = inspect_host(sysfsdev=device.path)
    reasons = [] if allow_in_use else host_in_use(device, mountinfo)
    report = with_plan(host)
    if reasons:
        fields = {key: getattr(report, key) for key in report.__struct_fields__}
        fields.update(in_use=reasons, error=refusal(device, reasons), problem="in-use")
        report = InspectReport(**fields)
    if as_json:
        out.write(msgspec.json.encode(report).decode() + "\n")
    else:
        out.write(format_table(report) + "\n")
        if report.error:
            err.write(f"vfu-platform: error: {report.error}\n")
    return 0 if report.error is None else 1
