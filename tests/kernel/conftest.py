# SPDX-License-Identifier: BSD-3-Clause
"""Fixtures of the kernel VFIO suite: provision the bench once, boot each guest once.

Provisioning (scripts/provision-kernel-bench.sh, after scripts/provision-qemu.sh:
the guests run on the same private QEMU) is idempotent and takes seconds once
cached; the first run downloads Debian packages and builds the arm64 vfio modules.
A machine where it cannot run fails the suite with the reason
(tests/guest_policy.py); VFU_SKIP_KERNEL_TESTS=1 skips it on purpose.  Guest logs
stay in the pytest temporary directory, whose path each failure prints.
"""
from __future__ import annotations

import pytest

from guest_policy import require_bench
from testbench.kernel import BenchUnavailable, KernelBench


@pytest.fixture(scope="session")
def kernel_bench(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> KernelBench:
    bench = KernelBench(tmp_path_factory.mktemp("kbench"))
    require_bench(request, "real-kernel VFIO suite (tests/kernel)", bench.provision, (BenchUnavailable,))
    return bench
