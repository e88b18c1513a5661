# SPDX-License-Identifier: BSD-3-Clause
"""A config checked against the device it configures, at start (`serve`).

The TOML schema (tests/test_config.py) cannot know the device: how many regions it
has, how large each is.  Once the device is built, a `[[bridge.region]]` or
`[[bridge.ack]]` naming a region it lacks, or an acknowledge register past the end of
its region, must stop the start with one line - not be ignored while the server
serves as if it were not there.  A host device and a model given together (flag and
flag, flag and config, or both in the config) are one line too, before the host
device is touched.  (An ack naming an IRQ the device lacks and the `--device` /
`--host` flag pair: tests/test_cli.py.)
"""
from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest
from conftest import REPO

from vfu_platform.testing import PYTHON, write_config

#: the edu model: one region (0, 1 MiB), one IRQ
EDU_REGION_SIZE = 0x100000


def serve(tmp_path: Path, *args: str) -> tuple[int | None, str]:
    """(exit status, stderr) of `serve ARGS`; None when it started serving (then it is stopped)."""
    proc = subprocess.Popen([PYTHON, "-m", "vfu_platform", "serve", "--socket", str(tmp_path / "s.sock"), *args],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            cwd=str(REPO))
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:  # it either says "serving" or exits
        seen.append(line)
        if line.startswith("vfu-platform: serving "):
            proc.send_signal(signal.SIGTERM)
            seen.append(proc.communicate(timeout=10)[1])
            return None, "".join(seen)
    return proc.wait(timeout=10), "".join(seen)


def assert_refused(result: tuple[int | None, str], *fragments: str) -> None:
    code, err = result
    assert code is not None, f"it started serving instead of refusing:\n{err}"
    assert code != 0 and "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("vfu-platform"), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_an_ack_on_a_region_inside_the_device_is_accepted(tmp_path: Path) -> None:
    """The control case: a valid ack register (the last word of edu's region) starts."""
    config = write_config(tmp_path, f"[[bridge.ack]]\nirq = 0\nregion = 0\noffset = {EDU_REGION_SIZE - 4:#x}\n"
                                    "mask = 1\n")
    code, err = serve(tmp_path, "--device", "edu", "--config", config)
    assert code is None and "serving edu" in err, err


def test_a_region_option_for_a_region_the_device_lacks(tmp_path: Path) -> None:
    config = write_config(tmp_path, "[[bridge.region]]\nindex = 7\nmmap = \"never\"\n")
    assert_refused(serve(tmp_path, "--device", "edu", "--config", config), "region 7")


def test_an_ack_on_a_region_the_device_lacks(tmp_path: Path) -> None:
    config = write_config(tmp_path, "[[bridge.ack]]\nirq = 0\nregion = 3\noffset = 0\nmask = 1\n")
    assert_refused(serve(tmp_path, "--device", "edu", "--config", config), "region 3")


@pytest.mark.parametrize("offset", [EDU_REGION_SIZE, 2 * EDU_REGION_SIZE], ids=["at-the-end", "past-the-end"])
def test_an_ack_offset_past_its_region(tmp_path: Path, offset: int) -> None:
    config = write_config(tmp_path, f"[[bridge.ack]]\nirq = 0\nregion = 0\noffset = {offset:#x}\nmask = 1\n")
    assert_refused(serve(tmp_path, "--device", "edu", "--config", config), f"{offset:#x}")


def test_host_and_sysfsdev_flags_together(tmp_path: Path) -> None:
    assert_refused(serve(tmp_path, "--host", "0000:00:04.0", "--sysfsdev", "/sys/bus/pci/devices/0000:00:04.0"),
                   "not allowed with argument")


def test_a_config_with_both_host_and_model(tmp_path: Path) -> None:
    config = write_config(tmp_path, "[device]\nmodel = \"edu\"\nhost = \"0000:00:04.0\"\n")
    assert_refused(serve(tmp_path, "--config", config), "model", "host")


def test_host_flag_with_a_model_in_the_config(tmp_path: Path) -> None:
    config = write_config(tmp_path, "[device]\nmodel = \"edu\"\n")
    assert_refused(serve(tmp_path, "--host", "0000:00:04.0", "--config", config), "model", "host")


def test_device_flag_with_a_host_in_the_config(tmp_path: Path) -> None:
    config = write_config(tmp_path, "[device]\nhost = \"0000:00:04.0\"\n")
    assert_refused(serve(tmp_path, "--device", "edu", "--config", config), "--device", "host")
