# SPDX-License-Identifier: BSD-3-Clause
"""The bridge module comes and goes cleanly; a server that dies leaves the guest healthy."""
from __future__ import annotations

from collections.abc import Callable

import pytest

from testbench import driver_scenarios as ds
from testbench.armvirt import DriverResult, Scenario

RunScenario = Callable[[Scenario], DriverResult]


@pytest.fixture(scope="module")
def rmmod_run(run_scenario: RunScenario) -> DriverResult:
    return run_scenario(ds.rmmod_healthy())


@pytest.fixture(scope="module")
def killed_run(run_scenario: RunScenario) -> DriverResult:
    return run_scenario(ds.server_killed())


def test_rmmod_leaves_nothing_behind(rmmod_run: DriverResult) -> None:
    assert not (bad := rmmod_run.check_report([
        "use-rtc", "use-gpio", "use-gpio-edge", "use-rtc-alarm-armed", "rmmod", "rmmod-rtc-gone", "rmmod-gpiochip-gone", "rmmod-irqs-released",
        "rmmod-device-unbound", "rmmod-no-storm", "rmmod-kernel-log-clean"])), bad


def test_module_binds_again_after_rmmod(rmmod_run: DriverResult) -> None:
    assert not (bad := rmmod_run.check_report(["reinsmod", "rermmod", "final-kernel-log-clean"])), bad
    assert rmmod_run.passed, rmmod_run.describe()


def test_server_killed_guest_stays_healthy(killed_run: DriverResult) -> None:
    assert not (bad := killed_run.check_report([
        "use-rtc", "use-gpio", "use-gpio-edge", "use-rtc-alarm-armed", "server-killed", "dead-rtc-read-returns", "dead-rmmod-returns", "dead-no-storm",
        "dead-kernel-log-clean", "dead-guest-responsive"])), bad
    kills = killed_run.action("kill-server")
    assert kills and kills[0].status == "ok", killed_run.actions
    assert killed_run.passed, killed_run.describe()
