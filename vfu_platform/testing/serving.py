# SPDX-License-Identifier: BSD-3-Clause
"""Serve a device for a test: on a thread of this process, or as a `vfu_platform serve` process.

Both kinds are a `RunningServer`: `.socket_path`, `.connect()`, `.log()` (what the
server logged, to show when a test fails), `.stop()` and use as a context manager.
`stop(check=True)` requires a clean end: the loop ended (thread joined / exit code 0),
the socket file removed and no traceback logged.
"""
from __future__ import annotations

import io
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from vfu_platform.backends.base import DeviceBackend
from vfu_platform.client import VfioUserClient
from vfu_platform.protocol.caps import Capabilities
from vfu_platform.server.device_api import ServedDevice
from vfu_platform.server.listener import Server
from vfu_platform.server.session import SessionOptions

#: The interpreter that runs a served process: this one.
PYTHON = sys.executable
START_TIMEOUT = 10.0
ARRIVE = 3.0


class ServerFailed(AssertionError):
    """The server did not start, or did not end cleanly; the message carries its log."""


class RunningServer:
    """A server serving one device on `socket_path`; the clients it gave out are closed at `stop`."""

    socket_path: str

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self.clients: list[VfioUserClient] = []

    def connect(self, negotiate: bool = True, timeout: float = 5.0,
                caps: Capabilities | None = None) -> VfioUserClient:
        """A new client of this server (negotiated unless `negotiate=False`), closed at `stop`."""
        client = VfioUserClient.connect(self.socket_path, timeout=timeout, negotiate=negotiate, caps=caps)
        self.clients.append(client)
        return client

    def raw_socket(self) -> socket.socket:
        """A plain connected socket (nothing sent)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(self.socket_path)
        return sock

    def log(self) -> str:
        """What the server logged so far."""
        raise NotImplementedError

    def alive(self) -> bool:
        """True while the server serves."""
        raise NotImplementedError

    def stop(self, *, check: bool = True) -> int:
        """End the server; its exit status (0: clean).  `check` raises `ServerFailed` unless clean."""
        raise NotImplementedError

    def _close_clients(self) -> None:
        for client in self.clients:
            client.close()
        self.clients.clear()

    def _check_clean(self, what: str) -> None:
        log = self.log()
        if os.path.exists(self.socket_path):
            raise ServerFailed(f"{what}: the socket file {self.socket_path} was left behind\n{log}")
        if "Traceback" in log:
            raise ServerFailed(f"{what}: the server logged a traceback:\n{log}")

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop(check=kind is None)  # a failing block's own error comes first


# --------------------------------------------------------------------------- in a thread


class _LogCapture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.text = io.StringIO()
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.text.write(self.format(record) + "\n")


class ThreadServer(RunningServer):
    """`Server` on a thread of this process; its log is the "vfu_platform" logger's records."""

    def __init__(self, server: Server, owned: ServedDevice | None, workdir: Path | None) -> None:
        super().__init__(server.path)
        self.server = server
        self._owned = owned  # a bridge this kit built: closed at stop
        self._workdir = workdir  # a temp dir this kit made: removed at a clean stop
        self._capture = _LogCapture()
        self._logger = logging.getLogger("vfu_platform")
        self._old_level = self._logger.level
        self._logger.addHandler(self._capture)
        if self._logger.getEffectiveLevel() > logging.INFO:
            self._logger.setLevel(logging.INFO)
        self._quit = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.errors: list[BaseException] = []
        self.returncode: int | None = None
        # Registered before the thread starts: from then on only the thread touches the loop.
        server.loop.add_reader(self._wake_r, self._drain)
        self._thread = threading.Thread(target=self._run, name=f"vfu-server {server.path}", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        """True while the server's loop runs."""
        return self._thread.is_alive()

    def _drain(self) -> None:
        try:
            os.read(self._wake_r, 64)
        except BlockingIOError:
            pass

    def _run(self) -> None:
        try:
            self.server.loop.run_until(lambda: self._quit)
        except BaseException as exc:  # noqa: BLE001 - reported by stop()
            self.errors.append(exc)
            self._logger.exception("the server's loop failed")
        finally:
            try:
                self.server.close()
            finally:
                self.server.loop.remove_reader(self._wake_r)
                self.server.loop.close()

    def log(self) -> str:
        return self._capture.text.getvalue()

    def stop(self, timeout: float = 5.0, *, check: bool = True) -> int:
        """End the loop (woken through a pipe), close the server, join the thread; 0 if clean."""
        if self._wake_w < 0:
            return self.returncode or 0
        self._close_clients()
        self._quit = True
        os.write(self._wake_w, b"x")
        self._thread.join(timeout)
        alive = self._thread.is_alive()
        if not alive:
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._wake_w = -1
            if self._owned is not None:
                self._owned.close()  # type: ignore[attr-defined]
        self._logger.removeHandler(self._capture)
        self._logger.setLevel(self._old_level)
        self.returncode = 1 if alive or self.errors else 0
        if check:
            if alive:
                raise ServerFailed(f"the server's loop did not end within {timeout} s:\n{self.log()}")
            if self.errors:
                raise ServerFailed(f"the server's loop failed: {self.errors[0]!r}\n{self.log()}")
            self._check_clean("thread server")
        if self._workdir is not None and self.returncode == 0:
            shutil.rmtree(self._workdir, ignore_errors=True)
        return self.returncode


def _as_served(device: ServedDevice | DeviceBackend | str, irq_mode: str,
               model_options: Mapping[str, object]) -> tuple[ServedDevice, ServedDevice | None]:
    """The device to serve, and the bridge built for it here (or None: the caller owns it)."""
    from vfu_platform.backends.sim.identity import model_identity
    from vfu_platform.bridge.config_space import PciIds
    from vfu_platform.bridge.device import BridgeOptions, PciBridge

    if isinstance(device, str):
        from vfu_platform.backends.sim.model_file import is_file_spec, load_model_file
        from vfu_platform.backends.sim.registry import create_model

        device = create_model(load_model_file(device) if is_file_spec(device) else device, model_options)
    elif model_options:
        raise TypeError("model options go with a model name, not a device object")
    if not isinstance(device, DeviceBackend):
        return device, None
    identity = model_identity(type(device), warn=False)
    ids = PciIds(vendor=identity.vendor, device=identity.device, class_code=identity.class_code)
    bridge = PciBridge(device, BridgeOptions(ids=ids, irq_mode=irq_mode))  # type: ignore[arg-type]
    return bridge, bridge


def serve_in_thread(device: ServedDevice | DeviceBackend | str = "edu", directory: Path | str | None = None, *,
                    name: str = "vfu.sock", options: SessionOptions | None = None, tracer: object = None,
                    irq_mode: str = "intx", **model_options: object) -> ThreadServer:
    """Serve `device` on a thread: a model name ("edu", "pkg.mod:Class", "file.py:Class"),
    a model object (a `DeviceBackend`, put behind a PCI bridge) or a `ServedDevice` as it is.

    The socket is `directory/name` (a new temp dir when no directory is given).
    """
    served, owned = _as_served(device, irq_mode, model_options)
    workdir = Path(tempfile.mkdtemp(prefix="vfu-kit-")) if directory is None else None
    path = str((workdir or Path(directory)) / name)  # type: ignore[arg-type]
    server = Server(path, served, options, tracer)  # type: ignore[arg-type]
    try:
        server.listen()
    except BaseException:
        server.close()
        if owned is not None:
            owned.close()  # type: ignore[attr-defined]
        raise
    return ThreadServer(server, owned, workdir)


# --------------------------------------------------------------------------- in a process


@dataclass(frozen=True)
class Resources:
    """What the server process holds at one instant."""

    fds: tuple[str, ...]  # readlink of every /proc/PID/fd entry, kinds for sockets and pipes, sorted
    memfd_maps: tuple[str, ...]  # /proc/PID/maps lines of memfd mappings
    threads: int

    def describe(self) -> str:
        return f"{len(self.fds)} fds, {len(self.memfd_maps)} memfd mappings, {self.threads} threads"


def open_fds(pid: int) -> list[str]:
    """What each open fd of process `pid` refers to (/proc/PID/fd)."""
    targets = []
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            targets.append(os.readlink(f"/proc/{pid}/fd/{name}"))
        except FileNotFoundError:  # closed while we looked
            pass
    return targets


def _normalise_fd(target: str) -> str:
    # "socket:[123]" / "pipe:[7]" -> kind only; other targets as they are.
    if target.startswith("socket:"):
        return "socket"
    if target.startswith("pipe:"):
        return "pipe"
    return target


def server_argv(socket_path: str, model: str = "edu", irq_mode: str | None = None, config: str | None = None,
                trace: str | None = None, extra: Sequence[str] = (),
                model_options: Mapping[str, object] | None = None) -> list[str]:
    """The `python -m vfu_platform serve` command line for these settings."""
    args = [PYTHON, "-m", "vfu_platform", "serve", "--socket", socket_path, "--device", model]
    if irq_mode:
        args += ["--irq-mode", irq_mode]
    if config:
        args += ["--config", config]
    if trace:
        args += ["--trace", trace]
    for key, value in (model_options or {}).items():
        args += ["--option", f"{key}={value}"]
    return args + list(extra)


class ProcessServer(RunningServer):
    """A `python -m vfu_platform serve` process; its log is its stderr (file `stderr_path`)."""

    def __init__(self, proc: subprocess.Popen[bytes], socket_path: str, stderr_path: Path,
                 trace_path: str | None = None, workdir: Path | None = None) -> None:
        super().__init__(socket_path)
        self.proc = proc
        self.stderr_path = stderr_path
        self.log_path = stderr_path
        self.trace_path = trace_path
        self.workdir = workdir
        #: fds of the idle server, once `measure_idle` ran
        self.idle_fds = 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    stderr = log

    def alive(self) -> bool:
        return self.proc.poll() is None

    def assert_alive(self) -> None:
        assert self.proc.poll() is None, f"server died with {self.proc.returncode}:\n{self.log()}"

    # -- what it holds ----------------------------------------------------------------
    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def wait_fd_count(self, expected: int, timeout: float = ARRIVE) -> None:
        """Wait until the server holds exactly `expected` fds (it works asynchronously)."""
        deadline = time.monotonic() + timeout
        while (count := self.fd_count()) != expected:
            if time.monotonic() > deadline:
                raise AssertionError(f"server holds {count} fds, expected {expected}: {sorted(open_fds(self.pid))}")
            time.sleep(0.005)

    def measure_idle(self) -> int:
        """Count the idle server's fds (`idle_fds`) after a first client came and went.

        The first client makes the bridge create its line eventfds (kept for good):
        idle = the count with a client attached, minus that client's socket.
        """
        with VfioUserClient.connect(self.socket_path) as warmup:
            warmup.device_info()
            with_client = self.fd_count()
        self.idle_fds = with_client - 1
        self.wait_fd_count(self.idle_fds)
        return self.idle_fds

    def wait_idle(self, idle: int | None = None) -> None:
        """Wait until no client is attached and every fd a client gave is closed (after `measure_idle`)."""
        self.assert_alive()
        self.wait_fd_count(self.idle_fds if idle is None else idle)

    def reconnect(self, old: VfioUserClient) -> VfioUserClient:
        """Close `old`, wait until the server let it go, and connect anew."""
        old.close()
        self.wait_idle()
        return self.connect()

    def resources(self) -> Resources:
        base = f"/proc/{self.pid}"
        fds = open_fds(self.pid)
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
        listening = self.resources().fds.count("socket")  # the listener and the control socket
        with VfioUserClient.connect(self.socket_path) as client:
            client.sync()
        deadline = time.monotonic() + ARRIVE
        previous = None
        # The session ends when the server sees EOF; wait until two reads agree.
        while time.monotonic() < deadline:
            now = self.resources()
            if now == previous and now.fds.count("socket") <= listening:  # idle: no client socket
                return now
            previous = now
            time.sleep(0.02)
        raise ServerFailed(f"the server still holds a client socket {ARRIVE} s after its client left")

    # -- the end ------------------------------------------------------------------------
    def stop(self, signum: int = signal.SIGTERM, timeout: float = 5.0, *, check: bool = True) -> int:
        """Send `signum` and return the exit status.  With `check`: it must be 0, the socket
        file gone and no traceback in the log (then a temp dir the kit made is removed)."""
        self._close_clients()
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise ServerFailed(f"server did not stop on signal {signum}:\n{self.log()}") from None
        code = self.proc.returncode
        if check:
            if code != 0:
                raise ServerFailed(f"server exited with {code}:\n{self.log()}")
            self._check_clean("server process")
            if self.workdir is not None:
                shutil.rmtree(self.workdir, ignore_errors=True)  # kept when something above failed
        return code


def serve_in_subprocess(model: str | Sequence[str] = "edu", directory: Path | str | None = None, *,
                        name: str = "vfu.sock", irq_mode: str | None = None, config: str | None = None,
                        trace: bool = False, extra: Sequence[str] = (), merge_stdout: bool = False,
                        timeout: float = START_TIMEOUT, cwd: Path | str | None = None,
                        **model_options: object) -> ProcessServer:
    """Start `python -m vfu_platform serve` and wait until its socket accepts clients.

    `model` is a model spec ("edu", "pkg.mod:Class", "file.py:Class") or a list of
    `serve` arguments after `--socket PATH`.  Files go in `directory` (a new temp dir,
    removed at a clean `stop(check=True)`, when none is given): the socket `name`,
    `name.stderr` and, with `trace`, `name.trace`.  Ready means the server printed its
    "serving" line, which comes once the socket is listening.
    """
    workdir = Path(tempfile.mkdtemp(prefix="vfu-kit-")) if directory is None else None  # short: sun_path
    where = workdir or Path(directory)  # type: ignore[arg-type]
    socket_path = str(where / name)
    stderr_path = where / f"{name}.stderr"
    trace_path = str(where / f"{name}.trace") if trace else None
    if isinstance(model, str):
        argv = server_argv(socket_path, model, irq_mode, config, trace_path, extra, model_options)
    else:
        argv = [PYTHON, "-m", "vfu_platform", "serve", "--socket", socket_path, *model, *extra]
    with open(stderr_path, "wb") as stderr:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                stdout=stderr if merge_stdout else subprocess.DEVNULL, stderr=stderr, cwd=cwd)
    server = ProcessServer(proc, socket_path, stderr_path, trace_path, workdir)
    deadline = time.monotonic() + timeout
    while "serving" not in server.log() or not os.path.exists(socket_path):
        if proc.poll() is not None:
            raise ServerFailed(f"server exited with {proc.returncode}:\n{server.log()}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise ServerFailed(f"server did not start within {timeout} s:\n{server.log()}")
        time.sleep(0.005)
    return server
