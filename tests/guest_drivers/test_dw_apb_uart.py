# SPDX-License-Identifier: BSD-3-Clause
"""x86 q35 (no device tree): `--device dw-apb-uart` becomes a platform device, 8250_dw binds.

The guest writes a line to /dev/ttyS<n> and the model's host port (a unix socket the
harness is connected to) receives it; the host writes a line and the guest reads it.
The model's default is a DW UART configured 16550-compatible (see dw_apb_uart.py
for why 6.12's 8250_dw needs that for a device bound by platform name).
"""
from __future__ import annotations

from collections.abc import Callable

import pytest

from testbench import driver_scenarios as ds
from testbench.armvirt import DriverResult, Scenario

RunScenario = Callable[[Scenario], DriverResult]


@pytest.fixture(scope="module")
def uart_run(run_scenario: RunScenario) -> DriverResult:
    return run_scenario(ds.dw_apb_uart())


def test_8250_dw_binds_a_tty(uart_run: DriverResult) -> None:
    assert not (bad := uart_run.check_report(["bridge-insmod", "bridge-bound", "uart-platform-device",
                                               "uart-tty-appeared", "uart-open"])), bad


def test_guest_to_host(uart_run: DriverResult) -> None:
    assert not (bad := uart_run.check_report(["uart-guest-to-host"])), bad
    assert "guest-says-hello-8250dw" in str(uart_run.extras.get("uart_received", "")), uart_run.extras


def test_host_to_guest(uart_run: DriverResult) -> None:
    assert not (bad := uart_run.check_report(["uart-host-to-guest", "uart-irq-counted"])), bad


def test_guest_passed_and_log_clean(uart_run: DriverResult) -> None:
    assert not (bad := uart_run.check_report(["uart-no-storm", "uart-kernel-log-clean"])), bad
    assert uart_run.passed, uart_run.describe()
