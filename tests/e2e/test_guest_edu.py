# SPDX-License-Identifier: BSD-3-Clause
"""Our server's edu model driven by a Linux guest: registers, INTx, DMA, reset.

Twice: guest RAM memfd-backed and shared (QEMU's DMA_MAPs carry fds, the server
maps guest memory), and plain RAM (no fds: every DMA is a DMA_READ/DMA_WRITE
message to QEMU).
"""
from __future__ import annotations

from collections.abc import Callable

import pytest

from testbench import qemu

pytestmark = pytest.mark.qemu
GuestFactory = Callable[..., qemu.GuestResult]

EDU_CHECKS = {
    "find-device", "config-ids", "bar0-size", "edu-ident", "edu-liveness-initial", "edu-liveness",
    "edu-factorial", "edu-undefined-regs", "edu-dma-regs", "uio-bind", "irq-raise", "irq-second",
    "irq-level-rearm", "edu-factorial-irq", "dma-setup", "dma-round-trip", "dma-partial", "dma-irq",
    "dma-no-busmaster", "reset-available", "reset-write", "reset-state", "reset-function",
}


@pytest.fixture(scope="module")
def edu_plain(run_guest: GuestFactory) -> qemu.GuestResult:
    return run_guest("edu-ours-plain", "edu", device="edu", shared_memory=False)


def assert_all_passed(result: qemu.GuestResult) -> None:
    assert result.passed, result.describe()
    missing = EDU_CHECKS - set(result.checks)
    assert not missing, f"checks never ran: {sorted(missing)}\n{result.describe()}"


def test_edu_memfd_ram(edu_ours: qemu.GuestResult) -> None:
    assert_all_passed(edu_ours)
    trace = edu_ours.server_trace()
    assert trace.fds_on_dma_map > 0, "shared memfd RAM but no DMA_MAP carried an fd"
    assert trace.commands.get("DMA_READ", 0) == 0 and trace.commands.get("DMA_WRITE", 0) == 0, trace.commands
    assert not trace.errors, f"error replies: {trace.errors}"


def test_edu_plain_ram_uses_dma_messages(edu_plain: qemu.GuestResult) -> None:
    assert_all_passed(edu_plain)
    trace = edu_plain.server_trace()
    assert trace.fds_on_dma_map == 0, "plain RAM, yet a DMA_MAP carried an fd"
    # round trip, partial, irq, and the bus-master-off buffer fill read RAM; four transfers write it
    assert trace.commands.get("DMA_READ", 0) >= 3, trace.commands
    assert trace.commands.get("DMA_WRITE", 0) >= 3, trace.commands
    assert not trace.errors, f"error replies: {trace.errors}"


def test_guest_reset_reaches_the_server(edu_ours: qemu.GuestResult) -> None:
    """`echo 1 > reset` (a secondary bus reset on the root port) becomes DEVICE_RESET."""
    assert edu_ours.infos.get("reset_method") == "bus", edu_ours.infos
    trace = edu_ours.server_trace()
    # one at machine reset before the guest runs, one from the guest
    assert trace.commands.get("DEVICE_RESET", 0) >= 2, trace.commands
    assert edu_ours.checks["reset-state"].passed, edu_ours.describe()


def test_interrupts_signalled_once_each(edu_ours: qemu.GuestResult) -> None:
    """7 edu interrupts in the program (raise, second, level x2, factorial, DMA, pre-reset)."""
    trace = edu_ours.server_trace()
    assert trace.events.get("irq-signal") == 7, trace.events
