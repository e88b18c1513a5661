# SPDX-License-Identifier: BSD-3-Clause
"""The DMA map table (vfu_platform/dma.py) with real memfds.

A window with an fd is mmapped by the table: device DMA then reads and writes the
client's memory directly, which the test sees through its own mapping of the memfd.
"""
from __future__ import annotations

import errno
import mmap
import os
from collections.abc import Callable, Iterator

import pytest

from vfu_platform import vfio_abi
from vfu_platform.backends.base import DmaError
from vfu_platform.dma import DmaMapError, DmaMapTable, DmaWindow
from vfu_platform.protocol.constants import MAX_DMA_WINDOW_SIZE

RW = vfio_abi.DMA_MAP_FLAG_READ | vfio_abi.DMA_MAP_FLAG_WRITE
RO = vfio_abi.DMA_MAP_FLAG_READ
WO = vfio_abi.DMA_MAP_FLAG_WRITE
PAGE = mmap.PAGESIZE


class Memfd:
    """A memfd plus the test's own mapping of it (the client's view of guest RAM)."""

    def __init__(self, size: int) -> None:
        self.fd = os.memfd_create("vfu-test-dma", os.MFD_CLOEXEC)
        os.ftruncate(self.fd, size)
        self.map = mmap.mmap(self.fd, size)

    def dup(self) -> int:
        """What the server receives through SCM_RIGHTS: its own fd for the same file."""
        return os.dup(self.fd)


@pytest.fixture
def memfd() -> Iterator[Callable[[int], Memfd]]:
    made: list[Memfd] = []

    def make(size: int = 4 * PAGE) -> Memfd:
        made.append(Memfd(size))
        return made[-1]

    yield make
    for m in made:
        m.map.close()
        os.close(m.fd)


@pytest.fixture
def table() -> Iterator[DmaMapTable]:
    table = DmaMapTable()
    yield table
    table.unmap_all()


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError as exc:
        assert exc.errno == errno.EBADF
        return False
    return True


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def mapped_memfds() -> int:
    with open("/proc/self/maps") as maps:
        return sum("/memfd:vfu-test-dma" in line for line in maps)


# --------------------------------------------------------------------------- mapping with fds


def test_device_dma_reaches_client_memory(table: DmaMapTable, memfd) -> None:
    ram = memfd(4 * PAGE)
    table.map(0x10_0000, 4 * PAGE, RW, 0, ram.dup())
    ram.map[0x123:0x128] = b"hello"
    assert table.read(0x10_0123, 5) == b"hello"
    table.write(0x10_3FFC, b"tail")
    assert ram.map[0x3FFC:0x4000] == b"tail"


def test_file_offset_is_honoured(table: DmaMapTable, memfd) -> None:
    ram = memfd(4 * PAGE)
    ram.map[2 * PAGE : 2 * PAGE + 4] = b"page"
    table.map(0x20_0000, 2 * PAGE, RW, 2 * PAGE, ram.dup())
    assert table.read(0x20_0000, 4) == b"page"
    table.write(0x20_0000 + PAGE, b"two")
    assert ram.map[3 * PAGE : 3 * PAGE + 3] == b"two"


def test_map_takes_ownership_and_unmap_releases(table: DmaMapTable, memfd) -> None:
    ram = memfd()
    maps_before, fds_before = mapped_memfds(), open_fds()
    assert table.map(0x1000_0000, PAGE, RW, 0, ram.dup()) is True
    assert mapped_memfds() == maps_before + 1
    assert open_fds() <= fds_before + 1  # at most one fd held per window
    window = table.unmap(0x1000_0000, PAGE)
    assert (window.iova, window.size) == (0x1000_0000, PAGE)
    assert mapped_memfds() == maps_before
    assert open_fds() == fds_before, "unmap must release the window's fd"
    assert len(table) == 0


def test_unmap_all_releases_everything(memfd) -> None:
    table = DmaMapTable()
    ram = memfd(8 * PAGE)
    maps_before, fds_before = mapped_memfds(), open_fds()
    for n in range(4):
        table.map(n * 0x10_0000, PAGE, RW, n * PAGE, ram.dup())
    table.map(0x100_0000, PAGE, RW, 0, None)
    assert mapped_memfds() == maps_before + 4
    assert table.unmap_all() == 5
    assert mapped_memfds() == maps_before
    assert open_fds() == fds_before
    assert table.unmap_all() == 0


def test_exact_duplicate_is_accepted_and_its_fd_closed(table: DmaMapTable, memfd) -> None:
    ram = memfd()
    table.map(0x4000, PAGE, RW, 0, ram.dup())
    fds_before, maps_before = open_fds(), mapped_memfds()
    second = ram.dup()
    assert table.map(0x4000, PAGE, RW, 0, second) is False
    assert not is_open(second)
    assert (open_fds(), mapped_memfds()) == (fds_before, maps_before)
    assert len(table) == 1
    ram.map[0:3] = b"one"
    assert table.read(0x4000, 3) == b"one"  # the first window still works


def test_duplicate_range_with_other_attributes_is_refused(table: DmaMapTable, memfd) -> None:
    ram, other = memfd(), memfd()
    table.map(0x4000, PAGE, RW, 0, ram.dup())
    for flags, offset, source in ((RO, 0, ram), (RW, PAGE, ram), (RW, 0, other)):
        fd = source.dup()
        with pytest.raises(DmaMapError) as error:
            table.map(0x4000, PAGE, flags, offset, fd)
        assert error.value.errno == errno.EINVAL
        assert not is_open(fd), "a refused map must close its fd"


@pytest.mark.parametrize(
    ("iova", "size"),
    [(0x3000, 2 * PAGE), (0x5000, PAGE), (0x4800, 0x100), (0x0, 0x10000)],
    ids=["overlaps-start", "overlaps-end", "inside", "covers"],
)
def test_overlapping_windows_are_refused(table: DmaMapTable, iova: int, size: int) -> None:
    table.map(0x4000, 2 * PAGE, RW, 0, None)
    with pytest.raises(DmaMapError) as error:
        table.map(iova, size, RW, 0, None)
    assert error.value.errno == errno.EINVAL


def test_adjacent_windows_are_fine_but_an_access_may_not_span_them(table: DmaMapTable, memfd) -> None:
    a, b = memfd(PAGE), memfd(PAGE)
    table.map(0x10000, PAGE, RW, 0, a.dup())
    table.map(0x10000 + PAGE, PAGE, RW, 0, b.dup())
    table.write(0x10000 + PAGE - 2, b"ab")
    table.write(0x10000 + PAGE, b"cd")
    assert a.map[PAGE - 2 : PAGE] == b"ab" and b.map[0:2] == b"cd"
    with pytest.raises(DmaError) as error:
        table.read(0x10000 + PAGE - 2, 4)
    assert error.value.errno == errno.EFAULT


@pytest.mark.parametrize(
    ("iova", "size", "flags", "offset", "expected"),
    [
        (0x1000, 0, RW, 0, errno.EINVAL),  # size 0
        (0x1000, PAGE, 0x4, 0, errno.EINVAL),  # unknown flag
        (0, MAX_DMA_WINDOW_SIZE + PAGE, RW, 0, errno.ENOSPC),
        ((1 << 64) - PAGE, 2 * PAGE, RW, 0, errno.EINVAL),  # wraps past 2^64
    ],
    ids=["size-0", "unknown-flag", "too-large", "wraps"],
)
def test_bad_maps_are_refused(table: DmaMapTable, memfd, iova: int, size: int, flags: int, offset: int,
                              expected: int) -> None:
    fd = memfd().dup()
    with pytest.raises(DmaMapError) as error:
        table.map(iova, size, flags, offset, fd)
    assert error.value.errno == expected
    assert not is_open(fd)
    assert len(table) == 0


def test_unaligned_file_offset_is_refused(table: DmaMapTable, memfd) -> None:
    fd = memfd().dup()
    with pytest.raises(DmaMapError) as error:
        table.map(0x1000, PAGE, RW, 0x10, fd)
    assert error.value.errno == errno.EINVAL
    assert not is_open(fd)


def test_window_past_the_end_of_the_memfd_is_refused(table: DmaMapTable, memfd) -> None:
    """Touching pages past the end of the file would kill the server with SIGBUS."""
    fd = memfd(2 * PAGE).dup()
    with pytest.raises(DmaMapError) as error:
        table.map(0x1000, 2 * PAGE, RW, PAGE, fd)
    assert error.value.errno == errno.EINVAL
    assert not is_open(fd)


def test_fd_that_cannot_be_mapped_is_refused(table: DmaMapTable) -> None:
    fd = os.eventfd(0)
    with pytest.raises(DmaMapError):
        table.map(0x1000, PAGE, RW, 0, fd)
    assert not is_open(fd)
    assert len(table) == 0


def test_window_limit(memfd) -> None:
    table = DmaMapTable(max_windows=2)
    table.map(0x1000, PAGE, RW, 0, None)
    table.map(0x10000, PAGE, RW, 0, None)
    fd = memfd().dup()
    with pytest.raises(DmaMapError) as error:
        table.map(0x20000, PAGE, RW, 0, fd)
    assert error.value.errno == errno.EINVAL
    assert not is_open(fd)
    table.map(0x1000, PAGE, RW, 0, None)  # an exact duplicate still is fine
    table.unmap_all()


def test_unmap_needs_an_exact_match(table: DmaMapTable) -> None:
    table.map(0x4000, 2 * PAGE, RW, 0, None)
    for iova, size in ((0x4000, PAGE), (0x5000, PAGE), (0x3000, 3 * PAGE), (0x8000, PAGE)):
        with pytest.raises(DmaMapError) as error:
            table.unmap(iova, size)
        assert error.value.errno == errno.ENOENT
    table.unmap(0x4000, 2 * PAGE)


def test_windows_iterate_in_iova_order(table: DmaMapTable) -> None:
    for iova in (0x30000, 0x10000, 0x20000):
        table.map(iova, PAGE, RW, 0, None)
    assert [w.iova for w in table] == [0x10000, 0x20000, 0x30000]
    table.unmap(0x20000, PAGE)
    assert [w.iova for w in table] == [0x10000, 0x30000]


# --------------------------------------------------------------------------- access checks


def test_access_outside_every_window_faults(table: DmaMapTable, memfd) -> None:
    table.map(0x10000, PAGE, RW, 0, memfd().dup())
    for iova, size in ((0x0, 4), (0xFFFF, 2), (0x10000 + PAGE, 1), (0x10000 + PAGE - 1, 2), (1 << 63, 8)):
        with pytest.raises(DmaError) as error:
            table.read(iova, size)
        assert error.value.errno == errno.EFAULT
    with pytest.raises(DmaError):
        DmaMapTable().read(0, 1)


def test_direction_is_enforced(table: DmaMapTable, memfd) -> None:
    ro, wo = memfd(), memfd()
    table.map(0x10000, PAGE, RO, 0, ro.dup())
    table.map(0x20000, PAGE, WO, 0, wo.dup())
    ro.map[0:2] = b"ro"
    assert table.read(0x10000, 2) == b"ro"
    with pytest.raises(DmaError) as error:
        table.write(0x10000, b"x")
    assert error.value.errno == errno.EPERM
    assert ro.map[0:2] == b"ro"
    table.write(0x20000, b"wo")
    assert wo.map[0:2] == b"wo"
    with pytest.raises(DmaError) as error:
        table.read(0x20000, 2)
    assert error.value.errno == errno.EPERM


def test_read_only_window_is_mapped_read_only(table: DmaMapTable, memfd) -> None:
    ram = memfd()
    table.map(0x10000, PAGE, RO, 0, ram.dup())
    (window,) = list(table)
    assert window.mapping is not None
    with pytest.raises(TypeError):
        window.mapping[0:1] = b"x"  # the server's own mapping refuses writes too


def test_windows_without_fd_go_through_the_remote_continuations(table: DmaMapTable) -> None:
    memory = bytearray(PAGE)
    calls: list[tuple[str, int, int]] = []
    answers: list[Callable[[], None]] = []  # the client answers later, not inside the call

    def remote_read(iova: int, size: int, done: Callable[[bytes | DmaError], None]) -> None:
        calls.append(("read", iova, size))
        answers.append(lambda: done(bytes(memory[iova - 0x8000 : iova - 0x8000 + size])))

    def remote_write(iova: int, data: bytes, done: Callable[[bytes | DmaError], None]) -> None:
        calls.append(("write", iova, len(data)))
        memory[iova - 0x8000 : iova - 0x8000 + len(data)] = data
        answers.append(lambda: done(b""))

    table.remote_read, table.remote_write = remote_read, remote_write
    table.map(0x8000, PAGE, RW, 0, None)
    results: list[bytes | DmaError] = []
    table.write_then(0x8010, b"remote", results.append)
    table.read_then(0x8010, 6, results.append)
    assert results == [] and calls == [("write", 0x8010, 6), ("read", 0x8010, 6)]
    for answer in answers:
        answer()
    assert results == [b"", b"remote"]


def test_a_window_without_fd_cannot_be_reached_at_once(table: DmaMapTable) -> None:
    table.map(0x8000, PAGE, RW, 0, None)
    for access in (lambda: table.read(0x8000, 1), lambda: table.write(0x8000, b"x")):
        with pytest.raises(DmaError) as error:
            access()
        assert error.value.errno == errno.EWOULDBLOCK


def test_window_without_fd_and_no_client_is_enodev(table: DmaMapTable) -> None:
    table.map(0x8000, PAGE, RW, 0, None)
    results: list[bytes | DmaError] = []
    table.read_then(0x8000, 1, results.append)
    table.write_then(0x8000, b"x", results.append)
    assert [r.errno for r in results if isinstance(r, DmaError)] == [errno.ENODEV, errno.ENODEV]


def test_continuation_errors_outside_windows(table: DmaMapTable, memfd) -> None:
    results: list[bytes | DmaError] = []
    table.read_then(0x100000, 4, results.append)
    assert isinstance(results[0], DmaError) and results[0].errno == errno.EFAULT


def test_map_and_unmap_hooks(table: DmaMapTable, memfd) -> None:
    seen: list[tuple[str, int, int]] = []

    def on_map(window: DmaWindow) -> None:
        seen.append(("map", window.iova, window.size))

    def on_unmap(window: DmaWindow) -> None:
        assert window.mapping is None or not window.mapping.closed, "hooks run before the munmap"
        seen.append(("unmap", window.iova, window.size))

    table.on_map.append(on_map)
    table.on_unmap.append(on_unmap)
    table.map(0x10000, PAGE, RW, 0, memfd().dup())
    table.map(0x20000, PAGE, RW, 0, None)
    table.unmap(0x10000, PAGE)
    table.unmap_all()
    assert seen == [("map", 0x10000, PAGE), ("map", 0x20000, PAGE), ("unmap", 0x10000, PAGE), ("unmap", 0x20000, PAGE)]


def test_memory_changes_are_shared_both_ways(table: DmaMapTable, memfd) -> None:
    ram = memfd(PAGE)
    table.map(0x0, PAGE, RW, 0, ram.dup())
    for n in range(0, PAGE, 512):
        ram.map[n : n + 4] = n.to_bytes(4, "little")
        assert table.read(n, 4) == n.to_bytes(4, "little")
        table.write(n + 4, b"\xee" * 4)
        assert ram.map[n + 4 : n + 8] == b"\xee" * 4
