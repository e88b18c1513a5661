# SPDX-License-Identifier: BSD-3-Clause
"""The server's event loop (vfu_platform/server/loop.py) with real fds: eventfds and pipes."""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator

import pytest

from vfu_platform.server.loop import EventLoop


@pytest.fixture
def loop() -> Iterator[EventLoop]:
    loop = EventLoop()
    yield loop
    loop.close()


@pytest.fixture
def make_eventfd() -> Iterator[Callable[[], int]]:
    made: list[int] = []

    def make() -> int:
        fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        made.append(fd)
        return fd

    yield make
    for fd in made:
        try:
            os.close(fd)
        except OSError:
            pass


def drain(fd: int) -> int:
    try:
        return os.eventfd_read(fd)
    except BlockingIOError:
        return 0


# --------------------------------------------------------------------------- readers


def test_reader_runs_when_its_fd_is_readable(loop: EventLoop, make_eventfd) -> None:
    fd = make_eventfd()
    seen: list[int] = []
    loop.add_reader(fd, lambda: seen.append(drain(fd)))
    loop.run_once(0)
    assert seen == []
    os.eventfd_write(fd, 3)
    loop.run_once(1)
    assert seen == [3]


def test_removed_reader_is_not_called(loop: EventLoop, make_eventfd) -> None:
    fd = make_eventfd()
    calls: list[str] = []
    loop.add_reader(fd, lambda: calls.append("x"))
    loop.remove_reader(fd)
    os.eventfd_write(fd, 1)
    loop.run_once(0.05)
    assert calls == []
    assert fd not in loop.watched()


def test_remove_unknown_reader_is_harmless(loop: EventLoop, make_eventfd) -> None:
    loop.remove_reader(make_eventfd())
    loop.remove_reader(12345)


def test_add_reader_twice_replaces_the_callback(loop: EventLoop, make_eventfd) -> None:
    fd = make_eventfd()
    calls: list[str] = []
    loop.add_reader(fd, lambda: calls.append("old"))
    loop.add_reader(fd, lambda: (calls.append("new"), drain(fd)))
    os.eventfd_write(fd, 1)
    loop.run_once(1)
    assert calls == ["new"]
    assert loop.watched().count(fd) == 1


def test_simultaneous_events_run_in_fd_order(loop: EventLoop, make_eventfd) -> None:
    fds = [make_eventfd() for _ in range(5)]
    order: list[int] = []
    for fd in reversed(fds):  # registration order must not matter
        loop.add_reader(fd, lambda fd=fd: (order.append(fd), drain(fd)))
    for fd in (fds[3], fds[0], fds[4], fds[1], fds[2]):
        os.eventfd_write(fd, 1)
    loop.run_once(1)
    assert order == sorted(fds)


def test_reader_removed_by_an_earlier_callback_in_the_same_turn_is_not_called(loop: EventLoop, make_eventfd) -> None:
    """A session closing drops its IRQ fds' readers: an event already collected for one
    of them in the same turn must not run its callback afterwards."""
    first, second = make_eventfd(), make_eventfd()
    assert first < second
    calls: list[str] = []

    def on_first() -> None:
        calls.append("first")
        drain(first)
        loop.remove_reader(second)

    loop.add_reader(first, on_first)
    loop.add_reader(second, lambda: calls.append("second"))
    os.eventfd_write(first, 1)
    os.eventfd_write(second, 1)
    loop.run_once(1)
    assert calls == ["first"]


def test_reader_replaced_by_an_earlier_callback_runs_the_new_callback(loop: EventLoop, make_eventfd) -> None:
    first, second = make_eventfd(), make_eventfd()
    calls: list[str] = []

    def on_first() -> None:
        drain(first)
        loop.add_reader(second, lambda: (calls.append("new"), drain(second)))

    loop.add_reader(first, on_first)
    loop.add_reader(second, lambda: calls.append("old"))
    os.eventfd_write(first, 1)
    os.eventfd_write(second, 1)
    loop.run_once(1)
    assert calls == ["new"]


def test_pipe_eof_is_readable(loop: EventLoop) -> None:
    r, w = os.pipe()
    try:
        got: list[bytes] = []
        loop.add_reader(r, lambda: got.append(os.read(r, 10)))
        os.close(w)
        loop.run_once(1)
        assert got == [b""]
    finally:
        loop.remove_reader(r)
        os.close(r)


# --------------------------------------------------------------------------- timers


def test_timers_run_in_time_order(loop: EventLoop) -> None:
    order: list[str] = []
    loop.call_later(0.03, lambda: order.append("c"))
    loop.call_later(0.01, lambda: order.append("a"))
    loop.call_later(0.02, lambda: order.append("b"))
    assert loop.run_until(lambda: len(order) == 3, timeout=2)
    assert order == ["a", "b", "c"]


def test_timers_with_the_same_deadline_run_in_scheduling_order(loop: EventLoop) -> None:
    order: list[int] = []
    for n in range(10):
        loop.call_later(0, lambda n=n: order.append(n))
    loop.run_once(0)
    assert order == list(range(10))


def test_negative_delay_runs_at_once(loop: EventLoop) -> None:
    ran: list[bool] = []
    loop.call_later(-5, lambda: ran.append(True))
    loop.run_once(0)
    assert ran == [True]


def test_cancelled_timer_does_not_run(loop: EventLoop) -> None:
    ran: list[str] = []
    handle = loop.call_later(0.01, lambda: ran.append("cancelled"))
    loop.call_later(0.02, lambda: ran.append("kept"))
    handle.cancel()
    handle.cancel()  # twice is fine
    assert loop.run_until(lambda: bool(ran), timeout=2)
    assert ran == ["kept"]


def test_run_once_waits_no_longer_than_the_next_timer(loop: EventLoop) -> None:
    ran: list[float] = []
    start = time.monotonic()
    loop.call_later(0.05, lambda: ran.append(time.monotonic() - start))
    loop.run_once(None)  # no fds: would block forever without the timer
    assert ran and 0.04 <= ran[0] < 1.0


def test_timer_scheduled_by_a_timer_runs_later(loop: EventLoop) -> None:
    order: list[str] = []

    def first() -> None:
        order.append("first")
        loop.call_later(0, lambda: order.append("second"))

    loop.call_later(0, first)
    loop.run_once(0)
    assert loop.run_until(lambda: len(order) == 2, timeout=1)
    assert order == ["first", "second"]


def test_timer_callback_may_cancel_another_due_timer(loop: EventLoop) -> None:
    ran: list[str] = []
    handles = []
    loop.call_later(0, lambda: (ran.append("killer"), handles[0].cancel()))
    handles.append(loop.call_later(0, lambda: ran.append("victim")))
    loop.run_once(0)
    assert ran == ["killer"]


def test_fd_events_run_before_due_timers(loop: EventLoop, make_eventfd) -> None:
    fd = make_eventfd()
    order: list[str] = []
    loop.call_later(0, lambda: order.append("timer"))
    loop.add_reader(fd, lambda: (order.append("fd"), drain(fd)))
    os.eventfd_write(fd, 1)
    loop.run_once(1)
    assert order == ["fd", "timer"]


# --------------------------------------------------------------------------- run_until


def test_run_until_returns_true_when_done(loop: EventLoop, make_eventfd) -> None:
    fd = make_eventfd()
    got: list[int] = []
    loop.add_reader(fd, lambda: got.append(drain(fd)))
    loop.call_later(0.01, lambda: os.eventfd_write(fd, 7))
    assert loop.run_until(lambda: bool(got), timeout=2)
    assert got == [7]


def test_run_until_times_out(loop: EventLoop) -> None:
    start = time.monotonic()
    assert not loop.run_until(lambda: False, timeout=0.05)
    assert 0.04 <= time.monotonic() - start < 1.0


def test_run_until_already_done_returns_at_once(loop: EventLoop) -> None:
    assert loop.run_until(lambda: True, timeout=0)


def test_stopping_ends_run_until(loop: EventLoop) -> None:
    loop.call_later(0.01, lambda: setattr(loop, "stopping", True))
    start = time.monotonic()
    assert not loop.run_until(lambda: False)
    assert time.monotonic() - start < 1.0


def test_run_until_is_reentrant(loop: EventLoop, make_eventfd) -> None:
    """A handler waiting for a DMA reply runs the loop inside a callback."""
    request, reply = make_eventfd(), make_eventfd()
    log: list[str] = []
    answered: list[int] = []

    def on_reply() -> None:
        answered.append(drain(reply))
        log.append("reply")

    def on_request() -> None:
        drain(request)
        log.append("request")
        loop.call_later(0.01, lambda: os.eventfd_write(reply, 1))
        assert loop.run_until(lambda: bool(answered), timeout=2)
        log.append("request done")

    loop.add_reader(request, on_request)
    loop.add_reader(reply, on_reply)
    os.eventfd_write(request, 1)
    assert loop.run_until(lambda: "request done" in log, timeout=3)
    assert log == ["request", "reply", "request done"]


def test_watched_lists_registered_fds(loop: EventLoop, make_eventfd) -> None:
    a, b = make_eventfd(), make_eventfd()
    loop.add_reader(a, lambda: None)
    loop.add_reader(b, lambda: None)
    assert sorted(loop.watched()) == sorted([a, b])
    loop.remove_reader(a)
    assert loop.watched() == [b]
