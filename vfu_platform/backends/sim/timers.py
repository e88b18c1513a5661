# SPDX-License-Identifier: BSD-3-Clause
"""Deferred work of a simulated device: callbacks run later from the server's event loop.

`DeferredWork` holds a device's pending `Deferred` jobs.  While the device is
attached they run on the scheduler it was lent; while it is detached time stands
still: jobs are parked and start again, with their full delay, on the next attach.
"""
from __future__ import annotations

from collections.abc import Callable

from vfu_platform.backends.base import Scheduler, Timer


class Deferred:
    """A callback a model asked to run later (see `SimDevice.defer`)."""

    __slots__ = ("delay", "callback", "_work", "_timer", "cancelled")

    def __init__(self, work: DeferredWork, delay: float, callback: Callable[[], None]) -> None:
        self.delay = delay
        self.callback = callback
        self._work = work
        self._timer: Timer | None = None
        self.cancelled = False

    @property
    def parked(self) -> bool:
        """Waiting for a scheduler (the device is detached)."""
        return not self.cancelled and self._timer is None

    def cancel(self) -> None:
        self.cancelled = True
        self._park()
        self._work._jobs.discard(self)

    def _start(self, scheduler: Scheduler) -> None:
        self._timer = scheduler.call_later(self.delay, self._fire)

    def _park(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fire(self) -> None:
        if self.cancelled:
            return
        self._timer = None
        self._work._jobs.discard(self)
        self.cancelled = True  # done: a later cancel() is a no-op
        self.callback()


class DeferredWork:
    """The pending jobs of one device; see the module docstring."""

    def __init__(self) -> None:
        self._jobs: set[Deferred] = set()
        self._scheduler: Scheduler | None = None

    def __len__(self) -> int:
        return len(self._jobs)

    def add(self, delay: float, callback: Callable[[], None]) -> Deferred:
        """A new job: started at once when attached, parked otherwise."""
        job = Deferred(self, delay, callback)
        self._jobs.add(job)
        if self._scheduler is not None:
            job._start(self._scheduler)
        return job

    def attach(self, scheduler: Scheduler | None) -> None:
        """Park every job, then (with a scheduler) start each again with its full delay."""
        for job in self._jobs:
            job._park()
        self._scheduler = scheduler
        if scheduler is not None:
            for job in list(self._jobs):
                job._start(scheduler)

    def cancel_all(self) -> None:
        for job in list(self._jobs):
            job.cancel()


__all__ = ["Deferred", "DeferredWork"]
