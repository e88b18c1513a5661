# SPDX-License-Identifier: BSD-3-Clause
"""Connection churn: 1,000 clients in a row, each leaving abruptly; nothing accumulates.

Every cycle, against one real server process: connect, VERSION, read what the previous
client wrote (edu liveness: device state is kept), write its own, DMA_MAP a memfd,
SET_IRQS INTx and ERR with eventfds, then close the socket abruptly (every other
cycle in the middle of a message).  The next client connects right away, without
waiting: it must be served, not refused.  Each time the server must hold exactly its
idle fds and mappings plus the new client's socket; RSS must stay flat (the figures
are printed: `pytest -s`).
"""
from __future__ import annotations

import os
import time

from vfu_platform.testing import ARRIVE, Resources, ProcessServer
from vfu_platform.backends.sim import edu
from vfu_platform.client import make_eventfd
from vfu_platform.protocol.constants import Command
from vfu_platform.protocol.header import HEADER

CYCLES = 1000
TRIGGER_EVENTFD = 0x24


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def with_one_client(baseline: Resources) -> Resources:
    return Resources(tuple(sorted(baseline.fds + ("socket",))), baseline.memfd_maps, baseline.threads)


def test_thousand_abrupt_clients_leave_nothing_behind(vfu_server) -> None:
    server: ProcessServer = vfu_server("edu")
    baseline = server.idle_baseline()
    attached = with_one_client(baseline)
    rss: dict[int, int] = {}
    client = server.connect()
    for k in range(CYCLES):
        # The previous client is gone: the server holds its idle set plus this client's socket.
        now = server.wait_resources(attached, timeout=ARRIVE)
        assert now == attached, f"cycle {k}: {now.describe()}, expected {attached.describe()}\n{now.fds}"
        if k:
            assert client.read32(0, edu.REG_LIVENESS) == ~(k - 1) & 0xFFFF_FFFF, f"cycle {k}: state lost"
        client.write32(0, edu.REG_LIVENESS, k)
        ram = os.memfd_create("churn-dma")
        os.ftruncate(ram, 0x4000)
        client.dma_map(0x100000, 0x4000, fd=ram)
        os.close(ram)
        trigger, err = make_eventfd(), make_eventfd()
        client.set_irqs(0, TRIGGER_EVENTFD, 0, 1, [trigger])
        client.set_irqs(3, TRIGGER_EVENTFD, 0, 1, [err])
        os.close(trigger)
        os.close(err)
        if k % 2:
            client.send_raw(HEADER.pack(9, Command.REGION_WRITE, 40, 0, 0) + b"\0" * 11)  # half a message
        client.channel.sock.close()  # abrupt: no goodbye
        if k in (0, 99, 499, CYCLES - 1):
            rss[k] = rss_kib(server.pid)
        client = server.connect()  # at once: must be served
    client.close()
    server.clients.clear()
    deadline = time.monotonic() + ARRIVE
    while server.resources() != baseline and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.resources() == baseline
    print(f"\nchurn: {CYCLES} cycles; server fds {len(baseline.fds)} idle, {len(attached.fds)} with a client, "
          f"every cycle; memfd maps {len(baseline.memfd_maps)}; RSS KiB after cycle "
          + ", ".join(f"{k + 1}: {v}" for k, v in rss.items()))
    assert rss[CYCLES - 1] - rss[99] < 4096, f"RSS grows with clients: {rss}"
    assert server.alive() and "Traceback" not in server.stderr()
