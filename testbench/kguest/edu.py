# SPDX-License-Identifier: BSD-3-Clause
"""x86-64 guest program: QEMU's edu on the stock vfio-pci driver, through two access paths.

Runs as root inside the q35 + intel-iommu guest (`testbench.kernel`), after
x86-entry.sh loaded vfio-pci and vfio_iommu_type1.  The machine has:

* edu at 00:05.0, alone in its IOMMU group: the device under test (type1 container);
* a conventional PCI bridge with a second edu and a virtio-rng behind it: devices
  behind such a bridge share one IOMMU group, and virtio-pci holds the rng, so that
  group is not viable - a real instance of that error.

One edu driver (`Edu`, registers from `vfu_platform.backends.sim.edu_map`) over an
`AccessPath` to BAR0 and the IRQs:

* `HostPath`: `VfioHostBackend` itself (`main`): host errors, regions, INTx with the
  unmask eventfd, MSI, DMA through VFIO_IOMMU_MAP_DMA, reset, close, `inspect`;
* `VfioUserPath`: `vfu-platform serve --host` on the same function, passed through as
  itself (`bridge/pci_passthrough.py`), driven by our client library in this guest
  (`run_vfio_user`, when the hook enables it; checks named `pt_*`): region info and
  config forwarding, BAR0 mmapped through the fd the server passes, INTx and MSI with
  the client's eventfds, DMA windows programmed into the guest's IOMMU, DEVICE_RESET,
  cleanup when a client goes away with a window mapped.

The register, INTx and MSI checks are the same code on both paths.
"""
from __future__ import annotations

import argparse
import errno
import json
import mmap
import os
import struct
import sys
import time
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from testbench.kguest import common, inspect_cli, vfio_user_hook
from testbench.kguest.checks import Checks
from vfu_platform import vfio_abi
from vfu_platform._vfio import lib
from vfu_platform.backends.base import BackendError, DmaError
from vfu_platform.backends.sim.edu_map import (
    DMA_BUFFER_ADDR,
    DMA_CMD_RUN,
    DMA_CMD_TO_RAM,
    IDENTIFICATION,
    MMIO_SIZE,
    PCI_DEVICE_ID,
    PCI_VENDOR_ID,
    REG_DMA_CMD,
    REG_DMA_COUNT,
    REG_DMA_DST,
    REG_DMA_SRC,
    REG_FACTORIAL,
    REG_ID,
    REG_IRQ_ACK,
    REG_IRQ_RAISE,
    REG_IRQ_STATUS,
    REG_LIVENESS,
    REG_STATUS,
    STATUS_COMPUTING,
)
from vfu_platform.backends.vfio import Problem, VfioHostBackend, VfioHostError, sysfs
from vfu_platform.backends.vfio.inspect import inspect_host, report_from_backend

if TYPE_CHECKING:
    from vfu_platform.client import VfioUserClient

EDU_IDS = (PCI_VENDOR_ID, PCI_DEVICE_ID)
PCI_COMMAND = 0x04
CMD_MEMORY, CMD_MASTER = 0x2, 0x4
BAR0 = vfio_abi.PCI_BAR0_REGION_INDEX
CONFIG = vfio_abi.PCI_CONFIG_REGION_INDEX
INTX, MSI = vfio_abi.PCI_INTX_IRQ_INDEX, vfio_abi.PCI_MSI_IRQ_INDEX
TRIGGER_EVENTFD = vfio_abi.IRQ_SET_ACTION_TRIGGER | vfio_abi.IRQ_SET_DATA_EVENTFD
TRIGGER_NONE = vfio_abi.IRQ_SET_ACTION_TRIGGER | vfio_abi.IRQ_SET_DATA_NONE
UNMASK_NONE = vfio_abi.IRQ_SET_ACTION_UNMASK | vfio_abi.IRQ_SET_DATA_NONE
SRC_IOVA, DST_IOVA = 0x100000, 0x200000
DMA_LENGTH = 2048  # QEMU 7.2's edu aborts on a transfer that ends exactly at its buffer's end
SOCKET = "/run/vfu-edu.sock"
TRACE = "/run/vfu-edu-trace.jsonl"
LOG = "/run/vfu-edu-serve.log"


# ---- the driver, over an access path ---------------------------------------------------


class AccessPath(Protocol):
    """How the driver reaches edu: BAR0 bytes, and the trigger and unmask of an IRQ index."""

    def read(self, offset: int, size: int) -> bytes: ...

    def write(self, offset: int, data: bytes) -> None: ...

    def trigger(self, index: int, eventfd: int | None) -> None: ...

    def unmask(self, index: int) -> None: ...


class HostPath:
    """`VfioHostBackend` on the device: the kernel's vfio-pci, no server in between."""

    def __init__(self, backend: VfioHostBackend) -> None:
        self.backend = backend

    def read(self, offset: int, size: int) -> bytes:
        return self.backend.read(BAR0, offset, size)

    def write(self, offset: int, data: bytes) -> None:
        self.backend.write(BAR0, offset, data)

    def trigger(self, index: int, eventfd: int | None) -> None:
        self.backend.set_irq_trigger(index, eventfd)

    def unmask(self, index: int) -> None:
        self.backend.unmask_irq(index)


class VfioUserPath:
    """Our vfio-user server on the device, through `VfioUserClient` (REGION_READ/WRITE, SET_IRQS)."""

    def __init__(self, client: VfioUserClient) -> None:
        self.client = client

    def read(self, offset: int, size: int) -> bytes:
        return self.client.region_read(BAR0, offset, size)

    def write(self, offset: int, data: bytes) -> None:
        self.client.region_write(BAR0, offset, data)

    def trigger(self, index: int, eventfd: int | None) -> None:
        if eventfd is None:
            self.client.set_irqs(index, TRIGGER_NONE, 0, 0)
        else:
            self.client.set_irqs(index, TRIGGER_EVENTFD, 0, 1, [eventfd])

    def unmask(self, index: int) -> None:
        self.client.set_irqs(index, UNMASK_NONE, 0, 1)


class Edu:
    """edu's registers (little-endian 32/64-bit) and the small protocols the checks need."""

    def __init__(self, path: AccessPath) -> None:
        self.path = path

    def rd(self, offset: int) -> int:
        return struct.unpack("<I", self.path.read(offset, 4))[0]

    def wr(self, offset: int, value: int) -> None:
        self.path.write(offset, struct.pack("<I", value))

    def wr64(self, offset: int, value: int) -> None:
        self.path.write(offset, struct.pack("<Q", value))

    def ack_all(self) -> None:
        self.wr(REG_IRQ_ACK, self.rd(REG_IRQ_STATUS))

    def factorial(self, n: int) -> int:
        self.wr(REG_FACTORIAL, n)
        deadline = time.monotonic() + 2
        while self.rd(REG_STATUS) & STATUS_COMPUTING and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.rd(REG_FACTORIAL)

    def dma(self, src: int, dst: int, count: int, to_ram: bool) -> bool:
        """One transfer, polled until the command's run bit clears: whether it completed."""
        self.wr64(REG_DMA_SRC, src)
        self.wr64(REG_DMA_DST, dst)
        self.wr64(REG_DMA_COUNT, count)
        self.wr64(REG_DMA_CMD, DMA_CMD_RUN | (DMA_CMD_TO_RAM if to_ram else 0))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if not self.rd(REG_DMA_CMD) & DMA_CMD_RUN:
                return True
            time.sleep(0.01)
        return False

    def copy_through(self, src: int, dst: int, count: int) -> tuple[bool, bool]:
        """RAM at bus address `src` -> edu's buffer -> RAM at `dst`: (first done, second done)."""
        return (self.dma(src, DMA_BUFFER_ADDR, count, to_ram=False),
                self.dma(DMA_BUFFER_ADDR, dst, count, to_ram=True))


# ---- checks that are the same on both paths (`prefix` names the path) ------------------


def registers(c: Checks, prefix: str, edu: Edu) -> None:
    ident = edu.rd(REG_ID)
    c.check(f"{prefix}read_id", ident == IDENTIFICATION, hex(ident))
    edu.wr(REG_LIVENESS, 0x12345678)
    live = edu.rd(REG_LIVENESS)
    c.check(f"{prefix}write_liveness", live == 0xEDCBA987, hex(live))
    fact = edu.factorial(5)
    c.check(f"{prefix}factorial", fact == 120, fact)


def intx_until_unmask(c: Checks, prefix: str, edu: Edu, efd: int) -> None:
    """INTx wired to `efd`: quiet, one event per raise, then masked until the unmask."""
    c.check(f"{prefix}intx_no_spurious", common.wait_event(efd, 0.2) == 0)
    t0 = time.monotonic()
    edu.wr(REG_IRQ_RAISE, 0x1)
    n = common.wait_event(efd, 3)
    c.check(f"{prefix}intx_delivered", n >= 1 and edu.rd(REG_IRQ_STATUS) == 1,
            f"events={n} latency={(time.monotonic() - t0) * 1e3:.1f}ms")
    edu.ack_all()
    edu.wr(REG_IRQ_RAISE, 0x2)  # asserted again while the host still has the line masked
    masked = common.wait_event(efd, 0.8)
    edu.path.unmask(INTX)  # the EOI
    after = common.wait_event(efd, 3)
    c.check(f"{prefix}intx_automasked_until_unmask", masked == 0 and after >= 1 and edu.rd(REG_IRQ_STATUS) == 2,
            f"while masked={masked} after unmask={after}")
    edu.ack_all()
    edu.path.unmask(INTX)


def msi_delivered(c: Checks, prefix: str, edu: Edu) -> None:
    efd = common.eventfd()
    try:
        edu.path.trigger(MSI, efd)
        edu.wr(REG_IRQ_RAISE, 0x20)
        n = common.wait_event(efd, 3)
        c.check(f"{prefix}msi_delivered", n >= 1, f"events={n}")
        edu.ack_all()
        edu.path.trigger(MSI, None)
    finally:
        os.close(efd)


# ---- the host path: VfioHostBackend ---------------------------------------------------


def pci_devices(vendor: int, device: int) -> list[sysfs.SysfsDevice]:
    found = []
    for name in sorted(os.listdir("/sys/bus/pci/devices")):
        dev = sysfs.from_path(f"/sys/bus/pci/devices/{name}")
        ids = dev.pci_ids()
        if ids and ids[:2] == (vendor, device):
            found.append(dev)
    return found


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
    c.check("bar0_info", r0.size == MMIO_SIZE and r0.flags & want == want and r0.name == "BAR0",
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


def host_registers(c: Checks, b: VfioHostBackend) -> None:
    registers(c, "", Edu(HostPath(b)))
    r0 = b.regions()[BAR0]
    assert r0.mmap_fd is not None
    mm = mmap.mmap(r0.mmap_fd, r0.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=r0.mmap_offset)
    try:
        mid = struct.unpack_from("<I", mm, REG_ID)[0]
        struct.pack_into("<I", mm, REG_LIVENESS, 0xA5A50F0F)
        mlive = struct.unpack_from("<I", mm, REG_LIVENESS)[0]
    finally:
        mm.close()
    c.check("mmap_region", mid == IDENTIFICATION and mlive == 0x5A5AF0F0, f"id={mid:#x} liveness={mlive:#x}")


def host_intx(c: Checks, b: VfioHostBackend) -> None:
    path = HostPath(b)
    edu = Edu(path)
    info = b.irqs()[INTX]
    want = lib.VFIO_IRQ_INFO_EVENTFD | lib.VFIO_IRQ_INFO_MASKABLE | lib.VFIO_IRQ_INFO_AUTOMASKED
    c.check("intx_info_automasked", info.flags & want == want and info.count == 1 and info.name == "INTX",
            f"flags={info.flags:#x} count={info.count}")
    efd = common.eventfd()
    try:
        path.trigger(INTX, efd)
        intx_until_unmask(c, "", edu, efd)
        b.mask_irq(INTX)
        edu.wr(REG_IRQ_RAISE, 0x4)
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
            edu.wr(REG_IRQ_RAISE, 0x8)
            first = common.wait_event(efd, 3)
            edu.ack_all()
            edu.wr(REG_IRQ_RAISE, 0x10)
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
        path.trigger(INTX, None)
    finally:
        os.close(efd)


def host_msi(c: Checks, b: VfioHostBackend) -> None:
    info = b.irqs()[MSI]
    c.check("msi_info", info.count >= 1 and info.flags & lib.VFIO_IRQ_INFO_EVENTFD and not info.automasked,
            f"flags={info.flags:#x} count={info.count}")
    msi_delivered(c, "", Edu(HostPath(b)))


def host_dma(c: Checks, b: VfioHostBackend) -> None:
    edu = Edu(HostPath(b))
    info = b.iommu_info()
    ranges = [(hex(lo), hex(hi)) for lo, hi in info.iova_ranges] if info else None
    c.check("iommu_info", info is not None and info.iova_pgsizes & 4096 and
            any(lo <= SRC_IOVA and DST_IOVA + 4096 <= hi for lo, hi in info.iova_ranges),
            f"pgsizes={info.iova_pgsizes if info else 0:#x} ranges={ranges}")
    src, dst = common.DmaBuffer(4096, "edu-src"), common.DmaBuffer(4096, "edu-dst")
    try:
        pattern = bytes((i * 7 + 3) & 0xFF for i in range(DMA_LENGTH))
        src.map[:DMA_LENGTH] = pattern
        b.dma_map(SRC_IOVA, 4096, src.address, readable=True, writable=False)
        b.dma_map(DST_IOVA, 4096, dst.address, readable=True, writable=True)
        c.check("dma_mappings", [(m.iova, m.size, m.programmed) for m in b.dma_mappings()]
                == [(SRC_IOVA, 4096, True), (DST_IOVA, 4096, True)], b.dma_mappings())
        ok1, ok2 = edu.copy_through(SRC_IOVA, DST_IOVA, DMA_LENGTH)
        c.check("dma_roundtrip_via_iommu", ok1 and ok2 and dst.map[:DMA_LENGTH] == pattern,
                f"to_edu={ok1} to_ram={ok2} equal={dst.map[:DMA_LENGTH] == pattern}")
        unmapped = b.dma_unmap(SRC_IOVA, 4096) + b.dma_unmap(DST_IOVA, 4096)
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
        c.check("reopen_by_sysfsdev", Edu(HostPath(again)).rd(REG_ID) == IDENTIFICATION, "group released by close()")
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
        f"pci ids     {PCI_VENDOR_ID:04x}:{PCI_DEVICE_ID:04x}", "plan        passthrough",
        "BAR0        size 0x100000: region 0 (BAR0), mmapped (device fd at offset 0x0)",
        "irq 0       INTX (level) -> INTx, forwarded", "config      forwarded"])
    inspect_cli.check_json(c, "inspect_cli_json", name, _edu_report_ok,
                           lambda r: f"device={r['device']['flags']} plan={r.get('plan')}")


def _edu_report_ok(r: dict) -> bool:
    plan = r["plan"] or {}
    bar0 = (plan.get("bars") or [{}])[0]
    return (r["error"] is None and "PCI" in r["device"]["flags"] and r["device"]["iommu"] == "TYPE1v2"
            and plan.get("kind") == "passthrough"
            and (bar0.get("bar"), bar0.get("size"), bar0.get("access"), bar0.get("mmap_offset")) == (0, MMIO_SIZE, "mmap", 0)
            and [q["name"] for q in plan["irqs"]][:2] == ["INTX", "MSI"] and plan["irqs"][0]["intx"]
            and r["iommu_info"]["page_sizes"][0] == 4096)


# ---- the vfio-user path: our server on the device, our client library ------------------


def run_vfio_user(c: Checks, device: str) -> None:
    """Serve `device` with `vfu-platform serve --host` in this guest and drive it as a client."""
    from vfu_platform.client import VfioUserClient  # only when the scenario runs

    with common.served_host_device(c, "pt", device, SOCKET, TRACE, LOG) as server:
        if server is None:
            return
        client = VfioUserClient.connect(SOCKET, timeout=20)
        try:
            _drive(c, client)
            inspect_cli.check_busy(c, "pt_inspect_busy", device)
            _leave_with_a_window(c, client)
        finally:
            client.close()
        _next_client(c, VfioUserClient, server.pid)


def trace_events(name: str | None = None) -> list[dict[str, Any]]:
    """The server's trace so far (it flushes every event)."""
    events = []
    try:
        with open(TRACE, encoding="utf-8") as f:
            for line in f:
                record = json.loads(line)
                if record.get("kind") == "event" and (name is None or record.get("event") == name):
                    events.append(record.get("fields", {}))
    except OSError:
        pass
    return events


def _drive(c: Checks, client: VfioUserClient) -> None:
    info = client.device_info()
    c.check("pt_device_info", info.flags == vfio_abi.DEVICE_FLAGS_PCI and info.num_regions == 9
            and info.num_irqs == 5, f"flags={info.flags:#x} regions={info.num_regions} irqs={info.num_irqs}")
    _config(c, client)
    edu = Edu(VfioUserPath(client))
    registers(c, "pt_", edu)
    _mmap(c, client, edu)
    _intx(c, edu)
    msi = client.irq_info(MSI)
    c.check("pt_msi_info", msi.count >= 1, f"flags={msi.flags:#x} count={msi.count}")
    msi_delivered(c, "pt_", edu)
    _dma(c, client, edu)
    client.reset()
    unsupported = trace_events("device-reset-unsupported")
    c.check("pt_reset_reported", bool(unsupported) and edu.rd(REG_ID) == IDENTIFICATION,
            f"DEVICE_RESET answered; trace={unsupported[-1:] if unsupported else 'no device-reset-unsupported'}")


def _config(c: Checks, client: VfioUserClient) -> None:
    cfg, cfg_fd = client.region_info(CONFIG)
    bar0, fd = client.region_info(BAR0)
    if fd is not None:
        os.close(fd)
    want = vfio_abi.REGION_FLAG_READ | vfio_abi.REGION_FLAG_WRITE | vfio_abi.REGION_FLAG_MMAP
    c.check("pt_region_info", bar0.size == MMIO_SIZE and bar0.flags & want == want and fd is not None
            and bar0.offset == 0 and cfg.size >= 256 and cfg_fd is None and not cfg.flags & vfio_abi.REGION_FLAG_MMAP,
            f"BAR0 size={bar0.size:#x} flags={bar0.flags:#x} offset={bar0.offset:#x} fd={fd is not None}"
            f" config size={cfg.size:#x}")
    vendor, device = struct.unpack("<HH", client.region_read(CONFIG, 0, 4))
    pin = client.region_read(CONFIG, 0x3D, 1)[0]
    c.check("pt_config_forwarded", (vendor, device) == EDU_IDS and pin == 1,
            f"{vendor:04x}:{device:04x} pin={pin}")
    original = client.read32(CONFIG, 0x10)
    client.write32(CONFIG, 0x10, 0xFFFFFFFF)
    sized = client.read32(CONFIG, 0x10)
    client.write32(CONFIG, 0x10, 0xFEB00000)
    placed = client.read32(CONFIG, 0x10)
    client.write32(CONFIG, 0x10, 0)
    c.check("pt_bar_registers_emulated", original & 0xF == 0 and sized == 0xFFF00000 and placed == 0xFEB00000,
            f"BAR0 reg {original:#x}, after sizing {sized:#x}, placed {placed:#x} (32-bit memory, 1 MiB)")
    command = struct.unpack("<H", client.region_read(CONFIG, 4, 2))[0]
    client.region_write(CONFIG, 4, struct.pack("<H", command | CMD_MEMORY | CMD_MASTER))
    now = struct.unpack("<H", client.region_read(CONFIG, 4, 2))[0]
    c.check("pt_command_forwarded", now & (CMD_MEMORY | CMD_MASTER) == CMD_MEMORY | CMD_MASTER,
            f"{command:#x} -> {now:#x}")


def _mmap(c: Checks, client: VfioUserClient, edu: Edu) -> None:
    region, fd = client.region_info(BAR0)
    if fd is None:
        c.check("pt_mmap_fast_path", False, "BAR0 came without an fd")
        return
    try:
        mm = mmap.mmap(fd, region.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=region.offset)
    finally:
        os.close(fd)
    try:
        mid = struct.unpack_from("<I", mm, REG_ID)[0]
        struct.pack_into("<I", mm, REG_LIVENESS, 0xA5A50F0F)
        through_socket = edu.rd(REG_LIVENESS)
        edu.wr(REG_LIVENESS, 0x0F0FA5A5)
        through_map = struct.unpack_from("<I", mm, REG_LIVENESS)[0]
    finally:
        mm.close()
    c.check("pt_mmap_fast_path", mid == IDENTIFICATION and through_socket == 0x5A5AF0F0 and through_map == 0xF0F05A5A,
            f"id={mid:#x} mmap write -> socket read {through_socket:#x}; socket write -> mmap read {through_map:#x}")


def _intx(c: Checks, edu: Edu) -> None:
    efd = common.eventfd()
    try:
        edu.path.trigger(INTX, efd)
        intx_until_unmask(c, "pt_", edu, efd)
        edu.path.trigger(INTX, None)  # INTx off, as QEMU does before MSI
    finally:
        os.close(efd)


def _dma(c: Checks, client: VfioUserClient, edu: Edu) -> None:
    src, dst = common.DmaBuffer(4096, "pt-src"), common.DmaBuffer(4096, "pt-dst")
    try:
        pattern = bytes((i * 13 + 5) & 0xFF for i in range(DMA_LENGTH))
        src.map[:DMA_LENGTH] = pattern
        client.dma_map(SRC_IOVA, 4096, readable=True, writable=False, fd=src.fd)
        client.dma_map(DST_IOVA, 4096, readable=True, writable=True, fd=dst.fd)
        maps = [(e["iova"], e["size"]) for e in trace_events("dma-iommu-map")]
        c.check("pt_dma_iommu_mapped", (SRC_IOVA, 4096) in maps and (DST_IOVA, 4096) in maps, f"traced {maps}")
        ok1, ok2 = edu.copy_through(SRC_IOVA, DST_IOVA, DMA_LENGTH)
        same = dst.map[:DMA_LENGTH] == pattern
        c.check("pt_dma_roundtrip", ok1 and ok2 and same,
                f"to_edu={ok1} to_ram={ok2} client sees the data={same}")
        client.dma_unmap(DST_IOVA, 4096)
        unmaps = [(e["iova"], e.get("reason")) for e in trace_events("dma-iommu-unmap")]
        dst.map[:DMA_LENGTH] = bytes(DMA_LENGTH)
        ok3 = edu.dma(DMA_BUFFER_ADDR, DST_IOVA, DMA_LENGTH, to_ram=True)  # faults in the IOMMU now
        untouched = dst.map[:DMA_LENGTH] == bytes(DMA_LENGTH)
        c.check("pt_dma_unmapped", (DST_IOVA, "DMA_UNMAP") in unmaps and ok3 and untouched,
                f"traced unmaps {unmaps}; a copy to the unmapped IOVA left the page untouched: {untouched}")
        client.dma_unmap(SRC_IOVA, 4096)
        # A window without an fd: accepted, but the device cannot reach it (traced).
        client.dma_map(0x300000, 4096)
        unreachable = trace_events("dma-unreachable")
        client.dma_unmap(0x300000, 4096)
        c.check("pt_dma_without_fd_accepted", any(e.get("iova") == 0x300000 for e in unreachable),
                f"traced {unreachable}")
    finally:
        src.close()
        dst.close()


def _leave_with_a_window(c: Checks, client: VfioUserClient) -> None:
    """Map a window and go away without unmapping it (the next step checks the cleanup)."""
    buf = common.DmaBuffer(4096, "pt-left")
    try:
        client.dma_map(0x400000, 4096, fd=buf.fd)
    finally:
        buf.close()


def _next_client(c: Checks, client_class: type, pid: int) -> None:
    deadline = time.monotonic() + 10
    lost: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        lost = [e for e in trace_events("dma-iommu-unmap") if e.get("reason") == "client lost"]
        if lost:
            break
        time.sleep(0.05)
    c.check("pt_client_loss_unmaps", any(e.get("iova") == 0x400000 for e in lost), f"traced {lost}")
    client = client_class.connect(SOCKET, timeout=20)
    try:
        edu = Edu(VfioUserPath(client))
        cmd = struct.unpack("<H", client.region_read(CONFIG, 4, 2))[0]
        client.region_write(CONFIG, 4, struct.pack("<H", cmd | CMD_MEMORY))
        efd = common.eventfd()
        try:
            client.set_irqs(INTX, TRIGGER_EVENTFD, 0, 1, [efd])  # the last client's wiring was torn down
            edu.wr(REG_IRQ_RAISE, 0x40)
            n = common.wait_event(efd, 3)
            edu.ack_all()
            client.set_irqs(INTX, UNMASK_NONE, 0, 1)
            client.set_irqs(INTX, TRIGGER_NONE, 0, 0)
        finally:
            os.close(efd)
        c.check("pt_next_client", edu.rd(REG_ID) == IDENTIFICATION and n >= 1, f"id ok, INTx events={n}")
    finally:
        client.close()


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
    for name, step in [("device", device_and_regions), ("registers", host_registers), ("intx", host_intx),
                       ("msi", host_msi), ("dma", host_dma), ("reset", reset), ("inspect", inspect_report)]:
        c.guard(name, lambda step=step: step(c, backend))
    c.guard("busy_and_close", lambda: busy_and_close(c, backend, main_dev))
    c.guard("busy_names_holder", lambda: busy_names_holder(c, main_dev))
    backend.close()
    c.guard("inspect_cli", lambda: inspect_command(c, main_dev))
    c.guard("vfio_user", lambda: vfio_user_hook.run(c, main_dev.name, "edu"))  # the server opens it itself
    return c.finish(args.json)


if __name__ == "__main__":
    # Run the module under its own name: the vfio-user hook imports it by that name.
    from testbench.kguest import edu

    sys.exit(edu.main())
