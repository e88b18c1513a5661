#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
"""Measure what stalled and churning clients do to a running `vfu-platform serve`.

Real server process, real unix socket, real memfds and eventfds.  Prints one line per
measurement (figures, not pass/fail: the tests assert behaviour, this reports numbers):

  stall-<kind>   a first client that stalls (sends nothing / half a header / never reads);
                 how a second client fares at once and after the stall, and how long the
                 stalled one stays attached
  reconnect      N quick close+reconnect cycles: how many reconnects were refused
  churn          N connect/VERSION/DMA_MAP/SET_IRQS/abrupt-close cycles: fds, memfd
                 mappings and RSS of the server (first, after warm-up, last)

usage: scripts/hostile-clients.py [--cycles N] [--message-timeout S] [--only NAME]
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vfu_platform.client import VfioUserClient, make_eventfd  # noqa: E402
from vfu_platform.protocol import messages as m  # noqa: E402
from vfu_platform.protocol.constants import Command  # noqa: E402
from vfu_platform.protocol.header import HEADER  # noqa: E402

PYTHON = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv" / "bin" / "python").exists() else sys.executable


class Server:
    def __init__(self, workdir: str, extra: list[str]) -> None:
        self.path = os.path.join(workdir, "vfu.sock")
        self.log = os.path.join(workdir, "server.log")
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([PYTHON, "-m", "vfu_platform", "serve", "--socket", self.path,
                                          "--device", "edu", "-v", *extra],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        deadline = time.monotonic() + 10
        while "serving" not in self.text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"server did not start:\n{self.text()}")
            time.sleep(0.01)

    def text(self) -> str:
        return Path(self.log).read_text(errors="replace")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def sockets(self) -> int:
        count = 0
        for name in os.listdir(f"/proc/{self.proc.pid}/fd"):
            try:
                count += os.readlink(f"/proc/{self.proc.pid}/fd/{name}").startswith("socket:")
            except FileNotFoundError:
                pass
        return count

    def memfd_maps(self) -> int:
        with open(f"/proc/{self.proc.pid}/maps") as maps:
            return sum(1 for line in maps if "/memfd:" in line)

    def rss_kib(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(10)


def raw(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    return sock


def try_version(path: str, timeout: float) -> str:
    """Connect and negotiate; 'served after N s', or what went wrong."""
    start = time.monotonic()
    try:
        client = VfioUserClient.connect(path, timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - reported
        return f"refused ({type(exc).__name__}: {exc})"
    try:
        client.device_info()
        return f"served after {time.monotonic() - start:.1f} s"
    except Exception as exc:  # noqa: BLE001
        return f"failed after VERSION ({type(exc).__name__})"
    finally:
        client.close()


def attached_for(server: Server, limit: float) -> float:
    """Seconds until the server lets the stalled client go (or `limit` if it never does).

    Watched from the server's side (its socket fds), so the stalled client reads nothing.
    """
    start = time.monotonic()
    while time.monotonic() - start < limit:
        if server.sockets() <= 1:  # the listener only
            return time.monotonic() - start
        time.sleep(0.01)
    return limit


def stall(server: Server, kind: str, limit: float) -> None:
    first = raw(server.path)
    if kind == "half-header":
        first.sendall(HEADER.pack(1, Command.VERSION, 40, 0, 0)[:8])
    elif kind == "never-reads":
        version = m.Version(0, 0, None).pack() + b"{}\0"
        first.sendall(HEADER.pack(1, Command.VERSION, 16 + len(version), 0, 0) + version)
        # Flood reads of 1 MiB count and never read a reply: the server's send fills up.
        first.setblocking(False)
        request = HEADER.pack(2, Command.REGION_READ, 32, 0, 0) + m.RegionAccess(0, 7, 256).pack()
        try:
            for _ in range(20000):
                first.send(request)
        except BlockingIOError:
            pass
    time.sleep(0.2)
    second = try_version(server.path, 7.0)
    held = attached_for(server, limit)
    after = try_version(server.path, 2.0)
    first.close()
    print(f"stall-{kind:12s} second client at once: {second}; stalled client attached {held:.1f} s"
          f"{' (still, at the limit)' if held >= limit else ''}; a client after that: {after}")


def reconnect(server: Server, cycles: int) -> None:
    refused = 0
    for i in range(cycles):
        try:
            client = VfioUserClient.connect(server.path, timeout=2.0)
            client.write32(0, 0x04, i, posted=True)  # QEMU's posted BAR write, then gone
            client.close()
        except Exception:  # noqa: BLE001 - counted
            refused += 1
    print(f"reconnect    {refused} of {cycles} quick reconnects refused")


def churn(server: Server, cycles: int) -> None:
    VfioUserClient.connect(server.path).close()  # the bridge makes its line eventfds for the first client
    time.sleep(0.2)
    baseline_fds = server.fds()
    baseline_maps = server.memfd_maps()
    rss = [server.rss_kib()]
    worst_fds = worst_maps = 0
    mismatches = 0
    for k in range(cycles):
        client = VfioUserClient.connect(server.path, timeout=5.0)
        if k and client.read32(0, 0x04) != ~(k - 1) & 0xFFFFFFFF:
            mismatches += 1
        client.write32(0, 0x04, k)
        ram = os.memfd_create("churn-dma")
        os.ftruncate(ram, 0x4000)
        client.dma_map(0x100000, 0x4000, fd=ram)
        os.close(ram)
        efd = make_eventfd()
        client.set_irqs(0, 0x24, 0, 1, [efd])
        os.close(efd)
        if k % 2:  # abrupt close in the middle of a message
            client.send_raw(HEADER.pack(7, Command.REGION_WRITE, 40, 0, 0) + b"\0" * 9)
        client.channel.sock.close()
        deadline = time.monotonic() + 5
        while (server.fds(), server.memfd_maps()) != (baseline_fds, baseline_maps) and time.monotonic() < deadline:
            time.sleep(0.001)
        worst_fds = max(worst_fds, server.fds() - baseline_fds)
        worst_maps = max(worst_maps, server.memfd_maps() - baseline_maps)
        if k in (0, 99, 499, cycles - 1):
            rss.append(server.rss_kib())
    print(f"churn        {cycles} cycles: fds {baseline_fds} at start, worst +{worst_fds} after a close;"
          f" memfd maps {baseline_maps}, worst +{worst_maps}; state mismatches {mismatches};"
          f" RSS KiB start/1/100/500/last {'/'.join(map(str, rss))}")


def main() -> int:
    if os.environ.get("VFU_HOSTILE_DEBUG"):
        import faulthandler
        faulthandler.dump_traceback_later(15, exit=True)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=1000)
    parser.add_argument("--message-timeout", type=float, default=None,
                        help="pass --message-timeout to the server (if it has the option)")
    parser.add_argument("--stall-limit", type=float, default=8.0)
    parser.add_argument("--only", choices=["stall", "reconnect", "churn"])
    args = parser.parse_args()
    extra = ["--message-timeout", str(args.message_timeout)] if args.message_timeout is not None else []
    with tempfile.TemporaryDirectory(prefix="vfu-hostile-") as workdir:
        server = Server(workdir, extra)
        try:
            if args.only in (None, "stall"):
                for kind in ("nothing", "half-header", "never-reads"):
                    stall(server, kind, args.stall_limit)
            if args.only in (None, "reconnect"):
                reconnect(server, args.cycles)
            if args.only in (None, "churn"):
                churn(server, args.cycles)
        finally:
            server.stop()
        tracebacks = server.text().count("Traceback")
        print(f"server log: {tracebacks} tracebacks, exit status {server.proc.returncode}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
