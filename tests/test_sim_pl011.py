# SPDX-License-Identifier: BSD-3-Clause
"""The PL011 model: registers, FIFOs, interrupts, and its host side (pty, unix socket).

In-process tests use a real pty / unix socket and a virtual clock (uart_doubles);
the last section runs the model in a real server process behind the bridge and
drives it with `vfu_platform.client`, the host side through the real pty / socket.
"""
from __future__ import annotations

import os
import socket
import time
import tty
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from vfu_platform.testing import ProcessServer, install_intx, intx_unmask, wait_until
from uart_doubles import Wired
from vfu_platform import vfio_abi
from vfu_platform.backends.guest import Bind, Trigger
from vfu_platform.backends.sim import pl011
from vfu_platform.backends.sim.pl011 import Pl011Device
from vfu_platform.backends.sim.registry import create_model
from vfu_platform.backends.sim.uart_port import BACKLOG_LIMIT, HostPortError, LineError
from vfu_platform.client import VfioUserClient

UARTEN, TXE, RXE, RTS, LBE = pl011.CR_UARTEN, pl011.CR_TXE, pl011.CR_RXE, pl011.CR_RTS, pl011.CR_LBE
RUN = UARTEN | TXE | RXE | RTS  # what Linux's driver has set once the tty is open
DR, FR, CR, LCR_H, IFLS = pl011.REG_DR, pl011.REG_FR, pl011.REG_CR, pl011.REG_LCR_H, pl011.REG_IFLS
IMSC, RIS, MIS, ICR = pl011.REG_IMSC, pl011.REG_RIS, pl011.REG_MIS, pl011.REG_ICR
FEN = pl011.LCRH_FEN
WLEN8 = 3 << 5


@pytest.fixture
def uart() -> Iterator[Wired]:
    u = Wired(Pl011Device())
    yield u
    u.close()


def running(u: Wired, fifo: bool = True, ifls: int = pl011.IFLS_RESET) -> Wired:
    """Set up as Linux's startup + set_termios does: FIFOs, 8 bits, enabled, RTS."""
    u.w(IFLS, ifls)
    u.w(LCR_H, WLEN8 | (FEN if fifo else 0))
    u.w(CR, RUN)
    return u


# ---- description ------------------------------------------------------------


def test_description_and_guest_device() -> None:
    dev = Pl011Device(clock=48_000_000)
    try:
        (regs,) = dev.regions()
        assert (regs.size, regs.mmappable) == (0x1000, False)
        (irq,) = dev.irqs()
        assert irq.automasked
        assert dev.device_flags & vfio_abi.DEVICE_FLAGS_AMBA
        (guest,) = dev.guest_devices()
        assert guest.name == "pl011" and guest.bind is Bind.AMBA
        assert guest.amba_id == 0x00341011
        assert guest.compatible == ("arm,pl011", "arm,primecell")
        assert guest.regions[0].region == 0 and guest.regions[0].size == 0x1000
        assert guest.irqs[0].irq == 0 and guest.irqs[0].trigger is Trigger.LEVEL_HIGH
        assert guest.properties == (("clock-frequency", 48_000_000),)
    finally:
        dev.close()


def test_primecell_ids_agree_with_the_declared_amba_id(uart: Wired) -> None:
    ids = [uart.r(offset) for offset in range(0xFE0, 0x1000, 4)]
    assert ids == [0x11, 0x10, 0x34, 0x00, 0x0D, 0xF0, 0x05, 0xB1]
    periphid = ids[0] | ids[1] << 8 | ids[2] << 16 | ids[3] << 24
    assert periphid == uart.dev.guest_devices()[0].amba_id
    assert periphid & 0x000FFFFF == 0x00041011  # Linux's pl011 amba_id under its mask
    assert (periphid >> 20) & 0xF >= 3  # Linux: revision >= 3 means 32-entry FIFOs


def test_reset_values(uart: Wired) -> None:
    assert uart.r(FR) == pl011.FR_TXFE | pl011.FR_RXFE | pl011.FR_CTS | pl011.FR_DSR | pl011.FR_DCD
    assert uart.r(CR) == 0x0300
    assert uart.r(IFLS) == 0x12
    for offset in (pl011.REG_RSR, pl011.REG_ILPR, pl011.REG_IBRD, pl011.REG_FBRD, LCR_H, IMSC, RIS, MIS, pl011.REG_DMACR):
        assert uart.r(offset) == 0, hex(offset)
    assert not uart.line


def test_register_widths_and_16_bit_access(uart: Wired) -> None:
    uart.w(pl011.REG_IBRD, 0xFFFF_FFFF)
    uart.w(pl011.REG_FBRD, 0xFFFF_FFFF)
    uart.w(IMSC, 0xFFFF_FFFF)
    uart.w(IFLS, 0xFF)
    assert (uart.r(pl011.REG_IBRD), uart.r(pl011.REG_FBRD)) == (0xFFFF, 0x3F)
    assert uart.r(IMSC) == 0x7FF and uart.r(IFLS) == 0x3F
    uart.w(pl011.REG_IBRD, 13, size=2)  # Linux's vendor_arm uses readw/writew
    uart.w(pl011.REG_FBRD, 1, size=2)
    assert uart.r(pl011.REG_IBRD, size=2) == 13
    assert uart.dev.baud == pytest.approx(24_000_000 / (16 * (13 + 1 / 64)))
    assert uart.r(0x008) == 0 and uart.r(0x04C) == 0 and uart.r(0xFDC) == 0


# ---- transmit ---------------------------------------------------------------


def test_transmit_reaches_the_pty_one_loop_turn_later(uart: Wired) -> None:
    running(uart)
    for byte in b"hello":
        uart.w(DR, byte)
    fr = uart.r(FR)
    assert fr & pl011.FR_BUSY and not fr & pl011.FR_TXFE
    assert uart.dev.host_read() == b""
    uart.sched.advance(0)
    assert uart.host_read_all(5) == b"hello"
    fr = uart.r(FR)
    assert fr & pl011.FR_TXFE and not fr & pl011.FR_BUSY


@pytest.mark.parametrize("fifo, depth", [(True, 32), (False, 1)])
def test_tx_fifo_depth_and_overflow(uart: Wired, fifo: bool, depth: int) -> None:
    running(uart, fifo=fifo)
    for i in range(depth - 1):
        uart.w(DR, 0x41 + i % 26)
        assert not uart.r(FR) & pl011.FR_TXFF
    uart.w(DR, 0x30)
    assert uart.r(FR) & pl011.FR_TXFF
    uart.w(DR, 0x31)  # lost: the FIFO is full
    uart.sched.advance(0)
    sent = uart.host_read_all(depth)
    assert len(sent) == depth and sent.endswith(b"0")
    assert uart.dev.counters.values["pl011.tx_overflows"] == 1


def test_disabled_transmitter_keeps_its_fifo(uart: Wired) -> None:
    uart.w(LCR_H, WLEN8 | FEN)
    uart.w(CR, RXE)  # UARTEN off
    uart.w(DR, ord("x"))
    uart.sched.advance(1)
    assert uart.r(FR) & pl011.FR_BUSY
    uart.w(CR, UARTEN)  # TXE off
    uart.sched.advance(1)
    assert uart.r(FR) & pl011.FR_BUSY
    uart.w(CR, UARTEN | TXE)
    uart.sched.advance(0)
    assert uart.host_read_all(1) == b"x"


def test_word_length_masks_data(uart: Wired) -> None:
    running(uart)
    uart.w(LCR_H, FEN | (2 << 5))  # 7 bits
    uart.w(DR, 0xC1)
    uart.sched.advance(0)
    assert uart.host_read_all(1) == b"\x41"


def test_tx_interrupt_when_the_fifo_drains(uart: Wired) -> None:
    running(uart)  # TX trigger: at or below 16
    uart.w(IMSC, pl011.INT_TX)
    assert not uart.r(RIS) & pl011.INT_TX  # enabling alone does not set it
    for i in range(20):  # as Linux: write until TXFF or done, then enable TXIM
        uart.w(DR, 0x61 + i % 26)
    assert not uart.line and uart.signals() == 0
    uart.sched.advance(0)
    assert uart.r(RIS) & pl011.INT_TX and uart.r(MIS) == pl011.INT_TX
    assert uart.line and uart.signals() == 1
    for i in range(16):  # the interrupt handler refills up to the trigger: TXIS stays
        uart.w(DR, 0x30)
    assert uart.r(RIS) & pl011.INT_TX
    uart.w(DR, 0x31)  # 17 > 16: above the level, TXIS clears
    assert not uart.r(RIS) & pl011.INT_TX and not uart.line
    uart.eoi()
    uart.sched.advance(0)
    assert uart.line and uart.signals() == 1
    uart.w(ICR, pl011.INT_TX)
    assert uart.r(RIS) == 0 and not uart.line
    assert len(uart.host_read_all(37)) == 37


# ---- receive ----------------------------------------------------------------


def test_host_bytes_reach_the_fifo_with_flow_control(uart: Wired) -> None:
    running(uart)
    data = bytes(range(256)) * 2
    uart.dev.host_write(data)
    uart.sched.settle(lambda: len(uart.dev.rx_fifo) == 32)
    uart.sched.poll(0.05)
    assert len(uart.dev.rx_fifo) == 32 and uart.r(FR) & pl011.FR_RXFF  # the rest waits in the pty
    assert uart.dev.counters.values.get("pl011.rx_overruns", 0) == 0
    got = bytearray()
    while len(got) < len(data):
        uart.sched.settle(lambda: not uart.r(FR) & pl011.FR_RXFE)
        while not uart.r(FR) & pl011.FR_RXFE:
            got.append(uart.r(DR) & 0xFF)
    assert bytes(got) == data
    assert uart.dev.counters.values.get("pl011.rx_overruns", 0) == 0
    assert uart.r(pl011.REG_RSR) == 0


@pytest.mark.parametrize("cr", [UARTEN | RXE, UARTEN | RTS, RXE | RTS, RUN | LBE])
def test_receiver_takes_nothing_unless_enabled_with_rts(uart: Wired, cr: int) -> None:
    uart.w(LCR_H, WLEN8 | FEN)
    uart.w(CR, cr)
    uart.dev.host_write(b"wait")
    time.sleep(0.05)
    uart.sched.poll(0.05)
    assert not uart.dev.rx_fifo
    uart.w(CR, RUN)
    uart.sched.settle(lambda: len(uart.dev.rx_fifo) == 4)
    assert bytes(e & 0xFF for e in uart.dev.rx_fifo) == b"wait"


def test_rx_interrupt_at_the_trigger_level(uart: Wired) -> None:
    running(uart, ifls=0x08)  # RXIFLSEL 1: 1/4 = 8
    uart.w(IMSC, pl011.INT_RX)
    uart.dev.line_receive(b"1234567")
    assert not uart.r(RIS) & pl011.INT_RX and not uart.line
    uart.dev.line_receive(b"8")
    assert uart.r(RIS) & pl011.INT_RX and uart.line and uart.signals() == 1
    assert uart.r(DR) == ord("1")  # 7 left: below the level
    assert not uart.r(RIS) & pl011.INT_RX and not uart.line
    uart.dev.line_receive(b"9")
    assert uart.r(RIS) & pl011.INT_RX
    uart.w(ICR, pl011.INT_RX)  # cleared while at the level: it stays clear ...
    uart.dev.line_receive(b"A")
    assert not uart.r(RIS) & pl011.INT_RX  # ... until the level is crossed again


def test_rx_interrupt_without_fifo_is_per_character(uart: Wired) -> None:
    running(uart, fifo=False)
    uart.w(IMSC, pl011.INT_RX)
    uart.dev.line_receive(b"a")
    assert uart.r(RIS) & pl011.INT_RX and uart.r(FR) & pl011.FR_RXFF
    assert uart.dev.line_receive(b"b") == 0  # one entry: overrun
    assert uart.r(RIS) & pl011.INT_OE
    assert uart.r(DR) == ord("a") | pl011.DR_OE
    assert not uart.r(RIS) & pl011.INT_RX


def test_rx_timeout(uart: Wired) -> None:
    running(uart)
    uart.w(IMSC, pl011.INT_RT | pl011.INT_RX)
    uart.dev.line_receive(b"ab")
    uart.sched.advance(pl011.RX_TIMEOUT * 0.9)
    uart.dev.line_receive(b"c")  # new data restarts the timeout
    uart.sched.advance(pl011.RX_TIMEOUT * 0.9)
    assert not uart.r(RIS) & pl011.INT_RT and not uart.line
    uart.sched.advance(pl011.RX_TIMEOUT * 0.2)
    assert uart.r(RIS) == pl011.INT_RT and uart.line and uart.signals() == 1
    assert uart.r(DR) == ord("a")
    assert uart.r(RIS) & pl011.INT_RT  # still data waiting
    uart.r(DR)
    uart.r(DR)
    assert uart.r(RIS) == 0 and not uart.line  # read empty: cleared
    uart.dev.line_receive(b"d")
    uart.sched.advance(pl011.RX_TIMEOUT)
    assert uart.r(RIS) & pl011.INT_RT
    uart.w(ICR, pl011.INT_RT)
    assert not uart.r(RIS) & pl011.INT_RT


def test_receive_errors_in_dr_rsr_and_ris(uart: Wired) -> None:
    running(uart)
    uart.dev.line_receive(b"f", LineError.FRAMING)
    uart.dev.line_receive(b"p", LineError.PARITY)
    uart.dev.line_break()
    uart.dev.line_receive(b"ok")
    assert uart.r(RIS) == pl011.INT_FE | pl011.INT_PE | pl011.INT_BE
    assert uart.r(DR) == ord("f") | pl011.DR_FE
    assert uart.r(pl011.REG_RSR) == 0x1
    assert uart.r(DR) == ord("p") | pl011.DR_PE
    assert uart.r(pl011.REG_RSR) == 0x2
    assert uart.r(DR) == pl011.DR_BE
    assert uart.r(pl011.REG_RSR) == 0x4
    uart.w(pl011.REG_RSR, 0)  # ECR: any write clears
    assert uart.r(pl011.REG_RSR) == 0
    assert uart.r(DR) == ord("o")
    uart.w(ICR, 0x7FF)
    assert uart.r(RIS) == 0


def test_overrun_marks_the_newest_character(uart: Wired) -> None:
    running(uart)
    uart.w(IMSC, pl011.INT_OE)
    assert uart.dev.line_receive(bytes(range(0x40, 0x40 + 33))) == 32
    assert uart.r(RIS) & pl011.INT_OE and uart.line
    assert uart.r(pl011.REG_RSR) & pl011.RSR_OE
    values = [uart.r(DR) for _ in range(32)]
    assert values[:31] == list(range(0x40, 0x40 + 31))
    assert values[31] == (0x40 + 31) | pl011.DR_OE


def test_loopback(uart: Wired) -> None:
    running(uart)
    uart.w(CR, RUN | LBE)
    uart.w(DR, ord("L"))
    uart.sched.advance(0)
    assert uart.r(DR) == ord("L")
    assert uart.host_read_all(1, timeout=0.1) == b""
    uart.w(CR, UARTEN | LBE | pl011.CR_DTR)  # modem lines follow the outputs
    assert uart.r(FR) & 0x107 == pl011.FR_DSR
    uart.w(CR, UARTEN | LBE | pl011.CR_RTS | pl011.CR_OUT1 | pl011.CR_OUT2)
    assert uart.r(FR) & 0x107 == pl011.FR_CTS | pl011.FR_DCD | pl011.FR_RI


def test_irq_line_is_ris_and_imsc(uart: Wired) -> None:
    running(uart)
    uart.dev.line_receive(b"x", LineError.PARITY)
    assert uart.r(RIS) == pl011.INT_PE and uart.r(MIS) == 0 and not uart.line
    uart.w(IMSC, pl011.INT_PE)
    assert uart.r(MIS) == pl011.INT_PE and uart.line and uart.signals() == 1
    uart.w(IMSC, 0)
    assert not uart.line


def test_reset_restores_power_on_state_and_keeps_the_port(uart: Wired) -> None:
    running(uart)
    uart.w(IMSC, 0x7FF)
    uart.dev.line_receive(b"abc")
    uart.w(DR, 0x41)
    path = uart.dev.pty_path
    uart.dev.reset()
    assert uart.r(CR) == 0x0300 and uart.r(LCR_H) == 0 and uart.r(IMSC) == 0 and uart.r(RIS) == 0
    assert uart.r(FR) & (pl011.FR_RXFE | pl011.FR_TXFE) == pl011.FR_RXFE | pl011.FR_TXFE
    assert uart.dev.pty_path == path and os.path.exists(path)


# ---- host side --------------------------------------------------------------


def test_pty_is_raw_and_usable_by_a_terminal_program(uart: Wired) -> None:
    running(uart)
    fd = os.open(uart.dev.pty_path, os.O_RDWR | os.O_NOCTTY)
    try:
        tty.setraw(fd)
        os.write(fd, b"\r\x03\x7f")  # raw: no CR translation, no signals, no erase
        uart.sched.settle(lambda: len(uart.dev.rx_fifo) == 3)
        assert [uart.r(DR) for _ in range(3)] == [0x0D, 0x03, 0x7F]
        for byte in b"out\n":
            uart.w(DR, byte)
        uart.sched.advance(0)
        got = b""
        deadline = time.monotonic() + 3
        while len(got) < 4 and time.monotonic() < deadline:
            got += os.read(fd, 16)
        assert got == b"out\n"
        assert uart.dev.rx_fifo == type(uart.dev.rx_fifo)()  # nothing echoed back
    finally:
        os.close(fd)


def test_pty_link_option(tmp_path: Path) -> None:
    link = tmp_path / "ttyVFU"
    dev = create_model("pl011", {"port": f"pty:{link}"})
    try:
        assert os.path.realpath(link) == dev.pty_path
        assert dev.port_path == dev.pty_path
    finally:
        dev.close()
    assert not os.path.lexists(link)
    link.write_text("not a link")
    with pytest.raises(HostPortError, match="not a symlink"):
        Pl011Device(port=f"pty:{link}")


def test_bad_port_options() -> None:
    with pytest.raises(ValueError, match="unknown port"):
        Pl011Device(port="tcp:1234")
    with pytest.raises(ValueError, match="needs a path"):
        Pl011Device(port="unix:")


def test_host_bytes_wait_while_detached(uart: Wired) -> None:
    running(uart)
    uart.detach()
    uart.dev.host_write(b"later")
    uart.w(DR, ord("T"))
    time.sleep(0.05)
    assert not uart.dev.rx_fifo and uart.sched.readers == {}
    uart.sched.advance(1)
    assert uart.r(FR) & pl011.FR_BUSY  # time stands still while detached
    uart.reattach()
    uart.sched.settle(lambda: len(uart.dev.rx_fifo) == 5)
    uart.sched.advance(0)
    assert uart.host_read_all(1) == b"T"


def test_output_nobody_reads_is_bounded_and_never_stalls_the_guest(uart: Wired) -> None:
    running(uart)
    total = 0
    while total < BACKLOG_LIMIT + 64 * 1024:  # far more than the pty and the backlog hold
        for _ in range(32):
            uart.w(DR, 0x55)
        uart.sched.advance(0)
        assert uart.r(FR) & pl011.FR_TXFE  # the transmitter always drains
        total += 32
    port = uart.dev.port
    assert port.backlog == BACKLOG_LIMIT
    assert port.counters["tx_dropped"] > 0
    assert port.counters["tx"] + port.backlog + port.counters["tx_dropped"] == total


def test_unix_port_one_client_at_a_time(tmp_path: Path) -> None:
    path = str(tmp_path / "uart.sock")
    u = running(Wired(Pl011Device(port=f"unix:{path}")))
    try:
        assert u.dev.pty_path is None and u.dev.port_path == path
        with pytest.raises(HostPortError):
            u.dev.host_write(b"x")
        first = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        first.connect(path)
        u.sched.settle(lambda: u.dev.port.connected)
        first.sendall(b"one")
        u.sched.settle(lambda: len(u.dev.rx_fifo) == 3)
        for byte in b"to-first":
            u.w(DR, byte)
        u.sched.advance(0)
        first.settimeout(3)
        assert first.recv(64) == b"to-first"
        second = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        second.connect(path)  # waits in the backlog
        second.sendall(b"two")
        u.sched.poll(0.05)
        assert len(u.dev.rx_fifo) == 3
        first.close()
        u.sched.settle(lambda: len(u.dev.rx_fifo) == 6)
        assert bytes(u.r(DR) & 0xFF for _ in range(6)) == b"onetwo"
        for byte in b"to-second":
            u.w(DR, byte)
        u.sched.advance(0)
        second.settimeout(3)
        assert second.recv(64) == b"to-second"
        assert u.dev.port.counters["clients"] == 2
        second.close()
    finally:
        u.close()
    assert not os.path.exists(path)


def test_unix_port_refuses_a_path_in_use(tmp_path: Path) -> None:
    path = str(tmp_path / "busy.sock")
    dev = Pl011Device(port=f"unix:{path}")
    try:
        with pytest.raises(HostPortError, match="busy"):
            Pl011Device(port=f"unix:{path}")
    finally:
        dev.close()


# ---- through a real server --------------------------------------------------

REGS = 0


def setup_like_linux(client: VfioUserClient) -> None:
    client.write32(REGS, IFLS, 0x12)
    client.write32(REGS, LCR_H, WLEN8 | FEN)
    client.write32(REGS, CR, RUN)


def test_served_pl011_talks_to_its_pty(vfu_server: Callable[..., ProcessServer], tmp_path: Path,
                                        vfu_eventfds) -> None:
    link = tmp_path / "ttyPL011"
    server = vfu_server("pl011", extra=["-o", f"port=pty:{link}"])
    assert f"pl011: serial port on {os.path.realpath(link)} (pty)" in server.stderr()
    client = server.connect()
    assert [client.read32(REGS, o) for o in range(0xFE0, 0x1000, 4)] == [0x11, 0x10, 0x34, 0, 0x0D, 0xF0, 0x05, 0xB1]
    assert client.read32(REGS, FR) == 0x97
    setup_like_linux(client)
    (trigger,) = vfu_eventfds(1)
    install_intx(client, trigger)
    host = os.open(link, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        tty.setraw(host)
        for byte in b"guest says hi\n":
            client.write32(REGS, DR, byte)
        got = b""
        deadline = time.monotonic() + 3
        while len(got) < 14 and time.monotonic() < deadline:
            try:
                got += os.read(host, 64)
            except BlockingIOError:
                time.sleep(0.01)
        assert got == b"guest says hi\n"
        client.write32(REGS, IMSC, pl011.INT_RX | pl011.INT_RT)
        os.write(host, b"typed")  # below the RX level: the timeout interrupt delivers it
        trigger.expect_one(what="RX timeout interrupt")
        assert client.read32(REGS, MIS) == pl011.INT_RT
        got = bytes(client.read32(REGS, DR) & 0xFF for _ in range(5))
        assert got == b"typed" and client.read32(REGS, FR) & pl011.FR_RXFE
        assert client.read32(REGS, RIS) == pl011.INT_TX  # RX/RT cleared; TXIS from the output above
        intx_unmask(client)
        trigger.expect_none()
    finally:
        os.close(host)


def test_served_pl011_unix_port_and_tx_interrupt(vfu_server: Callable[..., ProcessServer], tmp_path: Path,
                                                 vfu_eventfds) -> None:
    path = str(tmp_path / "pl011.sock")
    server = vfu_server("pl011", extra=["-o", f"port=unix:{path}"])
    client = server.connect()
    setup_like_linux(client)
    (trigger,) = vfu_eventfds(1)
    install_intx(client, trigger)
    host = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    host.connect(path)
    host.settimeout(3)
    try:
        message = bytes(range(32, 127)) * 3  # more than a FIFO: flow control across refills
        host.sendall(message)
        got = bytearray()
        deadline = time.monotonic() + 5
        while len(got) < len(message) and time.monotonic() < deadline:
            while not client.read32(REGS, FR) & pl011.FR_RXFE:
                got.append(client.read32(REGS, DR) & 0xFF)
        assert bytes(got) == message
        assert client.read32(REGS, pl011.REG_RSR) == 0  # no overrun anywhere
        for byte in b"abc":
            client.write32(REGS, DR, byte)
        client.write32(REGS, IMSC, pl011.INT_TX)
        trigger.expect_one(what="TX interrupt after the FIFO drained")
        assert client.read32(REGS, MIS) == pl011.INT_TX
        assert host.recv(16) == b"abc"
        client.write32(REGS, ICR, pl011.INT_TX)
        wait_until(lambda: client.read32(REGS, RIS) == 0)
    finally:
        host.close()
