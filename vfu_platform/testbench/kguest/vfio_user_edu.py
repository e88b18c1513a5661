# SPDX-License-Identifier: BSD-3-Clause
"""In-guest end to end: `vfu-platform serve --host` on QEMU's edu (vfio-pci, type1), passed through.

A PCI function is served as itself (`bridge/pci_passthrough.py`), so the client
sees edu exactly: BAR0 (1 MiB, mmapped through the VFIO device fd the server
passes), edu's config space forwarded to the kernel, INTx and MSI forwarded
with the client's own eventfds, and DMA windows programmed into the guest's
IOMMU (intel-iommu) with VFIO_IOMMU_MAP_DMA.  Server and client share the one
guest kernel (SCM_RIGHTS).  Checks:

* DEVICE_GET_INFO / region info as the host's (BAR0 fd + offset, config size);
  BAR registers emulated with edu's type bits and size mask; IDs forwarded;
* registers through REGION_READ/WRITE and through the client's mmap of BAR0;
* INTx: one event per raise, masked by the host until the client's UNMASK;
* MSI through the client's eventfd;
* edu DMA: memfd pages the client maps with DMA_MAP (fd passed) become IOVAs
  in the host IOMMU; edu copies RAM -> edu -> RAM and the client sees the data
  in its own mapping; after DMA_UNMAP the IOVA is gone (a copy to it changes
  nothing) - the server traced the IOMMU map and unmap;
* DEVICE_RESET answers success although edu has no reset (reported in the trace);
* `inspect` while the server holds the device: the report, exit 1, one error line;
* the client goes away with a window still mapped: the server unmaps it from the
  IOMMU, the next client is served, SIGTERM ends the server cleanly.
"""
from __future__ import annotations

import json
import mmap
import os
import struct
import time
from typing import TYPE_CHECKING, Any

from vfu_platform import vfio_abi
from vfu_platform.testbench.kguest import common, inspect_cli
from vfu_platform.testbench.kguest.checks import Checks

if TYPE_CHECKING:
    from vfu_platform.client import VfioUserClient

ID, LIVENESS, FACTORIAL, STATUS, IRQ_STATUS, IRQ_RAISE, IRQ_ACK = 0x00, 0x04, 0x08, 0x20, 0x24, 0x60, 0x64
DMA_SRC, DMA_DST, DMA_COUNT, DMA_CMD, DMA_BUFFER = 0x80, 0x88, 0x90, 0x98, 0x40000
DMA_START, DMA_TO_RAM = 0x1, 0x2
BAR0 = vfio_abi.PCI_BAR0_REGION_INDEX
CONFIG = vfio_abi.PCI_CONFIG_REGION_INDEX
INTX, MSI = vfio_abi.PCI_INTX_IRQ_INDEX, vfio_abi.PCI_MSI_IRQ_INDEX
TRIGGER_EVENTFD = vfio_abi.IRQ_SET_ACTION_TRIGGER | vfio_abi.IRQ_SET_DATA_EVENTFD
TRIGGER_NONE = vfio_abi.IRQ_SET_ACTION_TRIGGER | vfio_abi.IRQ_SET_DATA_NONE
UNMASK_NONE = vfio_abi.IRQ_SET_ACTION_UNMASK | vfio_abi.IRQ_SET_DATA_NONE
CMD_MEMORY, CMD_MASTER = 0x2, 0x4
SRC_IOVA, DST_IOVA = 0x100000, 0x200000
DMA_LENGTH = 2048  # QEMU 7.2's edu aborts on a transfer that ends exactly at its buffer's end
SOCKET = "/run/vfu-edu.sock"
TRACE = "/run/vfu-edu-trace.jsonl"
LOG = "/run/vfu-edu-serve.log"


class EduClient:
    """edu's registers over vfio-user."""

    def __init__(self, client: VfioUserClient) -> None:
        self.client = client

    def rd(self, offset: int) -> int:
        return self.client.read32(BAR0, offset)

    def wr(self, offset: int, value: int) -> None:
        self.client.write32(BAR0, offset, value)

    def ack_all(self) -> None:
        self.wr(IRQ_ACK, self.rd(IRQ_STATUS))

    def dma(self, src: int, dst: int, count: int, to_ram: bool) -> bool:
        self.client.write64(BAR0, DMA_SRC, src)
        self.client.write64(BAR0, DMA_DST, dst)
        self.client.write64(BAR0, DMA_COUNT, count)
        self.client.write64(BAR0, DMA_CMD, DMA_START | (DMA_TO_RAM if to_ram else 0))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if not self.rd(DMA_CMD) & DMA_START:
                return True
            time.sleep(0.01)
        return False


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




def run_edu(c: Checks, device: str) -> None:
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


def _drive(c: Checks, client: VfioUserClient) -> None:
    info = client.device_info()
    c.check("pt_device_info", info.flags == vfio_abi.DEVICE_FLAGS_PCI and info.num_regions == 9
            and info.num_irqs == 5, f"flags={info.flags:#x} regions={info.num_regions} irqs={info.num_irqs}")
    _config(c, client)
    edu = EduClient(client)
    ident = edu.rd(ID)
    edu.wr(LIVENESS, 0x12345678)
    live = edu.rd(LIVENESS)
    edu.wr(FACTORIAL, 5)
    deadline = time.monotonic() + 2
    while edu.rd(STATUS) & 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    fact = edu.rd(FACTORIAL)
    c.check("pt_registers", ident == 0x010000ED and live == 0xEDCBA987 and fact == 120,
            f"id={ident:#x} liveness={live:#x} 5!={fact}")
    _mmap(c, client, edu)
    _intx(c, client, edu)
    _msi(c, client, edu)
    _dma(c, client, edu)
    client.reset()
    unsupported = trace_events("device-reset-unsupported")
    c.check("pt_reset_reported", bool(unsupported) and edu.rd(ID) == 0x010000ED,
            f"DEVICE_RESET answered; trace={unsupported[-1:] if unsupported else 'no device-reset-unsupported'}")


def _config(c: Checks, client: VfioUserClient) -> None:
    cfg, cfg_fd = client.region_info(CONFIG)
    bar0, fd = client.region_info(BAR0)
    if fd is not None:
        os.close(fd)
    want = vfio_abi.REGION_FLAG_READ | vfio_abi.REGION_FLAG_WRITE | vfio_abi.REGION_FLAG_MMAP
    c.check("pt_region_info", bar0.size == 1 << 20 and bar0.flags & want == want and fd is not None
            and bar0.offset == 0 and cfg.size >= 256 and cfg_fd is None and not cfg.flags & vfio_abi.REGION_FLAG_MMAP,
            f"BAR0 size={bar0.size:#x} flags={bar0.flags:#x} offset={bar0.offset:#x} fd={fd is not None}"
            f" config size={cfg.size:#x}")
    vendor, device = struct.unpack("<HH", client.region_read(CONFIG, 0, 4))
    pin = client.region_read(CONFIG, 0x3D, 1)[0]
    c.check("pt_config_forwarded", (vendor, device) == (0x1234, 0x11E8) and pin == 1,
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


def _mmap(c: Checks, client: VfioUserClient, edu: EduClient) -> None:
    region, fd = client.region_info(BAR0)
    if fd is None:
        c.check("pt_mmap_fast_path", False, "BAR0 came without an fd")
        return
    try:
        mm = mmap.mmap(fd, region.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=region.offset)
    finally:
        os.close(fd)
    try:
        mid = struct.unpack_from("<I", mm, ID)[0]
        struct.pack_into("<I", mm, LIVENESS, 0xA5A50F0F)
        through_socket = edu.rd(LIVENESS)
        edu.wr(LIVENESS, 0x0F0FA5A5)
        through_map = struct.unpack_from("<I", mm, LIVENESS)[0]
    finally:
        mm.close()
    c.check("pt_mmap_fast_path", mid == 0x010000ED and through_socket == 0x5A5AF0F0 and through_map == 0xF0F05A5A,
            f"id={mid:#x} mmap write -> socket read {through_socket:#x}; socket write -> mmap read {through_map:#x}")


def _intx(c: Checks, client: VfioUserClient, edu: EduClient) -> None:
    efd = common.eventfd()
    try:
        client.set_irqs(INTX, TRIGGER_EVENTFD, 0, 1, [efd])
        quiet = common.wait_event(efd, 0.2)
        t0 = time.monotonic()
        edu.wr(IRQ_RAISE, 0x1)
        first = common.wait_event(efd, 3)
        latency = (time.monotonic() - t0) * 1e3
        c.check("pt_intx_delivered", quiet == 0 and first >= 1 and edu.rd(IRQ_STATUS) == 1,
                f"spurious={quiet} events={first} latency={latency:.1f}ms")
        edu.ack_all()
        edu.wr(IRQ_RAISE, 0x2)  # asserted again while the host keeps the line masked
        masked = common.wait_event(efd, 0.8)
        client.set_irqs(INTX, UNMASK_NONE, 0, 1)  # the client's EOI
        after = common.wait_event(efd, 3)
        c.check("pt_intx_automasked_until_unmask", masked == 0 and after >= 1 and edu.rd(IRQ_STATUS) == 2,
                f"before UNMASK={masked} after UNMASK={after}")
        edu.ack_all()
        client.set_irqs(INTX, UNMASK_NONE, 0, 1)
        client.set_irqs(INTX, TRIGGER_NONE, 0, 0)  # INTx off, as QEMU does before MSI
    finally:
        os.close(efd)


def _msi(c: Checks, client: VfioUserClient, edu: EduClient) -> None:
    info = client.irq_info(MSI)
    efd = common.eventfd()
    try:
        client.set_irqs(MSI, TRIGGER_EVENTFD, 0, 1, [efd])
        edu.wr(IRQ_RAISE, 0x20)
        n = common.wait_event(efd, 3)
        c.check("pt_msi_delivered", info.count >= 1 and n >= 1, f"count={info.count} events={n}")
        edu.ack_all()
        client.set_irqs(MSI, TRIGGER_NONE, 0, 0)
    finally:
        os.close(efd)


def _dma(c: Checks, client: VfioUserClient, edu: EduClient) -> None:
    src, dst = common.DmaBuffer(4096, "pt-src"), common.DmaBuffer(4096, "pt-dst")
    try:
        pattern = bytes((i * 13 + 5) & 0xFF for i in range(DMA_LENGTH))
        src.map[:DMA_LENGTH] = pattern
        client.dma_map(SRC_IOVA, 4096, readable=True, writable=False, fd=src.fd)
        client.dma_map(DST_IOVA, 4096, readable=True, writable=True, fd=dst.fd)
        maps = [(e["iova"], e["size"]) for e in trace_events("dma-iommu-map")]
        c.check("pt_dma_iommu_mapped", (SRC_IOVA, 4096) in maps and (DST_IOVA, 4096) in maps, f"traced {maps}")
        ok1 = edu.dma(SRC_IOVA, DMA_BUFFER, DMA_LENGTH, to_ram=False)
        ok2 = edu.dma(DMA_BUFFER, DST_IOVA, DMA_LENGTH, to_ram=True)
        same = dst.map[:DMA_LENGTH] == pattern
        c.check("pt_dma_roundtrip", ok1 and ok2 and same,
                f"to_edu={ok1} to_ram={ok2} client sees the data={same}")
        client.dma_unmap(DST_IOVA, 4096)
        unmaps = [(e["iova"], e.get("reason")) for e in trace_events("dma-iommu-unmap")]
        dst.map[:DMA_LENGTH] = bytes(DMA_LENGTH)
        ok3 = edu.dma(DMA_BUFFER, DST_IOVA, DMA_LENGTH, to_ram=True)  # faults in the IOMMU now
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
        edu = EduClient(client)
        cmd = struct.unpack("<H", client.region_read(CONFIG, 4, 2))[0]
        client.region_write(CONFIG, 4, struct.pack("<H", cmd | CMD_MEMORY))
        efd = common.eventfd()
        try:
            client.set_irqs(INTX, TRIGGER_EVENTFD, 0, 1, [efd])  # the last client's wiring was torn down
            edu.wr(IRQ_RAISE, 0x40)
            n = common.wait_event(efd, 3)
            edu.ack_all()
            client.set_irqs(INTX, UNMASK_NONE, 0, 1)
            client.set_irqs(INTX, TRIGGER_NONE, 0, 0)
        finally:
            os.close(efd)
        c.check("pt_next_client", edu.rd(ID) == 0x010000ED and n >= 1, f"id ok, INTx events={n}")
    finally:
        client.close()
