# SPDX-License-Identifier: BSD-3-Clause
"""Config space: every byte's write mask, BAR and ROM sizing, STATUS, the MSI-X cap."""
from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vfu_platform.bridge.bar_plan import BarPlan, RegionSpec, plan_bars
from vfu_platform.bridge.config_space import (
    CONFIG_SPACE_SIZE,
    MSIX_CAP_OFFSET,
    VENDOR_CAP_OFFSET,
    ConfigSpace,
    ConfigWriteEffects,
    PciIds,
)

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
VECTORS = 8


def make_plan() -> BarPlan:
    """BAR0 1 MiB 32-bit, BAR1-2 4 KiB 64-bit prefetchable, BAR3 8 KiB, BAR4 IRQ page, BAR5 absent."""
    return plan_bars(
        [RegionSpec(1 * MIB), RegionSpec(0x200, is_64bit=True, prefetchable=True), RegionSpec(5000)],
        page_size=4 * KIB,
    )


def make_cs(vectors: int = VECTORS, pin: int = 1) -> ConfigSpace:
    return ConfigSpace(PciIds(), make_plan(), vectors, None, pin)


def rd(cs: ConfigSpace, offset: int, size: int = 4) -> int:
    return int.from_bytes(cs.read(offset, size), "little")


def wr(cs: ConfigSpace, offset: int, value: int, size: int = 4) -> ConfigWriteEffects:
    return cs.write(offset, value.to_bytes(size, "little"))


def expected_wmask(with_msix: bool = True) -> bytes:
    """The write mask, derived from the PCI spec and the brief (not from the implementation)."""
    mask = bytearray(CONFIG_SPACE_SIZE)
    mask[0x04] = 0x06  # MEM | MASTER (no IO BAR, so IO is read-only)
    mask[0x05] = 0x05  # SERR (bit 8) | INTX_DISABLE (bit 10)
    mask[0x0C] = 0xFF  # cache line size
    mask[0x0D] = 0xFF  # latency timer
    mask[0x3C] = 0xFF  # interrupt line
    mask[0x10:0x14] = struct.pack("<I", ~(1 * MIB - 1) & 0xFFFF_FFF0)  # BAR0
    mask[0x14:0x18] = struct.pack("<I", ~(4 * KIB - 1) & 0xFFFF_FFF0)  # BAR1 low
    mask[0x18:0x1C] = b"\xff\xff\xff\xff"  # BAR1 high: all address bits
    mask[0x1C:0x20] = struct.pack("<I", ~(8 * KIB - 1) & 0xFFFF_FFF0)  # BAR3
    mask[0x20:0x24] = struct.pack("<I", ~(4 * KIB - 1) & 0xFFFF_FFF0)  # BAR4 (IRQ page)
    if with_msix:
        mask[MSIX_CAP_OFFSET + 3] = 0xC0  # function mask | enable
    return bytes(mask)


@pytest.mark.parametrize("with_msix", [True, False])
def test_every_byte_honours_its_write_mask(with_msix: bool) -> None:
    wmask = expected_wmask(with_msix)
    for offset in range(CONFIG_SPACE_SIZE):
        cs = make_cs(VECTORS if with_msix else 0)
        before = cs.read(0, CONFIG_SPACE_SIZE)
        cs.write(offset, b"\xff")
        after = cs.read(0, CONFIG_SPACE_SIZE)
        assert after[:offset] == before[:offset] and after[offset + 1 :] == before[offset + 1 :], hex(offset)
        assert after[offset] == before[offset] | wmask[offset], hex(offset)
        cs.write(offset, b"\x00")
        after = cs.read(0, CONFIG_SPACE_SIZE)
        assert after[:offset] == before[:offset] and after[offset + 1 :] == before[offset + 1 :], hex(offset)
        assert after[offset] == before[offset] & ~wmask[offset], hex(offset)


def test_all_ones_over_the_whole_space_touches_only_writable_bits() -> None:
    cs = make_cs()
    before = cs.read(0, CONFIG_SPACE_SIZE)
    cs.write(0, b"\xff" * CONFIG_SPACE_SIZE)
    after = cs.read(0, CONFIG_SPACE_SIZE)
    assert after == bytes(b | m for b, m in zip(before, expected_wmask()))


def test_header_fields() -> None:
    cs = make_cs()
    assert rd(cs, 0x00, 2) == 0x1234 and rd(cs, 0x02, 2) == 0x11E8
    assert rd(cs, 0x08, 1) == 0x10
    assert cs.read(0x09, 3) == bytes([0x00, 0xFF, 0x00])  # prog-if, subclass, base class
    assert rd(cs, 0x0E, 1) == 0x00 and rd(cs, 0x0F, 1) == 0
    assert rd(cs, 0x2C, 2) == 0x1AF4 and rd(cs, 0x2E, 2) == 0x1100
    assert rd(cs, 0x3D, 1) == 1
    assert rd(cs, 0x3E, 2) == 0
    assert rd(cs, 0x28) == 0  # CardBus CIS
    assert rd(cs, 0x24) == 0  # BAR5 absent


def test_custom_ids() -> None:
    ids = PciIds(vendor=0x1AF4, device=0x10F0, subsystem_vendor=0x1, subsystem_id=0x2, class_code=0x0C0330, revision=3)
    cs = ConfigSpace(ids, make_plan())
    assert cs.read(0, 4) == bytes([0xF4, 0x1A, 0xF0, 0x10])
    assert cs.read(0x08, 4) == bytes([3, 0x30, 0x03, 0x0C])
    assert rd(cs, 0x2C) == 0x0002_0001


@pytest.mark.parametrize(
    "kwargs",
    [dict(vendor=0x10000), dict(class_code=1 << 24), dict(revision=256), dict(device=-1)],
)
def test_ids_out_of_range(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        PciIds(**kwargs)


def size_dword(cs: ConfigSpace, offset: int) -> int:
    """The save / write all-ones / read / restore sequence a guest (and QEMU) uses."""
    saved = rd(cs, offset)
    wr(cs, offset, 0xFFFF_FFFF)
    sized = rd(cs, offset)
    wr(cs, offset, saved)
    assert rd(cs, offset) == saved
    return sized


@pytest.mark.parametrize(
    ("size", "is_64bit", "prefetchable"),
    [
        (4 * KIB, False, False),
        (64 * KIB, False, True),
        (1 * MIB, False, False),
        (2 * GIB, False, False),
        (4 * KIB, True, False),
        (1 * MIB, True, True),
        (4 * GIB, True, True),
        (8 * GIB, True, False),
        (1 << 40, True, True),
    ],
)
def test_bar_sizing(size: int, is_64bit: bool, prefetchable: bool) -> None:
    plan = plan_bars([RegionSpec(size, is_64bit=is_64bit, prefetchable=prefetchable)], page_size=4 * KIB)
    cs = ConfigSpace(PciIds(), plan)
    type_bits = (0x4 if is_64bit else 0) | (0x8 if prefetchable else 0)
    wr(cs, 0x10, 0)  # QEMU writes 0 after reset
    if is_64bit:
        wr(cs, 0x14, 0)
    assert rd(cs, 0x10) == type_bits
    low = size_dword(cs, 0x10)
    assert low & 0xF == type_bits
    mask = low & ~0xF
    if is_64bit:
        high = size_dword(cs, 0x14)
        mask |= high << 32
        assert (~mask & 0xFFFF_FFFF_FFFF_FFFF) + 1 == size
    else:
        assert (~mask & 0xFFFF_FFFF) + 1 == size
    # The IRQ page follows, in the next free slot.
    irq = 0x10 + 4 * (2 if is_64bit else 1)
    assert size_dword(cs, irq) == 0xFFFF_F000


def test_bar_base_programming_forces_low_bits() -> None:
    cs = make_cs()
    wr(cs, 0x10, 0xFE01_2345)
    assert rd(cs, 0x10) == 0xFE00_0000  # 1 MiB aligned, type 0
    wr(cs, 0x14, 0xFEB0_1FFF)
    wr(cs, 0x18, 0x0000_0001)
    assert rd(cs, 0x14) == 0xFEB0_100C  # 4 KiB aligned, 64-bit prefetchable
    assert rd(cs, 0x18) == 1
    wr(cs, 0x1C, 0xC000_3000, 4)
    assert rd(cs, 0x1C) == 0xC000_2000  # 8 KiB aligned
    # Sub-dword writes work too: program the top byte of BAR3 alone.
    cs.write(0x1F, b"\xd0")
    assert rd(cs, 0x1C) == 0xD000_2000


def test_unused_bar_and_upper_half_of_sized_64bit() -> None:
    cs = make_cs()
    assert size_dword(cs, 0x24) == 0  # absent BAR5 ignores writes
    assert size_dword(cs, 0x18) == 0xFFFF_FFFF  # high dword of a 4 KiB 64-bit BAR


def test_rom_probe_reads_zero() -> None:
    cs = make_cs()
    original = rd(cs, 0x30)
    assert original == 0
    wr(cs, 0x30, 0xFFFF_F800)
    assert rd(cs, 0x30) == 0
    wr(cs, 0x30, 0xFFFF_FFFF)
    assert rd(cs, 0x30) == 0
    wr(cs, 0x30, original)
    assert rd(cs, 0x30) == 0


def test_command_bits_and_effects() -> None:
    cs = make_cs()
    effects = wr(cs, 0x04, 0xFFFF, 2)
    assert cs.command == 0x0506
    assert cs.memory_enabled and cs.bus_master and cs.intx_disabled
    assert (effects.command_old, effects.command_new) == (0, 0x0506)
    assert effects.command_changed and effects.memory_enable_changed and effects.bus_master_changed
    assert effects.intx_disable_changed and effects.any_changed
    assert not effects.msix_enable_changed and not effects.msix_mask_changed

    effects = wr(cs, 0x04, 0x0006, 2)  # clear INTX_DISABLE and SERR only
    assert effects.intx_disable_changed
    assert not effects.memory_enable_changed and not effects.bus_master_changed
    assert not cs.intx_disabled and cs.memory_enabled

    effects = wr(cs, 0x04, 0x0006, 2)  # same value again: nothing changed
    assert not effects.any_changed and not effects.command_changed

    effects = wr(cs, 0x3C, 0x0B, 1)  # interrupt line: not an effect
    assert not effects.any_changed and rd(cs, 0x3C, 1) == 0x0B


def test_command_write_through_a_dword_with_status_leaves_status_alone() -> None:
    cs = make_cs()
    cs.set_intx_status(True)
    status = rd(cs, 0x06, 2)
    effects = wr(cs, 0x04, 0xFFFF_0002)  # W1C pattern into STATUS, MEM into COMMAND
    assert rd(cs, 0x06, 2) == status
    assert cs.command == 0x0002 and effects.memory_enable_changed


def test_status_interrupt_follows_set_intx_status() -> None:
    cs = make_cs()
    assert not rd(cs, 0x06, 2) & 0x08 and not cs.intx_status
    cs.set_intx_status(True)
    assert rd(cs, 0x06, 2) & 0x08 and cs.intx_status
    wr(cs, 0x06, 0xFFFF, 2)  # writes (W1C or not) do not clear it
    assert rd(cs, 0x06, 2) & 0x08
    cs.set_intx_status(True)
    assert rd(cs, 0x06, 2) == 0x18
    cs.set_intx_status(False)
    assert rd(cs, 0x06, 2) == 0x10
    cs.set_intx_status(False)
    assert rd(cs, 0x06, 2) == 0x10


def test_cap_list_only_with_msix() -> None:
    without = make_cs(vectors=0)
    assert rd(without, 0x06, 2) == 0 and rd(without, 0x34, 1) == 0
    assert without.msix_cap_offset is None and without.msix_bar is None
    assert not without.msix_enabled and not without.msix_function_masked
    assert without.read(0x40, 0xC0) == bytes(0xC0)
    with_cap = make_cs()
    assert rd(with_cap, 0x06, 2) & 0x10 and rd(with_cap, 0x34, 1) == MSIX_CAP_OFFSET


def walk_caps(cs: ConfigSpace) -> list[tuple[int, int]]:
    """(offset, id) of each capability, following the chain the way a guest does."""
    found: list[tuple[int, int]] = []
    if not rd(cs, 0x06, 2) & 0x10:
        return found
    pointer = rd(cs, 0x34, 1) & 0xFC
    while pointer:
        assert 0x40 <= pointer <= CONFIG_SPACE_SIZE - 4
        assert pointer not in [offset for offset, _ in found], "loop in the capability chain"
        found.append((pointer, rd(cs, pointer, 1)))
        pointer = rd(cs, pointer + 1, 1) & 0xFC
    return found


def test_cap_chain() -> None:
    assert walk_caps(make_cs(vectors=0)) == []
    assert walk_caps(make_cs()) == [(MSIX_CAP_OFFSET, 0x11)]


VENDOR_CAP = bytes([0x09, 0xEE, 20, 0x01]) + bytes(range(4, 20))


@pytest.mark.parametrize("vectors", [0, 5])
def test_vendor_capability_is_chained_after_msix_and_read_only(vectors: int) -> None:
    cs = ConfigSpace(PciIds(), make_plan(), msix_vectors=vectors, vendor_cap=VENDOR_CAP)
    chain = [(MSIX_CAP_OFFSET, 0x11)] if vectors else []
    assert walk_caps(cs) == chain + [(VENDOR_CAP_OFFSET, 0x09)]
    assert cs.vendor_cap_offset == VENDOR_CAP_OFFSET
    assert cs.read(VENDOR_CAP_OFFSET, 20) == bytes([0x09, 0x00]) + VENDOR_CAP[2:]  # cap_next filled in
    cs.write(VENDOR_CAP_OFFSET, bytes([0xFF] * 20))
    cs.reset()
    assert cs.read(VENDOR_CAP_OFFSET, 20) == bytes([0x09, 0x00]) + VENDOR_CAP[2:]
    assert rd(cs, 0x06, 2) & 0x10


def test_vendor_capability_must_be_vendor_specific() -> None:
    with pytest.raises(ValueError, match="vendor capability"):
        ConfigSpace(PciIds(), make_plan(), vendor_cap=bytes([0x11, 0, 20, 1]))


@pytest.mark.parametrize("vectors", [1, 8, 64, 65, 128])
def test_msix_capability(vectors: int) -> None:
    cs = make_cs(vectors)
    cap = MSIX_CAP_OFFSET
    assert rd(cs, cap + 2, 2) == vectors - 1
    irq_bar = 4
    assert cs.msix_bar == irq_bar
    assert rd(cs, cap + 4) == 0x000 | irq_bar  # table at offset 0
    assert rd(cs, cap + 8) == 0x800 | irq_bar  # PBA at 0x800
    assert cs.msix_vectors == vectors


def test_msix_control_bits_and_effects() -> None:
    cs = make_cs()
    cap = MSIX_CAP_OFFSET
    effects = wr(cs, cap + 2, 0xC000, 2)  # enable + function mask
    assert cs.msix_enabled and cs.msix_function_masked
    assert effects.msix_enable_changed and effects.msix_mask_changed and effects.any_changed
    assert (effects.msix_enabled_old, effects.msix_enabled_new) == (False, True)
    assert not effects.command_changed
    assert rd(cs, cap + 2, 2) == 0xC000 | (VECTORS - 1)

    effects = wr(cs, cap + 2, 0x8000, 2)  # unmask the function, stay enabled
    assert cs.msix_enabled and not cs.msix_function_masked
    assert not effects.msix_enable_changed and effects.msix_mask_changed
    assert (effects.msix_masked_old, effects.msix_masked_new) == (True, False)

    # A dword write over the cap header (as QEMU forwards it) changes only the control bits.
    effects = wr(cs, cap, 0x0000_0000)
    assert rd(cs, cap) == 0x11 | (VECTORS - 1) << 16
    assert effects.msix_enable_changed and not cs.msix_enabled

    # Table size bits are read-only.
    wr(cs, cap + 2, 0x07FF, 2)
    assert rd(cs, cap + 2, 2) == VECTORS - 1


def test_reset_restores_power_on_values() -> None:
    cs = make_cs()
    power_on = cs.read(0, CONFIG_SPACE_SIZE)
    cs.write(0, b"\xff" * CONFIG_SPACE_SIZE)
    cs.set_intx_status(True)
    assert cs.read(0, CONFIG_SPACE_SIZE) != power_on
    cs.reset()
    assert cs.read(0, CONFIG_SPACE_SIZE) == power_on
    assert cs.command == 0 and not cs.msix_enabled and not cs.msix_function_masked
    assert rd(cs, 0x10) == 0 and rd(cs, 0x3C, 1) == 0 and not cs.intx_status


@pytest.mark.parametrize("pin", [0, 1, 4])
def test_interrupt_pin_is_read_only(pin: int) -> None:
    cs = make_cs(pin=pin)
    wr(cs, 0x3D, 0xFF, 1)
    assert rd(cs, 0x3D, 1) == pin == cs.interrupt_pin


def test_construction_errors() -> None:
    plan = make_plan()
    with pytest.raises(ValueError):
        ConfigSpace(PciIds(), plan, 129)
    with pytest.raises(ValueError):
        ConfigSpace(PciIds(), plan, -1)
    with pytest.raises(ValueError):
        ConfigSpace(PciIds(), plan, interrupt_pin=5)
    with pytest.raises(ValueError):
        ConfigSpace(PciIds(), plan, 8, msix_bar=5)  # absent BAR
    with pytest.raises(ValueError):
        ConfigSpace(PciIds(), plan, 8, msix_bar=2)  # upper half of BAR1
    with pytest.raises(ValueError):
        ConfigSpace(PciIds(), plan, 0, msix_bar=4)  # a BAR but no vectors
    no_irq_page = plan_bars([RegionSpec(0x100)], page_size=4 * KIB, irq_page=False)
    with pytest.raises(ValueError):
        ConfigSpace(PciIds(), no_irq_page, 8)
    tiny = plan_bars([RegionSpec(0x800)], page_size=4 * KIB, irq_page=False)
    assert ConfigSpace(PciIds(), tiny).msix_vectors == 0
    # A BAR backed for only 0x800 bytes cannot hold the PBA at 0x800.
    with pytest.raises(ValueError):
        ConfigSpace(PciIds(), tiny, 1, msix_bar=0)


@pytest.mark.parametrize(("offset", "size"), [(-1, 1), (0, 257), (255, 2), (256, 1)])
def test_out_of_range_accesses_raise(offset: int, size: int) -> None:
    cs = make_cs()
    with pytest.raises(ValueError):
        cs.read(offset, size)
    with pytest.raises(ValueError):
        cs.write(offset, bytes(size))
    with pytest.raises(ValueError):
        cs.read(0, -1)


def test_zero_length_access() -> None:
    cs = make_cs()
    assert cs.read(256, 0) == b""
    assert not cs.write(0, b"").any_changed


writes = st.lists(
    st.integers(0, CONFIG_SPACE_SIZE - 1).flatmap(
        lambda offset: st.tuples(st.just(offset), st.binary(min_size=1, max_size=min(8, CONFIG_SPACE_SIZE - offset)))
    ),
    max_size=12,
)


@settings(max_examples=150, deadline=None)
@given(writes=writes, chunks=st.lists(st.sampled_from([1, 2, 3, 4, 8]), min_size=1, max_size=8))
def test_bulk_read_equals_bytewise_and_ro_bytes_hold(writes: list[tuple[int, bytes]], chunks: list[int]) -> None:
    cs = make_cs()
    power_on = cs.read(0, CONFIG_SPACE_SIZE)
    wmask = expected_wmask()
    for offset, data in writes:
        cs.write(offset, data)
    bulk = cs.read(0, CONFIG_SPACE_SIZE)
    assert bulk == b"".join(cs.read(i, 1) for i in range(CONFIG_SPACE_SIZE))
    # Reads of mixed sizes stitched together give the same bytes.
    pieces, offset, turn = [], 0, 0
    while offset < CONFIG_SPACE_SIZE:
        size = min(chunks[turn % len(chunks)], CONFIG_SPACE_SIZE - offset)
        pieces.append(cs.read(offset, size))
        offset += size
        turn += 1
    assert b"".join(pieces) == bulk
    for index in range(CONFIG_SPACE_SIZE):
        assert (bulk[index] ^ power_on[index]) & ~wmask[index] == 0, hex(index)
