# SPDX-License-Identifier: BSD-3-Clause
"""The `vfu-platform` command line, run as a real process.

Every bad argument gives exactly one line on stderr and a non-zero exit, never a
traceback.  A running server owns its socket (mode 0600) and removes it when SIGINT or
SIGTERM stops it, with exit status 0.
"""
from __future__ import annotations

import json
import mmap
import os
import select
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import REPO
from vfu_platform.testing import PYTHON, ProcessServer, serve_in_subprocess, write_config


def run_cli(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "vfu_platform", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=str(REPO),
        stdin=subprocess.DEVNULL,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    lines = result.stderr.splitlines()
    assert result.returncode != 0, f"exit status 0 for a bad argument; stderr: {result.stderr!r}"
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{result.stderr}"
    for fragment in fragments:
        assert fragment.lower() in lines[0].lower(), f"{fragment!r} not in {lines[0]!r}"
    assert result.stdout == ""
    return lines[0]


def serve(socket_path: Path | str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("serve", "--socket", str(socket_path), *args)


# --------------------------------------------------------------------------- the socket path


def test_busy_socket_path(vfu_server: Callable[..., ProcessServer]) -> None:
    server = vfu_server("edu")
    result = serve(server.socket_path)
    assert_one_line_error(result, "busy")
    with server.connect() as client:  # the live server was not disturbed
        assert client.read32(0, 0) == 0x010000ED
    server.clients.clear()


def test_stale_socket_file(tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leftover.bind(str(path))
    leftover.close()  # the file stays, nobody listens
    assert_one_line_error(serve(path), "stale")
    assert stat.S_ISSOCK(os.lstat(path).st_mode), "a stale socket is reported, not removed"


def test_path_that_is_not_a_socket(tmp_path: Path) -> None:
    path = tmp_path / "regular"
    path.write_text("precious")
    assert_one_line_error(serve(path), "not a socket")
    assert path.read_text() == "precious"


def test_missing_directory(tmp_path: Path) -> None:
    assert_one_line_error(serve(tmp_path / "no" / "such" / "dir" / "x.sock"), "does not exist")


def test_directory_as_socket_path(tmp_path: Path) -> None:
    assert_one_line_error(serve(tmp_path), "not a socket")


# --------------------------------------------------------------------------- device and options


def test_unknown_model(tmp_path: Path) -> None:
    assert_one_line_error(serve(tmp_path / "s.sock", "--device", "nosuch"), "unknown device model", "edu", "gpio")


def test_model_class_that_cannot_be_imported(tmp_path: Path) -> None:
    assert_one_line_error(serve(tmp_path / "s.sock", "--device", "no_such_module:Thing"), "cannot import")


@pytest.mark.parametrize(
    ("option", "fragment"),
    [
        ("noequals", "KEY=VALUE"),
        ("=1", "KEY=VALUE"),
        ("nosuch=1", "no option"),
        ("lines=abc", "not a valid int"),
        ("lines=99", "lines must be"),
        ("edge=maybe", "not a valid bool"),
    ],
)
def test_bad_model_option(tmp_path: Path, option: str, fragment: str) -> None:
    assert_one_line_error(serve(tmp_path / "s.sock", "--device", "gpio", "-o", option), fragment)


@pytest.mark.parametrize(
    "args",
    [
        ["serve"],  # --socket missing
        ["serve", "--socket", "x.sock", "--irq-mode", "msi"],
        ["serve", "--socket", "x.sock", "--bogus"],
        ["serve", "--socket", "x.sock", "--device", "edu", "--host", "foo"],  # exclusive
        [],
        ["frobnicate"],
        ["inspect"],
    ],
    ids=["no-socket", "bad-irq-mode", "unknown-flag", "device-and-host", "no-command", "unknown-command", "inspect-no-name"],
)
def test_argument_errors(tmp_path: Path, args: list[str]) -> None:
    result = run_cli(*args)
    assert result.returncode == 2
    assert_one_line_error(result)


def test_trace_file_that_cannot_be_created(tmp_path: Path) -> None:
    result = serve(tmp_path / "s.sock", "--trace", str(tmp_path / "missing" / "trace.jsonl"))
    assert_one_line_error(result, "trace")
    assert not (tmp_path / "s.sock").exists()


def test_missing_host_device(tmp_path: Path) -> None:
    assert_one_line_error(serve(tmp_path / "s.sock", "--host", "no-such-device.1234"), "no-such-device.1234")


def test_inspect_missing_host_device() -> None:
    assert_one_line_error(run_cli("inspect", "no-such-device.1234"), "no-such-device.1234")


# --------------------------------------------------------------------------- config files


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("[bridge]\nvendor = 0x1234\n", ("config", "vendor")),
        ("[nosuch]\nx = 1\n", ("config", "nosuch")),
        ("[device]\nmodle = \"edu\"\n", ("config", "modle")),
        ("[bridge]\nirq_mode = \"msi\"\n", ("config", "irq_mode")),
        ("[bridge]\nvendor_id = 0x12345\n", ("config", "vendor_id")),
        ("[bridge]\nvendor_id = \"0x1234\"\n", ("config", "vendor_id")),
        ("[server]\nmax_data_xfer_size = 1\n", ("config", "max_data_xfer_size")),
        ("[[bridge.region]]\nindex = 0\nmmap = \"sometimes\"\n", ("config", "mmap")),
    ],
    ids=["unknown-key", "unknown-section", "typo", "bad-irq-mode", "too-large", "wrong-type", "too-small", "bad-mmap"],
)
def test_bad_config_values(tmp_path: Path, text: str, fragments: tuple[str, ...]) -> None:
    config = write_config(tmp_path, text)
    assert_one_line_error(serve(tmp_path / "s.sock", "--config", config), *fragments)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[bridge]\npage_size = 5000\n", "page size"),
        ("[[bridge.ack]]\nirq = 9\nregion = 0\noffset = 0x64\n", "IRQ 9"),
        ("[device]\nmodel = \"gpio\"\noptions = { lines = 1 }\n", "lines must be"),
        ("[device]\nmodel = \"nosuch\"\n", "unknown device model"),
    ],
    ids=["page-size", "ack-irq", "model-option", "model"],
)
def test_config_that_cannot_build_a_device(tmp_path: Path, text: str, fragment: str) -> None:
    config = write_config(tmp_path, text)
    assert_one_line_error(serve(tmp_path / "s.sock", "--config", config), fragment)


def test_invalid_toml(tmp_path: Path) -> None:
    config = write_config(tmp_path, "[bridge\nvendor_id = \n")
    assert_one_line_error(serve(tmp_path / "s.sock", "--config", config), "not valid TOML")


def test_missing_config_file(tmp_path: Path) -> None:
    assert_one_line_error(serve(tmp_path / "s.sock", "--config", str(tmp_path / "nope.toml")), "cannot read config")


def test_config_path_that_is_a_directory(tmp_path: Path) -> None:
    assert_one_line_error(serve(tmp_path / "s.sock", "--config", str(tmp_path)), "cannot read config")


def test_unreadable_config_file(tmp_path: Path) -> None:
    config = Path(write_config(tmp_path, "[bridge]\n"))
    config.chmod(0)
    if os.access(config, os.R_OK):  # root reads anything: make it unreadable another way
        config.chmod(0o644)
        config.unlink()
        os.symlink(config.name + ".loop", config)
        os.symlink(config.name, str(config) + ".loop")
    assert_one_line_error(serve(tmp_path / "s.sock", "--config", str(config)), "cannot read config")


def test_bad_config_is_reported_before_anything_is_created(tmp_path: Path) -> None:
    config = write_config(tmp_path, "bogus = 1\n")
    serve(tmp_path / "s.sock", "--config", config, "--trace", str(tmp_path / "t.jsonl"))
    assert not (tmp_path / "s.sock").exists()


# --------------------------------------------------------------------------- a running server


def test_socket_is_created_mode_0600(tmp_path: Path) -> None:
    server = serve_in_subprocess(directory=tmp_path, model="edu")
    try:
        mode = os.lstat(server.socket_path).st_mode
        assert stat.S_ISSOCK(mode)
        assert stat.S_IMODE(mode) == 0o600
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("with_client", [False, True], ids=["idle", "client-connected"])
def test_signal_stops_cleanly(tmp_path: Path, signum: int, with_client: bool) -> None:
    server = serve_in_subprocess(directory=tmp_path, model="gpio")
    client = server.connect() if with_client else None
    if client is not None:
        client.write32(0, 0x08, 1)
    server.clients.clear()
    server.proc.send_signal(signum)
    assert server.proc.wait(10) == 0, server.stderr()
    assert not os.path.exists(server.socket_path), "the socket file must be removed"
    assert "Traceback" not in server.stderr()
    if client is not None:
        client.channel.sock.settimeout(5)
        assert client.channel.sock.recv(16) == b"", "the client sees EOF"
        client.close()


def test_a_new_server_can_use_the_path_after_a_clean_stop(tmp_path: Path) -> None:
    first = serve_in_subprocess(directory=tmp_path, model="edu")
    assert first.stop(signal.SIGTERM) == 0
    second = serve_in_subprocess(directory=tmp_path, model="gpio")
    try:
        with second.connect() as client:
            assert client.read32(0, 0) == 0x47504F31
        second.clients.clear()
    finally:
        assert second.stop(signal.SIGINT) == 0


def test_models_lists_the_builtin_models() -> None:
    result = run_cli("models")
    assert result.returncode == 0
    listed = result.stdout.split()
    assert listed == sorted(listed) and {"edu", "gpio", "pl031", "pl061"} <= set(listed)
    assert result.stderr == ""


def test_serve_announces_itself_on_stderr(tmp_path: Path) -> None:
    server = serve_in_subprocess(directory=tmp_path, model="gpio")
    try:
        assert server.stderr().splitlines() == [f"vfu-platform: serving gpio on {server.socket_path}"]
    finally:
        server.stop()


def test_verbose_logs_client_lifecycle(tmp_path: Path) -> None:
    server = serve_in_subprocess(directory=tmp_path, model="edu", extra=["-v"])
    try:
        with server.connect() as client:
            client.sync()
        server.clients.clear()
        deadline = time.monotonic() + 3
        while "client gone" not in server.stderr() and time.monotonic() < deadline:
            time.sleep(0.01)
        text = server.stderr()
        assert "client 1 connected" in text and "client gone" in text
    finally:
        assert server.stop() == 0


# --------------------------------------------------------------------------- inspect


def first_platform_device() -> str | None:
    try:
        names = sorted(os.listdir("/sys/bus/platform/devices"))
    except FileNotFoundError:
        return None
    return names[0] if names else None


def test_inspect_json_of_a_real_platform_device() -> None:
    name = first_platform_device()
    if name is None:
        pytest.skip("this machine has no platform bus")
    result = run_cli("inspect", "--json", name)
    report = json.loads(result.stdout)
    assert report["device"]["name"] == name
    assert report["device"]["bus"] == "platform"
    # Exit 1 exactly when the report carries the reason the device cannot be opened.
    assert result.returncode == (0 if report["error"] is None else 1)
    assert result.stderr == ""


def test_inspect_table_of_a_real_platform_device_by_path() -> None:
    name = first_platform_device()
    if name is None:
        pytest.skip("this machine has no platform bus")
    result = run_cli("inspect", f"/sys/bus/platform/devices/{name}")
    assert result.stdout.splitlines()[0].startswith(f"device      {name} (platform)")
    assert "Traceback" not in result.stderr


def test_inspect_table_shows_regions_irqs_and_the_bridge_plan(capsys: pytest.CaptureFixture[str]) -> None:
    from vfu_platform.backends.vfio.inspect import DeviceReport, HostReport, IrqReport, RegionReport
    from vfu_platform.cli import _print_report

    report = HostReport(
        device=DeviceReport(name="9010000.pl031", bus="amba", sysfs_path="/sys/devices/platform/9010000.pl031",
                            driver="vfio-amba", vfio_driver="vfio-amba", iommu_group=3, group_node="/dev/vfio/3",
                            group_members=[], iommu="NOIOMMU", flags=["AMBA"], num_regions=1, num_irqs=1),
        compatible=["arm,pl031", "arm,primecell"],
        regions=[RegionReport(index=0, name="mmio0", size=0x1000, offset=0, flags=["READ", "WRITE", "MMAP"])],
        irqs=[IrqReport(index=0, name="irq0", count=1, flags=["EVENTFD", "MASKABLE", "AUTOMASKED"], trigger="level")],
    )
    _print_report(report)
    out = capsys.readouterr().out
    assert "arm,pl031" in out
    assert "region 0" in out and "size 0x1000" in out
    assert "irq 0" in out and "level" in out
    bar = max(0x1000, mmap.PAGESIZE)  # a BAR covers whole host pages
    assert f"BAR0        size {bar:#x}: region 0 (mmio0)" in out
    assert f"BAR1        size {bar:#x}: IRQ page" in out


def test_signal_while_the_server_waits_for_a_dma_reply(tmp_path: Path) -> None:
    """The server is inside a nested wait for the client's DMA_READ reply: a SIGTERM must
    still stop it at once (not after the 5 s DMA timeout), cleanly."""
    server = serve_in_subprocess(directory=tmp_path, model="edu")
    client = server.connect()
    client.dma_map(0x10_0000, 0x1000)  # no fd: the device's DMA becomes DMA_READ requests
    client.region_write(7, 0x04, (0x0006).to_bytes(2, "little"))  # memory + bus master
    client.write64(0, 0x80, 0x10_0000)
    client.write64(0, 0x88, 0x40000)
    client.write64(0, 0x90, 0x10)
    client.write64(0, 0x98, 0x1)
    readable, _, _ = select.select([client.channel.sock], [], [], 3)
    assert readable, "the server's DMA_READ request"
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(10) == 0, server.stderr()
    assert time.monotonic() - started < 2.0
    assert not os.path.exists(server.socket_path)
    assert "Traceback" not in server.stderr()
    server.clients.clear()
    client.close()
