# SPDX-License-Identifier: BSD-3-Clause
"""The guest descriptor through the bridge, as a guest driver finds and reads it.

A vfio-user client walks the emulated config space's capability list to the
vendor-specific capability, reads the descriptor from the IRQ page BAR and decodes it
with `vfu_platform.guest_descriptor`.  Devices that declare no guest devices (edu,
gpio) get neither the capability nor the larger IRQ page.
"""
from __future__ import annotations

from pathlib import Path

import pytest

import guest_models
from fake_host import serve_in_thread
from vfu_platform.testing import CONFIG, ProcessServer, config_read
from test_cli import assert_one_line_error, serve
from vfu_platform import guest_descriptor as gd
from vfu_platform.bridge import irq_page
from vfu_platform.bridge.device import BridgeOptions, PciBridge
from vfu_platform.client import VfioUserClient
from vfu_platform.guest_descriptor import DeviceRecord, IrqRecord, PropertyRecord, RegionRecord

CAP_LIST = 0x34
STATUS = 0x06


def capabilities(client: VfioUserClient) -> list[tuple[int, int]]:
    """(offset, id) of each capability, walked the way a guest driver does."""
    found: list[tuple[int, int]] = []
    if not config_read(client, STATUS, 2) & 0x10:
        return found
    pointer = config_read(client, CAP_LIST, 1) & 0xFC
    while pointer:
        assert pointer not in [offset for offset, _ in found], "loop in the capability chain"
        found.append((pointer, config_read(client, pointer, 1)))
        pointer = config_read(client, pointer + 1, 1) & 0xFC
    return found


def find_descriptor(client: VfioUserClient) -> tuple[gd.Capability, bytes]:
    """The capability and the descriptor bytes, read with 32-bit reads as the spec says."""
    for offset, cap_id in capabilities(client):
        if cap_id == gd.CAP_ID_VENDOR:
            cap = gd.decode_capability(client.region_read(CONFIG, offset, gd.CAP_LEN))
            words = [client.read32(cap.bar, cap.offset + k) for k in range(0, cap.length + 3 & ~3, 4)]
            raw = b"".join(w.to_bytes(4, "little") for w in words)[: cap.length]
            return cap, raw
    raise AssertionError("no vendor-specific capability")


WIDGET_DEVICES = (
    DeviceRecord(
        "snps,dw-apb-uart", gd.BIND_DT_COMPATIBLE,
        (RegionRecord(0, 0, 0x1000, gd.REGION_TRAPPED, "regs"), RegionRecord(1, 0x100, 0x100, gd.REGION_MMAPPED, "fifo")),
        (IrqRecord(0, gd.NO_VECTOR, 4, "rx"), IrqRecord(1, gd.NO_VECTOR, 1)),
        compatible=("acme,widget", "snps,dw-apb-uart"),
        properties=(
            PropertyRecord("reg-shift", gd.PROP_U32, (2,)),
            PropertyRecord("clock-frequency", gd.PROP_U32, (24000000,)),
            PropertyRecord("clock-names", gd.PROP_STRINGS, ("baudclk", "apb_pclk")),
            PropertyRecord("label", gd.PROP_STRINGS, ("w0",)),
            PropertyRecord("big-endian", gd.PROP_FLAG, True),
            PropertyRecord("wide", gd.PROP_U64, (1 << 40,)),
        ),
    ),
    DeviceRecord("widget-sram", gd.BIND_PLATFORM_NAME, (RegionRecord(1, 0, 0x2000, gd.REGION_MMAPPED),)),
)


@pytest.mark.parametrize("mode", ["intx", "msix"])
def test_widget_descriptor_as_a_guest_reads_it(tmp_path: Path, mode: str) -> None:
    bridge = PciBridge(guest_models.Widget(), BridgeOptions(irq_mode=mode, page_size=0x1000))  # type: ignore[arg-type]
    with serve_in_thread(bridge, tmp_path) as running:
        client = VfioUserClient.connect(running.socket_path)
        caps = capabilities(client)
        assert caps == ([(0x40, 0x11)] if mode == "msix" else []) + [(0x50, 0x09)]
        cap, raw = find_descriptor(client)
        assert (cap.bar, cap.offset, cap.version) == (2, 0x1000, 1)  # BAR0 regs, BAR1 sram, BAR2 IRQ page
        assert cap.length == len(bridge.descriptor)
        desc = gd.decode(raw, length=cap.length, irq_page_bar=cap.bar)
        expected = WIDGET_DEVICES
        if mode == "msix":
            first = expected[0]
            expected = (DeviceRecord(first.name, first.bind, first.regions,
                                     (IrqRecord(0, 0, 4, "rx"), IrqRecord(1, 1, 1)),
                                     first.amba_id, first.compatible, first.properties), expected[1])
        assert desc == gd.Descriptor(1 if mode == "msix" else 0, expected)

        info, _fd = client.region_info(2)
        assert info.size == 0x2000, "the IRQ page BAR grows to 8 KiB with a descriptor"
        assert client.read32(2, irq_page.MAGIC) == irq_page.MAGIC_VALUE
        # read-only: writes are dropped; a read across 0x1000 serves both sides
        client.write32(2, 0x1000, 0)
        assert client.region_read(2, 0x1000, 16) == raw[:16]
        straddle = client.region_read(2, 0xFFC, 8)
        assert straddle == bytes(4) + raw[:4]
        assert client.region_read(2, 0x1FF0, 16) == bytes(16)  # past the descriptor
        client.close()


def test_widget_bar_indices_follow_the_plan_when_regions_are_64bit(tmp_path: Path) -> None:
    from vfu_platform.bridge.device import RegionOptions

    options = BridgeOptions(regions={0: RegionOptions(is_64bit=True)}, page_size=0x1000)
    bridge = PciBridge(guest_models.Widget(), options)
    records = gd.decode(bridge.descriptor).devices
    assert [r.bar for r in records[0].regions] == [0, 2]  # region 0 takes slots 0-1
    assert gd.decode_capability(bridge.config.read(0x50, 20)).bar == 3
    bridge.close()


def test_devices_without_guest_devices_keep_the_4k_page_and_no_capability(vfu_server) -> None:
    for device, mode, irq_bar in (("edu", None, 1), ("gpio", "msix", 2)):
        server: ProcessServer = vfu_server(device, irq_mode=mode)
        client = server.connect()
        assert capabilities(client) == ([(0x40, 0x11)] if mode else [])
        if mode:
            assert config_read(client, 0x40 + 1, 1) == 0, "MSI-X stays the end of the chain"
        assert client.region_info(irq_bar)[0].size == 0x1000
        client.close()


@pytest.mark.parametrize("model, why", [
    ("BadRegionIndex", "region 3 does not exist"),
    ("BadIrqIndex", "IRQ 1 does not exist"),
    ("RegionTooLong", "does not fit the region"),
    ("OffsetPastRegion", "does not fit the region"),
    ("BadProperty", "property 'mixed'"),
    ("TooBig", "at most 4096"),
])
def test_bad_declarations_fail_at_bridge_construction(model: str, why: str) -> None:
    backend = getattr(guest_models, model)()
    with pytest.raises(ValueError, match=why) as info:
        PciBridge(backend)
    assert "\n" not in str(info.value)
    assert "guest device 'bad'" in str(info.value) or model == "TooBig"
    backend.close()


def test_bad_declaration_is_one_line_from_the_cli(tmp_path: Path) -> None:
    result = serve(tmp_path / "s.sock", "--device", "tests.guest_models:BadRegionIndex")
    assert_one_line_error(result, "guest device 'bad'", "region 3 does not exist")
