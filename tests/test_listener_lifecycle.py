# SPDX-License-Identifier: BSD-3-Clause
"""Server lifecycle: signals with a client attached, SIGKILL and restart (SOCKET.lock), a full disk.

* SIGTERM / SIGINT while a client is attached (DMA mapped, IRQs wired): exit 0, the
  socket and lock files removed, no traceback; every reply the client got is in the
  trace (nothing acknowledged is missing from it); the next start works.
* SIGKILL: the socket file stays, with SOCKET.lock unlocked.  A restart tells that from a
  live server by the lock, replaces the stale socket and serves; a second server on the
  path of a live one is refused (exit 2, "busy").
* The trace on a full disk (/dev/full): the server says once that the trace stopped
  and goes on serving; it stops cleanly.
"""
from __future__ import annotations

import fcntl
import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from conftest import REPO
from vfu_platform.testing import PYTHON, ProcessServer, serve_in_subprocess
from vfu_platform.client import make_eventfd
from vfu_platform.endpoint import SocketPathError, check_socket_path, lock_path
from vfu_platform.trace import MessageRecord, read_trace


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_with_a_client_attached_stops_cleanly(tmp_path: Path, signum: int) -> None:
    server = serve_in_subprocess(directory=tmp_path, model="edu", trace=True)
    client = server.connect()
    ram = os.memfd_create("life")
    os.ftruncate(ram, 0x2000)
    client.dma_map(0x100000, 0x2000, fd=ram)
    os.close(ram)
    efd = make_eventfd()
    client.set_irqs(0, 0x24, 0, 1, [efd])
    replies = 3  # VERSION, DMA_MAP, SET_IRQS
    for value in range(20):
        client.write32(0, 0x04, value)
        replies += 1
    assert os.path.exists(lock_path(server.socket_path))
    server.proc.send_signal(signum)
    assert server.proc.wait(10) == 0
    assert not os.path.exists(server.socket_path) and not os.path.exists(lock_path(server.socket_path))
    assert "Traceback" not in server.stderr()
    assert server.trace_path is not None
    sent = [r for r in read_trace(server.trace_path) if isinstance(r, MessageRecord) and r.dir == "out"]
    assert len(sent) == replies, "every reply the client got is in the trace"
    client.close()
    os.close(efd)
    again = serve_in_subprocess(directory=tmp_path, model="edu", name="vfu.sock")
    with again.connect() as c:
        assert c.read32(0, 0) == 0x010000ED
    again.clients.clear()
    assert again.stop() == 0


def test_sigkill_then_restart_replaces_the_stale_socket(tmp_path: Path) -> None:
    first = serve_in_subprocess(directory=tmp_path, model="edu")
    first.connect()
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(10)
    first.clients[0].close()
    first.clients.clear()
    assert os.path.exists(first.socket_path) and os.path.exists(lock_path(first.socket_path))
    check_socket_path(first.socket_path)  # the CLI's early check lets it through: its server is gone
    second = serve_in_subprocess(directory=tmp_path, model="edu")
    assert "replacing" in second.stderr() and "stale socket" in second.stderr()
    with second.connect() as client:
        assert client.read32(0, 0) == 0x010000ED
    second.clients.clear()
    assert second.stop() == 0


def test_a_second_server_on_a_live_path_is_refused(tmp_path: Path) -> None:
    live = serve_in_subprocess(directory=tmp_path, model="edu")
    result = subprocess.run([PYTHON, "-m", "vfu_platform", "serve", "--socket", live.socket_path],
                            capture_output=True, text=True, timeout=30, cwd=str(REPO))
    assert result.returncode == 2
    assert "busy" in result.stderr and "Traceback" not in result.stderr
    with live.connect() as client:  # the live one is untouched
        assert client.read32(0, 0) == 0x010000ED
    live.clients.clear()
    assert live.stop() == 0


def test_the_lock_is_what_tells_live_from_stale(tmp_path: Path) -> None:
    path = str(tmp_path / "x.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.close()  # a socket file nobody listens on
    with pytest.raises(SocketPathError, match="stale"):
        check_socket_path(path)  # no lock file: a server from before the lock, or not ours
    fd = os.open(lock_path(path), os.O_RDWR | os.O_CREAT, 0o600)
    check_socket_path(path)  # an unlocked lock file: its server died
    fcntl.flock(fd, fcntl.LOCK_EX)
    with pytest.raises(SocketPathError, match="busy"):
        check_socket_path(path)  # a live server holds it
    os.close(fd)


def test_a_full_disk_stops_the_trace_not_the_server(tmp_path: Path) -> None:
    socket_path = str(tmp_path / "full.sock")
    stderr_path = tmp_path / "full.stderr"
    with open(stderr_path, "wb") as stderr:
        proc = subprocess.Popen([PYTHON, "-m", "vfu_platform", "serve", "--socket", socket_path, "--device", "edu",
                                 "--trace", "/dev/full"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=stderr, cwd=str(REPO))
    server = ProcessServer(proc, socket_path, stderr_path)
    try:
        import time

        deadline = time.monotonic() + 10
        while "vfu-platform: serving" not in server.stderr():  # (the trace warning says "serving" too)
            assert proc.poll() is None and time.monotonic() < deadline, server.stderr()
            time.sleep(0.01)
        for _ in range(3):
            with server.connect() as client:
                for value in range(50):
                    client.write32(0, 0x04, value)
                assert client.read32(0, 0x04) == ~49 & 0xFFFFFFFF
            server.clients.clear()
    finally:
        assert server.stop() == 0
    log = server.stderr()
    assert log.count("trace stopped: No space left on device") == 1, log
    assert "Traceback" not in log
