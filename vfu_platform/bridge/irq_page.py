# SPDX-License-Identifier: BSD-3-Clause
"""The IRQ page: the bridge's own 4 KiB BAR (layout in docs/irq-page.md).

It tells a guest which platform IRQ is being delivered while all of them share
INTx, and holds the MSI-X table and PBA.
"""
from __future__ import annotations

import struct
from collections.abc import Callable

from vfu_platform.bridge.msix import PBA_OFFSET, MsixTable
from vfu_platform.irq import IrqEngine, LineState, Route

IRQ_ACTIVE = 0xC00
IRQ_PENDING = 0xC04
IRQ_LINES = 0xC08
IRQ_ROUTE = 0xC0C
IRQ_SIGNALS = 0xC10
IRQ_EOIS = 0xC14
IRQ_WAKEUPS = 0xC18
IRQ_STATE_BASE = 0xC40
MAGIC = 0xD00
MAGIC_VALUE = 0x50554656  # "VFUP" little-endian
NO_IRQ = 0xFFFFFFFF

_STATE_CODES = {LineState.INACTIVE: 0, LineState.ACTIVE: 1, LineState.PENDING: 2}
_U32 = struct.Struct("<I")


class IrqPage:
    def __init__(self, engine: IrqEngine, msix: MsixTable | None, wakeups: Callable[[], int] = lambda: 0) -> None:
        self.engine = engine
        self.msix = msix
        self._wakeups = wakeups

    def _register(self, offset: int) -> int:
        engine = self.engine
        if offset == IRQ_ACTIVE:
            active = engine.active
            return NO_IRQ if active is None else active
        if offset == IRQ_PENDING:
            return len(engine.pending)
        if offset == IRQ_LINES:
            return len(engine.specs)
        if offset == IRQ_ROUTE:
            return 1 if engine.route is Route.MSIX else 0
        if offset == IRQ_SIGNALS:
            return engine.signals & 0xFFFFFFFF
        if offset == IRQ_EOIS:
            return engine.eois & 0xFFFFFFFF
        if offset == IRQ_WAKEUPS:
            return self._wakeups() & 0xFFFFFFFF
        if offset == MAGIC:
            return MAGIC_VALUE
        line = (offset - IRQ_STATE_BASE) // 4
        if offset >= IRQ_STATE_BASE and line < len(engine.specs):
            return _STATE_CODES[engine.line_state(line)]
        return 0

    def read(self, offset: int, size: int) -> bytes:
        if self.msix is not None:
            if offset < self.msix.table_size:
                return self.msix.read(offset, min(size, self.msix.table_size - offset)).ljust(size, b"\0")
            if PBA_OFFSET <= offset < PBA_OFFSET + self.msix.pba_size:
                part = min(size, PBA_OFFSET + self.msix.pba_size - offset)
                return self.msix.pba_read(offset - PBA_OFFSET, part, self.engine.pba).ljust(size, b"\0")
        out = bytearray()
        # Registers are 32-bit; any access size is served from the dwords it covers.
        first = offset & ~3
        for dword in range(first, offset + size, 4):
            out += _U32.pack(self._register(dword))
        start = offset - first
        return bytes(out[start : start + size])

    def write(self, offset: int, data: bytes) -> list[int]:
        """Writes only reach the MSI-X table; returns vectors whose mask bit changed."""
        if self.msix is not None and offset < self.msix.table_size:
            return self.msix.write(offset, data[: self.msix.table_size - offset])
        return []
