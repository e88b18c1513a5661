# SPDX-License-Identifier: BSD-3-Clause
"""systemd socket activation (sd_listen_fds(3); vfu_platform/endpoint.py `take_inherited`).

The test plays systemd: it binds and listens on the socket itself, and starts
`vfu-platform serve` with that socket as fd 3 and LISTEN_FDS / LISTEN_FDNAMES set.
LISTEN_PID must be the server's own pid, which only the child knows: a
`bash -c 'LISTEN_PID=$$; export LISTEN_PID; exec "$@" 3<&N'` wrapper sets it and execs
the server (the same pid), its redirection putting the socket at fd 3 (bash: dash takes
only fds 0-9 in a redirection, and the test's socket is a higher one).  The server
serves on the passed socket, takes its lock, leaves the socket file (it is systemd's)
when it stops, and the socket still accepts the next server: a restart loses no client.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from conftest import REPO

from vfu_platform.client import VfioUserClient
from vfu_platform.endpoint import lock_holder, lock_path
from vfu_platform.operator_cli import status_path
from vfu_platform.testing import PYTHON


def listening_socket(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(4)
    return sock


def activate(fds: list[socket.socket], socket_path: Path, names: str | None = None,
             listen_pid: str | None = None, extra: tuple[str, ...] = ()) -> subprocess.Popen[str]:
    """Start the server as systemd would, `fds` from fd 3 on; its stderr is a pipe.

    `bash -c 'LISTEN_PID=$$; export LISTEN_PID; exec "$@" 3<&N ...' sh ARGV`: the shell's
    pid is the server's (exec), and its redirections put each socket at 3, 4, ...
    """
    env = dict(os.environ, LISTEN_FDS=str(len(fds)))
    env.pop("NOTIFY_SOCKET", None)
    if names is not None:
        env["LISTEN_FDNAMES"] = names
    argv = [PYTHON, "-m", "vfu_platform", "serve", "--socket", str(socket_path), "--device", "edu", *extra]
    moves = " ".join(f"{3 + i}<&{sock.fileno()}" for i, sock in enumerate(fds))
    script = f'LISTEN_PID={listen_pid or "$$"}; export LISTEN_PID; exec "$@" {moves}'
    return subprocess.Popen(["bash", "-c", script, "sh", *argv], env=env, cwd=str(REPO), text=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            pass_fds=[sock.fileno() for sock in fds])


def wait_serving(proc: subprocess.Popen[str], timeout: float = 10.0) -> str:
    """Read the server's stderr until its 'serving' line."""
    assert proc.stderr is not None
    seen = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen += line
        if "serving" in line:
            return seen
    proc.kill()
    raise AssertionError(f"the activated server did not start (rc={proc.wait()}):\n{seen}{proc.stderr.read()}")


def stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    return err


def test_the_passed_socket_is_served_and_survives_the_server(tmp_path: Path) -> None:
    path = tmp_path / "vfu.sock"
    sock = listening_socket(path)
    proc = activate([sock], path, names="vfio-user", extra=("-v",))
    log = wait_serving(proc)
    assert "socket passed by the service manager" in log, log
    with VfioUserClient.connect(str(path)) as client:
        assert client.read32(0, 0) == 0x010000ED
    assert lock_holder(str(path)) == proc.pid, "LISTEN_PID=$$ is the server: it holds the lock"
    status = subprocess.run([PYTHON, "-m", "vfu_platform", "status", "--socket", str(path), "--json"],
                            capture_output=True, text=True, timeout=30, cwd=str(REPO), check=False)
    assert status.returncode == 0 and f'"pid": {proc.pid}' in status.stdout, status
    err = stop(proc)
    assert "Traceback" not in err
    assert path.exists(), "the socket file is systemd's: left in place"
    assert not os.path.exists(lock_path(str(path))) and not os.path.exists(status_path(str(path)))
    # A client that connects while no server runs waits in the backlog: the next one serves it.
    waiting = VfioUserClient.connect(str(path), negotiate=False)
    second = activate([sock], path)
    wait_serving(second)
    waiting.negotiate()
    assert waiting.read32(0, 0) == 0x010000ED
    waiting.close()
    stop(second)
    sock.close()


def test_several_sockets_the_named_one_is_used(tmp_path: Path) -> None:
    other = listening_socket(tmp_path / "other.sock")
    ours = listening_socket(tmp_path / "vfu.sock")
    proc = activate([other, ours], tmp_path / "vfu.sock", names="metrics:vfio-user")
    wait_serving(proc)
    with VfioUserClient.connect(str(tmp_path / "vfu.sock")) as client:
        assert client.read32(0, 0) == 0x010000ED
    stop(proc)
    other.close()
    ours.close()


def test_several_unnamed_sockets_is_one_line(tmp_path: Path) -> None:
    a = listening_socket(tmp_path / "a.sock")
    b = listening_socket(tmp_path / "b.sock")
    proc = activate([a, b], tmp_path / "a.sock")
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and len(err.splitlines()) == 1, err
    assert "FileDescriptorName=vfio-user" in err and "Traceback" not in err
    a.close()
    b.close()


def test_a_passed_socket_on_another_path_is_one_line(tmp_path: Path) -> None:
    sock = listening_socket(tmp_path / "real.sock")
    proc = activate([sock], tmp_path / "vfu.sock")
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and len(err.splitlines()) == 1, err
    assert f"listens on {tmp_path / 'real.sock'}, not on {tmp_path / 'vfu.sock'}" in err
    sock.close()


def test_a_socket_not_listening_is_one_line(tmp_path: Path) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(tmp_path / "vfu.sock"))
    proc = activate([sock], tmp_path / "vfu.sock")
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and "is not listening" in err and len(err.splitlines()) == 1, err
    sock.close()


@pytest.mark.parametrize("kind", [socket.SOCK_DGRAM, "pipe"], ids=["datagram", "pipe"])
def test_a_passed_fd_that_is_not_a_stream_socket_is_one_line(tmp_path: Path, kind: object) -> None:
    holder: socket.socket | None = None
    if kind == "pipe":
        read_end, write_end = os.pipe()
        fd = read_end
    else:
        holder = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        holder.bind(str(tmp_path / "vfu.sock"))
        fd = holder.fileno()
    env = dict(os.environ, LISTEN_FDS="1")
    argv = [PYTHON, "-m", "vfu_platform", "serve", "--socket", str(tmp_path / "vfu.sock"), "--device", "edu"]
    proc = subprocess.run(["bash", "-c", f'LISTEN_PID=$$; export LISTEN_PID; exec "$@" 3<&{fd}', "sh", *argv],
                          env=env, cwd=str(REPO), capture_output=True, text=True, timeout=30, pass_fds=[fd], check=False)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert "fd 3 (LISTEN_FDS) is not" in proc.stderr and "Traceback" not in proc.stderr
    if kind == "pipe":
        os.close(read_end)
        os.close(write_end)
    else:
        assert holder is not None
        holder.close()


def test_listen_fds_meant_for_another_process_are_ignored(tmp_path: Path) -> None:
    """LISTEN_PID names the parent (it did not clear them): the server makes its own socket."""
    path = tmp_path / "vfu.sock"
    sock = listening_socket(tmp_path / "elsewhere.sock")
    proc = activate([sock], path, listen_pid=str(os.getpid()))
    wait_serving(proc)
    with VfioUserClient.connect(str(path)) as client:
        assert client.read32(0, 0) == 0x010000ED
    stop(proc)
    assert not path.exists(), "its own socket: removed at exit"
    sock.close()
