# SPDX-License-Identifier: BSD-3-Clause
"""Shared helpers for the tests that run a real `vfu_platform serve` subprocess.

Everything here is real: the server is `python -m vfu_platform serve` in its own
process, clients speak over a real unix socket, interrupts arrive on real eventfds
and DMA windows are real memfds.  Import what you need explicitly:

    from tests.server_fixtures import ServerProcess, start_server, ...

Resource checks read /proc/<server pid>/{fd,maps,task}, so a test can tell whether
a client left anything behind in the server.
"""
from __future__ import annotations

import mmap
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from vfu_platform import vfio_abi
from vfu_platform.bridge import irq_page
from vfu_platform.client import VfioUserClient, make_eventfd

REPO = Path(__file__).resolve().parents[1]
#: The interpreter of the project's venv (falls back to the one running pytest).
PYTHON = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv" / "bin" / "python").exists() else sys.executable

CONFIG = vfio_abi.PCI_CONFIG_REGION_INDEX  # region 7
INTX = vfio_abi.PCI_INTX_IRQ_INDEX
MSIX = vfio_abi.PCI_MSIX_IRQ_INDEX

TRIGGER_EVENTFD = vfio_abi.IRQ_SET_ACTION_TRIGGER | vfio_abi.IRQ_SET_DATA_EVENTFD
TRIGGER_NONE = vfio_abi.IRQ_SET_ACTION_TRIGGER | vfio_abi.IRQ_SET_DATA_NONE
UNMASK_NONE = vfio_abi.IRQ_SET_ACTION_UNMASK | vfio_abi.IRQ_SET_DATA_NONE
UNMASK_EVENTFD = vfio_abi.IRQ_SET_ACTION_UNMASK | vfio_abi.IRQ_SET_DATA_EVENTFD
MASK_NONE = vfio_abi.IRQ_SET_ACTION_MASK | vfio_abi.IRQ_SET_DATA_NONE

#: BAR index of the IRQ page per model (edu: BAR0 registers; gpio: BAR0 registers, BAR1 SRAM).
IRQ_PAGE_BAR = {"edu": 1, "gpio": 2}
NO_IRQ = irq_page.NO_IRQ

#: How long a "nothing arrives" check waits.  Signals the server sends in answer to a
#: message are written before its reply; those that follow a line firing come one
#: event-loop turn later, well inside this.
QUIET = 0.1
#: How long a "this arrives" check waits before failing.
ARRIVE = 3.0


# --------------------------------------------------------------------------- server process


@dataclass(frozen=True)
class Resources:
    """What the server process holds at one instant."""

    fds: tuple[str, ...]  # readlink of every /proc/PID/fd entry, sorted
    memfd_maps: tuple[str, ...]  # /proc/PID/maps lines of memfd mappings
    threads: int

    def describe(self) -> str:
        return f"{len(self.fds)} fds, {len(self.memfd_maps)} memfd mappings, {self.threads} threads"


@dataclass
class ServerProcess:
    """A running `vfu_platform serve`; `stop()` ends it and returns the exit status."""

    proc: subprocess.Popen[bytes]
    socket_path: str
    stderr_path: Path
    trace_path: str | None = None
    clients: list[VfioUserClient] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def connect(self, negotiate: bool = True, timeout: float = 5.0, **kwargs: object) -> VfioUserClient:
        client = VfioUserClient.connect(self.socket_path, timeout=timeout, negotiate=negotiate, **kwargs)  # type: ignore[arg-type]
        self.clients.append(client)
        return client

    def raw_socket(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(self.socket_path)
        return sock

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    # -- resources ------------------------------------------------------------------
    def resources(self) -> Resources:
        base = f"/proc/{self.pid}"
        fds = []
        for name in os.listdir(f"{base}/fd"):
            try:
                fds.append(os.readlink(f"{base}/fd/{name}"))
            except FileNotFoundError:  # closed while we looked
                pass
        with open(f"{base}/maps") as maps:
            memfd = tuple(line.rstrip() for line in maps if "/memfd:" in line)
        threads = len(os.listdir(f"{base}/task"))
        return Resources(tuple(sorted(_normalise_fd(f) for f in fds)), memfd, threads)

    def wait_resources(self, expected: Resources, timeout: float = ARRIVE) -> Resources:
        """Poll until the server holds exactly `expected` (fd kinds, memfd maps, threads)."""
        deadline = time.monotonic() + timeout
        while True:
            now = self.resources()
            if now == expected or time.monotonic() > deadline:
                return now
            time.sleep(0.01)

    def idle_baseline(self) -> Resources:
        """Resources once a first client has come and gone (line eventfds are made lazily)."""
        with self.connect() as client:
            client.sync()
        self.clients.clear()
        deadline = time.monotonic() + ARRIVE
        previous = None
        # The session ends when the server sees EOF; wait until two reads agree.
        while time.monotonic() < deadline:
            now = self.resources()
            if now == previous and not _has_client_socket(now):
                return now
            previous = now
            time.sleep(0.02)
        return self.resources()

    # -- shutdown ---------------------------------------------------------------------
    def stop(self, signum: int = signal.SIGTERM, timeout: float = 5.0) -> int:
        for client in self.clients:
            client.close()
        self.clients.clear()
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"server did not stop on signal {signum}:\n{self.stderr()}") from None
        return self.proc.returncode


def _normalise_fd(target: str) -> str:
    # "socket:[123]" / "anon_inode:[eventfd]" -> kind only; files keep their path.
    if target.startswith("socket:"):
        return "socket"
    if target.startswith("pipe:"):
        return "pipe"
    return target


def _has_client_socket(res: Resources) -> bool:
    # The idle server holds exactly one socket: the listener.
    return res.fds.count("socket") > 1


def server_args(
    socket_path: str,
    device: str = "edu",
    irq_mode: str | None = None,
    config: str | None = None,
    trace: str | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    args = [PYTHON, "-m", "vfu_platform", "serve", "--socket", socket_path, "--device", device]
    if irq_mode:
        args += ["--irq-mode", irq_mode]
    if config:
        args += ["--config", config]
    if trace:
        args += ["--trace", trace]
    return args + list(extra)


def start_server(
    directory: Path,
    device: str = "edu",
    irq_mode: str | None = None,
    config: str | None = None,
    trace: bool = False,
    extra: Sequence[str] = (),
    name: str = "vfu.sock",
) -> ServerProcess:
    """Start a server in `directory` and wait until it accepts clients."""
    socket_path = str(directory / name)
    stderr_path = directory / f"{name}.stderr"
    trace_path = str(directory / f"{name}.trace") if trace else None
    with open(stderr_path, "wb") as stderr:
        proc = subprocess.Popen(
            server_args(socket_path, device, irq_mode, config, trace_path, extra),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            cwd=str(REPO),
        )
    server = ServerProcess(proc, socket_path, stderr_path, trace_path)
    deadline = time.monotonic() + 10
    while "serving" not in server.stderr():
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}:\n{server.stderr()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"server did not start:\n{server.stderr()}")
        time.sleep(0.005)
    return server


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start servers on demand (`server_factory(device="gpio", irq_mode="msix")`); all are stopped after the test."""
    started: list[ServerProcess] = []

    def factory(**kwargs: object) -> ServerProcess:
        kwargs.setdefault("name", f"vfu{len(started)}.sock")
        server = start_server(tmp_path, **kwargs)  # type: ignore[arg-type]
        started.append(server)
        return server

    yield factory
    for server in started:
        if server.alive():
            server.stop()


@pytest.fixture
def edu_server(server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    return server_factory(device="edu")


@pytest.fixture
def gpio_server(server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    return server_factory(device="gpio")


@pytest.fixture
def gpio_msix_server(server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    return server_factory(device="gpio", irq_mode="msix")


def write_config(directory: Path, text: str, name: str = "vfu.toml") -> str:
    path = directory / name
    path.write_text(text)
    return str(path)


# --------------------------------------------------------------------------- eventfds


class EventFd:
    """A real non-blocking eventfd the test keeps (the server gets a duplicate via SCM_RIGHTS)."""

    def __init__(self) -> None:
        self.fd = make_eventfd()

    def take(self) -> int:
        """Read and clear the counter (0 if nothing was signalled)."""
        try:
            return os.eventfd_read(self.fd)
        except BlockingIOError:
            return 0

    def wait(self, timeout: float = ARRIVE) -> int:
        """Wait for a signal; returns the counter (0 on timeout)."""
        readable, _, _ = select.select([self.fd], [], [], timeout)
        return self.take() if readable else 0

    def expect_one(self, timeout: float = ARRIVE, what: str = "signal") -> None:
        """Exactly one signal arrives (and no second one right after it)."""
        count = self.wait(timeout)
        assert count >= 1, f"no {what} within {timeout} s"
        time.sleep(QUIET / 2)
        count += self.take()
        assert count == 1, f"{what}: expected exactly one signal, got {count}"

    def expect_none(self, wait: float = QUIET, what: str = "signal") -> None:
        count = self.wait(wait)
        assert count == 0, f"unexpected {what} (counter {count})"

    def signal(self) -> None:
        os.eventfd_write(self.fd, 1)

    def pending(self) -> bool:
        """True while the counter is non-zero, without consuming it.

        The server holds the same eventfd (SCM_RIGHTS passes the open file, not a copy),
        so `take()` would steal a signal meant for it; use this to see whether it read one.
        """
        readable, _, _ = select.select([self.fd], [], [], 0)
        return bool(readable)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@pytest.fixture
def eventfds() -> Iterator[Callable[[int], list[EventFd]]]:
    """`eventfds(n)` makes n EventFds, closed after the test."""
    made: list[EventFd] = []

    def make(n: int = 1) -> list[EventFd]:
        new = [EventFd() for _ in range(n)]
        made.extend(new)
        return new

    yield make
    for efd in made:
        efd.close()


def install_intx(client: VfioUserClient, trigger: EventFd) -> None:
    client.set_irqs(INTX, TRIGGER_EVENTFD, 0, 1, [trigger.fd])


def intx_unmask(client: VfioUserClient) -> None:
    """The userspace-path EOI QEMU sends after the first trapped BAR access."""
    client.set_irqs(INTX, UNMASK_NONE, 0, 1)


# --------------------------------------------------------------------------- memfd windows


class MemfdWindow:
    """A memfd the test maps itself; its fd goes to the server with DMA_MAP."""

    def __init__(self, size: int, name: str = "vfu-test-dma") -> None:
        self.size = size
        self.fd = os.memfd_create(name, os.MFD_CLOEXEC)
        os.ftruncate(self.fd, size)
        self.map = mmap.mmap(self.fd, size)

    def close(self) -> None:
        self.map.close()
        os.close(self.fd)


@pytest.fixture
def memfds() -> Iterator[Callable[..., MemfdWindow]]:
    made: list[MemfdWindow] = []

    def make(size: int = 0x1000, name: str = "vfu-test-dma") -> MemfdWindow:
        window = MemfdWindow(size, name)
        made.append(window)
        return window

    yield make
    for window in made:
        window.close()


# --------------------------------------------------------------------------- reading state


def config_read(client: VfioUserClient, offset: int, size: int) -> int:
    return int.from_bytes(client.region_read(CONFIG, offset, size), "little")


def config_write(client: VfioUserClient, offset: int, size: int, value: int) -> None:
    client.region_write(CONFIG, offset, value.to_bytes(size, "little"))


def pci_status(client: VfioUserClient) -> int:
    return config_read(client, 0x06, 2)


def intx_status(client: VfioUserClient) -> bool:
    """PCI STATUS bit 3: the function's INTx is pending."""
    return bool(pci_status(client) & 0x0008)


def set_command(client: VfioUserClient, bits: int) -> None:
    config_write(client, 0x04, 2, bits)


def irq_reg(client: VfioUserClient, model: str, offset: int) -> int:
    """A register of the bridge's IRQ page (docs/irq-page.md)."""
    return client.read32(IRQ_PAGE_BAR[model], offset)


def wait_until(predicate: Callable[[], bool], timeout: float = ARRIVE, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)
