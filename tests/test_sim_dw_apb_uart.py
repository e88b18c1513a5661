# SPDX-License-Identifier: BSD-3-Clause
"""The DesignWare APB UART model: 16550A registers, DW extras, IIR priority, host side.

In-process tests use a real pty / unix socket and a virtual clock (uart_doubles);
the last section serves the model from a real server process and drives it with
`vfu_platform.client`, the host end through the real unix socket / pty.
"""
from __future__ import annotations

import os
import re
import socket
import time
import tty
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from vfu_platform.testing import ProcessServer, install_intx, intx_unmask
from uart_doubles import Wired
from vfu_platform.backends.guest import Bind, Trigger
from vfu_platform.backends.sim import dw_apb_uart as dw
from vfu_platform.backends.sim.dw_apb_uart import DwApbUartDevice
from vfu_platform.backends.sim.pl011 import Pl011Device
from vfu_platform.backends.sim.registry import create_model
from vfu_platform.backends.sim.uart_port import LineError
from vfu_platform.client import VfioUserClient

RBR, IER, IIR, LCR, MCR, LSR, MSR, SCR = dw.REG_RBR, dw.REG_IER, dw.REG_IIR, dw.REG_LCR, dw.REG_MCR, dw.REG_LSR, dw.REG_MSR, dw.REG_SCR
FCR = dw.REG_IIR
USR, TFL, RFL = dw.REG_USR, dw.REG_TFL, dw.REG_RFL
FIFO = 0xC0  # IIR bits 7:6 with FIFOs enabled
# what Linux's 8250 set_termios / set_mctrl leave: 8N1, FIFOs with the 1/2 trigger, RTS|DTR|OUT2
FCR_LINUX = dw.FCR_FIFOE | 2 << 6
MCR_OPEN = dw.MCR_DTR | dw.MCR_RTS | dw.MCR_OUT2


@pytest.fixture
def uart() -> Iterator[Wired]:
    u = Wired(DwApbUartDevice())
    yield u
    u.close()


@pytest.fixture
def busy_uart() -> Iterator[Wired]:
    """Configured with busy detect (UART_16550_COMPATIBLE = NO)."""
    u = Wired(DwApbUartDevice(busy_detect=True))
    yield u
    u.close()


def opened(u: Wired, fcr: int = FCR_LINUX) -> Wired:
    u.w(LCR, 0x03)
    u.w(FCR, fcr)
    u.w(MCR, MCR_OPEN)
    return u


def drain(u: Wired) -> None:
    u.sched.advance(0)


# ---- description ------------------------------------------------------------


def test_description_and_guest_device() -> None:
    dev = create_model("dw-apb-uart", {"clock": "3686400"})
    try:
        (regs,) = dev.regions()
        assert regs.size == 0x100 and not regs.mmappable
        (irq,) = dev.irqs()
        assert irq.automasked
        (guest,) = dev.guest_devices()
        assert guest.name == "dw-apb-uart" and guest.bind is Bind.PLATFORM_NAME
        assert guest.regions[0].region == 0 and guest.regions[0].size == 0x100
        assert guest.irqs[0].irq == 0 and guest.irqs[0].trigger is Trigger.LEVEL_HIGH
        # 16550-compatible by default: Linux 6.12's dw8250_handle_irq oopses without match data
        assert dict(guest.properties) == {"clock-frequency": 3686400, "reg-shift": 2, "reg-io-width": 4,
                                          "snps,uart-16550-compatible": True}
        assert DwApbUartDevice.pci_device == 0x5646 and Pl011Device.pci_class == 0x088000
    finally:
        dev.close()


def test_busy_detect_on_is_not_declared_16550_compatible() -> None:
    dev = create_model("dw-apb-uart", {"busy_detect": "true"})
    try:
        assert dev.busy_detect
        assert "snps,uart-16550-compatible" not in dict(dev.guest_devices()[0].properties)
    finally:
        dev.close()


def test_designware_identification(uart: Wired) -> None:
    cpr = uart.r(dw.REG_CPR)
    assert cpr == 0x00041502
    assert ((cpr >> 16) & 0xFF) * 16 == 64  # Linux's DW_UART_CPR_FIFO_SIZE
    assert cpr & 0x3 == 2 and cpr & 1 << 8  # 32-bit APB, ADDITIONAL_FEATURES
    assert not cpr & (1 << 4 | 1 << 5)  # no AFCE, no programmable THRE mode
    ucv = uart.r(dw.REG_UCV)
    assert ucv.to_bytes(4, "big") == b"402*"
    assert uart.r(dw.REG_CTR) == 0x44570110
    assert uart.r(dw.REG_CTR + 2, size=2) == 0x4457  # upper half of a 32-bit register
    uart.w(0xC0, 0xFFFF_FFFF)  # DLF probe: no fractional divisor
    assert uart.r(0xC0) == 0
    uart.w(0xAC, 1)  # TCR probe: no RS485
    assert uart.r(0xAC) == 0


def test_reset_values(uart: Wired) -> None:
    assert uart.r(IER) == 0 and uart.r(IIR) == dw.IIR_NO_INT and uart.r(LCR) == 0 and uart.r(MCR) == 0
    assert uart.r(LSR) == dw.LSR_THRE | dw.LSR_TEMT
    assert uart.r(MSR) == dw.MSR_CTS | dw.MSR_DSR | dw.MSR_DCD
    assert uart.r(USR) == dw.USR_TFNF | dw.USR_TFE
    assert uart.r(TFL) == 0 and uart.r(RFL) == 0 and uart.r(SCR) == 0
    assert not uart.line


def test_dlab_and_scratch(uart: Wired) -> None:
    uart.w(IER, 0x05)
    uart.w(LCR, dw.LCR_DLAB | 0x03)
    uart.w(RBR, 0x01)  # DLL
    uart.w(IER, 0x00)  # DLH
    assert (uart.r(RBR), uart.r(IER)) == (0x01, 0x00)
    assert uart.dev.baud == pytest.approx(115200)
    assert uart.r(TFL) == 0  # DLL writes are not characters
    uart.w(LCR, 0x03)
    assert uart.r(IER) == 0x05  # the real IER is back
    uart.w(IER, 0xFF)
    assert uart.r(IER) == 0x0F  # no PTIME: bits 7:4 read 0
    uart.w(SCR, 0x5A)
    assert uart.r(SCR) == 0x5A


def test_byte_accesses_and_side_effect_free_upper_bytes(uart: Wired) -> None:
    opened(uart)
    uart.dev.line_receive(b"xy")
    assert uart.r(RBR + 1, size=1) == 0 and uart.r(RFL) == 2  # byte 1 of RBR: no pop
    assert uart.r(RBR, size=1) == ord("x")
    uart.w(SCR + 1, 0x77, size=1)  # reserved bits
    uart.w(SCR, 0x12, size=1)
    assert uart.r(SCR) == 0x12


# ---- FIFOs ------------------------------------------------------------------


def test_fcr_enables_64_entry_fifos(uart: Wired) -> None:
    uart.w(LCR, 0x03)
    uart.w(FCR, dw.FCR_FIFOE)
    assert uart.r(IIR) == FIFO | dw.IIR_NO_INT
    for i in range(64):
        uart.w(RBR, i)
    assert uart.r(TFL) == 64 and not uart.r(USR) & dw.USR_TFNF
    uart.w(RBR, 0xEE)  # lost
    assert uart.r(TFL) == 64
    uart.w(FCR, dw.FCR_FIFOE | dw.FCR_XFIFOR)  # TX FIFO reset
    assert uart.r(TFL) == 0 and uart.r(LSR) & dw.LSR_TEMT
    uart.w(FCR, 0)  # 16450 mode: one entry
    assert uart.r(IIR) == dw.IIR_NO_INT
    uart.w(RBR, 1)
    assert not uart.r(USR) & dw.USR_TFNF


def test_changing_fifoe_empties_the_fifos(uart: Wired) -> None:
    opened(uart)
    uart.dev.line_receive(b"abc")
    uart.w(FCR, FCR_LINUX)  # same FIFOE: kept
    assert uart.r(RFL) == 3
    uart.w(FCR, FCR_LINUX | dw.FCR_RFIFOR)
    assert uart.r(RFL) == 0 and not uart.r(LSR) & dw.LSR_DR
    uart.dev.line_receive(b"abc")
    uart.w(FCR, 0)
    assert uart.r(RFL) == 0


def test_transmit_to_the_pty(uart: Wired) -> None:
    opened(uart)
    for byte in b"dw says hi":
        uart.w(RBR, byte)
    assert uart.r(USR) & dw.USR_BUSY and not uart.r(LSR) & dw.LSR_THRE and uart.r(TFL) == 10
    drain(uart)
    assert uart.host_read_all(10) == b"dw says hi"
    assert uart.r(LSR) == dw.LSR_THRE | dw.LSR_TEMT and not uart.r(USR) & dw.USR_BUSY


def test_word_length(uart: Wired) -> None:
    opened(uart)
    uart.w(LCR, 0x00)  # 5 bits
    uart.w(RBR, 0xFF)
    drain(uart)
    assert uart.host_read_all(1) == b"\x1f"


def test_host_bytes_with_flow_control(uart: Wired) -> None:
    opened(uart)
    data = os.urandom(300)
    uart.dev.host_write(data)
    uart.sched.settle(lambda: uart.r(RFL) == 64)
    uart.sched.poll(0.05)
    assert uart.r(RFL) == 64 and uart.r(USR) & dw.USR_RFF
    got = bytearray()
    while len(got) < len(data):
        uart.sched.settle(lambda: bool(uart.r(LSR) & dw.LSR_DR))
        while uart.r(LSR) & dw.LSR_DR:
            got.append(uart.r(RBR))
    assert bytes(got) == data
    assert "dw-apb-uart.rx_overruns" not in uart.dev.counters.values


@pytest.mark.parametrize("mcr", [0, dw.MCR_DTR | dw.MCR_OUT2, MCR_OPEN | dw.MCR_LOOP])
def test_no_host_bytes_without_rts_or_in_loopback(uart: Wired, mcr: int) -> None:
    opened(uart)
    uart.w(MCR, mcr)
    uart.dev.host_write(b"hold")
    time.sleep(0.05)
    uart.sched.poll(0.05)
    assert uart.r(RFL) == 0
    uart.w(MCR, MCR_OPEN)
    uart.sched.settle(lambda: uart.r(RFL) == 4)


# ---- interrupts -------------------------------------------------------------


def test_thre_interrupt(uart: Wired) -> None:
    opened(uart)
    uart.w(IER, dw.IER_ETBEI)  # turned on with THR empty: pending at once
    assert uart.line and uart.signals() == 1
    assert uart.r(IIR) == FIFO | dw.IIR_THRI
    assert uart.r(IIR) == FIFO | dw.IIR_NO_INT and not uart.line  # reading IIR cleared it
    uart.w(IER, dw.IER_ETBEI)  # no rising edge: nothing
    assert uart.r(IIR) == FIFO | dw.IIR_NO_INT
    uart.w(IER, 0)
    uart.w(IER, dw.IER_ETBEI)  # Linux's THRE test toggles it
    assert uart.r(IIR) == FIFO | dw.IIR_THRI
    uart.w(IER, 0)
    uart.w(IER, dw.IER_ETBEI)
    uart.w(RBR, ord("a"))  # writing THR clears it
    assert uart.r(IIR) == FIFO | dw.IIR_NO_INT
    uart.eoi()
    drain(uart)  # the FIFO emptied: pending again
    assert uart.line and uart.signals() == 1 and uart.r(IIR) == FIFO | dw.IIR_THRI
    uart.w(RBR, ord("b"))
    uart.w(IER, 0)
    drain(uart)
    assert uart.r(IIR) == FIFO | dw.IIR_NO_INT  # ETBEI off: no THRE
    assert uart.host_read_all(2) == b"ab"


@pytest.mark.parametrize("trigger, level", [(0, 1), (1, 16), (2, 32), (3, 62)])
def test_rda_at_the_trigger_level(uart: Wired, trigger: int, level: int) -> None:
    opened(uart, fcr=dw.FCR_FIFOE | trigger << 6)
    uart.w(IER, dw.IER_ERBFI)
    uart.dev.line_receive(bytes(level - 1))
    assert uart.r(IIR) == FIFO | dw.IIR_NO_INT
    uart.dev.line_receive(b"!")
    assert uart.r(IIR) == FIFO | dw.IIR_RDI and uart.line
    uart.r(RBR)
    assert uart.r(IIR) & 0x0F != dw.IIR_RDI


def test_rda_without_fifo(uart: Wired) -> None:
    opened(uart, fcr=0)
    uart.w(IER, dw.IER_ERBFI)
    uart.dev.line_receive(b"a")
    assert uart.r(IIR) == dw.IIR_RDI
    assert uart.dev.line_receive(b"b") == 0  # one entry: overrun
    assert uart.r(LSR) & dw.LSR_OE
    assert uart.r(RBR) == ord("a") and uart.r(IIR) == dw.IIR_NO_INT
    uart.sched.advance(1)
    assert uart.r(IIR) == dw.IIR_NO_INT  # no character timeout outside FIFO mode


def test_character_timeout(uart: Wired) -> None:
    opened(uart)
    uart.w(IER, dw.IER_ERBFI)
    uart.dev.line_receive(b"abc")
    uart.sched.advance(dw.RX_TIMEOUT * 0.9)
    assert uart.r(IIR) == FIFO | dw.IIR_NO_INT
    uart.sched.advance(dw.RX_TIMEOUT * 0.2)
    assert uart.r(IIR) == FIFO | dw.IIR_TIMEOUT and uart.line and uart.signals() == 1
    assert uart.r(RBR) == ord("a")  # a read clears it and restarts the timer
    assert uart.r(IIR) == FIFO | dw.IIR_NO_INT and not uart.line
    uart.sched.advance(dw.RX_TIMEOUT * 1.1)
    assert uart.r(IIR) == FIFO | dw.IIR_TIMEOUT
    uart.r(RBR)
    uart.r(RBR)
    uart.sched.advance(1)
    assert uart.r(IIR) == FIFO | dw.IIR_NO_INT  # empty: no timeout


def test_line_status_errors(uart: Wired) -> None:
    opened(uart)
    uart.w(IER, dw.IER_ELSI)
    uart.dev.line_receive(b"ok")
    uart.dev.line_receive(b"p", LineError.PARITY)
    lsr = uart.r(LSR)
    assert lsr == dw.LSR_DR | dw.LSR_THRE | dw.LSR_TEMT | dw.LSR_RFE  # the error is not at the head yet
    assert uart.r(IIR) == FIFO | dw.IIR_NO_INT
    uart.r(RBR)
    uart.r(RBR)  # "p" reaches the head
    assert uart.r(IIR) == FIFO | dw.IIR_RLSI and uart.line
    assert uart.r(LSR) & (dw.LSR_PE | dw.LSR_RFE | dw.LSR_DR) == dw.LSR_PE | dw.LSR_RFE | dw.LSR_DR
    assert not uart.r(LSR) & dw.LSR_PE  # reading LSR cleared it
    assert uart.r(IIR) == FIFO | dw.IIR_NO_INT
    assert uart.r(RBR) == ord("p")
    assert not uart.r(LSR) & dw.LSR_RFE
    uart.dev.line_break()
    assert uart.r(LSR) & dw.LSR_BI and uart.r(RBR) == 0
    uart.dev.line_receive(b"f", LineError.FRAMING)
    assert uart.r(LSR) & dw.LSR_FE


def test_overrun(uart: Wired) -> None:
    opened(uart)
    uart.w(IER, dw.IER_ELSI)
    assert uart.dev.line_receive(bytes(65)) == 64
    assert uart.r(IIR) == FIFO | dw.IIR_RLSI
    assert uart.r(LSR) & dw.LSR_OE
    assert not uart.r(LSR) & dw.LSR_OE and uart.r(RFL) == 64


def test_modem_status_and_loopback(uart: Wired) -> None:
    uart.w(IER, dw.IER_EDSSI)
    uart.w(MCR, dw.MCR_LOOP | 0x0A)  # Linux's autoconfig check: RTS|OUT2 in loopback
    msr = uart.r(MSR)
    assert msr & 0xF0 == dw.MSR_DCD | dw.MSR_CTS
    assert msr & dw.MSR_DDSR  # DSR went from asserted to DTR (off)
    assert uart.r(MSR) & 0x0F == 0  # deltas clear on read
    uart.w(MCR, dw.MCR_LOOP | dw.MCR_OUT1)
    assert uart.r(IIR) == dw.IIR_MSI and uart.line  # modem status interrupt
    assert uart.r(MSR) == dw.MSR_RI | dw.MSR_DCTS | dw.MSR_DDCD
    uart.w(MCR, dw.MCR_LOOP)
    assert uart.r(MSR) == dw.MSR_TERI  # RI's trailing edge
    assert uart.r(IIR) == dw.IIR_NO_INT
    uart.w(LCR, 0x03)
    uart.w(FCR, dw.FCR_FIFOE)
    uart.w(RBR, ord("Q"))
    drain(uart)
    assert uart.r(RBR) == ord("Q")  # looped back
    assert uart.host_read_all(1, timeout=0.1) == b""


def test_iir_priority(busy_uart: Wired) -> None:
    uart = opened(busy_uart)
    uart.w(IER, 0x0F)
    assert uart.r(IIR) == FIFO | dw.IIR_THRI  # from turning ETBEI on; reading consumed it
    uart.dev.line_receive(b"!", LineError.PARITY)  # at the head: line status
    uart.dev.line_receive(bytes(40))  # 41 >= 32: data available
    uart.w(MCR, dw.MCR_LOOP | dw.MCR_RTS | dw.MCR_OUT2)  # DSR drops: a modem delta
    uart.w(RBR, 1)
    uart.w(LCR, 0x1B)  # busy: ignored, busy detect
    drain(uart)  # THRE pending (the looped byte joins the RX FIFO)
    order = []
    while (ident := uart.r(IIR) & 0x0F) != dw.IIR_NO_INT:
        order.append(ident)
        if ident == dw.IIR_RLSI:
            uart.r(LSR)
        elif ident == dw.IIR_RDI:
            while uart.r(RFL) > 1:
                uart.r(RBR)
            uart.sched.advance(dw.RX_TIMEOUT)  # one left below the level: it times out
        elif ident == dw.IIR_TIMEOUT:
            uart.r(RBR)
        elif ident == dw.IIR_MSI:
            uart.r(MSR)
        elif ident == dw.IIR_BUSY:
            uart.r(USR)
        # THRE: reading IIR while it is the source cleared it
        assert len(order) < 10
    assert order == [dw.IIR_RLSI, dw.IIR_RDI, dw.IIR_TIMEOUT, dw.IIR_THRI, dw.IIR_MSI, dw.IIR_BUSY]
    assert not uart.line


def test_busy_detect(busy_uart: Wired) -> None:
    uart = opened(busy_uart)
    uart.w(RBR, ord("z"))
    uart.w(LCR, dw.LCR_DLAB | 0x03)  # busy: ignored
    assert uart.r(LCR) == 0x03
    assert uart.r(IIR) == FIFO | dw.IIR_BUSY and uart.line  # not maskable
    usr = uart.r(USR)
    assert usr & dw.USR_BUSY and uart.r(IIR) == FIFO | dw.IIR_NO_INT
    drain(uart)
    uart.w(LCR, dw.LCR_DLAB | 0x03)  # idle now: taken
    assert uart.r(LCR) == dw.LCR_DLAB | 0x03


def test_16550_compatible_lcr_is_always_writable(uart: Wired) -> None:
    opened(uart)
    uart.w(RBR, ord("z"))
    assert uart.r(USR) & dw.USR_BUSY
    uart.w(LCR, 0x1F)
    assert uart.r(LCR) == 0x1F and uart.r(IIR) == FIFO | dw.IIR_NO_INT


def test_reset(uart: Wired) -> None:
    opened(uart)
    uart.w(IER, 0x0F)
    uart.dev.line_receive(b"abc")
    uart.dev.reset()
    assert uart.r(IER) == 0 and uart.r(LCR) == 0 and uart.r(MCR) == 0 and uart.r(RFL) == 0
    assert uart.r(IIR) == dw.IIR_NO_INT and not uart.line


# ---- host side in process: unix socket ----------------------------------------


def test_unix_port_both_directions(tmp_path: Path) -> None:
    path = str(tmp_path / "dw.sock")
    u = opened(Wired(DwApbUartDevice(port=f"unix:{path}")))
    try:
        for byte in b"early":  # nobody connected: kept in the backlog
            u.w(RBR, byte)
        drain(u)
        host = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        host.connect(path)
        host.settimeout(3)
        u.sched.settle(lambda: u.dev.port.connected)
        assert host.recv(16) == b"early"
        host.sendall(b"ping")
        u.sched.settle(lambda: u.r(RFL) == 4)
        assert bytes(u.r(RBR) for _ in range(4)) == b"ping"
        host.close()
        u.sched.settle(lambda: not u.dev.port.connected)  # EOF noticed: ready for the next client
    finally:
        u.close()


# ---- through a real server --------------------------------------------------

REGS = 0


def open_like_linux(client: VfioUserClient) -> None:
    client.write32(REGS, LCR, dw.LCR_DLAB | 0x03)
    client.write32(REGS, RBR, 1)  # DLL: 115200 at 1.8432 MHz
    client.write32(REGS, IER, 0)
    client.write32(REGS, LCR, 0x03)
    client.write32(REGS, FCR, FCR_LINUX)
    client.write32(REGS, MCR, MCR_OPEN)
    client.read32(REGS, MSR)


def test_served_uart_over_a_unix_port(vfu_server: Callable[..., ProcessServer], tmp_path: Path,
                                      vfu_eventfds) -> None:
    path = str(tmp_path / "dw.sock")
    server = vfu_server("dw-apb-uart", extra=["-o", f"port=unix:{path}"])
    client = server.connect()
    assert client.read32(REGS, dw.REG_CPR) == dw.CPR and client.read32(REGS, dw.REG_CTR) == dw.CTR
    open_like_linux(client)
    (trigger,) = vfu_eventfds(1)
    install_intx(client, trigger)
    host = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    host.connect(path)
    host.settimeout(3)
    try:
        client.write32(REGS, IER, dw.IER_ERBFI | dw.IER_ELSI)
        message = os.urandom(200)  # > 64: needs flow control across several interrupts
        host.sendall(message)
        got = bytearray()
        while len(got) < len(message):
            trigger.expect_one(what=f"RX interrupt after {len(got)} bytes")
            assert client.read32(REGS, IIR) in (FIFO | dw.IIR_RDI, FIFO | dw.IIR_TIMEOUT)
            while client.read32(REGS, LSR) & dw.LSR_DR:  # as serial8250_rx_chars
                got.append(client.read32(REGS, RBR))
            intx_unmask(client)
        assert bytes(got) == message
        assert not client.read32(REGS, LSR) & dw.LSR_OE
        client.write32(REGS, IER, dw.IER_ETBEI)  # start_tx: THRE interrupt at once
        trigger.expect_one(what="THRE interrupt")
        assert client.read32(REGS, IIR) == FIFO | dw.IIR_THRI
        for byte in b"0123456789abcdef":  # tx_loadsz
            client.write32(REGS, RBR, byte)
        intx_unmask(client)
        trigger.expect_one(what="THRE interrupt after the FIFO drained")
        assert host.recv(64) == b"0123456789abcdef"
    finally:
        host.close()


def test_served_uart_announces_and_uses_its_pty(vfu_server: Callable[..., ProcessServer]) -> None:
    server = vfu_server("dw-apb-uart")
    match = re.search(r"dw-apb-uart: serial port on (/dev/pts/\d+) \(pty\)", server.stderr())
    assert match, server.stderr()
    host = os.open(match.group(1), os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        tty.setraw(host)
        client = server.connect()
        open_like_linux(client)
        os.write(host, b"hello")
        deadline = time.monotonic() + 3
        while client.read32(REGS, RFL) < 5:
            assert time.monotonic() < deadline, "host bytes did not arrive"
            time.sleep(0.01)
        assert bytes(client.read32(REGS, RBR) for _ in range(5)) == b"hello"
        client.close()
        server.clients.clear()
        os.write(host, b"later")  # no vfio-user client: they wait in the pty
        time.sleep(0.1)
        client = server.connect()
        open_like_linux(client)
        deadline = time.monotonic() + 3
        while client.read32(REGS, RFL) < 5:
            assert time.monotonic() < deadline, "waiting bytes did not arrive after reconnecting"
            time.sleep(0.01)
        assert bytes(client.read32(REGS, RBR) for _ in range(5)) == b"later"
    finally:
        os.close(host)
