# SPDX-License-Identifier: BSD-3-Clause
"""The listening socket as an operator meets it (vfu_platform/endpoint.py, `serve`).

* Path limits: sun_path holds 107 bytes.  A 103-byte --socket works, and so does its
  107-byte SOCKET.ctl status socket; a --socket whose .ctl would be too long still
  serves, and says so in one warning line; a 120-byte one is refused in one line
  naming the limit (exit 2, no traceback, nothing created).
* Directories: a path through a regular file (ENOTDIR), a directory this user cannot
  search, one it cannot write: one line each, exit 2.  The tests run as root, who
  passes every permission check, so the permission cases run the server as `nobody`
  (setpriv).
* --socket-mode / --socket-group: the socket file (and its .ctl) has exactly that mode
  and group, and never appears under its name with any other: inotify shows it arrives
  by a rename, the only thing created in the directory being a private 0700 folder.
  A group that does not exist, or one the user is not in: one line.
* The lock: a live server holds an exclusive flock on SOCKET.lock, its pid inside; a
  second server is told that pid.
(Stale sockets and signals: test_listener_lifecycle.py; the 0600 default: test_cli.py.)
"""
from __future__ import annotations

import ctypes
import fcntl
import grp
import os
import shutil
import stat
import struct
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO

from vfu_platform.endpoint import SUN_PATH_MAX, lock_path
from vfu_platform.operator_cli import status_path
from vfu_platform.testing import PYTHON, serve_in_subprocess

NOBODY = 65534


def serve_cli(*args: str, user: int | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """`vfu-platform serve ARGS` expected to stop at once; as uid/gid `user` through setpriv."""
    argv = [PYTHON, "-m", "vfu_platform", "serve", "--device", "edu", *args]
    if user is not None:
        argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *argv]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=str(REPO),
                          stdin=subprocess.DEVNULL, check=False)


def assert_one_line(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("vfu-platform: error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def path_of_length(directory: Path, length: int, name: str = "vfu.sock") -> str:
    """DIRECTORY/ddd.../NAME, exactly `length` bytes long (the filler folder is created)."""
    filler = length - len(str(directory)) - 2 - len(name)
    assert filler > 0, f"{directory} is too long for a {length}-byte path"
    folder = directory / ("d" * filler)
    folder.mkdir()
    path = str(folder / name)
    assert len(path) == length
    return path


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short directory under /tmp that any user can search (pytest's own tmp_path is 0700 and long)."""
    folder = Path(tempfile.mkdtemp(prefix="vfu-ep-", dir="/tmp"))
    folder.chmod(0o755)
    yield folder
    for sub in folder.rglob("*"):
        if sub.is_dir() and not sub.is_symlink():
            sub.chmod(0o755)
    shutil.rmtree(folder, ignore_errors=True)


# --------------------------------------------------------------------------- path limits


def test_a_103_byte_path_serves_and_its_107_byte_status_socket_works(short_dir: Path) -> None:
    socket_path = path_of_length(short_dir, 103)
    server = serve_in_subprocess("edu", directory=os.path.dirname(socket_path))
    assert len(status_path(socket_path)) == SUN_PATH_MAX
    with server.connect() as client:
        assert client.read32(0, 0) == 0x010000ED
    server.clients.clear()
    assert "warning" not in server.stderr(), server.stderr()
    status = subprocess.run([PYTHON, "-m", "vfu_platform", "status", "--socket", socket_path, "--json"],
                            capture_output=True, text=True, timeout=30, cwd=str(REPO), check=False)
    assert status.returncode == 0, status.stderr
    assert socket_path in status.stdout
    assert server.stop() == 0
    assert not os.path.exists(status_path(socket_path))


def test_a_socket_whose_ctl_would_be_too_long_still_serves_with_one_warning(short_dir: Path) -> None:
    socket_path = path_of_length(short_dir, SUN_PATH_MAX)  # legal; SOCKET.ctl is 111 bytes
    server = serve_in_subprocess("edu", directory=os.path.dirname(socket_path))
    with server.connect() as client:
        assert client.read32(0, 0) == 0x010000ED
    server.clients.clear()
    warnings = [line for line in server.stderr().splitlines() if "warning" in line]
    assert len(warnings) == 1, server.stderr()
    assert "no status socket" in warnings[0] and "111 bytes" in warnings[0] and f"{SUN_PATH_MAX}" in warnings[0]
    assert not os.path.exists(status_path(socket_path))
    assert server.stop() == 0


def test_a_120_byte_path_is_refused_in_one_line(short_dir: Path) -> None:
    socket_path = path_of_length(short_dir, 120)
    line = assert_one_line(serve_cli("--socket", socket_path), "too long", "120 bytes", f"limit is {SUN_PATH_MAX}")
    assert socket_path in line
    assert os.listdir(os.path.dirname(socket_path)) == [], "nothing is created: no lock, no staging folder"


# --------------------------------------------------------------------------- directories


def test_a_path_through_a_regular_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    assert_one_line(serve_cli("--socket", str(tmp_path / "file" / "vfu.sock")), f"{tmp_path / 'file'}",
                    "not a directory")


def test_a_directory_the_user_cannot_search_is_one_line(short_dir: Path) -> None:
    closed = short_dir / "closed"
    closed.mkdir(mode=0o755)
    closed.chmod(0)
    inner = closed / "inner"
    if os.geteuid() != 0:
        user = None
        result_inner = None
    else:  # root searches any directory: run the server as nobody
        user = NOBODY
        inner.mkdir()
        result_inner = serve_cli("--socket", str(inner / "vfu.sock"), user=user)
    assert_one_line(serve_cli("--socket", str(closed / "vfu.sock"), user=user), str(closed),
                    "not searchable and writable")
    if result_inner is not None:
        assert_one_line(result_inner, str(inner), "cannot be reached")
    assert not list(closed.iterdir()) or [p.name for p in closed.iterdir()] == ["inner"]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the server as another user")
def test_a_directory_the_user_cannot_write_is_one_line(short_dir: Path) -> None:
    read_only = short_dir / "ro"
    read_only.mkdir(mode=0o555)
    read_only.chmod(0o555)
    assert_one_line(serve_cli("--socket", str(read_only / "vfu.sock"), user=NOBODY), str(read_only),
                    "not searchable and writable")
    assert list(read_only.iterdir()) == []


# --------------------------------------------------------------------------- mode and group


def other_group() -> grp.struct_group:
    """A group that exists and is not this user's own (kvm, disk, ...)."""
    for name in ("kvm", "disk", "tty", "adm", "nogroup"):
        try:
            group = grp.getgrnam(name)
        except KeyError:
            continue
        if group.gr_gid != os.getegid():
            return group
    raise AssertionError("/etc/group has none of kvm, disk, tty, adm, nogroup")


# inotify(7), through libc: what appears in the socket's directory, and how
IN_CREATE, IN_MOVED_TO, IN_ISDIR = 0x100, 0x80, 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


class DirectoryWatch:
    def __init__(self, folder: Path) -> None:
        self.fd = _libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        assert self.fd >= 0, os.strerror(ctypes.get_errno())
        assert _libc.inotify_add_watch(self.fd, os.fsencode(folder), IN_CREATE | IN_MOVED_TO) >= 0

    def events(self) -> list[tuple[int, str]]:
        """(mask, name) of every event so far."""
        data = b""
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                break
            data += chunk
        events, offset = [], 0
        while offset < len(data):
            _wd, mask, _cookie, size = struct.unpack_from("iIII", data, offset)
            name = data[offset + 16:offset + 16 + size].rstrip(b"\0").decode()
            events.append((mask, name))
            offset += 16 + size
        return events

    def close(self) -> None:
        os.close(self.fd)


def test_socket_mode_and_group_exact_and_never_visible_otherwise(tmp_path: Path) -> None:
    group = other_group()
    watch = DirectoryWatch(tmp_path)
    try:
        server = serve_in_subprocess("edu", directory=tmp_path,
                                     extra=["--socket-mode", "0660", "--socket-group", group.gr_name])
        events = watch.events()
    finally:
        watch.close()
    for path in (server.socket_path, status_path(server.socket_path)):
        st = os.stat(path)
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o660, oct(st.st_mode)
        assert st.st_gid == group.gr_gid
    with server.connect() as client:
        assert client.read32(0, 0) == 0x010000ED
    server.clients.clear()
    created = [(mask, name) for mask, name in events if mask & IN_CREATE]
    arrived = [name for mask, name in events if mask & IN_MOVED_TO]
    assert "vfu.sock" in arrived and "vfu.sock.ctl" in arrived, events
    assert all(name not in ("vfu.sock", "vfu.sock.ctl") for _mask, name in created), \
        f"a socket was created under its own name, before its mode and group were set: {events}"
    staged_sockets = [name for mask, name in created if not mask & IN_ISDIR and not name.startswith("vfu.sock.")]
    assert staged_sockets == [], f"only private folders are made in the socket's directory: {events}"
    assert server.stop() == 0


def test_an_unknown_group_is_one_line(tmp_path: Path) -> None:
    assert_one_line(serve_cli("--socket", str(tmp_path / "vfu.sock"), "--socket-group", "no-such-group-xyz"),
                    "'no-such-group-xyz'", "no such group")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the server as another user")
def test_a_group_the_user_is_not_in_is_one_line(short_dir: Path) -> None:
    group = other_group()
    open_dir = short_dir / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    result = serve_cli("--socket", str(open_dir / "vfu.sock"), "--socket-group", group.gr_name, user=NOBODY)
    assert_one_line(result, f"group {group.gr_gid}", "not in it")
    assert list(open_dir.iterdir()) == [], "no socket, lock or staging folder left behind"


@pytest.mark.parametrize("mode", ["999", "01777", "rw"])
def test_a_bad_mode_is_one_line(tmp_path: Path, mode: str) -> None:
    result = serve_cli("--socket", str(tmp_path / "vfu.sock"), "--socket-mode", mode)
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result
    assert "--socket-mode" in result.stderr and "Traceback" not in result.stderr


# --------------------------------------------------------------------------- the lock


def test_a_live_server_holds_an_exclusive_flock_naming_its_pid(tmp_path: Path) -> None:
    server = serve_in_subprocess("edu", directory=tmp_path)
    lock = lock_path(server.socket_path)
    assert Path(lock).read_text() == f"{server.pid}\n"
    fd = os.open(lock, os.O_RDONLY)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    finally:
        os.close(fd)
    second = serve_cli("--socket", server.socket_path)
    assert_one_line(second, f"already served by pid {server.pid}")
    assert server.stop() == 0
    assert not os.path.exists(lock)
