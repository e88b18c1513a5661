# SPDX-License-Identifier: BSD-3-Clause
"""Bus mastering: device DMA is allowed only while COMMAND.bus-master is set.

QEMU enforces bus mastering for its in-process devices; over vfio-user it hands
the server guest memory regardless, so the server has to check.  The gate is
the `DmaSpace` a backend is lent while a client is attached.
"""
from __future__ import annotations

import errno
from collections.abc import Callable

from vfu_platform.backends.base import DmaError, DmaSpace
from vfu_platform.bridge.config_space import ConfigSpace
from vfu_platform.counters import Counters
from vfu_platform.trace import TraceFn


class BusMasterGate:
    """Client memory as the device sees it, closed while bus mastering is off."""

    def __init__(self, dma: DmaSpace, config: ConfigSpace, counters: Counters, trace: TraceFn) -> None:
        self._dma = dma
        self._config = config
        self._counters = counters
        self._trace = trace

    def _check(self, what: str, iova: int, size: int) -> None:
        if not self._config.bus_master:
            self._counters.bump("dma-refused-no-bus-master")
            self._trace("dma-refused", reason="bus master disabled", op=what, iova=iova, size=size)
            raise DmaError(errno.EPERM, f"device DMA {what} at {iova:#x} refused: bus master is disabled")

    def read(self, iova: int, size: int) -> bytes:
        self._check("read", iova, size)
        return self._dma.read(iova, size)

    def write(self, iova: int, data: bytes) -> None:
        self._check("write", iova, len(data))
        self._dma.write(iova, data)

    def read_then(self, iova: int, size: int, done: Callable[[bytes | DmaError], None]) -> None:
        try:
            self._check("read", iova, size)
        except DmaError as exc:
            done(exc)
            return
        self._dma.read_then(iova, size, done)

    def write_then(self, iova: int, data: bytes, done: Callable[[bytes | DmaError], None]) -> None:
        try:
            self._check("write", iova, len(data))
        except DmaError as exc:
            done(exc)
            return
        self._dma.write_then(iova, data, done)


__all__ = ["BusMasterGate"]
