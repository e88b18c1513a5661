# SPDX-License-Identifier: BSD-3-Clause
"""Fixtures of the guest-driver suite: stock Linux drivers on devices behind our bridge.

Provisioned once per session, per architecture: the private QEMU
(scripts/provision-qemu.sh), the trixie guest kernel and its toolchain
(scripts/provision-guest-kernel.sh), our bridge module (scripts/guest-module) and
the gpio-wait helper. A piece that cannot be provisioned fails the tests with its
reason (tests/guest_policy.py); VFU_SKIP_GUEST_DRIVER_TESTS=1 skips the suite on
purpose. One guest boots at a time; a boot that several tests look at is a
module-scoped fixture of the test module, run once.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from guest_policy import require_bench
from testbench import armvirt
from testbench.armvirt import DriverBench, DriverResult, Scenario

SUITE = "guest-driver suite (tests/guest_drivers)"
RunScenario = Callable[[Scenario], DriverResult]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test here boots QEMU: mark it `qemu` even if its module forgot."""
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.qemu)


_benches: dict[str, DriverBench] = {}


def _bench(request: pytest.FixtureRequest, arch: str) -> DriverBench:
    if arch not in _benches:
        _benches[arch] = require_bench(request, SUITE, lambda: armvirt.provision_driver_bench(arch),
                                       (armvirt.BenchError,))
    return _benches[arch]


@pytest.fixture(scope="session")
def run_scenario(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> RunScenario:
    """run_scenario(scenario) -> DriverResult: provision the scenario's arch (once) and boot it."""

    def run(scenario: Scenario) -> DriverResult:
        bench = _bench(request, scenario.arch)
        workdir = tmp_path_factory.mktemp(scenario.name, numbered=True)
        result = armvirt.DriverRun(bench, scenario, workdir).run()
        print(result.summary())
        print(f"  logs: {workdir}")
        return result

    return run
