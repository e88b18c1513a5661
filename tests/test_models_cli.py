# SPDX-License-Identifier: BSD-3-Clause
"""`vfu-platform models --json`, `inspect --device MODEL` and `--device PATH.py:Class`, as real processes.

A model file is imported under a module name of its own, so two files with the
same name never collide; every way a model file can be wrong is one line on
stderr and exit status 2.  A served model's config space carries the identity
its class declares (`pci_vendor`, `pci_device`, `pci_class`), or the reserved
default 1234:56ff with a warning naming the model.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from conftest import REPO
from vfu_platform.testing import PYTHON, serve_in_subprocess
from vfu_platform.backends.sim.identity import DEFAULT_IDENTITY
from vfu_platform.backends.sim.registry import MODELS, known_models

BLINKY = '''
from vfu_platform.backends.sim.device import RegisterRegion, SimDevice


class Blinky(SimDevice):
    name = "blinky"
    option_help = {"value": "what register 0 reads"}

    def __init__(self, *, value: int = 0x1234) -> None:
        super().__init__()
        self.value = value
        self.add_region(RegisterRegion(0x1000, self.read_reg, self.write_reg, name="blinky-regs"))
        self.done = self.add_level_irq("done")

    def read_reg(self, offset: int, size: int) -> int:
        return self.value if offset == 0 else 0

    def write_reg(self, offset: int, size: int, value: int) -> None:
        pass


class Named(Blinky):
    pci_vendor, pci_device, pci_class = 0x1AF4, 0x10FF, 0x058000


NOT_A_MODEL = 3
'''

EXIT_USAGE = 2


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "vfu_platform", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=str(REPO), stdin=subprocess.DEVNULL)


def one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == EXIT_USAGE, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture
def blinky(tmp_path: Path) -> Path:
    path = tmp_path / "blinky.py"
    path.write_text(BLINKY)
    return path


# ------------------------------------------------------------ models --json


def test_models_json_describes_every_builtin_model() -> None:
    result = run_cli("models", "--json")
    assert result.returncode == 0 and result.stderr == "", result.stderr  # no "serial port on" lines
    models = {m["name"]: m for m in json.loads(result.stdout)}
    assert sorted(models) == list(known_models())
    for name, entry in models.items():
        cls = MODELS[name]
        assert entry["class"] == f"{cls.__module__}:{cls.__qualname__}"
        assert (entry["pci"]["vendor"], entry["pci"]["device"], entry["pci"]["class_code"]) == (
            cls.pci_vendor, cls.pci_device, cls.pci_class)
        assert entry["pci"]["declared"] and entry["pci"]["device"] != DEFAULT_IDENTITY.device
        assert entry["regions"] and entry["irqs"], name
    assert models["edu"]["pci"] == {"vendor": 0x1234, "device": 0x11E8, "class_code": 0x00FF00, "declared": True}
    gpio = models["gpio"]
    assert [(r["index"], r["name"], r["size"], "MMAP" in r["flags"]) for r in gpio["regions"]] == [
        (0, "gpio-regs", 0x1000, False), (1, "gpio-sram", 0x1000, True)]
    assert [(q["index"], q["count"], q["trigger"]) for q in gpio["irqs"]][-1] == (4, 1, "edge")
    assert {o["name"]: o["default"] for o in gpio["options"]} == {"lines": 4, "edge": True, "min_period_us": 100}
    assert [o["type"] for o in models["pl011"]["options"]] == ["str", "int"]


def test_models_without_json_is_one_name_a_line() -> None:
    result = run_cli("models")
    assert result.returncode == 0 and result.stdout.split() == list(known_models())


# ------------------------------------------------------------ inspect --device


def test_inspect_a_model_shows_its_bar_plan() -> None:
    result = run_cli("inspect", "--device", "gpio")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "pci ids     1234:5650 class 088000" in lines
    assert any(line.startswith("BAR1") and "gpio-sram" in line and "mmapped" in line for line in lines)
    assert any(line.startswith("BAR2") and "IRQ page" in line for line in lines)
    assert any(line.startswith("irq 4") and "edge" in line for line in lines)


def test_inspect_a_model_as_json_with_options() -> None:
    result = run_cli("inspect", "--device", "gpio", "-o", "lines=3", "-o", "edge=false", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["name"] == "gpio" and len(report["irqs"]) == 3  # the options were applied
    plan = report["plan"]
    assert plan["kind"] == "bridge" and plan["irq_page_bar"] == 2
    assert [(b["bar"], b["source"]) for b in plan["bars"]] == [(0, "region"), (1, "region"), (2, "irq-page")]


def test_inspect_a_device_group() -> None:
    result = run_cli("inspect", "--device", "pl031,pl061", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["pci"]["vendor"], report["pci"]["device"]) == (0x1234, 0x5646)
    assert [r["name"] for r in report["regions"]] == ["pl031.pl031-regs", "pl061.pl061-regs"]
    assert report["options"] == []


def test_inspect_a_model_file_without_identity_warns_and_uses_the_default(blinky: Path) -> None:
    result = run_cli("inspect", "--device", f"{blinky}:Blinky")
    assert result.returncode == 0, result.stderr
    assert "pci ids     1234:56ff class ff0000 (the default" in result.stdout
    assert f"model       {blinky}:Blinky" in result.stdout
    (warning,) = result.stderr.splitlines()
    assert warning.startswith("vfu-platform: warning:") and "'blinky'" in warning and "1234:56ff" in warning


def test_two_model_files_with_one_name_do_not_collide(tmp_path: Path) -> None:
    for folder, size in (("a", 0x1000), ("b", 0x2000)):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "model.py").write_text(BLINKY.replace("0x1000", hex(size)))
    result = run_cli("inspect", "--device", f"{tmp_path}/a/model.py:Named,{tmp_path}/b/model.py:Named", "--json")
    assert result.returncode == 0, result.stderr
    assert [r["size"] for r in json.loads(result.stdout)["regions"]] == [0x1000, 0x2000]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [([], "give a host device NAME or --device MODEL"),
     (["somehost", "--device", "edu"], "not both"),
     (["somehost", "-o", "lines=2"], "--option needs --device"),
     (["--device", "nosuchmodel"], "unknown device model")],
    ids=["nothing", "both", "option-without-device", "unknown-model"],
)
def test_inspect_argument_errors(args: list[str], fragment: str) -> None:
    one_line_error(run_cli("inspect", *args), fragment)


# ------------------------------------------------------------ serve --device PATH.py:Class


def config_ids(server) -> tuple[int, int, int]:
    client = server.connect()
    head = client.region_read("config", 0, 12)
    value = client.read32("bar0", 0)
    client.close()
    return int.from_bytes(head[0:4], "little"), int.from_bytes(head[9:12], "little"), value


def test_serve_a_model_file_with_its_identity_and_options(tmp_path: Path, blinky: Path) -> None:
    server = serve_in_subprocess(directory=tmp_path, model=f"{blinky}:Named", extra=["-o", "value=0x77"])
    try:
        assert config_ids(server) == (0x10FF_1AF4, 0x058000, 0x77)
        assert "warning" not in server.stderr()
    finally:
        assert server.stop() == 0


def test_serve_a_model_file_without_identity(tmp_path: Path, blinky: Path) -> None:
    server = serve_in_subprocess(directory=tmp_path, model=f"{blinky}:Blinky")
    try:
        vendor_device, class_code, value = config_ids(server)
        assert vendor_device == DEFAULT_IDENTITY.device << 16 | DEFAULT_IDENTITY.vendor
        assert (class_code, value) == (DEFAULT_IDENTITY.class_code, 0x1234)
        warnings = [line for line in server.stderr().splitlines() if "warning" in line]
        assert len(warnings) == 1 and "'blinky'" in warnings[0] and str(blinky) in warnings[0]
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize(
    ("name", "text", "spec", "fragments"),
    [
        (None, None, "missing.py:Blinky", ("no such file",)),
        ("blinky.py", BLINKY, "blinky.py:Nope", ("has no 'Nope'",)),
        ("blinky.py", BLINKY, "blinky.py:NOT_A_MODEL", ("is not a device model class",)),
        ("broken.py", "raise RuntimeError('boom at import')\n", "broken.py:X", ("RuntimeError: boom at import", "line 1")),
        ("typo.py", "def f(:\n", "typo.py:X", ("SyntaxError",)),
        ("imports.py", "import no_such_module_here\n", "imports.py:X", ("ModuleNotFoundError", "no_such_module_here")),
    ],
    ids=["no-file", "no-class", "not-a-model", "raises", "syntax-error", "import-error"],
)
@pytest.mark.parametrize("command", ["serve", "inspect"])
def test_bad_model_files_are_one_line_and_exit_2(
    tmp_path: Path, command: str, name: str | None, text: str | None, spec: str, fragments: tuple[str, ...]
) -> None:
    if name is not None:
        (tmp_path / name).write_text(text or "")
    device = str(tmp_path / spec)
    args = ["serve", "--socket", str(tmp_path / "s.sock"), "--device", device] if command == "serve" else [
        "inspect", "--device", device]
    one_line_error(run_cli(*args), *fragments)
    assert not (tmp_path / "s.sock").exists()
