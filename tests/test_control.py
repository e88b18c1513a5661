# SPDX-License-Identifier: BSD-3-Clause
"""The control socket (`serve --control PATH`, `vfu-platform control`): a real server
process, a real unix socket, good and bad commands, and no fd left behind."""
from __future__ import annotations

import os
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import REPO
from vfu_platform.testing import PYTHON, ProcessServer, serve_in_subprocess
from vfu_platform.backends.base import DeviceBackend, route_control
from vfu_platform.backends.sim.edu import EduDevice
from vfu_platform.backends.sim.pl031 import Pl031Device
from vfu_platform.backends.sim.pl061 import Pl061Device
from vfu_platform.server import control as control_mod
from vfu_platform.server.control import ControlError, ControlServer, request
from vfu_platform.server.loop import EventLoop


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "vfu_platform", *args], capture_output=True, text=True,
                          cwd=str(REPO), timeout=30)


class Line:
    """A raw control connection: send bytes, read reply lines."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect(path)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> str:
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise EOFError(f"connection closed; got {self.buffer!r}")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode()

    def ask(self, text: str) -> str:
        self.send(text.encode() + b"\n")
        return self.reply()

    def closed_by_server(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def gpio_served(vfu_server: Callable[..., ProcessServer], tmp_path: Path) -> tuple[ProcessServer, str]:
    path = str(tmp_path / "ctl.sock")
    return vfu_server("pl061", extra=["--control", path]), path


# ---- the CLI ------------------------------------------------------------------


def test_cli_control_prints_the_reply_and_sets_the_exit_status(gpio_served: tuple[ProcessServer, str]) -> None:
    _, path = gpio_served
    ok = run_cli("control", "--control", path, "gpio", "set", "3", "1")
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, "ok pins=0x08\n", "")
    got = run_cli("control", "--control", path, "gpio", "get")
    assert got.returncode == 0 and got.stdout.startswith("ok pins=0x08 inputs=0x08")
    bad = run_cli("control", "--control", path, "gpio", "set", "99", "1")
    assert bad.returncode == 1 and bad.stdout.startswith("error: pl061: no line '99'")


def test_cli_control_errors(tmp_path: Path, gpio_served: tuple[ProcessServer, str]) -> None:
    _, path = gpio_served
    none = run_cli("control", "--control", path)
    assert none.returncode == 2 and "no command" in none.stderr
    missing = run_cli("control", "--control", str(tmp_path / "nothing.sock"), "get")
    assert missing.returncode == 1 and "cannot connect to control socket" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_control_socket_is_private_and_removed_on_shutdown(gpio_served: tuple[ProcessServer, str]) -> None:
    server, path = gpio_served
    mode = os.stat(path).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    assert server.stop() == 0
    assert not os.path.exists(path) and not os.path.exists(server.socket_path)
    assert "Traceback" not in server.stderr()


def test_serve_refuses_a_busy_control_path_and_the_vfio_socket_path(
    gpio_served: tuple[ProcessServer, str], tmp_path: Path
) -> None:
    _, busy = gpio_served
    other = str(tmp_path / "other.sock")
    result = run_cli("serve", "--socket", other, "--device", "pl061", "--control", busy)
    assert result.returncode == 2 and "busy" in result.stderr
    same = run_cli("serve", "--socket", other, "--device", "pl061", "--control", other)
    assert same.returncode == 2 and "--control must be another path" in same.stderr
    assert not os.path.exists(other)


def test_device_without_control_commands(vfu_server: Callable[..., ProcessServer], tmp_path: Path) -> None:
    path = str(tmp_path / "edu.ctl")
    vfu_server("edu", extra=["--control", path])
    assert request(path, ["get"]) == "error: this device has no control commands"


# ---- the protocol ---------------------------------------------------------------


def test_several_lines_on_one_connection_and_bad_input(gpio_served: tuple[ProcessServer, str]) -> None:
    server, path = gpio_served
    conn = Line(path)
    try:
        assert conn.ask("gpio set 1 1") == "ok pins=0x02"
        assert conn.ask("   pl061   get   1  ") == "ok 1 in"
        assert conn.ask("") == "error: empty command"
        assert conn.ask("wibble").startswith("error: pl061: unknown command 'wibble'")
        conn.send(b"\xff\xfe get\n")
        assert conn.reply() == "error: command is not UTF-8 text"
        conn.send(b"gpio set 2 1\ngpio get 2\n")  # two lines in one write: two replies, in order
        assert (conn.reply(), conn.reply()) == ("ok pins=0x06", "ok 1 in")
        conn.send(b"gpio ")  # a line in pieces
        time.sleep(0.05)
        assert conn.ask("get 2") == "ok 1 in"
    finally:
        conn.close()
    with server.connect() as client:  # the vfio-user side kept serving
        assert client.region_read(0, 0x3FC, 1) == b"\x06"


def test_an_overlong_line_is_refused_and_its_connection_closed(gpio_served: tuple[ProcessServer, str]) -> None:
    _, path = gpio_served
    conn = Line(path)
    try:
        conn.send(b"x" * (control_mod.MAX_LINE + 100))
        assert conn.reply() == f"error: command longer than {control_mod.MAX_LINE} bytes"
        assert conn.closed_by_server()
    finally:
        conn.close()
    assert request(path, ["gpio", "get", "0"]) == "ok 0 in"


def test_a_last_line_without_newline_is_answered(gpio_served: tuple[ProcessServer, str]) -> None:
    _, path = gpio_served
    conn = Line(path)
    try:
        conn.send(b"gpio get 7")
        conn.sock.shutdown(socket.SHUT_WR)
        assert conn.reply() == "ok 0 in"
    finally:
        conn.close()


def test_too_many_clients_at_once(gpio_served: tuple[ProcessServer, str]) -> None:
    _, path = gpio_served
    held = [Line(path) for _ in range(control_mod.MAX_CLIENTS)]
    try:
        for conn in held:  # each is accepted and answers
            assert conn.ask("get 0") == "ok 0 in"
        extra = Line(path)
        try:
            assert extra.reply() == "error: too many control clients"
            assert extra.closed_by_server()
        finally:
            extra.close()
    finally:
        for conn in held:
            conn.close()
    deadline = time.monotonic() + 3
    while True:  # the held ones are gone once the server has seen their EOF
        try:
            assert request(path, ["get", "0"]) == "ok 0 in"
            break
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def test_many_clients_one_after_another_leak_no_fds(gpio_served: tuple[ProcessServer, str]) -> None:
    server, path = gpio_served
    assert request(path, ["gpio", "get"]).startswith("ok")
    baseline = server.idle_baseline()
    for k in range(60):
        kind = k % 4
        if kind == 0:
            assert request(path, ["gpio", "set", str(k % 8), str(k % 2)]).startswith("ok")
        elif kind == 1:
            assert request(path, ["gpio", "nonsense"]).startswith("error:")
        elif kind == 2:  # connect and go away without a word
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(path)
            sock.close()
        else:  # half a line, then gone
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(path)
            sock.sendall(b"gpio se")
            sock.close()
    assert request(path, ["gpio", "get", "0"]).startswith("ok")
    after = server.wait_resources(baseline)
    assert after == baseline, f"before: {baseline.describe()} {baseline.fds}\nafter: {after.describe()} {after.fds}"
    assert server.alive() and "Traceback" not in server.stderr()


def test_rtc_through_the_cli(vfu_server: Callable[..., ProcessServer], tmp_path: Path) -> None:
    path = str(tmp_path / "rtc.ctl")
    server = vfu_server("pl031", extra=["--control", path])
    assert run_cli("control", "--control", path, "rtc", "set", "1700000000").stdout == "ok 1700000000\n"
    got = run_cli("control", "--control", path, "rtc", "get")
    assert got.returncode == 0 and int(got.stdout.split()[1]) in (1_700_000_000, 1_700_000_001)
    with server.connect() as client:
        assert client.read32(0, 0x000) in (1_700_000_000, 1_700_000_001, 1_700_000_002)


# ---- in-process: routing, handler failures, idle clients ---------------------------


def test_route_control_by_first_word() -> None:
    rtc, gpio = Pl031Device(epoch=5), Pl061Device()
    try:
        single = [gpio]
        assert route_control(single, ["set", "1", "1"]) == "ok pins=0x02"
        assert route_control(single, ["gpio", "get", "1"]) == "ok 1 in"
        assert route_control(single, ["pl061", "get", "1"]) == "ok 1 in"
        group: list[DeviceBackend] = [rtc, gpio]
        assert route_control(group, ["pl031", "get"]) == "ok 5"
        assert route_control(group, ["rtc", "get"]) == "ok 5"
        assert route_control(group, ["pl061", "get", "1"]) == "ok 1 in"
        assert route_control(group, ["get"]) == "error: no device 'get' (devices: pl031, pl061)"
        assert route_control(group, []) == "error: empty command"
        assert route_control([EduDevice()], ["x"]) == "error: this device has no control commands"
    finally:
        rtc.close()
        gpio.close()


class InProcess:
    """A ControlServer on a real event loop in this process, pumped by `pump`."""

    def __init__(self, tmp_path: Path, handler: Callable[[list[str]], str], idle: float = 30.0) -> None:
        self.loop = EventLoop()
        self.path = str(tmp_path / "inproc.ctl")
        self.server = ControlServer(self.path, self.loop, handler, idle_timeout=idle)
        self.server.listen()

    def pump(self, seconds: float = 0.05) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.loop.run_once(0.01)

    def close(self) -> None:
        self.server.close()
        self.loop.close()


@pytest.fixture
def inproc_factory(tmp_path: Path) -> Iterator[Callable[..., InProcess]]:
    made: list[InProcess] = []

    def make(handler: Callable[[list[str]], str], idle: float = 30.0) -> InProcess:
        made.append(InProcess(tmp_path, handler, idle))
        return made[-1]

    yield make
    for item in made:
        item.close()


def test_a_handler_that_raises_costs_one_error_line(inproc_factory: Callable[..., InProcess]) -> None:
    def handler(words: list[str]) -> str:
        if words[0] == "boom":
            raise RuntimeError("model bug")
        return "ok " + " ".join(words)

    ctl = inproc_factory(handler)
    conn = Line(ctl.path)
    try:
        conn.send(b"boom\nsay hi\n")
        ctl.pump()
        assert conn.reply() == "error: command failed: RuntimeError: model bug"
        assert conn.reply() == "ok say hi"
        assert ctl.server.commands_served == 2
    finally:
        conn.close()


def test_multi_line_replies_are_folded_to_one_line(inproc_factory: Callable[..., InProcess]) -> None:
    ctl = inproc_factory(lambda words: "ok a\nb")
    conn = Line(ctl.path)
    try:
        conn.send(b"x\n")
        ctl.pump()
        assert conn.reply() == "ok a b"
    finally:
        conn.close()


def test_idle_clients_are_closed(inproc_factory: Callable[..., InProcess]) -> None:
    ctl = inproc_factory(lambda words: "ok", idle=0.1)
    conn = Line(ctl.path)
    try:
        ctl.pump(0.02)
        assert ctl.server.clients == 1
        ctl.pump(0.3)
        assert ctl.server.clients == 0
        assert conn.closed_by_server()
    finally:
        conn.close()
    assert ctl.loop.watched() == [ctl.server._listener.fileno()]  # type: ignore[union-attr]


def test_close_drops_clients_and_removes_the_socket(inproc_factory: Callable[..., InProcess]) -> None:
    ctl = inproc_factory(lambda words: "ok")
    conns = [Line(ctl.path) for _ in range(3)]
    ctl.pump()
    assert ctl.server.clients == 3
    ctl.server.close()
    assert ctl.loop.watched() == [] and not os.path.exists(ctl.path)
    for conn in conns:
        assert conn.closed_by_server()
        conn.close()


def test_request_reports_a_server_that_closes_without_answering(tmp_path: Path) -> None:
    path = str(tmp_path / "mute.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    try:
        def close_first() -> None:
            conn, _ = listener.accept()
            conn.recv(100)
            conn.close()

        thread = threading.Thread(target=close_first)
        thread.start()
        try:
            with pytest.raises(ControlError, match="without an answer"):
                request(path, ["get"])
        finally:
            thread.join()
    finally:
        listener.close()


def test_start_server_helper_still_works_without_control(tmp_path: Path) -> None:
    server = serve_in_subprocess(directory=tmp_path, model="pl061", name="plain.sock")
    try:
        with server.connect() as client:
            assert client.region_read(0, 0xFE0, 1) == b"\x61"
    finally:
        assert server.stop() == 0
