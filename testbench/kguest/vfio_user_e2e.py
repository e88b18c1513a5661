# SPDX-License-Identifier: BSD-3-Clause
"""In-guest end to end: `vfu-platform serve --host` on the real pl031, driven by our client library.

Both ends run in the one guest kernel, as they must (SCM_RIGHTS carries the
device fd and the eventfds): the server is a `python -m vfu_platform serve`
subprocess that opens the pl031 through `VfioHostBackend` and bridges it to a
PCI function; this process connects with `VfioUserClient` and checks that

* the bridged function answers DEVICE_GET_INFO as PCI and BAR0 holds the pl031;
* REGION_READ reaches the real registers (PrimeCell IDs), and the region's fd,
  when the server offers one, maps the real MMIO;
* a real level IRQ of the pl031 arrives on the client's INTx eventfd, the host
  line stays masked until the client's UNMASK (the EOI), then fires again;
* in no-IOMMU mode a DMA_MAP with an fd is refused (EPERM: the server was not
  started with --unsafe-noiommu-dma), one without an fd is accepted (nothing to
  program; traced as unreachable by the device);
* DEVICE_RESET succeeds although the pl031 has no reset (reported in the trace);
* SIGTERM stops the server cleanly.
"""
from __future__ import annotations

import errno
import json
import mmap
import os
import struct
from typing import TYPE_CHECKING

from vfu_platform import vfio_abi
from testbench.kguest import common
from testbench.kguest.checks import Checks

if TYPE_CHECKING:
    from vfu_platform.client import VfioUserClient

RTC_IMSC, RTC_ICR = 0x10, 0x1C
PL031_ID = [0x31, 0x10, 0x14, 0x00, 0x0D, 0xF0, 0x05, 0xB1]
INTX = vfio_abi.PCI_INTX_IRQ_INDEX
CONFIG = vfio_abi.PCI_CONFIG_REGION_INDEX
TRIGGER_EVENTFD = vfio_abi.IRQ_SET_ACTION_TRIGGER | vfio_abi.IRQ_SET_DATA_EVENTFD
UNMASK_NONE = vfio_abi.IRQ_SET_ACTION_UNMASK | vfio_abi.IRQ_SET_DATA_NONE
COMMAND_MEMORY = 0x2
TRACE = "/run/vfu-pl031-trace.jsonl"


def trace_events(name: str) -> list[dict]:
    try:
        with open(TRACE, encoding="utf-8") as f:
            records = [json.loads(line) for line in f if line.strip()]
    except OSError:
        return []
    return [r.get("fields", {}) for r in records if r.get("kind") == "event" and r.get("event") == name]


def run_pl031(c: Checks, device: str, socket_path: str = "/run/vfu-pl031.sock") -> None:
    from vfu_platform.client import VfioUserClient  # only when the scenario runs

    with common.served_host_device(c, "e2e", device, socket_path, TRACE, "/run/vfu-serve.log") as server:
        if server is None:
            return
        client = VfioUserClient.connect(socket_path, timeout=20)
        try:
            _drive(c, client)
        finally:
            client.close()




def _drive(c: Checks, client: VfioUserClient) -> None:
    info = client.device_info()
    c.check("e2e_device_info_pci", info.flags & vfio_abi.DEVICE_FLAGS_PCI and info.num_regions >= 9,
            f"flags={info.flags:#x} regions={info.num_regions} irqs={info.num_irqs}")
    command = int.from_bytes(client.region_read(CONFIG, 4, 2), "little")
    client.region_write(CONFIG, 4, (command | COMMAND_MEMORY).to_bytes(2, "little"))
    ids = [client.read32(0, 0xFE0 + 4 * i) & 0xFF for i in range(8)]
    c.check("e2e_region_read_ids", ids == PL031_ID, [hex(i) for i in ids])
    region, fd = client.region_info(0)
    if fd is None:
        c.check("e2e_region_mmap", True, f"BAR0 size={region.size:#x} offered without an fd (trapped)")
    else:
        try:
            mm = mmap.mmap(fd, 0x1000, mmap.MAP_SHARED, mmap.PROT_READ, offset=region.offset)
            try:
                mids = [struct.unpack_from("<I", mm, 0xFE0 + 4 * i)[0] & 0xFF for i in range(8)]
            finally:
                mm.close()
            c.check("e2e_region_mmap", mids == PL031_ID, f"through the passed fd: {[hex(i) for i in mids]}")
        finally:
            os.close(fd)
    efd = common.eventfd()
    try:
        client.set_irqs(INTX, TRIGGER_EVENTFD, 0, 1, [efd])

        def wr(offset: int, value: int) -> None:
            client.write32(0, offset, value)

        def assert_() -> None:
            common.pl031_match_now(lambda offset: client.read32(0, offset), wr)

        wr(RTC_IMSC, 0)
        wr(RTC_ICR, 1)
        wr(RTC_IMSC, 1)
        assert_()
        first = common.wait_event(efd, 10)
        wr(RTC_ICR, 1)
        assert_()
        masked = common.wait_event(efd, 1.0)
        client.set_irqs(INTX, UNMASK_NONE, 0, 1)
        after = common.wait_event(efd, 10)
        c.check("e2e_intx_real_irq", first >= 1 and masked == 0 and after >= 1,
                f"first={first} before EOI={masked} after UNMASK={after}")
        wr(RTC_ICR, 1)
        wr(RTC_IMSC, 0)
        client.set_irqs(INTX, UNMASK_NONE, 0, 1)
    finally:
        os.close(efd)
    from testbench.kguest import irq_bypass_e2e

    c.guard("irq_bypass", lambda: irq_bypass_e2e.run(c, client))
    _dma_and_reset(c, client)


def _dma_and_reset(c: Checks, client: VfioUserClient) -> None:
    from vfu_platform.client import VfioUserError

    buf = common.DmaBuffer(4096, "e2e-dma")
    try:
        try:
            client.dma_map(0x100000, 4096, fd=buf.fd)
            refused = None
        except VfioUserError as e:
            refused = e.errno
    finally:
        buf.close()
    traced = trace_events("dma-map-refused")
    c.check("e2e_dma_noiommu_refused", refused == errno.EPERM and bool(traced),
            f"errno={refused} trace={traced[-1:]}")
    client.dma_map(0x200000, 4096)  # no fd: nothing to program, accepted
    unreachable = trace_events("dma-unreachable")
    client.dma_unmap(0x200000, 4096)
    c.check("e2e_dma_without_fd_accepted", any(e.get("iova") == 0x200000 for e in unreachable),
            f"trace={unreachable}")
    client.reset()
    reported = trace_events("device-reset-unsupported")
    ids = [client.read32(0, 0xFE0 + 4 * i) & 0xFF for i in range(8)]
    c.check("e2e_reset_reported", bool(reported) and ids == PL031_ID,
            f"DEVICE_RESET answered; trace={reported[-1:]}")
