# SPDX-License-Identifier: BSD-3-Clause
"""Guest check program: platform IRQs delivered as MSI-X vectors, driven through guest vfio-pci.

Runs against our server's `gpio` model in `--irq-mode msix` (register map in
vfu_platform/backends/sim/gpio.py, IRQ page in docs/irq-page.md): 4 level lines
(IRQ 0-3) and an edge line (IRQ 4), platform IRQ k on MSI-X vector k.  The guest
binds the function to vfio-pci and opens it with the project's own
`VfioHostBackend` (group + type1 container; needs the vIOMMU the harness adds), so
that one eventfd per MSI-X vector shows exactly which vector arrived, and when.

Every BAR access below is a pread/pwrite on the vfio device fd, i.e. one trapped
access that reaches the server as REGION_READ/REGION_WRITE (BAR0 registers and the
BAR2 IRQ page are never mmapped; the MSI-X table is QEMU's, the PBA is forwarded).

Kernel command-line parameters:

    vfu.acks=model|none   which EOI the server was started with: `model` (default):
                          the gpio model's ack registers are exact EOIs; `none`: the
                          server runs with `[bridge] use_model_acks = false`, so the
                          EOI of a level line is the first trapped access after its
                          injection (the seed's rule)
    vfu.vid=0x1234 vfu.did=0x5650   the function
"""
from __future__ import annotations

import math
import os
import select
import subprocess
import sys
import time
from collections.abc import Sequence

from vfu_platform import vfio_abi
from vfu_platform.backends.vfio import VfioHostBackend, VfioHostError
from vfu_platform.backends.vfio.container import IommuType
from vfu_platform.backends.sim.gpio import (
    GPIO_ID,
    REG_ID,
    REG_NLINES,
    REG_RAISE,
    REG_STATUS,
    REG_ACK,
    REG_EDGE_PULSE,
    REG_LINE_BASE,
    LINE_STRIDE,
    LINE_ACK,
    LINE_RAISE,
)
from vfu_platform.bridge.irq_page import (
    IRQ_ACTIVE as PAGE_IRQ_ACTIVE,
    IRQ_PENDING as PAGE_IRQ_PENDING,
    IRQ_LINES as PAGE_IRQ_LINES,
    IRQ_ROUTE as PAGE_IRQ_ROUTE,
    IRQ_SIGNALS as PAGE_IRQ_SIGNALS,
    IRQ_EOIS as PAGE_IRQ_EOIS,
    IRQ_STATE_BASE as PAGE_IRQ_STATE,
    MAGIC as PAGE_MAGIC,
    MAGIC_VALUE as MAGIC,
    NO_IRQ as NONE_ACTIVE,
)
from vfu_platform.bridge.msix import PBA_OFFSET as PAGE_PBA
from testbench.guest import pci
from testbench.guest.report import Report, run


# IRQ page (BAR2)
ROUTE_MSIX = 1

BAR0 = vfio_abi.PCI_BAR0_REGION_INDEX
BAR1 = BAR0 + 1
BAR2 = BAR0 + 2
CONFIG = vfio_abi.PCI_CONFIG_REGION_INDEX
MSIX = vfio_abi.PCI_MSIX_IRQ_INDEX
PCI_COMMAND = 0x04
CMD_MEMORY = 0x2
CMD_MASTER = 0x4

LEVEL_LINES = 4
EDGE_LINE = 4
VECTORS = 5
FIFO_LINES = (0, 1, 2)

IRQ_WAIT_S = 5.0   # first arrival (TCG, a loaded host)
HELD_S = 0.5       # "nothing else meanwhile" window after an arrival
QUIET_S = 1.0      # after the last EOI
VFIO_DRIVER = "vfio-pci"


def line_reg(k: int, reg: int) -> int:
    return REG_LINE_BASE + LINE_STRIDE * k + reg


def fmt(values: Sequence[int]) -> str:
    return ",".join("none" if v == NONE_ACTIVE else str(v) for v in values) or "-"


class Regs:
    """32-bit little-endian registers of one BAR, through the backend (pread/pwrite of the vfio fd)."""

    def __init__(self, backend: VfioHostBackend, region: int) -> None:
        self.b = backend
        self.region = region

    def rd(self, off: int) -> int:
        return int.from_bytes(self.b.read(self.region, off, 4), "little")

    def wr(self, off: int, value: int) -> None:
        self.b.write(self.region, off, (value & 0xFFFF_FFFF).to_bytes(4, "little"))


class Vectors:
    """One eventfd per MSI-X vector and the order in which they are signalled."""

    def __init__(self, count: int) -> None:
        self.fds = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in range(count)]
        self._vector = {fd: v for v, fd in enumerate(self.fds)}
        self._poll = select.poll()
        for fd in self.fds:
            self._poll.register(fd, select.POLLIN)
        self.strays: list[int] = []

    def drain(self) -> list[int]:
        """Vectors signalled and not collected yet (kept in `strays`: there should be none)."""
        left = [v for v, _ in self.collect(0, 0.0, 0.0)]
        self.strays += left
        return left

    def collect(self, want: int, timeout: float = IRQ_WAIT_S, quiet: float = HELD_S) -> list[tuple[int, float]]:
        """(vector, seconds since the call) of every signal until `want` arrived, then until
        `quiet` seconds passed without another one, or `timeout` passed without `want`."""
        t0 = time.monotonic()
        got: list[tuple[int, float]] = []
        last = t0
        while True:
            until = t0 + timeout if len(got) < want else last + quiet
            # Past the deadline this is one last non-blocking look, so that a signal
            # right at the edge is still counted.
            ready = self._poll.poll(max(0, math.ceil((until - time.monotonic()) * 1000)))
            for fd, _ev in ready:
                try:
                    n = os.eventfd_read(fd)
                except BlockingIOError:
                    continue
                last = time.monotonic()
                got += [(self._vector[fd], last - t0)] * n
            if not ready and time.monotonic() >= until:
                return got
            if len(got) > want + 8:  # a storm: the check fails anyway
                return got

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)


def vectors_of(arrivals: Sequence[tuple[int, float]]) -> list[int]:
    return [v for v, _ in arrivals]


def latency(arrivals: Sequence[tuple[int, float]]) -> str:
    return f"{arrivals[0][1] * 1e3:.0f}ms" if arrivals else "-"


def dmesg_tail(n: int = 15) -> list[str]:
    try:
        out = subprocess.run(["dmesg"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError) as e:
        return [f"(dmesg: {e})"]
    return out.splitlines()[-n:]


# ---- setup ---------------------------------------------------------------------------------


def bind_vfio(r: Report, dev: pci.Device) -> None:
    dev.bind(VFIO_DRIVER)
    deadline = time.monotonic() + 10
    while dev.driver() != VFIO_DRIVER and time.monotonic() < deadline:
        time.sleep(0.05)
    group = os.path.basename(os.readlink(dev.path / "iommu_group")) if (dev.path / "iommu_group").exists() else None
    node = f"/dev/vfio/{group}" if group is not None else None
    while node and not os.path.exists(node) and time.monotonic() < deadline:
        time.sleep(0.05)
    r.info("iommu_group", f"{group} node={node} exists={bool(node and os.path.exists(node))}")
    ok = dev.driver() == VFIO_DRIVER and node is not None and os.path.exists(node)
    if not ok:
        for line in dmesg_tail():
            r.line(f"  | dmesg: {line}")
    r.require("vfio-bind", ok, f"driver={dev.driver()} group={group}")


def open_backend(r: Report, dev: pci.Device) -> VfioHostBackend:
    try:
        backend = VfioHostBackend(dev.bdf)
    except VfioHostError as e:
        for line in dmesg_tail():
            r.line(f"  | dmesg: {line}")
        r.require("vfio-open", False, f"{e.problem.name}: {e}")
        raise AssertionError("unreachable")
    r.info("vfio_iommu", f"{backend.iommu.name} notes={'; '.join(backend.notes) or '-'}")
    r.require("vfio-open", backend.iommu in (IommuType.TYPE1v2, IommuType.TYPE1),
              f"container={backend.iommu.name}")
    return backend


def check_device(r: Report, backend: VfioHostBackend) -> tuple[Regs, Regs]:
    regions = backend.regions()
    sizes = [regions[i].size for i in (BAR0, BAR1, BAR2)]
    r.info("vfio_regions", " ".join(f"{x.name}:{x.size:#x}/{x.flags:#x}" for x in regions))
    r.check("vfio-regions", sizes == [0x1000] * 3, f"bar0-2 sizes={','.join(hex(s) for s in sizes)}")
    irqs = backend.irqs()
    msix = irqs[MSIX]
    r.info("vfio_irqs", " ".join(f"{q.name}:{q.count}/{q.flags:#x}" for q in irqs))
    r.require("vfio-msix-info", msix.count == VECTORS and bool(msix.flags & vfio_abi.IRQ_INFO_EVENTFD),
              f"count={msix.count} (want {VECTORS}) flags={msix.flags:#x}")

    cmd = int.from_bytes(backend.read(CONFIG, PCI_COMMAND, 2), "little")
    backend.write(CONFIG, PCI_COMMAND, (cmd | CMD_MEMORY | CMD_MASTER).to_bytes(2, "little"))
    after = int.from_bytes(backend.read(CONFIG, PCI_COMMAND, 2), "little")
    r.require("config-command", after & (CMD_MEMORY | CMD_MASTER) == CMD_MEMORY | CMD_MASTER,
              f"before={cmd:#06x} after={after:#06x}")

    regs, page = Regs(backend, BAR0), Regs(backend, BAR2)
    ident, nlines = regs.rd(REG_ID), regs.rd(REG_NLINES)
    r.require("gpio-ident", ident == GPIO_ID and nlines == LEVEL_LINES, f"id={ident:#010x} lines={nlines}")
    magic, plines, active = page.rd(PAGE_MAGIC), page.rd(PAGE_IRQ_LINES), page.rd(PAGE_IRQ_ACTIVE)
    r.info("irq_route_before_msix", page.rd(PAGE_IRQ_ROUTE))
    r.require("irq-page", magic == MAGIC and plines == VECTORS and active == NONE_ACTIVE,
              f"magic={magic:#010x} lines={plines} active={fmt([active])}")
    return regs, page


def enable_msix(r: Report, backend: VfioHostBackend, page: Regs, vectors: Vectors) -> None:
    t0 = time.monotonic()
    backend.set_irq_triggers(MSIX, vectors.fds, 0)
    r.info("msix_enable_s", f"{time.monotonic() - t0:.2f}")
    route = page.rd(PAGE_IRQ_ROUTE)
    r.require("irq-route", route == ROUTE_MSIX, f"IRQ_ROUTE={route} (want {ROUTE_MSIX}: MSI-X)")
    stray = vectors.collect(0, quiet=HELD_S)
    r.check("msix-no-spurious", not stray, f"after enable={fmt(vectors_of(stray))}")


# ---- scenarios ------------------------------------------------------------------------------


def lines_alone(r: Report, regs: Regs, page: Regs, vectors: Vectors) -> None:
    """Each level line raised alone: its own vector, exactly once; its ACK_k write ends it.

    (With the model's acks that write is the exact EOI; without, it is the first trapped
    access after the injection. Either way nothing follows.)"""
    for k in range(LEVEL_LINES):
        vectors.drain()
        regs.wr(line_reg(k, LINE_RAISE), 1)
        got = vectors.collect(1)
        regs.wr(line_reg(k, LINE_ACK), 1)
        after = vectors.collect(0, quiet=HELD_S)
        active, status = page.rd(PAGE_IRQ_ACTIVE), regs.rd(REG_STATUS)
        r.check(f"alone-line{k}", vectors_of(got) == [k] and not after and active == NONE_ACTIVE and status == 0,
                f"vectors={fmt(vectors_of(got))} after-ack={fmt(vectors_of(after))} "
                f"active={fmt([active])} status={status:#x}")
        r.info(f"alone_line{k}_latency", latency(got))


def edge_alone(r: Report, regs: Regs, vectors: Vectors) -> None:
    vectors.drain()
    regs.wr(REG_EDGE_PULSE, 1)
    got = vectors.collect(1)
    r.check("edge-alone", vectors_of(got) == [EDGE_LINE], f"vectors={fmt(vectors_of(got))}")
    r.info("edge_latency", latency(got))


def edge_bypasses_active(r: Report, regs: Regs, page: Regs, vectors: Vectors) -> None:
    """Exact acks only: an edge pulse is delivered at once while a level line is ACTIVE."""
    vectors.drain()
    k = LEVEL_LINES - 1
    regs.wr(line_reg(k, LINE_RAISE), 1)
    first = vectors.collect(1)
    regs.wr(REG_EDGE_PULSE, 1)
    edge = vectors.collect(1)
    active = page.rd(PAGE_IRQ_ACTIVE)
    regs.wr(line_reg(k, LINE_ACK), 1)
    after = vectors.collect(0, quiet=HELD_S)
    r.check("edge-bypasses-active",
            vectors_of(first) == [k] and vectors_of(edge) == [EDGE_LINE] and active == k and not after,
            f"level={fmt(vectors_of(first))} edge={fmt(vectors_of(edge))} active-after-edge={fmt([active])} "
            f"after-ack={fmt(vectors_of(after))}")
    r.info("edge_while_active_latency", latency(edge))


def fifo_exact(r: Report, regs: Regs, page: Regs, vectors: Vectors) -> None:
    """Lines 0,1,2 raised at once, exact acks: one vector at a time, next only after ACK_k; PBA."""
    vectors.drain()
    signals0 = page.rd(PAGE_IRQ_SIGNALS)
    regs.wr(REG_RAISE, sum(1 << k for k in FIFO_LINES))
    steps: list[list[tuple[int, float]]] = []
    pbas: list[int] = []
    pendings: list[int] = []
    states: list[str] = []
    for k in FIFO_LINES:
        steps.append(vectors.collect(1))
        pbas.append(page.rd(PAGE_PBA))
        pendings.append(page.rd(PAGE_IRQ_PENDING))
        states.append("".join(str(page.rd(PAGE_IRQ_STATE + 4 * j)) for j in FIFO_LINES))
        regs.wr(line_reg(k, LINE_ACK), 1)
    tail = vectors.collect(0, quiet=QUIET_S)
    delivered = [vectors_of(s) for s in steps]
    r.check("fifo-order", delivered == [[k] for k in FIFO_LINES],
            f"raised={fmt(FIFO_LINES)} per-ack={'|'.join(fmt(d) for d in delivered)}")
    want_pba = [sum(1 << j for j in FIFO_LINES[i + 1:]) for i in range(len(FIFO_LINES))]
    r.check("fifo-pba", pbas == want_pba,
            f"pba={','.join(hex(p) for p in pbas)} (want {','.join(hex(p) for p in want_pba)}) "
            f"pending={fmt(pendings)} states={','.join(states)}")
    active, pending, status = page.rd(PAGE_IRQ_ACTIVE), page.rd(PAGE_IRQ_PENDING), regs.rd(REG_STATUS)
    signals = page.rd(PAGE_IRQ_SIGNALS) - signals0
    r.check("fifo-quiet", not tail and active == NONE_ACTIVE and pending == 0 and status == 0
            and signals == len(FIFO_LINES),
            f"within {QUIET_S:.0f}s after last ack={fmt(vectors_of(tail))} active={fmt([active])} "
            f"pending={pending} status={status:#x} signals={signals}")
    r.info("fifo_latencies", ",".join(latency(s) for s in steps))


def fifo_first_access(r: Report, regs: Regs, page: Regs, vectors: Vectors) -> None:
    """No ack map: lines 0,1,2 raised at once; each EOI is the first trapped access after
    the injection.  Line 0's is the shared ACK write (which also quiets 1 and 2 on the
    device, so their EOIs unmask nothing still asserted); lines 1 and 2 end with one
    trapped *read* each, of the IRQ page."""
    vectors.drain()
    signals0, eois0 = page.rd(PAGE_IRQ_SIGNALS), page.rd(PAGE_IRQ_EOIS)
    regs.wr(REG_RAISE, sum(1 << k for k in FIFO_LINES))
    step0 = vectors.collect(1)                        # nothing else while no access happens
    regs.wr(REG_ACK, sum(1 << k for k in FIFO_LINES))  # access 1: EOI of line 0
    step1 = vectors.collect(1)
    active_read = page.rd(PAGE_IRQ_ACTIVE)            # access 2 (a read): EOI of line 1
    step2 = vectors.collect(1)
    eois_read = page.rd(PAGE_IRQ_EOIS)                # access 3 (a read): EOI of line 2
    tail = vectors.collect(0, quiet=QUIET_S)
    active, pending = page.rd(PAGE_IRQ_ACTIVE), page.rd(PAGE_IRQ_PENDING)
    signals, eois = page.rd(PAGE_IRQ_SIGNALS) - signals0, page.rd(PAGE_IRQ_EOIS) - eois0
    delivered = [vectors_of(s) for s in (step0, step1, step2)]
    r.check("noack-fifo-order", delivered == [[k] for k in FIFO_LINES],
            f"raised={fmt(FIFO_LINES)} per-access={'|'.join(fmt(d) for d in delivered)}")
    r.check("noack-read-eoi", active_read == 1 and vectors_of(step2) == [2],
            f"read IRQ_ACTIVE={fmt([active_read])} then vectors={fmt(vectors_of(step2))}")
    # The read that ended line 1 did not end line 2 as well: line 2 was still unfinished
    # when the next read came (IRQ_EOIS is sampled before that read's own EOI).
    r.check("noack-read-eoi-once", eois_read - eois0 == 2 and not tail,
            f"eois before the last read={eois_read - eois0} (want 2) "
            f"within {QUIET_S:.0f}s after it={fmt(vectors_of(tail))}")
    r.check("noack-fifo-quiet", active == NONE_ACTIVE and pending == 0 and signals == 3 and eois == 3,
            f"active={fmt([active])} pending={pending} signals={signals} eois={eois}")
    r.info("noack_fifo_latencies", ",".join(latency(s) for s in (step0, step1, step2)))


def level_refire(r: Report, regs: Regs, page: Regs, vectors: Vectors) -> None:
    """No ack map: a read EOIs a level line that is still asserted, so it fires again, once."""
    vectors.drain()
    k = LEVEL_LINES - 1
    regs.wr(line_reg(k, LINE_RAISE), 1)
    first = vectors.collect(1)
    active_read = page.rd(PAGE_IRQ_ACTIVE)   # EOI; line k is still asserted on the device
    again = vectors.collect(1)
    regs.wr(line_reg(k, LINE_ACK), 1)        # EOI of the re-fire, and the line deasserted
    tail = vectors.collect(0, quiet=HELD_S)
    active = page.rd(PAGE_IRQ_ACTIVE)
    r.check("noack-level-refire",
            vectors_of(first) == [k] and active_read == k and vectors_of(again) == [k] and not tail
            and active == NONE_ACTIVE,
            f"first={fmt(vectors_of(first))} read IRQ_ACTIVE={fmt([active_read])} "
            f"again={fmt(vectors_of(again))} after-ack={fmt(vectors_of(tail))} active={fmt([active])}")


def disable_msix(r: Report, backend: VfioHostBackend, page: Regs) -> None:
    backend.set_irq_trigger(MSIX, None)
    route = page.rd(PAGE_IRQ_ROUTE)
    r.check("msix-disable", route == 0, f"IRQ_ROUTE={route} after disable (want 0: INTx)")


# ---- main -------------------------------------------------------------------------------------


def main(r: Report) -> None:
    acks = r.params.get("acks", "model")
    r.require("params", acks in ("model", "none"), f"acks={acks}")
    vid = int(r.params.get("vid", "0x1234"), 16)
    did = int(r.params.get("did", "0x5650"), 16)
    found = pci.find_devices(vid, did)
    r.require("find-device", len(found) == 1, f"{vid:04x}:{did:04x} found={len(found)}")
    dev = pci.Device(found[0])
    r.info("device", f"{dev.bdf} {dev.attr('vendor')}:{dev.attr('device')} acks={acks}")

    t0 = time.monotonic()
    bind_vfio(r, dev)
    backend = open_backend(r, dev)
    r.info("vfio_open_s", f"{time.monotonic() - t0:.2f}")
    vectors = Vectors(VECTORS)
    try:
        regs, page = check_device(r, backend)
        enable_msix(r, backend, page, vectors)
        signals0, eois0 = page.rd(PAGE_IRQ_SIGNALS), page.rd(PAGE_IRQ_EOIS)
        r.guarded("alone-lines", lambda: lines_alone(r, regs, page, vectors))
        r.guarded("edge-alone", lambda: edge_alone(r, regs, vectors))
        if acks == "model":
            r.guarded("edge-bypasses-active", lambda: edge_bypasses_active(r, regs, page, vectors))
            r.guarded("fifo", lambda: fifo_exact(r, regs, page, vectors))
        else:
            r.guarded("noack-fifo", lambda: fifo_first_access(r, regs, page, vectors))
            r.guarded("noack-level-refire", lambda: level_refire(r, regs, page, vectors))
        r.info("irq_counters", f"signals={page.rd(PAGE_IRQ_SIGNALS) - signals0} eois={page.rd(PAGE_IRQ_EOIS) - eois0}")
        vectors.drain()
        r.check("no-strays", not vectors.strays, f"vectors seen outside any window={fmt(vectors.strays)}")
        r.guarded("msix-disable", lambda: disable_msix(r, backend, page))
    finally:
        vectors.close()
        backend.close()


if __name__ == "__main__":
    sys.exit(run("msix", main))
