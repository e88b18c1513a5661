# SPDX-License-Identifier: BSD-3-Clause
"""Guest check program: several platform IRQs shared on one INTx, in FIFO order.

Runs against our server's `gpio` model (register map in
vfu_platform/backends/sim/gpio.py) with the bridge's IRQ page (docs/irq-page.md).
Several level lines are asserted at the same instant (one write to RAISE); the
bridge must deliver them one at a time, oldest first, through the single INTx:
for each interrupt the guest reads IRQ_ACTIVE from the IRQ page, acknowledges that
line on the device and re-arms INTx. The sequence must be exactly the raised lines
in index order, and afterwards nothing may be active, pending or delivered again.

Kernel command-line parameters (all optional):

    vfu.vid=0x.... vfu.did=0x....   the function (default: the one whose BAR0 reads "GPO1")
    vfu.lines=0,1,2                 lines raised at once
    vfu.irqbar=2                    the IRQ page's BAR (gpio: BAR0 regs, BAR1 SRAM, BAR2 page)
"""
from __future__ import annotations

import sys
import time

from vfu_platform.backends.sim.gpio import (
    GPIO_ID,
    REG_ID,
    REG_NLINES,
    REG_RAISE,
    REG_STATUS,
    REG_ACK,
    REG_LINE_BASE,
    LINE_STRIDE,
    LINE_ACK,
)
from vfu_platform.bridge.irq_page import (
    IRQ_ACTIVE as PAGE_IRQ_ACTIVE,
    IRQ_PENDING as PAGE_IRQ_PENDING,
    IRQ_LINES as PAGE_IRQ_LINES,
    IRQ_ROUTE as PAGE_IRQ_ROUTE,
    IRQ_SIGNALS as PAGE_IRQ_SIGNALS,
    IRQ_EOIS as PAGE_IRQ_EOIS,
    MAGIC as PAGE_MAGIC,
    MAGIC_VALUE as MAGIC,
    NO_IRQ as NONE_ACTIVE,
)
from testbench.guest import pci
from testbench.guest.report import Report, run



IRQ_WAIT_S = 5.0
QUIET_S = 1.0

# Vendors of the functions the test machine itself has (Intel chipset, virtio, QEMU's
# Red Hat IDs): never probed when looking for the device by its ID register.
MACHINE_VENDORS = {0x8086, 0x1AF4, 0x1B36}


def find_gpio(params: dict[str, str]) -> list[pci.Device]:
    if "vid" in params:
        did = int(params["did"], 16) if "did" in params else None
        return [pci.Device(p) for p in pci.find_devices(int(params["vid"], 16), did)]
    found = []
    for path in pci.find_devices():
        dev = pci.Device(path)
        if int(dev.attr("vendor"), 16) in MACHINE_VENDORS or int(dev.attr("class"), 16) >> 16 == 0x06:
            continue
        if dev.bar_size(0) < 0x1000:
            continue
        dev.enable()
        bar = dev.bar(0)
        try:
            if bar.read32(REG_ID) == GPIO_ID:
                found.append(dev)
        finally:
            bar.close()
    return found


def line_reg(k: int, reg: int) -> int:
    return REG_LINE_BASE + LINE_STRIDE * k + reg


def take_interrupts(dev: pci.Device, regs: pci.Bar, page: pci.Bar, uio: pci.Uio, expected: int,
                    ack: str) -> tuple[list[int], list[int], int]:
    """Service interrupts until `expected` came and then none for QUIET_S seconds.

    Returns (IRQ_ACTIVE per interrupt, IRQ_PENDING per interrupt, extra interrupts
    beyond `expected`). `ack` is "line" (ACK_k) or "shared" (W1C ACK bitmask).
    """
    actives: list[int] = []
    pendings: list[int] = []
    while True:
        timeout = IRQ_WAIT_S if len(actives) < expected else QUIET_S
        if uio.wait(timeout) is None:
            break
        active = page.read32(PAGE_IRQ_ACTIVE)
        pendings.append(page.read32(PAGE_IRQ_PENDING))
        actives.append(active)
        if active < 32:
            if ack == "line":
                regs.write32(line_reg(active, LINE_ACK), 1)
            else:
                regs.write32(REG_ACK, 1 << active)
        dev.unmask_intx()
        if len(actives) > expected + 4:  # a storm: stop, the check fails anyway
            break
    return actives, pendings, max(0, len(actives) - expected)


def fmt(values: list[int]) -> str:
    return ",".join("none" if v == NONE_ACTIVE else str(v) for v in values) or "-"


def main(r: Report) -> None:
    lines = [int(x) for x in r.params.get("lines", "0,1,2").split(",") if x]
    irqbar = int(r.params.get("irqbar", "2"))
    found = find_gpio(r.params)
    r.require("find-device", len(found) == 1, f"gpio found={len(found)}")
    dev = found[0]
    r.info("device", f"{dev.bdf} {dev.attr('vendor')}:{dev.attr('device')}")
    dev.enable()
    regs = dev.bar(0)
    r.require("gpio-ident", regs.read32(REG_ID) == GPIO_ID, f"reg00={regs.read32(REG_ID):#010x}")
    nlines = regs.read32(REG_NLINES)

    page = dev.bar(irqbar)
    magic = page.read32(PAGE_MAGIC)
    plines = page.read32(PAGE_IRQ_LINES)
    route = page.read32(PAGE_IRQ_ROUTE)
    active0 = page.read32(PAGE_IRQ_ACTIVE)
    pending0 = page.read32(PAGE_IRQ_PENDING)
    r.require("irq-page", magic == MAGIC and plines >= len(lines) and route == 0 and active0 == NONE_ACTIVE
              and pending0 == 0,
              f"bar={irqbar} size={page.size:#x} magic={magic:#010x} lines={plines} route={route} "
              f"active={fmt([active0])} pending={pending0}")
    r.info("gpio_lines", f"device={nlines} page={plines}")
    r.check("gpio-idle", regs.read32(REG_STATUS) == 0, f"status={regs.read32(REG_STATUS):#x}")

    dev.bind(pci.UIO_DRIVER)
    name = dev.uio_name()
    r.info("uio", f"{name} irq={dev.attr('irq')}")
    r.require("uio-bind", name is not None, f"driver={dev.driver()}")
    assert name is not None
    uio = pci.Uio(name)
    irq = dev.attr("irq")
    before = pci.interrupt_count(irq)

    mask = sum(1 << k for k in lines)
    t0 = time.monotonic()
    regs.write32(REG_RAISE, mask)
    actives, pendings, extra = take_interrupts(dev, regs, page, uio, len(lines), "line")
    r.info("fifo_pending_seen", fmt(pendings))
    r.info("fifo_time_s", f"{time.monotonic() - t0:.2f}")
    r.check("irq-fifo-order", actives == lines,
            f"raised={fmt(lines)} delivered={fmt(actives)} extra={extra}")

    def quiet(name_: str) -> None:
        active = page.read32(PAGE_IRQ_ACTIVE)
        pending = page.read32(PAGE_IRQ_PENDING)
        status = regs.read32(REG_STATUS)
        r.check(name_, active == NONE_ACTIVE and pending == 0 and status == 0,
                f"active={fmt([active])} pending={pending} status={status:#x}")
    quiet("irq-fifo-quiet")

    # Second round, two lines, acknowledged through the shared W1C register.
    second = [k for k in lines[1:]] or lines
    regs.write32(REG_RAISE, sum(1 << k for k in second))
    actives2, _, extra2 = take_interrupts(dev, regs, page, uio, len(second), "shared")
    r.check("irq-fifo-shared-ack", actives2 == second,
            f"raised={fmt(second)} delivered={fmt(actives2)} extra={extra2}")
    quiet("irq-fifo-quiet-2")

    signals = page.read32(PAGE_IRQ_SIGNALS)
    eois = page.read32(PAGE_IRQ_EOIS)
    r.info("irq_counters", f"signals={signals} eois={eois} guest_interrupts={pci.interrupt_count(irq) - before}")
    r.check("irq-counters", signals == len(lines) + len(second),
            f"signals={signals} (want {len(lines) + len(second)})")


if __name__ == "__main__":
    sys.exit(run("irq_fifo", main))
