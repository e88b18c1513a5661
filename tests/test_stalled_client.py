# SPDX-License-Identifier: BSD-3-Clause
"""Stalled clients: dropped after the message timeout with a logged reason; the next client is served.

Real server processes started with `--message-timeout 0.5` (the default is 5 s, QEMU's
x-msg-timeout).  Stalls: a client that connects and sends nothing, one that sends half
a header, one that stops in the middle of a message after VERSION, one that never reads
its replies.  A negotiated client that just sends nothing is idle, not stalled: it stays.
A client arriving during a stall waits and is served once the stalled one is dropped; a
client arriving while a healthy one is served is refused at once with EBUSY.
"""
from __future__ import annotations

import errno
import subprocess
import time
from collections.abc import Callable

import pytest

from vfu_platform.testing import PYTHON, ProcessServer
from vfu_platform.client import VfioUserClient, VfioUserError
from vfu_platform.config import ServerSection
from vfu_platform.protocol import messages as m
from vfu_platform.protocol.constants import Command
from vfu_platform.protocol.header import HEADER
from vfu_platform.server.session import SessionOptions

TIMEOUT = 0.5


def fast_server(factory: Callable[..., ProcessServer]) -> ProcessServer:
    server = factory("edu", extra=["--message-timeout", str(TIMEOUT), "-v"])
    _IDLE_SOCKETS[id(server)] = server.idle_baseline().fds.count("socket")
    return server


#: sockets a server holds with no client (the listener and its control socket), by server
_IDLE_SOCKETS: dict[int, int] = {}


def server_sockets(server: ProcessServer) -> int:
    """Client sockets the server holds, plus one (so 1 means idle, 2 one client)."""
    count = server.resources().fds.count("socket")
    idle = _IDLE_SOCKETS.setdefault(id(server), count)
    return count - idle + 1


def wait_dropped(server: ProcessServer, limit: float = 5.0) -> float:
    """Seconds until the server holds no client socket, counted from when it held one."""
    deadline = time.monotonic() + 3.0
    while server_sockets(server) < 2:  # accepted yet?
        assert time.monotonic() < deadline, "the client was never accepted"
        time.sleep(0.005)
    start = time.monotonic()
    while server_sockets(server) > 1:
        assert time.monotonic() - start < limit, "the stalled client was never dropped"
        time.sleep(0.01)
    return time.monotonic() - start


def version_message(msg_id: int = 0) -> bytes:
    body = m.Version(0, 0, None).pack() + b"{}\0"
    return HEADER.pack(msg_id, Command.VERSION, 16 + len(body), 0, 0) + body


STALLS = {
    "sends-nothing": (lambda sock: None, "no VERSION within"),
    "half-a-header": (lambda sock: sock.sendall(version_message()[:8]), "no VERSION within"),
    "half-a-message": (lambda sock: (sock.sendall(version_message()), sock.recv(4096),
                                    sock.sendall(HEADER.pack(5, Command.REGION_READ, 32, 0, 0) + b"\0" * 5)),
                       "a message stayed incomplete"),
}


@pytest.mark.parametrize("stall", list(STALLS))
def test_a_stalled_client_is_dropped_and_the_next_one_served(vfu_server, stall: str) -> None:
    server = fast_server(vfu_server)
    act, reason = STALLS[stall]
    first = server.raw_socket()
    act(first)
    started = time.monotonic()
    # A second client meanwhile waits for the stalled one to go, then is served.
    second = server.connect(timeout=5.0)
    waited = time.monotonic() - started
    assert 0.2 < waited < TIMEOUT + 2.0, f"the second client waited {waited:.2f} s"
    assert second.read32(0, 0) == 0x010000ED
    first.settimeout(2)
    assert first.recv(4096) == b"", "the stalled client's connection is closed"
    first.close()
    assert f"dropping a stalled client: {reason}" in server.stderr()
    second.close()


def test_an_idle_negotiated_client_is_not_dropped(vfu_server) -> None:
    """A guest that leaves its device alone sends nothing for minutes: that is no stall."""
    server = fast_server(vfu_server)
    client = server.connect()
    time.sleep(TIMEOUT * 4)
    assert client.read32(0, 0) == 0x010000ED
    assert "stalled" not in server.stderr()


def test_a_client_that_never_reads_is_dropped(vfu_server) -> None:
    server = fast_server(vfu_server)
    sock = server.raw_socket()
    sock.sendall(version_message())
    sock.setblocking(False)
    request = HEADER.pack(2, Command.REGION_READ, 32, 0, 0) + m.RegionAccess(0, 7, 256).pack()
    try:
        for _ in range(100_000):
            sock.send(request)
    except BlockingIOError:
        pass
    assert wait_dropped(server) < TIMEOUT + 3.0
    assert "did not take a message within" in server.stderr()
    sock.close()
    with server.connect() as client:
        assert client.read32(0, 0) == 0x010000ED
    server.clients.clear()


def test_a_second_client_while_one_is_served_gets_ebusy_at_once(vfu_server) -> None:
    server = fast_server(vfu_server)
    first = server.connect()
    second = server.raw_socket()
    second.sendall(version_message())
    second.settimeout(2)
    started = time.monotonic()
    data = second.recv(16)
    assert time.monotonic() - started < 1.0
    assert HEADER.unpack(data) == (0, Command.VERSION, 16, 0x21, errno.EBUSY)  # the answer to its VERSION
    assert second.recv(16) == b""
    second.close()
    assert first.read32(0, 0) == 0x010000ED
    assert "refusing a second client" in server.stderr()


def test_the_busy_client_sees_a_clear_error_from_the_client_library(vfu_server) -> None:
    server = fast_server(vfu_server)
    server.connect()
    for _ in range(5):  # whatever the timing, the reason reaches the client
        with pytest.raises(VfioUserError) as info:
            VfioUserClient.connect(server.socket_path, timeout=2.0)
        assert info.value.errno == errno.EBUSY and info.value.command == Command.VERSION


def test_a_refused_client_that_sends_nothing_still_gets_the_reason(vfu_server) -> None:
    server = fast_server(vfu_server)
    server.connect()
    sock = server.raw_socket()
    sock.settimeout(3)
    assert HEADER.unpack(sock.recv(16)) == (0, Command.VERSION, 16, 0x21, errno.EBUSY)
    assert sock.recv(16) == b""


def test_the_message_timeout_is_configurable_and_defaults_to_qemus(tmp_path) -> None:
    assert SessionOptions().message_timeout == 5.0
    assert ServerSection().message_timeout == 5.0
    with pytest.raises(ValueError):
        SessionOptions(message_timeout=0)
    bad = subprocess.run([PYTHON, "-m", "vfu_platform", "serve", "--socket", str(tmp_path / "s"),
                          "--message-timeout", "0"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "more than 0 seconds" in bad.stderr and "Traceback" not in bad.stderr
    config = tmp_path / "c.toml"
    config.write_text("[server]\nmessage_timeout = -1\n")
    bad = subprocess.run([PYTHON, "-m", "vfu_platform", "serve", "--socket", str(tmp_path / "s"),
                          "--config", str(config)], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "message_timeout" in bad.stderr


def test_config_message_timeout_is_used(vfu_server, tmp_path) -> None:
    config = tmp_path / "fast.toml"
    config.write_text(f"[server]\nmessage_timeout = {TIMEOUT}\n")
    server = vfu_server("edu", config=str(config))
    server.idle_baseline()
    sock = server.raw_socket()
    assert wait_dropped(server) < TIMEOUT + 2.0
    sock.close()
    assert "no VERSION within 0.5 s" in server.stderr()
