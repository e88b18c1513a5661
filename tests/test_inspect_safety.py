# SPDX-License-Identifier: BSD-3-Clause
"""`inspect` never proposes unbinding a device the host runs on (vfu_platform/inspect_report.py).

The fix line of an unopenable device tells how to move it to vfio-pci
(`echo NAME > .../driver/unbind`).  For the disk controller holding `/`, a NIC whose
interface is up, or a PCI bridge, following it would take the machine down: inspect
refuses instead, in one line.  Checked against fake sysfs trees (a mountinfo file
beside them) and, for real, against this machine's own root disk controller.
"""
from __future__ import annotations

import io
import os
import subprocess
from pathlib import Path

import msgspec
from fake_sysfs import FakeSysfs

from vfu_platform.backends.vfio import sysfs
from vfu_platform.inspect_report import host_in_use, print_inspect

REPO = Path(__file__).resolve().parents[1]
PYTHON = str(REPO / ".venv" / "bin" / "python")


class FakePci:
    """PCI functions (and what hangs below them) in a FakeSysfs tree."""

    def __init__(self, root: Path) -> None:
        self.fs = FakeSysfs(root)
        self.root = root
        self.bus = root / "bus" / "pci"
        (self.bus / "devices").mkdir(parents=True)
        (self.root / "devices" / "pci0000:00").mkdir(parents=True)

    def function(self, name: str, class_code: int, driver: str | None, parent: Path | None = None) -> Path:
        folder = (parent or self.root / "devices" / "pci0000:00") / name
        folder.mkdir(parents=True)
        for attr, value in (("vendor", 0x1AF4), ("device", 0x1042), ("class", class_code)):
            (folder / attr).write_text(f"{value:#06x}\n")
        os.symlink(os.path.relpath(self.bus, folder), folder / "subsystem")
        os.symlink(os.path.relpath(folder, self.bus / "devices"), self.bus / "devices" / name)
        if driver is not None:
            drivers = self.bus / "drivers" / driver
            drivers.mkdir(parents=True, exist_ok=True)
            os.symlink(os.path.relpath(drivers, folder), folder / "driver")
        return folder

    @staticmethod
    def disk(function: Path, name: str, number: str, partitions: dict[str, str] | None = None) -> Path:
        disk = function / "virtio1" / "block" / name
        disk.mkdir(parents=True)
        (disk / "dev").write_text(number + "\n")
        (disk / "holders").mkdir()
        for part, part_number in (partitions or {}).items():
            (disk / part).mkdir()
            (disk / part / "dev").write_text(part_number + "\n")
            (disk / part / "holders").mkdir()
        return disk

    @staticmethod
    def interface(function: Path, name: str, flags: int) -> None:
        folder = function / "virtio2" / "net" / name
        folder.mkdir(parents=True)
        (folder / "flags").write_text(f"{flags:#x}\n")
        (folder / "operstate").write_text("up\n" if flags & 1 else "down\n")


def mountinfo(path: Path, *mounts: tuple[str, str, str]) -> str:
    """A /proc/self/mountinfo file with (maj:min, mount point, source) mounts."""
    lines = [f"{20 + i} 1 {number} / {point} rw,relatime shared:{i} - ext4 {source} rw"
             for i, (number, point, source) in enumerate(mounts)]
    lines.append("99 1 0:22 / /proc rw,nosuid - proc proc rw")
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def inspect_fake(pci: FakePci, name: str, mounts: str) -> tuple[int, str, str, dict]:
    out, err = io.StringIO(), io.StringIO()
    code = print_inspect(name, as_json=False, out=out, err=err, sysfs=str(pci.root), mountinfo=mounts)
    json_out = io.StringIO()
    print_inspect(name, as_json=True, out=json_out, err=io.StringIO(), sysfs=str(pci.root), mountinfo=mounts)
    return code, out.getvalue(), err.getvalue(), msgspec.json.decode(json_out.getvalue())


def assert_refused(code: int, out: str, err: str, report: dict, fragment: str) -> None:
    assert code == 1
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("vfu-platform: error: refusing to propose unbinding") and fragment in lines[0]
    assert "unbind`" not in err and "/driver/unbind" not in out + err, "no unbind command is printed"
    assert "drivers_probe" not in out + err and "driver_override" not in out + err
    assert out.count(fragment) == 1, f"the reason is printed once in the table:\n{out}"
    assert report["problem"] == "in-use" and any(fragment in why for why in report["in_use"])
    assert "/driver/unbind" not in report["error"]


# --------------------------------------------------------------------------- fake trees


def test_the_root_filesystems_disk_controller_is_refused(tmp_path: Path) -> None:
    pci = FakePci(tmp_path / "sys")
    dev = pci.function("0000:00:02.0", 0x018000, "virtio-pci")
    pci.disk(dev, "vda", "253:0", {"vda1": "253:1"})
    mounts = mountinfo(tmp_path / "mountinfo", ("253:1", "/", "/dev/vda1"))
    code, out, err, report = inspect_fake(pci, "0000:00:02.0", mounts)
    assert_refused(code, out, err, report, "/ is mounted from vda1 (disk vda)")


def test_a_filesystem_on_a_device_stacked_on_the_disk_is_seen(tmp_path: Path) -> None:
    """LVM / dm-crypt: / is on dm-0, whose holder link leads back to the disk's partition."""
    pci = FakePci(tmp_path / "sys")
    dev = pci.function("0000:00:02.0", 0x010802, "nvme")
    disk = pci.disk(dev, "nvme0n1", "259:0", {"nvme0n1p2": "259:2"})
    dm = tmp_path / "sys" / "devices" / "virtual" / "block" / "dm-0"
    dm.mkdir(parents=True)
    (dm / "dev").write_text("254:0\n")
    os.symlink(os.path.relpath(dm, disk / "nvme0n1p2" / "holders"), disk / "nvme0n1p2" / "holders" / "dm-0")
    mounts = mountinfo(tmp_path / "mountinfo", ("254:0", "/", "/dev/mapper/vg-root"))
    code, out, err, report = inspect_fake(pci, "0000:00:02.0", mounts)
    assert_refused(code, out, err, report, "/ is mounted from dm-0 (disk nvme0n1)")


def test_a_nic_whose_interface_is_up_is_refused(tmp_path: Path) -> None:
    pci = FakePci(tmp_path / "sys")
    dev = pci.function("0000:00:03.0", 0x020000, "virtio-pci")
    pci.interface(dev, "eth0", 0x1003)
    code, out, err, report = inspect_fake(pci, "0000:00:03.0", mountinfo(tmp_path / "mountinfo"))
    assert_refused(code, out, err, report, "network interface eth0 is up")


def test_a_pci_bridge_is_refused(tmp_path: Path) -> None:
    pci = FakePci(tmp_path / "sys")
    bridge = pci.function("0000:00:1c.0", 0x060400, "pcieport")
    pci.function("0000:01:00.0", 0x020000, None, parent=bridge)
    code, out, err, report = inspect_fake(pci, "0000:00:1c.0", mountinfo(tmp_path / "mountinfo"))
    assert_refused(code, out, err, report, "it is a PCI bridge (class 060400)")


def test_a_disk_behind_a_bridge_is_named_too(tmp_path: Path) -> None:
    """Every reason is given, each once: the bridge itself and the root disk below it."""
    pci = FakePci(tmp_path / "sys")
    bridge = pci.function("0000:00:1c.0", 0x060400, "pcieport")
    below = pci.function("0000:01:00.0", 0x010802, "nvme", parent=bridge)
    pci.disk(below, "nvme0n1", "259:0")
    mounts = mountinfo(tmp_path / "mountinfo", ("259:0", "/", "/dev/nvme0n1"))
    code, out, err, report = inspect_fake(pci, "0000:00:1c.0", mounts)
    assert_refused(code, out, err, report, "/ is mounted from nvme0n1 (disk nvme0n1)")
    assert report["in_use"] == ["it is a PCI bridge (class 060400): the devices behind it would lose their bus",
                                "/ is mounted from nvme0n1 (disk nvme0n1)"]


def test_a_member_of_the_iommu_group_holding_root_is_refused(tmp_path: Path) -> None:
    """Serving a function means every other member of its group off its host driver too.

    `host_in_use` directly: `inspect_host` (backends/vfio/inspect.py) takes no sysfs
    root, so its group lookup would read this machine's /sys/kernel/iommu_groups.
    """
    pci = FakePci(tmp_path / "sys")
    wanted = pci.function("0000:00:05.0", 0x028000, "virtio-pci")
    disk_dev = pci.function("0000:00:06.0", 0x018000, "virtio-pci")
    pci.disk(disk_dev, "vda", "253:0")
    group = tmp_path / "sys" / "kernel" / "iommu_groups" / "7"
    (group / "devices").mkdir(parents=True)
    for function in (wanted, disk_dev):
        os.symlink(os.path.relpath(group, function), function / "iommu_group")
        os.symlink(os.path.relpath(function, group / "devices"), group / "devices" / function.name)
    mounts = mountinfo(tmp_path / "mountinfo", ("253:0", "/", "/dev/vda"))
    device = sysfs.find_device("0000:00:05.0", sysfs=str(pci.root))
    assert host_in_use(device, mounts) == ["0000:00:06.0 (same IOMMU group): / is mounted from vda (disk vda)"]
    alone = sysfs.find_device("0000:00:06.0", sysfs=str(pci.root))
    assert host_in_use(alone, mounts) == ["/ is mounted from vda (disk vda)"], "and no second, group, copy of it"


def test_an_idle_disk_and_a_down_interface_still_get_the_fix(tmp_path: Path) -> None:
    """The refusal is not a blanket one: an unmounted disk controller, a NIC whose link is down."""
    pci = FakePci(tmp_path / "sys")
    disk_dev = pci.function("0000:00:02.0", 0x018000, "virtio-pci")
    pci.disk(disk_dev, "vdb", "253:16")
    nic = pci.function("0000:00:03.0", 0x020000, "virtio-pci")
    pci.interface(nic, "eth1", 0x1002)
    mounts = mountinfo(tmp_path / "mountinfo", ("253:0", "/", "/dev/vda"))  # another disk holds /
    for name in ("0000:00:02.0", "0000:00:03.0"):
        code, _out, err, report = inspect_fake(pci, name, mounts)
        assert code == 1
        assert "refusing" not in err and report.get("in_use", []) == []
        assert f"echo {name} > " in err and "/driver/unbind" in err, err


def test_override_lets_the_fix_through(tmp_path: Path) -> None:
    pci = FakePci(tmp_path / "sys")
    dev = pci.function("0000:00:03.0", 0x020000, "virtio-pci")
    pci.interface(dev, "eth0", 0x1003)
    err = io.StringIO()
    code = print_inspect("0000:00:03.0", as_json=False, out=io.StringIO(), err=err, sysfs=str(pci.root),
                         mountinfo=mountinfo(tmp_path / "mountinfo"), allow_in_use=True)
    assert code == 1 and "refusing" not in err.getvalue() and "/driver/unbind" in err.getvalue()


# --------------------------------------------------------------------------- this machine


def root_disk_controller() -> tuple[str, str]:
    """(PCI function, disk) of the disk `/` is mounted from, via /sys/block/*/device."""
    root_dev = os.stat("/").st_dev
    number = f"{os.major(root_dev)}:{os.minor(root_dev)}"
    for disk in sorted(os.listdir("/sys/block")):
        folder = f"/sys/block/{disk}"
        numbers = {Path(p).read_text().strip() for p in [f"{folder}/dev", *map(str, Path(folder).glob("*/dev"))]}
        if number not in numbers or not os.path.exists(f"{folder}/device"):
            continue
        path = os.path.realpath(f"{folder}/device")
        while path != "/":
            subsystem = f"{path}/subsystem"
            if os.path.islink(subsystem) and os.path.basename(os.readlink(subsystem)) == "pci":
                return os.path.basename(path), disk
            path = os.path.dirname(path)
    raise AssertionError(f"no disk in /sys/block holds / ({number}): this machine's layout is not understood")


def test_the_real_root_disk_controller_is_refused() -> None:
    """What the issue's checker runs: inspect on the PCI function behind the root disk."""
    name, disk = root_disk_controller()
    device = sysfs.find_device(name)
    assert any(disk in why for why in host_in_use(device)), host_in_use(device)
    for args in ([name], [name, "--json"]):
        result = subprocess.run([PYTHON, "-m", "vfu_platform", "inspect", *args], capture_output=True, text=True,
                                timeout=60, cwd=str(REPO), stdin=subprocess.DEVNULL, check=False)
        assert result.returncode == 1, result
        assert "Traceback" not in result.stderr
        assert "/driver/unbind" not in result.stdout + result.stderr, result
        if "--json" in args:
            report = msgspec.json.decode(result.stdout)
            assert report["problem"] == "in-use" and report["error"].startswith("refusing")
        else:
            lines = result.stderr.splitlines()
            assert len(lines) == 1 and lines[0].startswith(f"vfu-platform: error: refusing to propose unbinding {name}")
            assert "/ is mounted from" in lines[0]
