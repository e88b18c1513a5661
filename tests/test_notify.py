# SPDX-License-Identifier: BSD-3-Clause
"""sd_notify(3) for Type=notify services (vfu_platform/server/notify.py, `serve`).

A real SOCK_DGRAM socket stands in for systemd: at a path and in the abstract
namespace ("@name").  The server sends READY=1 (with STATUS= and its MAINPID) once
its socket accepts clients, a STATUS= line when a client leaves, and STOPPING=1 on
SIGTERM; a notify socket nobody listens on costs one warning line, never the service.
"""
from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vfu_platform.server.notify import Notifier
from vfu_platform.testing import serve_in_subprocess


def receive(sock: socket.socket, timeout: float = 10.0) -> dict[str, str]:
    """One notify datagram as {KEY: VALUE}."""
    sock.settimeout(timeout)
    data = sock.recv(4096)
    return dict(line.split("=", 1) for line in data.decode().splitlines())


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request: pytest.FixtureRequest, tmp_path: Path,
                  monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A datagram socket listening as $NOTIFY_SOCKET (set for the servers this test starts)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        address = str(tmp_path / "notify")
        sock.bind(address)
    else:
        address = f"@vfu-notify-test-{os.getpid()}-{time.monotonic_ns()}"
        sock.bind("\0" + address[1:])
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    yield sock
    sock.close()


def test_ready_status_then_stopping(notify_socket: socket.socket, tmp_path: Path) -> None:
    server = serve_in_subprocess("edu", directory=tmp_path)
    ready = receive(notify_socket)
    assert ready["READY"] == "1"
    assert ready["MAINPID"] == str(server.pid)
    assert ready["STATUS"].startswith(f"serving edu on {server.socket_path}")
    assert "0 clients served" in ready["STATUS"]
    with server.connect() as client:  # READY came after the socket listens: it serves at once
        assert client.read32(0, 0) == 0x010000ED
    server.clients.clear()
    after_client = receive(notify_socket)
    assert after_client == {"STATUS": f"serving edu on {server.socket_path}, 1 clients served"}
    assert server.stop() == 0
    stopping = receive(notify_socket)
    assert stopping["STOPPING"] == "1" and stopping["STATUS"].startswith("stopping: serving edu")
    assert "READY" not in stopping


def test_ready_comes_only_once_the_socket_listens(notify_socket: socket.socket, tmp_path: Path) -> None:
    server = serve_in_subprocess("edu", directory=tmp_path)
    receive(notify_socket)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.connect(server.socket_path)  # no ECONNREFUSED / ENOENT window after READY
    probe.close()
    assert server.stop() == 0


def test_a_notify_socket_nobody_listens_on_costs_one_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-here"))
    server = serve_in_subprocess("edu", directory=tmp_path)
    with server.connect() as client:
        assert client.read32(0, 0) == 0x010000ED
    server.clients.clear()
    assert server.stop() == 0
    warnings = [line for line in server.stderr().splitlines() if "cannot notify" in line]
    assert len(warnings) == 1 and "nobody-here" in warnings[0], server.stderr()
    assert "Traceback" not in server.stderr()


def test_without_notify_socket_nothing_is_sent() -> None:
    environ: dict[str, str] = {}
    notifier = Notifier.from_environ(environ)
    assert not notifier.enabled and notifier.ready("x") is False


def test_the_variable_is_taken_from_the_environment(tmp_path: Path) -> None:
    """A child of the server (a model's helper) must not notify as if it were the service."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "n"))
    environ = {"NOTIFY_SOCKET": str(tmp_path / "n")}
    notifier = Notifier.from_environ(environ)
    assert environ == {}
    assert notifier.ready("up") is True
    assert receive(sock, 1.0) == {"READY": "1", "STATUS": "up", "MAINPID": str(os.getpid())}
    sock.close()


def test_an_unsupported_address_is_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    notifier = Notifier("vsock:2:1234")
    assert notifier.send("READY=1") is False and notifier.send("READY=1") is False
    assert [r.getMessage() for r in caplog.records].count(
        "NOTIFY_SOCKET='vsock:2:1234': only unix socket addresses are supported") == 1
