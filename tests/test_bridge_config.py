# SPDX-License-Identifier: BSD-3-Clause
"""The bridge's PCI config space (region 7) and BARs, over the protocol.

Identity registers, BAR type bits and sizing as a PCI enumerator does it (save, write
all-ones, read the mask, restore), the ROM probe QEMU makes at realize, the writable
command bits, and a TOML config that overrides the identity and the IRQ mode.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from vfu_platform.testing import CONFIG, ProcessServer, config_read, config_write, write_config
from vfu_platform import vfio_abi
from vfu_platform.client import VfioUserClient, VfioUserError

BAR0 = 0x10
ROM = 0x30
MIB = 1 << 20


def bar_register(client: VfioUserClient, bar: int) -> int:
    return config_read(client, BAR0 + 4 * bar, 4)


def size_bar(client: VfioUserClient, bar: int) -> tuple[int, int]:
    """The enumerator's sizing sequence: returns (mask read back, value after restore)."""
    original = bar_register(client, bar)
    config_write(client, BAR0 + 4 * bar, 4, 0xFFFF_FFFF)
    mask = bar_register(client, bar)
    config_write(client, BAR0 + 4 * bar, 4, original)
    return mask, bar_register(client, bar)


def bar_size_from_mask(mask: int) -> int:
    return (~(mask & ~0xF) & 0xFFFF_FFFF) + 1


# --------------------------------------------------------------------------- identity


@pytest.mark.parametrize(
    ("model", "vendor", "device", "class_code"),
    [("edu", 0x1234, 0x11E8, 0x00FF00), ("gpio", 0x1234, 0x5650, 0x088000)],
)
def test_identity_registers(vfu_server: Callable[..., ProcessServer], model: str, vendor: int,
                            device: int, class_code: int) -> None:
    client = vfu_server(model).connect()
    assert config_read(client, 0x00, 2) == vendor
    assert config_read(client, 0x02, 2) == device
    assert config_read(client, 0x09, 3) == class_code
    assert config_read(client, 0x08, 1) == 0x10  # revision
    assert config_read(client, 0x0E, 1) == 0x00  # type-0 header, single function
    assert config_read(client, 0x2C, 2) == 0x1AF4  # subsystem vendor
    assert config_read(client, 0x2E, 2) == 0x1100
    assert config_read(client, 0x3D, 1) == 1  # INTA
    assert config_read(client, 0x04, 2) == 0  # COMMAND at power-on
    assert config_read(client, 0x06, 2) == 0  # no capabilities in intx mode, no interrupt


def test_whole_config_space_in_one_read(edu_server: ProcessServer) -> None:
    client = edu_server.connect()
    info, fd = client.region_info(CONFIG)
    assert fd is None
    assert info.size == 256
    assert info.flags & (vfio_abi.REGION_FLAG_READ | vfio_abi.REGION_FLAG_WRITE) == 0x3
    assert not info.flags & vfio_abi.REGION_FLAG_MMAP
    blob = client.region_read(CONFIG, 0, 256)
    assert blob[0:4] == bytes.fromhex("3412e811")
    for offset in (0, 4, 8, 0x10, 0x2C, 0x3C):
        assert blob[offset : offset + 4] == client.region_read(CONFIG, offset, 4)


def test_config_access_past_the_end_is_refused(edu_server: ProcessServer) -> None:
    client = edu_server.connect()
    with pytest.raises(VfioUserError) as error:
        client.region_read(CONFIG, 0xFE, 4)
    assert error.value.errno == 22
    client.sync()  # the session goes on


def test_read_only_identity_ignores_writes(edu_server: ProcessServer) -> None:
    client = edu_server.connect()
    config_write(client, 0x00, 4, 0xDEADBEEF)
    config_write(client, 0x08, 4, 0xFFFFFFFF)
    config_write(client, 0x2C, 4, 0)
    config_write(client, 0x3D, 1, 4)
    assert config_read(client, 0x00, 4) == 0x11E81234
    assert config_read(client, 0x08, 4) == 0x00FF0010
    assert config_read(client, 0x2C, 4) == 0x11001AF4
    assert config_read(client, 0x3D, 1) == 1


def test_command_writable_bits(edu_server: ProcessServer) -> None:
    client = edu_server.connect()
    config_write(client, 0x04, 2, 0xFFFF)
    # memory, bus master, SERR, INTx disable; no IO BARs, so IO enable stays 0
    assert config_read(client, 0x04, 2) == 0x0002 | 0x0004 | 0x0100 | 0x0400
    config_write(client, 0x04, 2, 0x0006)
    assert config_read(client, 0x04, 2) == 0x0006


def test_status_writes_are_ignored(edu_server: ProcessServer) -> None:
    client = edu_server.connect()
    config_write(client, 0x06, 2, 0xFFFF)
    assert config_read(client, 0x06, 2) == 0


def test_interrupt_line_cache_line_and_latency_are_read_write(edu_server: ProcessServer) -> None:
    client = edu_server.connect()
    config_write(client, 0x3C, 1, 10)
    config_write(client, 0x0C, 1, 0x10)
    config_write(client, 0x0D, 1, 0x40)
    assert config_read(client, 0x3C, 1) == 10
    assert config_read(client, 0x0C, 2) == 0x4010


def test_device_reset_restores_config(edu_server: ProcessServer) -> None:
    client = edu_server.connect()
    config_write(client, 0x04, 2, 0x0406)
    config_write(client, BAR0, 4, 0xFE00_0000)
    config_write(client, 0x3C, 1, 10)
    client.reset()
    assert config_read(client, 0x04, 2) == 0
    assert bar_register(client, 0) == 0
    assert config_read(client, 0x3C, 1) == 0


# --------------------------------------------------------------------------- BARs


def test_edu_bars(edu_server: ProcessServer) -> None:
    client = edu_server.connect()
    info, fd = client.region_info(0)
    assert (info.size, fd) == (MIB, None)  # edu's registers: 1 MiB, trapped
    assert not info.flags & vfio_abi.REGION_FLAG_MMAP
    mask, restored = size_bar(client, 0)
    assert mask == 0xFFF0_0000  # 32-bit, non-prefetchable memory BAR of 1 MiB
    assert bar_size_from_mask(mask) == MIB
    assert restored == 0
    mask, _ = size_bar(client, 1)  # the IRQ page
    assert mask == 0xFFFF_F000
    assert client.region_info(1)[0].size == 0x1000
    for absent in range(2, 6):
        assert size_bar(client, absent) == (0, 0)
        assert client.region_info(absent)[0].size == 0


def test_gpio_bars(gpio_server: ProcessServer) -> None:
    client = gpio_server.connect()
    for bar in range(3):  # registers, SRAM, IRQ page: 4 KiB each
        mask, _ = size_bar(client, bar)
        assert mask == 0xFFFF_F000, f"BAR{bar}"
    assert size_bar(client, 3) == (0, 0)
    sram, fd = client.region_info(1)
    assert sram.flags & vfio_abi.REGION_FLAG_MMAP and fd is not None
    assert client.region_info(2)[0].flags & vfio_abi.REGION_FLAG_MMAP == 0  # IRQ page: trapped
    os.close(fd)


def test_bar_base_address_is_kept_with_type_bits(edu_server: ProcessServer) -> None:
    client = edu_server.connect()
    config_write(client, BAR0, 4, 0xFEB1_2345)
    assert bar_register(client, 0) == 0xFEB0_0000  # size-aligned, type bits 0
    config_write(client, BAR0 + 4, 4, 0xFEBF_F00F)
    assert bar_register(client, 1) == 0xFEBF_F000


def test_rom_probe_reads_zero(edu_server: ProcessServer) -> None:
    client = edu_server.connect()
    config_write(client, ROM, 4, 0xFFFF_F800)  # QEMU's probe at realize
    assert config_read(client, ROM, 4) == 0
    config_write(client, ROM, 4, 0xFFFF_FFFF)
    assert config_read(client, ROM, 4) == 0
    assert client.region_info(vfio_abi.PCI_ROM_REGION_INDEX)[0].size == 0
    assert client.region_info(vfio_abi.PCI_VGA_REGION_INDEX)[0].size == 0


def test_bar_access_outside_region_is_refused(edu_server: ProcessServer) -> None:
    client = edu_server.connect()
    with pytest.raises(VfioUserError):
        client.region_read(0, MIB - 2, 4)
    with pytest.raises(VfioUserError):
        client.region_read(vfio_abi.PCI_ROM_REGION_INDEX, 0, 4)
    with pytest.raises(VfioUserError):
        client.region_read(9, 0, 4)  # no such region
    assert client.read32(0, 0) == 0x010000ED


# --------------------------------------------------------------------------- TOML config


def test_toml_overrides_identity(vfu_server: Callable[..., ProcessServer], tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        """
[bridge]
vendor_id = 0x1af4
device_id = 0x10f0
subsystem_vendor_id = 0x8086
subsystem_id = 0x0042
class_code = 0x058000
revision = 3
""",
    )
    client = vfu_server("edu", config=config).connect()
    assert config_read(client, 0x00, 4) == 0x10F0_1AF4
    assert config_read(client, 0x08, 4) == 0x0580_0003
    assert config_read(client, 0x2C, 4) == 0x0042_8086
    assert client.read32(0, 0) == 0x010000ED  # still edu behind it


def test_toml_irq_mode_msix(vfu_server: Callable[..., ProcessServer], tmp_path: Path) -> None:
    config = write_config(tmp_path, '[device]\nmodel = "gpio"\n[bridge]\nirq_mode = "msix"\n')
    client = vfu_server("gpio", config=config).connect()
    assert config_read(client, 0x34, 1) == 0x40
    assert config_read(client, 0x40, 1) == 0x11
    assert client.irq_info(vfio_abi.PCI_MSIX_IRQ_INDEX).count == 5


def test_command_line_irq_mode_wins_over_toml(vfu_server: Callable[..., ProcessServer], tmp_path: Path) -> None:
    config = write_config(tmp_path, '[bridge]\nirq_mode = "msix"\n')
    client = vfu_server("gpio", config=config, irq_mode="intx").connect()
    assert client.irq_info(vfio_abi.PCI_MSIX_IRQ_INDEX).count == 0


def test_toml_64bit_prefetchable_bar(vfu_server: Callable[..., ProcessServer], tmp_path: Path) -> None:
    config = write_config(tmp_path, "[[bridge.region]]\nindex = 0\nbits64 = true\nprefetchable = true\n")
    client = vfu_server("edu", config=config).connect()
    assert bar_register(client, 0) == 0x4 | 0x8  # 64-bit, prefetchable
    low, _ = size_bar(client, 0)
    high, _ = size_bar(client, 1)
    assert (low, high) == (0xFFF0_000C, 0xFFFF_FFFF)
    assert client.region_info(1)[0].size == 0  # the upper half is no region
    # The IRQ page moved to the next free slot.
    assert client.region_info(2)[0].size == 0x1000
    assert client.read32(2, 0xD00) == 0x50554656  # the IRQ page's magic


def test_toml_region_never_mmapped(vfu_server: Callable[..., ProcessServer], tmp_path: Path) -> None:
    config = write_config(tmp_path, "[[bridge.region]]\nindex = 1\nmmap = \"never\"\n")
    client = vfu_server("gpio", config=config).connect()
    info, fd = client.region_info(1)
    assert fd is None and not info.flags & vfio_abi.REGION_FLAG_MMAP
    client.write32(1, 0x10, 0xABCD)
    assert client.read32(1, 0x10) == 0xABCD
