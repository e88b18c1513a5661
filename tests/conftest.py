# SPDX-License-Identifier: BSD-3-Clause
"""Shared fixtures: a real server process on a real unix socket, and clients for it.

`server` is one `vfu_platform serve` subprocess per test module (device `edu`, or
the module's `SERVER_DEVICE`).  `client` is a fresh connection to it, negotiated,
for one test; when the test ends the client is closed and the server's open fds
must come back to what they were with no client attached, so every test also
checks that the server released every fd it was given.  Stopping a server sends
SIGTERM and requires a clean exit, a removed socket file and no traceback in its log.

Malformed messages are built by hand: `raw_request` sends any bytes and returns the
reply, `expect_error` checks an error reply's errno, and `assert_serving` checks
that the connection still works after one.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from vfu_platform.client import Reply, VfioUserClient
from vfu_platform.protocol.caps import Capabilities
from vfu_platform.protocol.codec import encode
from vfu_platform.protocol.constants import HEADER_SIZE, MsgFlags
from vfu_platform.protocol.header import HEADER

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 10.0
IDLE_TIMEOUT = 3.0


def pytest_report_header(config: pytest.Config) -> list[str]:
    """Name the guest benches' versions (from the cache's manifest), so a failure report has them."""
    from guest_policy import opted_out
    from vfu_platform.testbench import qemu

    lines = [f"guest suites skipped on purpose: {', '.join(opted_out())}"] if opted_out() else []
    env_file = qemu.default_cache() / "env.sh"
    try:
        bench = qemu.Bench.from_env_file(env_file)
    except (OSError, qemu.BenchError):
        return lines + [f"guest bench: not provisioned yet in {env_file.parent} (the guest suites will do it)"]
    return lines + [f"guest bench: {bench.versions()}"]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    from guest_policy import opted_out

    for suite in opted_out():
        terminalreporter.write_line(f"NOTE: skipped on purpose, not tested: {suite}", yellow=True, bold=True)


def open_fds(pid: int) -> list[str]:
    """What each open fd of process `pid` refers to (/proc/PID/fd)."""
    targets = []
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            targets.append(os.readlink(f"/proc/{pid}/fd/{name}"))
        except FileNotFoundError:  # closed while we looked
            pass
    return targets


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class ServerProcess:
    """A `vfu_platform serve` subprocess and its socket, log and trace files."""

    def __init__(self, workdir: Path, device: str = "edu", extra_args: Sequence[str] = (), traced: bool = True) -> None:
        self.workdir = workdir
        self.device = device
        self.socket_path = str(workdir / "vfu.sock")
        self.log_path = workdir / "server.log"
        self.trace_path = workdir / "trace.jsonl"
        trace = ["--trace", str(self.trace_path)] if traced else []
        args = [sys.executable, "-m", "vfu_platform", "serve", "--socket", self.socket_path,
                "--device", device, *trace, "-v", *extra_args]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            self._wait_until_serving()
            self.idle_fds = self._measure_idle_fds()
        except BaseException:
            self.proc.kill()
            self.proc.wait()
            raise

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _wait_until_serving(self) -> None:
        # The socket file appears at bind(), before listen() and the SIGTERM handler:
        # the "serving" line on stderr is the moment the server is ready.
        deadline = time.monotonic() + START_TIMEOUT
        while f"serving {self.device} on" not in self.log():
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not start serving:\n{self.log()}")
            time.sleep(0.01)

    def _measure_idle_fds(self) -> int:
        # The first client makes the bridge create its line eventfds (kept for good):
        # idle = the count with a client attached, minus that client's socket.
        with self.connect() as warmup:
            warmup.device_info()
            with_client = self.fd_count()
        idle = with_client - 1
        self.wait_idle(idle)
        return idle

    # ------------------------------------------------------------ observation
    def fd_count(self) -> int:
        return fd_count(self.pid)

    def wait_fd_count(self, expected: int, timeout: float = IDLE_TIMEOUT) -> None:
        """Wait until the server holds exactly `expected` fds (the server works asynchronously)."""
        deadline = time.monotonic() + timeout
        while (count := self.fd_count()) != expected:
            if time.monotonic() > deadline:
                raise AssertionError(f"server holds {count} fds, expected {expected}: {sorted(open_fds(self.pid))}")
            time.sleep(0.005)

    def wait_idle(self, idle: int | None = None) -> None:
        """Wait until no client is attached and every fd a client gave is closed."""
        self.assert_alive()
        self.wait_fd_count(self.idle_fds if idle is None else idle)

    def assert_alive(self) -> None:
        assert self.proc.poll() is None, f"server died with {self.proc.returncode}:\n{self.log()}"

    # ------------------------------------------------------------ clients
    def connect(self, negotiate: bool = True, caps: Capabilities | None = None) -> VfioUserClient:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(self.socket_path)
        client = VfioUserClient(sock)
        if negotiate:
            client.negotiate(caps)
        return client

    def reconnect(self, old: VfioUserClient) -> VfioUserClient:
        """Close `old`, wait until the server let it go, and connect anew."""
        old.close()
        self.wait_idle()
        return self.connect()

    # ------------------------------------------------------------ shutdown
    def stop(self) -> None:
        """SIGTERM: the server must exit 0, remove its socket and log no traceback."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"server ignored SIGTERM:\n{self.log()}") from None
        log = self.log()
        assert code == 0, f"server exited with {code}:\n{log}"
        assert not os.path.exists(self.socket_path), "the socket file was left behind"
        assert "Traceback" not in log, log
        shutil.rmtree(self.workdir)  # kept when something above failed


def launch_server(device: str, extra_args: Sequence[str] = (), traced: bool = True) -> ServerProcess:
    workdir = Path(tempfile.mkdtemp(prefix="vfu-test-"))  # short: unix socket paths are limited
    return ServerProcess(workdir, device, extra_args, traced)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Modules with BOTH_PATHS = True run against a traced server and an untraced one.

    Without a trace the server answers REGION_READ / REGION_WRITE on its fast path
    (no frame objects); with one, on the general path.  Both must give the same answers.
    """
    if "server" in metafunc.fixturenames and getattr(metafunc.module, "BOTH_PATHS", False):
        metafunc.parametrize("server_traced", [True, False], ids=["general-path", "fast-path"], scope="module")


@pytest.fixture(scope="module")
def server_traced() -> bool:
    return True


@pytest.fixture(scope="module")
def server(request: pytest.FixtureRequest, server_traced: bool) -> Iterator[ServerProcess]:
    """One server per test module: device `edu`, or the module's SERVER_DEVICE."""
    proc = launch_server(getattr(request.module, "SERVER_DEVICE", "edu"), traced=server_traced)
    yield proc
    proc.stop()


@pytest.fixture
def start_server() -> Iterator[Callable[..., ServerProcess]]:
    """A factory for servers private to one test (other devices or options); all stopped at the end."""
    started: list[ServerProcess] = []

    def start(device: str = "edu", *extra_args: str) -> ServerProcess:
        proc = launch_server(device, extra_args)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def client(server: ServerProcess) -> Iterator[VfioUserClient]:
    """A negotiated client; afterwards the server must be alive and back to its idle fds."""
    server.wait_idle()
    conn = server.connect()
    yield conn
    conn.close()
    server.wait_idle()


@pytest.fixture
def raw_client(server: ServerProcess) -> Iterator[VfioUserClient]:
    """A connected client that has not sent VERSION (the server has accepted it)."""
    server.wait_idle()
    conn = server.connect(negotiate=False)
    server.wait_fd_count(server.idle_fds + 1)
    yield conn
    conn.close()
    server.wait_idle()


# ---------------------------------------------------------------- raw messages
def raw_request(client: VfioUserClient, command: int, payload: bytes = b"", fds: Sequence[int] = (),
                flags: int = 0) -> Reply:
    """Send one command exactly as given and return its reply (errors included)."""
    msg_id = client.next_id()
    client.send_raw(encode(msg_id, command, payload, flags), fds)
    return client.wait_reply(msg_id)


def expect_error(client: VfioUserClient, command: int, payload: bytes, errno_value: int,
                 fds: Sequence[int] = ()) -> None:
    """The command must get a header-only error reply carrying `errno_value`."""
    reply = raw_request(client, command, payload, fds)
    reply.close_fds()
    assert reply.header.is_error, f"expected errno {errno_value}, got a success reply {reply.header}"
    assert reply.header.error == errno_value, f"errno {reply.header.error}, expected {errno_value}"
    assert reply.header.size == HEADER_SIZE and reply.body == b""
    assert reply.header.command == command


def expect_no_reply_to(client: VfioUserClient, command: int, payload: bytes, fds: Sequence[int] = ()) -> None:
    """Sent with NO_REPLY, the command must get no reply at all (even when it fails)."""
    client.send_raw(encode(client.next_id(), command, payload, MsgFlags.NO_REPLY), fds)
    client.expect_no_reply()


def assert_serving(client: VfioUserClient) -> None:
    """The connection still works: a well-formed request is answered."""
    info = client.device_info()
    assert info.num_regions == 9 and info.num_irqs == 5


def header_bytes(msg_id: int, command: int, size: int, flags: int = 0, error: int = 0) -> bytes:
    return HEADER.pack(msg_id, command, size, flags, error)
