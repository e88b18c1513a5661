# SPDX-License-Identifier: BSD-3-Clause
"""Host side of the kernel VFIO bench: provision, boot a guest, collect its checks.

Two guests, both under TCG (KVM on this machine kind cannot run stock kernels):

* x86-64 q35 + intel-iommu with QEMU's edu on Debian's stock vfio-pci (type1
  container, DMA through the vIOMMU); the guest runs the host's own Python and
  this checkout over a read-only 9p export of the host root;
* aarch64 `virt` with drivers/vfio rebuilt for no-IOMMU + vfio-platform +
  vfio-amba: pl031 (AMBA, level IRQ) and an empty virtio-mmio slot (PLATFORM,
  edge IRQ); the guest runs Debian's arm64 Python from a root built by
  provisioning, with this checkout's package staged into it before each boot.

Each guest program prints `CHECK name PASS|FAIL detail` lines and `N passed, N
failed`.  A guest that never reached its init (a rare early-boot hang under
MTTCG) is booted again; one that booted is never retried, whatever its checks.

    python -m testbench.kernel [x86|arm64|all] [--vfio-user]
"""
from __future__ import annotations

import argparse
import os
import re
import select
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from testbench import qemu
from testbench.paths import KGUEST, REPO, SCRIPTS

PROVISION = SCRIPTS / "provision-kernel-bench.sh"
STAGE_ARM64 = SCRIPTS / "kernel" / "stage-arm64-package.sh"
INIT_MARK = "kguest: init at"
_CHECK = re.compile(r"^CHECK (\S+) (PASS|FAIL|SKIP) ?(.*)$")
_SUMMARY = re.compile(r"^(\d+) passed, (\d+) failed(?:, (\d+) skipped)?$")


class BenchUnavailable(Exception):
    """The bench cannot be provisioned on this machine (no root for apt, no archive...)."""


def cache_dir() -> Path:
    return Path(os.environ.get("VFU_CACHE", Path.home() / ".cache" / "vfu-platform")) / "kernel"


@dataclass(frozen=True, slots=True)
class BenchPaths:
    qemu_x86: str        # the private QEMU 11 of scripts/provision-qemu.sh, for every suite
    qemu_aarch64: str
    kernel_amd64: str
    kernel_arm64: str
    initrd_amd64: str
    initrd_arm64: str
    rootfs_arm64: str
    pydev_arm64: str


def provision(python: str = sys.executable, log: Path | None = None) -> BenchPaths:
    """Provision the private QEMU (scripts/provision-qemu.sh) and the kernel bench
    (scripts/provision-kernel-bench.sh); both idempotent, seconds when cached. Progress
    goes to stderr as it comes; a failure raises BenchUnavailable with the reason."""
    try:
        emulators = qemu.provision()
    except qemu.BenchError as e:
        raise BenchUnavailable(str(e)) from None
    if emulators.qemu_aarch64 is None:
        raise BenchUnavailable(f"{emulators.dir}/env.sh names no aarch64 QEMU: rerun scripts/provision-qemu.sh")
    rc, output = qemu.run_streaming(["bash", str(PROVISION)], env=dict(os.environ, PYTHON=python))
    if log is not None:
        log.write_text(output)
    if rc != 0:
        raise BenchUnavailable(f"provision-kernel-bench.sh failed (rc {rc}): "
                               + " | ".join(output.strip().splitlines()[-3:]))
    values: dict[str, str] = {}
    for line in (cache_dir() / "env.sh").read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip()
    return BenchPaths(
        qemu_x86=str(emulators.qemu),
        qemu_aarch64=str(emulators.qemu_aarch64),
        kernel_amd64=values["KB_KERNEL_AMD64"],
        kernel_arm64=values["KB_KERNEL_ARM64"],
        initrd_amd64=values["KB_INITRD_AMD64"],
        initrd_arm64=values["KB_INITRD_ARM64"],
        rootfs_arm64=values["KB_ROOTFS_ARM64"],
        pydev_arm64=values["KB_PYDEV_ARM64"],
    )


@dataclass(slots=True)
class Check:
    name: str
    status: str  # PASS, FAIL or SKIP
    detail: str


@dataclass(slots=True)
class GuestResult:
    name: str
    command: list[str]
    log: str = ""
    returncode: int | None = None
    reached_init: bool = False
    boots: int = 0
    seconds: float = 0.0
    checks: list[Check] = field(default_factory=list)
    summary: tuple[int, int, int] | None = None  # (passed, failed, skipped) as the guest printed it

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.status == "FAIL"]

    @property
    def passed(self) -> list[Check]:
        return [c for c in self.checks if c.status == "PASS"]

    def status(self, name: str) -> Check | None:
        return next((c for c in self.checks if c.name == name), None)

    @property
    def ok(self) -> bool:
        return bool(self.summary) and not self.failures and self.summary[1] == 0 and bool(self.passed)

    def describe(self) -> str:
        head = (f"{self.name}: {len(self.passed)} passed, {len(self.failures)} failed in {self.seconds:.1f}s "
                f"({self.boots} boot{'s' if self.boots != 1 else ''})")
        lines = [head] + [f"  FAIL {c.name}: {c.detail}" for c in self.failures]
        if not self.reached_init:
            lines.append("  the guest never reached its init")
        elif self.summary is None:
            lines.append("  no summary line: the guest program did not finish; console tail:")
            lines += ["    " + line for line in self.log.splitlines()[-25:]]
        return "\n".join(lines)


def parse_console(text: str) -> tuple[list[Check], tuple[int, int, int] | None]:
    checks: list[Check] = []
    summary = None
    for raw in text.splitlines():
        line = raw.strip("\r")
        match = _CHECK.match(line)
        if match:
            checks.append(Check(match.group(1), match.group(2), match.group(3)))
            continue
        match = _SUMMARY.match(line)
        if match:
            summary = (int(match.group(1)), int(match.group(2)), int(match.group(3) or 0))
    return checks, summary


def _run_guest(command: list[str], timeout: float, init_timeout: float) -> tuple[bytes, int | None]:
    """Run QEMU, collecting its console; kill it at `timeout`, or at `init_timeout` if the init
    mark has not shown by then (an early-boot hang should cost a minute, not the whole budget)."""
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    output = bytearray()
    start = time.monotonic()
    mark = INIT_MARK.encode()
    try:
        while True:
            elapsed = time.monotonic() - start
            limit = timeout if mark in output else min(timeout, init_timeout)
            if elapsed >= limit:
                proc.kill()
                proc.wait()
                return bytes(output), None
            ready, _, _ = select.select([proc.stdout], [], [], min(1.0, limit - elapsed))
            if ready:
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    return bytes(output), proc.wait()
                output += chunk
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def boot(name: str, command: list[str], timeout: float, log_path: Path, boots: int = 3,
         init_timeout: float = 90) -> GuestResult:
    """Run one guest; boot again (up to `boots` times) only if it never printed the init mark."""
    result = GuestResult(name=name, command=command)
    t0 = time.monotonic()
    for attempt in range(1, boots + 1):
        result.boots = attempt
        output, result.returncode = _run_guest(command, timeout, init_timeout)
        result.log = output.decode("utf-8", "replace")
        log_path.write_text(result.log)
        result.reached_init = INIT_MARK in result.log
        if result.reached_init:
            break
    result.seconds = time.monotonic() - t0
    result.checks, result.summary = parse_console(result.log)
    return result


def x86_command(paths: BenchPaths, out: Path, python: str, vfio_user: bool = False) -> list[str]:
    """q35 + intel-iommu; edu alone at 00:05.0; a PCI bridge at 00:06.0 with a second edu and a
    virtio-rng behind it (one IOMMU group, made non-viable by virtio-pci holding the rng)."""
    append = ["console=ttyS0", "quiet", "panic=-1", "intel_iommu=on",
              f"vfu.run={KGUEST}/x86-entry.sh", f"vfu.out={out}", f"vfu.repo={REPO}", f"vfu.python={python}"]
    if vfio_user:
        append.append("vfu.e2e=1")
    return [
        paths.qemu_x86,
        "-M", "q35,accel=tcg", "-cpu", "max", "-smp", "2", "-m", "1G",
        "-nographic", "-no-reboot", "-nic", "none", "-vga", "none",
        "-device", "intel-iommu,intremap=on",
        "-kernel", paths.kernel_amd64, "-initrd", paths.initrd_amd64, "-append", " ".join(append),
        "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        "-virtfs", f"local,path={out},mount_tag=kbout,security_model=none",
        "-device", "edu,addr=05.0",
        "-device", "pci-bridge,id=vfubr,chassis_nr=1,addr=06.0",
        "-device", "edu,bus=vfubr,addr=01.0",
        "-device", "virtio-rng-pci,bus=vfubr,addr=02.0",
    ]


def stage_arm64(paths: BenchPaths, python: str = sys.executable) -> None:
    """Copy this checkout's package into the arm64 root and cross-build its cffi extension."""
    result = subprocess.run(["bash", str(STAGE_ARM64), str(REPO), paths.rootfs_arm64, paths.pydev_arm64],
                            env=dict(os.environ, PYTHON=python), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if result.returncode != 0:
        tail = " | ".join(result.stdout.strip().splitlines()[-4:])
        raise BenchUnavailable(f"stage-arm64-package.sh failed (rc {result.returncode}): {tail}")


def arm64_command(paths: BenchPaths, out: Path, vfio_user: bool = False) -> list[str]:
    """aarch64 virt (no IOMMU): pl031 at 9010000 and 32 virtio-mmio slots, none of them populated."""
    append = ["console=ttyAMA0", "quiet", "panic=-1",
              "vfu.run=/opt/vfu/testbench/kguest/arm64-entry.sh", "vfu.out=/out"]
    if vfio_user:
        append.append("vfu.e2e=1")
    return [
        paths.qemu_aarch64,
        "-M", "virt", "-cpu", "cortex-a57", "-smp", "2", "-m", "1G",
        "-nographic", "-no-reboot", "-nic", "none",
        "-kernel", paths.kernel_arm64, "-initrd", paths.initrd_arm64, "-append", " ".join(append),
        "-virtfs", f"local,path={paths.rootfs_arm64},mount_tag=hostroot,security_model=none,readonly=on,"
                   "multidevs=remap",
        "-virtfs", f"local,path={out},mount_tag=kbout,security_model=none",
    ]


class KernelBench:
    """Provision once, then boot guests; logs and JSON land in `workdir`."""

    def __init__(self, workdir: Path | None = None, python: str = sys.executable, timeout: float = 240) -> None:
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="vfu-kbench-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.python = python
        self.timeout = timeout
        self._paths: BenchPaths | None = None

    def provision(self) -> BenchPaths:
        """Provision (cached after the first time); raises BenchUnavailable with the reason."""
        if self._paths is None:
            self._paths = provision(self.python, self.workdir / "provision.log")
        return self._paths

    @property
    def paths(self) -> BenchPaths:
        return self.provision()

    def _out(self, name: str) -> Path:
        out = self.workdir / f"out-{name}"
        out.mkdir(exist_ok=True)
        return out

    def run_x86_pci(self, vfio_user: bool = False) -> GuestResult:
        out = self._out("x86")
        command = x86_command(self.paths, out, self.python, vfio_user)
        return boot("x86-vfio-pci", command, self.timeout, self.workdir / "x86-vfio-pci.log")

    def run_arm64_platform(self, vfio_user: bool = False) -> GuestResult:
        stage_arm64(self.paths, self.python)
        out = self._out("arm64")
        command = arm64_command(self.paths, out, vfio_user)
        return boot("arm64-vfio-platform", command, self.timeout, self.workdir / "arm64-vfio-platform.log")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m testbench.kernel")
    ap.add_argument("which", nargs="?", default="all", choices=["x86", "arm64", "all"])
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--vfio-user", action="store_true", help="also run the in-guest vfio-user scenario")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every check")
    args = ap.parse_args(argv)
    bench = KernelBench(args.workdir)
    try:
        bench.provision()
    except BenchUnavailable as e:
        print(f"kernel bench unavailable: {e}", file=sys.stderr)
        return 2
    results = []
    if args.which in ("x86", "all"):
        results.append(bench.run_x86_pci(args.vfio_user))
    if args.which in ("arm64", "all"):
        results.append(bench.run_arm64_platform(args.vfio_user))
    for r in results:
        if args.verbose:
            for c in r.checks:
                print(f"  {c.status} {c.name} {c.detail}")
        print(r.describe())
    print(f"logs: {bench.workdir}  (qemu: {shlex.join(results[0].command[:1]) if results else '-'})")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
