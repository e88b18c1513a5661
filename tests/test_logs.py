# SPDX-License-Identifier: BSD-3-Clause
"""`serve -v` / `-vv` / `--log-file`: logs for people, from a real server in a subprocess.

* `-vv`: one DEBUG line per message (vfu_platform.messages) with the command name,
  message id, region index and name, offset, size, value and the reply's errno name.
* `-v`: connections, negotiation, a client gone, IRQ state changes; no per-message lines.
* `--log-file` is appended to and reopened on SIGHUP (logrotate).
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import REPO
from vfu_platform.testing import PYTHON, ProcessServer, install_intx, set_command, wait_until
from vfu_platform.backends.sim import edu
from vfu_platform.client import VfioUserError
from vfu_platform.logs import MessageLog, pci_region_namer
from vfu_platform.protocol.constants import Command
from vfu_platform.protocol.header import Header

# "2026-12-05 12:00:00,123 DEBUG vfu_platform.messages: in      REGION_READ id=2 ..."
_LINE = re.compile(r"^\S+ \S+ (?P<level>[A-Z]+) (?P<logger>[\w.]+): (?P<text>.*)$")


def log_lines(path: Path) -> list[tuple[str, str, str]]:
    """(level, logger, text) of each line of a --log-file."""
    out = []
    for line in path.read_text().splitlines():
        match = _LINE.match(line)
        assert match, f"not a log line: {line!r}"
        out.append((match["level"], match["logger"], match["text"]))
    return out


def message_lines(path: Path) -> list[str]:
    return [text for _level, logger, text in log_lines(path)
            if logger == "vfu_platform.messages" and not text.startswith("event ")]


def wait_for_log(path: Path, text: str) -> None:
    wait_until(lambda: path.exists() and text in path.read_text(), what=f"{text!r} in the log")


def test_vv_logs_one_line_per_message(vfu_server: Callable[..., ProcessServer], tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    server = vfu_server("edu", extra=["-vv", "--log-file", str(log)])
    client = server.connect()  # VERSION
    assert client.read32(0, edu.REG_ID) == 0x010000ED
    client.write32(0, edu.REG_LIVENESS, 0x1234)
    with pytest.raises(VfioUserError):
        client.region_read(6, 0, 4)  # the ROM region has size 0: EINVAL
    client.close()
    server.clients.clear()
    wait_for_log(log, "client gone")
    lines = message_lines(log)
    assert len(lines) == 8, lines
    words = [line.split() for line in lines]
    assert [w[:3] for w in words] == [
        ["in", "VERSION", "id=1"], ["out", "VERSION", "id=1"],
        ["in", "REGION_READ", "id=2"], ["out", "REGION_READ", "id=2"],
        ["in", "REGION_WRITE", "id=3"], ["out", "REGION_WRITE", "id=3"],
        ["in", "REGION_READ", "id=4"], ["out", "REGION_READ", "id=4"],
    ]
    assert "region=0 (BAR0 edu-mmio) offset=0x0 size=4 value=0x010000ed" in lines[3]
    assert "region=0 (BAR0 edu-mmio) offset=0x4 size=4 value=0x00001234" in lines[4]
    assert "region=6 (ROM) offset=0x0 size=4" in lines[6]
    assert words[7][3] == "reply+error" and "errno=EINVAL" in lines[7] and "past its size" in lines[7]
    assert all("errno=" not in line for line in lines[:7])
    assert server.stop() == 0


def test_v_logs_connections_and_irq_state_not_messages(vfu_server: Callable[..., ProcessServer],
                                                       tmp_path: Path, vfu_eventfds) -> None:
    log = tmp_path / "server.log"
    server = vfu_server("edu", extra=["-v", "--log-file", str(log)])
    client = server.connect()
    (trigger,) = vfu_eventfds(1)
    install_intx(client, trigger)
    set_command(client, 0x0406)  # INTX_DISABLE
    client.read32(0, edu.REG_ID)
    client.close()
    server.clients.clear()
    wait_for_log(log, "client gone")
    lines = log_lines(log)
    texts = [text for _level, _logger, text in lines]
    assert {level for level, _logger, _text in lines} <= {"INFO", "WARNING"}
    assert not [line for line in lines if line[1] == "vfu_platform.messages"]
    assert any(text == "client 1 connected" for text in texts)
    assert any(text.startswith("negotiated") for text in texts)
    assert any(text.startswith("client gone: connection closed") for text in texts)
    assert any(text.startswith("IRQ index 0 vectors 0..0: trigger eventfds set") for text in texts)
    assert "INTx disabled by the guest (COMMAND.INTX_DISABLE)" in texts
    assert not any("REGION_READ" in text for text in texts)
    assert server.stop() == 0


def test_vv_without_a_log_file_goes_to_stderr(vfu_server: Callable[..., ProcessServer]) -> None:
    server = vfu_server("edu", extra=["-vv"])
    with server.connect() as client:
        client.read32(0, edu.REG_ID)
    server.clients.clear()
    wait_until(lambda: "client gone" in server.stderr())
    lines = [line for line in server.stderr().splitlines() if "REGION_READ id=2" in line]
    assert [line.split()[1] for line in lines] == ["in", "out"]
    assert all(line.startswith("vfu-platform: ") for line in lines)
    assert server.stop() == 0


def test_without_v_nothing_but_the_banner(vfu_server: Callable[..., ProcessServer]) -> None:
    server = vfu_server("edu")
    with server.connect() as client:
        client.read32(0, edu.REG_ID)
    server.clients.clear()
    assert server.stop() == 0
    assert [line for line in server.stderr().splitlines() if "serving" not in line] == []


def test_sighup_reopens_the_log_file(vfu_server: Callable[..., ProcessServer], tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    rotated = tmp_path / "server.log.1"
    server = vfu_server("edu", extra=["-v", "--log-file", str(log)])
    with server.connect() as client:
        client.sync()
    server.clients.clear()
    wait_for_log(log, "client gone")
    os.rename(log, rotated)
    server.proc.send_signal(signal.SIGHUP)
    wait_until(log.exists, what="the log file opened again")
    with server.connect() as client:
        client.sync()
    server.clients.clear()
    wait_for_log(log, "client 2 connected")
    assert "client 2 connected" not in rotated.read_text() and "client 1 connected" in rotated.read_text()
    assert server.alive() and server.stop() == 0


def test_a_log_file_that_cannot_be_opened_is_one_line(tmp_path: Path) -> None:
    result = subprocess.run([PYTHON, "-m", "vfu_platform", "serve", "--socket", str(tmp_path / "s.sock"),
                             "--log-file", str(tmp_path / "no" / "such" / "dir.log")],
                            capture_output=True, text=True, timeout=30, cwd=str(REPO))
    assert result.returncode == 2
    assert result.stderr.startswith("vfu-platform: error: cannot open log file") and "No such file" in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_message_log_lines_for_dma_and_unnamed_regions() -> None:
    log = MessageLog(pci_region_namer({0: "regs", 2: "irq-page"}))
    dma = log.format("out", Header(0x8000, Command.DMA_READ, 32, 0, 0), 0, offset=0x10_0000, count=2, value=0xAB)
    assert dma == "out     DMA_READ id=32768 command iova=0x100000 size=2 value=0x00ab bytes=32"
    assert log.region_name(0) == "BAR0 regs" and log.region_name(2) == "BAR2 irq-page"
    assert log.region_name(7) == "config" and log.region_name(12) == "region 12"
    plain = MessageLog()
    line = plain.format("dropped", Header(9, Command.REGION_WRITE, 40, 0x10, 0), 0, 22, "bad",
                        region=3, offset=8, count=8, value=1)
    assert line == ("dropped REGION_WRITE id=9 reply+no_reply+error errno=EINVAL region=3 (region 3) offset=0x8 "
                    "size=8 value=0x0000000000000001 bytes=40: bad")
