# SPDX-License-Identifier: BSD-3-Clause
"""ARM PrimeCell PL011 UART (ARM DDI 0183, r1p5), for Linux's amba-pl011 driver.

Region 0, 4 KiB of trapped registers (8/16/32-bit accesses; Linux uses 16-bit):

    0x000 DR      RW  read: data | FE<<8 | PE<<9 | BE<<10 | OE<<11 (pops the RX FIFO);
                      write: push onto the TX FIFO (lost when it is full)
    0x004 RSR/ECR RW  FE, PE, BE of the last character read, OE; any write clears
    0x018 FR      RO  CTS DSR DCD BUSY RXFE TXFF RXFF TXFE RI (bits 0..8)
    0x020 ILPR    RW  (IrDA; stored only)
    0x024 IBRD    RW  16 bits        0x028 FBRD  RW  6 bits
    0x02c LCR_H   RW  BRK PEN EPS STP2 FEN WLEN SPS; FEN enables the 32-entry FIFOs
    0x030 CR      RW  UARTEN, LBE (loopback), TXE, RXE, DTR, RTS, OUT1, OUT2, RTSEn,
                      CTSEn; reset 0x0300
    0x034 IFLS    RW  TXIFLSEL (bits 2:0), RXIFLSEL (5:3): 1/8 .. 7/8; reset 0x12
    0x038 IMSC    RW  interrupt mask (1 = enabled)   0x03c RIS RO   0x040 MIS RO
    0x044 ICR     WO  write 1s to clear RIS bits
    0x048 DMACR   RW  stored only (the model does no DMA)
    0xfe0..0xffc      PeriphID0..3 = 0x11 0x10 0x34 0x00, PCellID0..3 = 0x0d 0xf0 0x05 0xb1

Interrupts (RIS bits), combined into one level line = RIS & IMSC != 0:

* RX (bit 4): set when the RX FIFO fills up to its trigger level (from below);
  cleared when reads take it below the level, or by ICR.  Without FEN the FIFO
  is one entry deep and the level is 1.
* RX timeout (bit 6): data waits in the RX FIFO and nothing new arrived for
  `RX_TIMEOUT` seconds (32 bit periods are a few microseconds at usual rates;
  a fixed 1 ms is what a vfio-user round trip makes observable, and it keeps
  typed characters prompt).  Cleared when the FIFO is read empty, or by ICR.
* TX (bit 5): set when the transmitter has taken data out of the TX FIFO and
  left it at or below its trigger level (with FEN off: empty).  Writes that fill
  the FIFO above the level clear it, as does ICR.  Like the hardware, merely
  enabling the UART with an empty FIFO does not set it: Linux's driver writes
  DR until FR.TXFF, enables TXIM, and gets TXIS once the FIFO drains.
* FE/PE/BE/OE (bits 7..10): a character with that error was received (only
  `line_receive` produces them: the host port carries bytes, not line errors).
  An overrun marks the newest character in the FIFO with OE.
* Modem (bits 0..3) never assert: CTS, DSR and DCD are always asserted (the
  port is always "connected"); in loopback they follow RTS, DTR and OUT1/OUT2.

Transmission takes no line time: the TX FIFO drains into the host port one
event-loop turn after the first byte is written (`TX_DRAIN_DELAY`), provided
UARTEN and TXE are set; FR.BUSY and TXFF are observable in between.  With LBE
the bytes go to the receiver instead.

Reception: host bytes enter the RX FIFO only while UARTEN, RXE and CR.RTS are
set (RTS/CTS flow control: Linux raises RTS when the tty is opened), not in
loopback, and only as many as there is room for; the rest wait in the port.

Revision: PeriphID2 = 0x34 is r1p5, whose FIFOs are 32 deep; Linux sizes its
FIFO from the revision (`amba_rev() < 3 ? 16 : 32`), so the descriptor's
AMBA ID (`PERIPH_ID`) carries the same revision the ID registers report.
"""

from __future__ import annotations

from collections import deque

from vfu_platform import vfio_abi
from vfu_platform.backends.guest import Bind, GuestDevice, GuestIrq, GuestRegion, Trigger
from vfu_platform.backends.sim.device import Deferred, RegisterRegion
from vfu_platform.backends.sim.primecell import IdBlock, make_periphid
from vfu_platform.backends.sim.uart_port import LineError, UartDevice

REGS_SIZE = 0x1000
FIFO_DEPTH = 32
PART_NUMBER = 0x011
#: r1p5 (revision 3, 32-entry FIFOs): 0x00341011, Linux's amba_device.periphid
PERIPH_ID = make_periphid(PART_NUMBER, revision=3)
#: default UARTCLK, also the guest's clock (descriptor property "clock-frequency")
CLOCK_HZ = 24_000_000

RX_TIMEOUT = 0.001
TX_DRAIN_DELAY = 0.0

REG_DR = 0x000
REG_RSR = 0x004  # RSR on read, ECR on write
REG_FR = 0x018
REG_ILPR = 0x020
REG_IBRD = 0x024
REG_FBRD = 0x028
REG_LCR_H = 0x02C
REG_CR = 0x030
REG_IFLS = 0x034
REG_IMSC = 0x038
REG_RIS = 0x03C
REG_MIS = 0x040
REG_ICR = 0x044
REG_DMACR = 0x048

# DR error bits (RSR holds the same bits shifted down by 8)
DR_FE = 1 << 8
DR_PE = 1 << 9
DR_BE = 1 << 10
DR_OE = 1 << 11
RSR_OE = 1 << 3

FR_CTS = 1 << 0
FR_DSR = 1 << 1
FR_DCD = 1 << 2
FR_BUSY = 1 << 3
FR_RXFE = 1 << 4
FR_TXFF = 1 << 5
FR_RXFF = 1 << 6
FR_TXFE = 1 << 7
FR_RI = 1 << 8

LCRH_BRK = 1 << 0
LCRH_FEN = 1 << 4
LCRH_WLEN_SHIFT = 5

CR_UARTEN = 1 << 0
CR_LBE = 1 << 7
CR_TXE = 1 << 8
CR_RXE = 1 << 9
CR_DTR = 1 << 10
CR_RTS = 1 << 11
CR_OUT1 = 1 << 12
CR_OUT2 = 1 << 13
CR_RESET = CR_TXE | CR_RXE

INT_RIM = 1 << 0
INT_CTSM = 1 << 1
INT_DCDM = 1 << 2
INT_DSRM = 1 << 3
INT_RX = 1 << 4
INT_TX = 1 << 5
INT_RT = 1 << 6
INT_FE = 1 << 7
INT_PE = 1 << 8
INT_BE = 1 << 9
INT_OE = 1 << 10
INT_ALL = (1 << 11) - 1

IFLS_RESET = 0x12
#: IFLS level selector -> eighths of the FIFO
_IFLS_EIGHTHS = {0: 1, 1: 2, 2: 4, 3: 6, 4: 7}

_IDS = IdBlock(PERIPH_ID)
_ERROR_BITS = {LineError.FRAMING: (DR_FE, INT_FE), LineError.PARITY: (DR_PE, INT_PE), LineError.BREAK: (DR_BE, INT_BE)}


class Pl011Device(UartDevice):
    """PL011 UART; see the module docstring.  Options: `port` (pty, pty:LINK, unix:PATH), `clock`."""

    name = "pl011"
    device_flags = vfio_abi.DEVICE_FLAGS_AMBA | vfio_abi.DEVICE_FLAGS_RESET
    compatible = ("arm,pl011", "arm,primecell")
    #: the vfu-platform bridge with a guest descriptor (docs/guest-descriptor.md)
    pci_vendor, pci_device, pci_class = 0x1234, 0x5646, 0x088000
    irq_regions = frozenset({0})

    def __init__(self, *, port: str = "pty", clock: int = CLOCK_HZ) -> None:
        if clock <= 0:
            raise ValueError(f"pl011: clock must be positive, not {clock}")
        super().__init__(port)
        self.clock = clock
        self.add_region(RegisterRegion(REGS_SIZE, self._read, self._write, name="pl011-regs"))
        self.irq = self.add_level_irq("uart")
        self.rx_fifo: deque[int] = deque()  # entries: data | DR error bits
        self.tx_fifo: deque[int] = deque()
        self._rx_timer: Deferred | None = None
        self._tx_timer: Deferred | None = None
        self.on_reset()

    def guest_devices(self) -> tuple[GuestDevice, ...]:
        return (
            GuestDevice(
                name="pl011",
                bind=Bind.AMBA,
                amba_id=PERIPH_ID,
                compatible=self.compatible,
                regions=(GuestRegion(0, size=REGS_SIZE),),
                irqs=(GuestIrq(self.irq, Trigger.LEVEL_HIGH),),
                properties=(("clock-frequency", self.clock),),
            ),
        )

    def on_reset(self) -> None:
        self.rx_fifo.clear()
        self.tx_fifo.clear()
        self.rsr = 0
        self.ilpr = 0
        self.ibrd = 0
        self.fbrd = 0
        self.lcr_h = 0
        self.cr = CR_RESET
        self.ifls = IFLS_RESET
        self.imsc = 0
        self.ris = 0
        self.dmacr = 0
        self._rx_timer = None  # SimDevice.reset cancelled the timers
        self._tx_timer = None
        self._update_irq()
        self._update_rx_flow()

    # ---- derived state ------------------------------------------------------

    @property
    def fifo_depth(self) -> int:
        return FIFO_DEPTH if self.lcr_h & LCRH_FEN else 1

    def _level(self, selector: int) -> int:
        return FIFO_DEPTH * _IFLS_EIGHTHS.get(selector, 4) // 8

    @property
    def rx_trigger(self) -> int:
        """RX interrupt when the FIFO holds at least this many characters."""
        return self._level((self.ifls >> 3) & 7) if self.lcr_h & LCRH_FEN else 1

    @property
    def tx_trigger(self) -> int:
        """TX interrupt when the FIFO holds at most this many characters."""
        return self._level(self.ifls & 7) if self.lcr_h & LCRH_FEN else 0

    @property
    def word_mask(self) -> int:
        return (1 << (5 + ((self.lcr_h >> LCRH_WLEN_SHIFT) & 3))) - 1

    @property
    def baud(self) -> float:
        """The programmed rate: UARTCLK / (16 * (IBRD + FBRD/64)); 0 when unprogrammed."""
        divisor = self.ibrd * 64 + self.fbrd
        return self.clock * 4 / divisor if divisor else 0.0

    def _flag_register(self) -> int:
        fr = 0
        if self.cr & CR_LBE:  # modem inputs looped back from the outputs
            fr |= FR_CTS if self.cr & CR_RTS else 0
            fr |= FR_DSR if self.cr & CR_DTR else 0
            fr |= FR_DCD if self.cr & CR_OUT1 else 0
            fr |= FR_RI if self.cr & CR_OUT2 else 0
        else:
            fr |= FR_CTS | FR_DSR | FR_DCD
        depth = self.fifo_depth
        if self.tx_fifo:
            fr |= FR_BUSY
        else:
            fr |= FR_TXFE
        if len(self.tx_fifo) >= depth:
            fr |= FR_TXFF
        if not self.rx_fifo:
            fr |= FR_RXFE
        if len(self.rx_fifo) >= depth:
            fr |= FR_RXFF
        return fr

    def _update_irq(self) -> None:
        self.set_line(self.irq, bool(self.ris & self.imsc))

    # ---- receive ------------------------------------------------------------

    def _rx_room(self) -> int:
        needed = CR_UARTEN | CR_RXE | CR_RTS
        if self.cr & needed != needed or self.cr & CR_LBE:
            return 0
        return max(0, self.fifo_depth - len(self.rx_fifo))

    def _receive(self, data: bytes, errors: LineError = LineError.NONE) -> int:
        flags = 0
        for error, (dr_bit, int_bit) in _ERROR_BITS.items():
            if errors & error:
                flags |= dr_bit
                self.ris |= int_bit
        mask = self.word_mask
        trigger = self.rx_trigger
        stored = 0
        for byte in data:
            if len(self.rx_fifo) >= self.fifo_depth:
                self._overrun()
                continue
            self.rx_fifo.append((byte & mask) | flags)
            stored += 1
            if len(self.rx_fifo) == trigger:
                self.ris |= INT_RX
        if data:
            self._restart_rx_timeout()
        self._update_irq()
        return stored

    def _overrun(self) -> None:
        self.rsr |= RSR_OE
        self.ris |= INT_OE
        if self.rx_fifo:
            self.rx_fifo[-1] |= DR_OE
        self.counters.bump("pl011.rx_overruns")

    def _restart_rx_timeout(self) -> None:
        if self._rx_timer is not None:
            self._rx_timer.cancel()
        self._rx_timer = self.defer(RX_TIMEOUT, self._rx_timeout)

    def _rx_timeout(self) -> None:
        self._rx_timer = None
        if self.rx_fifo:
            self.ris |= INT_RT
            self._update_irq()

    def _read_dr(self) -> int:
        if not self.rx_fifo:
            return 0
        entry = self.rx_fifo.popleft()
        self.rsr = (self.rsr & RSR_OE) | ((entry >> 8) & 0x7)
        if entry & DR_OE:
            self.rsr |= RSR_OE
        if len(self.rx_fifo) < self.rx_trigger:
            self.ris &= ~INT_RX
        if not self.rx_fifo:
            self.ris &= ~INT_RT
        self._update_irq()
        self._update_rx_flow()
        return entry

    # ---- transmit -----------------------------------------------------------

    def _write_dr(self, value: int) -> None:
        if len(self.tx_fifo) >= self.fifo_depth:
            self.counters.bump("pl011.tx_overflows")
            return
        self.tx_fifo.append(value & self.word_mask)
        if len(self.tx_fifo) > self.tx_trigger:
            self.ris &= ~INT_TX
            self._update_irq()
        self._schedule_drain()

    def _schedule_drain(self) -> None:
        needed = CR_UARTEN | CR_TXE
        if self.tx_fifo and self.cr & needed == needed and self._tx_timer is None:
            self._tx_timer = self.defer(TX_DRAIN_DELAY, self._drain)

    def _drain(self) -> None:
        self._tx_timer = None
        needed = CR_UARTEN | CR_TXE
        if not self.tx_fifo or self.cr & needed != needed:
            return
        data = bytes(self.tx_fifo)
        self.tx_fifo.clear()
        self.counters.bump("pl011.tx_bytes", len(data))
        self.ris |= INT_TX  # the FIFO is now empty: at or below any trigger level
        if self.cr & CR_LBE:
            if self.cr & CR_RXE:
                self._receive(data)
        else:
            self.port.write(data)
        self._update_irq()

    # ---- registers ----------------------------------------------------------

    def _read(self, offset: int, size: int) -> int:
        if size == 8:
            return self._read_word(offset) | self._read_word(offset + 4) << 32
        shift = (offset & 3) * 8
        if shift:  # upper bytes of a register: no side effects (a DR pop needs byte 0)
            return self._peek(offset & ~3) >> shift
        return self._read_word(offset)

    def _peek(self, offset: int) -> int:
        if offset == REG_DR:
            return self.rx_fifo[0] if self.rx_fifo else 0
        return self._read_word(offset)

    def _read_word(self, offset: int) -> int:
        if offset == REG_DR:
            return self._read_dr()
        if offset == REG_RSR:
            return self.rsr
        if offset == REG_FR:
            return self._flag_register()
        if offset == REG_ILPR:
            return self.ilpr
        if offset == REG_IBRD:
            return self.ibrd
        if offset == REG_FBRD:
            return self.fbrd
        if offset == REG_LCR_H:
            return self.lcr_h
        if offset == REG_CR:
            return self.cr
        if offset == REG_IFLS:
            return self.ifls
        if offset == REG_IMSC:
            return self.imsc
        if offset == REG_RIS:
            return self.ris
        if offset == REG_MIS:
            return self.ris & self.imsc
        if offset == REG_DMACR:
            return self.dmacr
        if IdBlock.covers(offset):
            return _IDS.read(offset)
        return 0

    def _write(self, offset: int, size: int, value: int) -> None:
        if size == 8:
            self._write_word(offset, value & 0xFFFF_FFFF)
            self._write_word(offset + 4, value >> 32)
        elif offset & 3 == 0:  # writes to a register's upper bytes only touch reserved bits
            self._write_word(offset, value)

    def _write_word(self, offset: int, value: int) -> None:
        if offset == REG_DR:
            self._write_dr(value & 0xFF)
        elif offset == REG_RSR:
            self.rsr = 0
        elif offset == REG_ILPR:
            self.ilpr = value & 0xFF
        elif offset == REG_IBRD:
            self.ibrd = value & 0xFFFF
        elif offset == REG_FBRD:
            self.fbrd = value & 0x3F
        elif offset == REG_LCR_H:
            self._write_lcr_h(value & 0xFF)
        elif offset == REG_CR:
            self._write_cr(value & 0xFFFF)
        elif offset == REG_IFLS:
            self.ifls = value & 0x3F
        elif offset == REG_IMSC:
            self.imsc = value & INT_ALL
            self._update_irq()
        elif offset == REG_ICR:
            self.ris &= ~(value & INT_ALL)
            self._update_irq()
        elif offset == REG_DMACR:
            self.dmacr = value & 0x7

    def _write_lcr_h(self, value: int) -> None:
        # Entries are kept when FEN changes (nothing is lost); with FEN cleared and
        # more than one entry queued, the FIFO reads as full until it is drained.
        self.lcr_h = value
        self._update_rx_flow()

    def _write_cr(self, value: int) -> None:
        self.cr = value
        self._schedule_drain()
        self._update_rx_flow()

    def status(self) -> dict[str, object]:
        snapshot = super().status()
        snapshot["registers"] = {
            "fr": self._flag_register(),
            "lcr_h": self.lcr_h,
            "cr": self.cr,
            "ifls": self.ifls,
            "imsc": self.imsc,
            "ris": self.ris,
            "ibrd": self.ibrd,
            "fbrd": self.fbrd,
            "baud": round(self.baud),
            "rx_level": len(self.rx_fifo),
            "tx_level": len(self.tx_fifo),
        }
        return snapshot
