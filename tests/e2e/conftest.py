# SPDX-License-Identifier: BSD-3-Clause
"""Fixtures of the end-to-end tests.

QEMU, the guest kernel and busybox are provisioned once per session into the cache
outside the checkout (${VFU_CACHE:-~/.cache/vfu-platform}); a missing piece is
downloaded, never a reason to skip: if provisioning fails the tests fail with its
reason (tests/guest_policy.py; VFU_SKIP_QEMU_TESTS=1 skips the suite on purpose).
Guests boot one at a time (the session runs them serially); a boot that several
test modules look at (our server's edu run) is a session fixture, so it happens once.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pytest

from guest_policy import require_bench
from testbench import qemu

GuestFactory = Callable[..., qemu.GuestResult]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test in this directory boots QEMU: mark it `qemu` even if its module forgot."""
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.qemu)


@pytest.fixture(scope="session")
def bench(request: pytest.FixtureRequest) -> qemu.Bench:
    return require_bench(request, "QEMU guest suite (tests/e2e)", qemu.provision, (qemu.BenchError,))


@pytest.fixture(scope="session")
def run_guest(bench: qemu.Bench, tmp_path_factory: pytest.TempPathFactory) -> GuestFactory:
    """run_guest(name, program, *, device=None | server device name, inproc=None, **GuestRun options).

    `device="edu"` serves our simulated edu (with a server trace in the run's directory);
    `server_extra` adds server arguments (e.g. ["--irq-mode", "msix", "--config", path]);
    `inproc="edu"` tests QEMU's own device instead. Returns the GuestResult.
    """

    def run(name: str, program: str, *, device: str | None = None, inproc: str | None = None,
            params: Mapping[str, str] | None = None, server_extra: Sequence[str] = (),
            **options: object) -> qemu.GuestResult:
        workdir = tmp_path_factory.mktemp(name, numbered=True)
        server = None
        if device is not None:
            server = qemu.server_argv(device, trace=workdir / qemu.SERVER_TRACE_NAME, extra=server_extra)
        guest = qemu.GuestRun(bench, program, workdir, server=server, inproc_device=inproc,
                              params=dict(params or {}), name=name, **options)  # type: ignore[arg-type]
        result = guest.run()
        print(result.summary())
        print(f"  logs: {workdir}")
        return result

    return run


@pytest.fixture(scope="session")
def edu_ours(run_guest: GuestFactory) -> qemu.GuestResult:
    """Our server's edu, guest RAM memfd-backed and shared (DMA through mapped fds)."""
    return run_guest("edu-ours-memfd", "edu", device="edu", shared_memory=True, qemu_trace=["vfio_user*"])
