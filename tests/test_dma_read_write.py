# SPDX-License-Identifier: BSD-3-Clause
"""DMA_READ (11) / DMA_WRITE (12): device DMA into client memory (brief 2.10, 3.9).

edu copies between client memory and its 4 KiB buffer at device address 0x40000:
0x80 source, 0x88 destination, 0x90 count, 0x98 command (bit0 start, bit1 edu ->
RAM, bit2 raise IRQ 0x100 when done).  A window mapped without an fd is reached
with DMA_READ / DMA_WRITE requests the client answers; one mapped with a memfd is
mmapped by the server and reached directly.  DMA needs PCI bus mastering.
"""
from __future__ import annotations

import errno
import mmap
import os
import select
import struct
import time

import pytest

from conftest import assert_serving
from vfu_platform.client import VfioUserClient, make_eventfd, wait_eventfd
from vfu_platform.protocol import messages as m
from vfu_platform.protocol.caps import Capabilities
from vfu_platform.protocol.codec import encode_error, encode_reply
from vfu_platform.protocol.constants import Command
from vfu_platform.protocol.framing import Frame

BAR0, CONFIG = 0, 7
COMMAND_REGISTER, BUS_MASTER = 0x04, 0x4
DMA_SRC, DMA_DST, DMA_COUNT, DMA_CMD = 0x80, 0x88, 0x90, 0x98
CMD_START, CMD_TO_RAM, CMD_IRQ = 0x1, 0x2, 0x4
IRQ_STATUS, IRQ_ACK, DMA_IRQ = 0x24, 0x64, 0x100
EDU_BUFFER = 0x40000
IOVA = 0x200000
WINDOW = 0x4000
PATTERN = bytes((i * 7 + 3) & 0xFF for i in range(0x1000))


@pytest.fixture
def edu(client: VfioUserClient) -> VfioUserClient:
    client.reset()  # power-on edu: empty buffer, bus mastering off
    return client


def bus_master(client: VfioUserClient, enabled: bool) -> None:
    client.region_write(CONFIG, COMMAND_REGISTER, struct.pack("<H", BUS_MASTER if enabled else 0))


def start_dma(client: VfioUserClient, src: int, dst: int, count: int, cmd: int, posted: bool = False) -> None:
    client.write64(BAR0, DMA_SRC, src)
    client.write64(BAR0, DMA_DST, dst)
    client.write64(BAR0, DMA_COUNT, count)
    client.write64(BAR0, DMA_CMD, CMD_START | cmd, posted=posted)


def wait_dma_done(client: VfioUserClient, timeout: float = 3.0) -> None:
    """Poll the command register; the client serves the server's DMA requests meanwhile."""
    deadline = time.monotonic() + timeout
    while client.read64(BAR0, DMA_CMD) & CMD_START:
        assert time.monotonic() < deadline, "edu DMA did not complete"
        time.sleep(0.002)


def to_edu(client: VfioUserClient, iova: int, count: int, cmd: int = 0) -> None:
    start_dma(client, iova, EDU_BUFFER, count, cmd)
    wait_dma_done(client)


def to_ram(client: VfioUserClient, iova: int, count: int, cmd: int = 0) -> None:
    start_dma(client, EDU_BUFFER, iova, count, CMD_TO_RAM | cmd)
    wait_dma_done(client)


def next_server_request(client: VfioUserClient, timeout: float = 3.0) -> Frame:
    """Read the server's next message by hand (instead of letting the client answer it)."""
    deadline = time.monotonic() + timeout
    while (frame := client.channel.next_frame()) is None:
        readable, _, _ = select.select([client.channel.sock], [], [], deadline - time.monotonic())
        assert readable, "the server sent nothing"
        client.channel.receive()
    header, body, fds = frame
    data = bytes(body) if body is not None else b""
    return Frame(header, memoryview(data), fds)


# ---------------------------------------------------------------- through DMA_READ / DMA_WRITE messages
def test_pattern_round_trips_through_client_memory(edu):
    window = edu.dma_map(IOVA, WINDOW)
    window.buffer[0:0x1000] = PATTERN
    bus_master(edu, True)
    to_edu(edu, IOVA, 0x1000)
    to_ram(edu, IOVA + 0x2000, 0x1000)
    assert bytes(window.buffer[0x2000:0x3000]) == PATTERN
    assert edu.served_dma_reads >= 1 and edu.served_dma_writes >= 1


def test_partial_transfers_at_offsets(edu):
    window = edu.dma_map(IOVA, WINDOW)
    window.buffer[0x123:0x123 + 100] = PATTERN[:100]
    bus_master(edu, True)
    to_edu(edu, IOVA + 0x123, 100)
    to_ram(edu, IOVA + WINDOW - 100, 100)
    assert bytes(window.buffer[WINDOW - 100:]) == PATTERN[:100]


def test_dma_completion_raises_the_interrupt(edu):
    trigger = make_eventfd()
    try:
        edu.set_irqs(0, 0x20 | 0x4, 0, 1, [trigger])  # INTx TRIGGER|EVENTFD
        edu.dma_map(IOVA, WINDOW)
        bus_master(edu, True)
        to_edu(edu, IOVA, 16, CMD_IRQ)
        assert wait_eventfd(trigger, 2.0) == 1
        assert edu.read32(BAR0, IRQ_STATUS) == DMA_IRQ
        edu.write32(BAR0, IRQ_ACK, DMA_IRQ)
    finally:
        os.close(trigger)


def test_requests_are_split_at_the_clients_max_data_xfer_size(server, client):
    client.close()
    server.wait_idle()
    with server.connect(caps=Capabilities(max_msg_fds=16, max_data_xfer_size=1024)) as small:
        small.reset()
        window = small.dma_map(IOVA, WINDOW)
        window.buffer[0:0x1000] = PATTERN
        bus_master(small, True)
        to_edu(small, IOVA, 0x1000)
        to_ram(small, IOVA + 0x2000, 0x1000)
        assert (small.served_dma_reads, small.served_dma_writes) == (4, 4)
        assert bytes(window.buffer[0x2000:0x3000]) == PATTERN


def test_request_layout_and_header_only_write_reply(edu):
    edu.dma_map(IOVA, WINDOW)
    bus_master(edu, True)
    start_dma(edu, IOVA, EDU_BUFFER, 64, 0, posted=True)
    header, body, fds = next_server_request(edu)
    assert (header.command, header.flags, header.size, fds) == (Command.DMA_READ, 0, 32, [])
    assert bytes(body) == struct.pack("<QQ", IOVA, 64)
    # The server keeps serving while it waits for our answer.
    assert edu.read32(BAR0, 0) == 0x010000ED
    edu.send_raw(encode_reply(header.msg_id, Command.DMA_READ, m.DmaAccess(IOVA, 64, PATTERN[:64]).pack()))
    wait_dma_done(edu)

    start_dma(edu, EDU_BUFFER, IOVA + 0x100, 64, CMD_TO_RAM, posted=True)
    header, body, fds = next_server_request(edu)
    assert (header.command, header.flags, header.size) == (Command.DMA_WRITE, 0, 32 + 64)
    assert bytes(body) == struct.pack("<QQ", IOVA + 0x100, 64) + PATTERN[:64]
    edu.send_raw(encode_reply(header.msg_id, Command.DMA_WRITE))  # header only, as QEMU replies
    wait_dma_done(edu)
    assert_serving(edu)


def test_client_refusing_a_dma_request_does_not_hurt_the_server(edu):
    window = edu.dma_map(IOVA, WINDOW)
    bus_master(edu, True)
    start_dma(edu, IOVA, EDU_BUFFER, 64, 0, posted=True)
    header, _body, _fds = next_server_request(edu)
    edu.send_raw(encode_error(header.msg_id, header.command, errno.EFAULT))
    wait_dma_done(edu)
    window.buffer[0:64] = PATTERN[:64]
    to_edu(edu, IOVA, 64)  # the next transfer works
    to_ram(edu, IOVA + 0x100, 64)
    assert bytes(window.buffer[0x100:0x140]) == PATTERN[:64]


def test_short_dma_read_reply_moves_no_data(edu):
    window = edu.dma_map(IOVA, WINDOW)
    bus_master(edu, True)
    start_dma(edu, IOVA, EDU_BUFFER, 64, 0, posted=True)
    header, _body, _fds = next_server_request(edu)
    edu.send_raw(encode_reply(header.msg_id, Command.DMA_READ, m.DmaAccess(IOVA, 64, PATTERN[:32]).pack()))
    wait_dma_done(edu)
    to_ram(edu, IOVA + 0x100, 64)  # edu's buffer was not filled from the short reply
    assert bytes(window.buffer[0x100:0x140]) == bytes(64)


def test_client_leaving_during_a_dma_request(server, edu):
    edu.dma_map(IOVA, WINDOW)
    bus_master(edu, True)
    start_dma(edu, IOVA, EDU_BUFFER, 64, 0, posted=True)
    header, _body, _fds = next_server_request(edu)
    assert header.command == Command.DMA_READ
    edu.close()  # never answered
    server.wait_idle()
    with server.connect() as fresh:
        assert fresh.read64(BAR0, DMA_CMD) & CMD_START == 0  # the transfer was ended
        assert_serving(fresh)


# ---------------------------------------------------------------- through a memfd the server mmaps
def test_pattern_round_trips_through_a_memfd_window(server, edu):
    fd = os.memfd_create("guest-ram", os.MFD_CLOEXEC)
    os.ftruncate(fd, WINDOW)
    with mmap.mmap(fd, WINDOW) as ram:
        ram[0:0x1000] = PATTERN
        edu.dma_map(IOVA, WINDOW, fd=fd)
        os.close(fd)
        bus_master(edu, True)
        to_edu(edu, IOVA, 0x1000)
        to_ram(edu, IOVA + 0x2000, 0x1000)
        assert ram[0x2000:0x3000] == PATTERN
    assert (edu.served_dma_reads, edu.served_dma_writes) == (0, 0)  # no messages needed


# ---------------------------------------------------------------- refused DMA
def test_no_dma_without_bus_master(edu):
    window = edu.dma_map(IOVA, WINDOW)
    window.buffer[0:0x1000] = PATTERN
    window.buffer[0x2000:0x3000] = b"\xee" * 0x1000
    bus_master(edu, False)
    to_edu(edu, IOVA, 0x1000)
    to_ram(edu, IOVA + 0x2000, 0x1000)
    assert bytes(window.buffer[0x2000:0x3000]) == b"\xee" * 0x1000
    assert (edu.served_dma_reads, edu.served_dma_writes) == (0, 0)
    bus_master(edu, True)  # and with it, DMA works
    to_edu(edu, IOVA, 0x1000)
    to_ram(edu, IOVA + 0x2000, 0x1000)
    assert bytes(window.buffer[0x2000:0x3000]) == PATTERN


def test_no_dma_outside_the_windows(edu):
    window = edu.dma_map(IOVA, WINDOW)
    bus_master(edu, True)
    to_ram(edu, IOVA + WINDOW - 8, 16)  # straddles the end
    to_ram(edu, 0x800000, 16)  # never mapped
    assert edu.served_dma_writes == 0
    assert bytes(window.buffer) == bytes(WINDOW)
    assert_serving(edu)


def test_no_dma_into_a_read_only_window(edu):
    window = edu.dma_map(IOVA, WINDOW, writable=False)
    bus_master(edu, True)
    to_ram(edu, IOVA, 16)
    assert edu.served_dma_writes == 0 and bytes(window.buffer[:16]) == bytes(16)


def test_no_dma_after_unmap(edu):
    window = edu.dma_map(IOVA, WINDOW)
    edu.dma_unmap(IOVA, WINDOW)
    edu.windows.append(window)  # the client would still answer: the server must not ask
    bus_master(edu, True)
    to_ram(edu, IOVA, 16)
    assert edu.served_dma_writes == 0
