# SPDX-License-Identifier: BSD-3-Clause
"""Project-specific test setup: the guest benches' report lines, and the shared server.

The generic kit (serving, clients, eventfds, memfds, raw messages) is
`vfu_platform.testing`, loaded as a pytest plugin.  Here: `server` is one
`vfu_platform serve` process per test module (device `edu`, or the module's
`SERVER_DEVICE`; BOTH_PATHS modules run traced and untraced); `client` is a fresh
negotiated connection to it for one test, after which the server must be back to
its idle fds (it released every fd it was given).  `assert_serving` checks edu answers.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from vfu_platform.client import VfioUserClient
from vfu_platform.testing import ProcessServer, serve_in_subprocess
from vfu_platform.testing.raw import expect_error, expect_no_reply_to, header_bytes, raw_request  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
REPO = ROOT


def pytest_configure(config: pytest.Config) -> None:
    """Load the kit's plugin when the installed metadata predates its pytest11 entry point."""
    if config.pluginmanager.get_plugin("vfu_platform") is None:
        from vfu_platform.testing import plugin

        config.pluginmanager.register(plugin, "vfu_platform")


def pytest_report_header(config: pytest.Config) -> list[str]:
    """Name the guest benches' versions (from the cache's manifest), so a failure report has them."""
    from guest_policy import opted_out
    from testbench import qemu

    lines = [f"guest suites skipped on purpose: {', '.join(opted_out())}"] if opted_out() else []
    env_file = qemu.default_cache() / "env.sh"
    try:
        bench = qemu.Bench.from_env_file(env_file)
    except (OSError, qemu.BenchError):
        return lines + [f"guest bench: not provisioned yet in {env_file.parent} (the guest suites will do it)"]
    return lines + [f"guest bench: {bench.versions()}"]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    from guest_policy import opted_out

    for suite in opted_out():
        terminalreporter.write_line(f"NOTE: skipped on purpose, not tested: {suite}", yellow=True, bold=True)


def launch_server(device: str, extra_args: tuple[str, ...] | list[str] = (), traced: bool = True) -> ProcessServer:
    """A server with -v and (by default) a trace, its idle fds measured; files in a new temp dir."""
    proc = serve_in_subprocess(device, trace=traced, extra=["-v", *extra_args], merge_stdout=True, cwd=ROOT)
    try:
        proc.measure_idle()
    except BaseException:
        proc.stop(check=False)
        raise
    return proc


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Modules with BOTH_PATHS = True run against a traced server and an untraced one.

    Without a trace the server answers REGION_READ / REGION_WRITE on its fast path
    (no frame objects); with one, on the general path.  Both must give the same answers.
    """
    if "server" in metafunc.fixturenames and getattr(metafunc.module, "BOTH_PATHS", False):
        metafunc.parametrize("server_traced", [True, False], ids=["general-path", "fast-path"], scope="module")


@pytest.fixture(scope="module")
def server_traced() -> bool:
    return True


@pytest.fixture(scope="module")
def server(request: pytest.FixtureRequest, server_traced: bool) -> Iterator[ProcessServer]:
    """One server per test module: device `edu`, or the module's SERVER_DEVICE."""
    proc = launch_server(getattr(request.module, "SERVER_DEVICE", "edu"), traced=server_traced)
    yield proc
    proc.stop()


@pytest.fixture
def start_server() -> Iterator[Callable[..., ProcessServer]]:
    """A factory for servers private to one test (other devices or options); all stopped at the end."""
    started: list[ProcessServer] = []

    def start(device: str = "edu", *extra_args: str) -> ProcessServer:
        proc = launch_server(device, extra_args)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def client(server: ProcessServer) -> Iterator[VfioUserClient]:
    """A negotiated client; afterwards the server must be alive and back to its idle fds."""
    server.wait_idle()
    conn = server.connect()
    yield conn
    conn.close()
    server.wait_idle()


@pytest.fixture
def raw_client(server: ProcessServer) -> Iterator[VfioUserClient]:
    """A connected client that has not sent VERSION (the server has accepted it)."""
    server.wait_idle()
    conn = server.connect(negotiate=False)
    server.wait_fd_count(server.idle_fds + 1)
    yield conn
    conn.close()
    server.wait_idle()


def assert_serving(client: VfioUserClient) -> None:
    """The connection still works: a well-formed request is answered."""
    info = client.device_info()
    assert info.num_regions == 9 and info.num_irqs == 5


@pytest.fixture
def edu_server(vfu_server: Callable[..., ProcessServer]) -> ProcessServer:
    return vfu_server("edu")


@pytest.fixture
def gpio_server(vfu_server: Callable[..., ProcessServer]) -> ProcessServer:
    return vfu_server("gpio")


@pytest.fixture
def gpio_msix_server(vfu_server: Callable[..., ProcessServer]) -> ProcessServer:
    return vfu_server("gpio", irq_mode="msix")
