# SPDX-License-Identifier: BSD-3-Clause
"""Test doubles for simulated device models: a virtual clock and a bytearray as client memory.

The models under test get real eventfds; only time and client memory are
stand-ins here (the server's real ones are covered through the socket tests).
"""
from __future__ import annotations

import errno
import os
from collections.abc import Callable

from vfu_platform.backends.base import DmaError


class ManualTimer:
    def __init__(self, when: float, seq: int, callback: Callable[[], None]) -> None:
        self.when, self.seq, self.callback, self.cancelled = when, seq, callback, False

    def cancel(self) -> None:
        self.cancelled = True


class ManualScheduler:
    """A virtual clock: callbacks run only inside `advance`."""

    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[ManualTimer] = []

    def call_later(self, delay: float, callback: Callable[[], None]) -> ManualTimer:
        timer = ManualTimer(self.now + delay, len(self.timers), callback)
        self.timers.append(timer)
        return timer

    def pending(self) -> int:
        return sum(not t.cancelled for t in self.timers)

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        while due := [t for t in self.timers if not t.cancelled and t.when <= end + 1e-12]:  # 1e-12: float sums of periods
            timer = min(due, key=lambda t: (t.when, t.seq))
            timer.cancelled = True
            self.now = timer.when
            timer.callback()
        self.now = end


class RamDma:
    """Client memory: a bytearray at IOVA 0."""

    def __init__(self, size: int) -> None:
        self.ram = bytearray(size)

    def _check(self, iova: int, size: int) -> None:
        if iova < 0 or iova + size > len(self.ram):
            raise DmaError(errno.EFAULT, f"{iova:#x}+{size} is not mapped")

    def read(self, iova: int, size: int) -> bytes:
        self._check(iova, size)
        return bytes(self.ram[iova : iova + size])

    def write(self, iova: int, data: bytes) -> None:
        self._check(iova, len(data))
        self.ram[iova : iova + len(data)] = data

    def read_then(self, iova: int, size: int, done: Callable[[bytes | DmaError], None]) -> None:
        try:
            data = self.read(iova, size)
        except DmaError as exc:
            done(exc)
            return
        done(data)

    def write_then(self, iova: int, data: bytes, done: Callable[[bytes | DmaError], None]) -> None:
        try:
            self.write(iova, data)
        except DmaError as exc:
            done(exc)
            return
        done(b"")


def take(fd: int) -> int:
    """The eventfd's count since the last take (0 if it was not signalled)."""
    try:
        return os.eventfd_read(fd)
    except BlockingIOError:
        return 0
