#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
"""Latency benchmark of the REGION_READ / REGION_WRITE hot path.

    python scripts/bench.py [--iterations N] [--rounds R] [--json]
    python scripts/bench.py --profile [--profile-op read|write] [--top 15]
    python scripts/bench.py --devices 64      # + one process serving 64 edu devices

Builds two small C programs (scripts/bench/) with the system compiler, starts
the servers once, and times a C client against each of them:

* ``ref``   the bare C ping-pong server (scripts/bench/pingpong.c): blocking
            recv/send of exactly the message sizes of a vfio-user round trip;
            the reference every ratio is taken against;
* ``vfu``   our server, ``python -m vfu_platform serve`` (edu model);
* ``floor`` a minimal blocking Python vfio-user loop (struct + recv_into +
            send, below in FLOOR_SERVER): what plain CPython costs, for scale;
* ``multi`` with ``--devices N``: one server process serving N edu devices from a
            ``[[devices]]`` config; each round talks to another of them, and a
            sweep afterwards times every device once and reads the process's RSS.

Per operation (read, write, posted) the cases run back to back and in
alternating order (ref, vfu, floor / floor, vfu, ref / ...) for several
rounds, so a load swing on the machine hits every case alike.  Only the
ratios within one run mean anything; absolute numbers swing several-fold
between runs on a shared machine.  Nothing here asserts on timing.

See scripts/bench/README.md for what each column means.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import pstats
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO / "scripts" / "bench"
SOURCES = {"vfu_bench_client": BENCH_DIR / "vfu_bench_client.c", "pingpong": BENCH_DIR / "pingpong.c"}
CFLAGS = ["-O2", "-Wall", "-Wextra", "-std=gnu11"]
CLK_TCK = os.sysconf("SC_CLK_TCK")

EDU_ID = 0x010000ED  # BAR0 offset 0 of the edu model
READ_OFFSET = 0  # edu identification register (read only)
WRITE_OFFSET = 4  # edu liveness register (read/write)

#: A minimal blocking vfio-user server in plain Python: one connection at a time,
#: recv_into a buffer, struct-unpack, answer from a bytearray "device".
FLOOR_SERVER = r'''
import signal, socket, struct, sys
H = struct.Struct("<HHIII")
A = struct.Struct("<QII")
regs = bytearray(4096)
regs[0:4] = (0x010000ED).to_bytes(4, "little")
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
listener.bind(sys.argv[1])
listener.listen(4)
print("floor: serving on", sys.argv[1], file=sys.stderr, flush=True)
buf = bytearray(1 << 20)
view = memoryview(buf)
while True:
    conn, _ = listener.accept()
    have = 0
    while True:
        n = conn.recv_into(view[have:])
        if not n:
            break
        have += n
        pos = 0
        while have - pos >= 16:
            msg_id, command, size, flags, _err = H.unpack_from(buf, pos)
            if have - pos < size:
                break
            if command == 9:
                offset, region, count = A.unpack_from(buf, pos + 16)
                reply = H.pack(msg_id, 9, 32 + count, 1, 0) + buf[pos + 16:pos + 32] + regs[offset:offset + count]
            elif command == 10:
                offset, region, count = A.unpack_from(buf, pos + 16)
                regs[offset:offset + count] = view[pos + 32:pos + 32 + count]
                reply = H.pack(msg_id, 10, 32, 1, 0) + buf[pos + 16:pos + 32]
            elif command == 1:
                reply = H.pack(msg_id, 1, 23, 1, 0) + b"\0\0\0\0{}\0"
            else:
                reply = H.pack(msg_id, command, 16, 0x21, 22)
            if not flags & 0x10:
                conn.sendall(reply)
            pos += size
        if pos:
            buf[:have - pos] = buf[pos:have]
            have -= pos
    conn.close()
'''

#: Runs our server with cProfile switched on by SIGUSR1 and off (stats dumped) by SIGUSR2,
#: so start-up, imports and VERSION stay out of the profile.
PROFILE_BOOTSTRAP = r'''
import cProfile, signal, sys
from vfu_platform.cli import main
profile = cProfile.Profile()
out = sys.argv[1]
def start(_signum, _frame):
    profile.enable()
def stop(_signum, _frame):
    profile.disable()
    profile.dump_stats(out)
signal.signal(signal.SIGUSR1, start)
signal.signal(signal.SIGUSR2, stop)
sys.exit(main(sys.argv[2:]))
'''


class BenchError(Exception):
    """The benchmark could not run (build failed, a server died, a client failed)."""


# ---------------------------------------------------------------- building
def build(cache_dir: Path | None, cc: str) -> dict[str, Path]:
    """Compile the C programs once per (sources, compiler, flags); returns name -> binary."""
    if shutil.which(cc) is None:
        raise BenchError(f"C compiler {cc!r} not found")
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, check=False).stdout
    digest = hashlib.sha256(version.encode() + " ".join(CFLAGS).encode())
    for name in sorted(SOURCES):
        digest.update(SOURCES[name].read_bytes())
    if cache_dir is None:
        cache_root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        cache_dir = cache_root / "vfu-platform-bench"
    out_dir = cache_dir / digest.hexdigest()[:16]
    out_dir.mkdir(parents=True, exist_ok=True)
    binaries: dict[str, Path] = {}
    for name, source in SOURCES.items():
        binary = out_dir / name
        if not binary.exists():
            tmp = out_dir / f".{name}.{os.getpid()}"
            result = subprocess.run([cc, *CFLAGS, "-o", str(tmp), str(source)], capture_output=True, text=True, check=False)
            if result.returncode != 0:
                raise BenchError(f"building {source.name} failed:\n{result.stderr}")
            tmp.replace(binary)
        binaries[name] = binary
    return binaries


# ---------------------------------------------------------------- processes
def cpu_time(pid: int) -> tuple[float, int]:
    """(utime+stime in µs from /proc/PID/stat, on-CPU ns from /proc/PID/schedstat or -1)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat(5))
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            sched_ns = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        sched_ns = -1
    return ticks * 1e6 / CLK_TCK, sched_ns


def children_cpu_us() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (usage.ru_utime + usage.ru_stime) * 1e6


class ServerProcess:
    def __init__(self, name: str, argv: list[str], socket_path: Path, log_path: Path, cpu: int | None,
                 env: dict[str, str] | None = None, cwd: Path = REPO, sockets: list[Path] | None = None) -> None:
        self.name = name
        self.socket_path = socket_path
        #: every socket the process serves (one, or N for the multi-device server)
        self.sockets = sockets or [socket_path]
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                     cwd=cwd, env=env, start_new_session=True)
        if cpu is not None:
            os.sched_setaffinity(self.proc.pid, {cpu})

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait for the server's "serving" line (a connect probe would occupy its one client slot)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"{self.name} server exited ({self.proc.returncode}):\n{self.log()}")
            if self.log_path.read_bytes().count(b"serving") >= len(self.sockets) and \
                    all(path.exists() for path in self.sockets):
                return
            time.sleep(0.02)
        raise BenchError(f"{self.name} server not ready after {timeout:.0f} s:\n{self.log()}")

    def rss_kib(self) -> tuple[int, int]:
        """(VmRSS, VmHWM) of the server process in KiB: its resident memory now and at its peak."""
        fields = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            fields[key] = value.split()[0] if value.split() else "0"
        return int(fields.get("VmRSS", 0)), int(fields.get("VmHWM", 0))

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def server_python(requested: str | None) -> str:
    if requested:
        return requested
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def multi_device_config(work: Path, count: int) -> tuple[Path, list[Path]]:
    """A config serving `count` edu devices from one process, and their sockets."""
    config = work / "multi.toml"
    config.write_text(f'[[devices]]\nsocket = "{work}/multi{{n}}.sock"\ncount = {count}\n'
                      'device = { model = "edu" }\n')
    return config, [work / f"multi{n}.sock" for n in range(count)]


def start_servers(kinds: list[str], binaries: dict[str, Path], work: Path, python: str,
                  cpu: int | None, before: Path | None = None, devices: int = 0) -> dict[str, ServerProcess]:
    servers: dict[str, ServerProcess] = {}
    try:
        for kind in kinds:
            sock = work / f"{kind}.sock"
            env, cwd, sockets = None, REPO, None
            if kind == "ref":
                argv = [str(binaries["pingpong"]), "server", str(sock)]
            elif kind in ("vfu", "before"):
                argv = [python, "-m", "vfu_platform", "serve", "--socket", str(sock)]
                if kind == "before":  # the same command, on another checkout of the package
                    assert before is not None
                    env, cwd = {**os.environ, "PYTHONPATH": str(before)}, before
            elif kind == "floor":
                argv = [python, "-c", FLOOR_SERVER, str(sock)]
            elif kind == "multi":
                config, sockets = multi_device_config(work, devices)
                sock = sockets[0]
                argv = [python, "-m", "vfu_platform", "serve", "--config", str(config)]
            else:
                raise ValueError(kind)
            servers[kind] = ServerProcess(kind, argv, sock, work / f"{kind}.log", cpu, env=env, cwd=cwd,
                                          sockets=sockets)
        for server in servers.values():
            server.wait_ready()
    except BaseException:
        for server in servers.values():
            server.stop()
        raise
    return servers


# ---------------------------------------------------------------- running cases
@dataclass
class Case:
    name: str  # e.g. "vfu-read"
    server: str  # ref, vfu, floor
    op: str  # read, write, posted

    @property
    def bare(self) -> bool:
        return self.server == "ref"  # the ping-pong server does not negotiate VERSION

    @property
    def offset(self) -> int:
        return READ_OFFSET if self.op == "read" else WRITE_OFFSET


@dataclass
class Result:
    case: Case
    samples: list[int] = field(default_factory=list)  # ns per op, pooled over rounds
    round_p50: list[float] = field(default_factory=list)  # ns
    ops: int = 0  # timed ops, all rounds
    counted_ops: int = 0  # ops the server CPU is divided by (warm-up included)
    elapsed_ns: int = 0
    server_cpu_us: float = 0.0  # /proc/PID/stat utime+stime
    server_sched_ns: int = 0  # /proc/PID/schedstat on-CPU time
    client_cpu_us: float = 0.0
    first_value: int | None = None

    def pct(self, p: float) -> float:
        ordered = sorted(self.samples)
        return float(ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]) if ordered else float("nan")


def run_client(client: Path, server: ServerProcess, case: Case, args: argparse.Namespace, work: Path,
               cpu: int | None, socket_path: Path | None = None, iterations: int | None = None,
               warmup: int | None = None) -> tuple[dict[str, Any], list[int], float, int, float]:
    """One client run; returns (summary, latencies ns, server µs, server sched ns, client µs)."""
    lat_file = work / f"{case.name}.lat"
    iterations = args.iterations if iterations is None else iterations
    argv = [str(client), "--socket", str(socket_path or server.socket_path), "--op", case.op,
            "--iterations", str(iterations), "--warmup", str(args.warmup if warmup is None else warmup),
            "--offset", str(case.offset), "--batch", str(args.batch), "--latencies", str(lat_file), "--json"]
    if case.bare:
        argv.append("--bare")
    preexec = (lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None
    timeout = 60 + iterations * 0.002
    for attempt in range(4):
        before_srv = cpu_time(server.pid)
        before_cli = children_cpu_us()
        try:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, preexec_fn=preexec,
                                    check=False)
        except subprocess.TimeoutExpired:
            raise BenchError(f"{case.name}: client still running after {timeout:.0f} s\nserver log:\n{server.log()}") from None
        after_srv = cpu_time(server.pid)
        after_cli = children_cpu_us()
        if result.returncode == 3 and attempt < 3:  # server still busy with the previous client: retry
            time.sleep(0.05)
            continue
        if result.returncode != 0:
            raise BenchError(f"{case.name}: client failed ({result.returncode}): {result.stderr.strip()}\n"
                             f"server log:\n{server.log()}")
        break
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    latencies = [int(line) for line in lat_file.read_text().split()]
    sched = after_srv[1] - before_srv[1] if before_srv[1] >= 0 else -1
    return summary, latencies, after_srv[0] - before_srv[0], sched, after_cli - before_cli


def build_cases(args: argparse.Namespace) -> list[tuple[str, list[Case]]]:
    ops = ["read", "write"] + (["posted"] if args.posted else [])
    kinds = ["ref", "vfu"] + (["before"] if args.before else []) + (["multi"] if args.devices else []) + \
        (["floor"] if args.floor else [])
    return [(op, [Case(f"{kind}-{op}", kind, op) for kind in kinds]) for op in ops]


def run_benchmark(args: argparse.Namespace, binaries: dict[str, Path], work: Path) -> dict[str, Any]:
    groups = build_cases(args)
    kinds = [case.server for case in groups[0][1]]
    server_cpu, client_cpu = (1, 0) if args.pin else (None, None)
    hogs = start_contention(args.contention)
    try:
        servers = start_servers(kinds, binaries, work, server_python(args.python), server_cpu, args.before,
                                args.devices)
    except BaseException:
        stop_contention(hogs)
        raise
    results = {case.name: Result(case) for _op, cases in groups for case in cases}
    round_ratios: dict[str, list[float]] = {}
    try:
        for rnd in range(args.rounds):
            for op, cases in groups:
                order = cases if rnd % 2 == 0 else list(reversed(cases))  # ABAB... then BABA...
                for case in order:
                    server = servers[case.server]
                    device = server.sockets[(rnd * 37 + len(case.op)) % len(server.sockets)]  # another each round
                    summary, lat, srv_us, srv_ns, cli_us = run_client(
                        binaries["vfu_bench_client"], server, case, args, work, client_cpu, device)
                    res = results[case.name]
                    res.samples.extend(lat)
                    res.round_p50.append(float(summary["p50_ns"]))
                    res.ops += summary["iterations"]
                    res.counted_ops += summary["iterations"] + summary["warmup"]
                    res.elapsed_ns += summary["total_ns"]
                    res.server_cpu_us += srv_us
                    res.server_sched_ns += srv_ns if srv_ns >= 0 else 0
                    res.client_cpu_us += cli_us
                    if case.op == "read" and res.first_value is None:
                        res.first_value = summary["first_value"]
                    if not args.json:
                        print(f"  round {rnd + 1}/{args.rounds} {case.name:<13} p50 {summary['p50_ns'] / 1e3:7.2f} µs",
                              file=sys.stderr, flush=True)
                ref_p50 = results[f"ref-{op}"].round_p50[-1]
                for case in cases:
                    if case.server != "ref":
                        round_ratios.setdefault(case.name, []).append(results[case.name].round_p50[-1] / ref_p50)
        sweep = device_sweep(args, binaries["vfu_bench_client"], servers, work, client_cpu) if args.devices else None
    finally:
        for server in servers.values():
            server.stop()
        stop_contention(hogs)
    data = report(args, results, round_ratios)
    if sweep is not None:
        data["devices"] = sweep
    return data


def device_sweep(args: argparse.Namespace, client: Path, servers: dict[str, ServerProcess], work: Path,
                 cpu: int | None) -> dict[str, Any]:
    """Time a 4-byte read on every device of the multi-device server, then read its RSS.

    Every eighth device, the ping-pong reference and the one-device server run the
    same short case, so each device's p50 is divided by a reference taken moments
    before it: the per-device ratio can be set beside the one-device server's.
    """
    multi = servers["multi"]
    iterations, warmup = args.sweep_iterations, max(1, args.sweep_iterations // 10)
    ref_case, vfu_case, multi_case = (Case(f"sweep-{k}-read", k, "read") for k in ("ref", "vfu", "multi"))
    def p50(server: ServerProcess, case: Case, socket_path: Path | None = None) -> float:
        summary = run_client(client, server, case, args, work, cpu, socket_path, iterations, warmup)[0]
        return float(summary["p50_ns"])
    per_device: list[float] = []
    vfu_ratios: list[float] = []
    ref_p50 = 0.0
    for index, socket_path in enumerate(multi.sockets):
        if index % 8 == 0:
            ref_p50 = p50(servers["ref"], ref_case)
            vfu_ratios.append(p50(servers["vfu"], vfu_case) / ref_p50)
        per_device.append(p50(multi, multi_case, socket_path) / ref_p50)
        if not args.json and index % 8 == 7:
            print(f"  sweep: devices {index - 7}..{index} x ref {' '.join(f'{r:.2f}' for r in per_device[-8:])}",
                  file=sys.stderr, flush=True)
    rss, hwm = multi.rss_kib()
    one_rss, one_hwm = servers["vfu"].rss_kib()
    return {
        "count": len(multi.sockets),
        "sweep_iterations": iterations,
        "ratio_per_device": per_device,
        "ratio_min": min(per_device),
        "ratio_median": statistics.median(per_device),
        "ratio_max": max(per_device),
        "one_device_ratio_median": statistics.median(vfu_ratios),
        "rss_mib": rss / 1024, "peak_rss_mib": hwm / 1024,
        "one_device_rss_mib": one_rss / 1024, "one_device_peak_rss_mib": one_hwm / 1024,
    }


#: A process that only burns CPU: `--contention N` runs N of them beside the servers.
BUSY_LOOP = "while 1: pass"


def start_contention(count: int) -> list[subprocess.Popen[bytes]]:
    """N busy processes competing with the servers for the CPUs (the contention regime)."""
    return [subprocess.Popen([sys.executable, "-c", BUSY_LOOP], stdin=subprocess.DEVNULL, start_new_session=True)
            for _ in range(count)]


def stop_contention(hogs: list[subprocess.Popen[bytes]]) -> None:
    for hog in hogs:
        hog.kill()
        hog.wait()


def report(args: argparse.Namespace, results: dict[str, Result], round_ratios: dict[str, list[float]]) -> dict[str, Any]:
    cases: dict[str, Any] = {}
    for name, res in results.items():
        ref = results[f"ref-{res.case.op}"]
        p50 = res.pct(50)
        entry: dict[str, Any] = {
            "server": res.case.server,
            "op": res.case.op,
            "ops": res.ops,
            "p50_us": p50 / 1e3,
            "p90_us": res.pct(90) / 1e3,
            "p99_us": res.pct(99) / 1e3,
            "ops_per_s": res.ops / (res.elapsed_ns / 1e9) if res.elapsed_ns else 0.0,
            "server_cpu_us_per_op": res.server_cpu_us / res.counted_ops if res.counted_ops else 0.0,
            "server_sched_cpu_us_per_op": res.server_sched_ns / 1e3 / res.counted_ops if res.counted_ops else 0.0,
            "client_cpu_us_per_op": res.client_cpu_us / res.counted_ops if res.counted_ops else 0.0,
            "round_p50_us": [v / 1e3 for v in res.round_p50],
            "ratio_p50_vs_ref": p50 / ref.pct(50),
        }
        ref_cpu = ref.server_sched_ns / ref.counted_ops if ref.counted_ops else 0.0
        entry["cpu_ratio_vs_ref"] = (res.server_sched_ns / res.counted_ops) / ref_cpu if ref_cpu and res.counted_ops else 0.0
        if name in round_ratios:
            entry["round_ratios"] = round_ratios[name]
            entry["median_round_ratio"] = statistics.median(round_ratios[name])
        if res.first_value is not None:
            entry["first_read_value"] = f"{res.first_value:#010x}"
        cases[name] = entry
    return {
        "machine": machine_info(),
        "code": code_info(),
        "config": {"iterations": args.iterations, "warmup": args.warmup, "rounds": args.rounds,
                   "posted_batch": args.batch, "pinned": args.pin, "target_ratio": 1.25,
                   "contention": args.contention, "before": str(args.before) if args.before else None,
                   "devices": args.devices},
        "cases": cases,
    }


def machine_info() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
            "python": platform.python_version(), "loadavg": list(os.getloadavg())}


def code_info() -> dict[str, Any]:
    """Which server code was measured: HEAD and whether the package had uncommitted changes."""
    def git(*argv: str) -> str:
        try:
            result = subprocess.run(["git", *argv], cwd=REPO, capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return result.stdout.strip() if result.returncode == 0 else ""
    return {"commit": git("rev-parse", "--short", "HEAD"),
            "dirty": bool(git("status", "--porcelain", "--", "vfu_platform"))}


def print_table(data: dict[str, Any]) -> None:
    m, c = data["machine"], data["config"]
    print(f"machine: {m['cpus']} CPUs, {m['cpu_model']}, kernel {m['kernel']}, Python {m['python']}, "
          f"load {m['loadavg'][0]:.2f}")
    code = data["code"]
    print(f"server code: {code['commit'] or 'unknown'}{' + uncommitted changes' if code['dirty'] else ''}")
    print(f"{c['iterations']} timed ops per case per round (+{c['warmup']} warm-up), {c['rounds']} rounds, "
          f"posted batch {c['posted_batch']}, pinned {'yes' if c['pinned'] else 'no'}, "
          f"{c['contention']} busy processes beside the servers")
    if c["before"]:
        print(f"before: the server from {c['before']}")
    print()
    header = f"{'case':<13} {'p50 µs':>8} {'p90 µs':>8} {'p99 µs':>8} {'ops/s':>9} {'srv CPU':>8} {'srv sch':>8} " \
             f"{'cpu x':>6} {'x ref':>6}  per-round ratio"
    print(header)
    print("-" * len(header))
    for name, e in data["cases"].items():
        rounds = " ".join(f"{r:.2f}" for r in e.get("round_ratios", []))
        print(f"{name:<13} {e['p50_us']:8.2f} {e['p90_us']:8.2f} {e['p99_us']:8.2f} {e['ops_per_s']:9.0f} "
              f"{e['server_cpu_us_per_op']:8.2f} {e['server_sched_cpu_us_per_op']:8.2f} "
              f"{e['cpu_ratio_vs_ref']:6.2f} {e['ratio_p50_vs_ref']:6.2f}  {rounds}")
    print()
    print("srv CPU: server utime+stime per op (µs, /proc/PID/stat, 10 ms ticks); srv sch: same from")
    print("/proc/PID/schedstat (ns resolution); cpu x: srv sch / the ping-pong server's srv sch of the same op.")
    print("x ref: pooled p50 / the bare ping-pong p50 of the same op;")
    print(f"target for vfu: <= {c['target_ratio']}. posted: per-write time amortised over a batch of "
          f"{c['posted_batch']} NO_REPLY writes + 1 read.")
    if "devices" in data:
        d = data["devices"]
        print()
        print(f"multi: {d['count']} edu devices in one process: RSS {d['rss_mib']:.1f} MiB (peak "
              f"{d['peak_rss_mib']:.1f}); one device alone: {d['one_device_rss_mib']:.1f} MiB")
        print(f"sweep ({d['sweep_iterations']} reads per device): x ref per device min {d['ratio_min']:.2f}, "
              f"median {d['ratio_median']:.2f}, max {d['ratio_max']:.2f}; the one-device server's median "
              f"{d['one_device_ratio_median']:.2f}")
    for name, e in data["cases"].items():
        if "first_read_value" in e and e["server"] != "ref" and int(e["first_read_value"], 16) != EDU_ID:
            print(f"warning: {name} read {e['first_read_value']}, expected {EDU_ID:#010x}")


# ---------------------------------------------------------------- profiling
def run_profile(args: argparse.Namespace, binaries: dict[str, Path], work: Path) -> dict[str, Any]:
    sock = work / "profile.sock"
    stats_path = work / "server.prof"
    python = server_python(args.python)
    argv = [python, "-c", PROFILE_BOOTSTRAP, str(stats_path), "serve", "--socket", str(sock)]
    server = ServerProcess("vfu (cProfile)", argv, sock, work / "profile.log", None)
    op = args.profile_op
    case = Case(f"vfu-{op}-profiled", "vfu", op)
    try:
        server.wait_ready()
        quick = argparse.Namespace(**{**vars(args), "iterations": 2000, "warmup": 100})
        plain, *_ = run_client(binaries["vfu_bench_client"], server, case, quick, work, None)  # warm, unprofiled
        server.proc.send_signal(signal.SIGUSR1)
        time.sleep(0.2)  # the handler runs as soon as the idle loop wakes from epoll
        profiled, *_ = run_client(binaries["vfu_bench_client"], server, case, args, work, None)
        server.proc.send_signal(signal.SIGUSR2)
        deadline = time.monotonic() + 20
        while not stats_path.exists() or stats_path.stat().st_size == 0:
            if time.monotonic() > deadline or server.proc.poll() is not None:
                raise BenchError(f"no profile written:\n{server.log()}")
            time.sleep(0.05)
        time.sleep(0.2)
    finally:
        server.stop()
    ops = args.iterations + args.warmup
    stats = pstats.Stats(str(stats_path))
    rows = []
    for (filename, line, func), (_cc, ncalls, tottime, cumtime, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append({
            "function": f"{_short(filename)}:{line}({func})" if line else func,
            "ncalls": ncalls,
            "calls_per_op": ncalls / ops,
            "tottime_us_per_op": tottime * 1e6 / ops,
            "cumtime_us_per_op": cumtime * 1e6 / ops,
        })
    total = sum(r["tottime_us_per_op"] for r in rows)
    idle = sum(r["tottime_us_per_op"] for r in rows if _IDLE_MARK in r["function"])
    rows.sort(key=lambda r: r["tottime_us_per_op"], reverse=True)
    return {
        "code": code_info(),
        "loadavg": list(os.getloadavg()),
        "op": op,
        "ops": ops,
        "unprofiled_p50_us": plain["p50_ns"] / 1e3,
        "profiled_p50_us": profiled["p50_ns"] / 1e3,
        "profiled_us_per_op": total,
        "profiled_idle_us_per_op": idle,  # epoll wait: mostly waiting for the client's next request
        "profiled_busy_us_per_op": total - idle,
        "calls_per_op": sum(r["ncalls"] for r in rows) / ops,
        "top": rows[: args.top],
        "stats_file": str(args.save_profile) if args.save_profile else None,
        "_stats_path": str(stats_path),
    }


_IDLE_MARK = "'poll' of 'select.epoll'"


def _short(filename: str) -> str:
    for base in (str(REPO) + os.sep, sys.prefix + os.sep):
        if filename.startswith(base):
            return filename[len(base):]
    marker = f"{os.sep}lib{os.sep}python"
    if marker in filename:
        return "<stdlib>/" + filename.rsplit(os.sep, 1)[-1]
    return filename


def print_profile(data: dict[str, Any]) -> None:
    print(f"cProfile of the server, {data['ops']} REGION_{data['op'].upper()} ops "
          f"(p50 {data['unprofiled_p50_us']:.2f} µs unprofiled, {data['profiled_p50_us']:.2f} µs profiled)")
    code = data["code"]
    print(f"server code: {code['commit'] or 'unknown'}{' + uncommitted changes' if code['dirty'] else ''}, "
          f"load {data['loadavg'][0]:.2f}")
    print(f"{data['calls_per_op']:.1f} profiled calls per op; {data['profiled_busy_us_per_op']:.2f} µs busy per op under "
          f"the profiler (+{data['profiled_idle_us_per_op']:.2f} µs in epoll.poll, mostly idle).")
    print("cProfile adds a fixed cost to every call: rank by these numbers, do not predict savings from them.")
    print()
    print(f"{'calls/op':>8} {'tot µs/op':>9} {'cum µs/op':>9}  function")
    for r in data["top"]:
        note = "  (includes idle wait)" if _IDLE_MARK in r["function"] else ""
        print(f"{r['calls_per_op']:8.2f} {r['tottime_us_per_op']:9.3f} {r['cumtime_us_per_op']:9.3f}  {r['function']}{note}")
    if data["stats_file"]:
        print(f"\nfull stats: {data['stats_file']} (python -m pstats)")


# ---------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iterations", type=int, default=20000, help="timed ops per case per round (default 20000)")
    p.add_argument("--warmup", type=int, default=1000, help="untimed ops before each run (default 1000)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--batch", type=int, default=32, help="posted writes per synchronous read (default 32)")
    p.add_argument("--no-posted", dest="posted", action="store_false", help="skip the posted-write cases")
    p.add_argument("--no-floor", dest="floor", action="store_false", help="skip the minimal-Python floor server")
    p.add_argument("--pin", action="store_true", help="pin servers to CPU 1 and clients to CPU 0")
    p.add_argument("--contention", type=int, default=0, metavar="N",
                   help="run N busy processes beside the servers (the contention regime; default 0)")
    p.add_argument("--before", type=Path, metavar="DIR",
                   help="also time the server of another checkout (e.g. a git worktree of the old code)")
    p.add_argument("--devices", type=int, default=0, metavar="N",
                   help="also run one server process serving N edu devices ([[devices]] count = N)")
    p.add_argument("--sweep-iterations", type=int, default=2000, metavar="N",
                   help="timed reads per device in the --devices sweep (default 2000)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--profile", action="store_true", help="profile the server's hot path with cProfile instead")
    p.add_argument("--profile-op", choices=["read", "write"], default="read", help="op to profile (default read)")
    p.add_argument("--top", type=int, default=15, help="functions to list in --profile (default 15)")
    p.add_argument("--save-profile", type=Path, help="keep the raw cProfile stats in this file")
    p.add_argument("--python", help="interpreter for the servers (default: the repository's .venv)")
    p.add_argument("--cc", default=os.environ.get("CC", "gcc"), help="C compiler (default $CC or gcc)")
    p.add_argument("--build-dir", type=Path, help="where to cache the C binaries (default ~/.cache/vfu-platform-bench)")
    args = p.parse_args(argv)
    if args.contention < 0:
        p.error("--contention must not be negative")
    if not 0 <= args.devices <= 4096 or args.sweep_iterations < 1:
        p.error("--devices must be 0..4096 and --sweep-iterations positive")
    if args.before is not None and not (args.before / "vfu_platform" / "__init__.py").exists():
        p.error(f"--before {args.before}: no vfu_platform package there")
    if args.iterations < 1 or args.warmup < 0 or args.rounds < 1 or args.batch < 1 or args.top < 1:
        p.error("--iterations, --rounds, --batch and --top must be positive, --warmup not negative")
    if args.pin and (os.cpu_count() or 1) < 2:
        p.error("--pin needs two CPUs")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        binaries = build(args.build_dir, args.cc)
        # Unix socket paths are limited to 107 bytes: keep the work directory short.
        short_tmp = "/tmp" if len(tempfile.gettempdir()) > 60 else None
        with tempfile.TemporaryDirectory(prefix="vfu-bench-", dir=short_tmp) as tmp:
            work = Path(tmp)
            if args.profile:
                data = run_profile(args, binaries, work)
                if args.save_profile:
                    shutil.copyfile(data["_stats_path"], args.save_profile)
                del data["_stats_path"]
                if args.json:
                    print(json.dumps(data, indent=2))
                else:
                    print_profile(data)
            else:
                data = run_benchmark(args, binaries, work)
                if args.json:
                    print(json.dumps(data, indent=2))
                else:
                    print_table(data)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
