# SPDX-License-Identifier: BSD-3-Clause
"""The guest bridge driver builds for both provisioned trixie kernels and would load there.

`scripts/guest-module --arch {amd64,arm64}` provisions the kernel, headers and gcc-14
(scripts/provision-guest-kernel.sh; seconds once cached, a few minutes the first time)
and builds guest/linux/vfu_bridge.ko out of tree. These tests check the module's
metadata with trixie's own kmod (GK_MODINFO), that every symbol it imports is
exported by the stock kernel (the headers' Module.symvers) so that `insmod` from an
initramfs works, and the kernel configuration the driver and the Arm bench rely on.
Runtime behaviour in a booted guest is tested by tests/guest_drivers.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import time
from pathlib import Path

import pytest

from guest_policy import require_bench

pytestmark = pytest.mark.kernel

ROOT = Path(__file__).resolve().parent.parent
SUITE = "guest-driver suite (tests/guest_drivers)"
ARCHES = ("amd64", "arm64")
PCI_ALIAS = "pci:v*d*sv*sd*bc08sc80i00*"


class ProvisionError(Exception):
    pass


def _env(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        m = re.fullmatch(r"([A-Z_][A-Z0-9_]*)='(.*)'", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def _build(arch: str) -> tuple[Path, dict[str, str]]:
    proc = subprocess.run([str(ROOT / "scripts" / "guest-module"), "--arch", arch],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.returncode:
        raise ProvisionError(f"scripts/guest-module --arch {arch} failed (rc={proc.returncode}):\n{proc.stderr[-4000:]}")
    ko = Path(proc.stdout.strip().splitlines()[-1])
    cache = Path(os.environ.get("VFU_CACHE", Path.home() / ".cache" / "vfu-platform"))
    return ko, _env(cache / "guest-kernel" / arch / "env.sh")


@pytest.fixture(scope="module", params=ARCHES)
def built(request: pytest.FixtureRequest) -> tuple[str, Path, dict[str, str]]:
    arch = request.param
    ko, env = require_bench(request, SUITE, lambda: _build(arch), (ProvisionError,))
    return arch, ko, env


def _modinfo(env: dict[str, str], ko: Path, field: str) -> list[str]:
    out = subprocess.run([env["GK_MODINFO"], "-F", field, str(ko)], check=True,
                         stdout=subprocess.PIPE, text=True).stdout
    return [line for line in out.splitlines() if line]


def _tool(env: dict[str, str], name: str) -> str:
    for word in shlex.split(env["GK_MAKE_ARGS"]):
        if word.startswith(name + "="):
            return word.split("=", 1)[1]
    raise AssertionError(f"GK_MAKE_ARGS has no {name}")


def _config(env: dict[str, str]) -> dict[str, str]:
    cfg = {}
    for line in Path(env["GK_KCONFIG"]).read_text().splitlines():
        if m := re.fullmatch(r"(CONFIG_\w+)=(.*)", line):
            cfg[m.group(1)] = m.group(2)
    return cfg


def test_module_is_outside_the_checkout_and_env_is_ready(built: tuple[str, Path, dict[str, str]]) -> None:
    arch, ko, env = built
    assert ko.is_absolute() and ko.is_file(), ko
    assert ROOT not in ko.parents, f"{ko} is inside the checkout"
    assert env["GK_READY"] == "1" and env["GK_ARCH"] == arch
    for key in ("GK_IMAGE", "GK_MODULES", "GK_KCONFIG", "GK_BUILD"):
        assert Path(env[key]).exists(), (key, env[key])
    assert Path(env["GK_MODULES"]).name == env["GK_KVER"]
    assert (Path(env["GK_MODULES"]) / "modules.dep").is_file()
    assert f"linux-image-{env['GK_KVER']}:{arch}=" in env["GK_PACKAGES"]


def test_modinfo(built: tuple[str, Path, dict[str, str]]) -> None:
    arch, ko, env = built
    assert _modinfo(env, ko, "license") == ["Dual BSD/GPL"]
    assert PCI_ALIAS in _modinfo(env, ko, "alias")
    (vermagic,) = _modinfo(env, ko, "vermagic")
    assert vermagic.split()[0] == env["GK_KVER"], vermagic
    assert "modversions" in vermagic.split()
    assert _modinfo(env, ko, "name") == ["vfu_bridge"]


def test_imports_only_what_the_stock_kernel_exports(built: tuple[str, Path, dict[str, str]]) -> None:
    """Every undefined symbol is in vmlinux or in a module named by `depends`, present in GK_MODULES."""
    arch, ko, env = built
    exported: dict[str, str] = {}
    for line in (Path(env["GK_BUILD"]) / "Module.symvers").read_text().splitlines():
        parts = line.split("\t")
        if len(parts) >= 3:
            exported[parts[1]] = parts[2]
    nm = subprocess.run([_tool(env, "NM"), "-u", str(ko)], check=True, stdout=subprocess.PIPE, text=True).stdout
    undefined = [line.split()[-1] for line in nm.splitlines() if line.strip()]
    assert undefined, "nm found no undefined symbols at all"
    missing = [s for s in undefined if s not in exported]
    assert not missing, f"not exported by {env['GK_KVER']}: {missing}"
    depends = [d for dep in _modinfo(env, ko, "depends") for d in dep.split(",") if d]
    owners = {Path(exported[s]).name for s in undefined} - {"vmlinux"}
    assert {o.replace("-", "_") for o in owners} == {d.replace("-", "_") for d in depends}, (owners, depends)
    modules_dep = (Path(env["GK_MODULES"]) / "modules.dep").read_text()
    for dep in depends:
        assert re.search(rf"/{re.escape(dep)}\.ko(\.xz|\.zst|\.gz)?:", modules_dep), f"{dep} not in GK_MODULES"


def test_kernel_config_the_bridge_relies_on(built: tuple[str, Path, dict[str, str]]) -> None:
    arch, ko, env = built
    cfg = _config(env)
    assert cfg.get("CONFIG_COMMON_CLK") == "y"
    assert cfg.get("CONFIG_PCI_MSI") == "y"
    assert cfg.get("CONFIG_IRQ_DOMAIN") == "y"
    assert "CONFIG_MODULE_SIG_FORCE" not in cfg, "an unsigned module would not load"
    assert "CONFIG_OF_DYNAMIC" not in cfg  # why DT_COMPATIBLE uses driver_override (docs/guest-descriptor.md)
    if arch == "arm64":
        # the AMBA bus and the stock drivers of the Arm bench are built in: no module to load
        for opt in ("ARM_AMBA", "RTC_DRV_PL031", "GPIO_PL061", "SERIAL_AMBA_PL011", "SERIAL_8250_DW", "GPIO_CDEV"):
            assert cfg.get(f"CONFIG_{opt}") == "y", opt
    else:
        assert "CONFIG_ARM_AMBA" not in cfg  # BIND AMBA devices are refused on x86
        assert cfg.get("CONFIG_SERIAL_8250_DW") == "y"


def test_source_headers() -> None:
    src = (ROOT / "guest" / "linux" / "vfu_bridge.c").read_text()
    assert src.startswith("// SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause\n")
    assert 'MODULE_LICENSE("Dual BSD/GPL");' in src
    for name in ("Kbuild", "Makefile"):
        assert "SPDX-License-Identifier:" in (ROOT / "guest" / "linux" / name).read_text().splitlines()[0]


def test_reprovision_is_fast(built: tuple[str, Path, dict[str, str]]) -> None:
    arch = built[0]
    t0 = time.monotonic()
    subprocess.run([str(ROOT / "scripts" / "provision-guest-kernel.sh"), "--arch", arch], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert time.monotonic() - t0 < 10
