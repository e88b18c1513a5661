# SPDX-License-Identifier: BSD-3-Clause
"""`vfu-platform qemu-args` (vfu_platform/qemu_args.py, operator_cli.py) against a running server.

What QEMU's vfio-user client needs, in every output form: `-device` in its JSON form
(driver vfio-user-pci, the server's socket as an absolute path), guest RAM in a
shared memfd backend whose size is `-m`, and the machine option naming that backend.
For Arm `virt`, a GICv3 (its ITS takes the device's MSIs) and a 64-bit CPU.  tests/e2e/test_qemu_args_boot.py
boots QEMU with exactly these arguments.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO

from vfu_platform.qemu_args import qemu_args
from vfu_platform.testing import PYTHON, ProcessServer, serve_in_subprocess


def run_qemu_args(*args: str, cwd: Path | str = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "vfu_platform", "qemu-args", *args], capture_output=True, text=True,
                          timeout=30, cwd=str(cwd), env=dict(os.environ, PYTHONPATH=str(REPO)), check=False)


def options(words: list[str], flag: str) -> list[str]:
    """The values of every `flag` in an argv."""
    return [words[i + 1] for i, word in enumerate(words[:-1]) if word == flag]


def keyvals(text: str) -> tuple[str, dict[str, str]]:
    """QEMU's "type,key=value,..." option string."""
    head, *rest = text.split(",")
    return head, dict(part.split("=", 1) for part in rest)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessServer]:
    proc = serve_in_subprocess("edu", directory=tmp_path_factory.mktemp("qemu-args"))
    yield proc
    assert proc.stop() == 0


def check_words(words: list[str], socket_path: str, machine: str, memory: str) -> None:
    devices = [json.loads(value) for value in options(words, "-device")]
    assert devices == [{"driver": "vfio-user-pci", "id": "vfu0",
                        "socket": {"type": "unix", "path": socket_path}}]
    backends = [keyvals(value) for value in options(words, "-object")]
    assert len(backends) == 1
    kind, backend = backends[0]
    assert kind == "memory-backend-memfd" and backend["share"] == "on"
    assert backend["size"] == memory and options(words, "-m") == [memory], "-m must equal the backend's size"
    machines = [keyvals(value) for value in options(words, "-machine")]
    assert len(machines) == 1
    machine_type, machine_opts = machines[0]
    assert machine_type == machine and machine_opts["memory-backend"] == backend["id"]
    if machine == "virt":
        assert machine_opts.get("gic-version") == "3", "MSI-X needs the GICv3 ITS on Arm virt"
        assert options(words, "-cpu") == ["max"], "virt's default CPU (cortex-a15) is 32-bit"
    else:
        assert "gic-version" not in machine_opts and "-cpu" not in words
    assert len(words) == (10 if machine == "virt" else 8), words  # nothing else: (flag, value) pairs


@pytest.mark.parametrize("machine", ["q35", "pc", "virt"])
def test_every_form_for_every_machine(server: ProcessServer, machine: str) -> None:
    forms = {}
    for form in ("shell", "lines", "json"):
        result = run_qemu_args("--socket", server.socket_path, "--machine", machine, "--memory", "512M",
                               "--format", form)
        assert result.returncode == 0 and result.stderr == "", result
        forms[form] = result.stdout
    words = shlex.split(forms["shell"])
    check_words(words, server.socket_path, machine, "512M")
    assert forms["lines"].splitlines() == words
    assert json.loads(forms["json"]) == words
    assert forms["shell"].count("\n") == 1, "shell: one line to paste"


def test_default_is_q35_with_1g(server: ProcessServer) -> None:
    result = run_qemu_args("--socket", server.socket_path)
    assert result.returncode == 0
    check_words(result.stdout.splitlines(), server.socket_path, "q35", "1G")


def test_a_relative_socket_is_made_absolute(server: ProcessServer) -> None:
    folder, name = os.path.split(server.socket_path)
    result = run_qemu_args("--socket", name, "--format", "json", cwd=folder)
    assert result.returncode == 0 and result.stderr == "", result
    check_words(json.loads(result.stdout), server.socket_path, "q35", "1G")


def test_a_path_with_spaces_and_quotes_survives_the_shell_form(tmp_path: Path) -> None:
    folder = tmp_path / "it's a dir"
    folder.mkdir()
    proc = serve_in_subprocess("edu", directory=folder)
    try:
        result = run_qemu_args("--socket", proc.socket_path, "--format", "shell")
        assert result.returncode == 0
        via_shell = subprocess.run(["sh", "-c", f"printf '%s\\n' {result.stdout.strip()}"], capture_output=True,
                                   text=True, timeout=10, check=False)
        check_words(via_shell.stdout.splitlines(), proc.socket_path, "q35", "1G")
    finally:
        assert proc.stop() == 0


def test_no_server_yet_is_a_warning_not_an_error(tmp_path: Path) -> None:
    result = run_qemu_args("--socket", str(tmp_path / "later.sock"))
    assert result.returncode == 0
    warning = f"vfu-platform: warning: no socket {tmp_path / 'later.sock'} yet (start the server before QEMU)"
    assert result.stderr.splitlines() == [warning]
    check_words(result.stdout.splitlines(), str(tmp_path / "later.sock"), "q35", "1G")


@pytest.mark.parametrize("args, fragment", [
    (["--memory", "lots"], "bad memory size 'lots'"),
    (["--memory", "0"], "bad memory size '0'"),
    (["--id", "9bad"], "bad device id '9bad'"),
    (["--machine", "microvm"], "invalid choice: 'microvm'"),
    (["--format", "yaml"], "invalid choice: 'yaml'"),
])
def test_bad_values_are_one_line(tmp_path: Path, args: list[str], fragment: str) -> None:
    result = run_qemu_args("--socket", str(tmp_path / "s"), *args)
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and fragment in lines[0], result.stderr


def test_memory_suffix_is_normalised() -> None:
    words = qemu_args("/run/vfu.sock", memory="256m")
    assert options(words, "-m") == ["256M"] and "size=256M" in options(words, "-object")[0]
