# SPDX-License-Identifier: BSD-3-Clause
"""The session with no socket at all: bytes (and fds) in, bytes out, time from a fake clock.

The session is sans-I/O (server/session.py); these tests are what that buys: each
feeds it the bytes a client would send, in whatever pieces, and checks the bytes it
queues for the client, including a device's DMA request and its continuation.
"""
from __future__ import annotations

import errno
import os
import struct
from collections.abc import Callable

import pytest

from vfu_platform import vfio_abi
from vfu_platform.backends.sim.edu import EduDevice
from vfu_platform.backends.sim.edu_map import (
    DMA_BUFFER_ADDR,
    DMA_CMD_RUN,
    IDENTIFICATION,
    REG_DMA_CMD,
    REG_DMA_COUNT,
    REG_DMA_DST,
    REG_DMA_SRC,
    REG_ID,
)
from vfu_platform.bridge.device import PciBridge
from vfu_platform.protocol import messages as m
from vfu_platform.protocol.caps import Capabilities
from vfu_platform.protocol.codec import encode, encode_reply
from vfu_platform.protocol.constants import HEADER_SIZE, Command, MsgFlags
from vfu_platform.protocol.header import HEADER
from vfu_platform.server.session import Session, SessionOptions

CONFIG = vfio_abi.PCI_CONFIG_REGION_INDEX
BAR0 = 0
PCI_COMMAND = 0x04
MEMORY_AND_BUS_MASTER = 0x6
REPLY = int(MsgFlags.TYPE_REPLY)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class ManualScheduler:
    """The device's timers, run when the test says (the session itself never uses them)."""

    def __init__(self) -> None:
        self.due: list[Callable[[], None]] = []
        self.readers: dict[int, Callable[[], None]] = {}  # the bridge's IRQ line eventfds

    def call_later(self, _delay: float, callback: Callable[[], None]) -> "ManualScheduler":
        self.due.append(callback)
        return self

    def cancel(self) -> None:
        pass

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        self.readers[fd] = callback

    def remove_reader(self, fd: int) -> None:
        self.readers.pop(fd, None)

    def run_due(self) -> None:
        due, self.due = self.due, []
        for callback in due:
            callback()


def messages(stream: bytes) -> list[tuple[tuple[int, int, int, int, int], bytes]]:
    """Split what the session sent into (header fields, body)."""
    out, pos = [], 0
    while pos < len(stream):
        header = HEADER.unpack_from(stream, pos)
        size = header[2]
        assert size >= HEADER_SIZE and pos + size <= len(stream), "a torn message in the output"
        out.append((header, stream[pos + HEADER_SIZE : pos + size]))
        pos += size
    return out


class Peer:
    """A client written against the session directly."""

    def __init__(self, options: SessionOptions | None = None) -> None:
        self.clock = FakeClock()
        self.scheduler = ManualScheduler()
        self.device = EduDevice()
        self.session = Session(PciBridge(self.device), self.scheduler, options or SessionOptions(), None, self.clock)
        self.session.start()
        self.next_id = 1

    def request(self, command: int, payload: bytes, flags: int = 0) -> bytes:
        msg_id, self.next_id = self.next_id, self.next_id + 1
        return encode(msg_id, command, payload, flags)

    def output(self) -> bytes:
        sent = self.session.take_output()
        assert all(not fds for _data, fds in sent)
        return b"".join(data for data, _fds in sent)

    def send(self, data: bytes, fds: list[int] | tuple[int, ...] = ()) -> list[tuple[tuple[int, int, int, int, int], bytes]]:
        self.session.receive_data(data, fds)
        return messages(self.output())

    def negotiate(self) -> None:
        [(header, body)] = self.send(self.request(Command.VERSION, m.Version(0, 1, Capabilities(max_msg_fds=8)).pack()))
        assert header[1] == Command.VERSION and header[3] & REPLY and header[4] == 0
        assert m.Version.unpack(body).major == 0

    def read(self, region: int, offset: int, count: int) -> bytes:
        [(header, body)] = self.send(self.request(Command.REGION_READ, m.RegionAccess(offset, region, count).pack()))
        assert header[4] == 0, errno.errorcode[header[4]]
        return m.RegionAccess.unpack(body).data

    def write(self, region: int, offset: int, data: bytes) -> None:
        [(header, _body)] = self.send(self.request(Command.REGION_WRITE, m.RegionAccess(offset, region, len(data), data).pack()))
        assert header[4] == 0, errno.errorcode[header[4]]


@pytest.fixture
def peer() -> Peer:
    peer = Peer()
    peer.negotiate()
    return peer


def test_version_in_version_reply_out() -> None:
    peer = Peer()
    request = peer.request(Command.VERSION, m.Version(0, 1, Capabilities()).pack())
    [(header, body)] = peer.send(request)
    assert header[:2] == (1, Command.VERSION) and header[3] == REPLY
    assert m.Version.unpack(body).caps is not None


def test_a_message_in_pieces_is_answered_once_whole(peer: Peer) -> None:
    request = peer.request(Command.REGION_READ, m.RegionAccess(REG_ID, BAR0, 4).pack())
    for i in range(len(request) - 1):
        assert peer.send(request[i : i + 1]) == []
    [(header, body)] = peer.send(request[-1:])
    assert int.from_bytes(m.RegionAccess.unpack(body).data, "little") == IDENTIFICATION


def test_several_messages_at_once_are_answered_in_order(peer: Peer) -> None:
    requests = [peer.request(Command.REGION_READ, m.RegionAccess(REG_ID, BAR0, 4).pack()) for _ in range(3)]
    requests.append(peer.request(Command.DEVICE_GET_INFO, m.DeviceInfo(32, 0, 0, 0).pack()))
    replies = peer.send(b"".join(requests))
    assert [(h[0], h[1]) for h, _ in replies] == [(2, Command.REGION_READ), (3, Command.REGION_READ),
                                                   (4, Command.REGION_READ), (5, Command.DEVICE_GET_INFO)]


def test_a_bad_request_gets_its_errno_and_the_session_serves_on(peer: Peer) -> None:
    [(header, body)] = peer.send(peer.request(Command.REGION_READ, m.RegionAccess(0, 99, 4).pack()))
    assert header[4] == errno.EINVAL and body == b""
    assert peer.read(BAR0, REG_ID, 4) == IDENTIFICATION.to_bytes(4, "little")


def test_a_request_with_the_reply_bit_is_einval(peer: Peer) -> None:
    [(header, _)] = peer.send(peer.request(Command.DEVICE_RESET, b"", flags=REPLY))
    assert header[4] == errno.EINVAL


def test_replies_before_lost_framing_are_still_output(peer: Peer) -> None:
    good = peer.request(Command.REGION_READ, m.RegionAccess(REG_ID, BAR0, 4).pack())
    broken = struct.pack("<HHIII", 9, Command.REGION_READ, 8, 0, 0)  # msg_size < header: framing lost
    [(header, _)] = peer.send(good + broken)
    assert header[1] == Command.REGION_READ and header[4] == 0
    assert peer.session.closed and peer.session.closed_reason.startswith("framing error")


def test_dma_map_fd_is_owned_then_released_at_close(peer: Peer) -> None:
    fd = os.memfd_create("guest-ram")
    os.ftruncate(fd, 1 << 16)
    flags = vfio_abi.DMA_MAP_FLAG_READ | vfio_abi.DMA_MAP_FLAG_WRITE
    [(header, _)] = peer.send(peer.request(Command.DMA_MAP, m.DmaMap(32, flags, 0, 0x100000, 1 << 16).pack()), [fd])
    assert header[4] == 0
    assert len(peer.session.dma) == 1
    peer.session.close("test over")
    assert len(peer.session.dma) == 0
    with pytest.raises(OSError):
        os.fstat(fd)  # the session owned it and closed it


def _start_dma_from_client_memory(peer: Peer, iova: int, count: int) -> None:
    """edu copies `count` bytes from a client window with no fd (served by DMA_READ messages)."""
    flags = vfio_abi.DMA_MAP_FLAG_READ | vfio_abi.DMA_MAP_FLAG_WRITE
    [(header, _)] = peer.send(peer.request(Command.DMA_MAP, m.DmaMap(32, flags, 0, iova, 1 << 16).pack()))
    assert header[4] == 0
    peer.write(CONFIG, PCI_COMMAND, MEMORY_AND_BUS_MASTER.to_bytes(2, "little"))
    peer.write(BAR0, REG_DMA_SRC, iova.to_bytes(8, "little"))
    peer.write(BAR0, REG_DMA_DST, DMA_BUFFER_ADDR.to_bytes(8, "little"))
    peer.write(BAR0, REG_DMA_COUNT, count.to_bytes(8, "little"))
    peer.write(BAR0, REG_DMA_CMD, DMA_CMD_RUN.to_bytes(8, "little"))
    peer.scheduler.run_due()  # the device's timer: the transfer starts


def test_device_dma_is_a_request_out_and_resumes_on_the_reply(peer: Peer) -> None:
    _start_dma_from_client_memory(peer, 0x200000, 16)
    [(header, body)] = messages(peer.output())
    msg_id, command, _size, flags, _error = header
    assert command == Command.DMA_READ and not flags & REPLY
    access = m.DmaAccess.unpack(body)
    assert (access.address, access.count) == (0x200000, 16)
    assert peer.session.dma_pending == 1 and peer.session.deadline is not None
    payload = bytes(range(16))
    assert peer.send(encode_reply(msg_id, Command.DMA_READ, m.DmaAccess(0x200000, 16, payload).pack())) == []
    assert peer.session.dma_pending == 0
    assert peer.device.dma_buffer[:16] == payload
    assert peer.read(BAR0, REG_DMA_CMD, 8) == bytes(8)  # done: the run bit is clear


def test_unanswered_device_dma_times_out_on_the_clock(peer: Peer) -> None:
    _start_dma_from_client_memory(peer, 0x200000, 16)
    [(header, _)] = messages(peer.output())
    deadline = peer.session.deadline
    assert deadline == pytest.approx(peer.clock.now + peer.session.options.dma_timeout)
    peer.clock.now = deadline + 0.001
    peer.session.handle_timeout()
    assert peer.session.dma_pending == 0 and not peer.session.closed
    assert peer.device.dma_buffer[:16] == bytes(16)  # nothing arrived
    # The late reply is dropped without an answer, and the session serves on.
    assert peer.send(encode_reply(header[0], Command.DMA_READ, m.DmaAccess(0x200000, 16, bytes(16)).pack())) == []
    assert peer.read(BAR0, REG_ID, 4) == IDENTIFICATION.to_bytes(4, "little")


def test_a_half_message_is_dropped_after_message_timeout() -> None:
    peer = Peer(SessionOptions(message_timeout=5.0))
    peer.negotiate()
    assert peer.session.deadline is None  # idle after VERSION: no deadline
    assert peer.send(peer.request(Command.REGION_READ, m.RegionAccess(0, 0, 4).pack())[:7]) == []
    assert peer.session.deadline == pytest.approx(peer.clock.now + 5.0)
    peer.clock.now += 4.9
    peer.session.handle_timeout()
    assert not peer.session.closed
    peer.clock.now += 0.2
    peer.session.handle_timeout()
    assert peer.session.closed and "incomplete for 5 s" in peer.session.closed_reason


def test_no_version_within_message_timeout_is_dropped() -> None:
    peer = Peer(SessionOptions(message_timeout=2.0))
    assert peer.session.deadline == pytest.approx(peer.clock.now + 2.0)
    peer.clock.now += 2.5
    peer.session.handle_timeout()
    assert peer.session.closed and "no VERSION within 2 s" in peer.session.closed_reason


def test_close_fails_a_pending_transfer_and_the_device_state_stays(peer: Peer) -> None:
    peer.write(BAR0, 0x04, (0x1234).to_bytes(4, "little"))  # liveness
    _start_dma_from_client_memory(peer, 0x200000, 16)
    assert peer.session.dma_pending == 1
    peer.session.close("client gone")
    assert peer.session.dma_pending == 0
    again = Peer.__new__(Peer)
    again.clock, again.scheduler, again.device, again.next_id = peer.clock, peer.scheduler, peer.device, 1
    again.session = Session(peer.session.device, again.scheduler, SessionOptions(), None, again.clock)
    again.session.start()
    again.negotiate()
    assert again.read(BAR0, 0x04, 4) == (~0x1234 & 0xFFFFFFFF).to_bytes(4, "little")


def test_fds_arriving_with_a_closed_session_are_closed(peer: Peer) -> None:
    peer.session.close("over")
    fd = os.eventfd(0)
    peer.session.receive_data(b"x", [fd])
    with pytest.raises(OSError):
        os.fstat(fd)
