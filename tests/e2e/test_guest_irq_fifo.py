# SPDX-License-Identifier: BSD-3-Clause
"""Several platform IRQs on one INTx: the gpio model, the bridge's FIFO and IRQ page.

The guest raises lines 0, 1 and 2 with one register write and must see them one
interrupt at a time, in that order, each exactly once (read IRQ_ACTIVE, ack the
line, re-arm INTx); then nothing active, nothing pending, no further interrupt.
"""
from __future__ import annotations

from collections.abc import Callable

import pytest

from testbench import qemu

pytestmark = pytest.mark.qemu
GuestFactory = Callable[..., qemu.GuestResult]


@pytest.fixture(scope="module")
def gpio_run(run_guest: GuestFactory) -> qemu.GuestResult:
    return run_guest("gpio-irq-fifo", "irq_fifo", device="gpio")


def test_irq_fifo_in_order_none_lost_none_doubled(gpio_run: qemu.GuestResult) -> None:
    assert gpio_run.passed, gpio_run.describe()
    order = gpio_run.checks["irq-fifo-order"]
    assert "delivered=0,1,2 extra=0" in order.detail, gpio_run.describe()
    for name in ("irq-fifo-quiet", "irq-fifo-shared-ack", "irq-fifo-quiet-2", "irq-counters"):
        assert gpio_run.checks[name].passed, gpio_run.describe()


def test_irq_fifo_pending_queue_seen_by_guest(gpio_run: qemu.GuestResult) -> None:
    """At each interrupt the IRQ page shows the rest of the queue: 2, then 1, then 0."""
    assert gpio_run.infos.get("fifo_pending_seen") == "2,1,0", gpio_run.infos


def test_irq_fifo_server_signalled_each_line_once(gpio_run: qemu.GuestResult) -> None:
    trace = gpio_run.server_trace()
    assert trace.events.get("irq-signal") == 5, trace.events
    assert not trace.errors, f"error replies: {trace.errors}"
