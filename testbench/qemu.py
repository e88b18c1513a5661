# SPDX-License-Identifier: BSD-3-Clause
"""Boot a QEMU guest against a vfio-user server and collect what the guest checked.

Used by the end-to-end tests (tests/e2e) and by scripts/demo::

    bench = provision()                           # scripts/provision-qemu.sh, cached
    run = GuestRun(bench, "edu", workdir,
                   server=[python, "-m", "vfu_platform", "serve", "--socket", "{sock}"])
    result = run.run()
    assert result.passed, result.describe()

One run: build (or reuse) the initramfs; start the server command in its own process
group and wait for its socket; boot QEMU (q35, TCG unless real KVM is usable) with
`-device vfio-user-pci` on a PCIe root port (so the guest has a reset method: a
secondary bus reset, which QEMU turns into DEVICE_RESET), the host root shared over
virtio-9p, and RAM either memfd-backed and shared (DMA through mapped fds) or plain
(DMA through DMA_READ/DMA_WRITE messages); stream the serial console into a log with
host timestamps; parse CHECK/INFO/RESULT lines; stop everything it started.

A guest that never reaches its /init (a rare TCG early-boot hang) is retried once.

Guest programs that use guest-side vfio-pci (guest/msix.py) need the VFIO modules and
a vIOMMU: `GuestRun(..., **viommu_options())` adds them (extra_modules, kernel_args,
early_qemu_args).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import selectors
import shlex
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from testbench.paths import GUEST as GUEST_DIR
from testbench.paths import REPO, SCRIPTS

GUEST_INIT = GUEST_DIR / "init.sh"
GUEST_PACKAGE = "testbench.guest"
# Loaded by /init before the program runs (the 9p stack is always loaded).
GUEST_MODULES = ("9pnet_virtio", "9p", "uio_pci_generic")
GUEST_MEMORY = "256M"          # below edu's 28-bit DMA mask
# Guest-side vfio-pci (no Debian kernel has VFIO_NOIOMMU): the modules, and a vIOMMU.
# vfio-user-pci requires caching-mode=on (else QEMU aborts: "requires caching mode").
# Interrupt remapping is not needed: guest vfio_iommu_type1 attaches without it.
VFIO_MODULES = ("vfio", "vfio_iommu_type1", "vfio_pci")
VIOMMU_DEVICE = "intel-iommu,caching-mode=on"
VIOMMU_KERNEL_ARGS = ("intel_iommu=on",)
ROOT_PORT_ID = "vfu-rp0"
SERVER_TRACE_NAME = "server-trace.jsonl"   # conventional name inside a run's workdir
DUT_ID = "dut0"

_CHECK_RE = re.compile(r"^CHECK (\S+) (PASS|FAIL)(?: (.*))?$")
_INFO_RE = re.compile(r"^INFO (\S+) ?(.*)$")
_RESULT_RE = re.compile(r"^RESULT (PASS|FAIL)\b(.*)$")
_EXIT_RE = re.compile(r"^VFU-EXIT rc=(\d+)")
_INIT_RE = re.compile(r"^VFU-INIT uptime=([\d.]+)")


def default_cache() -> Path:
    """Where provisioning keeps QEMU, the kernel and busybox: outside the checkout."""
    return Path(os.environ.get("VFU_CACHE") or Path.home() / ".cache" / "vfu-platform")


def default_python() -> str:
    """The interpreter the guest runs (a host path; the guest chroots into the host root)."""
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


class BenchError(RuntimeError):
    """Provisioning or building the guest failed; carries the tool's output."""


# ---- provisioning ---------------------------------------------------------------------


@dataclass(frozen=True)
class Bench:
    """Paths of a provisioned bench (from the env file of scripts/provision-qemu.sh)."""

    dir: Path
    qemu: Path
    qemu_version: str
    busybox: Path
    kernel: Path
    kver: str
    kmoddir: Path
    kernel_flavour: str
    qemu_aarch64: Path | None = None
    kernel_arm64: Path | None = None
    busybox_arm64: Path | None = None
    provision_s: float = 0.0

    @property
    def manifest(self) -> Path:
        """`package version arch` per line: every package the bench was made from."""
        return self.dir / "manifest.txt"

    def versions(self) -> str:
        """One line naming what matters in a failure report: QEMU, kernels, busybox."""
        wanted = ("qemu-system-x86", "qemu-system-arm", "seabios", "linux-image-", "busybox-static")
        try:
            lines = self.manifest.read_text().splitlines()
        except OSError:
            return f"{self.qemu_version} (no manifest at {self.manifest})"
        picked = [line.rsplit(" ", 1)[0] if line.endswith(" all") else line
                  for line in lines if line.startswith(wanted)]
        return "; ".join(picked)

    @classmethod
    def from_env_file(cls, path: Path, provision_s: float = 0.0) -> Bench:
        values: dict[str, str] = {}
        for line in path.read_text().splitlines():
            line = line.strip()
            if not line or line.startswith("#") or "=" not in line:
                continue
            key, _, raw = line.partition("=")
            words = shlex.split(raw)
            values[key] = words[0] if words else ""
        try:
            return cls(
                dir=Path(values["VFU_BENCH_DIR"]),
                qemu=Path(values["VFU_QEMU"]),
                qemu_version=values["VFU_QEMU_VERSION"],
                busybox=Path(values["VFU_BUSYBOX"]),
                kernel=Path(values["VFU_KERNEL"]),
                kver=values["VFU_KVER"],
                kmoddir=Path(values["VFU_KMODDIR"]),
                kernel_flavour=values["VFU_KERNEL_FLAVOUR"],
                qemu_aarch64=_optional_path(values.get("VFU_QEMU_AARCH64")),
                kernel_arm64=_optional_path(values.get("VFU_KERNEL_ARM64")),
                busybox_arm64=_optional_path(values.get("VFU_BUSYBOX_ARM64")),
                provision_s=provision_s,
            )
        except KeyError as e:
            raise BenchError(f"{path}: missing {e.args[0]}") from None


def _optional_path(value: str | None) -> Path | None:
    return Path(value) if value else None


def provision(dest: Path | None = None) -> Bench:
    """Run scripts/provision-qemu.sh (instant when the cache is ready) and load its env file.

    The script's progress lines go straight to this process's stderr (a first run
    downloads about 250 MB and smoke-boots both QEMUs: a user waiting must see it move);
    on failure its closing paragraph (which step, what is missing, where the log is)
    is the BenchError's message.
    """
    dest = dest or default_cache()
    t0 = time.monotonic()
    rc, output = run_streaming(["bash", str(SCRIPTS / "provision-qemu.sh"), str(dest)])
    if rc != 0:
        raise BenchError(failure_paragraph(output, "provision-qemu"))
    return Bench.from_env_file(Path(dest) / "env.sh", provision_s=time.monotonic() - t0)


def run_streaming(command: Sequence[str], env: Mapping[str, str] | None = None) -> tuple[int, str]:
    """Run a provisioning script: each line it prints goes to stderr as it comes, and is kept."""
    proc = subprocess.Popen(list(command), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=dict(env) if env is not None else None)
    assert proc.stdout is not None
    kept: list[str] = []
    with proc.stdout:
        for line in proc.stdout:
            kept.append(line)
            sys.stderr.write(line)
            sys.stderr.flush()
    return proc.wait(), "".join(kept)


def failure_paragraph(output: str, script: str) -> str:
    """The closing paragraph a provisioning script prints on failure, or the tail of its output."""
    start = output.rfind(f"{script}: FAILED")
    text = output[start:] if start >= 0 else "\n".join(output.strip().splitlines()[-15:])
    return text.strip() or f"{script} failed and printed nothing"


def build_initramfs(bench: Bench, *, modules: Sequence[str] = GUEST_MODULES, init: Path = GUEST_INIT,
                    out_dir: Path | None = None) -> Path:
    """The guest initramfs for these modules and /init, built once and kept by content hash."""
    script = SCRIPTS / "mkinitramfs.sh"
    h = hashlib.sha256()
    for part in (init.read_bytes(), script.read_bytes(), " ".join(sorted(modules)).encode(),
                 bench.kver.encode(), str(bench.busybox.stat().st_size).encode()):
        h.update(part)
        h.update(b"\0")
    out_dir = out_dir or bench.dir / "initramfs"
    out = out_dir / f"guest-{h.hexdigest()[:16]}.cpio.gz"
    if out.exists():
        return out
    cmd = ["bash", str(script), "-e", str(bench.dir / "env.sh"), "-i", str(init), "-o", str(out)]
    for m in modules:
        cmd += ["-m", m]
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0 or not out.exists():
        raise BenchError(f"mkinitramfs.sh failed (rc={proc.returncode}):\n{proc.stdout[-4000:]}")
    return out


def pick_accel(accel: str = "auto") -> list[str]:
    """QEMU accelerator arguments. `auto` uses KVM only on a host with real VMX/SVM.

    Nested "PVM" KVM (module kvm_pvm) exposes /dev/kvm but cannot run a stock guest
    kernel (emulation failure in the decompressor), so it counts as no KVM.
    """
    if accel == "auto":
        accel = "tcg"
        try:
            flags = Path("/proc/cpuinfo").read_text()
            usable = os.access("/dev/kvm", os.R_OK | os.W_OK) and not Path("/sys/module/kvm_pvm").exists()
            if usable and re.search(r"\b(vmx|svm)\b", flags):
                accel = "kvm"
        except OSError:
            pass
    if accel == "kvm":
        return ["-accel", "kvm", "-cpu", "host"]
    if accel == "tcg":
        return ["-accel", "tcg"]
    raise ValueError(f"unknown accelerator {accel!r}")


# ---- results --------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


@dataclass
class GuestResult:
    """What one guest run produced. `passed` needs RESULT PASS and a clean program exit."""

    name: str
    workdir: Path
    console_path: Path
    server_log_path: Path | None
    qemu_trace_path: Path | None
    checks: dict[str, Check] = field(default_factory=dict)
    infos: dict[str, str] = field(default_factory=dict)
    result: str | None = None
    result_line: str = ""
    program_rc: int | None = None
    reached_init: bool = False
    attempts: int = 0
    timed_out: bool = False
    qemu_returncode: int | None = None
    server_returncode: int | None = None
    server_exited_early: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    qemu_command: list[str] = field(default_factory=list)
    server_command: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.result == "PASS" and self.program_rc == 0

    def failed_checks(self) -> list[Check]:
        return [c for c in self.checks.values() if not c.passed]

    def detail(self, name: str) -> str | None:
        c = self.checks.get(name)
        return None if c is None else c.detail

    def summary(self) -> str:
        n = len(self.checks)
        ok = sum(c.passed for c in self.checks.values())
        def secs(key: str) -> str:
            return f"{self.timings[key]:.1f}s" if key in self.timings else "-"
        return (f"{self.name}: {self.result or 'NO RESULT'} {ok}/{n} checks passed, "
                f"attempts={self.attempts}, to /init {secs('qemu_to_init_s')}, total {secs('total_s')}")

    def describe(self, tail: int = 40) -> str:
        """A report for a failed assertion: failing checks, console and server log tails."""
        out = [self.summary()]
        if self.timed_out:
            out.append("TIMED OUT")
        if self.server_exited_early:
            out.append(f"server exited before the guest finished (rc={self.server_returncode})")
        for c in self.failed_checks():
            out.append(f"  FAIL {c.name}: {c.detail}")
        out.append(f"--- console ({self.console_path}), last {tail} lines")
        out += _tail(self.console_path, tail)
        if self.server_log_path:
            out.append(f"--- server log ({self.server_log_path}), last {tail} lines")
            out += _tail(self.server_log_path, tail)
        return "\n".join(out)

    def server_trace(self) -> ServerTrace:
        """Counts from our server's trace; the run must have used `server_argv(trace=workdir/...)`."""
        path = self.workdir / SERVER_TRACE_NAME
        if not path.exists():
            raise FileNotFoundError(f"the server wrote no trace at {path}")
        return ServerTrace.load(path)

    def to_json(self) -> str:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, Path):
                d[k] = str(v)
        return json.dumps(d, indent=2, default=str)


def _tail(path: Path, n: int) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-n:]
    except OSError:
        return ["(missing)"]


# ---- processes ------------------------------------------------------------------------


def _stop_group(proc: subprocess.Popen[bytes], grace: float = 5.0) -> int | None:
    """SIGTERM the process group `proc` leads (it was started with its own session), then SIGKILL."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    try:  # whatever else is left in the group (children of the leader)
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        return proc.wait(grace)
    except subprocess.TimeoutExpired:
        return None


def _wait_socket(path: Path, proc: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if stat.S_ISSOCK(path.stat().st_mode):
                return True
        except FileNotFoundError:
            pass
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


# ---- one guest run ----------------------------------------------------------------------


@dataclass
class GuestRun:
    """Configuration of one guest run; `run()` executes it.

    server          argv of a vfio-user server; "{sock}" and "{workdir}" are substituted.
                    The guest then gets `-device vfio-user-pci` on that socket.
    inproc_device   a QEMU device to test instead (e.g. "edu": the reference), placed
                    where the vfio-user device would be.
    program         guest program: a module under testbench.guest ("edu")
                    or a full module name.
    params          vfu.<key>=<value> words for the guest program.
    shared_memory   guest RAM as memory-backend-memfd,share=on (DMA_MAP carries fds);
                    False: plain RAM (the server must use DMA_READ/DMA_WRITE).
    extra_qemu_args QEMU arguments appended at the end of the command line.
    early_qemu_args QEMU arguments placed before any -device (so that a vIOMMU is
                    created before the PCI devices it translates for).
    extra_modules   guest kernel modules added to the initramfs and loaded by /init
                    after the default ones (e.g. VFIO_MODULES).
    kernel_args     extra guest kernel command-line words (e.g. "intel_iommu=on").
    """

    bench: Bench
    program: str
    workdir: Path
    server: Sequence[str] | None = None
    inproc_device: str | None = None
    params: Mapping[str, str] = field(default_factory=dict)
    shared_memory: bool = True
    root_port: bool = True
    extra_qemu_args: Sequence[str] = ()
    early_qemu_args: Sequence[str] = ()
    extra_modules: Sequence[str] = ()
    kernel_args: Sequence[str] = ()
    qemu_trace: Sequence[str] = ()
    accel: str = "auto"
    python: str = field(default_factory=default_python)
    timeout: float = 120.0
    boot_timeout: float = 60.0
    socket_timeout: float = 30.0
    name: str = ""
    echo: bool = False

    # -- command lines --

    def _module(self) -> str:
        return self.program if "." in self.program else f"{GUEST_PACKAGE}.{self.program}"

    def modules(self) -> tuple[str, ...]:
        """Guest kernel modules of this run: the defaults, then `extra_modules` (no duplicates)."""
        return tuple(dict.fromkeys([*GUEST_MODULES, *self.extra_modules]))

    def kernel_cmdline(self) -> str:
        words = ["console=ttyS0", "panic=-1", "quiet", "loglevel=4",
                 f"vfu.run={self._module()}", f"vfu.python={self.python}", f"vfu.src={REPO}",
                 f"vfu.modules={','.join(m for m in self.modules() if not m.startswith('9p'))}"]
        for word in self.kernel_args:
            if not word or any(c.isspace() for c in word):
                raise ValueError(f"kernel argument {word!r} is empty or contains whitespace")
            words.append(word)
        for k, v in self.params.items():
            if any(c.isspace() for c in f"{k}{v}"):
                raise ValueError(f"guest parameter {k}={v!r} contains whitespace")
            words.append(f"vfu.{k}={v}")
        return " ".join(words)

    def qemu_command(self, initrd: Path, sock: Path, trace: Path | None) -> list[str]:
        cmd = [str(self.bench.qemu), *pick_accel(self.accel), "-machine", "q35", "-m", GUEST_MEMORY,
               "-smp", "1", "-nodefaults", "-no-user-config", "-display", "none", "-monitor", "none",
               "-serial", "stdio", "-no-reboot",
               "-kernel", str(self.bench.kernel), "-initrd", str(initrd),
               "-append", self.kernel_cmdline(),
               "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap"]
        cmd += list(self.early_qemu_args)
        bus: dict[str, str] = {}
        if self.root_port:
            cmd += ["-device", f"pcie-root-port,id={ROOT_PORT_ID},bus=pcie.0,chassis=1,slot=1"]
            bus = {"bus": ROOT_PORT_ID}
        if self.server is not None:
            dev = {"driver": "vfio-user-pci", "id": DUT_ID, **bus,
                   "socket": {"type": "unix", "path": str(sock)}}
            cmd += ["-device", json.dumps(dev, separators=(",", ":"))]
        if self.inproc_device:
            cmd += ["-device", ",".join([self.inproc_device, f"id={DUT_ID}", *(f"{k}={v}" for k, v in bus.items())])]
        if self.shared_memory:
            cmd += ["-object", f"memory-backend-memfd,id=ram0,size={GUEST_MEMORY},share=on",
                    "-machine", "memory-backend=ram0"]
        if trace is not None:
            for ev in self.qemu_trace:
                cmd += ["-trace", f"enable={ev}"]
            cmd += ["-D", str(trace)]
        cmd += list(self.extra_qemu_args)
        return cmd

    def server_command(self, sock: Path) -> list[str]:
        assert self.server is not None
        return [a.replace("{sock}", str(sock)).replace("{workdir}", str(self.workdir)) for a in self.server]

    # -- the run --

    def run(self) -> GuestResult:
        t_start = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        name = self.name or self.program
        res = GuestResult(
            name=name, workdir=self.workdir, console_path=self.workdir / "console.log",
            server_log_path=self.workdir / "server.log" if self.server is not None else None,
            qemu_trace_path=self.workdir / "qemu-trace.log" if self.qemu_trace else None,
        )
        for p in (res.console_path, res.server_log_path, res.qemu_trace_path):
            if p is not None and p.exists():
                p.unlink()
        t0 = time.monotonic()
        initrd = build_initramfs(self.bench, modules=self.modules())
        res.timings["initramfs_s"] = time.monotonic() - t0
        for attempt in (1, 2):
            res.attempts = attempt
            retry = self._attempt(res, initrd, attempt)
            if not retry or attempt == 2:
                break
            self._log(res, f"guest never reached /init (attempt {attempt}): retrying once")
        res.timings["total_s"] = time.monotonic() - t_start
        (self.workdir / "result.json").write_text(res.to_json())
        return res

    def _log(self, res: GuestResult, msg: str) -> None:
        with open(res.console_path, "a") as f:
            f.write(f"# harness: {msg}\n")
        if self.echo:
            sys.stderr.write(f"[{res.name}] {msg}\n")

    def _attempt(self, res: GuestResult, initrd: Path, attempt: int) -> bool:
        """One boot; True when it is worth one retry (the guest never reached /init)."""
        # A fresh socket path per attempt: QEMU does not reconnect, the server is restarted.
        sock = self.workdir / f"vfio-user-{attempt}.sock"
        sock.unlink(missing_ok=True)
        # The server appends to its trace; a retried boot starts a fresh one.
        (self.workdir / SERVER_TRACE_NAME).unlink(missing_ok=True)
        server: subprocess.Popen[bytes] | None = None
        qemu: subprocess.Popen[bytes] | None = None
        res.checks.clear()
        res.infos.clear()
        res.result, res.result_line, res.program_rc = None, "", None
        res.timed_out = res.server_exited_early = res.reached_init = False
        try:
            if self.server is not None:
                assert res.server_log_path is not None
                argv = self.server_command(sock)
                res.server_command = argv
                with open(res.server_log_path, "ab") as log:
                    log.write(f"# attempt {attempt}: {shlex.join(argv)}\n".encode())
                    log.flush()
                    t0 = time.monotonic()
                    server = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                              start_new_session=True, cwd=REPO)
                if not _wait_socket(sock, server, self.socket_timeout):
                    rc = server.poll()
                    res.server_exited_early = rc is not None
                    res.server_returncode = rc
                    self._log(res, f"server did not create {sock} (rc={rc})")
                    return False  # not a boot hang: no retry
                res.timings["server_ready_s"] = time.monotonic() - t0

            cmd = self.qemu_command(initrd, sock, res.qemu_trace_path)
            res.qemu_command = cmd
            (self.workdir / "qemu.cmd").write_text(shlex.join(cmd) + "\n")
            t_qemu = time.monotonic()
            qemu = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            self._stream(res, qemu, server, t_qemu)
            res.qemu_returncode = _stop_group(qemu, grace=2.0) if qemu.poll() is None else qemu.returncode
            res.timings["qemu_total_s"] = time.monotonic() - t_qemu
            return not res.reached_init
        finally:
            if qemu is not None and qemu.poll() is None:
                _stop_group(qemu, grace=2.0)
            if server is not None:
                early = server.poll()
                if early is not None and res.result is None:
                    res.server_exited_early = True
                res.server_returncode = early if early is not None else _stop_group(server)

    def _stream(self, res: GuestResult, qemu: subprocess.Popen[bytes], server: subprocess.Popen[bytes] | None,
                t_qemu: float) -> None:
        """Read the console until QEMU exits, timestamping each line and parsing the protocol."""
        assert qemu.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(qemu.stdout, selectors.EVENT_READ)
        os.set_blocking(qemu.stdout.fileno(), False)
        buf = b""
        deadline = t_qemu + self.timeout
        boot_deadline = t_qemu + self.boot_timeout
        exit_deadline: float | None = None
        with open(res.console_path, "a", errors="replace") as con:

            def note(msg: str) -> None:
                con.write(f"# harness: {msg}\n")
                con.flush()
                if self.echo:
                    sys.stderr.write(f"[{res.name}] {msg}\n")

            note(f"attempt {res.attempts}: {shlex.join(res.qemu_command)}")

            def line_out(raw: bytes) -> None:
                line = raw.decode(errors="replace").rstrip("\r\n").replace("\r", "")
                now = time.monotonic() - t_qemu
                con.write(f"+{now:7.3f} {line}\n")
                con.flush()
                if self.echo:
                    sys.stderr.write(f"[{res.name} +{now:6.2f}] {line}\n")
                self._parse(res, line, now)

            eof = False
            while not eof:
                now = time.monotonic()
                if not res.reached_init and now > boot_deadline:
                    note(f"no /init after {self.boot_timeout:.0f}s: stopping QEMU")
                    break
                if now > deadline:
                    res.timed_out = True
                    note(f"timeout after {self.timeout:.0f}s: stopping QEMU")
                    break
                if exit_deadline is None and "program_exit_s" in res.timings:
                    exit_deadline = now + 15.0
                if exit_deadline is not None and now > exit_deadline:
                    note("guest did not power off after its program ended: stopping QEMU")
                    break
                if server is not None and not res.server_exited_early and server.poll() is not None:
                    res.server_exited_early = True
                    note(f"server exited with rc={server.returncode} while the guest ran")
                for _key, _ev in sel.select(timeout=0.5):
                    try:
                        chunk = os.read(qemu.stdout.fileno(), 65536)
                    except BlockingIOError:
                        continue
                    if not chunk:
                        eof = True
                        break
                    buf += chunk
                    *lines, buf = buf.split(b"\n")
                    for raw in lines:
                        line_out(raw)
            if buf:
                line_out(buf)
        sel.close()

    @staticmethod
    def _parse(res: GuestResult, line: str, now: float) -> None:
        if m := _INIT_RE.match(line):
            res.reached_init = True
            res.timings["qemu_to_init_s"] = now
            res.timings["guest_uptime_at_init_s"] = float(m.group(1))
        elif m := _CHECK_RE.match(line):
            res.checks[m.group(1)] = Check(m.group(1), m.group(2) == "PASS", (m.group(3) or "").strip())
        elif m := _INFO_RE.match(line):
            res.infos[m.group(1)] = m.group(2).strip()
        elif m := _RESULT_RE.match(line):
            res.result, res.result_line = m.group(1), line
            res.timings["init_to_result_s"] = now - res.timings.get("qemu_to_init_s", 0.0)
        elif m := _EXIT_RE.match(line):
            res.program_rc = int(m.group(1))
            res.timings["program_exit_s"] = now


def viommu_options() -> dict[str, tuple[str, ...]]:
    """GuestRun options for guest-side vfio-pci: the VFIO modules and an intel-iommu.

    Use as `GuestRun(..., **viommu_options())`.
    """
    return {
        "early_qemu_args": ("-device", VIOMMU_DEVICE),
        "kernel_args": VIOMMU_KERNEL_ARGS,
        "extra_modules": VFIO_MODULES,
    }


# ---- our server -------------------------------------------------------------------------


def server_argv(device: str = "edu", *, trace: Path | None = None, verbose: bool = True,
                python: str | None = None, extra: Sequence[str] = ()) -> list[str]:
    """The command line of our server for `GuestRun(server=...)` ("{sock}" is filled in later)."""
    argv = [python or default_python(), "-m", "vfu_platform", "serve", "--socket", "{sock}", "--device", device]
    if trace is not None:
        argv += ["--trace", str(trace)]
    if verbose:
        argv.append("-v")
    return argv + list(extra)


@dataclass
class ServerTrace:
    """Counts from our server's JSON-lines trace (`serve --trace FILE`).

    commands: requests by name, whichever side sent them (DMA_READ/DMA_WRITE go from
    server to client); events: IRQ and session events by name; errors: replies that
    carried an errno, as (command, errno).
    """

    commands: dict[str, int] = field(default_factory=dict)
    events: dict[str, int] = field(default_factory=dict)
    errors: list[tuple[str, int]] = field(default_factory=list)
    fds_on_dma_map: int = 0

    @classmethod
    def load(cls, path: Path) -> ServerTrace:
        st = cls()
        for line in path.read_text(errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("kind") == "msg":
                cmd = str(rec.get("cmd"))
                if rec.get("type") == "command":
                    st.commands[cmd] = st.commands.get(cmd, 0) + 1
                    if cmd == "DMA_MAP" and rec.get("fds"):
                        st.fds_on_dma_map += 1
                if rec.get("errno"):
                    st.errors.append((cmd, int(rec["errno"])))
            elif rec.get("kind") == "event":
                ev = str(rec.get("event"))
                st.events[ev] = st.events.get(ev, 0) + 1
        return st
