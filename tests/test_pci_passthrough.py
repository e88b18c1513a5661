# SPDX-License-Identifier: BSD-3-Clause
"""A host PCI function served as itself (bridge/pci_passthrough.py), over a real socket.

The host side is `FakeHostBackend` shaped like vfio-pci (BAR0 mmappable, a 64-bit
prefetchable BAR2 trapped, a sparse-mmapped BAR4, a ROM, 256 bytes of config,
INTx/MSI/MSI-X/ERR/REQ); the same device against the real vfio-pci and edu runs
in the x86 kernel guest (tests/kernel/test_kernel_vfio_pci.py, pt_* checks).
"""
from __future__ import annotations

import mmap
import os
import struct
import time
from pathlib import Path

import pytest

from fake_host import FakeHostBackend, RunningServer, serve_in_thread
from vfu_platform import vfio_abi
from vfu_platform.bridge.pci_passthrough import PassthroughOptions, PciPassthrough, serves_as_pci_function
from vfu_platform.client import VfioUserClient, make_eventfd, wait_eventfd
from vfu_platform.protocol import messages as m

CONFIG = vfio_abi.PCI_CONFIG_REGION_INDEX
INTX, MSI, MSIX, ERR, REQ = range(5)
TRIGGER = vfio_abi.IRQ_SET_ACTION_TRIGGER
UNMASK = vfio_abi.IRQ_SET_ACTION_UNMASK
MASK = vfio_abi.IRQ_SET_ACTION_MASK
NONE, BOOL, EVENTFD = vfio_abi.IRQ_SET_DATA_NONE, vfio_abi.IRQ_SET_DATA_BOOL, vfio_abi.IRQ_SET_DATA_EVENTFD


@pytest.fixture
def fake() -> FakeHostBackend:
    return FakeHostBackend()


@pytest.fixture
def served(fake: FakeHostBackend, tmp_path: Path):
    with serve_in_thread(PciPassthrough(fake), tmp_path) as running:  # type: ignore[arg-type]
        yield running


@pytest.fixture
def client(served: RunningServer):
    with VfioUserClient.connect(served.socket_path) as c:
        yield c


def set_irq_calls(fake: FakeHostBackend) -> list[tuple]:
    return [call[1:] for call in fake.calls if call[0] == "set_irqs"]


def wait_for(predicate, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_only_pci_host_functions_are_passed_through() -> None:
    from vfu_platform.backends.sim.edu import EduDevice

    assert serves_as_pci_function(FakeHostBackend())
    assert not serves_as_pci_function(FakeHostBackend(pci=False))
    assert not serves_as_pci_function(EduDevice())
    with pytest.raises(ValueError, match="use the bridge"):
        PciPassthrough(FakeHostBackend(pci=False))  # type: ignore[arg-type]


def test_device_info_is_the_hosts(client: VfioUserClient) -> None:
    info = client.device_info()
    assert (info.flags, info.num_regions, info.num_irqs) == (vfio_abi.DEVICE_FLAGS_PCI, 9, 5)


def test_device_info_reports_reset_only_if_the_host_can(tmp_path: Path) -> None:
    device = PciPassthrough(FakeHostBackend(can_reset=True))  # type: ignore[arg-type]
    with serve_in_thread(device, tmp_path) as running:
        with VfioUserClient.connect(running.socket_path) as c:
            assert c.device_info().flags == vfio_abi.DEVICE_FLAGS_PCI | vfio_abi.DEVICE_FLAGS_RESET


def test_regions_keep_index_size_flags_and_offset(client: VfioUserClient, fake: FakeHostBackend) -> None:
    bar0, fd0 = client.region_info(0)
    assert (bar0.size, bar0.flags & 7, bar0.offset) == (0x1000, 7, 0) and fd0 is not None
    os.close(fd0)
    bar2, fd2 = client.region_info(2)
    assert (bar2.size, bar2.flags & 7) == (0x2000, 3) and fd2 is None
    bar4, fd4 = client.region_info(4)
    assert bar4.sparse_areas == ((0, 0x800),) and bar4.offset == 0x4000 and fd4 is not None
    os.close(fd4)
    rom, fd6 = client.region_info(6)
    assert (rom.size, rom.flags & 7) == (0x800, vfio_abi.REGION_FLAG_READ) and fd6 is None
    cfg, fd7 = client.region_info(CONFIG)
    assert (cfg.size, cfg.flags & 7, fd7) == (0x100, 3, None)
    for absent in (1, 3, 5, 8):
        info, fd = client.region_info(absent)
        assert (info.size, info.flags, fd) == (0, 0, None)


def test_mmap_through_the_passed_fd_is_the_device(client: VfioUserClient) -> None:
    info, fd = client.region_info(0)
    assert fd is not None
    mm = mmap.mmap(fd, info.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=info.offset)
    os.close(fd)
    try:
        struct.pack_into("<I", mm, 0x10, 0xCAFEF00D)
        assert client.read32(0, 0x10) == 0xCAFEF00D  # trapped read sees the mmap write
        client.write32(0, 0x14, 0x12345678)
        assert struct.unpack_from("<I", mm, 0x14)[0] == 0x12345678
    finally:
        mm.close()


def test_trapped_bar_access_reaches_the_region(client: VfioUserClient, fake: FakeHostBackend) -> None:
    client.write64(2, 0x100, 0x1122334455667788)
    assert os.pread(fake.device_fd, 8, 0x2000 + 0x100) == (0x1122334455667788).to_bytes(8, "little")
    assert client.read64(2, 0x100) == 0x1122334455667788


def test_config_is_forwarded_except_the_bar_registers(client: VfioUserClient, fake: FakeHostBackend) -> None:
    assert client.read32(CONFIG, 0) == 0x11E81234
    assert client.read32(CONFIG, 0x2C) == 0xABCD1AF4
    assert client.region_read(CONFIG, 0x3D, 1) == b"\x01"
    # BARs: the device's type bits, never the host's addresses
    assert [client.read32(CONFIG, 0x10 + 4 * i) for i in range(6)] == [0, 0, 0xC, 0, 0, 0]
    assert client.read32(CONFIG, 0x30) == 0  # ROM BAR: disabled, address 0
    client.write32(CONFIG, 0x10, 0xFFFFFFFF)
    client.write32(CONFIG, 0x18, 0xFFFFFFFF)
    client.write32(CONFIG, 0x1C, 0xFFFFFFFF)
    client.write32(CONFIG, 0x30, 0xFFFFF800)
    assert client.read32(CONFIG, 0x10) == 0xFFFFF000  # 4 KiB, 32-bit memory
    assert (client.read32(CONFIG, 0x18), client.read32(CONFIG, 0x1C)) == (0xFFFFE00C, 0xFFFFFFFF)  # 8 KiB 64-bit pf
    assert client.read32(CONFIG, 0x30) == 0xFFFFF800  # 2 KiB ROM, enable bit clear
    client.write32(CONFIG, 0x10, 0xFE001234)
    assert client.read32(CONFIG, 0x10) == 0xFE001000
    assert fake.config[0x10:0x14] == (0xFEA00000).to_bytes(4, "little"), "BAR writes never reach the host"
    assert fake.config[0x30:0x34] == (0xFEC00000).to_bytes(4, "little")
    # A read spanning forwarded and emulated bytes is stitched together.
    assert client.region_read(CONFIG, 0x0C, 8)[4:] == (0xFE001000).to_bytes(4, "little")
    client.region_write(CONFIG, 4, b"\x06\x00")
    assert fake.config[4] == 6
    client.region_write(CONFIG, 0x2E, b"\xEE\xEE\x01\x00")  # subsystem id + ROM BAR's low half
    assert fake.config[0x2E:0x30] == b"\xEE\xEE" and fake.config[0x30:0x34] == (0xFEC00000).to_bytes(4, "little")
    assert client.read32(CONFIG, 0x30) == 0xFFFF0001  # the emulated ROM BAR took its half, enable bit set
    reads_before = sum(1 for c in fake.calls if c[0] == "config-read")
    client.read32(CONFIG, 0x14)
    assert sum(1 for c in fake.calls if c[0] == "config-read") == reads_before, "a BAR read never asks the host"


def test_intx_eventfd_goes_straight_to_the_host(client: VfioUserClient, fake: FakeHostBackend,
                                              served: RunningServer) -> None:
    efd = make_eventfd()
    try:
        client.set_irqs(INTX, TRIGGER | EVENTFD, 0, 1, [efd])
        [(index, action, data, start, count, fds)] = set_irq_calls(fake)
        assert (index, action, data, start, count, len(fds)) == (INTX, TRIGGER, EVENTFD, 0, 1, 1)
        fake.fire(INTX)  # "the kernel" signals the client's own eventfd: no server hop
        assert wait_eventfd(efd, 2) == 1
        client.set_irqs(INTX, UNMASK | NONE, 0, 1)
        client.set_irqs(INTX, MASK | NONE, 0, 1)
        assert set_irq_calls(fake)[1:] == [(INTX, UNMASK, NONE, 0, 1, ()), (INTX, MASK, NONE, 0, 1, ())]
        client.set_irqs(INTX, TRIGGER | NONE, 0, 0)
        assert set_irq_calls(fake)[-1] == (INTX, TRIGGER, NONE, 0, 0, ())
        assert not fake.kernel_fds
    finally:
        os.close(efd)
    assert not served.trace_events("irq-fire"), "interrupts never pass through the server"


def test_intx_resamplefd_is_the_hosts_unmask_eventfd(client: VfioUserClient, fake: FakeHostBackend) -> None:
    trigger, efd = make_eventfd(), make_eventfd()
    try:
        client.set_irqs(INTX, TRIGGER | EVENTFD, 0, 1, [trigger])
        client.set_irqs(INTX, UNMASK | EVENTFD, 0, 1, [efd])
        assert set_irq_calls(fake)[1][:5] == (INTX, UNMASK, EVENTFD, 0, 1)
    finally:
        os.close(trigger)
        os.close(efd)


def test_intx_resamplefd_and_mask_before_intx_wait_for_it(client: VfioUserClient, fake: FakeHostBackend) -> None:
    """vfio-pci refuses INTx UNMASK/MASK while INTx is off; the bridge takes them: so do we, and apply them later."""
    trigger, efd = make_eventfd(), make_eventfd()
    try:
        client.set_irqs(INTX, UNMASK | EVENTFD, 0, 1, [efd])
        client.set_irqs(INTX, MASK | NONE, 0, 1)
        assert set_irq_calls(fake) == [], "nothing reaches a host whose INTx is off"
        client.set_irqs(INTX, TRIGGER | EVENTFD, 0, 1, [trigger])
        calls = set_irq_calls(fake)
        assert [c[:5] for c in calls] == [(INTX, TRIGGER, EVENTFD, 0, 1), (INTX, MASK, NONE, 0, 1),
                                          (INTX, UNMASK, EVENTFD, 0, 1)]
    finally:
        os.close(trigger)
        os.close(efd)


def test_msix_vectors_without_fds_become_minus_one(client: VfioUserClient, fake: FakeHostBackend) -> None:
    client.set_irqs(MSIX, TRIGGER | EVENTFD, 0, 1)  # QEMU: "MSI-X on, no vectors"
    fds = [make_eventfd(), make_eventfd()]
    try:
        client.set_irqs(MSIX, TRIGGER | EVENTFD, 2, 2, fds)
        calls = set_irq_calls(fake)
        assert calls[0] == (MSIX, TRIGGER, EVENTFD, 0, 1, (-1,))
        assert calls[1][:5] == (MSIX, TRIGGER, EVENTFD, 2, 2) and all(fd >= 0 for fd in calls[1][5])
        fake.fire(MSIX, 3)
        assert wait_eventfd(fds[1], 2) == 1 and wait_eventfd(fds[0], 0) == 0
    finally:
        for fd in fds:
            os.close(fd)


def test_data_bool_is_one_data_none_per_selected_vector(client: VfioUserClient, fake: FakeHostBackend) -> None:
    client.set_irqs(MSIX, TRIGGER | BOOL, 0, 4, data=b"\x01\x00\x00\x01")
    assert set_irq_calls(fake) == [], "a loopback trigger of an index without eventfds does nothing"
    client.set_irqs(MSIX, TRIGGER | EVENTFD, 0, 1)
    client.set_irqs(MSIX, TRIGGER | BOOL, 0, 4, data=b"\x01\x00\x00\x01")
    assert set_irq_calls(fake)[1:] == [(MSIX, TRIGGER, NONE, 0, 1, ()), (MSIX, TRIGGER, NONE, 3, 1, ())]


def test_host_errors_reach_the_client(client: VfioUserClient, fake: FakeHostBackend) -> None:
    import errno as errno_codes

    from vfu_platform.backends.base import BackendError
    from vfu_platform.client import VfioUserError

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise BackendError(errno_codes.ENOTTY, "SET_IRQS MASK on irq 1: Inappropriate ioctl")

    fake.set_irqs = refuse  # type: ignore[method-assign]
    with pytest.raises(VfioUserError) as info:
        client.set_irqs(MSI, MASK | NONE, 0, 1)
    assert info.value.errno == errno_codes.ENOTTY
    assert client.read32(CONFIG, 0) == 0x11E81234  # still serving


def test_reset_without_host_reset_succeeds_and_resets_the_bars(client: VfioUserClient, served: RunningServer) -> None:
    client.write32(CONFIG, 0x10, 0xFE000000)
    client.reset()
    assert client.read32(CONFIG, 0x10) == 0
    assert served.trace_events("device-reset-unsupported")[0]["reason"] == "DEVICE_RESET"


def test_dma_windows_reach_the_host_iommu(client: VfioUserClient, fake: FakeHostBackend) -> None:
    ram = os.memfd_create("guest-ram")
    os.ftruncate(ram, 0x3000)
    os.pwrite(ram, b"client memory", 0x1000)
    client.dma_map(0x100000, 0x2000, fd=ram, offset=0x1000)
    os.close(ram)
    assert [(c.iova, c.size, c.head[:13]) for c in fake.dma_maps] == [(0x100000, 0x2000, b"client memory")]
    client.dma_unmap(0x100000, 0x2000)
    assert fake.dma_unmaps == [(0x100000, 0x2000, True)]


def test_client_loss_unwires_resets_and_unmaps(fake: FakeHostBackend, tmp_path: Path) -> None:
    fake.device_flags |= vfio_abi.DEVICE_FLAGS_RESET
    with serve_in_thread(PciPassthrough(fake), tmp_path) as running:  # type: ignore[arg-type]
        client = VfioUserClient.connect(running.socket_path)
        efd = make_eventfd()
        client.set_irqs(INTX, TRIGGER | EVENTFD, 0, 1, [efd])
        client.set_irqs(MSIX, TRIGGER | EVENTFD, 0, 1)
        ram = os.memfd_create("guest-ram")
        os.ftruncate(ram, 0x1000)
        client.dma_map(0x100000, 0x1000, fd=ram)
        os.close(ram)
        client.close()
        os.close(efd)
        wait_for(lambda: running.session_closed and fake.dma_unmaps)
        calls = set_irq_calls(fake)
        assert (INTX, TRIGGER, NONE, 0, 0, ()) in calls and (MSIX, TRIGGER, NONE, 0, 0, ()) in calls
        assert not fake.kernel_fds and fake.resets == 1
        assert fake.dma_unmaps == [(0x100000, 0x1000, True)]
        order = [c[0] for c in fake.calls]
        assert order.index("reset") > max(i for i, c in enumerate(fake.calls) if c[0] == "set_irqs")


def test_reset_on_client_loss_can_be_turned_off(fake: FakeHostBackend, tmp_path: Path) -> None:
    fake.device_flags |= vfio_abi.DEVICE_FLAGS_RESET
    device = PciPassthrough(fake, PassthroughOptions(reset_on_client_loss=False))  # type: ignore[arg-type]
    with serve_in_thread(device, tmp_path) as running:
        VfioUserClient.connect(running.socket_path).close()
        wait_for(lambda: running.session_closed and running.server.sessions_served == 1)
        time.sleep(0.05)
        assert fake.resets == 0


def test_region_info_caps_round_trip(fake: FakeHostBackend) -> None:
    """MSI-X mappable and region-type caps are passed on as the host reports them."""
    from vfu_platform.backends.vfio.discovery import HostRegion

    regions = list(FakeHostBackend.pci_regions())
    regions[0] = HostRegion(index=0, flags=7, size=0x1000, offset=0, msix_mappable=True)
    regions.append(HostRegion(index=9, flags=3, size=0x100, offset=9 << 40, region_type=(0x8086, 1)))
    device = PciPassthrough(FakeHostBackend(regions=regions))  # type: ignore[arg-type]
    info, fd = device.region_info(0)
    assert any(isinstance(c, m.MsixMappableCap) for c in info.caps) and fd is not None
    info, fd = device.region_info(9)
    assert m.TypeCap(0x8086, 1) in info.caps and fd is None and info.size == 0x100
    assert device.device_info()[1] == 10
