# SPDX-License-Identifier: BSD-3-Clause
"""gpio-pl061 on `--device pl061`: a gpiochip of 8, a host-driven input edge, a guest-driven output.

The guest uses the stock sysfs GPIO interface: the rising edge reaches userspace as
POLLPRI on `value` (the gpio-wait helper polls; busybox cannot), and the output's
level is read back from the model through the control socket.
"""
from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from testbench import driver_scenarios as ds
from testbench.armvirt import DriverResult, Scenario

RunScenario = Callable[[Scenario], DriverResult]


@pytest.fixture(scope="module")
def gpio_run(run_scenario: RunScenario) -> DriverResult:
    return run_scenario(ds.gpio_pl061())


def test_gpiochip_of_eight_appears(gpio_run: DriverResult) -> None:
    assert not (bad := gpio_run.check_report(["bridge-insmod", "bridge-bound", "gpiochip-appeared",
                                               "gpiochip-ngpio"])), bad


def test_host_edge_reaches_guest_userspace(gpio_run: DriverResult) -> None:
    assert not (bad := gpio_run.check_report(["gpio-export-in", "gpio-edge-rising", "gpio-input-edge-seen",
                                               "gpio-edge-irq-counted", "gpio-input-level",
                                               "gpio-falling-edge-ignored"])), bad
    sets = [a for a in gpio_run.action("control") if a.args[:2] == ["pl061", "set"]]
    assert any(a.args[2:] == [str(ds.GPIO_IN), "1"] and a.status == "ok" for a in sets), gpio_run.actions


def test_guest_output_reaches_model(gpio_run: DriverResult) -> None:
    assert not (bad := gpio_run.check_report(["gpio-export-out", "gpio-output-seen-by-model"])), bad
    gets = [a.reply for a in gpio_run.action("control") if a.args[:2] == ["pl061", "get"]]
    assert gets[:2] == ["1 out", "0 out"], gets


def test_gpio_interrupt_through_bridge_trace(gpio_run: DriverResult) -> None:
    """The pl061's line fired and was delivered and EOId by the server (line 0 of its own bridge)."""
    tl = gpio_run.timeline()
    assert not tl.hanging(), "signalled, never EOId: " + "; ".join(d.describe() for d in tl.hanging())
    done = tl.complete(0)
    assert done, f"no complete delivery of line 0: {gpio_run.timeline().names()}"
    counts = dict(re.findall(r"(\w+)=(\d+)", gpio_run.infos.get("gpio_counts", "")))
    assert int(counts["after_rising"]) == int(counts["before"]) + 1, gpio_run.infos


def test_guest_passed_and_log_clean(gpio_run: DriverResult) -> None:
    assert not (bad := gpio_run.check_report(["gpio-no-storm", "gpio-kernel-log-clean"])), bad
    assert gpio_run.passed, gpio_run.describe()
