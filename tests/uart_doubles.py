# SPDX-License-Identifier: BSD-3-Clause
"""In-process harness for the UART models: a virtual clock with real fd readiness.

`PollScheduler` is `ManualScheduler` (timers run only in `advance`) plus the
event loop's `add_reader` / `remove_reader`; `poll()` runs the readers whose
fds `select` reports readable, so a model's pty or socket is real while time
is not.  `Wired` attaches a model to one, installs a real eventfd on its IRQ
and unmasks it (as the bridge does), and reads the line like the bridge would.
"""
from __future__ import annotations

import os
import select
import time
from collections.abc import Callable

from sim_doubles import ManualScheduler, take
from vfu_platform.backends.base import DeviceContext
from vfu_platform.backends.sim.uart_port import UartDevice


class NoDma:
    def read(self, iova: int, size: int) -> bytes:
        raise AssertionError("UARTs do no DMA")

    def write(self, iova: int, data: bytes) -> None:
        raise AssertionError("UARTs do no DMA")


class PollScheduler(ManualScheduler):
    def __init__(self) -> None:
        super().__init__()
        self.readers: dict[int, Callable[[], None]] = {}

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        self.readers[fd] = callback

    def remove_reader(self, fd: int) -> None:
        self.readers.pop(fd, None)

    def poll(self, timeout: float = 0.0) -> int:
        """Run the readers that are readable (waiting up to `timeout`); how many ran."""
        if not self.readers:
            return 0
        ready, _, _ = select.select(list(self.readers), [], [], timeout)
        for fd in ready:
            callback = self.readers.get(fd)
            if callback is not None:
                callback()
        return len(ready)

    def settle(self, until: Callable[[], bool], timeout: float = 3.0) -> None:
        """Poll and run due timers until `until()` holds (real time: pty/socket delivery)."""
        deadline = time.monotonic() + timeout
        while not until():
            if time.monotonic() > deadline:
                raise AssertionError("condition not reached")
            self.poll(0.01)
            self.advance(0)


class Wired:
    """A UART model attached to a PollScheduler, its IRQ wired to a real eventfd."""

    def __init__(self, dev: UartDevice) -> None:
        self.dev = dev
        self.sched = PollScheduler()
        self.context = DeviceContext(dma=NoDma(), scheduler=self.sched)
        dev.attach(self.context)
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        dev.set_irq_trigger(dev.irq, self.fd)
        dev.unmask_irq(dev.irq)

    def detach(self) -> None:
        self.dev.attach(None)

    def reattach(self) -> None:
        self.dev.attach(self.context)

    def r(self, offset: int, size: int = 4) -> int:
        return int.from_bytes(self.dev.read(0, offset, size), "little")

    def w(self, offset: int, value: int, size: int = 4) -> None:
        self.dev.write(0, offset, value.to_bytes(size, "little"))

    @property
    def line(self) -> bool:
        return self.dev.line_asserted(self.dev.irq)

    def signals(self) -> int:
        """Times the IRQ fired since the last call."""
        return take(self.fd)

    def eoi(self) -> None:
        """What the bridge does once the guest has handled the interrupt."""
        self.dev.unmask_irq(self.dev.irq)

    def host_read_all(self, expected: int, timeout: float = 3.0) -> bytes:
        """Collect `expected` bytes from the pty's host end (they may take a moment)."""
        got = b""
        deadline = time.monotonic() + timeout
        while len(got) < expected and time.monotonic() < deadline:
            got += self.dev.host_read()
            if len(got) < expected:
                time.sleep(0.005)
        return got

    def close(self) -> None:
        self.dev.close()
        os.close(self.fd)
