# SPDX-License-Identifier: BSD-3-Clause
"""A small single-threaded event loop: fd readiness (epoll) and timers.

Why not asyncio: asyncio streams cannot receive SCM_RIGHTS fds and cost about
twice the CPU per request (measured for the protocol brief).  This loop is what
the server needs and no more: readers, writers (a client socket whose buffer is
full), timers.  Nothing in the server waits inside a callback: every device of
the process shares this loop.
"""
from __future__ import annotations

import heapq
import logging
import itertools
import select
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("vfu_platform.loop")

_NOT_ONLY_OUT = ~select.EPOLLOUT  # readable, or an error / hang-up a reader must see
_WRITABLE = select.EPOLLOUT | select.EPOLLERR | select.EPOLLHUP


@dataclass(order=True)
class TimerHandle:
    when: float
    seq: int
    callback: Callable[[], None] | None = field(compare=False)

    def cancel(self) -> None:
        self.callback = None


def _run_guarded(callback: Callable[[], None]) -> None:
    """A failing device callback (an IRQ line, a model's timer) must not stop the server."""
    try:
        callback()
    except Exception:
        log.exception("event loop callback %r failed", callback)


class EventLoop:
    def __init__(self) -> None:
        # epoll used directly: the selectors module's key objects cost a visible
        # share of a round trip on the REGION_READ/WRITE hot path.
        self._epoll = select.epoll()
        self._readers: dict[int, Callable[[], None]] = {}
        self._writers: dict[int, Callable[[], None]] = {}
        self._timers: list[TimerHandle] = []
        self._seq = itertools.count()
        self.stopping = False

    # ------------------------------------------------------------ registration
    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        self._readers[fd] = callback
        self._update(fd)

    def remove_reader(self, fd: int) -> None:
        if self._readers.pop(fd, None) is not None:
            self._update(fd)

    def add_writer(self, fd: int, callback: Callable[[], None]) -> None:
        """Call `callback` while `fd` can take more output (a full socket buffer drained)."""
        self._writers[fd] = callback
        self._update(fd)

    def remove_writer(self, fd: int) -> None:
        if self._writers.pop(fd, None) is not None:
            self._update(fd)

    def _update(self, fd: int) -> None:
        """Make the epoll watch of `fd` what its reader and writer ask for (none: unwatched)."""
        mask = (select.EPOLLIN if fd in self._readers else 0) | (select.EPOLLOUT if fd in self._writers else 0)
        if not mask:
            try:
                self._epoll.unregister(fd)
            except (OSError, ValueError):
                pass  # already closed: the kernel dropped it from the epoll set
            return
        try:
            self._epoll.modify(fd, mask)
        except FileNotFoundError:  # not watched yet, or the old file behind this fd number was closed
            self._epoll.register(fd, mask)

    def watched(self) -> list[int]:
        return list(self._readers)

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        handle = TimerHandle(time.monotonic() + max(0.0, delay), next(self._seq), callback)
        heapq.heappush(self._timers, handle)
        return handle

    # ------------------------------------------------------------ running
    def run_once(self, timeout: float | None = None) -> None:
        """Wait for readiness or the next timer (at most `timeout` s), then dispatch."""
        timers = self._timers
        if timers:
            while timers and timers[0].callback is None:
                heapq.heappop(timers)
            if timers:
                until_timer = max(0.0, timers[0].when - time.monotonic())
                timeout = until_timer if timeout is None else min(timeout, until_timer)
        try:
            events = self._epoll.poll(-1 if timeout is None else timeout)
        except InterruptedError:
            events = []
        if len(events) > 1:
            # Simultaneous events run in fd order: with fds created in line order
            # (IRQ triggers), lines that fired "at the same instant" queue in index order.
            events.sort()
        readers = self._readers
        writers = self._writers
        for fd, mask in events:
            # An earlier callback of this turn may have removed this reader (a session
            # closing drops its IRQ fds) or replaced it: run what is registered now.
            # (If its fd number was reused meanwhile, the new reader sees a spurious
            # wakeup: readers read non-blocking and must tolerate that.)
            callback = readers.get(fd)
            if callback is not None and (not writers or mask & _NOT_ONLY_OUT):
                try:  # inline, not _run_guarded: this is the REGION_READ/WRITE hot path
                    callback()
                except Exception:
                    log.exception("event loop callback %r failed", callback)
            if writers and mask & _WRITABLE:
                callback = writers.get(fd)
                if callback is not None:
                    _run_guarded(callback)
        if timers:
            self._run_due_timers()

    def _run_due_timers(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0].when <= now:
            handle = heapq.heappop(self._timers)
            callback, handle.callback = handle.callback, None
            if callback is not None:
                _run_guarded(callback)

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
        self._epoll.close()
        self._readers.clear()
        self._writers.clear()
        self._timers.clear()
