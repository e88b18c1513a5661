# SPDX-License-Identifier: BSD-3-Clause
"""x86-64 guest program: `VfioHostBackend` against QEMU's edu on the stock vfio-pci driver.

Runs as root inside the q35 + intel-iommu guest (`vfu_platform.testbench.kernel`),
after x86-entry.sh loaded vfio-pci and vfio_iommu_type1.  The machine has:

* edu at 00:05.0, alone in its IOMMU group: the device under test (type1 container);
* a conventional PCI bridge with a second edu and a virtio-rng behind it: devices
  behind such a bridge share one IOMMU group, and virtio-pci holds the rng, so that
  group is not viable - a real instance of that error.

edu (QEMU docs/specs/edu.rst): id register 0x010000ed, liveness = ~written value,
factorial, a level INTx or an MSI raised by writing IRQ_RAISE, and a DMA engine
that copies between its 4 KiB buffer at 0x40000 and bus addresses.
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
from vfu_platform.backends.base import BackendError, DmaError
from vfu_platform.backends.vfio import Problem, VfioHostBackend, VfioHostError, sysfs
from vfu_platform.backends.vfio.inspect import inspect_host, report_from_backend
from vfu_platform.testbench.kguest import common, inspect_cli, vfio_user_hook
from vfu_platform.testbench.kguest.checks import Checks

EDU_IDS = (0x1234, 0x11E8)
ID, LIVENESS, FACTORIAL, IRQ_STATUS, IRQ_RAISE, IRQ_ACK = 0x00, 0x04, 0x08, 0x24, 0x60, 0x64
DMA_SRC, DMA_DST, DMA_COUNT, DMA_CMD, DMA_BUFFER = 0x80, 0x88, 0x90, 0x98, 0x40000
DMA_START, DMA_TO_RAM = 0x1, 0x2
PCI_COMMAND = 0x04
CMD_MEMORY, CMD_MASTER = 0x2, 0x4
BAR0 = lib.VFIO_PCI_BAR0_REGION_INDEX
CONFIG = lib.VFIO_PCI_CONFIG_REGION_INDEX
INTX, MSI = lib.VFIO_PCI_INTX_IRQ_INDEX, lib.VFIO_PCI_MSI_IRQ_INDEX


def pci_devices(vendor: int, device: int) -> list[sysfs.SysfsDevice]:
    found = []
    for name in sorted(os.listdir("/sys/bus/pci/devices")):
        dev = sysfs.from_path(f"/sys/bus/pci/devices/{name}")
        ids = dev.pci_ids()
        if ids and ids[:2] == (vendor, device):
            found.append(dev)
    return found


class Edu:
    """Register helpers over the backend (little-endian 32/64-bit)."""

    def __init__(self, backend: VfioHostBackend) -> None:
        self.b = backend

    def rd(self, offset: int) -> int:
        return struct.unpack("<I", self.b.read(BAR0, offset, 4))[0]

    def wr(self, offset: int, value: int) -> None:
        self.b.write(BAR0, offset, struct.pack("<I", value))

    def wr64(self, offset: int, value: int) -> None:
        self.b.write(BAR0, offset, struct.pack("<Q", value))

    def ack_all(self) -> None:
        self.wr(IRQ_ACK, self.rd(IRQ_STATUS))

    def dma(self, src: int, dst: int, count: int, to_ram: bool) -> bool:
        self.wr64(DMA_SRC, src)
        self.wr64(DMA_DST, dst)
        self.wr64(DMA_COUNT, count)
        self.wr64(DMA_CMD, DMA_START | (DMA_TO_RAM if to_ram else 0))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if not self.rd(DMA_CMD) & DMA_START:
                return True
            time.sleep(0.01)
        return False


def error_paths_before_open(c: Checks, main: sysfs.SysfsDevice, shared: sysfs.SysfsDevice | None) -> None:
    e = common.expect_error(lambda: VfioHostBackend("0000:00:1f.7"))
    c.check("no_such_device", e is not None and e.problem is Problem.NO_DEVICE and "\n" not in str(e),
            common.describe(e))
    e = common.expect_error(lambda: VfioHostBackend(main.name))
    ok = (e is not None and e.problem is Problem.WRONG_DRIVER and "no driver" in str(e)
          and f"echo vfio-pci > /sys/bus/pci/devices/{main.name}/driver_override" in str(e)
          and f"echo {main.name} > /sys/bus/pci/drivers_probe" in str(e))
    c.check("wrong_driver_unbound", ok, common.describe(e))
    if e is not None and e.fix_writes:
        common.apply_writes(e.fix_writes)
    c.check("fix_commands_bind", main.driver == "vfio-pci", f"{main.name} driver now {main.driver}")
    if shared is None:
        c.check("group_not_viable", False, "no edu behind the bridge")
        return
    rng = [m for m in shared.group_members() if m.driver == "virtio-pci"]
    if rng:
        e = common.expect_error(lambda: VfioHostBackend(rng[0].name))
        ok = (e is not None and e.problem is Problem.WRONG_DRIVER and "bound to virtio-pci" in str(e)
              and f"echo {rng[0].name} > /sys/bus/pci/devices/{rng[0].name}/driver/unbind" in str(e))
        c.check("wrong_driver_bound", ok, common.describe(e))
    else:
        c.check("wrong_driver_bound", False, f"no virtio-pci device in group {shared.iommu_group}")
    e = common.expect_error(lambda: VfioHostBackend(shared.name))
    if e is not None and e.problem is Problem.WRONG_DRIVER:
        common.apply_writes(e.fix_writes)
        e = common.expect_error(lambda: VfioHostBackend(shared.name))
    ok = (e is not None and e.problem is Problem.GROUP_NOT_VIABLE and bool(rng)
          and f"{rng[0].name} (virtio-pci)" in str(e))
    c.check("group_not_viable", ok, common.describe(e))


def permission(c: Checks, main: sysfs.SysfsDevice) -> None:
    result = common.as_user(common.NOBODY, lambda: VfioHostBackend(main.name))
    ok = result.get("problem") == "PERMISSION" and result.get("errno") == errno.EACCES and \
        f"/dev/vfio/{main.iommu_group}" in result.get("message", "")
    c.check("no_permission", ok, result)


def device_and_regions(c: Checks, b: VfioHostBackend) -> None:
    c.check("iommu_type1v2", b.iommu.name == "TYPE1v2", b.iommu.name)
    c.check("iommufd_fallback_note", any("iommufd unavailable" in n and "legacy" in n for n in b.notes), b.notes)
    c.check("device_flags_pci", b.device_flags & lib.VFIO_DEVICE_FLAGS_PCI and len(b.regions()) == 9
            and len(b.irqs()) == 5, f"flags={b.device_flags:#x} regions={len(b.regions())} irqs={len(b.irqs())}")
    r0 = b.regions()[BAR0]
    want = lib.VFIO_REGION_INFO_FLAG_READ | lib.VFIO_REGION_INFO_FLAG_WRITE | lib.VFIO_REGION_INFO_FLAG_MMAP
    c.check("bar0_info", r0.size == 1 << 20 and r0.flags & want == want and r0.name == "BAR0",
            f"size={r0.size:#x} flags={r0.flags:#x} name={r0.name}")
    c.check("bar0_mmap_fd", r0.mmap_fd == b.device_fd and r0.mmap_offset == b.host_regions[BAR0].offset,
            f"fd={r0.mmap_fd} offset={r0.mmap_offset:#x}")
    cfg = b.regions()[CONFIG]
    c.check("config_region", cfg.name == "CONFIG" and cfg.mmap_fd is None and cfg.size > 0,
            f"size={cfg.size:#x} offset={b.host_regions[CONFIG].offset:#x}")
    vendor, device = struct.unpack("<HH", b.read(CONFIG, 0, 4))
    c.check("config_ids", (vendor, device) == EDU_IDS, f"{vendor:04x}:{device:04x}")
    command = struct.unpack("<H", b.read(CONFIG, PCI_COMMAND, 2))[0]
    b.write(CONFIG, PCI_COMMAND, struct.pack("<H", command | CMD_MEMORY | CMD_MASTER))


def registers(c: Checks, b: VfioHostBackend) -> None:
    edu = Edu(b)
    ident = edu.rd(ID)
    c.check("read_id", ident == 0x010000ED, hex(ident))
    edu.wr(LIVENESS, 0x12345678)
    live = edu.rd(LIVENESS)
    c.check("write_liveness", live == 0xEDCBA987, hex(live))
    edu.wr(FACTORIAL, 5)
    deadline = time.monotonic() + 2
    while edu.rd(0x20) & 1 and time.monotonic() < deadline:  # status bit 0: computing
        time.sleep(0.01)
    c.check("factorial", edu.rd(FACTORIAL) == 120, edu.rd(FACTORIAL))
    r0 = b.regions()[BAR0]
    assert r0.mmap_fd is not None
    mm = mmap.mmap(r0.mmap_fd, r0.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=r0.mmap_offset)
    try:
        mid = struct.unpack_from("<I", mm, ID)[0]
        struct.pack_into("<I", mm, LIVENESS, 0xA5A50F0F)
        mlive = struct.unpack_from("<I", mm, LIVENESS)[0]
    finally:
        mm.close()
    c.check("mmap_region", mid == 0x010000ED and mlive == 0x5A5AF0F0, f"id={mid:#x} liveness={mlive:#x}")


def intx(c: Checks, b: VfioHostBackend) -> None:
    edu = Edu(b)
    info = b.irqs()[INTX]
    want = lib.VFIO_IRQ_INFO_EVENTFD | lib.VFIO_IRQ_INFO_MASKABLE | lib.VFIO_IRQ_INFO_AUTOMASKED
    c.check("intx_info_automasked", info.flags & want == want and info.count == 1 and info.name == "INTX",
            f"flags={info.flags:#x} count={info.count}")
    efd = common.eventfd()
    try:
        b.set_irq_trigger(INTX, efd)
        c.check("intx_no_spurious", common.wait_event(efd, 0.2) == 0)
        t0 = time.monotonic()
        edu.wr(IRQ_RAISE, 0x1)
        n = common.wait_event(efd, 3)
        c.check("intx_delivered", n >= 1 and edu.rd(IRQ_STATUS) == 1,
                f"events={n} latency={(time.monotonic() - t0) * 1e3:.1f}ms")
        edu.ack_all()
        edu.wr(IRQ_RAISE, 0x2)  # asserted again while the host still has the line masked
        masked = common.wait_event(efd, 0.8)
        b.unmask_irq(INTX)
        after = common.wait_event(efd, 3)
        c.check("intx_automasked_until_unmask", masked == 0 and after >= 1 and edu.rd(IRQ_STATUS) == 2,
                f"while masked={masked} after unmask={after}")
        edu.ack_all()
        b.unmask_irq(INTX)
        b.mask_irq(INTX)
        edu.wr(IRQ_RAISE, 0x4)
        masked = common.wait_event(efd, 0.8)
        b.unmask_irq(INTX)
        after = common.wait_event(efd, 3)
        c.check("intx_user_mask_unmask", masked == 0 and after >= 1, f"while masked={masked} after unmask={after}")
        edu.ack_all()
        b.unmask_irq(INTX)
        # bypass path: the host kernel unmasks when the unmask eventfd (a KVM resamplefd) is signalled
        ufd = common.eventfd()
        try:
            b.set_irq_unmask_eventfd(INTX, ufd)
            edu.wr(IRQ_RAISE, 0x8)
            first = common.wait_event(efd, 3)
            edu.ack_all()
            edu.wr(IRQ_RAISE, 0x10)
            masked = common.wait_event(efd, 0.8)
            os.eventfd_write(ufd, 1)
            after = common.wait_event(efd, 3)
            c.check("intx_unmask_eventfd", first >= 1 and masked == 0 and after >= 1,
                    f"first={first} while masked={masked} after eventfd={after}")
            edu.ack_all()
            b.set_irq_unmask_eventfd(INTX, None)
            b.unmask_irq(INTX)
        finally:
            os.close(ufd)
        common.drain(efd)
        b.signal_irq(INTX)
        c.check("intx_loopback", common.wait_event(efd, 2) >= 1)
        b.unmask_irq(INTX)
        b.set_irq_trigger(INTX, None)
    finally:
        os.close(efd)


def msi(c: Checks, b: VfioHostBackend) -> None:
    edu = Edu(b)
    info = b.irqs()[MSI]
    c.check("msi_info", info.count >= 1 and info.flags & lib.VFIO_IRQ_INFO_EVENTFD and not info.automasked,
            f"flags={info.flags:#x} count={info.count}")
    efd = common.eventfd()
    try:
        b.set_irq_trigger(MSI, efd)
        edu.wr(IRQ_RAISE, 0x20)
        n = common.wait_event(efd, 3)
        c.check("msi_delivered", n >= 1, f"events={n}")
        edu.ack_all()
        b.set_irq_trigger(MSI, None)
    finally:
        os.close(efd)


def dma(c: Checks, b: VfioHostBackend) -> None:
    edu = Edu(b)
    info = b.iommu_info()
    ranges = [(hex(lo), hex(hi)) for lo, hi in info.iova_ranges] if info else None
    c.check("iommu_info", info is not None and info.iova_pgsizes & 4096 and
            any(lo <= 0x100000 and 0x201000 <= hi for lo, hi in info.iova_ranges),
            f"pgsizes={info.iova_pgsizes if info else 0:#x} ranges={ranges}")
    src, dst = common.DmaBuffer(4096, "edu-src"), common.DmaBuffer(4096, "edu-dst")
    try:
        length = 2048  # QEMU 7.2's edu aborts on a transfer that ends exactly at its buffer's end
        pattern = bytes((i * 7 + 3) & 0xFF for i in range(length))
        src.map[:length] = pattern
        b.dma_map(0x100000, 4096, src.address, readable=True, writable=False)
        b.dma_map(0x200000, 4096, dst.address, readable=True, writable=True)
        c.check("dma_mappings", [(m.iova, m.size, m.programmed) for m in b.dma_mappings()]
                == [(0x100000, 4096, True), (0x200000, 4096, True)], b.dma_mappings())
        ok1 = edu.dma(0x100000, DMA_BUFFER, length, to_ram=False)
        ok2 = edu.dma(DMA_BUFFER, 0x200000, length, to_ram=True)
        c.check("dma_roundtrip_via_iommu", ok1 and ok2 and dst.map[:length] == pattern,
                f"to_edu={ok1} to_ram={ok2} equal={dst.map[:length] == pattern}")
        unmapped = b.dma_unmap(0x100000, 4096) + b.dma_unmap(0x200000, 4096)
        c.check("dma_unmap", unmapped == 8192 and not b.dma_mappings(), f"unmapped={unmapped}")
        try:
            b.dma_map(0x300000, 4096, src.address + 1)
            c.check("dma_map_unaligned_refused", False, "accepted")
        except DmaError as e:
            c.check("dma_map_unaligned_refused", e.errno == errno.EINVAL and "MAP_DMA" in str(e), f"{e.errno} {e}")
    finally:
        src.close()
        dst.close()


def reset(c: Checks, b: VfioHostBackend) -> None:
    c.check("reset_flag_absent", not b.can_reset, f"flags={b.device_flags:#x}")
    try:
        b.reset()
        c.check("reset_unsupported", False, "reset() returned")
    except VfioHostError as e:
        c.check("reset_unsupported", e.problem is Problem.UNSUPPORTED and "cannot be reset" in str(e), str(e))


def inspect_report(c: Checks, b: VfioHostBackend) -> None:
    report = msgspec.json.decode(msgspec.json.encode(report_from_backend(b)))
    dev = report["device"]
    ok = ("PCI" in dev["flags"] and dev["iommu"] == "TYPE1v2" and dev["vfio_driver"] == "vfio-pci"
          and report["regions"][0]["name"] == "BAR0" and "MMAP" in report["regions"][0]["flags"]
          and report["irqs"][0]["trigger"] == "level" and report["iommu_info"]["page_sizes"][0] == 4096)
    c.check("inspect_report", ok, f"device={dev['name']} flags={dev['flags']} irq0={report['irqs'][0]}")


def busy_and_close(c: Checks, b: VfioHostBackend, main: sysfs.SysfsDevice) -> None:
    e = common.expect_error(lambda: VfioHostBackend(sysfsdev=f"/sys/bus/pci/devices/{main.name}"))
    c.check("busy", e is not None and e.problem is Problem.BUSY and e.errno == errno.EBUSY, common.describe(e))
    report = inspect_host(main.name)
    c.check("inspect_busy_reports_error", report.problem == "busy" and report.device.driver == "vfio-pci",
            report.error)
    b.close()
    try:
        b.read(BAR0, 0, 4)
        c.check("closed", False, "read after close worked")
    except BackendError as e:
        c.check("closed", e.errno == errno.EBADF, str(e))
    again = VfioHostBackend(sysfsdev=f"/sys/bus/pci/devices/{main.name}")
    try:
        c.check("reopen_by_sysfsdev", Edu(again).rd(ID) == 0x010000ED, "group released by close()")
    finally:
        again.close()


def busy_names_holder(c: Checks, main: sysfs.SysfsDevice) -> None:
    """Another process holds the device: the error names its pid."""
    ready_r, ready_w = os.pipe()
    release_r, release_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: hold the device until told to let go
        try:
            held = VfioHostBackend(main.name)
            os.write(ready_w, b"1")
            os.read(release_r, 1)
            held.close()
        except BaseException:  # noqa: BLE001 - the parent sees "0"
            os.write(ready_w, b"0")
        os._exit(0)
    try:
        ready = os.read(ready_r, 1)
        e = common.expect_error(lambda: VfioHostBackend(main.name))
    finally:
        os.write(release_w, b"x")
        os.waitpid(pid, 0)
        for fd in (ready_r, ready_w, release_r, release_w):
            os.close(fd)
    c.check("busy_names_holder", ready == b"1" and e is not None and e.problem is Problem.BUSY
            and f"held by pid {pid}" in str(e), common.describe(e))


def inspect_command(c: Checks, main: sysfs.SysfsDevice) -> None:
    """`vfu-platform inspect` on the free device: the table and the JSON, passthrough plan included."""
    name = main.name
    inspect_cli.check_table(c, "inspect_cli_table", name, [
        f"device      {name} (pci)", "driver      vfio-pci", "flags       PCI; IOMMU mode TYPE1v2; reset no",
        "pci ids     1234:11e8", "plan        passthrough",
        "BAR0        size 0x100000: region 0 (BAR0), mmapped (device fd at offset 0x0)",
        "irq 0       INTX (level) -> INTx, forwarded", "config      forwarded"])
    inspect_cli.check_json(c, "inspect_cli_json", name, _edu_report_ok,
                           lambda r: f"device={r['device']['flags']} plan={r.get('plan')}")


def _edu_report_ok(r: dict) -> bool:
    plan = r["plan"] or {}
    bar0 = (plan.get("bars") or [{}])[0]
    return (r["error"] is None and "PCI" in r["device"]["flags"] and r["device"]["iommu"] == "TYPE1v2"
            and plan.get("kind") == "passthrough"
            and (bar0.get("bar"), bar0.get("size"), bar0.get("access"), bar0.get("mmap_offset")) == (0, 1 << 20, "mmap", 0)
            and [q["name"] for q in plan["irqs"]][:2] == ["INTX", "MSI"] and plan["irqs"][0]["intx"]
            and r["iommu_info"]["page_sizes"][0] == 4096)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    args = ap.parse_args()
    c = Checks("kguest-edu")
    edus = pci_devices(*EDU_IDS)
    main_dev = next((d for d in edus if len(d.group_members()) == 1), None)
    shared = next((d for d in edus if len(d.group_members()) > 1), None)
    c.info(f"edu devices: {[(d.name, d.iommu_group, [m.name for m in d.group_members()]) for d in edus]}")
    if main_dev is None:
        c.check("edu_found", False, "no edu alone in its IOMMU group")
        return c.finish(args.json)
    c.guard("error_paths", lambda: error_paths_before_open(c, main_dev, shared))
    c.guard("no_permission", lambda: permission(c, main_dev))
    backend = c.guard("open_by_name", lambda: VfioHostBackend(main_dev.name))
    if backend is None:
        return c.finish(args.json)
    c.check("open_by_name", True, f"{main_dev.name} group {main_dev.iommu_group} fd {backend.device_fd}")
    for name, step in [("device", device_and_regions), ("registers", registers), ("intx", intx), ("msi", msi),
                       ("dma", dma), ("reset", reset), ("inspect", inspect_report)]:
        c.guard(name, lambda step=step: step(c, backend))
    c.guard("busy_and_close", lambda: busy_and_close(c, backend, main_dev))
    c.guard("busy_names_holder", lambda: busy_names_holder(c, main_dev))
    backend.close()
    c.guard("inspect_cli", lambda: inspect_command(c, main_dev))
    c.guard("vfio_user", lambda: vfio_user_hook.run(c, main_dev.name, "edu"))  # the server opens it itself
    return c.finish(args.json)


if __name__ == "__main__":
    sys.exit(main())
