# SPDX-License-Identifier: BSD-3-Clause
"""Guest devices of host platform/AMBA devices, from fake sysfs + device-tree trees.

`describe_host_guest_devices` reads only sysfs, so these trees (shaped like QEMU's arm
`virt` machine: a GIC with 3 interrupt cells, a fixed apb-pclk, AMBA pl031/pl061, a
platform dw-apb-uart) test it fully here; the same function runs against a real
kernel's sysfs in the arm64 guest.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from fake_host import FakeHostBackend
from fake_sysfs import FakeSysfs, qemu_virt
from vfu_platform import guest_descriptor as gd
from vfu_platform import vfio_abi
from vfu_platform.backends.guest import Bind, GuestDevice, GuestIrq, GuestRegion, Trigger
from vfu_platform.backends.vfio.guest_devices import HostDescriptionError, describe_host_guest_devices
from vfu_platform.bridge.device import PciBridge

LEVEL = vfio_abi.IRQ_INFO_EVENTFD | vfio_abi.IRQ_INFO_MASKABLE | vfio_abi.IRQ_INFO_AUTOMASKED
EDGE = vfio_abi.IRQ_INFO_EVENTFD


@pytest.fixture
def virt(tmp_path: Path) -> FakeSysfs:
    return qemu_virt(tmp_path / "sys")


def test_amba_pl031_bound_to_vfio_amba(virt: FakeSysfs) -> None:
    path = virt.device("9010000.pl031", "amba", virt.dt / "pl031@9010000", periphid="00141031")
    assert describe_host_guest_devices(str(path), num_regions=1, irq_flags=[LEVEL]) == (
        GuestDevice(name="pl031", bind=Bind.AMBA, regions=(GuestRegion(0),), irqs=(GuestIrq(0, Trigger.LEVEL_HIGH),),
                    amba_id=0x00141031, compatible=("arm,pl031", "arm,primecell"),
                    properties=(("clock-frequency", 24000000),)),
    )


def test_amba_without_vfio_counts_uses_the_dt(virt: FakeSysfs) -> None:
    path = virt.device("9030000.pl061", "amba", virt.dt / "pl061@9030000", periphid="00041061")
    (dev,) = describe_host_guest_devices(str(path))
    assert (dev.name, dev.amba_id, len(dev.regions), dev.irqs) == ("pl061", 0x41061, 1, (GuestIrq(0, Trigger.LEVEL_HIGH),))
    assert ("gpio-controller", True) in dev.properties


def test_amba_id_falls_back_to_the_dt_periphid(virt: FakeSysfs) -> None:
    node = virt.dt / "pl061@9030000"
    virt.prop(node, "arm,primecell-periphid", 0x00241061)
    path = virt.device("9030000.pl061", "amba", node, periphid="00000000")
    assert describe_host_guest_devices(str(path))[0].amba_id == 0x00241061


def test_amba_without_any_periphid_is_an_error(virt: FakeSysfs) -> None:
    path = virt.device("9030000.pl061", "amba", virt.dt / "pl061@9030000")
    with pytest.raises(HostDescriptionError, match="peripheral ID"):
        describe_host_guest_devices(str(path))


def test_platform_uart_behind_a_two_cell_controller(virt: FakeSysfs) -> None:
    path = virt.device("9040000.uart", "platform", virt.dt / "uart@9040000")
    (dev,) = describe_host_guest_devices(str(path), num_regions=2, irq_flags=[EDGE, EDGE])
    assert dev == GuestDevice(
        name="dw-apb-uart", bind=Bind.DT_COMPATIBLE,
        regions=(GuestRegion(0, name="regs"), GuestRegion(1, name="dma")),
        irqs=(GuestIrq(0, Trigger.EDGE_FALLING, "rx"), GuestIrq(1, Trigger.EDGE_RISING, "tx")),
        compatible=("snps,dw-apb-uart",),
        properties=(("clock-frequency", (1843200,)), ("reg-shift", (2,)), ("reg-io-width", (4,))),
    )


def test_interrupt_parent_inherited_from_the_bus_with_one_cell(virt: FakeSysfs) -> None:
    path = virt.device("1000.timer", "platform", virt.dt / "bus" / "timer@1000")
    (dev,) = describe_host_guest_devices(str(path), irq_flags=[EDGE])
    # one cell says nothing about the trigger: VFIO's flags decide (not automasked: edge)
    assert dev.irqs == (GuestIrq(0, Trigger.EDGE_RISING),)
    assert dev.name == "acme,timer", "an unknown compatible is its own driver-name hint"
    assert len(dev.regions) == 1  # reg (0x1000 0x40) with the bus's 1+1 cells
    assert ("big-endian", True) in dev.properties
    (level,) = describe_host_guest_devices(str(path))
    assert level.irqs == (GuestIrq(0, Trigger.LEVEL_HIGH),)  # no VFIO flags: level high


def test_interrupts_extended(virt: FakeSysfs) -> None:
    node = virt.node("mixed@1", compatible="ns16550a", reg=(0, 1, 0, 8),
                     interrupts_extended=(0x8002, 0, 3, 8, 0x9000, 4, 3, 0x9100, 7))
    path = virt.device("1.mixed", "platform", node)
    (dev,) = describe_host_guest_devices(str(path))
    assert dev.name == "of_serial"
    assert [q.trigger for q in dev.irqs] == [Trigger.LEVEL_LOW, Trigger.EDGE_BOTH, Trigger.LEVEL_HIGH]


def test_unusable_trigger_bits_fall_back_to_vfio(virt: FakeSysfs) -> None:
    node = virt.node("odd@2", compatible="acme,odd", reg=(0, 2, 0, 8), interrupts=(0, 1, 0, 0, 2, 0xC))
    path = virt.device("2.odd", "platform", node)
    (dev,) = describe_host_guest_devices(str(path), irq_flags=[LEVEL, EDGE])
    assert [q.trigger for q in dev.irqs] == [Trigger.LEVEL_HIGH, Trigger.EDGE_RISING]


@pytest.mark.parametrize("props, why", [
    (dict(interrupts=(0, 1)), "not a multiple of #interrupt-cells 3"),
    (dict(interrupts=b"\x00\x01"), "whole number of 32-bit cells"),
    (dict(interrupts=(1, 4), interrupt_parent=0x7777), "phandle 0x7777"),
    (dict(interrupts_extended=(0x9000, 4)), "truncated"),
    (dict(reg=(0, 1, 0)), "reg: 3 cells"),
])
def test_malformed_dt_is_one_line(virt: FakeSysfs, props: dict, why: str) -> None:
    node = virt.node("bad@3", compatible="acme,bad", **({"reg": (0, 3, 0, 8)} | props))
    path = virt.device("3.bad", "platform", node)
    with pytest.raises(HostDescriptionError, match=why) as info:
        describe_host_guest_devices(str(path))
    assert "\n" not in str(info.value)


def test_no_interrupt_parent_anywhere(tmp_path: Path) -> None:
    fs = FakeSysfs(tmp_path / "sys")
    node = fs.node("lonely@0", compatible="acme,lonely", reg=(0, 0, 8), interrupts=(3,))  # default 2+1 cells
    path = fs.device("0.lonely", "platform", node)
    with pytest.raises(HostDescriptionError, match="without an interrupt-parent"):
        describe_host_guest_devices(str(path))


def test_no_of_node_or_no_compatible_describes_nothing(virt: FakeSysfs) -> None:
    assert describe_host_guest_devices(str(virt.device("acpi0", "platform", None))) == ()
    node = virt.node("anon@4", reg=(0, 4, 0, 8))
    assert describe_host_guest_devices(str(virt.device("4.anon", "platform", node))) == ()


class DescribedHost(FakeHostBackend):
    """A host platform device whose guest devices come from a fake sysfs tree."""

    def __init__(self, path: str) -> None:
        super().__init__(pci=False)
        self._described = describe_host_guest_devices(path, num_regions=1, irq_flags=[LEVEL])

    def guest_devices(self) -> tuple[GuestDevice, ...]:
        return self._described


def test_described_host_device_through_the_bridge(virt: FakeSysfs) -> None:
    path = virt.device("9010000.pl031", "amba", virt.dt / "pl031@9010000", periphid="00141031")
    for mode, vector in (("intx", gd.NO_VECTOR), ("msix", 0)):
        from vfu_platform.bridge.device import BridgeOptions

        bridge = PciBridge(DescribedHost(str(path)), BridgeOptions(irq_mode=mode, page_size=0x1000))
        (dev,) = gd.decode(bridge.descriptor).devices
        assert (dev.name, dev.bind, dev.amba_id) == ("pl031", gd.BIND_AMBA, 0x00141031)
        assert dev.regions == (gd.RegionRecord(0, 0, 0x1000, gd.REGION_MMAPPED),)
        assert dev.irqs == (gd.IrqRecord(0, vector, 4),)
        assert dev.property("clock-frequency") == gd.PropertyRecord("clock-frequency", gd.PROP_U32, (24000000,))
        bridge.close()
