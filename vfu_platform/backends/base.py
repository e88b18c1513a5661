# SPDX-License-Identifier: BSD-3-Clause
"""The backend contract: the kernel's VFIO device behaviour, as Python.

Everything above the backends (bridge, IRQ engine, server) talks to a device
only through `DeviceBackend`, so that a simulated model and a real
/dev/vfio device are indistinguishable to them.  The contract follows the
kernel's vfio-platform driver:

* regions have a size, READ/WRITE/MMAP flags and optionally an fd that the
  client may mmap (memfd for simulated models, the VFIO device fd for hosts);
* each IRQ index has count 1 and flags EVENTFD (edge) or
  EVENTFD|MASKABLE|AUTOMASKED (level);
* an IRQ is delivered by writing the trigger eventfd installed with
  `set_irq_trigger`; a level (automasked) line masks itself when it fires and
  stays masked until `unmask_irq`; if it is still asserted when unmasked it
  fires again at once (as the kernel's vfio-platform handler does);
* `reset` puts the device in its power-on state; IRQ lines end up masked.
"""
from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from vfu_platform import vfio_abi
from vfu_platform.backends.guest import GuestDevice
from vfu_platform.counters import Counters
from vfu_platform.errors import BackendError, DmaError


@dataclass(frozen=True, slots=True)
class RegionInfo:
    """One device region, as VFIO_DEVICE_GET_REGION_INFO describes it."""

    index: int
    size: int
    flags: int  # vfio_abi.REGION_FLAG_READ | WRITE | MMAP
    mmap_fd: int | None = None  # fd to mmap (owned by the backend; never closed by callers)
    mmap_offset: int = 0  # where the region starts inside mmap_fd
    # Areas (offset, size) inside the region that may be mmapped; empty with
    # FLAG_MMAP set means the whole region.
    sparse_areas: tuple[tuple[int, int], ...] = ()
    name: str = ""

    @property
    def mmappable(self) -> bool:
        return bool(self.flags & vfio_abi.REGION_FLAG_MMAP) and self.mmap_fd is not None


@dataclass(frozen=True, slots=True)
class IrqInfo:
    """One device IRQ index (platform devices: one line per index, count 1)."""

    index: int
    count: int
    flags: int  # vfio_abi.IRQ_INFO_EVENTFD | MASKABLE | AUTOMASKED
    name: str = ""

    @property
    def automasked(self) -> bool:
        return bool(self.flags & vfio_abi.IRQ_INFO_AUTOMASKED)


@dataclass(frozen=True, slots=True)
class AckRegister:
    """Writing `mask` bits at (region, offset) acknowledges IRQ `irq` (an exact EOI)."""

    irq: int
    region: int
    offset: int
    mask: int


class DmaSpace(Protocol):
    """Client memory as the device sees it (addresses are IOVAs).

    `read`/`write` answer at once and reach only windows the server mapped (EWOULDBLOCK
    otherwise); `read_then`/`write_then` reach every window and call `done` with the bytes
    (b"" for a write) or the `DmaError`, at once or when the client has answered.
    """

    def read(self, iova: int, size: int) -> bytes: ...

    def write(self, iova: int, data: bytes) -> None: ...

    def read_then(self, iova: int, size: int, done: Callable[[bytes | DmaError], None]) -> None: ...

    def write_then(self, iova: int, data: bytes, done: Callable[[bytes | DmaError], None]) -> None: ...


class Timer(Protocol):
    def cancel(self) -> None: ...


class Scheduler(Protocol):
    """Deferred work and fd watches, run by the server's event loop (never inside a message handler)."""

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer: ...

    # fd readiness (a model's host side, e.g. a UART's pty): callback runs when fd is readable
    def add_reader(self, fd: int, callback: Callable[[], None]) -> None: ...

    def remove_reader(self, fd: int) -> None: ...


@dataclass(slots=True)
class DeviceContext:
    """What the server lends a backend: client memory and the event loop's timers."""

    dma: DmaSpace
    scheduler: Scheduler


class DeviceBackend(abc.ABC):
    """A platform (or PCI) device with regions and IRQs, with VFIO semantics."""

    #: short name, e.g. "edu" or the host device's sysfs name
    name: str = ""
    #: vfio_abi.DEVICE_FLAGS_PLATFORM / AMBA / PCI, | DEVICE_FLAGS_RESET when reset works
    device_flags: int = 0
    #: device-tree compatible strings (platform devices), most specific first
    compatible: tuple[str, ...] = ()
    #: registers whose write is an exact EOI for an IRQ (optional, per model/config)
    ack_registers: tuple[AckRegister, ...] = ()
    #: regions that hold interrupt status/ack registers: never mmapped by default
    irq_regions: frozenset[int] = frozenset()

    @abc.abstractmethod
    def regions(self) -> Sequence[RegionInfo]: ...

    @abc.abstractmethod
    def irqs(self) -> Sequence[IrqInfo]: ...

    @abc.abstractmethod
    def read(self, region: int, offset: int, size: int) -> bytes:
        """Read `size` bytes; the caller has bounds-checked against the region."""

    @abc.abstractmethod
    def write(self, region: int, offset: int, data: bytes) -> None:
        """Write; the caller has bounds-checked against the region."""

    @abc.abstractmethod
    def set_irq_trigger(self, irq: int, eventfd: int | None) -> None:
        """Install (or with None remove) the eventfd the device signals for `irq`.

        The caller keeps ownership of the fd and keeps it open while installed.
        """

    @abc.abstractmethod
    def mask_irq(self, irq: int) -> None: ...

    @abc.abstractmethod
    def unmask_irq(self, irq: int) -> None:
        """Unmask; a level line that is still asserted fires again at once."""

    @abc.abstractmethod
    def reset(self) -> None:
        """Back to power-on state; IRQ lines masked, triggers kept."""

    #: words that address this device in a host control command, besides `name`
    control_names: tuple[str, ...] = ()

    def control(self, words: list[str]) -> str:
        """Run one host-side control command (`vfu-platform control`); one reply line.

        The reply starts with "ok" or "error:".  Called from the server's event
        loop, never inside a region access.  See `route_control` for groups.
        """
        return "error: this device has no control commands"

    def guest_devices(self) -> tuple[GuestDevice, ...]:
        """The platform devices a guest should create (docs/guest-descriptor.md); default none."""
        return ()

    def attach(self, context: DeviceContext | None) -> None:
        """Lend (or with None withdraw) client memory and timers; default: ignore."""

    def close(self) -> None:
        """Release everything the backend holds (fds, mappings)."""


def route_control(devices: Sequence[DeviceBackend], words: list[str]) -> str:
    """Dispatch a control command to one of `devices` by its first word.

    A first word that is a device's `name` or one of its `control_names` picks
    that device, which gets the remaining words ("pl061 set 3 1" -> pl061's
    `control(["set", "3", "1"])`).  With a single device the prefix is optional
    ("set 3 1" works too); with several it is required.  A device group's own
    `control` can be `route_control(self.members, words)`.
    """
    if not words:
        return "error: empty command"
    for device in devices:
        if words[0] == device.name or words[0] in device.control_names:
            return device.control(words[1:])
    if len(devices) == 1:
        return devices[0].control(words)
    names = ", ".join(device.name for device in devices)
    return f"error: no device {words[0]!r} (devices: {names})"


#: the error types and the counters object live in shared leaves; named here for backends
__all__ = [
    "AckRegister",
    "BackendError",
    "Counters",
    "DeviceBackend",
    "DeviceContext",
    "DmaError",
    "DmaSpace",
    "IrqInfo",
    "RegionInfo",
    "Scheduler",
    "Timer",
    "route_control",
]
