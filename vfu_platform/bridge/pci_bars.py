# SPDX-License-Identifier: BSD-3-Clause
"""The BAR and ROM BAR registers of a passed-through PCI function, emulated by the server.

Everything else in a passed-through function's config space is forwarded to
the host (vfio-pci's config region already virtualizes what userspace must not
touch).  The base address registers are the exception, because what the host
holds there is meaningless to a client:

* they hold *host* physical addresses, while the client places the BARs in its
  own (guest) address space - QEMU emulates them itself and only reads the
  type bits at realize (protocol brief 3.2 R9, 3.4), but it writes 0 to them
  after every reset and another client may size them;
* vfio-pci answers 0 for a BAR the host left unassigned, dropping the type bits
  QEMU needs to register it.

So the server answers them: value = (written & size mask) | the device's type
bits (IO; memory 32/64-bit and prefetchable), with the size mask of the host
region.  For a 64-bit BAR the next register is its upper half and takes the
high half of the mask.  The ROM BAR keeps its enable bit and reads 0 when the
function has no ROM, which is how QEMU's probe decides "no ROM".
"""
from __future__ import annotations

from collections.abc import Sequence

BAR_FIRST = 0x10
BAR_END = 0x28  # six 32-bit BAR registers
ROM_BAR = 0x30
ROM_END = 0x34
BAR_COUNT = 6

_IO = 0x1
_MEM_TYPE_MASK = 0x6
_MEM_64 = 0x4
_ROM_ENABLE = 0x1
_ROM_ADDRESS_MASK = 0xFFFFF800
_DWORD = 0xFFFFFFFF


def _register(offset: int) -> tuple[int, int] | None:
    """(register number 0-5 BARs / 6 ROM, byte within it) of a config offset, or None."""
    if BAR_FIRST <= offset < BAR_END:
        return (offset - BAR_FIRST) // 4, (offset - BAR_FIRST) % 4
    if ROM_BAR <= offset < ROM_END:
        return BAR_COUNT, offset - ROM_BAR
    return None


def is_emulated(offset: int) -> bool:
    return _register(offset) is not None


class EmulatedBars:
    """Registers 0x10-0x27 and 0x30-0x33 of config space."""

    def __init__(self, sizes: Sequence[int], type_bits: Sequence[int], rom_size: int = 0) -> None:
        """`sizes`: the host region size of BAR0-5 (0: absent or upper half); `type_bits`: the
        low bits of each host BAR register (the type: IO, 64-bit, prefetchable)."""
        if len(sizes) != BAR_COUNT or len(type_bits) != BAR_COUNT:
            raise ValueError("six BAR sizes and six type words are needed")
        self.masks = [0] * (BAR_COUNT + 1)
        self.flags = [0] * (BAR_COUNT + 1)
        index = 0
        while index < BAR_COUNT:
            size, bits = sizes[index], type_bits[index]
            if size <= 0:
                index += 1
                continue
            size = 1 << (size - 1).bit_length()  # a BAR decodes a power of two
            low = ~(size - 1)
            if bits & _IO:
                self.flags[index] = bits & 0x3
                self.masks[index] = low & 0xFFFFFFFC
                index += 1
                continue
            self.flags[index] = bits & 0xF
            self.masks[index] = low & 0xFFFFFFF0
            if bits & _MEM_TYPE_MASK == _MEM_64 and index + 1 < BAR_COUNT:
                self.masks[index + 1] = (low >> 32) & _DWORD
                index += 2
                continue
            index += 1
        if rom_size > 0:
            rom = 1 << (rom_size - 1).bit_length()
            self.masks[BAR_COUNT] = (~(rom - 1) & _ROM_ADDRESS_MASK) | _ROM_ENABLE
        self.values = [0] * (BAR_COUNT + 1)

    def reset(self) -> None:
        self.values = [0] * (BAR_COUNT + 1)

    def register(self, number: int) -> int:
        """The dword a read of register `number` (0-5 BARs, 6 ROM) returns."""
        return (self.values[number] & self.masks[number]) | self.flags[number]

    def overlay(self, offset: int, data: bytearray) -> None:
        """Replace the emulated bytes of a config read of `data` at `offset`."""
        for i in range(len(data)):
            where = _register(offset + i)
            if where is not None:
                number, byte = where
                data[i] = (self.register(number) >> (8 * byte)) & 0xFF

    def covers(self, offset: int, size: int) -> bool:
        """True if every byte of the access is emulated (no need to ask the host)."""
        return all(is_emulated(offset + i) for i in range(size))

    def write(self, offset: int, data: bytes) -> list[tuple[int, bytes]]:
        """Apply the emulated bytes of a config write; return the runs (offset, bytes) to forward."""
        forward: list[tuple[int, bytes]] = []
        run_start = None
        for i, value in enumerate(data):
            where = _register(offset + i)
            if where is None:
                if run_start is None:
                    run_start = i
                continue
            if run_start is not None:
                forward.append((offset + run_start, bytes(data[run_start:i])))
                run_start = None
            number, byte = where
            shift = 8 * byte
            self.values[number] = (self.values[number] & ~(0xFF << shift) & _DWORD) | (value << shift)
        if run_start is not None:
            forward.append((offset + run_start, bytes(data[run_start:])))
        return forward
