# SPDX-License-Identifier: BSD-3-Clause
"""rtc-pl031 on `--device pl031`, INTx and MSI-X: the time set in the model, an alarm IRQ."""
from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from testbench import driver_scenarios as ds
from testbench.armvirt import DriverResult, Scenario

RunScenario = Callable[[Scenario], DriverResult]


@pytest.fixture(scope="module", params=["intx", "msix"])
def rtc_run(request: pytest.FixtureRequest, run_scenario: RunScenario) -> DriverResult:
    return run_scenario(ds.rtc_pl031(request.param))


def test_bridge_binds_and_rtc_registers(rtc_run: DriverResult) -> None:
    assert not (bad := rtc_run.check_report(["bridge-insmod", "bridge-bound", "rtc-appeared", "rtc-registered"])), bad
    assert "pl031" in rtc_run.detail("rtc-appeared")


def test_hwclock_reads_the_model_time(rtc_run: DriverResult) -> None:
    assert not (bad := rtc_run.check_report(["rtc-hwclock", "rtc-matches-model"])), bad
    epoch = int(re.search(r"epoch=(\d+)", rtc_run.detail("rtc-hwclock") or "").group(1))
    assert 0 <= epoch - ds.RTC_EPOCH < 120, rtc_run.detail("rtc-hwclock")


def test_alarm_fires_through_the_bridge(rtc_run: DriverResult) -> None:
    mode_check = "rtc-irq-is-msix" if rtc_run.name.endswith("msix") else "rtc-intx-counted"
    assert not (bad := rtc_run.check_report(["rtc-alarm-set", "rtc-alarm-irq", "rtc-alarm-consumed", "rtc-no-storm", mode_check])), bad
    counts = dict(re.findall(r"(\w+)=(\d+)", rtc_run.infos.get("rtc_alarm_counts", "")))
    assert int(counts["after"]) > int(counts["before"]), rtc_run.infos


def test_trace_shows_raise_deliver_eoi(rtc_run: DriverResult) -> None:
    """The server saw the pl031 line rise, signalled it, and got its EOI before the guest finished."""
    tl = rtc_run.timeline()
    assert not tl.hanging(), "signalled, never EOId: " + "; ".join(d.describe() for d in tl.hanging())
    done = tl.complete(0)
    assert done, f"no complete fire -> signal -> EOI of line 0 in {rtc_run.workdir}; events {tl.names()}"
    d = done[0]
    assert d.fired <= d.signalled <= d.eoi, d.describe()
    targets = {e.fields.get("target") for e in tl.events if e.event == "irq-signal" and e.fields.get("active") == 0}
    want = 0 if rtc_run.name.endswith("msix") else "intx"
    assert want in targets, f"line 0 was signalled to {targets}, expected {want!r}"


def test_guest_passed_and_log_clean(rtc_run: DriverResult) -> None:
    assert not (bad := rtc_run.check_report(["rtc-kernel-log-clean"])), bad
    assert rtc_run.passed, rtc_run.describe()
