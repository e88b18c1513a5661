# SPDX-License-Identifier: BSD-3-Clause
"""The client library's typed helpers, against a real `vfu_platform serve` (edu) on a real socket.

Typed DEVICE_SET_IRQS (IrqAction / IrqData), regions and IRQ indexes by PCI name,
and the error hierarchy (ClientError with errno; ClientTimeout, ClientDisconnected,
VfioUserError, ClientArgumentError).  The raw `flags` form stays as it was.
"""
from __future__ import annotations

import errno
import inspect
import os
import select
import socket
import struct
from collections.abc import Iterator

import pytest

from conftest import ProcessServer
from vfu_platform import client as client_module
from vfu_platform import vfio_abi
from vfu_platform.client import (
    ClientArgumentError,
    ClientDisconnected,
    ClientError,
    ClientTimeout,
    IrqAction,
    IrqData,
    PciIrq,
    PciRegion,
    VfioUserClient,
    VfioUserError,
    make_eventfd,
)
from vfu_platform.errors import VfuError
from vfu_platform.protocol.constants import Command

EDU_ID = 0x00  # edu identification register: 0x010000ed
EDU_IRQ_RAISE = 0x60
EDU_IRQ_ACK = 0x64
ARRIVE = 3.0
QUIET = 0.2


@pytest.fixture
def eventfd() -> Iterator[int]:
    fd = make_eventfd()
    yield fd
    os.close(fd)


def signalled(fd: int, timeout: float) -> int:
    readable, _, _ = select.select([fd], [], [], timeout)
    return os.eventfd_read(fd) if readable else 0


def fires(client: VfioUserClient, fd: int, wait: float = ARRIVE) -> bool:
    """Raise edu's IRQ; True if the eventfd was signalled.  The IRQ is acked either way."""
    client.write32("bar0", EDU_IRQ_RAISE, 1)
    count = signalled(fd, wait)
    client.write32("bar0", EDU_IRQ_ACK, 1)
    return count == 1


# ------------------------------------------------------------ flags and names


def test_the_enums_are_the_kernel_values() -> None:
    assert (IrqAction.MASK, IrqAction.UNMASK, IrqAction.TRIGGER) == (
        vfio_abi.IRQ_SET_ACTION_MASK, vfio_abi.IRQ_SET_ACTION_UNMASK, vfio_abi.IRQ_SET_ACTION_TRIGGER)
    assert (IrqData.NONE, IrqData.BOOL, IrqData.EVENTFD) == (
        vfio_abi.IRQ_SET_DATA_NONE, vfio_abi.IRQ_SET_DATA_BOOL, vfio_abi.IRQ_SET_DATA_EVENTFD)
    assert (PciRegion.BAR0, PciRegion.BAR5, PciRegion.ROM, PciRegion.CONFIG, PciRegion.VGA) == (
        vfio_abi.PCI_BAR0_REGION_INDEX, vfio_abi.PCI_BAR0_REGION_INDEX + 5, vfio_abi.PCI_ROM_REGION_INDEX,
        vfio_abi.PCI_CONFIG_REGION_INDEX, vfio_abi.PCI_VGA_REGION_INDEX)
    assert (PciIrq.INTX, PciIrq.MSIX, PciIrq.ERR) == (
        vfio_abi.PCI_INTX_IRQ_INDEX, vfio_abi.PCI_MSIX_IRQ_INDEX, vfio_abi.PCI_ERR_IRQ_INDEX)


def test_regions_by_name(client: VfioUserClient) -> None:
    assert client.read32("bar0", EDU_ID) == 0x010000ED
    assert client.read32(PciRegion.BAR0, EDU_ID) == client.read32(0, EDU_ID)
    assert client.read32("config", 0) == 0x11E8_1234  # edu's vendor and device ids, little-endian
    info, fd = client.region_info("CONFIG")
    assert info.index == vfio_abi.PCI_CONFIG_REGION_INDEX and fd is None
    assert client.irq_info("intx").count == 1
    assert client.irq_info("msix").index == vfio_abi.PCI_MSIX_IRQ_INDEX


@pytest.mark.parametrize("bad", ["bar6", "", "intx"])
def test_an_unknown_region_name_is_an_argument_error(client: VfioUserClient, bad: str) -> None:
    with pytest.raises(ClientArgumentError) as info:
        client.read32(bad, 0)
    assert isinstance(info.value, ValueError) and info.value.errno == errno.EINVAL
    assert "bar0" in str(info.value)  # the message lists the names
    client.sync()  # nothing was sent: the session is intact


# ------------------------------------------------------------ typed SET_IRQS


def test_typed_trigger_eventfd_unmask_and_disable(client: VfioUserClient, eventfd: int) -> None:
    client.set_irqs("intx", action=IrqAction.TRIGGER, data=IrqData.EVENTFD, fds=[eventfd])
    assert fires(client, eventfd)
    client.set_irqs(PciIrq.INTX, action=IrqAction.UNMASK)  # data NONE, count 1: the EOI
    assert fires(client, eventfd)
    # TRIGGER | NONE with count 0 disables the index: the next raise signals nothing
    client.set_irqs("intx", action=IrqAction.TRIGGER, data=IrqData.NONE, count=0)
    client.set_irqs("intx", action=IrqAction.UNMASK)
    assert not fires(client, eventfd, QUIET)


def test_the_data_type_follows_from_the_arguments(client: VfioUserClient, eventfd: int) -> None:
    client.set_irqs("intx", action=IrqAction.TRIGGER, fds=[eventfd])  # fds: EVENTFD
    assert fires(client, eventfd)
    client.set_irqs("intx", action=IrqAction.UNMASK, bools=[True])  # bools: BOOL, one byte
    assert fires(client, eventfd)
    client.set_irqs("intx", action=IrqAction.UNMASK, bools=[False])  # BOOL false: no unmask
    assert not fires(client, eventfd, QUIET)
    client.set_irqs("intx", action=IrqAction.TRIGGER, data=IrqData.NONE, count=0)


def test_the_raw_flags_form_still_works(client: VfioUserClient, eventfd: int) -> None:
    client.set_irqs(vfio_abi.PCI_INTX_IRQ_INDEX, 0x24, 0, 1, [eventfd])  # TRIGGER | EVENTFD
    assert fires(client, eventfd)
    client.set_irqs(0, IrqAction.UNMASK | IrqData.NONE, 0, 1)
    client.set_irqs(0, 0x21, 0, 0)  # TRIGGER | NONE, count 0


def test_a_typed_call_the_server_refuses_raises_its_errno(client: VfioUserClient, eventfd: int) -> None:
    second = make_eventfd()
    try:
        with pytest.raises(VfioUserError) as info:  # INTx has one IRQ, not two
            client.set_irqs("intx", action=IrqAction.TRIGGER, data=IrqData.EVENTFD, fds=[eventfd, second])
    finally:
        os.close(second)
    assert info.value.errno == errno.EINVAL and info.value.command == Command.DEVICE_SET_IRQS
    assert isinstance(info.value, ClientError) and isinstance(info.value, VfuError)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"flags": 0x24, "action": IrqAction.TRIGGER},  # both forms at once
        {"flags": 0x24, "data": IrqData.EVENTFD},
        {},  # neither flags nor an action
        {"action": IrqAction.MASK, "data": b"\x01", "bools": [True]},  # two payloads
    ],
    ids=["flags-and-action", "flags-and-data-type", "nothing", "two-payloads"],
)
def test_contradictory_set_irqs_calls_send_nothing(client: VfioUserClient, kwargs: dict) -> None:
    with pytest.raises(ClientArgumentError):
        client.set_irqs("intx", **kwargs)
    client.sync()


# ------------------------------------------------------------ errors


def test_a_server_error_is_a_vfio_user_error_with_the_errno(client: VfioUserClient) -> None:
    with pytest.raises(ClientError) as info:
        client.region_read(20, 0, 4)  # no such region
    assert type(info.value) is VfioUserError and info.value.errno == errno.EINVAL
    assert "REGION_READ" in str(info.value)


def test_no_reply_in_time_is_a_client_timeout(client: VfioUserClient) -> None:
    msg_id = client.send(Command.REGION_WRITE, b"", no_reply=True)  # a posted message: never answered
    with pytest.raises(ClientTimeout) as info:
        client.wait_reply(msg_id, timeout=QUIET)
    assert isinstance(info.value, TimeoutError) and isinstance(info.value, ClientError)
    assert info.value.errno == errno.ETIMEDOUT


def test_no_socket_is_client_disconnected(tmp_path) -> None:
    with pytest.raises(ClientDisconnected) as info:
        VfioUserClient.connect(str(tmp_path / "nobody.sock"))
    assert info.value.errno == errno.ENOENT and isinstance(info.value, ConnectionError)


def test_a_dropped_connection_is_client_disconnected(server: ProcessServer) -> None:
    server.wait_idle()
    with server.connect() as client:
        # msg_size 8 is below the header's 16: the stream cannot be framed, the server hangs up
        client.send_raw(struct.pack("<HHIII", 7, Command.DEVICE_GET_INFO, 8, 0, 0))
        with pytest.raises(ClientDisconnected) as info:
            client.wait_reply(7, timeout=ARRIVE)
    assert isinstance(info.value, ClientError) and info.value.errno == errno.ECONNRESET
    server.wait_idle()


def test_a_listener_that_hangs_up_is_client_disconnected(tmp_path) -> None:
    path = str(tmp_path / "hangup.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen(1)
        client = VfioUserClient.connect(path, negotiate=False, timeout=ARRIVE)
        peer, _ = listener.accept()
        peer.close()
        with pytest.raises(ClientDisconnected):
            client.negotiate()
        client.close()


def test_every_public_class_and_method_has_a_docstring() -> None:
    missing = []
    for name in client_module.__all__:
        item = getattr(client_module, name)
        if not (inspect.isclass(item) or inspect.isfunction(item)):
            continue
        if not inspect.getdoc(item):
            missing.append(name)
        if inspect.isclass(item) and item.__module__ == client_module.__name__:
            for attr, member in vars(item).items():
                function = member.__func__ if isinstance(member, (classmethod, staticmethod)) else member
                if inspect.isfunction(function) and not attr.startswith("_") and not function.__doc__:
                    missing.append(f"{name}.{attr}")
    assert missing == []
