# SPDX-License-Identifier: BSD-3-Clause
"""A listening unix socket: its path, its lock, its mode and group, or the one systemd passed.

The server's (server/listener.py) and a model's host-side port's (backends/sim/uart_port.py).

* `check_path(path)`: one line for a path that cannot work (longer than sun_path's
  107 bytes, a directory that is missing or that this user cannot search and write).
* `PathLock`: an exclusive `flock` on SOCKET.lock, holding the server's pid, for as
  long as a server listens.  It tells a live server ("already served by pid N") from a
  socket file left by one that died (SIGKILL, a crash): that one is replaced.
* `Endpoint.create(path, mode, gid)`: the socket is bound in a private 0700 directory
  next to `path`, given its mode and group there, set listening, and renamed onto
  `path`: whoever sees the socket file sees its final permissions and can connect at
  once.  The bind goes through /proc/self/fd/DIRFD/, so the staging name is short and
  every path that fits sun_path works.
* `take_inherited()`: systemd socket activation (sd_listen_fds(3)): LISTEN_PID,
  LISTEN_FDS and LISTEN_FDNAMES name listening sockets from fd 3 on.  The variables
  are removed from the environment, so a child never takes them for its own.
"""
from __future__ import annotations

import fcntl
import grp
import logging
import os
import shutil
import socket
import stat
import tempfile
from collections.abc import MutableMapping
from dataclasses import dataclass

log = logging.getLogger("vfu_platform.server")

#: the longest unix socket path the kernel takes (sizeof(sun_path) less its NUL)
SUN_PATH_MAX = 107
#: the first fd systemd passes (SD_LISTEN_FDS_START)
LISTEN_FDS_START = 3
#: the FileDescriptorName= that picks our socket when systemd passes several
FD_NAME = "vfio-user"
_BACKLOG = 4


class SocketPathError(Exception):
    """The socket path cannot be used (busy, stale, not a socket, too long, no directory)."""


# ------------------------------------------------------------------ path checks
def check_path(path: str) -> None:
    """Raise SocketPathError (one line) if no socket can be created at `path`."""
    length = len(os.fsencode(path))
    if length == 0:
        raise SocketPathError("empty socket path")
    if length > SUN_PATH_MAX:
        raise SocketPathError(f"socket path too long: {length} bytes, the limit is {SUN_PATH_MAX} (sun_path): {path}")
    parent = os.path.dirname(os.path.abspath(path))
    try:
        st = os.stat(parent)
    except FileNotFoundError:
        raise SocketPathError(f"socket directory {parent} does not exist") from None
    except PermissionError:
        raise SocketPathError(f"socket directory {parent} cannot be reached: a directory above it is not searchable") from None
    except OSError as exc:
        raise SocketPathError(f"socket directory {parent}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise SocketPathError(f"socket directory {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK, effective_ids=True):
        raise SocketPathError(f"socket directory {parent} is not searchable and writable by this user")


def lock_path(path: str) -> str:
    """The lock file a live server holds for socket `path`."""
    return f"{path}.lock"


def lock_holder(path: str) -> int | None:
    """The pid written in the lock file of `path` (None: none, or unreadable)."""
    try:
        with open(lock_path(path), "rb") as stream:
            text = stream.read(32).strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def lock_held(path: str) -> bool | None:
    """Whether a live server holds the lock of `path` (None: no lock file)."""
    try:
        fd = os.open(lock_path(path), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _busy(path: str) -> SocketPathError:
    pid = lock_holder(path)
    who = f"already served by pid {pid}" if pid else f"a live server holds {lock_path(path)}"
    return SocketPathError(f"{path} is busy: {who}")


def check_socket_path(path: str) -> None:
    """Refuse a path that is unusable, in use or left over, with a message that says which.

    A socket file whose server left its lock file unlocked (it died) is not refused:
    `Endpoint.create` replaces it.
    """
    check_existing(path, lock_held(path))


def check_existing(path: str, lock_held: bool | None) -> bool:
    """Raise SocketPathError if `path` cannot be used; True if it is a stale socket to replace."""
    check_path(path)
    if lock_held:
        raise _busy(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise SocketPathError(f"{path}: {exc.strerror}") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise SocketPathError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        if lock_held is False:  # its server's lock is free: that server is gone
            return True
        raise SocketPathError(f"{path} is a stale socket (no server listens): remove it first") from None
    except OSError as exc:
        raise SocketPathError(f"{path}: {exc.strerror}") from None
    else:
        raise SocketPathError(f"{path} is busy: another server is listening on it")
    finally:
        probe.close()


# ------------------------------------------------------------------ the lock
class PathLock:
    """An exclusive flock on PATH.lock, with this process's pid in it."""

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def take(cls, path: str) -> PathLock:
        """Take the lock of socket `path` (never waits): SocketPathError if a live server has it."""
        name = lock_path(path)
        while True:
            try:
                fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise SocketPathError(f"cannot create {name}: {exc.strerror}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise _busy(path) from None
            try:  # the file may have been removed (a server shutting down) between open and flock
                same = os.fstat(fd).st_ino == os.stat(name).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                return cls(path, fd)
            os.close(fd)

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.unlink(lock_path(self.path))  # while still holding it: nobody can take a removed file
            except FileNotFoundError:
                pass
            os.close(self._fd)
            self._fd = None


# ------------------------------------------------------------------ socket activation
@dataclass
class InheritedSocket:
    """A listening socket passed by systemd (or any sd_listen_fds(3) launcher)."""

    sock: socket.socket
    #: its filesystem path ("" for an abstract or unnamed socket)
    path: str
    name: str


def take_inherited(environ: MutableMapping[str, str] | None = None) -> InheritedSocket | None:
    """The listening socket passed to this process, or None when none was.

    Reads and removes LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES.  One socket is
    used: the only one, or the one named FD_NAME among several.  Anything else than a
    listening AF_UNIX stream socket is a SocketPathError.
    """
    env = os.environ if environ is None else environ
    pid, count, names = (env.pop(key, None) for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"))
    if count is None or pid is None:
        return None
    if not pid.isdigit() or int(pid) != os.getpid():
        return None  # meant for another process (a parent that did not clear them)
    if not count.isdigit():
        raise SocketPathError(f"LISTEN_FDS={count!r} is not a number of sockets")
    n = int(count)
    if n == 0:
        return None
    labels = names.split(":") if names else []
    if n == 1:
        index = 0
    elif FD_NAME in labels[:n]:
        index = labels.index(FD_NAME)
    else:
        raise SocketPathError(f"{n} sockets passed (LISTEN_FDS): name ours FileDescriptorName={FD_NAME}")
    fd = LISTEN_FDS_START + index
    where = f"fd {fd} (LISTEN_FDS)"
    try:
        st = os.fstat(fd)
    except OSError as exc:
        raise SocketPathError(f"{where}: {exc.strerror}") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise SocketPathError(f"{where} is not a socket")
    sock = socket.socket(fileno=fd)
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        sock.detach()
        raise SocketPathError(f"{where} is not a unix stream socket (ListenStream= with a path)")
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        sock.detach()
        raise SocketPathError(f"{where} is not listening")
    sock.set_inheritable(False)
    address = sock.getsockname()
    path = address if isinstance(address, str) and not address.startswith("\0") else ""
    return InheritedSocket(sock, path, labels[index] if index < len(labels) else "")


# ------------------------------------------------------------------ group and mode
def resolve_group(group: str | int) -> int:
    """A group name or number as a gid; SocketPathError (one line) if there is no such group."""
    if isinstance(group, int) or group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise SocketPathError(f"socket group {group!r}: no such group") from None


def parse_mode(text: str | int) -> int:
    """An octal permission mode ("0660", "660", "0o660", or an int) for the socket file."""
    if isinstance(text, int):
        value = text
    else:
        digits = text[2:] if text[:2].lower() == "0o" else text
        try:
            value = int(digits, 8)
        except ValueError:
            raise ValueError(f"socket mode {text!r} is not an octal mode such as 0660") from None
    if not 0 <= value <= 0o777:
        raise ValueError(f"socket mode {text!r}: only permission bits (0 to 0777)")
    return value


# ------------------------------------------------------------------ the endpoint
class Endpoint:
    """The server's listening socket and the lock that owns its path."""

    def __init__(self, sock: socket.socket, path: str, lock: PathLock | None, owned: bool) -> None:
        self.sock = sock
        self.path = path
        self.lock = lock
        #: whether the socket file is ours to remove (not one systemd made)
        self.owned = owned

    @classmethod
    def create(cls, path: str, mode: int = 0o600, gid: int | None = None) -> Endpoint:
        """Listen on `path` with `mode` and group `gid`, replacing a stale socket."""
        check_path(path)
        lock = PathLock.take(path)
        try:
            if check_existing(path, lock_held=False):
                log.warning("replacing %s: a stale socket left by a server that is gone", path)
            sock = bind_listening(path, mode, gid)
        except BaseException:
            lock.release()
            raise
        return cls(sock, path, lock, owned=True)

    @classmethod
    def adopt(cls, inherited: InheritedSocket, path: str) -> Endpoint:
        """Serve on a passed socket; `path` (--socket) must be where it listens.  Takes its lock."""
        if inherited.path and os.path.realpath(inherited.path) != os.path.realpath(path):
            raise SocketPathError(f"the passed socket listens on {inherited.path}, not on {path}")
        lock = PathLock.take(path) if inherited.path else None
        return cls(inherited.sock, path, lock, owned=False)

    def close(self) -> None:
        """Close the socket, remove its file if it is ours, release the lock."""
        self.sock.close()
        if self.owned:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def bind_listening(path: str, mode: int = 0o600, gid: int | None = None, backlog: int = _BACKLOG) -> socket.socket:
    """A socket listening on `path`, which appears there (by rename) with `mode` and group `gid`.

    Bound in a private 0700 directory through /proc/self/fd/DIRFD/, so every path that
    fits sun_path works, however long the directory's name.  A socket file already at
    `path` (a stale one) is replaced atomically.
    """
    parent = os.path.dirname(os.path.abspath(path))
    try:
        staging = tempfile.mkdtemp(prefix=".", suffix=".vfu.tmp", dir=parent)  # mode 0700
    except OSError as exc:
        raise SocketPathError(f"cannot listen on {path}: {exc.strerror}") from None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    staged = os.path.join(staging, "s")
    dirfd = os.open(staging, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:  # a short name for the same directory: bind's limit is on the name it is given
            sock.bind(f"/proc/self/fd/{dirfd}/s")
        except FileNotFoundError:  # no /proc
            sock.bind(staged)
        os.chmod(staged, mode)
        if gid is not None:
            try:
                os.chown(staged, -1, gid)
            except PermissionError:
                raise SocketPathError(f"cannot give {path} to group {gid}: this user is not in it") from None
        sock.listen(backlog)
        os.rename(staged, path)
    except SocketPathError:
        sock.close()
        raise
    except OSError as exc:
        sock.close()
        raise SocketPathError(f"cannot listen on {path}: {exc.strerror or exc}") from None
    finally:
        os.close(dirfd)
        shutil.rmtree(staging, ignore_errors=True)
    return sock
