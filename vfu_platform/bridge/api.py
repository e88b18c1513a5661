# SPDX-License-Identifier: BSD-3-Clause
"""What a session needs from the device it serves, and what it lends it.

Defined here, in the bridge layer, so that the server imports it from below;
`PciBridge` and `PciPassthrough` implement `ServedDevice`.  Errors are raised
as `BackendError` (or subclasses) carrying the errno the client is answered
with.  The session has already checked what the protocol alone can check
(lengths, region bounds against `region_size`, SET_IRQS flag/range rules
against `irq_info`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from vfu_platform.backends.base import Scheduler
from vfu_platform.dma import DmaMapTable
from vfu_platform.protocol import messages
from vfu_platform.trace import Tracer


@dataclass(slots=True)
class ClientContext:
    """What the device gets to use while a client is attached."""

    dma: DmaMapTable
    #: the server's event loop: fd watches and timers
    loop: Scheduler
    tracer: Tracer | None


class ServedDevice(Protocol):
    def device_info(self) -> tuple[int, int, int]:
        """(flags, num_regions, num_irqs) for DEVICE_GET_INFO."""

    def region_info(self, index: int) -> tuple[messages.RegionInfo, int | None]:
        """Region `index` (argsz left 0) and the fd to send with it, if mmappable."""

    def region_size(self, index: int) -> int: ...

    def region_read(self, index: int, offset: int, count: int) -> bytes: ...

    def region_write(self, index: int, offset: int, data: bytes) -> None: ...

    def irq_info(self, index: int) -> tuple[int, int]:
        """(flags, count) of IRQ index `index`."""

    def set_irqs(self, request: messages.IrqSet, fds: list[int]) -> None:
        """Apply a validated SET_IRQS; takes ownership of `fds` (closes what it does not keep)."""

    def reset(self) -> None: ...

    def client_attached(self, context: ClientContext) -> None: ...

    def client_lost(self) -> None:
        """Drop every client fd and IRQ state; keep device state for the next client."""


__all__ = ["ClientContext", "ServedDevice"]
