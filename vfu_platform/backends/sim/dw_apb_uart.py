# SPDX-License-Identifier: BSD-3-Clause
"""Synopsys DesignWare APB UART: a 16550A with the DW extras Linux's 8250_dw reads.

Region 0, 0x100 bytes, registers at a 4-byte stride (reg-shift 2, reg-io-width 4;
8- and 16-bit accesses work too, side effects need the register's byte 0):

    0x00 RBR (read) / THR (write) / DLL (LCR.DLAB)   0x04 IER / DLH (DLAB)
    0x08 IIR (read) / FCR (write)    0x0c LCR    0x10 MCR    0x14 LSR    0x18 MSR
    0x1c SCR    0x7c USR    0x80 TFL    0x84 RFL    0xf4 CPR    0xf8 UCV    0xfc CTR

FIFOs: 64 entries each (CPR.FIFO_MODE = 4), the larger of the sizes DW UARTs
are built with.  Linux reads the size from CPR (PORT_16550A, UART_CAP_FIFO);
a deeper RX FIFO means fewer interrupts per received byte, and every
interrupt costs several vfio-user round trips.  The 16550 register interface
is unchanged: FCR's RX trigger selects 1 character, 1/4, 1/2 or "2 less than
full" (1, 16, 32, 62).  With FCR.FIFOE clear both FIFOs are one entry deep.
Changing FIFOE, or FCR's reset bits, empties the FIFOs.

Interrupts, by IIR priority (one level line: asserted while IIR[0] is 0):

1. receiver line status (0x6, IER.ELSI): OE, or PE/FE/BI of the character at
   the head of the RX FIFO; cleared by reading LSR;
2. received data available (0x4, IER.ERBFI): the RX FIFO holds its trigger
   level (without FIFOs: a character); cleared by reading below it;
3. character timeout (0xc, IER.ERBFI, FIFO mode): characters wait below the
   trigger and nothing was received or read for `RX_TIMEOUT` (a fixed 1 ms in
   place of 4 character times); cleared by reading RBR;
4. THR empty (0x2, IER.ETBEI): the transmitter emptied the TX FIFO, or ETBEI
   was turned on while it is empty (what Linux's THRE test and start_tx rely
   on); cleared by reading IIR while it is the reported source, by writing THR
   or by turning ETBEI off;
5. modem status (0x0, IER.EDSSI): an MSR delta bit is set; cleared by reading MSR;
6. busy detect (0x7, not maskable), only with `busy_detect=True`: LCR was
   written while the UART was busy (USR.BUSY: the TX FIFO holds data); the
   write is ignored; cleared by reading USR.

`busy_detect` defaults to False: the model is then a DW UART configured with
UART_16550_COMPATIBLE (LCR always writable, no busy detect), and the guest
device carries "snps,uart-16550-compatible".  That is not a shortcut: Linux
6.12's 8250_dw installs `dw8250_handle_irq` for every DW UART not declared
16550-compatible, and that handler dereferences the OF/ACPI match data, which
a device bound by platform name (the descriptor's PLATFORM_NAME, or a
driver_override) does not have: the first interrupt oopses (seen with
6.12.117: NULL pointer dereference at dw8250_handle_irq+0x39).  Later kernels
skip the handler without match data, which leaves a busy-detect interrupt
uncleared.  Either way the 16550-compatible configuration is the one a stock
kernel drives correctly through the bridge.

Transmission takes no line time: the TX FIFO drains into the host port one
event-loop turn after the first byte is written (`TX_DRAIN_DELAY`); USR.BUSY,
LSR.THRE/TEMT show it in between.  MCR.LOOP sends it to the receiver instead
and loops the modem lines (CTS=RTS, DSR=DTR, RI=OUT1, DCD=OUT2).  Outside
loopback CTS, DSR and DCD are asserted, RI is not, and they never change.

Reception: host bytes enter the RX FIFO only while MCR.RTS is set (RTS/CTS
flow control: Linux raises RTS when the tty is opened), not in loopback, and
only as many as there is room for; the rest wait in the port.
"""

from __future__ import annotations

from collections import deque

from vfu_platform.backends.guest import Bind, GuestDevice, GuestIrq, GuestRegion, PropertyValue, Trigger
from vfu_platform.backends.sim.device import Deferred, RegisterRegion
from vfu_platform.backends.sim.uart_port import LineError, UartDevice

REGS_SIZE = 0x100
FIFO_DEPTH = 64
#: default input clock (descriptor property "clock-frequency"): the classic 1.8432 MHz
CLOCK_HZ = 1_843_200

RX_TIMEOUT = 0.001
TX_DRAIN_DELAY = 0.0

REG_RBR = 0x00  # THR on write, DLL with DLAB
REG_IER = 0x04  # DLH with DLAB
REG_IIR = 0x08  # FCR on write
REG_LCR = 0x0C
REG_MCR = 0x10
REG_LSR = 0x14
REG_MSR = 0x18
REG_SCR = 0x1C
REG_USR = 0x7C
REG_TFL = 0x80
REG_RFL = 0x84
REG_CPR = 0xF4
REG_UCV = 0xF8
REG_CTR = 0xFC

IER_ERBFI = 1 << 0
IER_ETBEI = 1 << 1
IER_ELSI = 1 << 2
IER_EDSSI = 1 << 3

IIR_NO_INT = 0x01
IIR_MSI = 0x00
IIR_THRI = 0x02
IIR_RDI = 0x04
IIR_RLSI = 0x06
IIR_BUSY = 0x07
IIR_TIMEOUT = 0x0C
IIR_FIFO_ENABLED = 0xC0

FCR_FIFOE = 1 << 0
FCR_RFIFOR = 1 << 1
FCR_XFIFOR = 1 << 2

LCR_BC = 1 << 6
LCR_DLAB = 1 << 7

MCR_DTR = 1 << 0
MCR_RTS = 1 << 1
MCR_OUT1 = 1 << 2
MCR_OUT2 = 1 << 3
MCR_LOOP = 1 << 4

LSR_DR = 1 << 0
LSR_OE = 1 << 1
LSR_PE = 1 << 2
LSR_FE = 1 << 3
LSR_BI = 1 << 4
LSR_THRE = 1 << 5
LSR_TEMT = 1 << 6
LSR_RFE = 1 << 7

MSR_DCTS = 1 << 0
MSR_DDSR = 1 << 1
MSR_TERI = 1 << 2
MSR_DDCD = 1 << 3
MSR_CTS = 1 << 4
MSR_DSR = 1 << 5
MSR_RI = 1 << 6
MSR_DCD = 1 << 7

USR_BUSY = 1 << 0
USR_TFNF = 1 << 1
USR_TFE = 1 << 2
USR_RFNE = 1 << 3
USR_RFF = 1 << 4

CPR_APB_32BIT = 0x2
CPR_ADDITIONAL_FEATURES = 1 << 8
CPR_FIFO_STAT = 1 << 10
CPR_ENCODED_PARAMS = 1 << 12
CPR = CPR_APB_32BIT | CPR_ADDITIONAL_FEATURES | CPR_FIFO_STAT | CPR_ENCODED_PARAMS | (FIFO_DEPTH // 16) << 16
UCV = 0x3430322A  # "402*": component version 4.02a
CTR = 0x44570110  # "DW" + component type 0x0110

#: per-character error bits as LSR reports them
_LSR_ERRORS = {LineError.FRAMING: LSR_FE, LineError.PARITY: LSR_PE, LineError.BREAK: LSR_BI}


class DwApbUartDevice(UartDevice):
    """DesignWare APB UART; see the module docstring.

    Options: `port` (pty, pty:LINK, unix:PATH), `clock`, `busy_detect`.
    """

    name = "dw-apb-uart"
    compatible = ("snps,dw-apb-uart",)
    #: the vfu-platform bridge with a guest descriptor (docs/guest-descriptor.md)
    pci_vendor, pci_device, pci_class = 0x1234, 0x5646, 0x088000
    irq_regions = frozenset({0})

    def __init__(self, *, port: str = "pty", clock: int = CLOCK_HZ, busy_detect: bool = False) -> None:
        if clock <= 0:
            raise ValueError(f"dw-apb-uart: clock must be positive, not {clock}")
        super().__init__(port)
        self.clock = clock
        self.busy_detect = busy_detect
        self.add_region(RegisterRegion(REGS_SIZE, self._read, self._write, name="dw-apb-uart-regs"))
        self.irq = self.add_level_irq("uart")
        self.rx_fifo: deque[tuple[int, int]] = deque()  # (character, LSR error bits)
        self.tx_fifo: deque[int] = deque()
        self._rx_timer: Deferred | None = None
        self._tx_timer: Deferred | None = None
        self.on_reset()

    def guest_devices(self) -> tuple[GuestDevice, ...]:
        properties: list[tuple[str, PropertyValue]] = [
            ("clock-frequency", self.clock),
            ("reg-shift", 2),
            ("reg-io-width", 4),
        ]
        if not self.busy_detect:
            properties.append(("snps,uart-16550-compatible", True))
        return (
            GuestDevice(
                name="dw-apb-uart",
                bind=Bind.PLATFORM_NAME,
                compatible=self.compatible,
                regions=(GuestRegion(0, size=REGS_SIZE),),
                irqs=(GuestIrq(self.irq, Trigger.LEVEL_HIGH),),
                properties=tuple(properties),
            ),
        )

    def on_reset(self) -> None:
        self.rx_fifo.clear()
        self.tx_fifo.clear()
        self.dll = 0
        self.dlh = 0
        self.ier = 0
        self.fcr = 0
        self.lcr = 0
        self.mcr = 0
        self.scr = 0
        self.lsr_errors = 0  # latched OE / PE / FE / BI, cleared by reading LSR
        self.msr_delta = 0
        self.thre_pending = False
        self.timeout_pending = False
        self.busy_pending = False
        self._rx_timer = None  # SimDevice.reset cancelled the timers
        self._tx_timer = None
        self._update_irq()
        self._update_rx_flow()

    # ---- derived state ------------------------------------------------------

    @property
    def fifo_enabled(self) -> bool:
        return bool(self.fcr & FCR_FIFOE)

    @property
    def fifo_depth(self) -> int:
        return FIFO_DEPTH if self.fifo_enabled else 1

    @property
    def rx_trigger(self) -> int:
        if not self.fifo_enabled:
            return 1
        return (1, FIFO_DEPTH // 4, FIFO_DEPTH // 2, FIFO_DEPTH - 2)[self.fcr >> 6 & 3]

    @property
    def word_mask(self) -> int:
        return (1 << (5 + (self.lcr & 3))) - 1

    @property
    def divisor(self) -> int:
        return self.dlh << 8 | self.dll

    @property
    def baud(self) -> float:
        return self.clock / (16 * self.divisor) if self.divisor else 0.0

    @property
    def busy(self) -> bool:
        return bool(self.tx_fifo)

    def _modem_status(self) -> int:
        """MSR's upper nibble (the line states)."""
        if self.mcr & MCR_LOOP:
            return (
                (MSR_CTS if self.mcr & MCR_RTS else 0)
                | (MSR_DSR if self.mcr & MCR_DTR else 0)
                | (MSR_RI if self.mcr & MCR_OUT1 else 0)
                | (MSR_DCD if self.mcr & MCR_OUT2 else 0)
            )
        return MSR_CTS | MSR_DSR | MSR_DCD

    def interrupt_id(self) -> int:
        """IIR[3:0]: the highest-priority pending interrupt (IIR_NO_INT when none)."""
        ier = self.ier
        if ier & IER_ELSI and self.lsr_errors:
            return IIR_RLSI
        if ier & IER_ERBFI and len(self.rx_fifo) >= self.rx_trigger:
            return IIR_RDI
        if ier & IER_ERBFI and self.timeout_pending:
            return IIR_TIMEOUT
        if ier & IER_ETBEI and self.thre_pending:
            return IIR_THRI
        if ier & IER_EDSSI and self.msr_delta:
            return IIR_MSI
        if self.busy_pending:
            return IIR_BUSY
        return IIR_NO_INT

    def _update_irq(self) -> None:
        self.set_line(self.irq, self.interrupt_id() != IIR_NO_INT)

    def _line_status(self) -> int:
        lsr = self.lsr_errors
        if self.rx_fifo:
            lsr |= LSR_DR
        if not self.tx_fifo:
            lsr |= LSR_THRE | LSR_TEMT
        if self.fifo_enabled and any(errors for _, errors in self.rx_fifo):
            lsr |= LSR_RFE
        return lsr

    # ---- receive ------------------------------------------------------------

    def _rx_room(self) -> int:
        if self.mcr & (MCR_RTS | MCR_LOOP) != MCR_RTS:
            return 0
        return max(0, self.fifo_depth - len(self.rx_fifo))

    def _receive(self, data: bytes, errors: LineError = LineError.NONE) -> int:
        bits = 0
        for error, lsr_bit in _LSR_ERRORS.items():
            if errors & error:
                bits |= lsr_bit
        mask = self.word_mask
        stored = 0
        for byte in data:
            if len(self.rx_fifo) >= self.fifo_depth:
                self.lsr_errors |= LSR_OE  # the character in the shift register is lost
                self.counters.bump("dw-apb-uart.rx_overruns")
                continue
            self.rx_fifo.append((byte & mask, bits))
            stored += 1
            if len(self.rx_fifo) == 1:
                self.lsr_errors |= bits  # it is at the head of the FIFO now
        if data:
            self.timeout_pending = False
            self._restart_rx_timeout()
        self._update_irq()
        return stored

    def _restart_rx_timeout(self) -> None:
        if self._rx_timer is not None:
            self._rx_timer.cancel()
            self._rx_timer = None
        if self.rx_fifo and self.fifo_enabled:
            self._rx_timer = self.defer(RX_TIMEOUT, self._rx_timeout)

    def _rx_timeout(self) -> None:
        self._rx_timer = None
        if self.rx_fifo and self.fifo_enabled:
            self.timeout_pending = True
            self._update_irq()

    def _read_rbr(self) -> int:
        if not self.rx_fifo:
            return 0
        character, _ = self.rx_fifo.popleft()
        if self.rx_fifo:
            self.lsr_errors |= self.rx_fifo[0][1]  # the next one's errors show now
        self.timeout_pending = False
        self._restart_rx_timeout()
        self._update_irq()
        self._update_rx_flow()
        return character

    def _reset_rx_fifo(self) -> None:
        self.rx_fifo.clear()
        self.timeout_pending = False
        self.lsr_errors &= LSR_OE
        self._restart_rx_timeout()

    # ---- transmit -----------------------------------------------------------

    def _write_thr(self, value: int) -> None:
        self.thre_pending = False
        if len(self.tx_fifo) >= self.fifo_depth:
            self.counters.bump("dw-apb-uart.tx_overflows")
        else:
            self.tx_fifo.append(value & self.word_mask)
            if self._tx_timer is None:
                self._tx_timer = self.defer(TX_DRAIN_DELAY, self._drain)
        self._update_irq()

    def _drain(self) -> None:
        self._tx_timer = None
        if not self.tx_fifo:
            return
        data = bytes(self.tx_fifo)
        self.tx_fifo.clear()
        self.counters.bump("dw-apb-uart.tx_bytes", len(data))
        self.thre_pending = True
        if self.mcr & MCR_LOOP:
            self._receive(data)
        else:
            self.port.write(data)
        self._update_irq()

    def _reset_tx_fifo(self) -> None:
        if self.tx_fifo:
            self.tx_fifo.clear()
            self.thre_pending = True
        if self._tx_timer is not None:
            self._tx_timer.cancel()
            self._tx_timer = None

    # ---- registers ----------------------------------------------------------

    def _read(self, offset: int, size: int) -> int:
        if size == 8:
            return self._read_word(offset) | self._read_word(offset + 4) << 32
        shift = (offset & 3) * 8
        if shift:  # upper bytes: only the 32-bit ID/level registers have any, none has side effects
            word = offset & ~3
            return self._read_word(word) >> shift if word >= REG_USR + 4 else 0
        return self._read_word(offset)

    def _read_word(self, offset: int) -> int:
        dlab = self.lcr & LCR_DLAB
        if offset == REG_RBR:
            return self.dll if dlab else self._read_rbr()
        if offset == REG_IER:
            return self.dlh if dlab else self.ier
        if offset == REG_IIR:
            ident = self.interrupt_id()
            if ident == IIR_THRI:
                self.thre_pending = False
                self._update_irq()
            return ident | (IIR_FIFO_ENABLED if self.fifo_enabled else 0)
        if offset == REG_LCR:
            return self.lcr
        if offset == REG_MCR:
            return self.mcr
        if offset == REG_LSR:
            lsr = self._line_status()
            if self.lsr_errors:
                self.lsr_errors = 0
                self._update_irq()
            return lsr
        if offset == REG_MSR:
            msr = self._modem_status() | self.msr_delta
            if self.msr_delta:
                self.msr_delta = 0
                self._update_irq()
            return msr
        if offset == REG_SCR:
            return self.scr
        if offset == REG_USR:
            usr = (USR_BUSY if self.busy else 0) | (0 if self.tx_fifo else USR_TFE)
            usr |= USR_TFNF if len(self.tx_fifo) < self.fifo_depth else 0
            usr |= USR_RFNE if self.rx_fifo else 0
            usr |= USR_RFF if len(self.rx_fifo) >= self.fifo_depth else 0
            if self.busy_pending:
                self.busy_pending = False
                self._update_irq()
            return usr
        if offset == REG_TFL:
            return len(self.tx_fifo)
        if offset == REG_RFL:
            return len(self.rx_fifo)
        if offset == REG_CPR:
            return CPR
        if offset == REG_UCV:
            return UCV
        if offset == REG_CTR:
            return CTR
        return 0

    def _write(self, offset: int, size: int, value: int) -> None:
        if size == 8:
            self._write_word(offset, value & 0xFF)
            self._write_word(offset + 4, (value >> 32) & 0xFF)
        elif offset & 3 == 0:  # the upper bytes of these 8-bit registers are reserved
            self._write_word(offset, value & 0xFF)

    def _write_word(self, offset: int, value: int) -> None:
        dlab = self.lcr & LCR_DLAB
        if offset == REG_RBR:
            if dlab:
                self.dll = value
            else:
                self._write_thr(value)
        elif offset == REG_IER:
            if dlab:
                self.dlh = value
            else:
                self._write_ier(value & 0x0F)
        elif offset == REG_IIR:
            self._write_fcr(value)
        elif offset == REG_LCR:
            self._write_lcr(value)
        elif offset == REG_MCR:
            self._write_mcr(value & 0x1F)
        elif offset == REG_SCR:
            self.scr = value

    def _write_ier(self, value: int) -> None:
        turned_on = value & ~self.ier
        self.ier = value
        if turned_on & IER_ETBEI and not self.tx_fifo:
            self.thre_pending = True
        if not value & IER_ETBEI:
            self.thre_pending = False
        self._update_irq()

    def _write_fcr(self, value: int) -> None:
        if (value ^ self.fcr) & FCR_FIFOE:
            value |= FCR_RFIFOR | FCR_XFIFOR  # changing FIFOE empties both FIFOs
        self.fcr = value & ~(FCR_RFIFOR | FCR_XFIFOR)  # the reset bits clear themselves
        if value & FCR_RFIFOR:
            self._reset_rx_fifo()
        if value & FCR_XFIFOR:
            self._reset_tx_fifo()
        self._update_irq()
        self._update_rx_flow()

    def _write_lcr(self, value: int) -> None:
        if self.busy_detect and self.busy:
            self.busy_pending = True  # the write is ignored
            self.counters.bump("dw-apb-uart.busy_detect")
        else:
            self.lcr = value
        self._update_irq()

    def _write_mcr(self, value: int) -> None:
        before = self._modem_status()
        self.mcr = value
        after = self._modem_status()
        changed = before ^ after
        delta = 0
        delta |= MSR_DCTS if changed & MSR_CTS else 0
        delta |= MSR_DDSR if changed & MSR_DSR else 0
        delta |= MSR_DDCD if changed & MSR_DCD else 0
        delta |= MSR_TERI if before & MSR_RI and not after & MSR_RI else 0
        self.msr_delta |= delta
        self._update_irq()
        self._update_rx_flow()

    def status(self) -> dict[str, object]:
        snapshot = super().status()
        snapshot["registers"] = {
            "ier": self.ier,
            "iir": self.interrupt_id(),
            "fcr": self.fcr,
            "lcr": self.lcr,
            "mcr": self.mcr,
            "lsr": self._line_status(),
            "divisor": self.divisor,
            "baud": round(self.baud),
            "rx_level": len(self.rx_fifo),
            "tx_level": len(self.tx_fifo),
        }
        return snapshot
