# SPDX-License-Identifier: BSD-3-Clause
"""A small single-threaded event loop: fd readiness (epoll) and timers.

Why not asyncio: asyncio streams cannot receive SCM_RIGHTS fds and cost about
twice the CPU per request (measured for the protocol brief).  This loop is what
the server needs and no more; `run_until` may be re-entered (a handler that
waits for a DMA reply keeps serving the socket meanwhile).
"""
from __future__ import annotations

import heapq
import itertools
import selectors
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(order=True)
class TimerHandle:
    when: float
    seq: int
    callback: Callable[[], None] | None = field(compare=False)

    def cancel(self) -> None:
        self.callback = None


class EventLoop:
    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._timers: list[TimerHandle] = []
        self._seq = itertools.count()
        self.stopping = False

    # ------------------------------------------------------------ registration
    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        try:
            self._selector.modify(fd, selectors.EVENT_READ, callback)
        except KeyError:
            self._selector.register(fd, selectors.EVENT_READ, callback)

    def remove_reader(self, fd: int) -> None:
        try:
            self._selector.unregister(fd)
        except (KeyError, ValueError):
            pass

    def watched(self) -> list[int]:
        return [key.fd for key in self._selector.get_map().values()]

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        handle = TimerHandle(time.monotonic() + max(0.0, delay), next(self._seq), callback)
        heapq.heappush(self._timers, handle)
        return handle

    # ------------------------------------------------------------ running
    def run_once(self, timeout: float | None = None) -> None:
        """Wait for readiness or the next timer (at most `timeout` s), then dispatch."""
        while self._timers and self._timers[0].callback is None:
            heapq.heappop(self._timers)
        if self._timers:
            until_timer = max(0.0, self._timers[0].when - time.monotonic())
            timeout = until_timer if timeout is None else min(timeout, until_timer)
        events = self._selector.select(timeout)
        if len(events) > 1:
            # Simultaneous events run in fd order: with fds created in line order
            # (IRQ triggers), lines that fired "at the same instant" queue in index order.
            events.sort(key=lambda event: event[0].fd)
        registered = self._selector.get_map()
        for key, _mask in events:
            # An earlier callback of this turn may have removed this reader (a session
            # closing drops its IRQ fds) or replaced it: run what is registered now.
            # (If its fd number was reused meanwhile, the new reader sees a spurious
            # wakeup: readers read non-blocking and must tolerate that.)
            current = registered.get(key.fd)
            if current is not None:
                current.data()
        self._run_due_timers()

    def _run_due_timers(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0].when <= now:
            handle = heapq.heappop(self._timers)
            callback, handle.callback = handle.callback, None
            if callback is not None:
                callback()

    def run_until(self, done: Callable[[], bool], timeout: float | None = None) -> bool:
        """Run until `done()` (True) or until `timeout` s pass or the loop is stopped (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not done():
            if self.stopping:
                return False
            remaining = None
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
            self.run_once(remaining)
        return True

    def close(self) -> None:
        self._selector.close()
        self._timers.clear()
