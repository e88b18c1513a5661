# SPDX-License-Identifier: BSD-3-Clause
"""DEVICE_SET_IRQS (8): wiring eventfds, masking, loopback, and lvu's ordered checks (brief 2.8, 4.5).

edu's interrupt is a level line on INTx: writing 0x60 raises it, writing 0x64
acknowledges it, and an EOI needs both the acknowledge and the client's UNMASK.
"""
from __future__ import annotations

import errno
import os
from collections.abc import Iterator

import pytest

from conftest import ProcessServer, assert_serving, expect_error, expect_no_reply_to, launch_server, raw_request
from vfu_platform.client import VfioUserClient, eventfd_count, make_eventfd, wait_eventfd
from vfu_platform.protocol import messages as m
from vfu_platform.protocol.constants import Command

DATA_NONE, DATA_BOOL, DATA_EVENTFD = 0x1, 0x2, 0x4
MASK, UNMASK, TRIGGER = 0x08, 0x10, 0x20
INTX, MSI, MSIX, ERR, REQ = range(5)
BAR0 = 0
EDU_RAISE, EDU_ACK, EDU_IRQ_STATUS = 0x60, 0x64, 0x24
SIGNAL_WAIT = 2.0


def irq_set(index: int, flags: int, start: int = 0, count: int = 1, data: bytes = b"",
            argsz: int | None = None) -> bytes:
    return m.IrqSet(20 + len(data) if argsz is None else argsz, flags, index, start, count, data).pack()


@pytest.fixture
def edu(client: VfioUserClient) -> VfioUserClient:
    """The client, with edu back at power-on (no interrupt left asserted by an earlier test)."""
    client.reset()
    return client


@pytest.fixture
def eventfds() -> Iterator[list[int]]:
    """Eventfds the test creates: closed at the end."""
    fds: list[int] = []
    yield fds
    for fd in fds:
        os.close(fd)


def new_eventfd(fds: list[int]) -> int:
    fds.append(make_eventfd())
    return fds[-1]


def raise_edu_irq(client: VfioUserClient) -> None:
    client.write32(BAR0, EDU_RAISE, 1)


def settle(client: VfioUserClient) -> None:
    """Two round trips: every line event the server had seen before them has been handled."""
    client.sync()
    client.sync()


def assert_not_signalled(client: VfioUserClient, fd: int) -> None:
    settle(client)
    assert eventfd_count(fd) == 0


def install_intx(client: VfioUserClient, fds: list[int]) -> int:
    fd = new_eventfd(fds)
    client.set_irqs(INTX, TRIGGER | DATA_EVENTFD, 0, 1, [fd])
    return fd


# ---------------------------------------------------------------- INTx wiring
def test_reply_is_header_only(edu, eventfds):
    # QEMU's eventfd chunks: argsz 20, msg_size 36, the fds in SCM_RIGHTS only.
    reply = raw_request(edu, Command.DEVICE_SET_IRQS, irq_set(INTX, TRIGGER | DATA_EVENTFD), [new_eventfd(eventfds)])
    assert not reply.header.is_error
    assert reply.header.size == 16 and reply.fds == []


def test_intx_trigger_is_signalled_when_edu_raises(edu, eventfds):
    trigger = install_intx(edu, eventfds)
    raise_edu_irq(edu)
    assert wait_eventfd(trigger, SIGNAL_WAIT) == 1


def test_intx_eoi_is_ack_plus_unmask(edu, eventfds):
    trigger = install_intx(edu, eventfds)
    raise_edu_irq(edu)
    assert wait_eventfd(trigger, SIGNAL_WAIT) == 1
    edu.write32(BAR0, EDU_ACK, 1)
    edu.set_irqs(INTX, UNMASK | DATA_NONE, 0, 1)
    raise_edu_irq(edu)
    assert wait_eventfd(trigger, SIGNAL_WAIT) == 1


def test_no_second_interrupt_before_the_unmask(edu, eventfds):
    trigger = install_intx(edu, eventfds)
    raise_edu_irq(edu)
    assert wait_eventfd(trigger, SIGNAL_WAIT) == 1
    edu.write32(BAR0, EDU_ACK, 1)
    raise_edu_irq(edu)  # the line is automasked until the EOI
    assert_not_signalled(edu, trigger)
    edu.set_irqs(INTX, UNMASK | DATA_NONE, 0, 1)
    assert wait_eventfd(trigger, SIGNAL_WAIT) == 1  # still asserted: fires again


def test_unmask_eventfd_acts_as_unmask(server, edu, eventfds):
    trigger = install_intx(edu, eventfds)
    resample = new_eventfd(eventfds)
    edu.set_irqs(INTX, UNMASK | DATA_EVENTFD, 0, 1, [resample])
    server.wait_fd_count(server.idle_fds + 3)
    raise_edu_irq(edu)
    assert wait_eventfd(trigger, SIGNAL_WAIT) == 1
    edu.write32(BAR0, EDU_ACK, 1)
    raise_edu_irq(edu)
    assert_not_signalled(edu, trigger)
    os.eventfd_write(resample, 1)  # what KVM does on the guest's EOI
    assert wait_eventfd(trigger, SIGNAL_WAIT) == 1
    edu.set_irqs(INTX, UNMASK | DATA_EVENTFD, 0, 1)  # no fd: de-register
    server.wait_fd_count(server.idle_fds + 2)


def test_masked_intx_is_held_until_unmask(edu, eventfds):
    trigger = install_intx(edu, eventfds)
    edu.set_irqs(INTX, MASK | DATA_NONE, 0, 1)
    raise_edu_irq(edu)
    assert_not_signalled(edu, trigger)
    edu.set_irqs(INTX, UNMASK | DATA_BOOL, 0, 1, data=b"\x01")
    assert wait_eventfd(trigger, SIGNAL_WAIT) == 1


def test_replacing_the_trigger_closes_the_old_one(server, edu, eventfds):
    old = install_intx(edu, eventfds)
    new = install_intx(edu, eventfds)
    server.wait_fd_count(server.idle_fds + 2)
    raise_edu_irq(edu)
    assert wait_eventfd(new, SIGNAL_WAIT) == 1
    assert eventfd_count(old) == 0


def test_eventfd_with_no_fds_deassigns_the_trigger(server, edu, eventfds):
    trigger = install_intx(edu, eventfds)
    edu.set_irqs(INTX, TRIGGER | DATA_EVENTFD, 0, 1)
    server.wait_fd_count(server.idle_fds + 1)
    raise_edu_irq(edu)
    assert_not_signalled(edu, trigger)


def test_count_0_disables_the_index(server, edu, eventfds):
    trigger = install_intx(edu, eventfds)
    resample = new_eventfd(eventfds)
    edu.set_irqs(INTX, UNMASK | DATA_EVENTFD, 0, 1, [resample])
    edu.set_irqs(INTX, TRIGGER | DATA_NONE, 0, 0)
    server.wait_fd_count(server.idle_fds + 1)
    raise_edu_irq(edu)
    assert_not_signalled(edu, trigger)


@pytest.mark.parametrize("index", [MSI, MSIX, ERR, REQ], ids=["msi", "msix", "err", "req"])
def test_disabling_any_index_succeeds_even_without_vectors(edu, index):
    edu.set_irqs(index, TRIGGER | DATA_NONE, 0, 0)


@pytest.mark.parametrize("flags, data, expected", [
    (TRIGGER | DATA_NONE, b"", 1),
    (TRIGGER | DATA_BOOL, b"\x01", 1),
    (TRIGGER | DATA_BOOL, b"\x00", 0),
], ids=["none", "bool-1", "bool-0"])
def test_software_trigger_writes_the_eventfd(edu, eventfds, flags, data, expected):
    trigger = install_intx(edu, eventfds)
    edu.set_irqs(INTX, flags, 0, 1, data=data)
    settle(edu)
    assert eventfd_count(trigger) == expected


def test_err_trigger(server, edu, eventfds):
    err = new_eventfd(eventfds)
    edu.set_irqs(ERR, TRIGGER | DATA_EVENTFD, 0, 1, [err])
    edu.set_irqs(ERR, TRIGGER | DATA_NONE, 0, 1)
    assert wait_eventfd(err, SIGNAL_WAIT) == 1
    edu.set_irqs(ERR, TRIGGER | DATA_NONE, 0, 0)
    server.wait_fd_count(server.idle_fds + 1)


def test_wiring_is_dropped_with_the_client(server, edu, eventfds):
    install_intx(edu, eventfds)
    edu.set_irqs(ERR, TRIGGER | DATA_EVENTFD, 0, 1, [new_eventfd(eventfds)])
    edu.close()
    server.wait_idle()


# ---------------------------------------------------------------- MSI-X (gpio in msix mode: 5 vectors)
@pytest.fixture(scope="module")
def msix_server() -> Iterator[ProcessServer]:
    proc = launch_server("gpio", ["--irq-mode", "msix"])
    yield proc
    proc.stop()


@pytest.fixture
def msix(msix_server: ProcessServer) -> Iterator[VfioUserClient]:
    msix_server.wait_idle()
    with msix_server.connect() as client:
        yield client
    msix_server.wait_idle()


def test_msix_vectors_in_one_message(msix_server, msix, eventfds):
    msix.set_irqs(MSIX, TRIGGER | DATA_EVENTFD, 0, 1)  # QEMU: "MSI-X on, no vectors"
    fds = [new_eventfd(eventfds) for _ in range(5)]
    msix.set_irqs(MSIX, TRIGGER | DATA_EVENTFD, 0, 5, fds)
    msix_server.wait_fd_count(msix_server.idle_fds + 6)
    msix.set_irqs(MSIX, TRIGGER | DATA_BOOL, 0, 5, data=b"\0\1\0\1\0")
    settle(msix)
    assert [eventfd_count(fd) for fd in fds] == [0, 1, 0, 1, 0]
    msix.set_irqs(MSIX, TRIGGER | DATA_EVENTFD, 3, 2)  # de-assign vectors 3 and 4
    msix_server.wait_fd_count(msix_server.idle_fds + 4)
    msix.set_irqs(MSIX, TRIGGER | DATA_NONE, 0, 0)
    msix_server.wait_fd_count(msix_server.idle_fds + 1)


def test_msix_range_past_the_vectors_is_einval(msix_server, msix, eventfds):
    fds = [new_eventfd(eventfds) for _ in range(3)]
    expect_error(msix, Command.DEVICE_SET_IRQS, irq_set(MSIX, TRIGGER | DATA_EVENTFD, 3, 3), errno.EINVAL, fds)
    expect_error(msix, Command.DEVICE_SET_IRQS, irq_set(MSIX, TRIGGER | DATA_EVENTFD, 5, 1), errno.EINVAL, fds[:1])
    msix_server.wait_fd_count(msix_server.idle_fds + 1)
    msix.set_irqs(MSIX, MASK | DATA_BOOL, 0, 5, data=b"\1\1\1\1\1")


# ---------------------------------------------------------------- refused, in lvu's order (brief 4.5)
MALFORMED = {
    # 1. payload or argsz below 20
    "payload-16": irq_set(INTX, TRIGGER | DATA_NONE)[:16],
    "payload-19": irq_set(INTX, TRIGGER | DATA_NONE)[:19],
    "argsz-0": irq_set(INTX, TRIGGER | DATA_NONE, argsz=0),
    "argsz-19": irq_set(INTX, TRIGGER | DATA_NONE, argsz=19),
    # 2. DATA_BOOL with a data length other than count
    "bool-missing": irq_set(INTX, MASK | DATA_BOOL, 0, 1),
    "bool-extra": irq_set(INTX, MASK | DATA_BOOL, 0, 1, b"\1\1"),
    # 3. index past REQ
    "index-5": irq_set(5, TRIGGER | DATA_NONE, 0, 0),
    "index-max": irq_set(0xFFFF_FFFF, TRIGGER | DATA_NONE, 0, 1),
    # 4. not exactly one action / one data type
    "no-action": irq_set(INTX, DATA_NONE),
    "two-actions": irq_set(INTX, MASK | UNMASK | DATA_NONE),
    "three-actions": irq_set(INTX, MASK | UNMASK | TRIGGER | DATA_NONE),
    "no-data-type": irq_set(INTX, TRIGGER),
    "two-data-types": irq_set(INTX, TRIGGER | DATA_NONE | DATA_BOOL, data=b"\1"),
    "unknown-flag": irq_set(INTX, TRIGGER | DATA_NONE | 0x40),
    # 5. start past the vectors
    "intx-start-1": irq_set(INTX, TRIGGER | DATA_NONE, 1, 1),
    "msi-start-0": irq_set(MSI, TRIGGER | DATA_NONE, 0, 1),
    "req-start-0": irq_set(REQ, TRIGGER | DATA_NONE, 0, 1),
    # 6. start + count past the vectors
    "intx-count-2": irq_set(INTX, TRIGGER | DATA_NONE, 0, 2),
    "intx-count-max": irq_set(INTX, TRIGGER | DATA_NONE, 0, 0xFFFF_FFFF),
    "err-count-2": irq_set(ERR, TRIGGER | DATA_NONE, 0, 2),
    # 7. ERR/REQ take TRIGGER only
    "err-mask": irq_set(ERR, MASK | DATA_NONE),
    "err-unmask": irq_set(ERR, UNMASK | DATA_NONE),
    "req-mask-count-0": irq_set(REQ, MASK | DATA_NONE, 0, 0),
    # 8. count 0 with a start, or other than TRIGGER|DATA_NONE
    "count-0-start-1": irq_set(INTX, TRIGGER | DATA_NONE, 1, 0),
    "count-0-eventfd": irq_set(INTX, TRIGGER | DATA_EVENTFD, 0, 0),
    "count-0-bool": irq_set(INTX, TRIGGER | DATA_BOOL, 0, 0),
    "count-0-mask": irq_set(INTX, MASK | DATA_NONE, 0, 0),
    # MASK|EVENTFD ("signal when masked") is not supported
    "mask-eventfd-no-fd": irq_set(INTX, MASK | DATA_EVENTFD),
}


@pytest.mark.parametrize("payload", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_is_einval(edu, payload):
    expect_error(edu, Command.DEVICE_SET_IRQS, payload, errno.EINVAL)
    assert_serving(edu)


FD_MISMATCH = {
    # 9. fds with a data type other than EVENTFD, or not one per vector
    "fd-with-none": (irq_set(INTX, TRIGGER | DATA_NONE), 1),
    "fd-with-bool": (irq_set(INTX, TRIGGER | DATA_BOOL, data=b"\1"), 1),
    "two-fds-count-1": (irq_set(INTX, TRIGGER | DATA_EVENTFD), 2),
    "fd-count-0": (irq_set(INTX, TRIGGER | DATA_EVENTFD, 0, 0), 1),
    "mask-eventfd": (irq_set(INTX, MASK | DATA_EVENTFD), 1),
    "bad-index-with-fd": (irq_set(7, TRIGGER | DATA_EVENTFD), 1),
    "short-with-fd": (irq_set(INTX, TRIGGER | DATA_EVENTFD)[:16], 1),
}


@pytest.mark.parametrize("payload, nfds", FD_MISMATCH.values(), ids=FD_MISMATCH.keys())
def test_refused_fds_are_einval_and_closed(server, edu, eventfds, payload, nfds):
    fds = [new_eventfd(eventfds) for _ in range(nfds)]
    expect_error(edu, Command.DEVICE_SET_IRQS, payload, errno.EINVAL, fds)
    server.wait_fd_count(server.idle_fds + 1)
    assert_serving(edu)


def test_refused_message_leaves_the_wiring_alone(edu, eventfds):
    trigger = install_intx(edu, eventfds)
    other = new_eventfd(eventfds)
    two_vectors = irq_set(INTX, TRIGGER | DATA_EVENTFD, 0, 2)
    expect_error(edu, Command.DEVICE_SET_IRQS, two_vectors, errno.EINVAL, [other, other])
    raise_edu_irq(edu)
    assert wait_eventfd(trigger, SIGNAL_WAIT) == 1


def test_refused_no_reply_message_gets_no_reply(server, edu, eventfds):
    expect_no_reply_to(edu, Command.DEVICE_SET_IRQS, irq_set(INTX, TRIGGER | DATA_NONE, 0, 2), [new_eventfd(eventfds)])
    server.wait_fd_count(server.idle_fds + 1)
    assert_serving(edu)
