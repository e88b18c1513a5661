# SPDX-License-Identifier: BSD-3-Clause
"""One process, many devices: a config's [[devices]] each on its own socket.

A real server process serves them all from one event loop; each device keeps its own
client, IRQ engine, DMA table and register state, and a bad client of one device (one
that floods requests and never reads the replies, one that stalls in mid-message)
does not hold up the others: the server never waits on one client's socket.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from vfu_platform.backends.sim.edu_map import REG_LIVENESS
from vfu_platform.client import VfioUserClient
from vfu_platform.protocol import messages as m
from vfu_platform.protocol.constants import Command
from vfu_platform.protocol.header import HEADER
from vfu_platform.testing import PYTHON

REPO = Path(__file__).resolve().parents[1]
BAR0 = 0
COUNT = 3


def write_config(directory: Path, text: str) -> Path:
    path = directory / "devices.toml"
    path.write_text(text)
    return path


def multi_config(directory: Path, message_timeout: float = 5.0) -> Path:
    return write_config(directory, f"""
[server]
message_timeout = {message_timeout}

[[devices]]
socket = "{directory}/edu{{n}}.sock"
count = {COUNT}
device = {{ model = "edu" }}

[[devices]]
socket = "{directory}/gpio.sock"
device = {{ model = "gpio", options = {{ lines = 4 }} }}
bridge = {{ irq_mode = "msix" }}
trace = "{directory}/gpio.trace"
""")


class MultiServer:
    def __init__(self, config: Path, directory: Path) -> None:
        self.stderr_path = directory / "server.stderr"
        with open(self.stderr_path, "wb") as stderr:
            self.proc = subprocess.Popen([PYTHON, "-m", "vfu_platform", "serve", "--config", str(config)],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
                                         cwd=str(REPO))
        self.sockets = [str(directory / f"edu{n}.sock") for n in range(COUNT)] + [str(directory / "gpio.sock")]
        deadline = time.monotonic() + 10
        while self.stderr().count("vfu-platform: serving") < len(self.sockets):
            assert self.proc.poll() is None and time.monotonic() < deadline, self.stderr()
            time.sleep(0.02)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(10)


@pytest.fixture
def multi(tmp_path: Path):
    server = MultiServer(multi_config(tmp_path), tmp_path)
    yield server
    if server.proc.poll() is None:
        server.proc.kill()
        server.proc.wait()


def test_each_device_answers_on_its_socket_with_its_own_state(multi: MultiServer) -> None:
    clients = [VfioUserClient.connect(path) for path in multi.sockets]
    try:
        for n, client in enumerate(clients[:COUNT]):
            client.write32(BAR0, REG_LIVENESS, 0x100 + n)
        for n, client in enumerate(clients[:COUNT]):
            assert client.read32(BAR0, REG_LIVENESS) == ~(0x100 + n) & 0xFFFFFFFF
        assert clients[COUNT].region_read(BAR0, 0, 4) == b"1OPG"  # the gpio model's id
    finally:
        for client in clients:
            client.close()
    assert multi.stop() == 0
    assert not any(os.path.exists(path) for path in multi.sockets)  # every socket file removed
    assert "Traceback" not in multi.stderr()


def test_dma_tables_are_per_device(multi: MultiServer) -> None:
    fd = os.memfd_create("guest-ram")
    os.ftruncate(fd, 1 << 20)
    with VfioUserClient.connect(multi.sockets[0]) as first, VfioUserClient.connect(multi.sockets[1]) as second:
        first.dma_map(0x100000, 1 << 20, fd=fd)
        status = [json.loads(subprocess.run([PYTHON, "-m", "vfu_platform", "status", "--socket", path, "--json"],
                                            capture_output=True, text=True, check=True, cwd=str(REPO)).stdout)
                  for path in multi.sockets[:2]]
        second.sync()
    os.close(fd)
    assert [s["dma"]["maps"] for s in status] == [1, 0]


def test_a_client_that_floods_and_never_reads_holds_up_no_other_device(tmp_path: Path) -> None:
    server = MultiServer(multi_config(tmp_path, message_timeout=5.0), tmp_path)
    try:
        flooder = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        flooder.connect(server.sockets[0])
        body = m.Version(0, 0, None).pack() + b"{}\0"
        flooder.sendall(HEADER.pack(0, Command.VERSION, 16 + len(body), 0, 0) + body)
        flooder.setblocking(False)
        read = HEADER.pack(2, Command.REGION_READ, 32, 0, 0) + m.RegionAccess(0, 7, 256).pack()
        sent = 0
        try:
            for _ in range(200_000):  # until both socket buffers are full: the server's replies back up
                flooder.send(read)
                sent += 1
        except BlockingIOError:
            pass
        assert sent > 100
        # Meanwhile the other devices answer at once (a 1 s timeout: far below the 5 s a blocked
        # server would wait for the flooder before it is dropped).
        for path in server.sockets[1:COUNT]:
            with VfioUserClient.connect(path, timeout=1.0) as client:
                for value in range(200):
                    client.write32(BAR0, REG_LIVENESS, value)
                assert client.read32(BAR0, REG_LIVENESS) == ~199 & 0xFFFFFFFF
        with VfioUserClient.connect(server.sockets[COUNT], timeout=1.0) as client:
            assert client.region_read(BAR0, 0, 4) == b"1OPG"
        # The flooder is dropped after message_timeout with a reason, and its device serves the next client.
        deadline = time.monotonic() + 10
        while "did not take a message within 5 s" not in server.stderr():
            assert time.monotonic() < deadline, server.stderr()
            time.sleep(0.05)
        flooder.close()
        with VfioUserClient.connect(server.sockets[0], timeout=2.0) as client:
            client.write32(BAR0, REG_LIVENESS, 7)
            assert client.read32(BAR0, REG_LIVENESS) == ~7 & 0xFFFFFFFF
    finally:
        assert server.stop() == 0
    assert "Traceback" not in server.stderr()


def test_a_stalled_client_of_one_device_holds_up_no_other(multi: MultiServer) -> None:
    stalled = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stalled.connect(multi.sockets[0])
    stalled.sendall(b"\x00" * 8)  # half a header, then nothing
    with VfioUserClient.connect(multi.sockets[1], timeout=1.0) as client:
        client.write32(BAR0, REG_LIVENESS, 1)
        assert client.read32(BAR0, REG_LIVENESS) == ~1 & 0xFFFFFFFF
    stalled.close()


@pytest.mark.parametrize(
    ("config", "argv", "message"),
    [
        ('[[devices]]\nsocket = "{d}/a.sock"\n[[devices]]\nsocket = "{d}/a.sock"\n', [], "socket {d}/a.sock is listed twice"),
        ('[[devices]]\nsocket = "{d}/a.sock"\ncount = 2\n', [], 'count = 2 needs "{{n}}" in socket'),
        ('[[devices]]\nsocket = "{d}/a.sock"\n', ["--socket", "{d}/b.sock"], "--socket and a config listing 1 [[devices]]"),
        ('[[devices]]\nsocket = "{d}/a.sock"\n', ["--device", "gpio"], "--device with [[devices]] in the config"),
        ('[device]\nmodel = "gpio"\n[[devices]]\nsocket = "{d}/a.sock"\n', [], "[device]/[bridge] and [[devices]] together"),
        ('[[devices]]\nsocket = "{d}/a.sock"\n[[devices]]\nsocket = "{d}/b.sock"\ndevice = {{ model = "nosuch" }}\n',
         [], "{d}/b.sock: "),
        ('[[devices]]\nsocket = "{d}/a.sock"\ndevice = {{ model = "nosuch" }}\n', [], "nosuch"),
        ("", [], "--socket is required"),
    ],
    ids=["socket-twice", "count-without-n", "socket-and-devices", "device-flag-and-devices", "device-and-devices",
         "bad-model-names-its-socket", "bad-model-alone", "no-socket"],
)
def test_a_bad_device_list_is_one_line(tmp_path: Path, config: str, argv: list[str], message: str) -> None:
    path = write_config(tmp_path, config.format(d=tmp_path))
    result = subprocess.run([PYTHON, "-m", "vfu_platform", "serve", "--config", str(path),
                             *[a.format(d=tmp_path) for a in argv]],
                            capture_output=True, text=True, timeout=30, cwd=str(REPO))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message.format(d=tmp_path) in lines[0], result.stderr
    assert not list(tmp_path.glob("*.sock"))  # nothing left listening
