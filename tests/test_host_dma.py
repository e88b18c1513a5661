# SPDX-License-Identifier: BSD-3-Clause
"""Client DMA windows -> the host IOMMU (bridge/host_dma.py), and host-device resets in the bridge.

The IOMMU side is `FakeHostBackend` (no /dev/vfio here; the real one is driven in
the x86 kernel guest, tests/kernel/).  What is checked is the ordering and the
bookkeeping the real kernel depends on: the vaddr handed to the IOMMU is the
session's mapping of the client's fd (its bytes are the client's), an unmap
reaches the IOMMU while that mapping still exists, a refused map leaves no
window behind, and a client that goes away leaves nothing programmed.
"""
from __future__ import annotations

import errno
import mmap
import os
import time
from pathlib import Path

import pytest

from fake_host import FakeHostBackend, serve_in_thread
from vfu_platform import vfio_abi
from vfu_platform.backends.base import DmaError
from vfu_platform.bridge.device import BridgeOptions, PciBridge
from vfu_platform.bridge.device_reset import DeviceResetter, is_host_backend
from vfu_platform.bridge.host_dma import HostDma, mapping_address, supports_host_dma
from vfu_platform.client import VfioUserClient, VfioUserError
from vfu_platform.dma import DmaMapTable

RW = vfio_abi.DMA_MAP_FLAG_READ | vfio_abi.DMA_MAP_FLAG_WRITE


def memfd(size: int = 0x2000, fill: bytes = b"") -> int:
    fd = os.memfd_create("client-ram", os.MFD_CLOEXEC)
    os.ftruncate(fd, size)
    if fill:
        os.pwrite(fd, fill, 0)
    return fd


def wait_for(predicate, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


# --------------------------------------------------------------------------- HostDma on a table


def test_fd_window_is_programmed_with_the_sessions_mapping() -> None:
    fake = FakeHostBackend()
    table = DmaMapTable()
    host = HostDma(fake)
    host.attach(table)
    table.map(0x100000, 0x2000, RW, 0, memfd(fill=b"client bytes!!!!"))
    [call] = fake.dma_maps
    window = next(iter(table))
    assert (call.iova, call.size, call.readable, call.writable) == (0x100000, 0x2000, True, True)
    assert call.vaddr == mapping_address(window.mapping) and call.head == b"client bytes!!!!"
    assert host.programmed == {(0x100000, 0x2000): call.vaddr}
    table.unmap(0x100000, 0x2000)
    assert fake.dma_unmaps == [(0x100000, 0x2000, True)], "the IOMMU unmap must come before the munmap"
    assert window.mapping.closed and not host.programmed


def test_read_only_window_maps_read_only() -> None:
    fake = FakeHostBackend()
    table = DmaMapTable()
    HostDma(fake).attach(table)
    table.map(0x0, 0x1000, vfio_abi.DMA_MAP_FLAG_READ, 0, memfd())
    assert (fake.dma_maps[0].readable, fake.dma_maps[0].writable) == (True, False)


def test_window_without_fd_is_accepted_but_not_programmed() -> None:
    fake = FakeHostBackend()
    table = DmaMapTable()
    events: list[tuple[str, dict]] = []
    host = HostDma(fake, lambda event, **fields: events.append((event, fields)))
    host.attach(table)
    table.map(0x200000, 0x1000, RW, 0, None)
    assert len(table) == 1 and not fake.dma_maps and host.unreachable == 1
    assert events == [("dma-unreachable", {"iova": 0x200000, "size": 0x1000, "reason": "no fd"})]
    table.unmap(0x200000, 0x1000)
    assert not fake.dma_unmaps


def test_refused_map_leaves_no_window_and_no_fd() -> None:
    fake = FakeHostBackend()
    table = DmaMapTable()
    HostDma(fake).attach(table)
    fd = memfd()
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(DmaError) as info:
        table.map(0x1800, 0x1000, RW, 0, os.dup(fd))  # not page aligned: the IOMMU says EINVAL
    assert info.value.errno == errno.EINVAL
    assert len(table) == 0 and not fake.dma_maps
    assert len(os.listdir("/proc/self/fd")) == before, "the window's fd was not closed"
    table.map(0x2000, 0x1000, RW, 0, fd)  # the range is free again
    assert [m.iova for m in fake.dma_maps] == [0x2000]


def test_noiommu_refusal_names_the_server_option() -> None:
    fake = FakeHostBackend(noiommu=True)
    table = DmaMapTable()
    HostDma(fake).attach(table)
    with pytest.raises(DmaError) as info:
        table.map(0x100000, 0x1000, RW, 0, memfd())
    assert info.value.errno == errno.EPERM and "--unsafe-noiommu-dma" in str(info.value)
    assert len(table) == 0
    table.map(0x100000, 0x1000, RW, 0, None)  # no fd: nothing to program, accepted
    assert len(table) == 1


def test_noiommu_with_the_unsafe_option_maps() -> None:
    fake = FakeHostBackend(noiommu=True, allow_unsafe_noiommu_dma=True)
    table = DmaMapTable()
    HostDma(fake).attach(table)
    table.map(0x100000, 0x1000, RW, 0, memfd())
    assert len(fake.dma_maps) == 1


def test_detach_unmaps_before_the_session_munmaps() -> None:
    fake = FakeHostBackend()
    table = DmaMapTable()
    host = HostDma(fake)
    host.attach(table)
    table.map(0x100000, 0x1000, RW, 0, memfd())
    table.map(0x200000, 0x1000, RW, 0, memfd())
    host.detach()  # what the bridge does in client_lost, before the session's unmap_all
    assert sorted(fake.dma_unmaps) == [(0x100000, 0x1000, True), (0x200000, 0x1000, True)]
    assert table.on_map == [] and table.on_unmap == []
    table.unmap_all()
    assert len(fake.dma_unmaps) == 2, "no second unmap after detach"


def test_attach_programs_windows_mapped_earlier() -> None:
    fake = FakeHostBackend()
    table = DmaMapTable()
    table.map(0x100000, 0x1000, RW, 0, memfd())
    HostDma(fake).attach(table)
    assert [m.iova for m in fake.dma_maps] == [0x100000]


def test_only_host_backends_get_iommu_and_reset_on_loss() -> None:
    from vfu_platform.backends.sim.edu import EduDevice

    assert supports_host_dma(FakeHostBackend()) and is_host_backend(FakeHostBackend())
    assert not supports_host_dma(EduDevice()) and not is_host_backend(EduDevice())


def test_resetter_reports_and_never_raises() -> None:
    events: list[str] = []
    resetter = DeviceResetter(FakeHostBackend(can_reset=False), lambda event, **_: events.append(event))
    assert resetter.reset("DEVICE_RESET") is False and resetter.reset("client lost") is False
    assert events == ["device-reset-unsupported"] * 2 and resetter.skipped == 2
    fake = FakeHostBackend(can_reset=True)
    resetter = DeviceResetter(fake, lambda event, **_: events.append(event))
    assert resetter.reset("DEVICE_RESET") is True and fake.resets == 1 and events[-1] == "device-reset-host"


# --------------------------------------------------------------------------- through the bridge


def test_bridge_programs_client_windows_and_cleans_up_on_loss(tmp_path: Path) -> None:
    fake = FakeHostBackend(pci=False)
    bridge = PciBridge(fake)
    with serve_in_thread(bridge, tmp_path) as running:
        client = VfioUserClient.connect(running.socket_path)
        ram = memfd(0x2000, b"guest ram")
        client.dma_map(0x40000000, 0x2000, fd=ram)
        assert [(m.iova, m.head[:9]) for m in fake.dma_maps] == [(0x40000000, b"guest ram")]
        client.dma_unmap(0x40000000, 0x2000)
        assert fake.dma_unmaps == [(0x40000000, 0x2000, True)]
        client.dma_map(0x50000000, 0x1000, fd=ram)  # left mapped: the client goes away
        client.close()
        wait_for(lambda: running.session_closed and len(fake.dma_unmaps) == 2)
        assert fake.dma_unmaps[1] == (0x50000000, 0x1000, True)
        # a host device is reset between clients; this one has no reset: reported, not tried
        assert running.trace_events("device-reset-unsupported")[0]["reason"] == "client lost"
        assert ("reset",) not in fake.calls
        lost = [e for e in running.trace_events("dma-iommu-unmap") if e["reason"] == "client lost"]
        assert [e["iova"] for e in lost] == [0x50000000]
        os.close(ram)
        again = VfioUserClient.connect(running.socket_path)  # the next client starts clean
        again.dma_map(0x50000000, 0x1000)
        again.close()


def test_bridge_device_reset_without_host_reset_succeeds(tmp_path: Path) -> None:
    fake = FakeHostBackend(pci=False, can_reset=False)
    bridge = PciBridge(fake)
    with serve_in_thread(bridge, tmp_path) as running:
        with VfioUserClient.connect(running.socket_path) as client:
            command = int.from_bytes(client.region_read(vfio_abi.PCI_CONFIG_REGION_INDEX, 4, 2), "little")
            client.region_write(vfio_abi.PCI_CONFIG_REGION_INDEX, 4, (command | 0x6).to_bytes(2, "little"))
            client.reset()  # QEMU sends this at every machine reset: it must never fail
            after = int.from_bytes(client.region_read(vfio_abi.PCI_CONFIG_REGION_INDEX, 4, 2), "little")
            assert after & 0x6 == 0, "the bridge's emulated state is reset all the same"
        assert running.trace_events("device-reset-unsupported")[0]["reason"] == "DEVICE_RESET"


def test_bridge_resets_a_resettable_host_device(tmp_path: Path) -> None:
    fake = FakeHostBackend(pci=False, can_reset=True)
    with serve_in_thread(PciBridge(fake), tmp_path) as running:
        with VfioUserClient.connect(running.socket_path) as client:
            client.reset()
            assert fake.resets == 1
        wait_for(lambda: running.session_closed and fake.resets == 2)


def test_reset_on_client_loss_can_be_turned_off(tmp_path: Path) -> None:
    fake = FakeHostBackend(pci=False, can_reset=True)
    with serve_in_thread(PciBridge(fake, BridgeOptions(reset_on_client_loss=False)), tmp_path) as running:
        VfioUserClient.connect(running.socket_path).close()
        wait_for(lambda: running.session_closed and running.server.sessions_served == 1)
        time.sleep(0.05)
        assert fake.resets == 0


def test_bridge_noiommu_dma_map_is_refused_with_eperm(tmp_path: Path) -> None:
    fake = FakeHostBackend(pci=False, noiommu=True)
    with serve_in_thread(PciBridge(fake), tmp_path) as running:
        with VfioUserClient.connect(running.socket_path) as client:
            ram = memfd()
            with pytest.raises(VfioUserError) as info:
                client.dma_map(0x100000, 0x1000, fd=ram)
            assert info.value.errno == errno.EPERM
            client.dma_map(0x200000, 0x1000)  # no fd: accepted
            os.close(ram)
        assert running.trace_events("dma-map-refused")[0]["iova"] == 0x100000


def test_simulated_device_windows_never_reach_an_iommu(tmp_path: Path) -> None:
    from vfu_platform.backends.sim.edu import EduDevice

    bridge = PciBridge(EduDevice())
    with serve_in_thread(bridge, tmp_path) as running:
        with VfioUserClient.connect(running.socket_path) as client:
            ram = memfd()
            client.dma_map(0x100000, 0x1000, fd=ram)
            os.close(ram)
            assert running.server.session is not None
            assert running.server.session.dma.on_map == []
    assert bridge.host_dma is None


def test_mapping_address_releases_the_buffer() -> None:
    m = mmap.mmap(-1, 4096)
    address = mapping_address(m)
    assert address % mmap.PAGESIZE == 0
    m.close()  # BufferError if an export were still alive
