# SPDX-License-Identifier: BSD-3-Clause
"""The shipped test kit (`vfu_platform.testing`): serving in a thread and in a process, and a clean stop."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from vfu_platform.backends.sim.edu import EduDevice
from vfu_platform.testing import MSIX, ServerFailed, serve_in_subprocess, serve_in_thread


def test_thread_server_serves_and_stops_cleanly(tmp_path: Path) -> None:
    with serve_in_thread(EduDevice(), tmp_path) as running:
        client = running.connect()
        assert client.device_info().num_regions == 9
        assert running.server.sessions_served == 1
    assert not running.alive()
    assert not os.path.exists(running.socket_path)
    assert "client 1 connected" in running.log()


def test_thread_server_from_a_model_name_in_its_own_temp_dir() -> None:
    running = serve_in_thread("gpio", irq_mode="msix")
    workdir = Path(running.socket_path).parent
    assert running.connect().irq_info(MSIX).count > 1  # MSI-X: a vector per platform line
    assert running.stop() == 0
    assert not workdir.exists()


def test_process_server_stops_with_exit_status_checked(tmp_path: Path) -> None:
    running = serve_in_subprocess("edu", tmp_path)
    assert running.connect().device_info().num_irqs == 5
    assert running.stop() == 0
    assert not os.path.exists(running.socket_path)


def test_a_server_that_cannot_start_shows_its_log(tmp_path: Path) -> None:
    with pytest.raises(ServerFailed, match="unknown device model 'nope'"):
        serve_in_subprocess("nope", tmp_path)


def test_vfu_client_is_served_vfu_device(vfu_client) -> None:
    assert vfu_client.device_info().num_regions == 9  # edu behind the bridge
