# SPDX-License-Identifier: BSD-3-Clause
"""INTx through the bridge, seen from a vfio-user client (real server, real eventfds).

The seed's (QEMU hw/vfio/platform.c) rules carried by the server: a level line masks
itself when it fires, one platform IRQ is ACTIVE at a time and the others wait in FIFO
order, and the EOI is the client's SET_IRQS(INTx, UNMASK) (QEMU's userspace path) or a
signal on the resample eventfd (QEMU's KVM path).  A line with an acknowledge register
(edu 0x64, gpio ACK_k) completes its EOI only once both the unmask and the ack write
have been seen, in either order.
"""
from __future__ import annotations

import pytest

from vfu_platform.testing import INTX, MASK_NONE, NO_IRQ, TRIGGER_NONE, UNMASK_EVENTFD, EventFd, ProcessServer, install_intx, intx_status, intx_unmask, irq_reg, pci_status, set_command, wait_until
from vfu_platform.backends.sim import edu, gpio
from vfu_platform.bridge import irq_page
from vfu_platform.client import VfioUserClient

EDU = 0  # edu's register BAR
COMMAND_INTX_DISABLE = 0x0400


def edu_raise(client: VfioUserClient, bits: int = 1) -> None:
    client.write32(EDU, edu.REG_IRQ_RAISE, bits)


def edu_ack(client: VfioUserClient, bits: int = 1) -> None:
    client.write32(EDU, edu.REG_IRQ_ACK, bits)


def edu_page(client: VfioUserClient, register: int) -> int:
    return irq_reg(client, "edu", register)


@pytest.fixture
def edu_intx(edu_server: ProcessServer, vfu_eventfds) -> tuple[VfioUserClient, EventFd]:
    client = edu_server.connect()
    (trigger,) = vfu_eventfds(1)
    install_intx(client, trigger)
    return client, trigger


# --------------------------------------------------------------------------- edu: one level line


def test_raise_signals_exactly_once_and_sets_status(edu_intx) -> None:
    client, trigger = edu_intx
    assert not intx_status(client)
    edu_raise(client)
    trigger.expect_one(what="INTx")
    assert intx_status(client), "PCI STATUS.INTERRUPT must be set while the IRQ is active"
    assert edu_page(client, irq_page.IRQ_ACTIVE) == 0
    assert edu_page(client, irq_page.IRQ_STATE_BASE) == 1  # ACTIVE
    assert edu_page(client, irq_page.IRQ_SIGNALS) == 1


def test_raising_again_while_active_does_not_signal(edu_intx) -> None:
    client, trigger = edu_intx
    edu_raise(client, 1)
    trigger.expect_one()
    edu_raise(client, 2)  # the line is already asserted (and masked): no new edge
    trigger.expect_none()
    assert client.read32(EDU, edu.REG_IRQ_STATUS) == 3


@pytest.mark.parametrize("order", ["ack-then-unmask", "unmask-then-ack"])
def test_eoi_needs_both_unmask_and_ack(edu_intx, order: str) -> None:
    client, trigger = edu_intx
    edu_raise(client)
    trigger.expect_one()
    if order == "ack-then-unmask":
        edu_ack(client)
        assert edu_page(client, irq_page.IRQ_ACTIVE) == 0, "the ack alone must not complete the EOI"
        assert intx_status(client)
        intx_unmask(client)
    else:
        intx_unmask(client)
        assert edu_page(client, irq_page.IRQ_ACTIVE) == 0, "the unmask alone must not complete the EOI"
        assert intx_status(client)
        edu_ack(client)
    assert edu_page(client, irq_page.IRQ_ACTIVE) == NO_IRQ
    assert edu_page(client, irq_page.IRQ_EOIS) == 1
    assert not intx_status(client)
    trigger.expect_none(what="INTx after a complete EOI")


def test_next_interrupt_after_eoi_signals_again(edu_intx) -> None:
    client, trigger = edu_intx
    for round_ in range(3):
        edu_raise(client)
        trigger.expect_one(what=f"INTx #{round_}")
        edu_ack(client)
        intx_unmask(client)
        assert edu_page(client, irq_page.IRQ_ACTIVE) == NO_IRQ
    assert edu_page(client, irq_page.IRQ_SIGNALS) == 3
    assert edu_page(client, irq_page.IRQ_EOIS) == 3


def test_level_still_asserted_at_eoi_fires_again(edu_intx) -> None:
    client, trigger = edu_intx
    edu_raise(client, 0b11)
    trigger.expect_one()
    edu_ack(client, 0b01)  # an ack write, but status bit 1 keeps the line up
    intx_unmask(client)
    trigger.expect_one(what="INTx of the still-asserted line")
    assert edu_page(client, irq_page.IRQ_ACTIVE) == 0
    assert intx_status(client)
    edu_ack(client, 0b10)
    intx_unmask(client)
    assert edu_page(client, irq_page.IRQ_ACTIVE) == NO_IRQ
    trigger.expect_none()


def test_unmask_without_active_irq_is_harmless(edu_intx) -> None:
    client, trigger = edu_intx
    intx_unmask(client)
    intx_unmask(client)
    trigger.expect_none()
    edu_raise(client)
    trigger.expect_one()


# --------------------------------------------------------------------------- KVM path: resample eventfd


def test_resample_eventfd_acts_as_eoi(edu_intx, vfu_eventfds) -> None:
    client, trigger = edu_intx
    (resample,) = vfu_eventfds(1)
    client.set_irqs(INTX, UNMASK_EVENTFD, 0, 1, [resample.fd])
    edu_raise(client)
    trigger.expect_one()
    edu_ack(client)
    assert edu_page(client, irq_page.IRQ_ACTIVE) == 0
    resample.signal()  # KVM writes the resamplefd on the guest's EOI
    wait_until(lambda: edu_page(client, irq_page.IRQ_ACTIVE) == NO_IRQ, what="resample EOI")
    assert edu_page(client, irq_page.IRQ_EOIS) == 1
    assert not intx_status(client)
    # And again: the server keeps polling the resamplefd.
    edu_raise(client)
    trigger.expect_one()
    resample.signal()
    wait_until(lambda: not resample.pending(), what="the server to read the resamplefd")
    assert edu_page(client, irq_page.IRQ_ACTIVE) == 0, "resample without the ack must not EOI an acked line"
    edu_ack(client)
    assert edu_page(client, irq_page.IRQ_ACTIVE) == NO_IRQ
    assert edu_page(client, irq_page.IRQ_EOIS) == 2


def test_resample_before_ack_then_ack_completes(edu_intx, vfu_eventfds) -> None:
    client, trigger = edu_intx
    (resample,) = vfu_eventfds(1)
    client.set_irqs(INTX, UNMASK_EVENTFD, 0, 1, [resample.fd])
    edu_raise(client)
    trigger.expect_one()
    resample.signal()
    wait_until(lambda: not resample.pending(), what="the server to read the resamplefd")
    assert edu_page(client, irq_page.IRQ_ACTIVE) == 0
    edu_ack(client)
    wait_until(lambda: edu_page(client, irq_page.IRQ_ACTIVE) == NO_IRQ, what="EOI after resample + ack")


def test_new_resample_eventfd_replaces_the_old_one(edu_intx, vfu_eventfds) -> None:
    client, trigger = edu_intx
    old, new = vfu_eventfds(2)
    client.set_irqs(INTX, UNMASK_EVENTFD, 0, 1, [old.fd])
    client.set_irqs(INTX, UNMASK_EVENTFD, 0, 1, [new.fd])
    edu_raise(client)
    trigger.expect_one()
    edu_ack(client)
    old.signal()  # the server dropped its copy of this one
    client.sync()
    assert old.pending(), "the server must no longer read the replaced resamplefd"
    assert edu_page(client, irq_page.IRQ_ACTIVE) == 0
    new.signal()
    wait_until(lambda: edu_page(client, irq_page.IRQ_ACTIVE) == NO_IRQ, what="EOI through the new resamplefd")


def test_resample_eventfd_can_be_removed(edu_intx, vfu_eventfds) -> None:
    client, trigger = edu_intx
    (resample,) = vfu_eventfds(1)
    client.set_irqs(INTX, UNMASK_EVENTFD, 0, 1, [resample.fd])
    client.set_irqs(INTX, UNMASK_EVENTFD, 0, 1)  # no fd: de-register
    edu_raise(client)
    trigger.expect_one()
    edu_ack(client)
    resample.signal()
    client.sync()
    assert resample.pending(), "the server must no longer read a de-registered resamplefd"
    assert edu_page(client, irq_page.IRQ_ACTIVE) == 0
    intx_unmask(client)
    assert edu_page(client, irq_page.IRQ_ACTIVE) == NO_IRQ


# --------------------------------------------------------------------------- holding delivery


def test_intx_mask_holds_delivery_until_unmask(edu_intx) -> None:
    client, trigger = edu_intx
    client.set_irqs(INTX, MASK_NONE, 0, 1)
    edu_raise(client)
    trigger.expect_none(what="INTx while masked")
    assert edu_page(client, irq_page.IRQ_ACTIVE) == 0  # recorded, held
    intx_unmask(client)
    trigger.expect_one(what="held INTx after unmask")
    # That unmask delivered the IRQ; it was not its EOI.
    assert edu_page(client, irq_page.IRQ_ACTIVE) == 0
    edu_ack(client)
    intx_unmask(client)
    assert edu_page(client, irq_page.IRQ_ACTIVE) == NO_IRQ


def test_command_intx_disable_holds_the_line(edu_intx) -> None:
    client, trigger = edu_intx
    set_command(client, COMMAND_INTX_DISABLE)
    edu_raise(client)
    trigger.expect_none(what="INTx with COMMAND.INTX_DISABLE set")
    assert edu_page(client, irq_page.IRQ_ACTIVE) == 0
    # PCI: "Setting the Interrupt Disable bit to a 1 has no effect on the state of this bit."
    assert intx_status(client), "STATUS.INTERRUPT reflects the pending interrupt even while INTx is disabled"
    set_command(client, 0)
    trigger.expect_one(what="INTx released by clearing INTX_DISABLE")
    assert intx_status(client)
    set_command(client, COMMAND_INTX_DISABLE)
    set_command(client, 0)
    trigger.expect_none(what="a second release of an already delivered INTx")


def test_intx_disable_toggle_without_irq_is_quiet(edu_intx) -> None:
    client, trigger = edu_intx
    set_command(client, COMMAND_INTX_DISABLE)
    set_command(client, 0x0006 | COMMAND_INTX_DISABLE)
    assert pci_status(client) & 0x0008 == 0
    set_command(client, 0x0006)
    trigger.expect_none()
    assert client.region_read(7, 0x04, 2) == (0x0006).to_bytes(2, "little")


def test_set_irqs_count_zero_disables_intx(edu_server: ProcessServer, vfu_eventfds) -> None:
    client = edu_server.connect()
    (trigger,) = vfu_eventfds(1)
    install_intx(client, trigger)
    edu_raise(client)
    trigger.expect_one()
    client.set_irqs(INTX, TRIGGER_NONE, 0, 0)  # disable the index
    assert edu_page(client, irq_page.IRQ_ACTIVE) == NO_IRQ, "disabling INTx drops the active IRQ"
    assert not intx_status(client)
    edu_ack(client)
    edu_raise(client)
    trigger.expect_none(what="INTx after the index was disabled")
    # Re-enabling: the still-asserted level line is delivered to the new trigger.
    (again,) = vfu_eventfds(1)
    install_intx(client, again)
    again.expect_one(what="still-asserted line after re-enabling INTx")
    trigger.expect_none()


def test_disable_then_reenable_without_pending_line_is_quiet(edu_intx, vfu_eventfds) -> None:
    client, trigger = edu_intx
    client.set_irqs(INTX, TRIGGER_NONE, 0, 0)
    (again,) = vfu_eventfds(1)
    install_intx(client, again)
    again.expect_none()
    edu_raise(client)
    again.expect_one()
    trigger.expect_none()


def test_software_trigger_loopback(edu_intx) -> None:
    client, trigger = edu_intx
    client.set_irqs(INTX, TRIGGER_NONE, 0, 1)  # TRIGGER|NONE count 1: write the trigger
    trigger.expect_one(what="loopback trigger")
    assert edu_page(client, irq_page.IRQ_SIGNALS) == 0  # not a platform IRQ


def test_device_reset_clears_irq_state(edu_intx) -> None:
    client, trigger = edu_intx
    client.write32(EDU, edu.REG_LIVENESS, 0x1234)
    edu_raise(client, 0x40)
    trigger.expect_one()
    assert intx_status(client)
    client.reset()
    assert edu_page(client, irq_page.IRQ_ACTIVE) == NO_IRQ
    assert edu_page(client, irq_page.IRQ_PENDING) == 0
    assert not intx_status(client)
    assert client.read32(EDU, edu.REG_IRQ_STATUS) == 0
    assert client.read32(EDU, edu.REG_LIVENESS) == 0  # power-on value (the inverse is stored on write)
    trigger.expect_none()
    # The trigger survives the reset: the next IRQ is delivered.
    edu_raise(client)
    trigger.expect_one(what="INTx after DEVICE_RESET")


def test_fire_before_trigger_is_delivered_when_installed(edu_server: ProcessServer, vfu_eventfds) -> None:
    client = edu_server.connect()
    edu_raise(client)
    client.sync()
    (trigger,) = vfu_eventfds(1)
    install_intx(client, trigger)
    trigger.expect_one(what="INTx of a line raised before the trigger existed")


# --------------------------------------------------------------------------- gpio: several lines, one INTx


def gpio_ack_line(client: VfioUserClient, line: int) -> None:
    client.write32(0, gpio.line_register(line, gpio.LINE_ACK), 1)


def gpio_page(client: VfioUserClient, register: int) -> int:
    return irq_reg(client, "gpio", register)


@pytest.fixture
def gpio_intx(gpio_server: ProcessServer, vfu_eventfds) -> tuple[VfioUserClient, EventFd]:
    client = gpio_server.connect()
    (trigger,) = vfu_eventfds(1)
    install_intx(client, trigger)
    return client, trigger


@pytest.mark.parametrize("ack_first", [True, False], ids=["ack-then-unmask", "unmask-then-ack"])
def test_gpio_simultaneous_lines_are_delivered_one_at_a_time(gpio_intx, ack_first: bool) -> None:
    client, trigger = gpio_intx
    client.write32(0, gpio.REG_RAISE, 0b111)
    for line in range(3):
        trigger.expect_one(what=f"INTx for line {line}")
        assert gpio_page(client, irq_page.IRQ_ACTIVE) == line
        assert gpio_page(client, irq_page.IRQ_PENDING) == 2 - line
        assert gpio_page(client, irq_page.IRQ_STATE_BASE + 4 * line) == 1
        for later in range(line + 1, 3):
            assert gpio_page(client, irq_page.IRQ_STATE_BASE + 4 * later) == 2  # PENDING
        assert intx_status(client)
        if ack_first:
            gpio_ack_line(client, line)
            trigger.expect_none(what="INTx before the unmask")
            intx_unmask(client)
        else:
            intx_unmask(client)
            trigger.expect_none(what="INTx before the ack")
            gpio_ack_line(client, line)
    trigger.expect_none(what="a fourth INTx")
    assert gpio_page(client, irq_page.IRQ_ACTIVE) == NO_IRQ
    assert gpio_page(client, irq_page.IRQ_PENDING) == 0
    assert gpio_page(client, irq_page.IRQ_SIGNALS) == 3
    assert gpio_page(client, irq_page.IRQ_EOIS) == 3
    assert client.read32(0, gpio.REG_STATUS) == 0
    assert not intx_status(client)


def test_gpio_shared_w1c_ack_register(gpio_intx) -> None:
    client, trigger = gpio_intx
    client.write32(0, gpio.REG_RAISE, 0b011)
    trigger.expect_one()
    client.write32(0, gpio.REG_ACK, 0b001)  # shared ACK, bit 0: line 0's acknowledge
    intx_unmask(client)
    trigger.expect_one(what="line 1 after line 0's EOI")
    assert gpio_page(client, irq_page.IRQ_ACTIVE) == 1
    client.write32(0, gpio.REG_ACK, 0b010)
    intx_unmask(client)
    assert gpio_page(client, irq_page.IRQ_ACTIVE) == NO_IRQ


def test_gpio_ack_of_a_pending_line_takes_it_out_of_the_queue(gpio_intx) -> None:
    client, trigger = gpio_intx
    client.write32(0, gpio.REG_RAISE, 0b011)
    trigger.expect_one()
    gpio_ack_line(client, 1)  # the pending line's ack, not the active one's
    intx_unmask(client)
    assert gpio_page(client, irq_page.IRQ_ACTIVE) == 0
    trigger.expect_none()
    gpio_ack_line(client, 0)
    # Line 1 was acknowledged at the device while it waited: it left the queue then,
    # so no interrupt follows that a driver would find nothing for.
    trigger.expect_none()
    assert gpio_page(client, irq_page.IRQ_ACTIVE) == irq_page.NO_IRQ
    assert gpio_page(client, irq_page.IRQ_PENDING) == 0


def test_gpio_lines_fired_one_after_another_keep_fifo_order(gpio_intx) -> None:
    client, trigger = gpio_intx
    for line in (2, 0, 3):
        client.write32(0, gpio.line_register(line, gpio.LINE_RAISE), 1)
        client.sync()
    order = []
    for _ in range(3):
        trigger.expect_one()
        active = gpio_page(client, irq_page.IRQ_ACTIVE)
        order.append(active)
        gpio_ack_line(client, active)
        intx_unmask(client)
    assert order == [2, 0, 3]
    trigger.expect_none()


def test_gpio_edge_line_over_intx(gpio_intx) -> None:
    client, trigger = gpio_intx
    edge_line = 4  # after the four level lines
    client.write32(0, gpio.REG_EDGE_PULSE, 1)
    trigger.expect_one(what="INTx for the edge line")
    assert gpio_page(client, irq_page.IRQ_ACTIVE) == edge_line
    assert intx_status(client)
    intx_unmask(client)  # no ack register: the unmask alone is the EOI
    assert gpio_page(client, irq_page.IRQ_ACTIVE) == NO_IRQ
    assert not intx_status(client), "an edge line's EOI must clear STATUS.INTERRUPT too"
    trigger.expect_none()


def test_gpio_reset_drops_pending_queue(gpio_intx) -> None:
    client, trigger = gpio_intx
    client.write32(0, gpio.REG_RAISE, 0b1111)
    trigger.expect_one()
    wait_until(lambda: gpio_page(client, irq_page.IRQ_PENDING) == 3)
    client.reset()
    assert gpio_page(client, irq_page.IRQ_ACTIVE) == NO_IRQ
    assert gpio_page(client, irq_page.IRQ_PENDING) == 0
    assert client.read32(0, gpio.REG_STATUS) == 0
    trigger.expect_none()
