# SPDX-License-Identifier: BSD-3-Clause
"""Guest-driver harness: stock Linux drivers on devices bridged by our server.

A scenario boots a busybox guest (Arm `virt` with GICv3/ITS, or x86 `q35`) whose
whole userland is an initramfs: the static busybox of the bench, our bridge module
`vfu_bridge.ko` (built for the provisioned trixie 6.12 guest kernel), the
modules it needs that the kernel does not build in, a small `gpio-wait` helper,
and a generated `/init` shell program that prints `CHECK name PASS|FAIL detail`
lines and a final `RESULT`. The server runs with `--trace` (and `--control` for
the models that take host-side commands); QEMU attaches it with vfio-user-pci on
a PCIe root port.

    bench = provision_driver_bench("arm64")
    res = DriverRun(bench, scenario, workdir).run()
    assert res.passed, res.describe()

Host actions: the guest prints `VFU-HOST <word> <args>` and blocks reading its
console; the harness runs the scenario's action for <word> (drive a GPIO input
through the control socket, kill the server, read the UART's host side, ...)
and types `VFU-ACK <word> ok|err <detail>` into the guest's serial input. That
line is the hand-off: nothing on either side waits for a fixed time.

What is reused from `qemu` (the x86 e2e harness): the bench provisioning, process
start/stop helpers, the console protocol parser (`GuestRun._parse`), the result
and trace classes. What differs: no 9p and no host Python in the guest (an arm64
guest cannot run the host's x86 interpreter), so the programs are busybox sh; the
initramfs is written by `guest_image` (a newc cpio, no host cpio or root needed for
the /dev/console node) because scripts/mkinitramfs.sh runs its busybox on the host.
The scenarios themselves are in `driver_scenarios`; the trace analysis (raise ->
deliver -> EOI, FIFO order) in `irq_timeline`.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import selectors
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from testbench import qemu
from testbench.guest_image import Cpio, modinfo, module_closure
from testbench.irq_timeline import Delivery, IrqTimeline
from testbench.qemu import BenchError, Check, GuestResult, ServerTrace

REPO = qemu.REPO
SCRIPTS = qemu.SCRIPTS
GPIO_WAIT_SRC = Path(__file__).resolve().parent / "gpio_wait.c"
GUEST_MEMORY = "256M"
ROOT_PORT_ID = "vfu-rp0"
MODULE_NAME = "vfu_bridge"
#: where /init finds the bridge module inside the image
GUEST_MODULE_PATH = f"/lib/modules/{MODULE_NAME}.ko"
GUEST_HELPER_PATH = "/bin/gpio-wait"

_HOST_RE = re.compile(r"^VFU-HOST (\S+) ?(.*)$")
#: console lines of a guest kernel in trouble (the first one is kept in infos["kernel_oops"])
_OOPS_RE = re.compile(r"\] (Kernel panic|Oops|BUG:|WARNING:|Unable to handle kernel|Internal error:)")


# ---- architectures -----------------------------------------------------------------


@dataclass(frozen=True)
class Arch:
    """What differs between the two guests: machine, console, QEMU and busybox binaries."""

    name: str                    # Debian architecture: arm64, amd64
    machine: tuple[str, ...]
    console: str
    kernel_args: tuple[str, ...] = ()

    def qemu(self, bench: qemu.Bench) -> Path:
        path = bench.qemu_aarch64 if self.name == "arm64" else bench.qemu
        if path is None:
            raise BenchError(f"{bench.dir}/env.sh names no QEMU for {self.name}: rerun scripts/provision-qemu.sh")
        return path

    def busybox(self, bench: qemu.Bench) -> Path:
        path = bench.busybox_arm64 if self.name == "arm64" else bench.busybox
        if path is None:
            raise BenchError(f"{bench.dir}/env.sh names no busybox for {self.name}: rerun scripts/provision-qemu.sh")
        return path


ARCHES: dict[str, Arch] = {
    # virt: GICv3 has an ITS by default (MSI-X), INTx arrives as a GIC level line.
    "arm64": Arch("arm64", ("-machine", "virt,gic-version=3", "-cpu", "cortex-a57"), "ttyAMA0"),
    # q35: the ISA UART at 0x3f8 is ttyS0 (the console); a bridged 8250 takes a free slot.
    "amd64": Arch("amd64", ("-machine", "q35"), "ttyS0", ("8250.nr_uarts=8",)),
}


# ---- provisioning ------------------------------------------------------------------


@dataclass(frozen=True)
class GuestKernel:
    """The env file of scripts/provision-guest-kernel.sh for one architecture."""

    arch: str
    kver: str
    image: Path
    modules: Path
    kconfig: Path
    ready: bool
    values: Mapping[str, str]

    @classmethod
    def from_env_file(cls, path: Path) -> GuestKernel:
        values = _read_env(path)
        try:
            return cls(arch=values["GK_ARCH"], kver=values["GK_KVER"], image=Path(values["GK_IMAGE"]),
                       modules=Path(values["GK_MODULES"]), kconfig=Path(values["GK_KCONFIG"]),
                       ready=values.get("GK_READY") == "1", values=values)
        except KeyError as e:
            raise BenchError(f"{path}: missing {e.args[0]}") from None

    def config(self, option: str) -> str | None:
        """The value of CONFIG_<option> ("y", "m", a string) or None when unset."""
        want = f"CONFIG_{option}="
        for line in self.kconfig.read_text(errors="replace").splitlines():
            if line.startswith(want):
                return line[len(want):].strip('"')
        return None

    def tool(self, name: str) -> Path:
        """A cross tool (CC, LD, ...) from GK_MAKE_ARGS."""
        for word in shlex.split(self.values.get("GK_MAKE_ARGS", "")):
            key, _, value = word.partition("=")
            if key == name and value:
                return Path(value)
        raise BenchError(f"provision-guest-kernel.sh env for {self.arch} has no {name} in GK_MAKE_ARGS")


@dataclass(frozen=True)
class DriverBench:
    """Everything one guest-driver scenario needs, provisioned."""

    qemu: qemu.Bench
    arch: Arch
    kernel: GuestKernel
    module: Path          # vfu_bridge.ko for kernel.kver
    helper: Path          # gpio-wait for arch

    def versions(self) -> str:
        return f"{self.qemu.qemu_version}; guest kernel {self.kernel.kver}; module {self.module}"


def _read_env(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, raw = line.partition("=")
        words = shlex.split(raw)
        values[key] = words[0] if words else ""
    return values


def driver_cache() -> Path:
    return qemu.default_cache() / "guest-drivers"


def provision_guest_kernel(arch: str) -> GuestKernel:
    """scripts/provision-guest-kernel.sh --arch ARCH (cached) and its env file; BenchError if not ready."""
    script = SCRIPTS / "provision-guest-kernel.sh"
    if not script.exists():
        raise BenchError(f"{script} does not exist (the guest-kernel provisioning has not landed)")
    rc, output = qemu.run_streaming(["bash", str(script), "--arch", arch])
    envf = qemu.default_cache() / "guest-kernel" / arch / "env.sh"
    if rc != 0:
        raise BenchError(f"provision-guest-kernel.sh --arch {arch} failed (rc={rc}):\n"
                         + "\n".join(output.strip().splitlines()[-15:]))
    if not envf.exists():
        raise BenchError(f"provision-guest-kernel.sh --arch {arch} wrote no {envf}")
    gk = GuestKernel.from_env_file(envf)
    if not gk.ready:
        raise BenchError(f"{envf}: GK_READY is not 1 (the toolchain step did not finish)")
    for p in (gk.image, gk.modules, gk.kconfig):
        if not p.exists():
            raise BenchError(f"{envf}: {p} does not exist")
    return gk


def provision_module(arch: str, kernel: GuestKernel) -> Path:
    """scripts/guest-module --arch ARCH prints the path of vfu_bridge.ko; check its vermagic."""
    script = SCRIPTS / "guest-module"
    if not script.exists():
        raise BenchError(f"{script} does not exist (the guest module has not landed)")
    proc = subprocess.run([str(script), "--arch", arch], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, cwd=REPO)
    sys.stderr.write(proc.stderr)
    lines = [ln.strip() for ln in proc.stdout.splitlines() if ln.strip()]
    if proc.returncode != 0 or not lines:
        raise BenchError(f"scripts/guest-module --arch {arch} failed (rc={proc.returncode}):\n"
                         + "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:]))
    path = Path(lines[-1])
    if not path.is_file():
        raise BenchError(f"scripts/guest-module --arch {arch} printed {path}, which is not a file")
    vermagic = modinfo(path.read_bytes()).get("vermagic", "")
    if not vermagic.startswith(kernel.kver + " "):
        raise BenchError(f"{path}: vermagic {vermagic!r} is not for {kernel.kver}")
    return path


def build_helper(kernel: GuestKernel) -> Path:
    """gpio-wait for the guest's architecture, with the provisioned cross compiler (cached by hash)."""
    cc, ld = kernel.tool("CC"), kernel.tool("LD")
    src = GPIO_WAIT_SRC.read_bytes()
    h = hashlib.sha256(src + kernel.arch.encode() + str(cc).encode()).hexdigest()[:16]
    out = driver_cache() / kernel.arch / f"gpio-wait-{h}"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    obj = out.with_suffix(".o")
    cflags = ["-O2", "-ffreestanding", "-fno-stack-protector", "-fno-pic", "-fno-asynchronous-unwind-tables",
              "-nostdlib", "-Wall"]
    steps = [["nice", "-n", "10", str(cc), *cflags, "-c", "-o", str(obj), str(GPIO_WAIT_SRC)],
             [str(ld), "-static", "-nostdlib", "-e", "_start", "-o", f"{out}.tmp", str(obj)]]
    for cmd in steps:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
        if proc.returncode != 0:
            raise BenchError(f"building gpio-wait failed: {shlex.join(cmd)}\n{proc.stdout[-3000:]}")
    os.replace(f"{out}.tmp", out)
    obj.unlink(missing_ok=True)
    return out


def provision_driver_bench(arch: str) -> DriverBench:
    """QEMU (provision-qemu.sh), the guest kernel, the bridge module and the helper; BenchError if any fails."""
    spec = ARCHES[arch]
    bench = qemu.provision()
    spec.qemu(bench)     # BenchError now, not at boot time, when env.sh lacks them
    spec.busybox(bench)
    kernel = provision_guest_kernel(arch)
    module = provision_module(arch, kernel)
    helper = build_helper(kernel)
    return DriverBench(qemu=bench, arch=spec, kernel=kernel, module=module, helper=helper)


# ---- the initramfs -------------------------------------------------------------------


def build_initramfs(bench: DriverBench, init: str, out: Path) -> list[str]:
    """Write the scenario's initramfs to `out`; returns the dependency modules /init loads first."""
    arc = Cpio()
    for d in ("bin", "sbin", "dev", "proc", "sys", "tmp", "run", "etc", "usr/bin", "usr/sbin", "lib/modules"):
        arc.dir(d)
    arc.file("bin/busybox", bench.arch.busybox(bench.qemu).read_bytes(), 0o755)
    arc.symlink("bin/sh", "busybox")
    # The kernel opens /dev/console before /init runs and before devtmpfs is mounted.
    arc.chardev("dev/console", 5, 1)
    arc.chardev("dev/null", 1, 3, 0o666)
    ko = bench.module.read_bytes()
    try:
        deps = module_closure(bench.kernel.modules, bench.kernel.kver, ko, MODULE_NAME)
    except LookupError as e:
        raise BenchError(str(e)) from None
    for name, data in deps:
        arc.file(f"lib/modules/deps/{name}.ko", data)
    arc.file(GUEST_MODULE_PATH, ko)
    arc.file(GUEST_HELPER_PATH, bench.helper.read_bytes(), 0o755)
    arc.file("etc/deps", "".join(f"{n}\n" for n, _ in deps).encode())
    arc.file("init", init.encode(), 0o755)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(gzip.compress(arc.finish(), compresslevel=1, mtime=0))
    return [n for n, _ in deps]


# ---- the guest program ---------------------------------------------------------------

#: /init before the scenario's body: mounts, console protocol helpers, dependency modules.
PRELUDE = r"""#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# Generated by testbench.armvirt: scenario @NAME@
/bin/busybox mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tmpfs tmpfs /tmp
stty -echo 2>/dev/null
echo "VFU-INIT uptime=$(cut -d' ' -f1 /proc/uptime) kernel=$(uname -r)"
CHECKS=0 FAILS=0
pass() { CHECKS=$((CHECKS + 1)); echo "CHECK $1 PASS ${2:-}"; }
fail() { CHECKS=$((CHECKS + 1)); FAILS=$((FAILS + 1)); echo "CHECK $1 FAIL ${2:-}"; }
# check NAME DETAIL COMMAND...: PASS when COMMAND succeeds
check() { _n=$1 _d=$2; shift 2; if "$@"; then pass "$_n" "$_d"; else fail "$_n" "$_d"; return 1; fi; }
# need NAME DETAIL COMMAND...: a check the rest of the program depends on; on failure it ends here
need() { check "$@" || { echo "INFO aborted the program stopped after the failed check $1"; finish; }; }
info() { _k=$1; shift; echo "INFO $_k $*"; }
# cond 'SHELL CONDITION': for check/need, a condition evaluated in this shell (its functions too)
cond() { eval "$1"; }
# host WORD ARGS...: ask the harness for a host-side action; HOST_STATUS, HOST_REPLY
host() {
    _w=$1
    echo "VFU-HOST $*"
    HOST_STATUS=timeout HOST_REPLY=
    while read -r -t 30 _tag _word _status _rest; do
        if [ "$_tag" = VFU-ACK ] && [ "$_word" = "$_w" ]; then
            HOST_STATUS=$_status HOST_REPLY=$_rest
            break
        fi
    done
    [ "$HOST_STATUS" = ok ]
}
# wait_for SECONDS COMMAND...: poll COMMAND every 0.1 s until it succeeds (1) or time runs out
wait_for() {
    _t=$(( $1 * 10 )); shift
    while [ $_t -gt 0 ]; do "$@" && return 0; sleep 0.1; _t=$((_t - 1)); done
    return 1
}
# irq_count N: the total of IRQ N's per-CPU counts in /proc/interrupts (empty: no such line)
irq_count() {
    awk -v n="$1:" '$1 == n { s = 0; for (i = 2; i <= NF && $i ~ /^[0-9]+$/; i++) s += $i; print s; exit }' /proc/interrupts
}
dmesg_new() { dmesg | tail -n +$((DMESG0 + 1)); }
# healthy: no oops, BUG, WARNING or "nobody cared" in the kernel log since the program started
healthy() {
    ! dmesg_new | grep -qE 'Oops|BUG:|WARNING:|Call trace:|nobody cared|Unable to handle|refcount_t|list_del corruption'
}
finish() {
    echo "--- kernel log since /init"
    dmesg_new | sed 's/^/dmesg: /'
    if [ "$CHECKS" -gt 0 ] && [ "$FAILS" -eq 0 ]; then
        echo "RESULT PASS $CHECKS checks"
    else
        echo "RESULT FAIL $FAILS of $CHECKS checks failed"
    fi
    echo "VFU-EXIT rc=0 uptime=$(cut -d' ' -f1 /proc/uptime)"
    sync
    poweroff -f
    sleep 5
}
for m in $(cat /etc/deps); do insmod /lib/modules/deps/$m.ko || echo "VFU-WARN insmod $m failed"; done
DMESG0=$(dmesg | wc -l)
"""

EPILOGUE = "\nfinish\n"


def guest_program(name: str, body: str, params: Mapping[str, object] | None = None) -> str:
    """The whole /init: the prelude, `NAME=value` parameter lines, the body, finish."""
    lines = [PRELUDE.replace("@NAME@", name)]
    for k, v in (params or {}).items():
        if not re.fullmatch(r"[A-Z_][A-Z0-9_]*", k):
            raise ValueError(f"guest parameter {k!r} is not a shell variable name")
        lines.append(f"{k}={shlex.quote(str(v))}\n")
    lines.append(body)
    lines.append(EPILOGUE)
    return "".join(lines)


# ---- host side ------------------------------------------------------------------------


class HostActionError(RuntimeError):
    """A host action failed; its message goes back to the guest (VFU-ACK word err ...)."""


@dataclass
class HostContext:
    """What host actions and scenario hooks work with."""

    workdir: Path
    control_path: Path | None
    server: subprocess.Popen[bytes] | None = None
    log: Callable[[str], None] = lambda msg: None
    extras: dict[str, object] = field(default_factory=dict)

    def control(self, command: str, timeout: float = 10.0) -> str:
        """Send one line to the server's control socket; its one-line reply (HostActionError on failure)."""
        if self.control_path is None:
            raise HostActionError("this scenario's server has no control socket")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(timeout)
                s.connect(str(self.control_path))
                s.sendall(command.encode() + b"\n")
                buf = b""
                while b"\n" not in buf:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    buf += chunk
        except OSError as e:
            raise HostActionError(f"control {command!r}: {e}") from None
        reply = buf.decode(errors="replace").strip()
        self.log(f"control {command!r} -> {reply!r}")
        return reply

    def kill_server(self, sig: int = signal.SIGKILL, timeout: float = 10.0) -> int | None:
        """Kill the server's process group and wait for it; its return code."""
        if self.server is None:
            raise HostActionError("no server")
        try:
            os.killpg(self.server.pid, sig)
        except ProcessLookupError:
            pass
        try:
            return self.server.wait(timeout)
        except subprocess.TimeoutExpired:
            raise HostActionError(f"server pid {self.server.pid} did not exit") from None


#: an action: (context, the words after the marker's word) -> the reply detail
HostAction = Callable[[HostContext, list[str]], str]


@dataclass(frozen=True)
class ActionRecord:
    word: str
    args: list[str]
    status: str
    reply: str
    t: float


@dataclass
class Scenario:
    """One guest boot: the device, the IRQ mode, the guest body and the host side.

    device      --device of our server ("pl031", "pl031,pl061", "dw-apb-uart").
    body        busybox sh run by /init after the prelude (see PRELUDE's helpers).
    params      shell variables set before the body.
    actions     marker word -> host action (VFU-HOST word args).
    setup       run after the server is up and before QEMU starts (e.g. set the RTC).
    control     start the server with `--control workdir/control.sock`.
    server_extra more server arguments; "{workdir}" is the run's directory.
    """

    name: str
    arch: str
    device: str
    body: str
    irq_mode: str = "intx"
    params: Mapping[str, object] = field(default_factory=dict)
    actions: Mapping[str, HostAction] = field(default_factory=dict)
    setup: Callable[[HostContext], None] | None = None
    teardown: Callable[[HostContext], None] | None = None
    control: bool = True
    server_extra: Sequence[str] = ()
    timeout: float = 90.0


@dataclass
class DriverResult(GuestResult):
    """A GuestResult with the host actions that ran and the scenario's arch."""

    arch: str = ""
    actions: list[ActionRecord] = field(default_factory=list)
    extras: dict[str, object] = field(default_factory=dict)

    def timeline(self) -> IrqTimeline:
        return IrqTimeline.load(self.workdir / qemu.SERVER_TRACE_NAME)

    def action(self, word: str) -> list[ActionRecord]:
        return [a for a in self.actions if a.word == word]

    def check_report(self, names: Sequence[str]) -> str:
        """"" when every named check ran and passed, else what did not, with the run's report."""
        missing = [n for n in names if n not in self.checks]
        failed = [n for n in names if n in self.checks and not self.checks[n].passed]
        if not missing and not failed:
            return ""
        return f"missing checks {missing}, failed checks {failed}\n{self.describe()}"

    def describe(self, tail: int = 40) -> str:
        text = super().describe(tail)
        if "kernel_oops" in self.infos:
            text = f"GUEST KERNEL: {self.infos['kernel_oops']}\n{text}"
        if self.actions:
            text += "\n--- host actions\n" + "\n".join(
                f"  +{a.t:.2f} {a.word} {' '.join(a.args)} -> {a.status} {a.reply}" for a in self.actions)
        return text


@dataclass
class DriverRun:
    """Boot one scenario; `run()` returns a DriverResult (never raises for a guest failure)."""

    bench: DriverBench
    scenario: Scenario
    workdir: Path
    accel: str = "tcg"
    boot_timeout: float = 60.0
    socket_timeout: float = 30.0
    echo: bool = False

    def kernel_cmdline(self) -> str:
        words = [f"console={self.bench.arch.console}", "panic=-1", "rdinit=/init", "quiet", "loglevel=4",
                 *self.bench.arch.kernel_args]
        return " ".join(words)

    def server_command(self, sock: Path) -> list[str]:
        sc = self.scenario
        extra = ["--irq-mode", sc.irq_mode]
        if sc.control:
            extra += ["--control", str(self.workdir / "control.sock")]
        argv = qemu.server_argv(sc.device, trace=self.workdir / qemu.SERVER_TRACE_NAME, extra=[*extra, *sc.server_extra])
        return [a.replace("{sock}", str(sock)).replace("{workdir}", str(self.workdir)) for a in argv]

    def qemu_command(self, initrd: Path, sock: Path) -> list[str]:
        arch = self.bench.arch
        dev = {"driver": "vfio-user-pci", "id": qemu.DUT_ID, "bus": ROOT_PORT_ID,
               "socket": {"type": "unix", "path": str(sock)}}
        return [str(arch.qemu(self.bench.qemu)), *qemu.pick_accel(self.accel), *arch.machine,
                "-m", GUEST_MEMORY, "-smp", "1", "-nodefaults", "-no-user-config", "-display", "none",
                "-monitor", "none", "-serial", "stdio", "-no-reboot",
                "-kernel", str(self.bench.kernel.image), "-initrd", str(initrd),
                "-append", self.kernel_cmdline(),
                "-device", f"pcie-root-port,id={ROOT_PORT_ID},bus=pcie.0,chassis=1,slot=1",
                "-device", json.dumps(dev, separators=(",", ":")),
                "-object", f"memory-backend-memfd,id=ram0,size={GUEST_MEMORY},share=on",
                "-machine", "memory-backend=ram0"]

    # -- the run --

    def run(self) -> DriverResult:
        t_start = time.monotonic()
        sc = self.scenario
        self.workdir.mkdir(parents=True, exist_ok=True)
        res = DriverResult(name=sc.name, workdir=self.workdir, console_path=self.workdir / "console.log",
                           server_log_path=self.workdir / "server.log", qemu_trace_path=None, arch=sc.arch)
        for p in (res.console_path, res.server_log_path):
            p.unlink(missing_ok=True)
        init = guest_program(sc.name, sc.body, sc.params)
        (self.workdir / "init.sh").write_text(init)
        initrd = self.workdir / "initramfs.cpio.gz"
        t0 = time.monotonic()
        try:
            deps = build_initramfs(self.bench, init, initrd)
        except (OSError, BenchError) as e:
            self._note(res, f"initramfs: {e}")
            res.result_line = f"initramfs failed: {e}"
            return res
        res.infos["deps"] = ",".join(deps) or "-"
        res.timings["initramfs_s"] = time.monotonic() - t0
        for attempt in (1, 2):
            res.attempts = attempt
            if not self._attempt(res, initrd, attempt) or attempt == 2:
                break
            self._note(res, f"guest never reached /init (attempt {attempt}): retrying once")
        res.timings["total_s"] = time.monotonic() - t_start
        (self.workdir / "result.json").write_text(res.to_json())
        return res

    def _note(self, res: GuestResult, msg: str) -> None:
        with open(res.console_path, "a") as f:
            f.write(f"# harness: {msg}\n")
        if self.echo:
            sys.stderr.write(f"[{res.name}] {msg}\n")

    def _attempt(self, res: DriverResult, initrd: Path, attempt: int) -> bool:
        """One boot; True when worth a retry (the guest never reached /init)."""
        sc = self.scenario
        sock = self.workdir / f"vfio-user-{attempt}.sock"
        ctl = self.workdir / "control.sock"
        for p in (sock, ctl, self.workdir / qemu.SERVER_TRACE_NAME):
            p.unlink(missing_ok=True)
        res.checks.clear()
        res.infos = {k: v for k, v in res.infos.items() if k == "deps"}
        res.actions.clear()
        res.result, res.result_line, res.program_rc = None, "", None
        res.timed_out = res.server_exited_early = res.reached_init = False
        server: subprocess.Popen[bytes] | None = None
        qemu_proc: subprocess.Popen[bytes] | None = None
        ctx = HostContext(self.workdir, ctl if sc.control else None, log=lambda m: self._note(res, m))
        try:
            argv = self.server_command(sock)
            res.server_command = argv
            assert res.server_log_path is not None
            with open(res.server_log_path, "ab") as log:
                log.write(f"# attempt {attempt}: {shlex.join(argv)}\n".encode())
                log.flush()
                t0 = time.monotonic()
                server = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True, cwd=REPO)
            ctx.server = server
            waits = [sock] + ([ctl] if sc.control else [])
            for path in waits:
                if not qemu._wait_socket(path, server, self.socket_timeout):
                    rc = server.poll()
                    res.server_exited_early, res.server_returncode = rc is not None, rc
                    self._note(res, f"server did not create {path} (rc={rc})")
                    res.result_line = f"server did not create {path.name} (rc={rc}); see {res.server_log_path}"
                    return False
            res.timings["server_ready_s"] = time.monotonic() - t0
            if sc.setup is not None:
                try:
                    sc.setup(ctx)
                except HostActionError as e:
                    self._note(res, f"setup failed: {e}")
                    res.result_line = f"scenario setup failed: {e}"
                    return False
            cmd = self.qemu_command(initrd, sock)
            res.qemu_command = cmd
            (self.workdir / "qemu.cmd").write_text(shlex.join(cmd) + "\n")
            t_qemu = time.monotonic()
            qemu_proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, start_new_session=True)
            self._stream(res, qemu_proc, server, ctx, t_qemu)
            res.qemu_returncode = qemu._stop_group(qemu_proc, grace=2.0) if qemu_proc.poll() is None \
                else qemu_proc.returncode
            res.timings["qemu_total_s"] = time.monotonic() - t_qemu
            return not res.reached_init
        finally:
            if qemu_proc is not None and qemu_proc.poll() is None:
                qemu._stop_group(qemu_proc, grace=2.0)
            if sc.teardown is not None:
                try:
                    sc.teardown(ctx)
                except Exception as e:  # noqa: BLE001 - a report, not a crash
                    self._note(res, f"teardown: {e!r}")
            res.extras.update(ctx.extras)
            if server is not None:
                early = server.poll()
                if early is not None and res.result is None:
                    res.server_exited_early = True
                res.server_returncode = early if early is not None else qemu._stop_group(server)

    def _stream(self, res: DriverResult, proc: subprocess.Popen[bytes], server: subprocess.Popen[bytes],
                ctx: HostContext, t_qemu: float) -> None:
        assert proc.stdout is not None and proc.stdin is not None
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        os.set_blocking(proc.stdout.fileno(), False)
        buf = b""
        deadline = t_qemu + self.scenario.timeout
        boot_deadline = t_qemu + self.boot_timeout
        exit_deadline: float | None = None
        killed_on_purpose = False
        with open(res.console_path, "a", errors="replace") as con:

            def note(msg: str) -> None:
                con.write(f"# harness: {msg}\n")
                con.flush()
                if self.echo:
                    sys.stderr.write(f"[{res.name}] {msg}\n")

            ctx.log = note
            note(f"attempt {res.attempts}: {shlex.join(res.qemu_command)}")

            def line_out(raw: bytes) -> None:
                nonlocal killed_on_purpose
                line = raw.decode(errors="replace").rstrip("\r\n").replace("\r", "")
                now = time.monotonic() - t_qemu
                con.write(f"+{now:7.3f} {line}\n")
                con.flush()
                if self.echo:
                    sys.stderr.write(f"[{res.name} +{now:6.2f}] {line}\n")
                qemu.GuestRun._parse(res, line, now)
                if "kernel_oops" not in res.infos and _OOPS_RE.search(line):
                    res.infos["kernel_oops"] = f"+{now:.2f}s {line.strip()}"
                    note(f"the guest kernel reported: {line.strip()}")
                if m := _HOST_RE.match(line):
                    word, args = m.group(1), m.group(2).split()
                    status, reply = self._host_action(ctx, word, args)
                    killed_on_purpose |= word == "kill-server" and status == "ok"
                    res.actions.append(ActionRecord(word, args, status, reply, round(now, 3)))
                    note(f"host action {word} {args} -> {status} {reply}")
                    try:
                        proc.stdin.write(f"VFU-ACK {word} {status} {reply}\n".encode())
                        proc.stdin.flush()
                    except OSError as e:
                        note(f"cannot answer the guest: {e}")

            eof = False
            while not eof:
                now = time.monotonic()
                if not res.reached_init and now > boot_deadline:
                    note(f"no /init after {self.boot_timeout:.0f}s: stopping QEMU")
                    break
                if now > deadline:
                    res.timed_out = True
                    note(f"timeout after {self.scenario.timeout:.0f}s: stopping QEMU")
                    break
                if exit_deadline is None and "program_exit_s" in res.timings:
                    exit_deadline = now + 15.0
                if exit_deadline is not None and now > exit_deadline:
                    note("guest did not power off after its program ended: stopping QEMU")
                    break
                if not killed_on_purpose and not res.server_exited_early and server.poll() is not None:
                    res.server_exited_early = True
                    note(f"server exited with rc={server.returncode} while the guest ran")
                for _key, _ev in sel.select(timeout=0.5):
                    try:
                        chunk = os.read(proc.stdout.fileno(), 65536)
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
        try:
            proc.stdin.close()
        except OSError:
            pass

    def _host_action(self, ctx: HostContext, word: str, args: list[str]) -> tuple[str, str]:
        action = self.scenario.actions.get(word)
        if action is None:
            return "err", f"no-host-action-{word}"
        try:
            reply = action(ctx, args)
        except HostActionError as e:
            return "err", _one_line(str(e))
        except Exception as e:  # noqa: BLE001 - reported to the guest and the log
            return "err", _one_line(f"{type(e).__name__}: {e}")
        return "ok", _one_line(reply)


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "-"


__all__ = [
    "ARCHES", "Arch", "BenchError", "Check", "Cpio", "Delivery", "DriverBench", "DriverResult", "DriverRun", "GuestKernel",
    "HostActionError", "HostContext", "IrqTimeline", "Scenario", "ServerTrace", "build_helper", "build_initramfs",
    "guest_program", "module_closure", "provision_driver_bench", "provision_guest_kernel", "provision_module",
]
