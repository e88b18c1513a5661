# SPDX-License-Identifier: BSD-3-Clause
"""`--device pl031,pl061` on one INTx: the RTC alarm and a GPIO edge raised in the same instant.

The host moves the model's RTC onto the alarm time and raises the GPIO input in one
write to the control socket (one turn of the server's loop): both lines fire, one
becomes ACTIVE, the other waits in the FIFO and is delivered after the first's EOI.
Both stock drivers must handle theirs.
"""
from __future__ import annotations

from collections.abc import Callable

import pytest

from testbench import driver_scenarios as ds
from testbench.armvirt import DriverResult, Scenario

RunScenario = Callable[[Scenario], DriverResult]


@pytest.fixture(scope="module")
def group_run(run_scenario: RunScenario) -> DriverResult:
    return run_scenario(ds.group_fifo())


def test_both_children_bind(group_run: DriverResult) -> None:
    assert not (bad := group_run.check_report(["bridge-bound", "rtc-appeared", "rtc-registered",
                                                "gpiochip-appeared", "gpiochip-ngpio"])), bad


def test_both_drivers_handle_their_interrupt(group_run: DriverResult) -> None:
    assert not (bad := group_run.check_report(["group-raise", "group-gpio-edge-seen", "group-rtc-alarm-irq",
                                                "group-rtc-alarm-consumed", "group-bridge-intx"])), bad


def test_trace_shows_fifo_order(group_run: DriverResult) -> None:
    tl = group_run.timeline()
    assert not tl.hanging(), "signalled, never EOId (an INTx the guest never took): " + \
        "; ".join(d.describe() for d in tl.hanging())
    pairs = [(a, b) for a, b in tl.fifo_pairs() if {a.line, b.line} == {0, 1}]
    assert pairs, "no delivery queued behind the other:\n" + "\n".join(d.describe() for d in tl.deliveries())
    first, second = pairs[0]
    assert first.signalled <= second.fired <= first.eoi <= second.signalled <= second.eoi, \
        f"{first.describe()} / {second.describe()}"


def test_guest_passed_and_log_clean(group_run: DriverResult) -> None:
    assert not (bad := group_run.check_report(["group-no-storm", "group-kernel-log-clean"])), bad
    assert group_run.passed, group_run.describe()
