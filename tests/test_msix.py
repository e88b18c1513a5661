# SPDX-License-Identifier: BSD-3-Clause
"""The emulated MSI-X table and PBA."""
from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vfu_platform.bridge import msix
from vfu_platform.bridge.msix import MsixEntry, MsixTable

# Independent of the implementation: per-byte write mask of one 16-byte entry.
ENTRY_WMASK = bytes([0xFF] * 12 + [0x01, 0, 0, 0])


def test_layout_fits_the_irq_page() -> None:
    assert msix.TABLE_OFFSET == 0 and msix.PBA_OFFSET == 0x800
    assert msix.MAX_VECTORS == 128
    assert msix.TABLE_OFFSET + 16 * msix.MAX_VECTORS <= msix.PBA_OFFSET
    assert msix.PBA_OFFSET + msix.pba_size(msix.MAX_VECTORS) <= 0x1000


@pytest.mark.parametrize(("vectors", "size"), [(1, 8), (64, 8), (65, 16), (128, 16)])
def test_sizes(vectors: int, size: int) -> None:
    table = MsixTable(vectors)
    assert table.vectors == vectors
    assert table.table_size == 16 * vectors
    assert table.pba_size == size


@pytest.mark.parametrize("vectors", [0, -1, 129])
def test_bad_vector_count(vectors: int) -> None:
    with pytest.raises(ValueError):
        MsixTable(vectors)


def test_power_on_all_masked() -> None:
    table = MsixTable(4)
    for vector in range(4):
        assert table.masked(vector)
        assert table.entry(vector) == MsixEntry(0, 0, True)
        assert table.read(16 * vector, 16) == bytes(12) + b"\x01\x00\x00\x00"


def test_program_and_unmask_with_dword_writes() -> None:
    table = MsixTable(4)
    base = 16 * 2
    assert table.write(base + 0, struct.pack("<I", 0xFEE0_1004)) == []
    assert table.write(base + 4, struct.pack("<I", 0x0000_0001)) == []
    assert table.write(base + 8, struct.pack("<I", 0x0000_4041)) == []
    assert table.write(base + 12, struct.pack("<I", 0)) == [2]
    assert table.entry(2) == MsixEntry(0x1_FEE0_1004, 0x4041, False)
    assert not table.masked(2) and table.masked(1) and table.masked(3)
    assert table.write(base + 12, struct.pack("<I", 0)) == []  # no change, no report
    assert table.write(base + 12, struct.pack("<I", 0xFFFF_FFFF)) == [2]
    assert table.read(base + 12, 4) == b"\x01\x00\x00\x00"  # reserved bits stay 0


def test_qword_writes() -> None:
    table = MsixTable(2)
    assert table.write(16, struct.pack("<Q", 0x0000_0000_FEE0_0000)) == []
    assert table.write(24, struct.pack("<Q", 0x0000_0000_0000_0022)) == [1]  # data + unmask
    assert table.entry(1) == MsixEntry(0xFEE0_0000, 0x22, False)
    assert table.read(16, 8) == struct.pack("<Q", 0xFEE0_0000)


def test_writes_spanning_entries_report_every_vector() -> None:
    table = MsixTable(3)
    assert table.write(0, bytes(48)) == [0, 1, 2]
    assert table.write(12, b"\x01" * 20) == [0, 1]  # ctrl of 0, all of 1's address...ctrl lsb
    assert table.masked(0) and table.masked(1) and not table.masked(2)


def test_odd_accesses_are_bytewise() -> None:
    table = MsixTable(2)
    assert table.write(13, b"\xff\xff") == []  # reserved bytes of vector control
    assert table.read(12, 4) == b"\x01\x00\x00\x00"
    assert table.write(12, b"\x00") == [0]
    assert table.write(3, b"\xaa\xbb\xcc") == []
    assert table.read(2, 5) == b"\x00\xaa\xbb\xcc\x00"


def test_reset() -> None:
    table = MsixTable(2)
    table.write(0, bytes(32))
    table.reset()
    assert table.masked(0) and table.masked(1) and table.entry(0) == MsixEntry(0, 0, True)


@pytest.mark.parametrize(("offset", "size"), [(-1, 1), (0, 33), (32, 1), (31, 2)])
def test_out_of_range_table_access(offset: int, size: int) -> None:
    table = MsixTable(2)
    with pytest.raises(ValueError):
        table.read(offset, size)
    with pytest.raises(ValueError):
        table.write(offset, bytes(size))


def test_vector_index_checked() -> None:
    table = MsixTable(2)
    for vector in (-1, 2):
        with pytest.raises(ValueError):
            table.masked(vector)
        with pytest.raises(ValueError):
            table.entry(vector)


def test_pba() -> None:
    table = MsixTable(70)
    pending = (1 << 0) | (1 << 9) | (1 << 63) | (1 << 64) | (1 << 69)
    assert table.pba_read(0, 16, pending) == pending.to_bytes(16, "little")
    assert table.pba_read(0, 8, pending) == struct.pack("<Q", (1 << 0) | (1 << 9) | (1 << 63))
    assert table.pba_read(8, 8, pending) == struct.pack("<Q", 0b10_0001)
    assert table.pba_read(1, 1, pending) == b"\x02"
    assert table.pba_read(0, 16, 0) == bytes(16)
    # Bits beyond the last vector read as zero.
    assert table.pba_read(8, 8, 1 << 70 | 1 << 127) == bytes(8)
    assert table.pba_read(0, 4, 1 << 200) == bytes(4)


def test_pba_out_of_range() -> None:
    table = MsixTable(8)
    with pytest.raises(ValueError):
        table.pba_read(4, 8, 0)
    with pytest.raises(ValueError):
        table.pba_read(-1, 1, 0)


@settings(max_examples=150, deadline=None)
@given(
    vectors=st.integers(1, 8),
    writes=st.lists(st.tuples(st.integers(0, 127), st.binary(min_size=1, max_size=8)), max_size=20),
)
def test_against_a_model(vectors: int, writes: list[tuple[int, bytes]]) -> None:
    """Bytewise reference model: only masked-in bits change; reported vectors are exact."""
    table = MsixTable(vectors)
    model = bytearray((bytes(12) + b"\x01\x00\x00\x00") * vectors)
    size = 16 * vectors
    for offset, data in writes:
        offset %= size
        data = data[: size - offset]
        before = [model[16 * v + 12] & 1 for v in range(vectors)]
        for position, value in enumerate(data, offset):
            keep = ENTRY_WMASK[position % 16]
            model[position] = (model[position] & ~keep) | (value & keep)
        after = [model[16 * v + 12] & 1 for v in range(vectors)]
        assert table.write(offset, data) == [v for v in range(vectors) if before[v] != after[v]]
        assert table.read(0, size) == bytes(model)
    for vector in range(vectors):
        assert table.masked(vector) == bool(model[16 * vector + 12] & 1)
