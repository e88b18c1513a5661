# SPDX-License-Identifier: BSD-3-Clause
"""Posted writes: NO_REPLY REGION_WRITE and REGION_WRITE_MULTI, as QEMU sends them.

A message with NO_REPLY is never answered, not even with an error (QEMU would treat any
reply as unexpected and lose the stream), yet it is applied in order: a later read
observes it.
"""
from __future__ import annotations

import pytest

from vfu_platform.testing import CONFIG, ProcessServer, install_intx
from vfu_platform.backends.sim import edu, gpio
from vfu_platform.client import VfioUserClient
from vfu_platform.protocol import messages as m
from vfu_platform.protocol.caps import Capabilities
from vfu_platform.protocol.constants import Command

SCRATCH = gpio.REG_SCRATCH


def posted_write32(client: VfioUserClient, region: int, offset: int, value: int) -> None:
    client.write32(region, offset, value, posted=True)


def test_posted_write_is_not_answered_but_applied(gpio_server: ProcessServer) -> None:
    client = gpio_server.connect()
    posted_write32(client, 0, SCRATCH, 0x1234_5678)
    client.expect_no_reply()
    assert client.read32(0, SCRATCH) == 0x1234_5678


def test_many_posted_writes_apply_in_order(gpio_server: ProcessServer) -> None:
    client = gpio_server.connect()
    for value in range(200):
        posted_write32(client, 0, SCRATCH, value)
    # No expect_no_reply wait needed: the read's reply is the first message to arrive.
    assert client.read32(0, SCRATCH) == 199
    client.expect_no_reply(wait=0.05)


def test_posted_writes_to_sram_then_read_back(gpio_server: ProcessServer) -> None:
    client = gpio_server.connect()
    for offset in range(0, 64, 8):
        client.write64(1, offset, 0x0101_0101_0101_0101 * offset, posted=True)
    assert client.region_read(1, 0, 64) == b"".join(
        (0x0101_0101_0101_0101 * offset).to_bytes(8, "little") for offset in range(0, 64, 8)
    )


def test_posted_write_can_raise_an_interrupt(edu_server: ProcessServer, vfu_eventfds) -> None:
    client = edu_server.connect()
    (trigger,) = vfu_eventfds(1)
    install_intx(client, trigger)
    posted_write32(client, 0, edu.REG_IRQ_RAISE, 1)
    trigger.expect_one(what="INTx raised by a posted write")
    client.expect_no_reply(wait=0.02)


def test_failing_posted_write_is_silent_and_the_session_goes_on(gpio_server: ProcessServer) -> None:
    client = gpio_server.connect()
    posted_write32(client, 6, 0, 1)  # ROM region: size 0
    posted_write32(client, 42, 0, 1)  # no such region
    posted_write32(client, 0, 0xFFE, 1)  # past the end of BAR0
    client.send(Command.REGION_WRITE, m.RegionAccess(0, 0, 8, b"\0" * 4).pack(), no_reply=True)  # count mismatch
    client.send(Command.REGION_WRITE, b"\0" * 8, no_reply=True)  # payload too short
    client.expect_no_reply()
    posted_write32(client, 0, SCRATCH, 7)
    assert client.read32(0, SCRATCH) == 7


def test_posted_write_to_config_space_is_applied(edu_server: ProcessServer) -> None:
    client = edu_server.connect()
    client.region_write(CONFIG, 0x3C, b"\x09", posted=True)
    client.expect_no_reply()
    assert client.region_read(CONFIG, 0x3C, 1) == b"\x09"


@pytest.mark.parametrize(
    ("command", "payload"),
    [
        (Command.DEVICE_GET_INFO, m.DeviceInfo(16).pack()),
        (Command.REGION_READ, m.RegionAccess(0, 0, 4).pack()),
        (Command.DEVICE_GET_IRQ_INFO, m.IrqInfo(16, index=0).pack()),
        (Command.DEVICE_GET_IRQ_INFO, m.IrqInfo(16, index=99).pack()),  # an error, also unanswered
        (Command.DEVICE_FEATURE, m.DeviceFeature(8, 1 << 16).pack()),
        (Command.MIG_DATA_READ, b"\0" * 8),
        (99, b"\0" * 8),
    ],
    ids=["get-info", "read", "irq-info", "irq-info-error", "feature", "migration", "unknown-command"],
)
def test_no_reply_is_honoured_for_any_command(gpio_server: ProcessServer, command: int, payload: bytes) -> None:
    client = gpio_server.connect()
    client.send(command, payload, no_reply=True)
    client.expect_no_reply()
    assert client.read32(0, gpio.REG_ID) == gpio.GPIO_ID


# --------------------------------------------------------------------------- REGION_WRITE_MULTI


def test_write_multi_is_negotiated(gpio_server: ProcessServer) -> None:
    client = gpio_server.connect()
    assert client.server_caps.write_multiple


def test_write_multi_applies_every_entry_in_order(gpio_server: ProcessServer) -> None:
    client = gpio_server.connect()
    client.write_multi(
        [
            (0, SCRATCH, (1).to_bytes(4, "little")),
            (1, 0x00, b"\x11" * 8),
            (1, 0x08, b"\x22\x22"),
            (0, SCRATCH, (2).to_bytes(4, "little")),  # a later entry wins
            (0, SCRATCH + 1, b"\x7f"),  # a one-byte write into the storage register
        ]
    )
    client.expect_no_reply()
    assert client.read32(0, SCRATCH) == 0x7F02
    assert client.region_read(1, 0, 12) == b"\x11" * 8 + b"\x22\x22\x00\x00"


def test_write_multi_can_raise_and_ack_lines(gpio_server: ProcessServer, vfu_eventfds) -> None:
    client = gpio_server.connect()
    (trigger,) = vfu_eventfds(1)
    install_intx(client, trigger)
    client.write_multi([(0, gpio.REG_RAISE, (0b101).to_bytes(4, "little"))])
    trigger.expect_one()
    assert client.read32(0, gpio.REG_STATUS) == 0b101
    client.write_multi([(0, gpio.REG_ACK, (0b101).to_bytes(4, "little"))])
    assert client.read32(0, gpio.REG_STATUS) == 0


def test_write_multi_with_a_bad_entry_applies_nothing_and_is_silent(gpio_server: ProcessServer) -> None:
    client = gpio_server.connect()
    client.write32(0, SCRATCH, 5)
    client.write_multi([(0, SCRATCH, (6).to_bytes(4, "little")), (7, 0x200, b"\0" * 4)])  # config 0x200: past the end
    client.expect_no_reply()
    assert client.read32(0, SCRATCH) == 5


def test_write_multi_malformed_batch_is_silent(gpio_server: ProcessServer) -> None:
    client = gpio_server.connect()
    client.send(Command.REGION_WRITE_MULTI, (5).to_bytes(8, "little") + b"\0" * 24, no_reply=True)  # 5 claimed, 1 sent
    client.send(Command.REGION_WRITE_MULTI, b"\0" * 4, no_reply=True)
    client.expect_no_reply()
    assert client.read32(0, gpio.REG_ID) == gpio.GPIO_ID


def test_write_multi_not_negotiated_is_refused_silently(gpio_server: ProcessServer) -> None:
    caps = Capabilities(max_msg_fds=16, max_data_xfer_size=1 << 20, max_dma_maps=65535, pgsizes=4096)
    client = gpio_server.connect(caps=caps)
    assert not client.server_caps.write_multiple
    client.write_multi([(0, SCRATCH, (9).to_bytes(4, "little"))])
    client.expect_no_reply()
    assert client.read32(0, SCRATCH) == 0


def test_non_posted_write_multi_gets_a_count_reply(gpio_server: ProcessServer) -> None:
    client = gpio_server.connect()
    batch = m.RegionWriteMulti((m.WriteMultiEntry(SCRATCH, 0, 4, (3).to_bytes(4, "little")),) * 3)
    reply = client.request(Command.REGION_WRITE_MULTI, batch.pack())
    assert int.from_bytes(reply.body[:8], "little") == 3
    assert client.read32(0, SCRATCH) == 3


def test_posted_and_plain_writes_interleave(gpio_server: ProcessServer) -> None:
    client = gpio_server.connect()
    posted_write32(client, 0, SCRATCH, 1)
    client.write32(0, SCRATCH, 2)
    client.write_multi([(0, SCRATCH, (3).to_bytes(4, "little"))])
    posted_write32(client, 0, gpio.REG_TIMER_DELAY_US, 4)
    assert client.read32(0, SCRATCH) == 3
    assert client.read32(0, gpio.REG_TIMER_DELAY_US) == 4
    client.expect_no_reply(wait=0.05)
