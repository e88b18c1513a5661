# SPDX-License-Identifier: BSD-3-Clause
"""Calling VFIO ioctls with structs laid out by the compiled <linux/vfio.h>.

The structs are cffi objects from `vfu_platform._vfio` (the kernel header is
the only source of truth for offsets and request numbers); `fcntl.ioctl` hands
the kernel a pointer to their memory and copies the answer back into it.
Flag names are read from the same bindings, so a report never prints a number
that was typed by hand.
"""
from __future__ import annotations

import fcntl
import functools
from typing import Any

from vfu_platform._vfio import ffi, lib

# Prefixes of the flag families a report decodes, by the name of the family.
FLAG_FAMILIES = {
    "device": "VFIO_DEVICE_FLAGS_",
    "region": "VFIO_REGION_INFO_FLAG_",
    "irq": "VFIO_IRQ_INFO_",
    "group": "VFIO_GROUP_FLAGS_",
}


def new(ctype: str, size: int | None = None) -> KernelBuffer:
    """A zeroed `ctype` with `argsz` set; `size` > sizeof leaves room for caps or data."""
    return KernelBuffer(ctype, size)


class KernelBuffer:
    """Memory handed to one ioctl: `s` is the typed struct at its start.

    Variable-size answers (capability chains, SET_IRQS payloads) live past the
    fixed struct, so the buffer may be larger than sizeof(ctype); `at()` gives
    a typed view of any part of it, bounds-checked.
    """

    __slots__ = ("s", "raw", "nbytes")

    def __init__(self, ctype: str, size: int | None = None) -> None:
        base = ffi.sizeof(ctype)
        self.nbytes = max(size or base, base)
        self.raw = ffi.new("char[]", self.nbytes)
        self.s = ffi.cast(ctype + " *", self.raw)
        self.s.argsz = self.nbytes

    def buffer(self) -> Any:
        return ffi.buffer(self.raw, self.nbytes)

    def at(self, ctype: str, offset: int) -> Any:
        """A `ctype *` at byte `offset` into the buffer (a capability or payload)."""
        if offset < 0 or offset + ffi.sizeof(ctype) > self.nbytes:
            raise ValueError(f"{ctype} at {offset} is outside a {self.nbytes}-byte buffer")
        return ffi.cast(ctype + " *", self.raw + offset)

    def array(self, ctype: str, offset: int, count: int) -> Any:
        """A `ctype *` over `count` consecutive items at `offset` (a flexible-array payload)."""
        if offset < 0 or offset + count * ffi.sizeof(ctype) > self.nbytes:
            raise ValueError(f"{count} x {ctype} at {offset} is outside a {self.nbytes}-byte buffer")
        return ffi.cast(ctype + " *", self.raw + offset)


def ioctl_struct(fd: int, request: int, buf: KernelBuffer) -> int:
    """Run `request` on `fd` with `buf`'s memory as the argument; the kernel may write it."""
    return fcntl.ioctl(fd, request, buf.buffer(), True)


def ioctl_int(fd: int, request: int, arg: int = 0) -> int:
    """Run an ioctl whose argument is an integer passed by value (or none)."""
    return fcntl.ioctl(fd, request, arg)


def ioctl_bytes(fd: int, request: int, data: bytes) -> int:
    """Run an ioctl that reads a byte string from userspace (GROUP_GET_DEVICE_FD's device name)."""
    return fcntl.ioctl(fd, request, bytearray(data), True)


@functools.cache
def _family(prefix: str) -> tuple[tuple[int, str], ...]:
    names = []
    for name in dir(lib):
        if name.startswith(prefix) and not name.endswith("_MASK"):
            value = getattr(lib, name)
            if isinstance(value, int) and value and value & (value - 1) == 0:  # single bits only
                names.append((value, name[len(prefix):]))
    return tuple(sorted(names))


def flag_names(family: str, value: int) -> list[str]:
    """Decode a flags word into header names (unknown bits as hex), lowest bit first."""
    names = []
    known = 0
    for bit, name in _family(FLAG_FAMILIES[family]):
        known |= bit
        if value & bit:
            names.append(name)
    if value & ~known:
        names.append(hex(value & ~known))
    return names


def ioctl_int_pointer(fd: int, request: int, value: int) -> int:
    """Run an ioctl whose argument points at one int32 (GROUP_SET_CONTAINER's container fd)."""
    cell = ffi.new("int32_t *", value)
    return fcntl.ioctl(fd, request, ffi.buffer(cell), True)
