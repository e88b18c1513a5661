# SPDX-License-Identifier: BSD-3-Clause
"""aarch64 guest program: `VfioHostBackend` against platform devices in no-IOMMU mode.

Runs as root inside QEMU's `virt` board (no IOMMU), after arm64-entry.sh loaded
the rebuilt vfio (no-IOMMU mode still *off*), vfio-platform (reset_required=0)
and vfio-amba.  Devices:

* pl031 RTC at 9010000, an AMBA PrimeCell bound at boot to rtc-pl031: a level
  IRQ (AUTOMASKED), raised from software by writing the match register with the
  current time and lowered by writing the interrupt clear register;
* an empty virtio-mmio slot (platform device, no driver binds an empty slot):
  a 0x200-byte region (not page-sized, so not mmappable) and an edge IRQ.
"""
from __future__ import annotations

import argparse
import errno
import mmap
import os
import struct
import sys
import time

import msgspec

from vfu_platform._vfio import lib
from vfu_platform.backends.vfio import Problem, VfioHostBackend, VfioHostError, sysfs
from vfu_platform.backends.vfio.inspect import report_from_backend
from testbench.kguest import common, inspect_cli, vfio_user_hook
from testbench.kguest.checks import Checks

RTC_IMSC, RTC_MIS, RTC_ICR = 0x10, 0x18, 0x1C
PL031_ID = [0x31, 0x10, 0x14, 0x00, 0x0D, 0xF0, 0x05, 0xB1]
VIRTIO_MAGIC, VIRTIO_VENDOR_QEMU = 0x74726976, 0x554D4551
LEVEL = lib.VFIO_IRQ_INFO_EVENTFD | lib.VFIO_IRQ_INFO_MASKABLE | lib.VFIO_IRQ_INFO_AUTOMASKED
RWM = lib.VFIO_REGION_INFO_FLAG_READ | lib.VFIO_REGION_INFO_FLAG_WRITE | lib.VFIO_REGION_INFO_FLAG_MMAP


def first(bus: str, suffix: str) -> sysfs.SysfsDevice | None:
    names = sorted((n for n in os.listdir(f"/sys/bus/{bus}/devices") if n.endswith(suffix)),
                   key=lambda n: int(n.split(".")[0], 16))
    return sysfs.find_device(names[0]) if names else None


class Pl031:
    def __init__(self, backend: VfioHostBackend) -> None:
        self.b = backend

    def rd(self, offset: int) -> int:
        return struct.unpack("<I", self.b.read(0, offset, 4))[0]

    def wr(self, offset: int, value: int) -> None:
        self.b.write(0, offset, struct.pack("<I", value))

    def arm(self) -> None:
        self.wr(RTC_IMSC, 0)
        self.wr(RTC_ICR, 1)
        self.wr(RTC_IMSC, 1)

    def assert_(self) -> None:
        common.pl031_match_now(self.rd, self.wr)  # level until cleared

    def deassert(self) -> None:
        self.wr(RTC_ICR, 1)


def bind_with_fix(c: Checks, name: str, device: sysfs.SysfsDevice, must_mention: list[str]) -> None:
    e = common.expect_error(lambda: VfioHostBackend(device.name))
    text = str(e) if e else ""
    ok = e is not None and e.problem is Problem.WRONG_DRIVER and all(m in text for m in must_mention)
    c.check(name, ok, common.describe(e))
    if e is not None and e.fix_writes:
        common.apply_writes(e.fix_writes)
    c.check(f"{name}_fixed", device.bound_to_vfio and device.group_is_noiommu(),
            f"driver={device.driver} group={device.group_node()}")


def permissions(c: Checks, device: sysfs.SysfsDevice) -> None:
    node = device.group_node()
    assert node is not None
    result = common.as_user(common.NOBODY, lambda: VfioHostBackend(device.name))
    c.check("no_permission_eacces", result.get("problem") == "PERMISSION" and result.get("errno") == errno.EACCES
            and node in result.get("message", ""), result)
    mode = os.stat(node).st_mode & 0o777
    os.chmod(node, 0o666)
    try:
        result = common.as_user(common.NOBODY, lambda: VfioHostBackend(device.name))
    finally:
        os.chmod(node, mode)
    c.check("no_permission_cap_sys_rawio", result.get("problem") == "PERMISSION" and result.get("errno") == errno.EPERM
            and "CAP_SYS_RAWIO" in result.get("message", ""), result)


def pl031_info(c: Checks, b: VfioHostBackend) -> None:
    c.check("pl031_noiommu_container", b.iommu.name == "NOIOMMU" and b.noiommu and b.iommu_info() is None,
            b.iommu.name)
    c.check("pl031_flags_amba", b.device_flags & lib.VFIO_DEVICE_FLAGS_AMBA and len(b.regions()) == 1
            and len(b.irqs()) == 1, f"flags={b.device_flags:#x} regions={len(b.regions())} irqs={len(b.irqs())}")
    c.check("pl031_compatible", b.compatible == ("arm,pl031", "arm,primecell"), b.compatible)
    r0 = b.regions()[0]
    c.check("pl031_region", r0.size == 0x1000 and r0.flags & RWM == RWM and r0.mmap_fd == b.device_fd
            and r0.mmap_offset == b.host_regions[0].offset,
            f"name={r0.name} size={r0.size:#x} flags={r0.flags:#x} offset={r0.mmap_offset:#x}")
    p = Pl031(b)
    ids = [p.rd(0xFE0 + 4 * i) & 0xFF for i in range(8)]
    c.check("pl031_read_ids", ids == PL031_ID, [hex(i) for i in ids])
    assert r0.mmap_fd is not None
    mm = mmap.mmap(r0.mmap_fd, r0.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=r0.mmap_offset)
    try:
        mids = [struct.unpack_from("<I", mm, 0xFE0 + 4 * i)[0] & 0xFF for i in range(8)]
    finally:
        mm.close()
    c.check("pl031_mmap_ids", mids == PL031_ID, [hex(i) for i in mids])
    irq = b.irqs()[0]
    c.check("pl031_irq_level_automasked", irq.flags & LEVEL == LEVEL and irq.count == 1 and irq.automasked,
            f"flags={irq.flags:#x} count={irq.count} name={irq.name}")


def pl031_irq(c: Checks, b: VfioHostBackend) -> None:
    p = Pl031(b)
    efd = common.eventfd()
    try:
        p.arm()
        b.set_irq_trigger(0, efd)
        c.check("pl031_no_spurious", common.wait_event(efd, 0.2) == 0)
        t0 = time.monotonic()
        p.assert_()
        n = common.wait_event(efd, 5)
        c.check("pl031_irq_delivered", n >= 1 and p.rd(RTC_MIS) & 1,
                f"events={n} latency={(time.monotonic() - t0) * 1e3:.1f}ms")
        p.deassert()
        p.assert_()  # asserted again while the host keeps the line masked
        masked = common.wait_event(efd, 0.8)
        b.unmask_irq(0)
        after = common.wait_event(efd, 5)
        c.check("pl031_automasked_until_unmask", masked == 0 and after >= 1,
                f"while masked={masked} after unmask={after}")
        p.deassert()
        b.unmask_irq(0)
        b.mask_irq(0)
        p.assert_()
        masked = common.wait_event(efd, 0.8)
        b.unmask_irq(0)
        after = common.wait_event(efd, 5)
        c.check("pl031_user_mask_unmask", masked == 0 and after >= 1, f"while masked={masked} after unmask={after}")
        p.deassert()
        b.unmask_irq(0)
        ufd = common.eventfd()
        try:
            b.set_irq_unmask_eventfd(0, ufd)
            p.assert_()
            first_n = common.wait_event(efd, 5)
            p.deassert()
            p.assert_()
            masked = common.wait_event(efd, 0.8)
            os.eventfd_write(ufd, 1)
            after = common.wait_event(efd, 5)
            c.check("pl031_unmask_eventfd", first_n >= 1 and masked == 0 and after >= 1,
                    f"first={first_n} while masked={masked} after eventfd={after}")
            p.deassert()
            b.set_irq_unmask_eventfd(0, None)
            b.unmask_irq(0)
        finally:
            os.close(ufd)
        p.wr(RTC_IMSC, 0)
        b.set_irq_trigger(0, None)
    finally:
        os.close(efd)


def pl031_dma_and_reset(c: Checks, b: VfioHostBackend) -> None:
    buf = common.DmaBuffer(4096)
    try:
        try:
            b.dma_map(0x100000, 4096, buf.address)
            c.check("noiommu_dma_refused", False, "dma_map accepted without the unsafe option")
        except VfioHostError as e:
            c.check("noiommu_dma_refused", e.problem is Problem.UNSAFE_NOIOMMU_DMA
                    and "allow_unsafe_noiommu_dma" in str(e), str(e))
    finally:
        buf.close()
    c.check("pl031_reset_flag_absent", not b.can_reset, f"flags={b.device_flags:#x}")
    try:
        b.reset()
        c.check("pl031_reset_unsupported", False, "reset() returned")
    except VfioHostError as e:
        c.check("pl031_reset_unsupported", e.problem is Problem.UNSUPPORTED and "no reset module" in str(e), str(e))


def pl031_report_and_busy(c: Checks, b: VfioHostBackend, device: sysfs.SysfsDevice) -> None:
    report = msgspec.json.decode(msgspec.json.encode(report_from_backend(b)))
    dev = report["device"]
    ok = (report["compatible"] == ["arm,pl031", "arm,primecell"] and "AMBA" in dev["flags"]
          and dev["iommu"] == "NOIOMMU" and dev["group_node"].startswith("/dev/vfio/noiommu-")
          and report["irqs"][0]["trigger"] == "level" and report["iommu_info"] is None)
    c.check("pl031_inspect_report", ok, f"compatible={report['compatible']} flags={dev['flags']} "
            f"group={dev['group_node']}")
    e = common.expect_error(lambda: VfioHostBackend(device.name))
    c.check("pl031_busy", e is not None and e.problem is Problem.BUSY, common.describe(e))


def unsafe_dma(c: Checks, device: sysfs.SysfsDevice) -> None:
    buf = common.DmaBuffer(8192)
    b = VfioHostBackend(device.name, allow_unsafe_noiommu_dma=True)
    try:
        b.dma_map(0x100000, 8192, buf.address)
        maps = b.dma_mappings()
        gone = b.dma_unmap(0x100000, 8192)
        c.check("noiommu_dma_unsafe_opt_in", len(maps) == 1 and not maps[0].programmed and gone == 8192
                and not b.dma_mappings(), f"mappings={maps} unmapped={gone}")
    finally:
        b.close()
        buf.close()


def virtio_mmio(c: Checks, device: sysfs.SysfsDevice) -> None:
    b = VfioHostBackend(sysfsdev=device.path)
    try:
        c.check("vmmio_flags_platform", b.device_flags & lib.VFIO_DEVICE_FLAGS_PLATFORM and len(b.regions()) == 1
                and len(b.irqs()) == 1, f"flags={b.device_flags:#x}")
        c.check("vmmio_compatible", b.compatible == ("virtio,mmio",), b.compatible)
        r0 = b.regions()[0]
        c.check("vmmio_region_not_mmappable", r0.size == 0x200 and not r0.flags & lib.VFIO_REGION_INFO_FLAG_MMAP
                and r0.mmap_fd is None and not r0.mmappable, f"size={r0.size:#x} flags={r0.flags:#x}")
        magic, version, device_id, vendor = struct.unpack("<IIII", b.read(0, 0, 16))
        c.check("vmmio_magic", magic == VIRTIO_MAGIC and vendor == VIRTIO_VENDOR_QEMU and device_id == 0,
                f"magic={magic:#x} version={version} device={device_id} vendor={vendor:#x}")
        irq = b.irqs()[0]
        c.check("vmmio_irq_edge", irq.flags == lib.VFIO_IRQ_INFO_EVENTFD and not irq.automasked,
                f"flags={irq.flags:#x}")
        efd = common.eventfd()
        try:
            b.set_irq_trigger(0, efd)
            b.signal_irq(0)
            c.check("vmmio_loopback", common.wait_event(efd, 2) >= 1)
            b.set_irq_trigger(0, None)
        finally:
            os.close(efd)
    finally:
        b.close()
    e = common.expect_error(lambda: VfioHostBackend(device.name, iommu="type1"))
    c.check("vmmio_type1_refused_in_noiommu_group", e is not None and e.problem is Problem.NO_IOMMU_BACKEND,
            common.describe(e))
    e = common.expect_error(lambda: VfioHostBackend(device.name, iommu="iommufd"))
    c.check("iommufd_unavailable", e is not None and e.problem is Problem.IOMMUFD_UNAVAILABLE
            and "iommu=auto" in str(e), common.describe(e))


def pl031_guest_descriptor(c: Checks, device: sysfs.SysfsDevice) -> None:
    """The guest descriptor a bridge serves for the real pl031 (read from sysfs and the DT)
    equals the one it serves for the simulated pl031: name, binding, peripheral ID,
    compatible, regions (BAR, offset, size, name), IRQs (line, trigger); properties (the
    host's DT adds its apb_pclk rate) and region flags (mmapped or trapped) are shown."""
    from vfu_platform.backends.sim.pl031 import Pl031Device
    from vfu_platform.bridge.device import PciBridge

    host = PciBridge(VfioHostBackend(device.name))
    model = PciBridge(Pl031Device(epoch=0))
    try:
        def shape(records: tuple) -> list:  # region flags say mmapped/trapped: transport, not device
            return [(r.name, r.bind, hex(r.amba_id or 0), r.compatible,
                     [(g.bar, g.offset, g.size, g.name) for g in r.regions], r.irqs) for r in records]

        same = bool(host.guest_devices) and shape(host.guest_devices) == shape(model.guest_devices)
        props = [[(p.name, p.value) for p in r.properties] for r in host.guest_devices]
        flags = [[g.flags for g in r.regions] for r in host.guest_devices + model.guest_devices]
        c.check("pl031_descriptor_matches_model", same,
                f"host {shape(host.guest_devices)} properties {props}; model {shape(model.guest_devices)}; "
                f"region flags host/model {flags}")
        c.check("pl031_descriptor_capability", host.descriptor[:4] == b"VFUD" and len(host.descriptor) > 16,
                f"{len(host.descriptor)} bytes")
    finally:
        host.close()
        model.close()


def pl031_inspect_command(c: Checks, device: sysfs.SysfsDevice) -> None:
    """`vfu-platform inspect` on the free pl031: table and JSON with the bridge plan."""
    import mmap as _mmap

    bar = max(0x1000, _mmap.PAGESIZE)
    name = device.name
    inspect_cli.check_table(c, "pl031_inspect_cli_table", name, [
        f"device      {name} (amba)", "driver      vfio-amba", "compatible  arm,pl031, arm,primecell",
        "flags       AMBA; IOMMU mode NOIOMMU; reset no", "plan        bridge",
        f"BAR0        size {bar:#x}: region 0 (", "mmapped (device fd at offset 0x0)",
        f"BAR1        size {bar:#x}: IRQ page", "irq 0       ", "(level) -> INTx; MSI-X vector 0 with --irq-mode msix"])

    def ok(r: dict) -> bool:
        plan = r["plan"] or {}
        bars = plan.get("bars") or []
        return (r["error"] is None and r["compatible"] == ["arm,pl031", "arm,primecell"]
                and r["device"]["iommu"] == "NOIOMMU" and plan.get("kind") == "bridge"
                and [(b["bar"], b["source"], b["access"], b["region"]) for b in bars]
                == [(0, "region", "mmap", 0), (1, "irq-page", "trapped", None)]
                and plan["irq_page_bar"] == 1
                and [(q["irq"], q["trigger"], q["intx"], q["msix_vector"]) for q in plan["irqs"]] == [(0, "level", True, 0)])

    inspect_cli.check_json(c, "pl031_inspect_cli_json", name, ok, lambda r: f"plan={r.get('plan')}")


def vmmio_inspect_command(c: Checks, device: sysfs.SysfsDevice) -> None:
    """A 0x200-byte region: a page-sized BAR, trapped, the rest reads 0; an edge IRQ."""
    def ok(r: dict) -> bool:
        plan = r["plan"] or {}
        bar0 = (plan.get("bars") or [{}])[0]
        return (r["error"] is None and "PLATFORM" in r["device"]["flags"] and plan.get("kind") == "bridge"
                and bar0.get("access") == "trapped" and bar0.get("region_size") == 0x200
                and plan["irqs"][0]["trigger"] == "edge")

    inspect_cli.check_json(c, "vmmio_inspect_cli_json", device.name, ok, lambda r: f"plan={r.get('plan')}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    args = ap.parse_args()
    c = Checks("kguest-platform")
    pl031 = first("amba", ".pl031")
    vmmio = first("platform", ".virtio_mmio")
    c.info(f"pl031={pl031 and pl031.name} driver={pl031 and pl031.driver}; "
           f"virtio-mmio={vmmio and vmmio.name} driver={vmmio and vmmio.driver}")
    if pl031 is None or vmmio is None:
        c.check("devices_found", False, "pl031 or virtio-mmio missing")
        return c.finish(args.json)
    c.guard("pl031_wrong_driver", lambda: bind_with_fix(
        c, "pl031_wrong_driver", pl031,
        ["bound to rtc-pl031", "enable_unsafe_noiommu_mode", f"echo vfio-amba > /sys/bus/amba/devices/{pl031.name}"
         "/driver_override", f"echo {pl031.name} > /sys/bus/amba/devices/{pl031.name}/driver/unbind",
         f"echo {pl031.name} > /sys/bus/amba/drivers_probe"]))
    c.guard("permissions", lambda: permissions(c, pl031))
    backend = c.guard("pl031_open", lambda: VfioHostBackend(pl031.name))
    if backend is not None:
        c.check("pl031_open", True, f"{pl031.name} via {pl031.group_node()}")
        for name, step in [("pl031_info", pl031_info), ("pl031_irq", pl031_irq),
                           ("pl031_dma_reset", pl031_dma_and_reset)]:
            c.guard(name, lambda step=step: step(c, backend))
        c.guard("pl031_report", lambda: pl031_report_and_busy(c, backend, pl031))
        backend.close()
        c.guard("pl031_inspect_cli", lambda: pl031_inspect_command(c, pl031))
        c.guard("pl031_guest_descriptor", lambda: pl031_guest_descriptor(c, pl031))
        c.guard("vfio_user", lambda: vfio_user_hook.run(c, pl031.name, "pl031"))
        c.guard("noiommu_dma_unsafe_opt_in", lambda: unsafe_dma(c, pl031))
    c.guard("vmmio_wrong_driver", lambda: bind_with_fix(
        c, "vmmio_wrong_driver", vmmio,
        ["no driver", f"echo vfio-platform > /sys/bus/platform/devices/{vmmio.name}/driver_override"]))
    c.guard("virtio_mmio", lambda: virtio_mmio(c, vmmio))
    c.guard("vmmio_inspect_cli", lambda: vmmio_inspect_command(c, vmmio))
    return c.finish(args.json)


if __name__ == "__main__":
    sys.exit(main())
