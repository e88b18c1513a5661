# SPDX-License-Identifier: BSD-3-Clause
"""The emulated BAR and ROM BAR registers of a passed-through function (bridge/pci_bars.py)."""
from __future__ import annotations

import pytest

from vfu_platform.bridge.pci_bars import EmulatedBars, is_emulated


def bars() -> EmulatedBars:
    # BAR0 1 MiB 32-bit memory, BAR2+3 16 KiB 64-bit prefetchable, BAR4 256-byte IO, 32 KiB ROM
    return EmulatedBars([1 << 20, 0, 0x4000, 0, 0x100, 0], [0, 0, 0xC, 0, 0x1, 0], rom_size=0x8000)


def test_reads_after_reset_are_the_type_bits() -> None:
    b = bars()
    assert [b.register(i) for i in range(7)] == [0, 0, 0xC, 0, 0x1, 0, 0]


def test_sizing_gives_the_masks() -> None:
    b = bars()
    for offset in (0x10, 0x14, 0x18, 0x1C, 0x20, 0x24, 0x30):
        assert b.write(offset, b"\xff\xff\xff\xff") == []
    assert [b.register(i) for i in range(7)] == [
        0xFFF00000, 0, 0xFFFFC00C, 0xFFFFFFFF, 0xFFFFFF01, 0, 0xFFFF8001]


def test_address_is_kept_within_the_mask() -> None:
    b = bars()
    b.write(0x10, (0xFEB12345).to_bytes(4, "little"))
    assert b.register(0) == 0xFEB00000
    b.write(0x12, b"\x00\xf0")  # a 16-bit write to the upper half
    assert b.register(0) == 0xF0000000


def test_mixed_writes_return_the_forwarded_runs() -> None:
    b = bars()
    assert b.write(0x0C, bytes(range(8))) == [(0x0C, bytes(range(4)))]
    assert b.write(0x26, bytes(range(1, 13))) == [(0x28, bytes(range(3, 11)))]
    assert b.register(6) == 0x1  # bytes 0x0b (ROM enable bit kept) 0x0c at 0x30-0x31: masked to the enable bit


def test_overlay_replaces_only_emulated_bytes() -> None:
    b = bars()
    b.write(0x10, (0xFE000000).to_bytes(4, "little"))
    data = bytearray(b"\xaa" * 0x40)
    b.overlay(0, data)
    assert data[:0x10] == b"\xaa" * 0x10 and data[0x10:0x14] == (0xFE000000).to_bytes(4, "little")
    assert data[0x28:0x30] == b"\xaa" * 8 and data[0x30:0x34] == bytes(4) and data[0x34:] == b"\xaa" * 12


def test_covers_and_is_emulated() -> None:
    b = bars()
    assert b.covers(0x10, 4) and b.covers(0x30, 4) and not b.covers(0x0C, 8) and not b.covers(0x2C, 4)
    assert is_emulated(0x27) and not is_emulated(0x28) and not is_emulated(0x34)


def test_reset_clears_the_addresses() -> None:
    b = bars()
    b.write(0x10, b"\xff" * 4)
    b.reset()
    assert b.register(0) == 0


def test_no_rom_reads_zero_even_after_a_probe() -> None:
    b = EmulatedBars([0x1000, 0, 0, 0, 0, 0], [0] * 6)
    b.write(0x30, (0xFFFFF800).to_bytes(4, "little"))
    assert b.register(6) == 0


def test_wrong_shapes_are_refused() -> None:
    with pytest.raises(ValueError):
        EmulatedBars([0] * 5, [0] * 6)
