# SPDX-License-Identifier: BSD-3-Clause
"""Device groups (vfu_platform.backends.group): several platform devices, one bridge.

The composite itself (index mapping, forwarding, labels and options), then real
`vfu-platform serve --device a,b` servers: one BAR set per member, IRQs sharing INTx
in FIFO order or one MSI-X vector each, the group's PCI identity, the config-file
form, and the spec's pl031+pl061 example read back byte for byte.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import guest_models
from conftest import REPO
from vfu_platform.testing import NO_IRQ, PYTHON, ProcessServer, config_read, install_intx, intx_unmask, wait_until, write_config
from test_bridge_descriptor import find_descriptor
from test_bridge_msix import enable_msix
from test_cli import assert_one_line_error, serve
from test_guest_descriptor import EXAMPLE
from vfu_platform import guest_descriptor as gd
from vfu_platform import vfio_abi
from vfu_platform.backends.base import AckRegister
from vfu_platform.backends.group import DeviceGroup, create_group, member_labels, split_member_options
from vfu_platform.backends.sim import edu, gpio
from vfu_platform.backends.sim.edu import EduDevice
from vfu_platform.backends.sim.gpio import GpioDevice
from vfu_platform.backends.sim.registry import create_model
from vfu_platform.bridge import irq_page
from vfu_platform.bridge.device import PciBridge
from vfu_platform.client import VfioUserClient

# --------------------------------------------------------------------------- the composite


def test_regions_irqs_acks_and_irq_regions_are_concatenated() -> None:
    group = DeviceGroup([EduDevice(), GpioDevice(lines=3)])
    assert group.name == "edu+gpio" and group.labels == ("edu", "gpio")
    assert [(r.index, r.name) for r in group.regions()] == [(0, "edu.edu-mmio"), (1, "gpio.gpio-regs"), (2, "gpio.gpio-sram")]
    assert [(q.index, q.name, q.automasked) for q in group.irqs()] == [
        (0, "edu.edu", True), (1, "gpio.line0", True), (2, "gpio.line1", True), (3, "gpio.line2", True),
        (4, "gpio.edge", False)]
    assert group.irq_regions == frozenset({0, 1})
    assert AckRegister(0, 0, edu.REG_IRQ_ACK, 0xFFFFFFFF) in group.ack_registers
    assert AckRegister(2, 1, gpio.line_register(1, gpio.LINE_ACK), 1) in group.ack_registers
    assert AckRegister(1, 1, gpio.REG_ACK, 1) in group.ack_registers
    assert len(group.ack_registers) == 1 + 2 * 3
    assert group.device_flags == vfio_abi.DEVICE_FLAGS_PLATFORM | vfio_abi.DEVICE_FLAGS_RESET
    assert group.irq_owner(4) == ("gpio", 3) and group.region_owner(2) == ("gpio", 1)
    group.close()


def test_accesses_and_irq_operations_reach_the_owning_member() -> None:
    a, b = guest_models.Plain(), guest_models.Widget()
    group = DeviceGroup([a, b])
    assert group.read(0, 0x10, 4) == (0x504C4149).to_bytes(4, "little")
    assert group.read(1, 0x10, 4) == (0x57494447).to_bytes(4, "little")
    group.write(1, 0x4, (1).to_bytes(4, "little"))
    group.write(2, 0x20, b"sram")
    assert a.log == [] and b.log == [("write", 0x4, 1)]
    assert b.read(1, 0x20, 4) == b"sram"

    import os

    fd = os.eventfd(0, os.EFD_NONBLOCK)
    try:
        group.set_irq_trigger(1, fd)  # widget's level line
        group.unmask_irq(1)
        b.set_line(b.level, True)
        assert os.eventfd_read(fd) == 1 and b.fired(b.level) == 1 and a.fired(a.level) == 0
        assert b.line_masked(b.level)
        group.mask_irq(1)
        group.set_irq_trigger(1, None)
    finally:
        os.close(fd)
    group.reset()
    assert a.log[-1] == ("reset",) and b.log[-1] == ("reset",)
    group.attach(None)
    group.close()


def test_guest_devices_are_remapped_to_group_indices() -> None:
    group = DeviceGroup([guest_models.Plain(), guest_models.Widget()])
    uart, sram = group.guest_devices()
    assert [g.region for g in uart.regions] == [1, 2]
    assert [q.irq for q in uart.irqs] == [1, 2]
    assert [g.region for g in sram.regions] == [2]
    bridge = PciBridge(group)
    records = gd.decode(bridge.descriptor).devices
    assert [(r.bar, r.offset, r.size) for r in records[0].regions] == [(1, 0, 0x1000), (2, 0x100, 0x100)]
    assert [q.line for q in records[0].irqs] == [1, 2]
    bridge.close()


def test_a_member_declaring_a_missing_index_fails_with_its_label() -> None:
    group = DeviceGroup([guest_models.Plain(), guest_models.BadIrqIndex()])
    with pytest.raises(ValueError, match="member 'BadIrqIndex#0'|member 'plain#1'|names IRQ 1"):
        PciBridge(group)
    group.close()


def test_labels() -> None:
    assert member_labels(["pl031", "pl061"]) == ("pl031", "pl061")
    assert member_labels(["gpio", "edu", "gpio"]) == ("gpio#0", "edu", "gpio#1")
    assert member_labels(["tests.guest_models:Widget"]) == ("Widget",)
    with pytest.raises(ValueError, match="cannot name"):
        member_labels(["pkg.mod"])


def test_options_per_member() -> None:
    labels = ("edu", "gpio#0", "gpio#1")
    assert split_member_options(labels, {"gpio#1.lines": "3", "gpio#0": {"lines": 5, "edge": False}}) == [
        {}, {"lines": 5, "edge": False}, {"lines": "3"}]
    with pytest.raises(ValueError, match="name the member"):
        split_member_options(labels, {"lines": 2})
    with pytest.raises(ValueError, match="no member 'gpio'"):
        split_member_options(labels, {"gpio.lines": 2})


def test_create_group_names_the_member_whose_options_are_wrong() -> None:
    with pytest.raises(ValueError, match="member 'gpio'.*no option 'bogus'"):
        create_group(["edu", "gpio"], {"gpio.bogus": 1}, create_model)
    group = create_group(["gpio", "gpio"], {"gpio#1.lines": "3"}, create_model)
    assert len(group.irqs()) == (4 + 1) + (3 + 1)
    group.close()


# --------------------------------------------------------------------------- through a server

EDU_BAR, GPIO_BAR, SRAM_BAR, IRQ_BAR = 0, 1, 2, 3


def page(client: VfioUserClient, register: int) -> int:
    return client.read32(IRQ_BAR, register)


def test_edu_gpio_group_shares_intx_in_fifo_order(vfu_server, vfu_eventfds) -> None:
    server: ProcessServer = vfu_server("edu,gpio", extra=["-o", "gpio.lines=3"])
    assert "serving edu,gpio" in server.stderr()
    client = server.connect()
    assert (config_read(client, 0, 2), config_read(client, 2, 2)) == (0x1234, 0x5646)
    assert config_read(client, 0x09, 3) == 0x088000
    assert client.read32(EDU_BAR, 0) == 0x010000ED  # edu's identification register
    assert client.read32(GPIO_BAR, gpio.REG_NLINES) == 3
    assert client.region_info(SRAM_BAR)[0].flags & vfio_abi.REGION_FLAG_MMAP
    assert page(client, irq_page.IRQ_LINES) == 1 + 3 + 1
    (trigger,) = vfu_eventfds(1)
    install_intx(client, trigger)

    client.write32(GPIO_BAR, gpio.line_register(1, gpio.LINE_RAISE), 1)  # group line 2
    trigger.expect_one(what="INTx for gpio line 1")
    client.write32(EDU_BAR, edu.REG_IRQ_RAISE, 1)  # group line 0: queued behind it
    trigger.expect_none()
    assert (page(client, irq_page.IRQ_ACTIVE), page(client, irq_page.IRQ_PENDING)) == (2, 1)

    client.write32(GPIO_BAR, gpio.line_register(1, gpio.LINE_ACK), 1)  # gpio's ack register, remapped
    intx_unmask(client)
    trigger.expect_one(what="INTx for edu next")
    assert page(client, irq_page.IRQ_ACTIVE) == 0
    client.write32(EDU_BAR, edu.REG_IRQ_ACK, 1)
    intx_unmask(client)
    assert page(client, irq_page.IRQ_ACTIVE) == NO_IRQ
    assert page(client, irq_page.IRQ_EOIS) == 2


def test_group_in_msix_mode_gives_each_irq_its_vector(vfu_server, vfu_eventfds) -> None:
    server = vfu_server("edu,gpio", irq_mode="msix")
    client = server.connect()
    vectors = vfu_eventfds(1 + 4 + 1)
    enable_msix(client, vectors)
    client.write32(EDU_BAR, edu.REG_IRQ_RAISE, 1)
    vectors[0].expect_one(what="edu's vector")
    client.write32(GPIO_BAR, gpio.REG_EDGE_PULSE, 1)
    vectors[5].expect_one(what="gpio's edge line vector")
    for v in vectors[1:5]:
        v.expect_none()


def test_group_from_the_config_file(tmp_path: Path) -> None:
    config = write_config(tmp_path, '[device]\nmodels = ["gpio", "edu", "gpio"]\n'
                                    '[device.options."gpio#1"]\nlines = 3\n'
                                    '[bridge]\ndevice_id = 0x7777\n')
    socket_path = str(tmp_path / "cfg.sock")
    stderr_path = tmp_path / "cfg.stderr"
    with open(stderr_path, "wb") as stderr:
        proc = subprocess.Popen([PYTHON, "-m", "vfu_platform", "serve", "--socket", socket_path, "--config", config],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr, cwd=str(REPO))
    server = ProcessServer(proc, socket_path, stderr_path)
    try:
        wait_until(lambda: "serving" in server.stderr() or proc.poll() is not None, what="server start")
        assert "serving gpio,edu,gpio" in server.stderr(), server.stderr()
        client = server.connect()
        assert config_read(client, 2, 2) == 0x7777  # the config overrides the group identity
        # BAR0/1 gpio#0 regs/sram, BAR2 edu, BAR3/4 gpio#1 regs/sram, BAR5 the IRQ page
        assert client.read32(0, gpio.REG_NLINES) == 4
        assert client.read32(2, 0) == 0x010000ED
        assert client.read32(3, gpio.REG_NLINES) == 3
        assert client.read32(5, irq_page.IRQ_LINES) == 5 + 1 + 4
        client.close()
    finally:
        server.stop()


def test_group_errors_are_one_line(tmp_path: Path) -> None:
    assert_one_line_error(serve(tmp_path / "a.sock", "--device", "edu,gpio", "-o", "lines=3"), "name the member")
    assert_one_line_error(serve(tmp_path / "b.sock", "--device", "edu,nosuch"), "unknown device model")
    assert_one_line_error(serve(tmp_path / "c.sock", "--device", "edu,"), "empty model name")
    many = ",".join(["gpio"] * 3)  # 3 x (regs + sram) + the IRQ page: 7 BARs
    assert_one_line_error(serve(tmp_path / "d.sock", "--device", many), "BAR slots")


def test_pl031_pl061_group_serves_the_spec_example(vfu_server) -> None:
    server = vfu_server("pl031,pl061", irq_mode="intx")
    client = server.connect()
    cap, raw = find_descriptor(client)
    assert (cap.bar, cap.offset, cap.length) == (2, 0x1000, len(EXAMPLE))
    assert raw == EXAMPLE, "the descriptor differs from docs/guest-descriptor.md section 5"
    assert (config_read(client, 0, 2), config_read(client, 2, 2)) == (0x1234, 0x5646)
