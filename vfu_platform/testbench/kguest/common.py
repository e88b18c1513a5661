# SPDX-License-Identifier: BSD-3-Clause
"""Helpers the guest programs share: eventfds, sysfs writes, DMA buffers, running as another user."""
from __future__ import annotations

import ctypes
import json
import mmap
import os
import select
from collections.abc import Callable
from typing import Any

from vfu_platform.backends.vfio import VfioHostError

NOBODY = 65534


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
