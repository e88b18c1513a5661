# SPDX-License-Identifier: BSD-3-Clause
"""Exact EOI through the bridge (docs/guest-descriptor.md section 4, docs/irq-page.md).

A guest bridge driver sets IRQ_CTRL.EXACT_EOI and then ends each interrupt by writing
the line to IRQ_EOI; on the INTx route the client's INTx unmask is needed as well, in
either order, and the first-trapped-access heuristic no longer applies (MSI-X).  Real
server process, real eventfds.
"""
from __future__ import annotations

import pytest

from vfu_platform.testing import NO_IRQ, EventFd, ProcessServer, install_intx, intx_status, intx_unmask, irq_reg, write_config
from test_bridge_msix import enable_msix
from vfu_platform.backends.sim import gpio
from vfu_platform.bridge import irq_page
from vfu_platform.client import VfioUserClient

IRQ_BAR = 2  # gpio: BAR0 registers, BAR1 SRAM


def page(client: VfioUserClient, register: int) -> int:
    return irq_reg(client, "gpio", register)


def set_exact(client: VfioUserClient, on: bool = True) -> None:
    client.write32(IRQ_BAR, irq_page.IRQ_CTRL, int(on))


def irq_eoi(client: VfioUserClient, line: int) -> None:
    client.write32(IRQ_BAR, irq_page.IRQ_EOI, line)


def raise_lines(client: VfioUserClient, mask: int) -> None:
    client.write32(0, gpio.REG_RAISE, mask)


def ack_line(client: VfioUserClient, line: int) -> None:
    client.write32(0, gpio.line_register(line, gpio.LINE_ACK), 1)


@pytest.fixture
def exact_intx(gpio_server: ProcessServer, vfu_eventfds) -> tuple[VfioUserClient, EventFd]:
    client = gpio_server.connect()
    set_exact(client)  # before INTx is enabled, as the spec tells the driver
    (trigger,) = vfu_eventfds(1)
    install_intx(client, trigger)
    return client, trigger


def test_irq_ctrl_reads_back_and_only_bit0_sticks(gpio_server: ProcessServer) -> None:
    client = gpio_server.connect()
    assert page(client, irq_page.IRQ_CTRL) == 0
    client.write32(IRQ_BAR, irq_page.IRQ_CTRL, 0xFFFF_FFFF)
    assert page(client, irq_page.IRQ_CTRL) == 1
    set_exact(client, False)
    assert page(client, irq_page.IRQ_CTRL) == 0
    assert page(client, irq_page.IRQ_EOI) == 0  # write-only: reads 0


def test_eoi_needs_unmask_and_irq_eoi_in_either_order(exact_intx) -> None:
    client, trigger = exact_intx
    raise_lines(client, 0b11)
    trigger.expect_one(what="INTx for line 0")
    assert page(client, irq_page.IRQ_ACTIVE) == 0

    # line 0: the device's ack register and the client unmask are not enough
    ack_line(client, 0)
    intx_unmask(client)
    assert page(client, irq_page.IRQ_ACTIVE) == 0, "exact EOI: the unmask alone must not end it"
    assert intx_status(client)
    trigger.expect_none()
    irq_eoi(client, 0)
    trigger.expect_one(what="INTx for line 1 after IRQ_EOI 0")
    assert page(client, irq_page.IRQ_ACTIVE) == 1

    # line 1: IRQ_EOI first, then the unmask
    ack_line(client, 1)
    irq_eoi(client, 1)
    assert page(client, irq_page.IRQ_ACTIVE) == 1, "exact EOI on INTx also needs the client's unmask"
    intx_unmask(client)
    assert page(client, irq_page.IRQ_ACTIVE) == NO_IRQ
    assert not intx_status(client)
    assert page(client, irq_page.IRQ_EOIS) == 2
    assert page(client, irq_page.IRQ_EOI_IGNORED) == 0
    trigger.expect_none()


def test_level_still_asserted_after_irq_eoi_fires_again(exact_intx) -> None:
    client, trigger = exact_intx
    raise_lines(client, 0b1)
    trigger.expect_one()
    assert page(client, irq_page.IRQ_ACTIVE) == 0  # the guest takes it
    intx_unmask(client)
    trigger.expect_none()
    irq_eoi(client, 0)  # the driver did not quiet the source: the line is still up
    trigger.expect_one(what="INTx again for the still-asserted line")
    assert page(client, irq_page.IRQ_ACTIVE) == 0


def test_intx_lowered_before_the_guest_took_it_is_raised_again(exact_intx) -> None:
    """QEMU without KVM ends INTx at the first BAR access after it, whoever makes it: an
    unmask that comes before the guest read IRQ_ACTIVE means the guest never saw it."""
    client, trigger = exact_intx
    raise_lines(client, 0b11)
    trigger.expect_one(what="INTx for line 0")
    intx_unmask(client)  # another driver's BAR access lowered INTx first
    trigger.expect_one(what="INTx raised again for line 0")
    assert page(client, irq_page.IRQ_ACTIVE) == 0  # now the guest takes it
    intx_unmask(client)
    trigger.expect_none()
    ack_line(client, 0)  # the child driver quiets its source
    irq_eoi(client, 0)
    trigger.expect_one(what="INTx for line 1")
    assert page(client, irq_page.IRQ_ACTIVE) == 1
    intx_unmask(client)
    ack_line(client, 1)
    irq_eoi(client, 1)
    assert page(client, irq_page.IRQ_ACTIVE) == NO_IRQ
    assert page(client, irq_page.IRQ_EOIS) == 2
    trigger.expect_none()


def test_bad_irq_eoi_writes_are_ignored_and_counted(exact_intx, gpio_server: ProcessServer) -> None:
    client, trigger = exact_intx
    irq_eoi(client, 0)  # nothing ACTIVE
    raise_lines(client, 0b11)
    trigger.expect_one()
    assert page(client, irq_page.IRQ_ACTIVE) == 0  # the guest takes it
    intx_unmask(client)
    irq_eoi(client, 1)  # PENDING, not ACTIVE
    irq_eoi(client, 99)  # no such line
    irq_eoi(client, 0xFFFF_FFFF)
    client.region_write(IRQ_BAR, irq_page.IRQ_EOI, b"\x00\x00")  # partial: not a register write
    assert page(client, irq_page.IRQ_EOI_IGNORED) == 4
    assert page(client, irq_page.IRQ_ACTIVE) == 0
    assert page(client, irq_page.IRQ_PENDING) == 1
    trigger.expect_none()
    irq_eoi(client, 0)
    trigger.expect_one(what="line 1 after the real EOI")
    assert gpio_server.alive()


def test_device_reset_clears_exact_eoi(exact_intx) -> None:
    client, _trigger = exact_intx
    assert page(client, irq_page.IRQ_CTRL) == 1
    client.reset()
    assert page(client, irq_page.IRQ_CTRL) == 0


def test_client_departure_clears_exact_eoi(gpio_server: ProcessServer, vfu_eventfds) -> None:
    client = gpio_server.connect()
    set_exact(client)
    assert page(client, irq_page.IRQ_CTRL) == 1
    client.close()
    second = gpio_server.connect()
    assert page(second, irq_page.IRQ_CTRL) == 0
    # and the seed's rule is back: the unmask alone ends an interrupt of a line without ack
    (trigger,) = vfu_eventfds(1)
    install_intx(second, trigger)
    raise_lines(second, 0b1)
    trigger.expect_one()
    ack_line(second, 0)
    intx_unmask(second)
    assert page(second, irq_page.IRQ_ACTIVE) == NO_IRQ


NO_ACKS = """
[bridge]
use_model_acks = false
"""


@pytest.mark.parametrize("exact", [False, True])
def test_msix_first_access_heuristic_off_under_exact_eoi(vfu_server, vfu_eventfds, tmp_path, exact: bool) -> None:
    server = vfu_server("gpio", irq_mode="msix", config=write_config(tmp_path, NO_ACKS))
    client = server.connect()
    vectors = vfu_eventfds(5)
    enable_msix(client, vectors)
    if exact:
        set_exact(client)
    raise_lines(client, 0b1)
    vectors[0].expect_one(what="vector 0")
    first = page(client, irq_page.IRQ_ACTIVE)  # a trapped access
    if not exact:  # the seed's heuristic: that read was the EOI
        assert first == 0
        assert page(client, irq_page.IRQ_EOIS) == 1
        return
    assert page(client, irq_page.IRQ_ACTIVE) == 0, "under exact EOI a trapped access ends nothing"
    ack_line(client, 0)  # quiet the source
    assert page(client, irq_page.IRQ_EOIS) == 0
    irq_eoi(client, 0)
    assert page(client, irq_page.IRQ_ACTIVE) == NO_IRQ
    assert page(client, irq_page.IRQ_EOIS) == 1
    vectors[0].expect_none()
