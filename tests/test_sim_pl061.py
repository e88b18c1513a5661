# SPDX-License-Identifier: BSD-3-Clause
"""The PL061 GPIO model against ARM DDI 0190 and what Linux's gpio-pl061 does with it.

Register accesses are bytes, as the Linux driver's readb/writeb; the last tests
serve the model through a real server and drive its inputs through the control socket.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from vfu_platform.testing import ProcessServer, install_intx, intx_unmask
from sim_doubles import take
from vfu_platform import vfio_abi
from vfu_platform.backends.guest import Bind, GuestIrq, GuestRegion, Trigger
from vfu_platform.backends.sim import pl061
from vfu_platform.backends.sim.pl061 import Pl061Device, data_offset
from vfu_platform.backends.sim.primecell import compose_periphid
from vfu_platform.backends.sim.registry import create_model
from vfu_platform.bridge import irq_page
from vfu_platform.server.control import request


class Gpio:
    """A PL061 with its IRQ wired (trigger installed, unmasked)."""

    def __init__(self, dev: Pl061Device | None = None) -> None:
        self.dev = dev or Pl061Device()
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.dev.set_irq_trigger(0, self.fd)
        self.dev.unmask_irq(0)
        self.outputs: list[tuple[int, int]] = []
        self.dev.on_output = lambda values, direction: self.outputs.append((values, direction))

    def rb(self, offset: int) -> int:
        return self.dev.read(0, offset, 1)[0]

    def wb(self, offset: int, value: int) -> None:
        self.dev.write(0, offset, bytes([value]))

    def r32(self, offset: int) -> int:
        return int.from_bytes(self.dev.read(0, offset, 4), "little")

    def w32(self, offset: int, value: int) -> None:
        self.dev.write(0, offset, value.to_bytes(4, "little"))

    def fired(self) -> int:
        return take(self.fd)

    def eoi(self) -> None:
        self.dev.unmask_irq(0)

    # what gpio-pl061 does
    def direction_output(self, line: int, value: int) -> None:
        self.wb(data_offset(1 << line), value << line)
        self.wb(pl061.REG_DIR, self.rb(pl061.REG_DIR) | 1 << line)
        self.wb(data_offset(1 << line), value << line)

    def get_value(self, line: int) -> int:
        return int(bool(self.rb(data_offset(1 << line))))

    def close(self) -> None:
        self.dev.close()
        os.close(self.fd)


@pytest.fixture
def gpio() -> Iterator[Gpio]:
    g = Gpio()
    yield g
    g.close()


# ---- description ------------------------------------------------------------


def test_description() -> None:
    dev = Pl061Device()
    (regs,) = dev.regions()
    assert (regs.size, regs.mmappable) == (0x1000, False)
    (irq,) = dev.irqs()
    assert irq.automasked
    assert dev.device_flags & vfio_abi.DEVICE_FLAGS_AMBA and dev.device_flags & vfio_abi.DEVICE_FLAGS_RESET
    assert dev.irq_regions == frozenset({0})
    assert dev.ack_registers == ()  # on purpose: see the module docstring
    (guest,) = dev.guest_devices()
    assert guest.name == "pl061" and guest.bind is Bind.AMBA and guest.amba_id == 0x00041061
    assert guest.compatible == ("arm,pl061", "arm,primecell")
    assert guest.properties == (("ngpios", 8),)
    assert guest.regions == (GuestRegion(0, size=0x1000),)
    assert guest.irqs == (GuestIrq(0, Trigger.LEVEL_HIGH),)
    dev.close()


def test_id_registers(gpio: Gpio) -> None:
    periph = [gpio.rb(0xFE0 + 4 * k) for k in range(4)]
    assert periph == [0x61, 0x10, 0x04, 0x00]
    assert [gpio.r32(0xFF0 + 4 * k) for k in range(4)] == [0x0D, 0xF0, 0x05, 0xB1]
    assert compose_periphid(periph) == 0x00041061 == gpio.dev.guest_devices()[0].amba_id


def test_reset_values(gpio: Gpio) -> None:
    for offset in (pl061.REG_DIR, pl061.REG_IS, pl061.REG_IBE, pl061.REG_IEV, pl061.REG_IE,
                   pl061.REG_RIS, pl061.REG_MIS, pl061.REG_IC, pl061.REG_AFSEL, data_offset(0xFF)):
        assert gpio.r32(offset) == 0, hex(offset)
    assert gpio.r32(0x424) == 0 and gpio.r32(0x800) == 0 and gpio.r32(0xFD0) == 0


def test_registers_are_8_bits_wide(gpio: Gpio) -> None:
    gpio.w32(pl061.REG_DIR, 0xFFFF_FFFF)
    assert gpio.r32(pl061.REG_DIR) == 0xFF
    gpio.dev.write(0, pl061.REG_IEV + 1, b"\xff")  # byte 1 of an 8-bit register: nothing
    assert gpio.r32(pl061.REG_IEV) == 0
    gpio.wb(pl061.REG_AFSEL, 0x5A)
    assert gpio.rb(pl061.REG_AFSEL) == 0x5A and gpio.dev.read(0, pl061.REG_AFSEL + 1, 1) == b"\x00"


def test_inputs_option() -> None:
    dev = create_model("pl061", {"inputs": "0xa5"})
    assert dev.read(0, data_offset(0xFF), 1) == b"\xa5"
    dev.close()
    with pytest.raises(ValueError, match="8-bit"):
        Pl061Device(inputs=0x100)


# ---- GPIODATA ----------------------------------------------------------------


def test_data_read_is_address_masked(gpio: Gpio) -> None:
    for line in range(8):
        gpio.dev.set_input(line, line % 2 == 0)  # 0b0101_0101
    assert gpio.rb(data_offset(0xFF)) == 0x55
    assert gpio.rb(data_offset(0x0F)) == 0x05
    assert gpio.rb(data_offset(0x02)) == 0x00
    assert gpio.rb(data_offset(0x04)) == 0x04
    assert gpio.rb(0x000) == 0
    assert [gpio.get_value(k) for k in range(8)] == [1, 0, 1, 0, 1, 0, 1, 0]


def test_data_write_changes_only_selected_output_lines(gpio: Gpio) -> None:
    gpio.wb(pl061.REG_DIR, 0x0F)  # lines 0-3 outputs
    gpio.wb(data_offset(0xFF), 0xFF)  # lines 4-7 are inputs: not written
    assert gpio.dev.outputs() == (0x0F, 0x0F)
    gpio.wb(data_offset(0x03), 0x00)  # only lines 0 and 1
    assert gpio.dev.outputs() == (0x0C, 0x0F)
    gpio.wb(data_offset(0x00), 0x00)  # selects nothing
    assert gpio.dev.outputs() == (0x0C, 0x0F)
    gpio.dev.set_input(6, True)
    assert gpio.rb(data_offset(0xFF)) == 0x4C  # outputs read their value, inputs the pin


def test_outputs_are_written_after_the_direction_only(gpio: Gpio) -> None:
    gpio.wb(data_offset(0x10), 0x10)  # line 4 is still an input: dropped (the TRM; Linux writes twice)
    gpio.wb(pl061.REG_DIR, 0x10)
    assert gpio.dev.outputs() == (0x00, 0x10)
    gpio.direction_output(4, 1)
    assert gpio.dev.outputs() == (0x10, 0x10) and gpio.get_value(4) == 1


def test_output_line_reads_its_output_not_the_host_input(gpio: Gpio) -> None:
    gpio.dev.set_input(2, True)
    gpio.direction_output(2, 0)
    assert gpio.get_value(2) == 0 and gpio.dev.inputs() == 0x04
    gpio.wb(pl061.REG_DIR, 0)  # back to input: the host's level
    assert gpio.get_value(2) == 1


def test_output_changes_are_reported(gpio: Gpio) -> None:
    gpio.direction_output(1, 1)
    gpio.wb(data_offset(0x02), 0x02)  # same value: no change
    gpio.wb(data_offset(0x02), 0x00)
    assert gpio.outputs == [(0x00, 0x02), (0x02, 0x02), (0x00, 0x02)]
    assert gpio.dev.output_changes == 3 == gpio.dev.counters.values["pl061.output_changes"]
    gpio.dev.set_input(0, True)  # inputs are not outputs
    assert gpio.dev.output_changes == 3


def test_set_input_checks_the_line(gpio: Gpio) -> None:
    with pytest.raises(ValueError):
        gpio.dev.set_input(8, True)


# ---- interrupts ------------------------------------------------------------------


def test_rising_edge_latches_until_ic(gpio: Gpio) -> None:
    gpio.wb(pl061.REG_IEV, 0x08)  # line 3: rising (IS=0 edge, IBE=0)
    gpio.wb(pl061.REG_IE, 0x08)
    gpio.dev.set_input(3, True)
    assert (gpio.rb(pl061.REG_RIS), gpio.rb(pl061.REG_MIS)) == (0x08, 0x08)
    assert gpio.fired() == 1
    gpio.dev.set_input(3, False)  # an edge is latched: the pin going back changes nothing
    assert gpio.rb(pl061.REG_RIS) == 0x08
    gpio.wb(pl061.REG_IC, 0x08)
    assert gpio.rb(pl061.REG_RIS) == 0 and not gpio.dev.line_asserted(0)
    gpio.eoi()
    assert gpio.fired() == 0


def test_falling_edge(gpio: Gpio) -> None:
    gpio.wb(pl061.REG_IE, 0x01)  # line 0: IEV=0 falling
    gpio.dev.set_input(0, True)
    assert gpio.rb(pl061.REG_RIS) == 0 and gpio.fired() == 0
    gpio.dev.set_input(0, False)
    assert gpio.rb(pl061.REG_RIS) == 0x01 and gpio.fired() == 1


def test_both_edges_ignore_iev(gpio: Gpio) -> None:
    gpio.wb(pl061.REG_IBE, 0x20)
    gpio.wb(pl061.REG_IEV, 0x20)  # ignored with IBE
    gpio.wb(pl061.REG_IE, 0x20)
    gpio.dev.set_input(5, True)
    assert gpio.rb(pl061.REG_RIS) == 0x20 and gpio.fired() == 1
    gpio.wb(pl061.REG_IC, 0x20)
    gpio.eoi()
    gpio.dev.set_input(5, False)
    assert gpio.rb(pl061.REG_RIS) == 0x20 and gpio.fired() == 1


def test_level_high_follows_the_pin_and_ic_does_not_clear_it(gpio: Gpio) -> None:
    gpio.wb(pl061.REG_IS, 0x04)
    gpio.wb(pl061.REG_IEV, 0x04)  # high level
    gpio.wb(pl061.REG_IE, 0x04)
    assert gpio.rb(pl061.REG_RIS) == 0 and gpio.fired() == 0
    gpio.dev.set_input(2, True)
    assert gpio.rb(pl061.REG_MIS) == 0x04 and gpio.fired() == 1
    gpio.wb(pl061.REG_IC, 0x04)  # no effect on a level-sensitive line
    assert gpio.rb(pl061.REG_RIS) == 0x04
    gpio.eoi()  # still asserted: fires again, like the hardware line would
    assert gpio.fired() == 1
    gpio.dev.set_input(2, False)
    assert gpio.rb(pl061.REG_RIS) == 0 and not gpio.dev.line_asserted(0)
    gpio.eoi()
    assert gpio.fired() == 0


def test_level_low(gpio: Gpio) -> None:
    gpio.dev.set_input(7, True)
    gpio.wb(pl061.REG_IS, 0x80)  # IEV=0: low level
    assert gpio.rb(pl061.REG_RIS) == 0
    gpio.dev.set_input(7, False)
    assert gpio.rb(pl061.REG_RIS) == 0x80
    assert gpio.fired() == 0  # IE clear: masked
    gpio.wb(pl061.REG_IE, 0x80)
    assert gpio.fired() == 1


def test_linux_level_flow_mask_ack_unmask(gpio: Gpio) -> None:
    """handle_level_irq: mask (IE bit off), ack (IC), handler, unmask (IE bit on)."""
    gpio.wb(pl061.REG_IS, 0x02)
    gpio.wb(pl061.REG_IEV, 0x02)
    gpio.wb(pl061.REG_IE, 0x02)
    gpio.dev.set_input(1, True)
    assert gpio.fired() == 1
    pending = gpio.rb(pl061.REG_MIS)
    assert pending == 0x02
    gpio.wb(pl061.REG_IE, gpio.rb(pl061.REG_IE) & ~pending)  # mask
    gpio.wb(pl061.REG_IC, pending)  # ack
    assert not gpio.dev.line_asserted(0)
    gpio.eoi()  # the bridge's EOI: nothing asserted, nothing fires
    assert gpio.fired() == 0
    gpio.dev.set_input(1, False)  # the handler dealt with the source
    gpio.wb(pl061.REG_IE, gpio.rb(pl061.REG_IE) | pending)  # unmask
    assert gpio.fired() == 0


def test_ie_masks_each_line_and_the_line_is_the_or(gpio: Gpio) -> None:
    gpio.wb(pl061.REG_IEV, 0xFF)
    gpio.dev.set_input(0, True)
    gpio.dev.set_input(6, True)
    assert gpio.rb(pl061.REG_RIS) == 0x41 and gpio.rb(pl061.REG_MIS) == 0
    assert not gpio.dev.line_asserted(0)
    gpio.wb(pl061.REG_IE, 0x40)
    assert gpio.rb(pl061.REG_MIS) == 0x40 and gpio.fired() == 1
    gpio.wb(pl061.REG_IC, 0x40)
    assert gpio.dev.line_asserted(0) is False
    gpio.wb(pl061.REG_IE, 0x41)  # line 0's edge is still latched
    gpio.eoi()
    assert gpio.fired() == 1 and gpio.rb(pl061.REG_MIS) == 0x01


def test_no_edge_when_nothing_moves(gpio: Gpio) -> None:
    gpio.wb(pl061.REG_IBE, 0xFF)
    gpio.wb(pl061.REG_IE, 0xFF)
    gpio.dev.set_input(3, False)  # already low
    gpio.wb(pl061.REG_IEV, 0xFF)  # configuration changes are not edges
    assert gpio.rb(pl061.REG_RIS) == 0 and gpio.fired() == 0


def test_an_output_line_interrupts_on_its_own_edge(gpio: Gpio) -> None:
    gpio.wb(pl061.REG_IEV, 0x01)
    gpio.wb(pl061.REG_IE, 0x01)
    gpio.direction_output(0, 1)
    assert gpio.rb(pl061.REG_RIS) == 0x01 and gpio.fired() == 1


def test_turning_a_line_level_sensitive_drops_its_latched_edge(gpio: Gpio) -> None:
    gpio.wb(pl061.REG_IEV, 0x01)
    gpio.dev.set_input(0, True)
    assert gpio.rb(pl061.REG_RIS) == 0x01
    gpio.wb(pl061.REG_IEV, 0x00)
    gpio.wb(pl061.REG_IS, 0x01)  # level low, the pin is high: nothing
    assert gpio.rb(pl061.REG_RIS) == 0


def test_ris_and_mis_are_read_only(gpio: Gpio) -> None:
    gpio.wb(pl061.REG_RIS, 0xFF)
    gpio.wb(pl061.REG_MIS, 0xFF)
    assert gpio.rb(pl061.REG_RIS) == 0 and gpio.rb(pl061.REG_MIS) == 0


def test_reset(gpio: Gpio) -> None:
    gpio.dev.set_input(4, True)
    gpio.direction_output(0, 1)
    for offset, value in ((pl061.REG_IS, 0x10), (pl061.REG_IEV, 0x10), (pl061.REG_IE, 0x10),
                          (pl061.REG_IBE, 0x02), (pl061.REG_AFSEL, 0x80)):
        gpio.wb(offset, value)
    assert gpio.fired() == 1
    gpio.outputs.clear()
    gpio.dev.reset()
    assert gpio.dev.line_masked(0) and not gpio.dev.line_asserted(0)
    for offset in (pl061.REG_DIR, pl061.REG_IS, pl061.REG_IBE, pl061.REG_IEV, pl061.REG_IE,
                   pl061.REG_RIS, pl061.REG_MIS, pl061.REG_AFSEL):
        assert gpio.rb(offset) == 0, hex(offset)
    assert gpio.outputs == [(0x00, 0x00)]  # line 0 stopped driving
    assert gpio.dev.inputs() == 0x10 and gpio.rb(data_offset(0xFF)) == 0x10  # the host's levels stay


# ---- control commands ---------------------------------------------------------


def test_control_commands(gpio: Gpio) -> None:
    assert gpio.dev.control(["set", "3", "1"]) == "ok pins=0x08"
    assert gpio.dev.inputs() == 0x08
    assert gpio.dev.control(["get", "3"]) == "ok 1 in"
    gpio.direction_output(0, 1)
    assert gpio.dev.control(["get", "0"]) == "ok 1 out"
    assert gpio.dev.control(["get"]) == "ok pins=0x09 inputs=0x08 outputs=0x01 dir=0x01"
    assert gpio.dev.control(["status"]).startswith("ok pins=0x09 dir=0x01 is=0x00")
    for bad in (["set", "8", "1"], ["set", "x", "1"], ["set", "1", "2"], ["set", "1"], ["get", "9"],
                ["frob"], [], ["status", "now"]):
        reply = gpio.dev.control(bad)
        assert reply.startswith("error: pl061: "), (bad, reply)
    assert gpio.dev.inputs() == 0x08


# ---- through the server ---------------------------------------------------------

REGS = 0
IRQ_PAGE = 1


@pytest.fixture
def served(vfu_server: Callable[..., ProcessServer], tmp_path: Path) -> tuple[ProcessServer, str]:
    control = str(tmp_path / "gpio.control")
    return vfu_server("pl061", extra=["--control", control]), control


def test_served_byte_access_ids_and_masked_data(served: tuple[ProcessServer, str]) -> None:
    server, control = served
    with server.connect() as client:
        assert client.region_read(REGS, 0xFE0, 1) == b"\x61"
        assert int.from_bytes(client.region_read(vfio_abi.PCI_CONFIG_REGION_INDEX, 0, 4), "little") == 0x5646_1234
        assert request(control, ["gpio", "set", "5", "1"]) == "ok pins=0x20"
        assert client.region_read(REGS, data_offset(0x20), 1) == b"\x20"
        assert client.region_read(REGS, data_offset(0xDF), 1) == b"\x00"
        client.region_write(REGS, pl061.REG_DIR, b"\x03")
        client.region_write(REGS, data_offset(0x01), b"\xff")
        assert request(control, ["gpio", "get"]) == "ok pins=0x21 inputs=0x20 outputs=0x01 dir=0x03"


def test_served_edge_interrupt_from_the_host(served: tuple[ProcessServer, str], vfu_eventfds) -> None:
    server, control = served
    (trigger,) = vfu_eventfds(1)
    with server.connect() as client:
        install_intx(client, trigger)
        client.region_write(REGS, pl061.REG_IEV, b"\x08")
        client.region_write(REGS, pl061.REG_IE, b"\x08")
        trigger.expect_none(what="interrupt before the edge")
        assert request(control, ["set", "3", "1"]).startswith("ok")
        trigger.expect_one(what="rising edge on line 3")
        assert client.read32(IRQ_PAGE, irq_page.IRQ_ACTIVE) == 0
        intx_unmask(client)  # QEMU's EOI after that first BAR access: the edge is still latched
        trigger.expect_one(what="the still-latched edge again")
        assert client.region_read(REGS, pl061.REG_MIS, 1) == b"\x08"
        client.region_write(REGS, pl061.REG_IC, b"\x08")
        intx_unmask(client)
        trigger.expect_none(what="interrupt after GPIOIC")
        assert client.read32(IRQ_PAGE, irq_page.IRQ_ACTIVE) == irq_page.NO_IRQ
