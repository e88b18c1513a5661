# SPDX-License-Identifier: BSD-3-Clause
"""The IRQ page: the bridge's own BAR (layout in docs/irq-page.md).

Its first 4 KiB tell a guest which platform IRQ is being delivered while all of them
share INTx, take the guest's exact EOI (IRQ_EOI, IRQ_CTRL), and hold the MSI-X table
and PBA; when the bridge carries a guest descriptor the BAR is 8 KiB and the
descriptor is read-only memory from `DESCRIPTOR_OFFSET`.
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
IRQ_EOI = 0xC20  # WO: the guest finished handling line k (exact EOI)
IRQ_CTRL = 0xC24  # RW: bit 0 EXACT_EOI
IRQ_EOI_IGNORED = 0xC28  # RO: IRQ_EOI writes that did nothing
IRQ_CTRL_EXACT_EOI = 0x1
#: The writable registers: a write must cover the whole dword to count.
WRITABLE_REGISTERS = (IRQ_EOI, IRQ_CTRL)
DESCRIPTOR_OFFSET = 0x1000
IRQ_STATE_BASE = 0xC40
MAGIC = 0xD00
MAGIC_VALUE = 0x50554656  # "VFUP" little-endian
NO_IRQ = 0xFFFFFFFF

_STATE_CODES = {LineState.INACTIVE: 0, LineState.ACTIVE: 1, LineState.PENDING: 2}
_U32 = struct.Struct("<I")


class IrqPage:
    def __init__(self, engine: IrqEngine, msix: MsixTable | None, wakeups: Callable[[], int] = lambda: 0,
                 descriptor: bytes = b"") -> None:
        if len(descriptor) > DESCRIPTOR_OFFSET:
            raise ValueError(f"a {len(descriptor)}-byte guest descriptor does not fit in the IRQ page")
        self.engine = engine
        self.msix = msix
        self._wakeups = wakeups
        self.descriptor = bytes(descriptor)

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
        if offset == IRQ_CTRL:
            return IRQ_CTRL_EXACT_EOI if engine.exact_eoi else 0
        if offset == IRQ_EOI_IGNORED:
            return engine.ignored_eois & 0xFFFFFFFF
        if offset == MAGIC:
            return MAGIC_VALUE
        line = (offset - IRQ_STATE_BASE) // 4
        if offset >= IRQ_STATE_BASE and line < len(engine.specs):
            return _STATE_CODES[engine.line_state(line)]
        return 0

    def read(self, offset: int, size: int) -> bytes:
        """Read anywhere in the BAR: registers below 0x1000, the descriptor (then zeros) above."""
        if offset + size > DESCRIPTOR_OFFSET:
            if offset < DESCRIPTOR_OFFSET:  # straddles: serve each side on its own
                head = DESCRIPTOR_OFFSET - offset
                return self.read(offset, head) + self.read(DESCRIPTOR_OFFSET, size - head)
            start = offset - DESCRIPTOR_OFFSET
            return self.descriptor[start : start + size].ljust(size, b"\0")
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
        """Apply a write to the MSI-X table; returns vectors whose mask bit changed."""
        if self.msix is not None and offset < self.msix.table_size:
            return self.msix.write(offset, data[: self.msix.table_size - offset])
        return []

    @staticmethod
    def register_writes(offset: int, data: bytes) -> list[tuple[int, int]]:
        """(register, value) for each writable register the write covers wholly, in address order.

        A partial write of IRQ_EOI or IRQ_CTRL is dropped, like every other write the
        page does not take (the descriptor, the read-only registers)."""
        end = offset + len(data)
        return [
            (register, _U32.unpack_from(data, register - offset)[0])
            for register in WRITABLE_REGISTERS
            if offset <= register and register + 4 <= end
        ]
