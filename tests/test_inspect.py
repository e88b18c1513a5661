# SPDX-License-Identifier: BSD-3-Clause
"""`vfu-platform inspect NAME [--json]` (vfu_platform/inspect_report.py).

The error paths run for real against this machine's sysfs (it has no /dev/vfio:
every device that exists can be described but not opened).  The plan and the
table of an openable device are checked from reports shaped like the ones the
kernel guests produce (tests/kernel/ runs the command on a real pl031,
virtio-mmio slot and edu).
"""
from __future__ import annotations

import io
import json
import mmap
import os
import subprocess
from pathlib import Path

import msgspec
import pytest

from vfu_platform.backends.vfio import Problem, VfioHostError, sysfs
from vfu_platform.backends.vfio.inspect import DeviceReport, HostReport, IrqReport, RegionReport
from vfu_platform.inspect_report import InspectReport, format_table, print_inspect, with_plan

REPO = Path(__file__).resolve().parents[1]
PYTHON = str(REPO / ".venv" / "bin" / "python")
PAGE = max(0x1000, mmap.PAGESIZE)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "vfu_platform", "inspect", *args], capture_output=True, text=True,
                          timeout=60, cwd=str(REPO), stdin=subprocess.DEVNULL)


def real_device() -> sysfs.SysfsDevice:
    for bus in ("platform", "pci", "amba"):
        try:
            names = sorted(os.listdir(f"/sys/bus/{bus}/devices"))
        except OSError:
            continue
        if names:
            return sysfs.find_device(names[0])
    pytest.skip("no platform, pci or amba device on this machine")


def platform_report(regions: list[RegionReport], irqs: list[IrqReport], **device: object) -> HostReport:
    fields = dict(name="9010000.pl031", bus="amba", sysfs_path="/sys/devices/platform/9010000.pl031",
                  driver="vfio-amba", vfio_driver="vfio-amba", iommu_group=0, group_node="/dev/vfio/noiommu-0",
                  group_members=[], iommu="NOIOMMU", flags=["AMBA"], num_regions=len(regions), num_irqs=len(irqs))
    fields.update(device)
    device_report = DeviceReport(**fields)  # type: ignore[arg-type]
    return HostReport(device=device_report, compatible=["arm,pl031", "arm,primecell"], regions=regions, irqs=irqs)


def level(index: int = 0, name: str = "irq0") -> IrqReport:
    return IrqReport(index=index, name=name, count=1, flags=["EVENTFD", "MASKABLE", "AUTOMASKED"], trigger="level")


def edge(index: int = 0, name: str = "irq0") -> IrqReport:
    return IrqReport(index=index, name=name, count=1, flags=["EVENTFD"], trigger="edge")


def region(index: int, size: int, mmap_ok: bool = True, name: str = "") -> RegionReport:
    return RegionReport(index=index, name=name or f"reg{index}", size=size, offset=index << 40,
                        flags=["READ", "WRITE"] + (["MMAP"] if mmap_ok else []))


# --------------------------------------------------------------------------- errors, for real


def test_missing_device_is_one_line_exit_1() -> None:
    result = cli("no-such-device.1234")
    assert result.returncode == 1 and result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("vfu-platform: error: no device named 'no-such-device.1234'")


def test_missing_device_raises_the_backends_error() -> None:
    with pytest.raises(VfioHostError) as info:
        print_inspect("0000:7f:1f.7", as_json=False, out=io.StringIO(), err=io.StringIO())
    assert info.value.problem is Problem.NO_DEVICE and info.value.one_line


def test_unopenable_device_table_then_its_error() -> None:
    dev = real_device()
    result = cli(dev.name)
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"device      {dev.name} ({dev.bus}) at ")
    assert lines[-1].startswith("error       ") and "plan  " not in result.stdout
    err = result.stderr.splitlines()
    assert len(err) == 1 and err[0] == "vfu-platform: error: " + lines[-1][len("error       "):]
    if not os.path.exists("/dev/vfio/vfio"):
        assert "/dev/vfio" in err[0] or "not bound" in err[0]


def test_unopenable_device_json_has_the_error_and_no_plan() -> None:
    dev = real_device()
    result = cli("--json", dev.path)  # by sysfs path
    assert result.returncode == 1 and result.stderr == ""
    report = json.loads(result.stdout)
    assert report["device"]["name"] == dev.name and report["error"] and report["problem"] in {p.value for p in Problem}
    assert report["plan"] is None and report["regions"] == []
    msgspec.json.decode(result.stdout.encode(), type=InspectReport)  # the schema round-trips


# --------------------------------------------------------------------------- the bridge plan


def test_pl031_plan_mmapped_bar_irq_page_and_intx() -> None:
    report = with_plan(platform_report([region(0, 0x1000)], [level()]))
    plan = report.plan
    assert plan is not None and plan.kind == "bridge" and plan.error is None
    assert [(b.bar, b.size, b.source, b.access, b.region, b.mmap_offset) for b in plan.bars] == [
        (0, PAGE, "region", "mmap", 0, 0), (1, PAGE, "irq-page", "trapped", None, None)]
    assert plan.irq_page_bar == 1 and plan.page_size == mmap.PAGESIZE
    assert [(q.irq, q.trigger, q.intx, q.msix_vector) for q in plan.irqs] == [(0, "level", True, 0)]
    table = format_table(report)
    assert f"BAR0        size {PAGE:#x}: region 0 (reg0), mmapped (device fd at offset 0x0)" in table
    assert f"BAR1        size {PAGE:#x}: IRQ page (trapped" in table
    assert "irq 0       irq0 (level) -> INTx; MSI-X vector 0 with --irq-mode msix" in table
    assert "compatible  arm,pl031, arm,primecell" in table


def test_small_region_is_trapped_in_a_page_sized_bar() -> None:
    report = with_plan(platform_report([region(0, 0x200, mmap_ok=False)], [edge()], name="a000000.virtio_mmio",
                                       bus="platform", flags=["PLATFORM"]))
    bar0 = report.plan.bars[0]  # type: ignore[union-attr]
    assert (bar0.size, bar0.access, bar0.region_size) == (PAGE, "trapped", 0x200)
    assert "0x200 bytes backed (the rest reads 0), trapped" in format_table(report)


def test_mmap_region_not_page_sized_is_trapped() -> None:
    report = with_plan(platform_report([region(0, 0x800)], [level()]))
    assert report.plan.bars[0].access == "trapped"  # type: ignore[union-attr]


def test_several_regions_and_irqs() -> None:
    report = with_plan(platform_report(
        [region(0, 0x1000, name="regs"), region(1, 0x10000, name="sram"), region(2, 0, name="empty"),
         region(3, 0x100, mmap_ok=False, name="ctl")],
        [level(0, "rx"), edge(1, "tx")]))
    plan = report.plan
    assert plan is not None
    assert [(b.bar, b.region, b.region_name) for b in plan.bars] == [
        (0, 0, "regs"), (1, 1, "sram"), (2, 3, "ctl"), (3, None, "")]
    assert [(q.name, q.msix_vector) for q in plan.irqs] == [("rx", 0), ("tx", 1)]
    assert "shared by all lines" in plan.irqs[0].route


def test_too_many_regions_is_a_plan_error() -> None:
    report = with_plan(platform_report([region(i, 0x1000) for i in range(7)], [level()]))
    assert report.plan is not None and report.plan.error and "BAR slots" in report.plan.error
    assert "plan error  " in format_table(report)


# --------------------------------------------------------------------------- the passthrough plan


def edu_report() -> HostReport:
    regions = [RegionReport(index=0, name="BAR0", size=1 << 20, offset=0, flags=["READ", "WRITE", "MMAP"])]
    regions += [RegionReport(index=i, name=f"BAR{i}", size=0, offset=i << 40, flags=[]) for i in range(1, 6)]
    regions += [RegionReport(index=6, name="ROM", size=0, offset=6 << 40, flags=[]),
                RegionReport(index=7, name="CONFIG", size=256, offset=7 << 40, flags=["READ", "WRITE"]),
                RegionReport(index=8, name="VGA", size=0, offset=0, flags=[], present=False)]
    irqs = [IrqReport(index=0, name="INTX", count=1, flags=["EVENTFD", "MASKABLE", "AUTOMASKED"], trigger="level"),
            IrqReport(index=1, name="MSI", count=1, flags=["EVENTFD", "NORESIZE"], trigger="edge"),
            IrqReport(index=2, name="MSIX", count=0, flags=["EVENTFD", "NORESIZE"], trigger="none"),
            IrqReport(index=3, name="ERR", count=0, flags=[], trigger="none"),
            IrqReport(index=4, name="REQ", count=1, flags=["EVENTFD", "NORESIZE"], trigger="edge")]
    dev = DeviceReport(name="0000:00:05.0", bus="pci", sysfs_path="/sys/devices/pci0000:00/0000:00:05.0",
                       driver="vfio-pci", vfio_driver="vfio-pci", iommu_group=3, group_node="/dev/vfio/3",
                       group_members=[], iommu="TYPE1v2", flags=["PCI"], num_regions=9, num_irqs=5)
    return HostReport(device=dev, compatible=[], regions=regions, irqs=irqs)


def test_pci_function_is_passed_through() -> None:
    report = with_plan(edu_report())
    plan = report.plan
    assert plan is not None and plan.kind == "passthrough" and plan.irq_page_bar is None
    assert [(b.bar, b.size, b.access, b.mmap_offset) for b in plan.bars] == [(0, 1 << 20, "mmap", 0)]
    assert [(q.name, q.intx) for q in plan.irqs] == [("INTX", True), ("MSI", False), ("REQ", False)]
    table = format_table(report)
    assert "plan        passthrough" in table
    assert "BAR0        size 0x100000: region 0 (BAR0), mmapped (device fd at offset 0x0)" in table
    assert "config      forwarded to the device's config region" in table


def test_json_round_trips_with_the_plan() -> None:
    report = with_plan(edu_report())
    data = msgspec.json.encode(report)
    assert msgspec.json.decode(data, type=InspectReport) == report
    assert json.loads(data)["plan"]["bars"][0]["access"] == "mmap"


def test_table_columns_are_aligned() -> None:
    lines = format_table(with_plan(edu_report())).splitlines()
    start = lines.index("regions") + 1
    rows = lines[start : lines.index("irqs")]
    size_column = rows[0].index("size")
    assert all(row[size_column - 2 : size_column] == "  " for row in rows)
    assert rows[1].startswith("  region 0  BAR0")


def test_print_inspect_json_of_an_unopenable_device_writes_nothing_to_stderr() -> None:
    dev = real_device()
    out, err = io.StringIO(), io.StringIO()
    assert print_inspect(dev.name, as_json=True, out=out, err=err) == 1
    assert err.getvalue() == "" and json.loads(out.getvalue())["error"]
