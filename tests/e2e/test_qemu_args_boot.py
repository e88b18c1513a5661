# SPDX-License-Identifier: BSD-3-Clause
"""QEMU started with exactly what `vfu-platform qemu-args` prints attaches the served device.

For q35 and pc (qemu-system-x86_64) and Arm virt (qemu-system-aarch64), all TCG with
the provisioned bench, the guest boots and its kernel finds the edu function
(1234:11e8) on its PCI bus.  The command line is the printed arguments plus only the
harness's own: kernel, initrd, kernel command line, -nographic (serial on stdio) and
-no-reboot (a guest panic ends the run instead of looping).  The guest is a busybox
/init that lists /sys/bus/pci/devices and powers off.
"""
from __future__ import annotations

import gzip
import json
import shlex
import subprocess
import time
from pathlib import Path

import pytest
from conftest import REPO

from testbench import qemu
from testbench.guest_image import Cpio
from vfu_platform.testing import PYTHON, ProcessServer, serve_in_subprocess

pytestmark = pytest.mark.qemu

GUEST_INIT = """#!/bin/sh
/bin/busybox mount -t sysfs sysfs /sys
for dev in /sys/bus/pci/devices/*; do
    echo "VFU-PCI ${dev##*/} $(/bin/busybox cat $dev/vendor) $(/bin/busybox cat $dev/device)"
done
echo VFU-DONE
/bin/busybox poweroff -f
"""


def printed_args(socket_path: str, machine: str) -> list[str]:
    done = subprocess.run([PYTHON, "-m", "vfu_platform", "qemu-args", "--socket", socket_path, "--machine", machine,
                           "--memory", "256M", "--format", "json"], capture_output=True, text=True, timeout=30,
                          cwd=str(REPO), check=False)
    assert done.returncode == 0 and done.stderr == "", done
    return json.loads(done.stdout)


def status(server: ProcessServer) -> dict:
    done = subprocess.run([PYTHON, "-m", "vfu_platform", "status", "--socket", server.socket_path, "--json"],
                          capture_output=True, text=True, timeout=30, cwd=str(REPO), check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture
def server(tmp_path: Path) -> ProcessServer:
    proc = serve_in_subprocess("edu", directory=tmp_path)
    yield proc
    proc.stop(check=False)


def x86_initramfs(bench: qemu.Bench, folder: Path) -> Path:
    init = folder / "init.sh"
    init.write_text(GUEST_INIT)
    return qemu.build_initramfs(bench, modules=(), init=init, out_dir=folder)


def arm64_initramfs(bench: qemu.Bench, folder: Path) -> Path:
    assert bench.busybox_arm64 is not None, "the bench has no arm64 busybox"
    image = Cpio()
    for name in ("bin", "dev", "proc", "sys"):
        image.dir(name)
    image.file("bin/busybox", bench.busybox_arm64.read_bytes(), 0o755)
    image.symlink("bin/sh", "busybox")
    image.chardev("dev/console", 5, 1)  # opened by the kernel before /init
    image.file("init", GUEST_INIT.encode(), 0o755)
    out = folder / "arm64-initrd.cpio.gz"
    out.write_bytes(gzip.compress(image.finish(), compresslevel=1, mtime=0))
    return out


#: machine -> (QEMU binary, kernel, initramfs builder, console) of the bench
GUESTS = {
    "q35": (lambda b: b.qemu, lambda b: b.kernel, x86_initramfs, "ttyS0"),
    "pc": (lambda b: b.qemu, lambda b: b.kernel, x86_initramfs, "ttyS0"),
    "virt": (lambda b: b.qemu_aarch64, lambda b: b.kernel_arm64, arm64_initramfs, "ttyAMA0"),
}


@pytest.mark.parametrize("machine", list(GUESTS))
def test_the_guest_finds_the_device(bench: qemu.Bench, server: ProcessServer, tmp_path: Path, machine: str) -> None:
    binary, kernel, initramfs, console_name = (part(bench) if i < 2 else part
                                               for i, part in enumerate(GUESTS[machine]))
    assert binary is not None and kernel is not None, f"the bench has no QEMU or kernel for {machine}"
    initrd = initramfs(bench, tmp_path)
    argv = [str(binary), *printed_args(server.socket_path, machine),
            "-kernel", str(kernel), "-initrd", str(initrd),
            "-append", f"console={console_name} panic=-1 rdinit=/init quiet", "-nographic", "-no-reboot"]
    (tmp_path / "qemu.cmd").write_text(shlex.join(argv) + "\n")
    started = time.monotonic()
    done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=90, check=False)
    console = done.stdout + done.stderr
    (tmp_path / "console.log").write_text(console)
    took = time.monotonic() - started
    assert "VFU-DONE" in console, f"the guest did not finish ({took:.0f} s):\n{console[-3000:]}"
    found = [line.split() for line in console.splitlines() if line.startswith("VFU-PCI ")]
    assert ["0x1234", "0x11e8"] in [words[2:4] for words in found], f"no edu on the guest's PCI bus: {found}"
    assert status(server)["client"]["sessions_served"] == 1
    assert "Traceback" not in server.log()
