# SPDX-License-Identifier: BSD-3-Clause
"""In-guest: the IRQ bypass path against the mediated path, counted in server wake-ups.

The pl031 has one automasked level IRQ.  With only an INTx trigger eventfd
(QEMU without KVM) every interrupt wakes the server once: the host kernel
signals the server's line eventfd, the IRQ engine forwards it to the client.
With a resample eventfd too (QEMU under KVM), the bridge hands both of the
client's eventfds to the host kernel: it signals the client's trigger itself
and unmasks the line when the resamplefd is signalled (the guest's EOI), so an
interrupt costs the server no wake-up at all.  The IRQ page's IRQ_WAKEUPS
register (BAR1 + 0xc18) counts the server's wake-ups.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

from vfu_platform import vfio_abi
from testbench.kguest import common
from testbench.kguest.checks import Checks

if TYPE_CHECKING:
    from vfu_platform.client import VfioUserClient

RTC_IMSC, RTC_ICR = 0x10, 0x1C
IRQ_PAGE_BAR = 1  # BAR0 = the pl031's 4 KiB region, BAR1 = the IRQ page
IRQ_WAKEUPS = 0xC18
INTX = vfio_abi.PCI_INTX_IRQ_INDEX
TRIGGER_EVENTFD = vfio_abi.IRQ_SET_ACTION_TRIGGER | vfio_abi.IRQ_SET_DATA_EVENTFD
UNMASK_NONE = vfio_abi.IRQ_SET_ACTION_UNMASK | vfio_abi.IRQ_SET_DATA_NONE
UNMASK_EVENTFD = vfio_abi.IRQ_SET_ACTION_UNMASK | vfio_abi.IRQ_SET_DATA_EVENTFD
ROUNDS = 3


class _Rtc:
    def __init__(self, client: "VfioUserClient") -> None:
        self.client = client

    def wr(self, offset: int, value: int) -> None:
        self.client.write32(0, offset, value)

    def arm(self) -> None:
        self.wr(RTC_IMSC, 0)
        self.wr(RTC_ICR, 1)
        self.wr(RTC_IMSC, 1)

    def fire(self) -> None:
        common.pl031_match_now(lambda offset: self.client.read32(0, offset), self.wr)  # level until cleared

    def clear(self) -> None:
        self.wr(RTC_ICR, 1)

    def wakeups(self) -> int:
        return self.client.read32(IRQ_PAGE_BAR, IRQ_WAKEUPS)


def run(c: Checks, client: "VfioUserClient") -> None:
    rtc = _Rtc(client)
    trigger = common.eventfd()
    resample = common.eventfd()
    try:
        client.set_irqs(INTX, TRIGGER_EVENTFD, 0, 1, [trigger])
        rtc.arm()
        _mediated(c, rtc, trigger)
        _bypass(c, rtc, trigger, resample)
        _back_to_mediated(c, rtc, trigger)
    finally:
        rtc.clear()
        rtc.wr(RTC_IMSC, 0)
        client.set_irqs(INTX, vfio_abi.IRQ_SET_ACTION_TRIGGER | vfio_abi.IRQ_SET_DATA_NONE, 0, 0)
        os.close(trigger)
        os.close(resample)


def _mediated(c: Checks, rtc: _Rtc, trigger: int) -> None:
    before = rtc.wakeups()
    events = 0
    for _ in range(ROUNDS):
        rtc.fire()
        events += common.wait_event(trigger, 10)
        rtc.clear()
        rtc.client.set_irqs(INTX, UNMASK_NONE, 0, 1)  # the EOI, as QEMU sends it without KVM
    woke = rtc.wakeups() - before
    c.check("bypass_mediated_one_wakeup_per_irq", events == ROUNDS and woke == ROUNDS,
            f"{events} interrupts, {woke} server wake-ups ({woke / max(events, 1):.1f} per interrupt)")


def _bypass(c: Checks, rtc: _Rtc, trigger: int, resample: int) -> None:
    rtc.client.set_irqs(INTX, UNMASK_EVENTFD, 0, 1, [resample])  # the KVM resamplefd: bypass on
    before = rtc.wakeups()
    events = held = released = 0
    for round_ in range(ROUNDS):
        rtc.fire()
        events += common.wait_event(trigger, 10)
        if round_ == 0:
            # Still asserted, line automasked by the host kernel: nothing more until the EOI.
            held = common.wait_event(trigger, 0.5)
            os.eventfd_write(resample, 1)  # EOI with the line still asserted: the host fires again
            released = common.wait_event(trigger, 10)
        rtc.clear()
        os.eventfd_write(resample, 1)  # the guest's EOI at the interrupt controller
    woke = rtc.wakeups() - before
    c.check("bypass_no_wakeup_per_irq", events == ROUNDS and woke == 0,
            f"{events} interrupts, {woke} server wake-ups")
    c.check("bypass_automask_until_resample", held == 0 and released >= 1,
            f"while masked: {held} events; after the resamplefd EOI: {released}")


def _back_to_mediated(c: Checks, rtc: _Rtc, trigger: int) -> None:
    rtc.client.set_irqs(INTX, UNMASK_EVENTFD, 0, 1, [])  # resamplefd removed: mediated again
    common.wait_event(trigger, 0.2)  # drop a re-fire from the switch, if any
    before = rtc.wakeups()
    rtc.fire()
    got = common.wait_event(trigger, 10)
    rtc.clear()
    rtc.client.set_irqs(INTX, UNMASK_NONE, 0, 1)
    woke = rtc.wakeups() - before
    c.check("bypass_off_mediated_again", got >= 1 and woke == 1, f"{got} interrupts, {woke} server wake-ups")
