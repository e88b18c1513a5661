# SPDX-License-Identifier: BSD-3-Clause
"""Host VFIO backend: the misconfiguration errors, against this machine's real sysfs.

No fakes: the devices are whatever this machine has (CI and developer machines
have virtio-pci functions, a driverless host bridge, platform devices), and
whether /dev/vfio exists is whatever it is here (it does not, on this machine
kind).  Each test skips, saying why, when the machine lacks what it needs.
The errors that need a loaded VFIO (busy, permission, not viable, no-IOMMU
DMA) are checked for real inside the kernel-bench guests (tests/kernel/).
"""
from __future__ import annotations

import errno
import os
import pickle
from pathlib import Path

import msgspec
import pytest
from vfu_platform._vfio import lib

from vfu_platform.backends.base import BackendError
from vfu_platform.backends.vfio import (
    Problem,
    VfioHostBackend,
    VfioHostError,
    iommufd,
    open_host_device,
    sysfs,
)
from vfu_platform.backends.vfio.attach import open_device
from vfu_platform.backends.vfio.inspect import inspect_host
from vfu_platform.backends.vfio.uapi import flag_names

HAS_VFIO = os.path.exists("/dev/vfio/vfio")


def _devices() -> list[sysfs.SysfsDevice]:
    found = []
    for bus in sysfs.VFIO_DRIVERS:
        try:
            names = sorted(os.listdir(f"/sys/bus/{bus}/devices"))
        except OSError:
            continue
        found += [sysfs.find_device(name) for name in names]
    return found


def _bound_elsewhere() -> sysfs.SysfsDevice:
    for dev in _devices():
        if dev.driver and not dev.bound_to_vfio:
            return dev
    pytest.skip("no device on this machine is bound to a non-vfio driver")


def _unbound() -> sysfs.SysfsDevice:
    for dev in _devices():
        if dev.driver is None:
            return dev
    pytest.skip("every device on this machine has a driver")


def _one_line(error: BaseException) -> str:
    text = str(error)
    assert "\n" not in text and text.strip() == text and text
    return text


def test_no_such_device_by_name() -> None:
    with pytest.raises(VfioHostError) as info:
        VfioHostBackend("0000:7f:1f.7")
    e = info.value
    assert e.problem is Problem.NO_DEVICE and e.errno == errno.ENODEV
    assert isinstance(e, BackendError)
    assert "ls /sys/bus/{platform,amba,pci}/devices" in _one_line(e) or "did you mean" in str(e)


def test_no_such_device_suggests_close_names() -> None:
    pci = [d for d in _devices() if d.bus == "pci"]
    if not pci:
        pytest.skip("no PCI devices here")
    real = pci[0].name
    typo = real[:-1] + ("7" if real[-1] != "7" else "6")
    if os.path.exists(f"/sys/bus/pci/devices/{typo}"):
        pytest.skip(f"{typo} exists")
    with pytest.raises(VfioHostError) as info:
        VfioHostBackend(typo)
    assert info.value.problem is Problem.NO_DEVICE
    assert "did you mean" in _one_line(info.value) and real in str(info.value)


def test_no_such_sysfs_path() -> None:
    with pytest.raises(VfioHostError) as info:
        VfioHostBackend(sysfsdev="/sys/bus/platform/devices/no-such-device.0")
    assert info.value.problem is Problem.NO_DEVICE
    assert "/sys/bus/platform/devices/no-such-device.0" in _one_line(info.value)


def test_short_bdf_resolves_to_domain_0000() -> None:
    pci = [d for d in _devices() if d.bus == "pci" and d.name.startswith("0000:")]
    if not pci:
        pytest.skip("no PCI devices in domain 0000 here")
    assert sysfs.find_device(pci[0].name[5:]).path == pci[0].path


def test_device_on_a_bus_vfio_does_not_serve() -> None:
    for bus in ("virtio", "cpu", "memory", "node"):
        folder = f"/sys/bus/{bus}/devices"
        if os.path.isdir(folder) and os.listdir(folder):
            path = os.path.join(folder, sorted(os.listdir(folder))[0])
            break
    else:
        pytest.skip("no virtio/cpu/memory/node device here")
    with pytest.raises(VfioHostError) as info:
        VfioHostBackend(sysfsdev=path)
    assert info.value.problem is Problem.UNSUPPORTED
    assert "platform, amba and pci" in _one_line(info.value)


def test_exactly_one_of_host_and_sysfsdev() -> None:
    with pytest.raises(ValueError):
        VfioHostBackend()
    with pytest.raises(ValueError):
        VfioHostBackend("a", sysfsdev="/sys/devices/b")


@pytest.mark.skipif(HAS_VFIO, reason="/dev/vfio/vfio exists on this machine")
def test_no_dev_vfio_says_load_modules_and_bind() -> None:
    dev = _bound_elsewhere()
    with pytest.raises(VfioHostError) as info:
        VfioHostBackend(dev.name)
    e = info.value
    text = _one_line(e)
    assert e.problem is Problem.NO_VFIO and e.errno == errno.ENOENT
    assert "no /dev/vfio/vfio" in text and f"modprobe {dev.vfio_driver}" in text
    assert f"echo {dev.vfio_driver} > /sys/bus/{dev.bus}/devices/{dev.name}/driver_override" in text
    assert f"echo {dev.name} > /sys/bus/{dev.bus}/devices/{dev.name}/driver/unbind" in text
    assert f"echo {dev.name} > /sys/bus/{dev.bus}/drivers_probe" in text
    # the structured fix is exactly what the line tells the user to type, in order
    writes = [w for w in e.fix_writes if not w[0].endswith("enable_unsafe_noiommu_mode")]
    assert writes == [
        (f"/sys/bus/{dev.bus}/devices/{dev.name}/driver_override", dev.vfio_driver),
        (f"/sys/bus/{dev.bus}/devices/{dev.name}/driver/unbind", dev.name),
        (f"/sys/bus/{dev.bus}/drivers_probe", dev.name),
    ]
    for path, value in e.fix_writes:
        assert f"echo {value} > {path}" in text


@pytest.mark.skipif(HAS_VFIO, reason="/dev/vfio/vfio exists on this machine")
def test_no_dev_vfio_by_sysfs_path_too() -> None:
    dev = _bound_elsewhere()
    with pytest.raises(VfioHostError) as info:
        VfioHostBackend(sysfsdev=f"/sys/bus/{dev.bus}/devices/{dev.name}")
    assert info.value.problem is Problem.NO_VFIO


@pytest.mark.skipif(HAS_VFIO or sysfs.host_has_iommu(), reason="needs a machine without IOMMU and VFIO")
def test_no_iommu_machine_is_told_about_unsafe_mode() -> None:
    dev = _bound_elsewhere()
    with pytest.raises(VfioHostError) as info:
        VfioHostBackend(dev.name)
    text = _one_line(info.value)
    assert "modprobe vfio enable_unsafe_noiommu_mode=1" in text and "no IOMMU" in text


def test_wrong_driver_names_the_driver_and_the_commands() -> None:
    dev = _bound_elsewhere()
    with pytest.raises(VfioHostError) as info:
        sysfs.require_vfio_driver(dev)
    e = info.value
    text = _one_line(e)
    assert e.problem is Problem.WRONG_DRIVER and e.errno == errno.ENODEV
    assert f"{dev.name} is bound to {dev.driver}, not {dev.vfio_driver}" in text
    assert f"echo {dev.vfio_driver} > /sys/bus/{dev.bus}/devices/{dev.name}/driver_override" in text
    assert f"echo {dev.name} > /sys/bus/{dev.bus}/devices/{dev.name}/driver/unbind" in text
    assert f"echo {dev.name} > /sys/bus/{dev.bus}/drivers_probe" in text
    assert text.index("driver_override") < text.index("driver/unbind") < text.index("drivers_probe")


def test_wrong_driver_when_no_driver_has_no_unbind_step() -> None:
    dev = _unbound()
    with pytest.raises(VfioHostError) as info:
        sysfs.require_vfio_driver(dev)
    text = _one_line(info.value)
    assert info.value.problem is Problem.WRONG_DRIVER and "(no driver)" in text
    assert "driver/unbind" not in text and f"echo {dev.name} > /sys/bus/{dev.bus}/drivers_probe" in text


@pytest.mark.skipif(HAS_VFIO, reason="/dev/vfio/vfio exists on this machine")
def test_open_device_checks_vfio_before_the_driver() -> None:
    """Both are wrong here; the line names the first fix to make (load VFIO) and includes the binding."""
    dev = _bound_elsewhere()
    with pytest.raises(VfioHostError) as info:
        open_device(dev)
    assert info.value.problem is Problem.NO_VFIO and "driver_override" in str(info.value)


def test_bad_iommu_choice_is_a_usage_error() -> None:
    dev = _bound_elsewhere()
    with pytest.raises(ValueError, match="iommu must be one of"):
        open_device(dev, iommu="type2")


def test_iommufd_probe_explains_why_not() -> None:
    dev = _bound_elsewhere()
    status = iommufd.probe(dev)
    assert not status.usable
    assert status.message.startswith("iommufd unavailable: ") and "legacy group/container API" in status.message
    if not os.path.exists("/dev/iommu"):
        assert "no /dev/iommu" in status.reason
    assert status.bindings == iommufd.bindings_have_iommufd()
    if not os.path.exists("/usr/include/linux/iommufd.h"):
        assert not status.bindings  # Debian 12's headers: the cdev uAPI is not in the bindings


def test_inspect_reports_sysfs_facts_and_the_error() -> None:
    dev = _bound_elsewhere()
    report = inspect_host(dev.name)
    assert report.error and report.problem in {p.value for p in Problem}
    assert report.device.name == dev.name and report.device.driver == dev.driver
    assert report.device.vfio_driver == dev.vfio_driver
    decoded = msgspec.json.decode(msgspec.json.encode(report))
    assert decoded["device"]["bus"] == dev.bus and decoded["error"] == report.error
    if dev.bus == "pci":
        vendor = int(Path(dev.path, "vendor").read_text(), 16)
        assert report.device.pci is not None and report.device.pci.vendor == vendor


def test_inspect_of_a_missing_device_raises() -> None:
    with pytest.raises(VfioHostError) as info:
        inspect_host("0000:7f:1f.7")
    assert info.value.problem is Problem.NO_DEVICE


def test_open_host_device_is_the_cli_entry() -> None:
    with pytest.raises(VfioHostError) as info:
        open_host_device(host="0000:7f:1f.7")
    assert info.value.one_line and info.value.problem is Problem.NO_DEVICE


def test_error_survives_pickling() -> None:
    e = VfioHostError(Problem.BUSY, "x is in use", fix_writes=(("/sys/a", "b"),))
    back = pickle.loads(pickle.dumps(e))
    assert (back.problem, str(back), back.errno, back.fix_writes) == (Problem.BUSY, "x is in use", errno.EBUSY,
                                                                       (("/sys/a", "b"),))


def test_messages_are_squeezed_to_one_line() -> None:
    assert str(VfioHostError(Problem.KERNEL, "a\n  b\tc")) == "a b c"


def test_flag_names_come_from_the_header() -> None:
    assert flag_names("irq", lib.VFIO_IRQ_INFO_EVENTFD | lib.VFIO_IRQ_INFO_AUTOMASKED) == ["EVENTFD", "AUTOMASKED"]
    assert flag_names("device", lib.VFIO_DEVICE_FLAGS_AMBA | 1 << 30) == ["AMBA", hex(1 << 30)]
    assert "MMAP" in flag_names("region", lib.VFIO_REGION_INFO_FLAG_MMAP)
