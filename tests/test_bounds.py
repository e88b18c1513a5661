# SPDX-License-Identifier: BSD-3-Clause
"""Bounds: no access outside a region or outside a DMA window ever reaches memory.

Property tests (hypothesis) over every region of every model in the registry
(`known_models()` when the test runs: edu, gpio and whatever else is registered), in
INTx and MSI-X mode (so the IRQ page with the MSI-X table and PBA is included), and of
the passthrough backend (the fake host of tests/fake_host.py).  Each runs a real
server (in a thread of this process, so the device's own calls can be watched) on a
real socket:

* any (region, offset, count) outside the region, past its end, with a count above
  max_data_xfer_size or of a region that does not exist gets EINVAL, and neither the
  device nor its backend is called;
* any access inside a region (counts 0, odd, up to the region size) is answered with
  the count asked for, or a clean error (never EIO, the internal-error answer);
* a DMA access by the device outside every window (or crossing a window's end) is
  refused (EFAULT), and the client memory around it is untouched.
"""
from __future__ import annotations

import errno
import mmap
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fake_host import FakeHostBackend, serve_in_thread
from vfu_platform.backends.base import DmaError
from vfu_platform.backends.sim.registry import create_model, known_models
from vfu_platform.bridge.device import BridgeOptions, PciBridge
from vfu_platform.bridge.pci_passthrough import PciPassthrough
from vfu_platform.client import VfioUserClient
from vfu_platform.dma import DmaMapTable
from vfu_platform.protocol import messages as m
from vfu_platform.protocol.constants import DEFAULT_MAX_DATA_XFER_SIZE, Command
from vfu_platform.protocol.header import HEADER

MAX = DEFAULT_MAX_DATA_XFER_SIZE
SETTINGS = settings(max_examples=150, deadline=None, derandomize=True,
                    suppress_health_check=list(HealthCheck))


class Watched:
    """Counts the calls that reach a device (bridge or passthrough) and its backend."""

    def __init__(self, device: object, backend: object) -> None:
        self.calls = 0
        for target, names in ((device, ("region_read", "region_write")), (backend, ("read", "write"))):
            for name in names:
                original = getattr(target, name)
                setattr(target, name, self._counting(original))

    def _counting(self, function):  # type: ignore[no-untyped-def]
        def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
            self.calls += 1
            return function(*args, **kwargs)
        return wrapper


def targets() -> list[str]:
    return [f"{model}-{mode}" for model in known_models() for mode in ("intx", "msix")] + ["passthrough"]


@contextmanager
def served(target: str, tmp_path: Path) -> Iterator[tuple[VfioUserClient, Watched, list[int]]]:
    if target == "passthrough":
        backend = FakeHostBackend()
        device: object = PciPassthrough(backend)  # type: ignore[arg-type]
    else:
        model, mode = target.rsplit("-", 1)
        backend = create_model(model)
        device = PciBridge(backend, BridgeOptions(irq_mode=mode))  # type: ignore[arg-type]
    watched = Watched(device, backend)
    with serve_in_thread(device, tmp_path) as running:
        with VfioUserClient.connect(running.socket_path) as client:
            info = client.device_info()
            sizes = [client.region_info(i)[0].size for i in range(info.num_regions)]
            yield client, watched, sizes


def access(client: VfioUserClient, write: bool, region: int, offset: int, count: int, data_len: int | None = None):
    """One REGION_READ/WRITE exactly as given: (errno or 0, reply payload length)."""
    msg_id = client.next_id()
    data = bytes(count if data_len is None else data_len) if write else b""
    command = Command.REGION_WRITE if write else Command.REGION_READ
    body = m.RegionAccess(offset, region, count).pack() + data
    client.send_raw(HEADER.pack(msg_id, command, 16 + len(body), 0, 0) + body)
    reply = client.wait_reply(msg_id)
    return (reply.header.error if reply.header.is_error else 0), len(reply.body)


offsets = st.one_of(st.integers(0, 1 << 22), st.integers(0, (1 << 64) - 1),
                    st.sampled_from([(1 << 64) - 1, (1 << 63), (1 << 32) - 1, 0xFFF, 0x1000, 0xFFFFF]))
counts = st.one_of(st.sampled_from([0, 1, 2, 3, 4, 5, 7, 8, 9, 4095, 4096, 4097, MAX, MAX + 1, (1 << 32) - 1]),
                   st.integers(0, 1 << 32 - 1))


@pytest.mark.parametrize("target", targets())
def test_out_of_bounds_is_refused_and_touches_nothing(target: str, tmp_path: Path) -> None:
    with served(target, tmp_path) as (client, watched, sizes):
        assert any(sizes), "the device has regions"

        @SETTINGS
        @given(region=st.integers(0, len(sizes) + 3), offset=offsets, count=counts, write=st.booleans())
        def check(region: int, offset: int, count: int, write: bool) -> None:
            size = sizes[region] if region < len(sizes) else 0
            if offset + count <= size and count <= MAX:
                return  # in bounds: the other test
            if write and count > 1 << 16:
                count_data = 8  # a huge write announces more than it carries: EINVAL all the same
            else:
                count_data = None
            before = watched.calls
            err, _ = access(client, write, region, offset, count, count_data)
            assert err == errno.EINVAL, f"region {region} size {size:#x} [{offset:#x}, +{count:#x}): errno {err}"
            assert watched.calls == before, "an out-of-bounds access reached the device"

        check()
        # Edges, exactly: one byte past the end of every region, and a count that wraps 64 bits.
        for region, size in enumerate(sizes):
            for offset, count in ((size, 1), (size - 1 if size else 0, 2), ((1 << 64) - 4, 8)):
                if offset + count > size:
                    before = watched.calls
                    assert access(client, False, region, offset, count)[0] == errno.EINVAL
                    assert access(client, True, region, offset, count)[0] == errno.EINVAL
                    assert watched.calls == before
        assert client.device_info().num_regions == len(sizes)


@pytest.mark.parametrize("target", targets())
def test_in_bounds_accesses_get_an_answer_not_an_internal_error(target: str, tmp_path: Path) -> None:
    with served(target, tmp_path) as (client, _watched, sizes):
        regions = [i for i, size in enumerate(sizes) if size]

        @SETTINGS
        @given(data=st.data(), write=st.booleans())
        def check(data: st.DataObject, write: bool) -> None:
            region = data.draw(st.sampled_from(regions))
            size = sizes[region]
            count = data.draw(st.sampled_from([0, 1, 2, 3, 4, 5, 7, 8, 16, 64, min(size, 4096)]).filter(
                lambda c: c <= size))
            offset = data.draw(st.integers(0, size - count))
            err, length = access(client, write, region, offset, count)
            assert err != errno.EIO, f"internal error on region {region} [{offset:#x}, +{count})"
            if not err and not write:
                assert length == 16 + count

        check()


# --------------------------------------------------------------------------- DMA windows


@SETTINGS
@given(iova=st.integers(0, 0x40000), size=st.integers(1, 0x6000), write=st.booleans())
def test_dma_outside_every_window_is_refused_and_touches_nothing(iova: int, size: int, write: bool) -> None:
    table = DmaMapTable()
    rw = 0x3  # READ | WRITE
    fds, maps = [], []
    for base in (0x10000, 0x20000):  # two 8 KiB windows with a hole between them
        fd = os.memfd_create("bounds")
        os.ftruncate(fd, 0x4000)
        view = mmap.mmap(fd, 0x4000)
        view[:] = b"\xA5" * 0x4000
        fds.append(fd)
        maps.append(view)
        table.map(base, 0x2000, rw, 0x1000, os.dup(fd))  # the table owns its fd; file offset 0x1000
    try:
        inside = any(base <= iova and iova + size <= base + 0x2000 for base in (0x10000, 0x20000))
        try:
            if write:
                table.write(iova, b"\x5A" * size)
            else:
                assert len(table.read(iova, size)) == size
            assert inside, f"DMA [{iova:#x}, +{size:#x}) crosses or misses every window and was done"
        except DmaError as exc:
            assert not inside
            assert exc.errno == errno.EFAULT
        if not (inside and write):
            for view in maps:
                assert view[:] == b"\xA5" * 0x4000, "memory changed by a refused DMA"
        else:
            base = 0x10000 if iova < 0x20000 else 0x20000
            view = maps[0 if base == 0x10000 else 1]
            start = 0x1000 + iova - base
            assert view[start : start + size] == b"\x5A" * size
            assert view[:start] == b"\xA5" * start and view[start + size :] == b"\xA5" * (0x4000 - start - size)
    finally:
        table.unmap_all()
        for view in maps:
            view.close()
        for fd in fds:
            os.close(fd)
