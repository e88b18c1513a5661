# SPDX-License-Identifier: BSD-3-Clause
"""Helpers the guest programs share: eventfds, sysfs writes, DMA buffers, running as another user."""
from __future__ import annotations

import ctypes
import json
import mmap
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from vfu_platform.backends.vfio import VfioHostError

if TYPE_CHECKING:
    from testbench.kguest.checks import Checks

NOBODY = 65534


PL031_DR, PL031_MR, PL031_RIS = 0x00, 0x04, 0x14
PL031_MATCH_ATTEMPTS = 5


def pl031_match_now(read32: Callable[[int], int], write32: Callable[[int, int], None]) -> int:
    """Make a pl031 raise its match interrupt now; returns how many MR writes it took.

    The RTC compares MR with its counter when MR is written: MR = a DR value read just
    before matches at once, unless the counter ticked in between, and then the match is
    2**32 seconds away (a test that waits for it flakes about once in a few hundred
    runs). So after each write read RIS, the raw match status, latched until ICR, and
    write again with a fresh DR until it is set.
    """
    for attempt in range(1, PL031_MATCH_ATTEMPTS + 1):
        write32(PL031_MR, read32(PL031_DR))
        if read32(PL031_RIS) & 1:
            return attempt
    raise RuntimeError(f"pl031: no match after {PL031_MATCH_ATTEMPTS} MR = DR writes (RIS stays 0)")


def eventfd() -> int:
    return os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)


def wait_event(fd: int, timeout: float) -> int:
    """How many times `fd` was signalled within `timeout` seconds (0: never)."""
    ready, _, _ = select.select([fd], [], [], timeout)
    if not ready:
        return 0
    try:
        return os.eventfd_read(fd)
    except BlockingIOError:
        return 0


def drain(fd: int) -> None:
    wait_event(fd, 0)


def apply_writes(writes: tuple[tuple[str, str], ...]) -> None:
    """Do what a VfioHostError's fix told the user to type, write by write."""
    for path, value in writes:
        with open(path, "w") as f:
            f.write(value)


def expect_error(body: Callable[[], Any]) -> VfioHostError | None:
    """Run `body` expecting a VfioHostError; closes a backend it returns by mistake."""
    try:
        result = body()
    except VfioHostError as e:
        return e
    close = getattr(result, "close", None)
    if close:
        close()
    return None


def describe(error: VfioHostError | None) -> str:
    if error is None:
        return "no error raised"
    return f"{error.problem.name} errno={error.errno}: {error}"


def as_user(uid: int, body: Callable[[], Any]) -> dict[str, Any]:
    """Run `body` in a forked child with `uid`, report {"problem", "message", "errno"} or {"ok"}.

    Forking (rather than exec'ing a new interpreter) keeps the loaded modules,
    so the test does not depend on the unprivileged user reaching the Python
    installation; only the VFIO nodes' permissions are tested.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read_end)
        result: dict[str, Any]
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            value = body()
            close = getattr(value, "close", None)
            if close:
                close()
            result = {"ok": True}
        except VfioHostError as e:
            result = {"problem": e.problem.name, "message": str(e), "errno": e.errno}
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            result = {"problem": "exception", "message": repr(e), "errno": None}
        os.write(write_end, json.dumps(result).encode())
        os._exit(0)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    os.close(read_end)
    os.waitpid(pid, 0)
    return json.loads(b"".join(chunks) or b"{}")


class DmaBuffer:
    """Anonymous shared memory (a memfd, as QEMU's guest RAM would be) mapped into this process."""

    def __init__(self, size: int, name: str = "kguest-dma") -> None:
        self.fd = os.memfd_create(name, os.MFD_CLOEXEC)
        os.ftruncate(self.fd, size)
        self.map = mmap.mmap(self.fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.size = size
        view = ctypes.c_char.from_buffer(self.map)
        self.address = ctypes.addressof(view)
        del view  # a live export would keep the mapping from being closed

    def close(self) -> None:
        self.map.close()
        os.close(self.fd)


def tail(path: str, lines: int = 3) -> str:
    """The last lines of a log, on one line (for a check's detail)."""
    try:
        with open(path, errors="replace") as f:
            return " / ".join(f.read().strip().splitlines()[-lines:])
    except OSError:
        return ""


@contextmanager
def served_host_device(c: "Checks", prefix: str, device: str, socket_path: str, trace: str,
                       log_path: str) -> Iterator[subprocess.Popen[bytes] | None]:
    """`vfu-platform serve --host DEVICE` as a subprocess in this guest.

    Yields the server process once its socket exists (None if it never came up),
    and stops it with SIGTERM at the end.  Reports `<prefix>_server_started` and
    `<prefix>_server_clean_exit` (exit 0 and the socket removed).
    """
    for path in (trace, socket_path):
        if os.path.exists(path):
            os.unlink(path)
    with open(log_path, "wb") as log:
        server = subprocess.Popen([sys.executable, "-m", "vfu_platform", "serve", "--host", device,
                                   "--socket", socket_path, "--trace", trace, "-v"],
                                  stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(socket_path) and server.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        started = os.path.exists(socket_path)
        c.check(f"{prefix}_server_started", started, f"rc={server.poll()} log={tail(log_path)}")
        yield server if started else None
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
        try:
            rc = server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
            rc = server.wait()
        c.check(f"{prefix}_server_clean_exit", rc == 0 and not os.path.exists(socket_path),
                f"rc={rc} log={tail(log_path)}")
