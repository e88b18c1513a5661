# SPDX-License-Identifier: BSD-3-Clause
"""pytest fixtures for testing a device over vfio-user (loaded through the `pytest11` entry point).

Serve your own model by overriding `vfu_device`::

    @pytest.fixture
    def vfu_device():
        return Blinky()          # a model object: served on a thread of the test process

    def test_id(vfu_client):
        assert vfu_client.read32(0, 0) == 0x1234

or start servers yourself with the `vfu_server` factory.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from vfu_platform.client import VfioUserClient
from vfu_platform.testing.helpers import EventFd, MemfdWindow
from vfu_platform.testing.serving import RunningServer, serve_in_subprocess, serve_in_thread


@pytest.fixture
def vfu_device() -> object:
    """The device `vfu_client` is served: "edu" unless a test module or conftest overrides it.

    A model spec ("edu", "pkg.mod:Class", "file.py:Class") is served by a
    `vfu_platform serve` process; a model or `ServedDevice` object on a thread.
    """
    return "edu"


@pytest.fixture
def vfu_server(tmp_path: Path) -> Iterator[Callable[..., RunningServer]]:
    """A factory: `vfu_server(model="edu", *, thread=None, **options) -> RunningServer`.

    A model spec (str) or a list of `serve` arguments starts a server process
    (`serve_in_subprocess`: irq_mode, config, trace, extra, name, model options as
    keywords); a device object, or `thread=True`, serves on a thread (`serve_in_thread`).
    Files go in `tmp_path`.  Every server still running at the end is stopped and must
    end cleanly (exit 0, socket removed, no traceback).
    """
    started: list[RunningServer] = []

    def start(model: object = "edu", *, thread: bool | None = None, **options: object) -> RunningServer:
        options.setdefault("name", f"vfu{len(started)}.sock")
        in_thread = not isinstance(model, (str, list, tuple)) if thread is None else thread
        if in_thread:
            server: RunningServer = serve_in_thread(model, tmp_path, **options)  # type: ignore[arg-type]
        else:
            server = serve_in_subprocess(model, tmp_path, **options)  # type: ignore[arg-type]
        started.append(server)
        return server

    yield start
    for server in started:
        if server.alive():
            server.stop(check=True)


@pytest.fixture
def vfu_client(vfu_server: Callable[..., RunningServer], vfu_device: object) -> Iterator[VfioUserClient]:
    """A connected, negotiated client of a server serving `vfu_device`; closed at teardown."""
    server = vfu_server(vfu_device)
    client = server.connect()
    yield client
    client.close()


@pytest.fixture
def vfu_eventfds() -> Iterator[Callable[[int], list[EventFd]]]:
    """`vfu_eventfds(n)` makes n real eventfds (`EventFd`), closed after the test."""
    made: list[EventFd] = []

    def make(n: int = 1) -> list[EventFd]:
        new = [EventFd() for _ in range(n)]
        made.extend(new)
        return new

    yield make
    for efd in made:
        efd.close()


@pytest.fixture
def vfu_memfds() -> Iterator[Callable[..., MemfdWindow]]:
    """`vfu_memfds(size=0x1000)` makes a mapped memfd (`MemfdWindow`) to DMA_MAP; closed after the test."""
    made: list[MemfdWindow] = []

    def make(size: int = 0x1000, name: str = "vfu-test-dma") -> MemfdWindow:
        window = MemfdWindow(size, name)
        made.append(window)
        return window

    yield make
    for window in made:
        window.close()


__all__: Sequence[str] = ["vfu_client", "vfu_device", "vfu_eventfds", "vfu_memfds", "vfu_server"]
