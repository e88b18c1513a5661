# SPDX-License-Identifier: BSD-3-Clause
"""One rule for every guest suite (QEMU e2e, real-kernel VFIO, guest drivers).

A suite whose bench cannot be provisioned **fails** with the provisioning script's
reason: a machine that cannot run the guests must not look green. Skipping happens
only when the user opts out with the suite's variable set to 1, and then the pytest
summary says so (see `pytest_terminal_summary` in tests/conftest.py).

Provisioning runs with pytest's output capture suspended, so its progress lines (one
per step, with sizes and times) reach the terminal while a first run downloads.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

import pytest

T = TypeVar("T")

#: suite name -> the variable that skips it on purpose
OPT_OUT = {
    "QEMU guest suite (tests/e2e)": "VFU_SKIP_QEMU_TESTS",
    "real-kernel VFIO suite (tests/kernel)": "VFU_SKIP_KERNEL_TESTS",
    "guest-driver suite (tests/guest_drivers)": "VFU_SKIP_GUEST_DRIVER_TESTS",
}


def opted_out() -> list[str]:
    """`SUITE (VAR=1)` for each suite the environment skips on purpose."""
    return [f"{suite} ({var}=1)" for suite, var in OPT_OUT.items() if os.environ.get(var) == "1"]


def require_bench(request: pytest.FixtureRequest, suite: str, provision: Callable[[], T],
                  errors: tuple[type[BaseException], ...]) -> T:
    """Provision a suite's bench or fail the test with the reason (skip only on opt-out)."""
    var = OPT_OUT[suite]
    if os.environ.get(var) == "1":
        pytest.skip(f"{suite} skipped on purpose: {var}=1")
    capture = request.config.pluginmanager.getplugin("capturemanager")
    try:
        if capture is None:
            return provision()
        with capture.global_and_fixture_disabled():
            return provision()
    except errors as exc:
        pytest.fail(f"cannot provision the {suite}:\n{exc}\n(set {var}=1 to skip this suite on purpose)",
                    pytrace=False)
