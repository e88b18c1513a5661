# SPDX-License-Identifier: BSD-3-Clause
"""Guest check program for an edu device (QEMU's in-process `-device edu`, or ours).

Kernel command-line parameters (all optional):

    vfu.vid=0x1234 vfu.did=0x11e8   the function to test
    vfu.phases=regs,irq,dma,reset   what to run (in this order)
    vfu.xfail=name,...              checks whose failure does not fail the RESULT

Phases:
  regs   config IDs, BAR0 size, identification, liveness, factorial with
         completion polling, undefined registers, DMA address registers;
  irq    binds uio_pci_generic; INTx through /dev/uioN: raise (0x60), status
         (0x24), acknowledge (0x64), re-arm by clearing COMMAND.INTX_DISABLE,
         a second interrupt, level semantics (still asserted after a partial
         acknowledge -> a new interrupt once re-armed), factorial-completion
         interrupt (status bit7);
  dma    bus master on; RAM -> edu buffer (0x40000) -> another RAM page, whole page
         and a partial transfer; the DMA-completion interrupt (command bit2, 0x100);
         with bus master off, a DMA to RAM must not reach RAM;
  reset  `echo 1 > /sys/bus/pci/devices/X/reset` and the power-on values after it.
"""
from __future__ import annotations

import sys
import time

from testbench.guest import pci
from testbench.guest.report import Fatal, Report, run
from vfu_platform.backends.sim.edu_map import (
    DEFAULT_DMA_MASK,
    DMA_BUFFER_ADDR,
    DMA_CMD_IRQ,
    DMA_CMD_RUN,
    DMA_CMD_TO_RAM,
    DMA_IRQ,
    FACT_IRQ,
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
    STATUS_IRQFACT,
)

IRQ_WAIT_S = 5.0
POLL_LIMIT_S = 3.0


def fact_u32(n: int) -> int:
    r = 1
    for k in range(2, n + 1):
        r = r * k & 0xFFFF_FFFF
    return r


def h32(v: int) -> str:
    return f"{v:#010x}"


class Edu:
    """BAR0 of an edu function, with the small protocols the checks need."""

    def __init__(self, dev: pci.Device, bar: pci.Bar) -> None:
        self.dev = dev
        self.bar = bar
        self.uio: pci.Uio | None = None

    def rd(self, off: int) -> int:
        return self.bar.read32(off)

    def wr(self, off: int, value: int) -> None:
        self.bar.write32(off, value)

    def poll_clear(self, off: int, bit: int, limit: float = POLL_LIMIT_S) -> tuple[bool, int, float]:
        """Poll until `bit` of register `off` reads 0: (done, polls, seconds)."""
        t0 = time.monotonic()
        polls = 0
        while True:
            polls += 1
            if not self.rd(off) & bit:
                return True, polls, time.monotonic() - t0
            if time.monotonic() - t0 > limit:
                return False, polls, time.monotonic() - t0
            time.sleep(0.001 if polls < 50 else 0.01)

    def factorial(self, n: int) -> tuple[int | None, int]:
        self.wr(REG_FACTORIAL, n)
        done, polls, _ = self.poll_clear(REG_STATUS, STATUS_COMPUTING)
        return (self.rd(REG_FACTORIAL) if done else None), polls

    def wait_irq(self, timeout: float = IRQ_WAIT_S) -> int | None:
        assert self.uio is not None
        return self.uio.wait(timeout)

    def dma(self, src: int, dst: int, count: int, cmd: int) -> tuple[bool, int]:
        """Program and start one transfer, poll for completion: (completed, command after)."""
        self.bar.write64(REG_DMA_SRC, src)
        self.bar.write64(REG_DMA_DST, dst)
        self.bar.write64(REG_DMA_COUNT, count)
        self.bar.write64(REG_DMA_CMD, cmd | DMA_CMD_RUN)
        done, _, _ = self.poll_clear(REG_DMA_CMD, DMA_CMD_RUN)
        return done, self.rd(REG_DMA_CMD)


# ---- phases -----------------------------------------------------------------------


def phase_regs(r: Report, edu: Edu) -> None:
    dev = edu.dev

    def ids() -> None:
        vendor = dev.config_read(pci.CFG_VENDOR, 2)
        device = dev.config_read(pci.CFG_DEVICE, 2)
        rev = dev.config_read(pci.CFG_REVISION, 1)
        cls = int(dev.attr("class"), 16)
        pin = dev.config_read(pci.CFG_INT_PIN, 1)
        r.check("config-ids", pin == 1,
                f"vendor={vendor:#06x} device={device:#06x} revision={rev:#04x} class={cls:#08x} pin={pin}")
    r.guarded("config-ids", ids)

    size = dev.bar_size(0)
    r.check("bar0-size", size == MMIO_SIZE, f"size={size:#x}")

    v = edu.rd(REG_ID)
    r.require("edu-ident", v == IDENTIFICATION, f"reg00={h32(v)}")

    v = edu.rd(REG_LIVENESS)
    r.check("edu-liveness-initial", v == 0, f"reg04={h32(v)}")

    def liveness() -> None:
        seen = []
        ok = True
        for val in (0x12345678, 0x00000000, 0xFFFFFFFF, 0xA5A5A5A5):
            edu.wr(REG_LIVENESS, val)
            got = edu.rd(REG_LIVENESS)
            ok &= got == (~val & 0xFFFF_FFFF)
            seen.append(f"{h32(val)}->{h32(got)}")
        r.check("edu-liveness", ok, " ".join(seen))
    r.guarded("edu-liveness", liveness)

    def factorial() -> None:
        seen, polls = [], []
        ok = True
        for n in (0, 1, 5, 12, 13, 20):
            got, p = edu.factorial(n)
            ok &= got == fact_u32(n)
            seen.append(f"{n}!={'timeout' if got is None else hex(got)}")
            polls.append(str(p))
        r.info("factorial_polls", ",".join(polls))
        status = edu.rd(REG_STATUS)
        r.check("edu-factorial", ok and status == 0, " ".join(seen) + f" reg20={h32(status)}")
    r.guarded("edu-factorial", factorial)

    def undefined() -> None:
        vals = {off: edu.rd(off) for off in (0x0C, 0x28, 0x60, 0x64)}
        r.check("edu-undefined-regs", all(v == 0xFFFF_FFFF for v in vals.values()),
                " ".join(f"reg{off:02x}={h32(v)}" for off, v in vals.items()))
    r.guarded("edu-undefined-regs", undefined)

    def dma_regs() -> None:
        edu.bar.write64(REG_DMA_SRC, 0x0123_4567_89AB_CDEF)
        edu.bar.write64(REG_DMA_DST, 0x40010)
        edu.bar.write32(REG_DMA_COUNT, 0x80)      # a 4-byte write replaces the whole register
        src64 = edu.bar.read64(REG_DMA_SRC)
        src32 = edu.rd(REG_DMA_SRC)
        dst = edu.bar.read64(REG_DMA_DST)
        cnt = edu.bar.read64(REG_DMA_COUNT)
        ok = src64 == 0x0123_4567_89AB_CDEF and src32 == 0x89AB_CDEF and dst == 0x40010 and cnt == 0x80
        r.check("edu-dma-regs", ok, f"src64={src64:#x} src32={h32(src32)} dst={dst:#x} cnt={cnt:#x}")
    r.guarded("edu-dma-regs", dma_regs)


def bind_uio(r: Report, edu: Edu) -> None:
    dev = edu.dev
    dev.bind(pci.UIO_DRIVER)
    name = dev.uio_name()
    r.info("uio", f"{name} irq={dev.attr('irq')}")
    r.require("uio-bind", name is not None and dev.driver() == pci.UIO_DRIVER, f"driver={dev.driver()}")
    assert name is not None
    edu.uio = pci.Uio(name)


def raise_and_take(edu: Edu, bits: int) -> tuple[int | None, int]:
    """Raise `bits` through 0x60 and wait for the interrupt: (uio count, reg 0x24)."""
    edu.wr(REG_IRQ_RAISE, bits)
    count = edu.wait_irq()
    return count, edu.rd(REG_IRQ_STATUS)


def phase_irq(r: Report, edu: Edu) -> None:
    dev = edu.dev

    def first() -> None:
        count, status = raise_and_take(edu, 0x1)
        cmd = dev.command
        edu.wr(REG_IRQ_ACK, 0x1)
        after = edu.rd(REG_IRQ_STATUS)
        r.info("irq_first", f"uio_count={count} command={cmd:#06x}")
        r.check("irq-raise", count is not None and status == 0x1 and after == 0 and bool(cmd & pci.CMD_INTX_DISABLE),
                f"delivered={count is not None} reg24={h32(status)} ack->{h32(after)} "
                f"intx_disabled_by_handler={bool(cmd & pci.CMD_INTX_DISABLE)}")
    r.guarded("irq-raise", first)

    def second() -> None:
        old = dev.unmask_intx()
        count, status = raise_and_take(edu, 0x2)
        edu.wr(REG_IRQ_ACK, 0x2)
        after = edu.rd(REG_IRQ_STATUS)
        r.info("irq_second", f"uio_count={count} command_before_unmask={old:#06x}")
        r.check("irq-second", count is not None and status == 0x2 and after == 0,
                f"delivered={count is not None} reg24={h32(status)} ack->{h32(after)}")
    r.guarded("irq-second", second)

    def level() -> None:
        # Two bits at once, one interrupt; acknowledge one bit only: the line stays
        # asserted, so re-arming INTx must bring a new interrupt (level semantics).
        dev.unmask_intx()
        count, status = raise_and_take(edu, 0x5)
        edu.wr(REG_IRQ_ACK, 0x1)
        partial = edu.rd(REG_IRQ_STATUS)
        dev.unmask_intx()
        again = edu.wait_irq()
        edu.wr(REG_IRQ_ACK, 0x4)
        after = edu.rd(REG_IRQ_STATUS)
        dev.unmask_intx()
        spurious = edu.wait_irq(0.5)
        ok = (count is not None and again is not None and spurious is None
              and status == 0x5 and partial == 0x4 and after == 0)
        r.check("irq-level-rearm", ok,
                f"reg24={h32(status)} ack1->{h32(partial)} reinterrupt={again is not None} "
                f"ack4->{h32(after)} extra={spurious is not None}")
    r.guarded("irq-level-rearm", level)

    def fact_irq() -> None:
        dev.unmask_intx()
        edu.wr(REG_STATUS, STATUS_IRQFACT)
        st = edu.rd(REG_STATUS)
        edu.wr(REG_FACTORIAL, 6)
        count = edu.wait_irq()
        status = edu.rd(REG_IRQ_STATUS)
        value = edu.rd(REG_FACTORIAL)
        edu.wr(REG_IRQ_ACK, FACT_IRQ)
        after = edu.rd(REG_IRQ_STATUS)
        edu.wr(REG_STATUS, 0)
        st_after = edu.rd(REG_STATUS)
        ok = (count is not None and status == FACT_IRQ and value == 720 and after == 0
              and st & STATUS_IRQFACT and st_after == 0)
        r.check("edu-factorial-irq", bool(ok),
                f"reg20={h32(st & STATUS_IRQFACT)} delivered={count is not None} reg24={h32(status)} "
                f"6!={value:#x} ack->{h32(after)} reg20_after={h32(st_after)}")
        dev.unmask_intx()
    r.guarded("edu-factorial-irq", fact_irq)


def pattern(seed: int) -> bytes:
    return bytes((i * 7 + seed + (i >> 8) * 13) & 0xFF for i in range(pci.PAGE))


def phase_dma(r: Report, edu: Edu) -> None:
    dev = edu.dev
    a, b = pci.DmaPage(), pci.DmaPage()
    r.info("dma_pages", f"a={a.phys:#x} b={b.phys:#x}")
    r.require("dma-setup", a.phys <= DEFAULT_DMA_MASK and b.phys <= DEFAULT_DMA_MASK,
              f"pages_below_dma_mask={a.phys <= DEFAULT_DMA_MASK and b.phys <= DEFAULT_DMA_MASK}")
    dev.set_bus_master(True)

    def round_trip() -> None:
        data = pattern(0x11)
        a.fill(data)
        b.fill(b"\xee" * pci.PAGE)
        done1, cmd1 = edu.dma(a.phys, DMA_BUFFER_ADDR, pci.PAGE, 0)
        done2, cmd2 = edu.dma(DMA_BUFFER_ADDR, b.phys, pci.PAGE, DMA_CMD_TO_RAM)
        got = b.read()
        same = got == data
        if not same:
            first = next(i for i in range(pci.PAGE) if got[i] != data[i])
            r.info("dma_mismatch", f"first at {first:#x}: {got[first:first + 16].hex()} want {data[first:first + 16].hex()}")
        r.check("dma-round-trip", done1 and done2 and same,
                f"ram->edu done={done1} cmd={h32(cmd1)} edu->ram done={done2} cmd={h32(cmd2)} "
                f"{pci.PAGE} bytes equal={same}")
    r.guarded("dma-round-trip", round_trip)

    def partial() -> None:
        a.fill(pattern(0x42))
        b.fill(b"\x00" * pci.PAGE)
        done1, _ = edu.dma(a.phys + 0x100, DMA_BUFFER_ADDR + 0x800, 0x80, 0)
        done2, _ = edu.dma(DMA_BUFFER_ADDR + 0x800, b.phys + 0x300, 0x80, DMA_CMD_TO_RAM)
        got = b.read()
        want = b"\x00" * 0x300 + pattern(0x42)[0x100:0x180] + b"\x00" * (pci.PAGE - 0x380)
        r.check("dma-partial", done1 and done2 and got == want,
                f"0x80 bytes ram+0x100 -> edu+0x800 -> ram+0x300 done={done1 and done2} exact={got == want}")
    r.guarded("dma-partial", partial)

    def dma_irq() -> None:
        dev.unmask_intx()
        a.fill(pattern(0x99))
        edu.dma(a.phys, DMA_BUFFER_ADDR, pci.PAGE, 0)
        b.fill(b"\x00" * pci.PAGE)
        edu.bar.write64(REG_DMA_SRC, DMA_BUFFER_ADDR)
        edu.bar.write64(REG_DMA_DST, b.phys)
        edu.bar.write64(REG_DMA_COUNT, pci.PAGE)
        edu.bar.write64(REG_DMA_CMD, DMA_CMD_RUN | DMA_CMD_TO_RAM | DMA_CMD_IRQ)
        count = edu.wait_irq()
        status = edu.rd(REG_IRQ_STATUS)
        cmd = edu.rd(REG_DMA_CMD)
        edu.wr(REG_IRQ_ACK, DMA_IRQ)
        after = edu.rd(REG_IRQ_STATUS)
        same = b.read() == pattern(0x99)
        dev.unmask_intx()
        r.check("dma-irq", count is not None and status == DMA_IRQ and after == 0 and same,
                f"delivered={count is not None} reg24={h32(status)} cmd={h32(cmd)} ack->{h32(after)} data_ok={same}")
    r.guarded("dma-irq", dma_irq)

    def no_master() -> None:
        # With COMMAND.MASTER clear a function must not touch memory. QEMU's in-process
        # edu still "completes" (its bus-master address space is disabled, so the write
        # goes nowhere); what the device reports is printed as INFO, only RAM is checked.
        a.fill(pattern(0x33))
        edu.dma(a.phys, DMA_BUFFER_ADDR, pci.PAGE, 0)       # buffer := known pattern (master on)
        dev.set_bus_master(False)
        b.fill(b"\x5a" * pci.PAGE)
        done, cmd = edu.dma(DMA_BUFFER_ADDR, b.phys, pci.PAGE, DMA_CMD_TO_RAM)
        untouched = b.read() == b"\x5a" * pci.PAGE
        r.info("dma_no_master_to_ram", f"completed={done} cmd={h32(cmd)} ram_untouched={untouched}")
        # And a read from RAM with master off: what lands in the edu buffer?
        a.fill(pattern(0x77))
        done_r, cmd_r = edu.dma(a.phys, DMA_BUFFER_ADDR, pci.PAGE, 0)
        dev.set_bus_master(True)
        b.fill(b"\x00" * pci.PAGE)
        edu.dma(DMA_BUFFER_ADDR, b.phys, pci.PAGE, DMA_CMD_TO_RAM)
        buf = b.read()
        what = ("unchanged" if buf == pattern(0x33) else "ram-data" if buf == pattern(0x77)
                else "zeros" if buf == bytes(pci.PAGE) else "all-ones" if buf == b"\xff" * pci.PAGE else "other")
        r.info("dma_no_master_from_ram", f"completed={done_r} cmd={h32(cmd_r)} edu_buffer={what}")
        r.check("dma-no-busmaster", untouched and what != "ram-data",
                f"ram_untouched={untouched} ram_not_read={what != 'ram-data'}")
    r.guarded("dma-no-busmaster", no_master)
    dev.set_bus_master(True)


def phase_reset(r: Report, edu: Edu) -> None:
    dev = edu.dev
    reset_file = dev.path / "reset"
    methods = (dev.path / "reset_method")
    r.info("reset_method", methods.read_text().strip() if methods.exists() else "(none)")
    r.require("reset-available", reset_file.exists(), f"reset_file={reset_file.exists()}")

    # Leave state that a reset must clear: liveness, status bit7, a raised interrupt.
    edu.wr(REG_LIVENESS, 0x12345678)
    edu.wr(REG_STATUS, STATUS_IRQFACT)
    dev.unmask_intx()
    edu.wr(REG_IRQ_RAISE, 0x8)
    got_irq = edu.wait_irq() if edu.uio else None
    before = (edu.rd(REG_LIVENESS), edu.rd(REG_STATUS), edu.rd(REG_IRQ_STATUS))
    r.info("before_reset", f"reg04={h32(before[0])} reg20={h32(before[1])} reg24={h32(before[2])} irq={got_irq is not None}")

    t0 = time.monotonic()
    try:
        reset_file.write_text("1")
        err = ""
    except OSError as e:
        err = f"{e.strerror} (errno {e.errno})"
    took = time.monotonic() - t0
    r.info("reset_took_s", f"{took:.2f}")
    r.check("reset-write", not err, f"echo 1 > reset: {'ok' if not err else err}")

    live, status, irqs = edu.rd(REG_LIVENESS), edu.rd(REG_STATUS), edu.rd(REG_IRQ_STATUS)
    cmd = dev.command
    r.info("after_reset", f"command={cmd:#06x}")
    r.check("reset-state", live == 0 and status == 0 and irqs == 0,
            f"reg04={h32(live)} reg20={h32(status)} reg24={h32(irqs)} (power-on: all 0)")

    def works() -> None:
        ident = edu.rd(REG_ID)
        value, _ = edu.factorial(5)
        r.check("reset-function", ident == IDENTIFICATION and value == 120 and bool(cmd & pci.CMD_MEMORY),
                f"reg00={h32(ident)} 5!={value} memory_decode={bool(cmd & pci.CMD_MEMORY)}")
    r.guarded("reset-function", works)
    # Leave the device quiet (matters for a device that kept its state).
    edu.wr(REG_IRQ_ACK, 0xFFFF_FFFF)
    edu.wr(REG_STATUS, 0)
    dev.unmask_intx()


PHASES = {"irq": phase_irq, "dma": phase_dma, "reset": phase_reset}


def main(r: Report) -> None:
    vid = int(r.params.get("vid", hex(PCI_VENDOR_ID)), 16)
    did = int(r.params.get("did", hex(PCI_DEVICE_ID)), 16)
    phases = [p for p in r.params.get("phases", "regs,irq,dma,reset").split(",") if p]
    found = pci.find_devices(vid, did)
    r.require("find-device", len(found) == 1, f"{vid:04x}:{did:04x} found={len(found)}")
    dev = pci.Device(found[0])
    r.info("bdf", dev.bdf)
    r.info("bar0", f"{dev.resources()[0][0]:#x}")
    dev.enable()
    edu = Edu(dev, dev.bar(0))
    if "regs" in phases:
        phase_regs(r, edu)
    elif edu.rd(REG_ID) != IDENTIFICATION:
        raise Fatal("edu-ident")
    irq, before = "", 0
    if any(p in phases for p in ("irq", "dma", "reset")):
        bind_uio(r, edu)
        irq = dev.attr("irq")
        before = pci.interrupt_count(irq)
    for name in phases:
        if name in PHASES:
            PHASES[name](r, edu)
    if irq:
        r.info("proc_interrupts", f"irq={irq} count={pci.interrupt_count(irq) - before}")
    r.info("command_final", f"{dev.command:#06x}")


if __name__ == "__main__":
    sys.exit(run("edu", main))
