# SPDX-License-Identifier: BSD-3-Clause
"""The server-emulated MSI-X table and PBA, and their place in the IRQ page.

QEMU's vfio-user-pci emulates the MSI-X table itself and never forwards table accesses;
it does forward PBA reads (and drops PBA writes).  The table here serves other clients
that drive the device directly (tests, the project's own client library), so it keeps the
spec's layout and power-on state:

    entry n at TABLE_OFFSET + 16 * n:  +0 address lo, +4 address hi, +8 data,
                                       +12 vector control (bit 0 = mask, others reserved)

All vectors power on masked.  The PBA holds one bit per vector in little-endian qwords;
its contents come from whoever tracks pending state (`pba_read` takes the bits).

The PCI spec only defines aligned 4- and 8-byte accesses; anything else in range is
handled byte-wise rather than refused, because an error would only end up as all-ones
in the guest.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Final

#: Where the table starts inside the IRQ page BAR (its BIR/offset in the MSI-X cap).
TABLE_OFFSET: Final = 0x000
#: Where the PBA starts inside the IRQ page BAR.
PBA_OFFSET: Final = 0x800
#: Bytes per table entry.
ENTRY_SIZE: Final = 16
#: The table must end before the PBA: 0x800 / 16 entries.
MAX_VECTORS: Final = (PBA_OFFSET - TABLE_OFFSET) // ENTRY_SIZE
#: Vector control bit 0: the vector is masked.
VECTOR_CTRL_MASKBIT: Final = 0x1

_VECTOR_CTRL: Final = 12
# Per-byte write mask of one entry: address and data fully writable, of vector control
# only the mask bit (the rest is reserved and reads 0).
_ENTRY_WMASK: Final = bytes([0xFF] * 12 + [VECTOR_CTRL_MASKBIT, 0, 0, 0])
_POWER_ON_ENTRY: Final = bytes(12) + VECTOR_CTRL_MASKBIT.to_bytes(4, "little")


def pba_size(vectors: int) -> int:
    """PBA bytes for `vectors` vectors: one bit each, whole qwords."""
    return (vectors + 63) // 64 * 8


@dataclass(frozen=True, slots=True)
class MsixEntry:
    """One table entry, decoded."""

    address: int
    data: int
    masked: bool


class MsixTable:
    """MSI-X table and PBA contents for `vectors` vectors (1..MAX_VECTORS).

    Offsets given to `read`/`write` are relative to the table start, those given to
    `pba_read` to the PBA start; an access that leaves the table or PBA raises ValueError
    (the caller routes by offset, so that would be its bug).
    """

    def __init__(self, vectors: int) -> None:
        if not 1 <= vectors <= MAX_VECTORS:
            raise ValueError(f"MSI-X vector count {vectors} not in 1..{MAX_VECTORS}")
        self._vectors = vectors
        self._table = bytearray(_POWER_ON_ENTRY * vectors)
        self._wmask = _ENTRY_WMASK * vectors

    @property
    def vectors(self) -> int:
        return self._vectors

    @property
    def table_size(self) -> int:
        return len(self._table)

    @property
    def pba_size(self) -> int:
        return pba_size(self._vectors)

    def reset(self) -> None:
        """Power-on state: every entry zero and masked."""
        self._table[:] = _POWER_ON_ENTRY * self._vectors

    def read(self, offset: int, size: int) -> bytes:
        self._check(offset, size, len(self._table), "table")
        return bytes(self._table[offset : offset + size])

    def write(self, offset: int, data: bytes) -> list[int]:
        """Apply a write; returns the vectors (ascending) whose mask bit changed."""
        self._check(offset, len(data), len(self._table), "table")
        table, wmask = self._table, self._wmask
        changed: list[int] = []
        for position, value in enumerate(data, offset):
            keep = wmask[position]
            if not keep:
                continue
            old = table[position]
            new = (old & ~keep) | (value & keep)
            table[position] = new
            if position % ENTRY_SIZE == _VECTOR_CTRL and (old ^ new) & VECTOR_CTRL_MASKBIT:
                changed.append(position // ENTRY_SIZE)
        return changed

    def masked(self, vector: int) -> bool:
        """True if the vector's own mask bit is set (the function mask is not considered)."""
        return bool(self._table[self._entry_base(vector) + _VECTOR_CTRL] & VECTOR_CTRL_MASKBIT)

    def entry(self, vector: int) -> MsixEntry:
        base = self._entry_base(vector)
        raw = self._table
        address = int.from_bytes(raw[base : base + 8], "little")
        data = int.from_bytes(raw[base + 8 : base + 12], "little")
        return MsixEntry(address, data, bool(raw[base + _VECTOR_CTRL] & VECTOR_CTRL_MASKBIT))

    def pba_read(self, offset: int, size: int, pending_bits: int) -> bytes:
        """Read the PBA whose bit n is bit n of `pending_bits` (bits past the last vector read 0)."""
        total = self.pba_size
        self._check(offset, size, total, "PBA")
        pending = pending_bits & ((1 << self._vectors) - 1)
        return pending.to_bytes(total, "little")[offset : offset + size]

    def _entry_base(self, vector: int) -> int:
        if not 0 <= vector < self._vectors:
            raise ValueError(f"MSI-X vector {vector} not in 0..{self._vectors - 1}")
        return vector * ENTRY_SIZE

    @staticmethod
    def _check(offset: int, size: int, limit: int, what: str) -> None:
        if offset < 0 or size < 0 or offset + size > limit:
            raise ValueError(f"MSI-X {what} access {offset:#x}+{size:#x} outside 0..{limit:#x}")
