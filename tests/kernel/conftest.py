# SPDX-License-Identifier: BSD-3-Clause
"""Fixtures of the kernel VFIO suite: provision the bench once, boot each guest once.

Provisioning (scripts/provision-kernel-bench.sh) is idempotent and takes
seconds once cached; the first run downloads Debian packages (~330 MB) and
builds the arm64 vfio modules (about two minutes).  A machine where it cannot
run (no root for apt-get, no Debian archive) skips the suite with the reason;
VFU_SKIP_KERNEL_TESTS=1 skips it on purpose.  Guest logs stay in the pytest
temporary directory, whose path each failure prints.
"""
from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from vfu_platform.testbench.kernel import BenchUnavailable, KernelBench


@pytest.fixture(scope="session")
def kernel_bench(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KernelBench]:
    if os.environ.get("VFU_SKIP_KERNEL_TESTS") == "1":
        pytest.skip("VFU_SKIP_KERNEL_TESTS=1")
    bench = KernelBench(tmp_path_factory.mktemp("kbench"))
    try:
        bench.provision()
    except BenchUnavailable as e:
        pytest.skip(f"kernel bench unavailable: {e}")
    yield bench
