# SPDX-License-Identifier: BSD-3-Clause
"""The identification block every ARM PrimeCell peripheral ends its 4 KiB with.

The last eight 32-bit registers of a PrimeCell hold one byte each (bits 7:0;
bits 31:8 read zero):

    0xFE0-0xFEC  PeriphID0..3   the peripheral ID, PeriphID0 = its lowest byte
    0xFF0-0xFFC  PCellID0..3    0x0D, 0xF0, 0x05, 0xB1 on every PrimeCell

The 32-bit peripheral ID is what Linux keeps in `amba_device.periphid` and
matches against a driver's `amba_id` table: bits 11:0 part number, 19:12
designer (0x41 = ARM), 23:20 revision, 31:24 configuration.  The AMBA bus reads
these registers when a device's ID is not given to it, so a model's registers
and the ID it declares in the guest descriptor must agree: both come from
`periph_id_bytes` / `compose_periphid` here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

PERIPH_ID_BASE = 0xFE0
PCELL_ID_BASE = 0xFF0
ID_BLOCK_END = 0x1000

#: PCellID0..3, the same on every PrimeCell
PCELL_ID = (0x0D, 0xF0, 0x05, 0xB1)
#: the cell ID as one 32-bit value (Linux's AMBA_CID / CORESIGHT-style compose)
PRIMECELL_CID = 0xB105F00D

DESIGNER_ARM = 0x41


def compose_periphid(id_bytes: Sequence[int]) -> int:
    """The 32-bit ID from PeriphID0..3 (or PCellID0..3), byte 0 in bits 7:0."""
    if len(id_bytes) != 4:
        raise ValueError(f"a PrimeCell ID has 4 bytes, not {len(id_bytes)}")
    value = 0
    for index, byte in enumerate(id_bytes):
        value |= (byte & 0xFF) << (8 * index)
    return value


def periph_id_bytes(periphid: int) -> tuple[int, int, int, int]:
    """PeriphID0..3 for a 32-bit peripheral ID (the inverse of `compose_periphid`)."""
    if not 0 <= periphid <= 0xFFFF_FFFF:
        raise ValueError(f"peripheral ID {periphid:#x} is not a 32-bit value")
    return (periphid & 0xFF, periphid >> 8 & 0xFF, periphid >> 16 & 0xFF, periphid >> 24 & 0xFF)


def make_periphid(part: int, designer: int = DESIGNER_ARM, revision: int = 0, config: int = 0) -> int:
    """Assemble a peripheral ID from its fields (part 12 bits, designer 8, revision 4, config 8)."""
    for name, value, bits in (("part", part, 12), ("designer", designer, 8),
                              ("revision", revision, 4), ("config", config, 8)):
        if not 0 <= value < 1 << bits:
            raise ValueError(f"PrimeCell {name} {value:#x} does not fit in {bits} bits")
    return part | designer << 12 | revision << 20 | config << 24


def part_number(periphid: int) -> int:
    return periphid & 0xFFF


def designer(periphid: int) -> int:
    return periphid >> 12 & 0xFF


def revision(periphid: int) -> int:
    return periphid >> 20 & 0xF


class IdBlock:
    """The ID registers of one peripheral: `read(offset)` for offsets 0xFE0-0xFFF."""

    __slots__ = ("periphid", "_words")

    def __init__(self, periphid: int) -> None:
        self.periphid = periphid
        self._words = periph_id_bytes(periphid) + PCELL_ID

    @staticmethod
    def covers(offset: int) -> bool:
        return PERIPH_ID_BASE <= offset < ID_BLOCK_END

    def read(self, offset: int) -> int:
        """The 32-bit register holding `offset` (the ID byte in bits 7:0)."""
        if not self.covers(offset):
            raise ValueError(f"offset {offset:#x} is not in the PrimeCell ID block")
        return self._words[(offset - PERIPH_ID_BASE) >> 2]


# ---- 32-bit register files --------------------------------------------------

_U32 = 0xFFFF_FFFF


def read_lanes(read_word: Callable[[int], int], offset: int, size: int) -> int:
    """A `RegisterRegion` read of `size` bytes at `offset` from 32-bit registers.

    1- and 2-byte reads return those bytes of their register (a PrimeCell's
    8-bit registers read their value at byte 0 and zero at bytes 1-3); an
    8-byte read is two registers, low word first.
    """
    if size == 8:
        return read_word(offset) | read_word(offset + 4) << 32
    return read_word(offset & ~3) >> (offset & 3) * 8


def write_lanes(write_word: Callable[[int, int, int], None], offset: int, size: int, value: int) -> None:
    """A `RegisterRegion` write as `write_word(register, value, mask)` calls.

    `mask` has the bits the access covers; `value` has nothing outside it.  An
    8-byte write is two full registers, low word first.
    """
    if size == 8:
        write_word(offset, value & _U32, _U32)
        write_word(offset + 4, value >> 32 & _U32, _U32)
        return
    shift = (offset & 3) * 8
    mask = ((1 << 8 * size) - 1) << shift
    write_word(offset & ~3, value << shift & mask, mask)
