# SPDX-License-Identifier: BSD-3-Clause
"""A timer/GPIO-like block with several level lines and an edge line.

It exists to exercise what edu cannot: several IRQ lines asserted at the
same instant (the bridge's pending queue), per-line and shared (W1C) EOI
registers, an edge line, a timer, and an mmappable SRAM region.

Region 0, 4 KiB of trapped 32-bit little-endian registers:

    0x00  ID            RO   0x47504f31 ("GPO1")
    0x04  NLINES        RO   number of level lines
    0x08  SCRATCH       RW
    0x10  RAISE         WO   bitmask: assert those lines (in index order)
    0x14  STATUS        RO   bitmask of asserted lines
    0x18  ACK           W1C  bitmask: deassert those lines
    0x1c  EDGE_PULSE    WO   any write pulses the edge line
    0x40  TIMER_LINE    RW   line the timer asserts
    0x44  TIMER_DELAY_US RW
    0x48  TIMER_CTRL    RW   bit0 enable, bit1 periodic
    0x100 + 0x10*k, per level line k:
          +0 STATUS_k RO (1 if asserted), +4 ACK_k WO (bit0 deasserts),
          +8 RAISE_k WO (bit0 asserts)

Unknown offsets (and write-only registers) read 0; writes to them are
ignored.  An 8-byte access is two 32-bit ones (low word first).  A 1- or
2-byte read returns those bytes of the register; a 1- or 2-byte write
changes only those bytes of a storage register (SCRATCH, TIMER_*), and is
taken as a 32-bit write with the other bytes zero by an action register
(RAISE, ACK, ...).

Timer: writing TIMER_CTRL with bit0 set (re)starts it, with bit0 clear stops
it.  After TIMER_DELAY_US it asserts TIMER_LINE; a one-shot then clears
bit0, a periodic one re-arms (at least `min_period_us` apart, so a zero
period cannot starve the server's event loop).

Region 1: 4 KiB SRAM backed by a memfd, mmappable.
IRQs: `lines` level lines (indexes 0..lines-1), then, with `edge`, the edge
line (index `lines`).
"""

from __future__ import annotations

from vfu_platform.backends.base import AckRegister
from vfu_platform.backends.sim.device import Deferred, MemoryRegion, RegisterRegion, SimDevice

REGS_SIZE = 0x1000
SRAM_SIZE = 0x1000
GPIO_ID = 0x47504F31

REG_ID = 0x00
REG_NLINES = 0x04
REG_SCRATCH = 0x08
REG_RAISE = 0x10
REG_STATUS = 0x14
REG_ACK = 0x18
REG_EDGE_PULSE = 0x1C
REG_TIMER_LINE = 0x40
REG_TIMER_DELAY_US = 0x44
REG_TIMER_CTRL = 0x48
REG_LINE_BASE = 0x100
LINE_STRIDE = 0x10
LINE_STATUS = 0x0
LINE_ACK = 0x4
LINE_RAISE = 0x8

TIMER_ENABLE = 0x1
TIMER_PERIODIC = 0x2

MIN_LINES = 3
MAX_LINES = 16

_U32 = 0xFFFF_FFFF


def line_register(line: int, register: int) -> int:
    """Offset of a per-line register (LINE_STATUS, LINE_ACK or LINE_RAISE)."""
    return REG_LINE_BASE + LINE_STRIDE * line + register


class GpioDevice(SimDevice):
    """Timer/GPIO block; see the module docstring."""

    name = "gpio"
    compatible = ("vfu-platform,gpio",)
    pci_vendor, pci_device, pci_class = 0x1234, 0x5650, 0x088000
    irq_regions = frozenset({0})

    def __init__(self, *, lines: int = 4, edge: bool = True, min_period_us: int = 100) -> None:
        if not MIN_LINES <= lines <= MAX_LINES:
            raise ValueError(f"gpio: lines must be {MIN_LINES}..{MAX_LINES}, not {lines}")
        if min_period_us < 1:
            raise ValueError(f"gpio: min_period_us must be at least 1, not {min_period_us}")
        super().__init__()
        self.lines = lines
        self.min_period_us = min_period_us
        self.add_region(RegisterRegion(REGS_SIZE, self._read, self._write, name="gpio-regs"))
        self.sram = MemoryRegion(SRAM_SIZE, name="gpio-sram")
        self.add_region(self.sram)
        for k in range(lines):
            self.add_level_irq(f"line{k}")
        self.edge_irq: int | None = self.add_edge_irq("edge") if edge else None
        self.ack_registers = tuple(
            ack
            for k in range(lines)
            for ack in (
                AckRegister(irq=k, region=0, offset=line_register(k, LINE_ACK), mask=1),
                AckRegister(irq=k, region=0, offset=REG_ACK, mask=1 << k),
            )
        )
        self._timer: Deferred | None = None
        self.on_reset()

    def on_reset(self) -> None:
        self.scratch = 0
        self.timer_line = 0
        self.timer_delay_us = 0
        self.timer_ctrl = 0
        self._timer = None

    # ---- lines --------------------------------------------------------------

    def asserted_mask(self) -> int:
        return sum(1 << k for k in range(self.lines) if self.line_asserted(k))

    def _raise_lines(self, mask: int) -> None:
        for k in range(self.lines):
            if mask >> k & 1:
                self.set_line(k, True)

    def _ack_lines(self, mask: int) -> None:
        for k in range(self.lines):
            if mask >> k & 1:
                self.set_line(k, False)

    # ---- registers ----------------------------------------------------------

    def _read(self, offset: int, size: int) -> int:
        if size == 8:
            return self._read_word(offset) | self._read_word(offset + 4) << 32
        shift = (offset & 3) * 8
        return self._read_word(offset & ~3) >> shift

    def _read_word(self, offset: int) -> int:
        if offset == REG_ID:
            return GPIO_ID
        if offset == REG_NLINES:
            return self.lines
        if offset == REG_SCRATCH:
            return self.scratch
        if offset == REG_STATUS:
            return self.asserted_mask()
        if offset == REG_TIMER_LINE:
            return self.timer_line
        if offset == REG_TIMER_DELAY_US:
            return self.timer_delay_us
        if offset == REG_TIMER_CTRL:
            return self.timer_ctrl
        if offset >= REG_LINE_BASE:
            line, register = divmod(offset - REG_LINE_BASE, LINE_STRIDE)
            if line < self.lines and register == LINE_STATUS:
                return int(self.line_asserted(line))
        return 0

    def _write(self, offset: int, size: int, value: int) -> None:
        if size == 8:
            self._write_word(offset, value & _U32, _U32)
            self._write_word(offset + 4, value >> 32, _U32)
            return
        shift = (offset & 3) * 8
        mask = ((1 << (8 * size)) - 1) << shift
        self._write_word(offset & ~3, value << shift, mask)

    def _write_word(self, offset: int, value: int, mask: int) -> None:
        """Write the `mask` bits of a 32-bit register."""
        value &= mask
        if offset == REG_SCRATCH:
            self.scratch = self.scratch & ~mask | value
        elif offset == REG_RAISE:
            self._raise_lines(value)
        elif offset == REG_ACK:
            self._ack_lines(value)
        elif offset == REG_EDGE_PULSE:
            if self.edge_irq is not None:
                self.pulse(self.edge_irq)
        elif offset == REG_TIMER_LINE:
            self.timer_line = self.timer_line & ~mask | value
        elif offset == REG_TIMER_DELAY_US:
            self.timer_delay_us = self.timer_delay_us & ~mask | value
        elif offset == REG_TIMER_CTRL:
            self.timer_ctrl = (self.timer_ctrl & ~mask | value) & (TIMER_ENABLE | TIMER_PERIODIC)
            self._program_timer()
        elif offset >= REG_LINE_BASE:
            line, register = divmod(offset - REG_LINE_BASE, LINE_STRIDE)
            if line < self.lines and value & 1:
                if register == LINE_ACK:
                    self.set_line(line, False)
                elif register == LINE_RAISE:
                    self.set_line(line, True)

    # ---- timer --------------------------------------------------------------

    def _program_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.timer_ctrl & TIMER_ENABLE:
            self._arm_timer()

    def _arm_timer(self) -> None:
        delay_us = self.timer_delay_us
        if self.timer_ctrl & TIMER_PERIODIC:
            delay_us = max(delay_us, self.min_period_us)
        self._timer = self.defer(delay_us / 1e6, self._timer_expired)

    def _timer_expired(self) -> None:
        self._timer = None
        self.counters.bump("gpio.timer_expired")
        if self.timer_line < self.lines:
            self.set_line(self.timer_line, True)
        else:
            self.record_error(f"gpio: timer line {self.timer_line} does not exist")
        if self.timer_ctrl & TIMER_PERIODIC:
            self._arm_timer()
        else:
            self.timer_ctrl &= ~TIMER_ENABLE

    def status(self) -> dict[str, object]:
        snapshot = super().status()
        snapshot["registers"] = {
            "status": self.asserted_mask(),
            "scratch": self.scratch,
            "timer_line": self.timer_line,
            "timer_delay_us": self.timer_delay_us,
            "timer_ctrl": self.timer_ctrl,
        }
        return snapshot
