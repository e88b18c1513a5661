# SPDX-License-Identifier: BSD-3-Clause
"""`vfu-platform status`: a real server process, its SOCKET.ctl status socket, a real client
changing what the status shows (DMA maps, counters, the IRQ engine's active line and queue)."""
from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time
from collections.abc import Callable
from typing import Any

from conftest import REPO
from vfu_platform.testing import PYTHON, ProcessServer, install_intx, serve_in_subprocess
from vfu_platform.backends.sim import gpio
from vfu_platform.operator_cli import status_path


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "vfu_platform", *args], capture_output=True, text=True,
                          cwd=str(REPO), timeout=30)


def status(server: ProcessServer) -> dict[str, Any]:
    done = run_cli("status", "--socket", server.socket_path, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_idle_server(vfu_server: Callable[..., ProcessServer]) -> None:
    server = vfu_server("edu")
    state = status(server)
    assert state["pid"] == server.pid
    assert state["client"] == {"connected": False, "since": None, "connected_seconds": None,
                               "sessions_served": 0, "refused": 0}
    assert state["device"]["name"] == "edu" and state["device"]["kind"] == "model"
    assert (state["device"]["vendor"], state["device"]["device"]) == (0x1234, 0x11E8)
    assert state["dma"] == {"maps": 0}
    assert state["irq"]["route"] == "intx"
    assert state["irq"]["active"] is None and state["irq"]["pending"] == []
    assert state["irq"]["masked"] == [0]  # an automasked line counts as masked until a route is live
    assert state["counters"] == {} and state["counters_of"] is None


def test_table_form(vfu_server: Callable[..., ProcessServer]) -> None:
    server = vfu_server("edu")
    done = run_cli("status", "--socket", server.socket_path)
    assert done.returncode == 0, done.stderr
    assert "device:          edu (model, bridge) 1234:11e8 class 00ff00" in done.stdout
    assert "client:          no" in done.stdout
    assert "irq engine:      route intx, 1 lines, active none, pending [], masked [0]" in done.stdout


def test_connected_client_dma_and_counters(vfu_server: Callable[..., ProcessServer], vfu_memfds) -> None:
    server = vfu_server("edu")
    client = server.connect()
    client.dma_map(0x10_0000, 0x1000, fd=vfu_memfds(0x1000).fd)
    client.dma_map(0x20_0000, 0x1000, fd=vfu_memfds(0x1000).fd)
    client.region_read(0, 0, 4)
    state = status(server)
    assert state["client"]["connected"] is True
    assert state["client"]["sessions_served"] == 1
    assert state["client"]["since"] and 0 <= state["client"]["connected_seconds"] < 60
    assert state["dma"] == {"maps": 2}
    assert state["counters_of"] == "current client"
    assert state["counters"]["VERSION"] == 1
    assert state["counters"]["DMA_MAP"] == 2
    assert state["counters"]["REGION_READ"] == 1
    client.close()
    deadline = time.monotonic() + 5
    while status(server)["client"]["connected"]:
        assert time.monotonic() < deadline, "the client never went away"
        time.sleep(0.02)
    gone = status(server)
    assert gone["dma"] == {"maps": 0} and gone["counters_of"] == "last client"
    assert gone["counters"]["DMA_MAP"] == 2


def test_irq_active_and_fifo_queue(vfu_server: Callable[..., ProcessServer], vfu_eventfds) -> None:
    server = vfu_server("gpio")
    client = server.connect()
    (trigger,) = vfu_eventfds(1)
    install_intx(client, trigger)
    client.write32(0, gpio.REG_RAISE, 0b1101)
    trigger.expect_one(what="INTx for line 0")
    irq = status(server)["irq"]
    assert irq["active"] == 0
    assert irq["pending"] == [2, 3]
    assert set(irq["masked"]) >= {0, 2, 3}  # level lines stay masked on the device until their EOI
    assert irq["intx_asserted"] is True and irq["signals"] == 1
    assert status(server)["device"]["vendor"] == 0x1234


def test_status_socket_mode_follows_the_main_socket(vfu_server: Callable[..., ProcessServer]) -> None:
    server = vfu_server("edu")
    main, ctl = os.stat(server.socket_path), os.stat(status_path(server.socket_path))
    assert stat.S_ISSOCK(ctl.st_mode)
    assert stat.S_IMODE(ctl.st_mode) == stat.S_IMODE(main.st_mode)
    assert (ctl.st_uid, ctl.st_gid) == (main.st_uid, main.st_gid)


def test_status_socket_left_by_a_killed_server_is_replaced(tmp_path) -> None:
    first = serve_in_subprocess(directory=tmp_path, model="edu")
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait()
    assert os.path.exists(status_path(first.socket_path))  # left behind
    second = serve_in_subprocess(directory=tmp_path, model="edu")
    try:
        assert "no status socket" not in second.stderr()
        assert status(second)["pid"] == second.pid
    finally:
        assert second.stop() == 0
    assert not os.path.exists(status_path(second.socket_path)), "the status socket was left behind"


def test_device_commands_still_reach_the_device(vfu_server: Callable[..., ProcessServer]) -> None:
    server = vfu_server("pl061")
    done = run_cli("control", "--control", status_path(server.socket_path), "status")
    assert done.returncode == 0, done.stderr + done.stdout
    assert not done.stdout.startswith("{")  # pl061's own status, not the server's
    done = run_cli("control", "--control", status_path(server.socket_path), "server", "nonsense")
    assert done.returncode == 1 and "known: server status" in done.stdout


def test_no_server_is_one_line(tmp_path) -> None:
    done = run_cli("status", "--socket", str(tmp_path / "nothing.sock"))
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert "is a server running?" in done.stderr
