# SPDX-License-Identifier: BSD-3-Clause
"""`vfu-platform trace summary FILE [--json]` on real traces of served models.

The numbers are checked against what each test did to the server; a trace with
several runs, a cut-off last line and a file that is no trace are read as a user
would, through the command line in a subprocess.
"""
from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO
from vfu_platform.testing import PYTHON, ProcessServer, install_intx, intx_unmask, serve_in_subprocess, wait_until
from vfu_platform.backends.sim import edu, gpio
from vfu_platform.client import VfioUserError
from vfu_platform.trace import EventRecord, read_trace


def summary_cli(path: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "vfu_platform", "trace", "summary", path, *args],
                          capture_output=True, text=True, timeout=60, cwd=str(REPO))


def summary_json(path: str) -> dict[str, Any]:
    result = summary_cli(path, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def exercise_edu(server: ProcessServer, eventfd_factory: Callable[[int], list], interrupts: int) -> None:
    """Two clients; the second reads 5 times, fails 3 requests and takes `interrupts` INTx."""
    with server.connect() as client:
        client.sync()
    client = server.connect()
    (trigger,) = eventfd_factory(1)
    install_intx(client, trigger)
    for _ in range(5):
        assert client.read32(0, edu.REG_ID) == 0x010000ED
    for region in (6, 6):  # the ROM region has size 0: EINVAL
        with pytest.raises(VfioUserError):
            client.region_read(region, 0, 4)
    with pytest.raises(VfioUserError):
        client.set_irqs(9, 0x24, 0, 1, [])  # no IRQ index 9: EINVAL
    for _ in range(interrupts):
        client.write32(0, edu.REG_IRQ_RAISE, 1)
        trigger.expect_one()
        client.write32(0, edu.REG_IRQ_ACK, 1)
        intx_unmask(client)
    client.close()
    server.clients.clear()
    assert server.trace_path is not None
    # Both departures are seen before the server is stopped (else the last is "server shutting down").
    wait_until(lambda: len([r for r in read_trace(server.trace_path, tolerate_truncation=True)  # type: ignore[arg-type]
                            if isinstance(r, EventRecord) and r.event == "client-gone"]) == 2)


def test_counts_errors_latencies_and_clients(vfu_server: Callable[..., ProcessServer], vfu_eventfds) -> None:
    server = vfu_server("edu", trace=True)
    exercise_edu(server, vfu_eventfds, interrupts=4)
    assert server.stop() == 0
    summary = summary_json(server.trace_path)  # type: ignore[arg-type]
    assert summary["truncated"] is False
    (run,) = summary["runs"]
    assert run["header"]["device"] == "edu" and run["header"]["pid"] == server.pid
    commands = run["commands"]
    assert commands["VERSION"]["messages"] == 2
    # 5 good reads, 2 failed ones (the ROM region has size 0), each an EINVAL
    assert commands["REGION_READ"]["messages"] == 7
    assert commands["REGION_READ"]["errors"] == 2 and commands["REGION_READ"]["errors_by_errno"] == {"EINVAL": 2}
    # install_intx, the failed one, and one unmask per interrupt
    assert commands["DEVICE_SET_IRQS"]["messages"] == 1 + 1 + 4
    assert commands["DEVICE_SET_IRQS"]["errors_by_errno"] == {"EINVAL": 1}
    assert commands["REGION_WRITE"]["messages"] == 2 * 4 and commands["REGION_WRITE"]["errors"] == 0
    clients = run["clients"]
    assert clients["connected"] == 2 and clients["gone"] == 2 and clients["refused"] == 0
    assert sum(clients["gone_reasons"].values()) == 2
    assert all("connection closed" in reason for reason in clients["gone_reasons"]), clients
    line = run["irq_lines"]["0"]
    assert line["transitions"] == {"delivered": 4, "eoi": 4, "raised": 4}
    assert line["eoi_sources"] == {"unmask message": 4}
    for latency in (line["raise_to_deliver"], line["deliver_to_eoi"]):
        assert latency["count"] == 4
        assert 0 <= latency["p50_us"] <= latency["p99_us"] <= latency["max_us"]
    assert line["deliver_to_eoi"]["max_us"] > 0  # the EOI took a message round trip


def test_the_table_for_people(vfu_server: Callable[..., ProcessServer], vfu_eventfds) -> None:
    server = vfu_server("edu", trace=True)
    exercise_edu(server, vfu_eventfds, interrupts=2)
    assert server.stop() == 0
    result = summary_cli(server.trace_path)  # type: ignore[arg-type]
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert text.startswith("run 1: edu (pid ")
    assert "clients: 2 connected, 2 gone" in text
    (read_row,) = [row for row in text.splitlines() if row.split()[:1] == ["REGION_READ"]]
    assert read_row.split()[1:] == ["7", "0", "2", "EINVAL", "2"]
    (irq_row,) = [row for row in text.splitlines() if row.split()[:1] == ["0"]]  # line 0, named by the model
    assert irq_row.split()[1:5] == ["edu", "2", "2", "2"] and "unmask message 2" in irq_row


def test_several_runs_and_a_cut_off_last_line(tmp_path: Path, vfu_eventfds) -> None:
    runs = [("edu", 3), ("gpio", 0)]
    for device, reads in runs:
        server = serve_in_subprocess(directory=tmp_path, model=device, trace=True)
        with server.connect() as client:
            for _ in range(reads):
                client.read32(0, 0)
        server.clients.clear()
        assert server.stop() == 0
    path = tmp_path / "vfu.sock.trace"
    summary = summary_json(str(path))
    assert [run["header"]["device"] for run in summary["runs"]] == ["edu", "gpio"]
    assert summary["runs"][0]["commands"]["REGION_READ"]["messages"] == 3
    assert "REGION_READ" not in summary["runs"][1]["commands"]
    # The server died in the middle of a line: that line is skipped and reported.
    data = path.read_bytes()
    cut = tmp_path / "cut.trace"
    cut.write_bytes(data + b'{"kind":"msg","t":9.5,"dir":"in","cmd":"REGION_RE')
    summary = summary_json(str(cut))
    assert summary["truncated"] is True
    assert [run["header"]["device"] for run in summary["runs"]] == ["edu", "gpio"]
    assert summary["runs"][0]["commands"]["REGION_READ"]["messages"] == 3
    table = summary_cli(str(cut))
    assert table.returncode == 0 and "cut short" in table.stdout


def test_a_bad_line_inside_the_file_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.trace"
    path.write_text('{"kind":"event","t":0.1,"event":"client-connected","fields":{"number":1}}\n'
                    "not json\n"
                    '{"kind":"event","t":0.2,"event":"client-gone","fields":{"reason":"x"}}\n')
    result = summary_cli(str(path))
    assert result.returncode == 2
    assert result.stderr.startswith("vfu-platform: error: ") and "line 2" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1
    missing = summary_cli(str(tmp_path / "none.trace"))
    assert missing.returncode == 2 and "No such file" in missing.stderr and "Traceback" not in missing.stderr


def test_queued_lines_in_the_summary(vfu_server: Callable[..., ProcessServer], vfu_eventfds) -> None:
    server = vfu_server("gpio", trace=True)
    client = server.connect()
    (trigger,) = vfu_eventfds(1)
    install_intx(client, trigger)
    client.write32(0, gpio.REG_RAISE, 0b111)  # three lines at once: two wait in the queue
    for line in range(3):
        trigger.expect_one()
        client.write32(0, gpio.line_register(line, gpio.LINE_ACK), 1)
        intx_unmask(client)
    client.close()
    server.clients.clear()
    assert server.stop() == 0
    lines = summary_json(server.trace_path)["runs"][0]["irq_lines"]  # type: ignore[arg-type]
    assert sorted(lines) == ["0", "1", "2"]
    assert [lines[k]["transitions"].get("queued", 0) for k in ("0", "1", "2")] == [0, 1, 1]
    for key in ("0", "1", "2"):
        assert lines[key]["raise_to_deliver"]["count"] == 1 and lines[key]["deliver_to_eoi"]["count"] == 1
        assert lines[key]["eoi_sources"] == {"unmask message": 1}
    # A queued line waits for the ones before it: its raise -> deliver is the longest.
    assert lines["2"]["raise_to_deliver"]["max_us"] > lines["0"]["raise_to_deliver"]["max_us"]

