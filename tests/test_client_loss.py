# SPDX-License-Identifier: BSD-3-Clause
"""A client that dies at any point leaves nothing behind in the server.

Each scenario runs a real client process that stops at an interesting point and is
then killed with SIGKILL (so the kernel, not the client, closes its socket, memfds and
eventfds).  Afterwards the server must hold exactly what it held when idle (its fds,
its memfd mappings, its threads, read from /proc), and the next client must find the
device state the dead one left (edu liveness and factorial, gpio scratch) with the IRQ
state cleared.
"""
from __future__ import annotations

import select
import signal
import socket
import subprocess
import time
from collections.abc import Callable

import pytest

from conftest import REPO
from vfu_platform.testing import ARRIVE, NO_IRQ, PYTHON, Resources, ProcessServer, install_intx, intx_status, intx_unmask, irq_reg
from vfu_platform.backends.sim import edu, gpio
from vfu_platform.bridge import irq_page
from vfu_platform.client import VfioUserClient

# The dying client.  argv: socket path, scenario.  It prints "ready" when it has reached
# the point where it is to be killed, then waits for the SIGKILL.
DRIVER = r'''
import mmap, os, sys, time, select
from vfu_platform.client import VfioUserClient, make_eventfd
from vfu_platform.protocol import messages as m
from vfu_platform.protocol.constants import Command
from vfu_platform.protocol.header import HEADER

path, scenario = sys.argv[1], sys.argv[2]
INTX, ERR, MSIX = 0, 3, 2
TRIGGER_EVENTFD, UNMASK_EVENTFD = 0x24, 0x14

def ready():
    print("ready", flush=True)
    time.sleep(60)

def memfd(size, name="vfu-test-dma"):
    fd = os.memfd_create(name)
    os.ftruncate(fd, size)
    return fd

def edu_state(client):
    client.write32(0, 0x04, 0x00C0FFEE)  # liveness
    client.write32(0, 0x08, 5)  # factorial

def gpio_state(client):
    client.write32(0, 0x08, 0x5CA7C4)  # scratch

if scenario == "connected":
    client = VfioUserClient.connect(path, negotiate=False)
    ready()

client = VfioUserClient.connect(path, negotiate=False)
if scenario == "mid-negotiation":
    version = m.Version(0, 0, None).pack() + b'{"capabilities":{"max_msg_fds":16}}' + b"\0"
    whole = HEADER.pack(1, Command.VERSION, 16 + len(version), 0, 0) + version
    client.send_raw(whole[: 16 + 10])  # header and part of the body
    ready()
if scenario == "version-unread":
    client.send(Command.VERSION, m.Version(0, 0, None).pack() + b"{}\0")
    time.sleep(0.2)  # the reply arrives and is never read
    ready()

client.negotiate()
model = "gpio" if client.read32(0, 0) == 0x47504F31 else "edu"
edu_state(client) if model == "edu" else gpio_state(client)

if scenario == "state-only":
    ready()
if scenario == "dma-mapped":
    client.dma_map(0x100000, 0x4000, fd=memfd(0x4000))
    client.dma_map(0x200000, 0x2000, fd=memfd(0x3000), offset=0x1000)
    client.dma_map(0x300000, 0x1000)  # no fd: served with DMA_READ/WRITE
    ready()
if scenario == "irqs-wired":
    client.set_irqs(INTX, TRIGGER_EVENTFD, 0, 1, [make_eventfd()])
    client.set_irqs(INTX, UNMASK_EVENTFD, 0, 1, [make_eventfd()])
    client.set_irqs(ERR, TRIGGER_EVENTFD, 0, 1, [make_eventfd()])
    ready()
if scenario == "msix-wired":
    vectors = [make_eventfd() for _ in range(5)]
    client.set_irqs(MSIX, TRIGGER_EVENTFD, 0, 5, vectors)
    client.write32(0, 0x108, 1)  # RAISE_0
    select.select([vectors[0]], [], [], 3)
    ready()
if scenario == "irq-active-pending":
    trigger = make_eventfd()
    client.set_irqs(INTX, TRIGGER_EVENTFD, 0, 1, [trigger])
    client.write32(0, 0x10, 0b111)  # gpio RAISE lines 0, 1, 2
    select.select([trigger], [], [], 3)
    while client.read32(2, 0xC04) != 2:  # IRQ_PENDING
        time.sleep(0.005)
    ready()
if scenario == "partial-message":
    fds = [make_eventfd(), make_eventfd()]
    body = m.IrqSet(20, TRIGGER_EVENTFD, MSIX, 0, 2).pack()
    message = HEADER.pack(99, Command.DEVICE_SET_IRQS, 16 + len(body) + 64, 0, 0) + body
    client.send_raw(message, fds)  # the message claims 64 bytes more than were sent
    ready()
if scenario == "sram-mapped":
    info, fd = client.region_info(1)
    sram = mmap.mmap(fd, info.size, offset=info.offset)
    sram[0:4] = b"sram"
    ready()
if scenario == "dma-read-wait":
    client.dma_map(0x100000, 0x1000)  # no fd: the server must ask for the data
    client.region_write(7, 0x04, (0x0006).to_bytes(2, "little"))  # memory + bus master
    client.write64(0, 0x80, 0x100000)  # DMA source: client RAM
    client.write64(0, 0x88, 0x40000)  # DMA destination: edu's buffer
    client.write64(0, 0x90, 0x100)
    client.write64(0, 0x98, 0x1 | 0x4)  # start, RAM -> EDU, IRQ when done
    while True:
        select.select([client.channel.sock], [], [], 3)
        client.channel.receive()
        frame = client.channel.next_frame()
        if frame is not None and frame.header.command == Command.DMA_READ:
            break
    ready()  # ... and never answer it
print("unknown scenario", scenario, flush=True)
sys.exit(2)
'''


class DyingClient:
    def __init__(self, server: ProcessServer, scenario: str) -> None:
        self.proc = subprocess.Popen(
            [PYTHON, "-c", DRIVER, server.socket_path, scenario],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=str(REPO),
        )
        assert self.proc.stdout is not None
        readable, _, _ = select.select([self.proc.stdout], [], [], 10)
        line = self.proc.stdout.readline().decode() if readable else ""
        if line.strip() != "ready":
            self.proc.kill()
            _, err = self.proc.communicate()
            raise AssertionError(f"client for {scenario!r} did not get ready: {line!r}\n{err.decode()}")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.proc.stdout.close()
        self.proc.stderr.close()


def assert_back_to(server: ProcessServer, baseline: Resources) -> None:
    now = server.wait_resources(baseline)
    extra = sorted(set(now.fds) - set(baseline.fds)) if now.fds != baseline.fds else []
    assert now == baseline, (
        f"server holds {now.describe()} after the client died, {baseline.describe()} when idle\n"
        f"fds now {now.fds}\nfds idle {baseline.fds}\nextra kinds {extra}\n"
        f"memfd maps now {now.memfd_maps}"
    )
    assert server.alive(), server.stderr()


def assert_irq_state_cleared(client: VfioUserClient, model: str) -> None:
    assert irq_reg(client, model, irq_page.IRQ_ACTIVE) == NO_IRQ
    assert irq_reg(client, model, irq_page.IRQ_PENDING) == 0
    lines = irq_reg(client, model, irq_page.IRQ_LINES)
    for line in range(lines):
        assert irq_reg(client, model, irq_page.IRQ_STATE_BASE + 4 * line) == 0, f"line {line}"
    assert not intx_status(client)


def assert_edu_state_kept(client: VfioUserClient) -> None:
    assert client.read32(0, edu.REG_LIVENESS) == ~0x00C0FFEE & 0xFFFF_FFFF
    deadline = time.monotonic() + ARRIVE
    while client.read32(0, edu.REG_STATUS) & edu.STATUS_COMPUTING:
        assert time.monotonic() < deadline
        time.sleep(0.002)
    assert client.read32(0, edu.REG_FACTORIAL) == 120


def assert_gpio_state_kept(client: VfioUserClient) -> None:
    assert client.read32(0, gpio.REG_SCRATCH) == 0x5CA7C4


SCENARIOS = [
    # (scenario, model, irq mode, device state was written)
    ("connected", "edu", None, False),
    ("mid-negotiation", "edu", None, False),
    ("version-unread", "edu", None, False),
    ("state-only", "edu", None, True),
    ("dma-mapped", "edu", None, True),
    ("dma-mapped", "gpio", None, True),
    ("irqs-wired", "edu", None, True),
    ("msix-wired", "gpio", "msix", True),
    ("irq-active-pending", "gpio", None, True),
    ("partial-message", "gpio", "msix", True),
    ("sram-mapped", "gpio", None, True),
    ("dma-read-wait", "edu", None, True),
]


@pytest.mark.parametrize(("scenario", "model", "irq_mode", "stateful"), SCENARIOS,
                         ids=[f"{s}-{m}" for s, m, _i, _st in SCENARIOS])
def test_client_killed_leaves_nothing_behind(vfu_server: Callable[..., ProcessServer], scenario: str,
                                             model: str, irq_mode: str | None, stateful: bool) -> None:
    server = vfu_server(model, irq_mode=irq_mode)
    baseline = server.idle_baseline()
    assert baseline.threads == 1
    dying = DyingClient(server, scenario)
    # While it lives, the client holds something in the server: at least its socket, and
    # the memfd windows it mapped or the eventfds it sent.
    def holds_what_it_should(during: Resources) -> bool:
        if during.fds.count("socket") != baseline.fds.count("socket") + 1:
            return False
        if scenario == "dma-mapped":
            return len(during.memfd_maps) == len(baseline.memfd_maps) + 2
        if scenario in ("irqs-wired", "msix-wired", "partial-message"):
            return len(during.fds) > len(baseline.fds) + 1
        return True

    deadline = time.monotonic() + ARRIVE
    while not holds_what_it_should(during := server.resources()):
        assert time.monotonic() < deadline, f"while the client lives the server holds {during}, idle {baseline}"
        time.sleep(0.005)
    dying.kill()
    assert_back_to(server, baseline)

    client = server.connect()
    assert_irq_state_cleared(client, model)
    if stateful:
        assert_edu_state_kept(client) if model == "edu" else assert_gpio_state_kept(client)
    client.close()
    server.clients.clear()
    assert_back_to(server, baseline)


def test_still_asserted_lines_reach_the_next_client(vfu_server: Callable[..., ProcessServer], vfu_eventfds) -> None:
    """Device state is kept: lines the dead client left asserted fire again, in order."""
    server = vfu_server("gpio")
    DyingClient(server, "irq-active-pending").kill()
    client = server.connect()
    assert_irq_state_cleared(client, "gpio")
    assert client.read32(0, gpio.REG_STATUS) == 0b111
    (trigger,) = vfu_eventfds(1)
    install_intx(client, trigger)
    for line in range(3):
        trigger.expect_one(what=f"line {line} for the new client")
        assert irq_reg(client, "gpio", irq_page.IRQ_ACTIVE) == line
        client.write32(0, gpio.line_register(line, gpio.LINE_ACK), 1)
        intx_unmask(client)
    trigger.expect_none()


def test_dma_interrupted_by_client_death_completes_for_the_next_client(vfu_server: Callable[..., ProcessServer],
                                                                       vfu_eventfds) -> None:
    server = vfu_server("edu")
    DyingClient(server, "dma-read-wait").kill()
    client = server.connect()
    # The transfer failed (its client is gone) but completed: the command bit is clear
    # and the requested completion interrupt is raised, waiting for the next client.
    assert client.read64(0, edu.REG_DMA_CMD) & edu.DMA_CMD_RUN == 0
    assert client.read32(0, edu.REG_IRQ_STATUS) == edu.DMA_IRQ
    (trigger,) = vfu_eventfds(1)
    install_intx(client, trigger)
    trigger.expect_one(what="the DMA completion IRQ")


def test_server_keeps_serving_after_many_deaths(vfu_server: Callable[..., ProcessServer]) -> None:
    server = vfu_server("edu")
    baseline = server.idle_baseline()
    for scenario in ("irqs-wired", "dma-mapped", "mid-negotiation"):
        DyingClient(server, scenario).kill()
    assert_back_to(server, baseline)
    with server.connect() as client:
        assert client.read32(0, edu.REG_ID) == edu.IDENTIFICATION
    server.clients.clear()


# --------------------------------------------------------------------------- one client at a time


def _expect_busy_refusal(sock: socket.socket, msg_id_sent: int = 0) -> None:
    """The refusal: an EBUSY error reply to the client's VERSION, then EOF."""
    import errno

    from vfu_platform.protocol.header import HEADER

    sock.settimeout(2)
    data = b""
    try:
        while len(data) < 16 and (chunk := sock.recv(16 - len(data))):
            data += chunk
        rest = sock.recv(64)
    except ConnectionResetError:
        rest = b""
    assert len(data) == 16, f"the second client must get an error reply, got {data!r}"
    msg_id, command, size, flags, error = HEADER.unpack(data)
    assert (msg_id, command, size, flags, error) == (msg_id_sent, 1, 16, 0x21, errno.EBUSY)
    assert rest == b"", "then EOF"


def test_second_client_gets_busy_and_the_first_keeps_working(vfu_server: Callable[..., ProcessServer]) -> None:
    server = vfu_server("gpio")
    baseline = server.idle_baseline()
    first = server.connect()
    first.write32(0, gpio.REG_SCRATCH, 1)
    second = server.raw_socket()
    started = time.monotonic()
    second.sendall(b"\x00\x00\x01\x00\x18\x00\x00\x00" + bytes(8) + b"\x00\x00\x00\x00{}\x00\x00")  # VERSION, id 0
    _expect_busy_refusal(second)
    assert time.monotonic() - started < 1.0, "the refusal must be immediate, not a timeout"
    second.close()
    first.write32(0, gpio.REG_SCRATCH, 2)
    assert first.read32(0, gpio.REG_SCRATCH) == 2
    first.close()
    server.clients.clear()
    assert_back_to(server, baseline)


def test_second_client_that_sends_a_message_is_still_refused(vfu_server: Callable[..., ProcessServer]) -> None:
    server = vfu_server("edu")
    first = server.connect()
    second = server.raw_socket()
    try:
        second.sendall(b"\x01\x00\x01\x00\x20\x00\x00\x00" + bytes(24))
    except (BrokenPipeError, ConnectionResetError):
        pass
    _expect_busy_refusal(second, msg_id_sent=1)
    second.close()
    assert first.read32(0, 0) == edu.IDENTIFICATION


def test_reconnect_right_after_close_is_accepted(vfu_server: Callable[..., ProcessServer]) -> None:
    """A client that closes and reconnects at once must not be taken for a second client."""
    server = vfu_server("edu")
    for value in range(5):
        client = server.connect()
        if value:
            assert client.read32(0, edu.REG_LIVENESS) == ~(value - 1) & 0xFFFF_FFFF
        client.write32(0, edu.REG_LIVENESS, value)
        client.close()
    server.clients.clear()


def test_client_closing_its_socket_cleanly(vfu_server: Callable[..., ProcessServer], vfu_memfds) -> None:
    server = vfu_server("edu")
    baseline = server.idle_baseline()
    client = server.connect()
    window = vfu_memfds(0x2000)
    client.dma_map(0x100000, 0x2000, fd=window.fd)
    client.channel.sock.shutdown(socket.SHUT_WR)  # EOF, while still able to read
    assert client.channel.sock.recv(16) == b""
    client.close()
    server.clients.clear()
    assert_back_to(server, baseline)



# --------------------------------------------------------------------------- the server drops a live client


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def test_dropped_client_that_keeps_signalling_its_resamplefd(vfu_server: Callable[..., ProcessServer],
                                                            vfu_eventfds) -> None:
    """The server drops a client that is still alive (a framing error); the client's
    side (KVM, in QEMU) keeps writing the resample eventfd.  The server must have stopped
    watching it: no stale epoll registration, no busy loop, nothing held."""
    server = vfu_server("edu")
    baseline = server.idle_baseline()
    client = server.connect()
    trigger, resample = vfu_eventfds(2)
    install_intx(client, trigger)
    client.set_irqs(0, 0x14, 0, 1, [resample.fd])  # UNMASK|EVENTFD: the resamplefd
    client.send_raw(b"\x07\x00\x01\x00\x08\x00\x00\x00" + bytes(8))  # msg_size 8 < 16: fatal
    client.channel.sock.settimeout(ARRIVE)
    assert client.channel.sock.recv(16) == b"", "the server drops the connection"
    assert_back_to(server, baseline)
    resample.signal()
    before = cpu_ticks(server.pid)
    time.sleep(0.5)
    spent = cpu_ticks(server.pid) - before
    assert spent < 10, f"the idle server used {spent} clock ticks in 0.5 s: it is spinning on a stale fd"
    assert resample.pending(), "nobody in the server may read the dropped client's resamplefd"
    with server.connect() as again:
        assert again.read32(0, edu.REG_ID) == edu.IDENTIFICATION
    server.clients.clear()


def test_msix_function_mask_left_by_a_dead_client_still_holds(vfu_server: Callable[..., ProcessServer],
                                                               vfu_eventfds) -> None:
    """Config space is device state and survives the client; what it says must hold."""
    server = vfu_server("gpio", irq_mode="msix")
    with server.connect() as first:
        first.region_write(7, 0x42, (0xC000).to_bytes(2, "little"))  # MSI-X enable + function mask
    server.clients.clear()
    client = server.connect()
    assert int.from_bytes(client.region_read(7, 0x42, 2), "little") & 0xC000 == 0xC000
    vectors = vfu_eventfds(5)
    client.set_irqs(2, 0x24, 0, 5, [v.fd for v in vectors])
    client.write32(0, gpio.line_register(0, gpio.LINE_RAISE), 1)
    vectors[0].expect_none(what="a vector while the function mask (kept in config) is set")
    client.region_write(7, 0x42, (0x8000).to_bytes(2, "little"))
    vectors[0].expect_one(what="vector 0 after the function unmask")


def test_intx_disable_left_by_a_dead_client_still_holds(vfu_server: Callable[..., ProcessServer],
                                                        vfu_eventfds) -> None:
    server = vfu_server("edu")
    with server.connect() as first:
        first.region_write(7, 0x04, (0x0400).to_bytes(2, "little"))
    server.clients.clear()
    client = server.connect()
    (trigger,) = vfu_eventfds(1)
    install_intx(client, trigger)
    client.write32(0, edu.REG_IRQ_RAISE, 1)
    trigger.expect_none(what="INTx while COMMAND.INTX_DISABLE (kept in config) is set")
    client.region_write(7, 0x04, (0).to_bytes(2, "little"))
    trigger.expect_one()
