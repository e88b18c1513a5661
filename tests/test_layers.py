# SPDX-License-Identifier: BSD-3-Clause
"""The layer order is enforced: import-linter's contracts (pyproject.toml [tool.importlinter]).

Layers, top to bottom: cli -> operator commands and the test kit -> status / inspect /
client -> server -> bridge -> irq -> backends, over the shared leaves (dma, transport,
trace, config, endpoint, then protocol, then errors, counters, fds, vfio_abi); no
cycle between sibling modules at any depth; the installed package imports neither the
test bench nor the tests.  Every import counts, TYPE_CHECKING ones too.

The contracts are run on the tree as it is, and on a copy with one upward import or one
cycle put in, to prove that they catch it.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", str(root / "pyproject.toml")],
                          cwd=root, env=env, capture_output=True, text=True, timeout=120)


def copy_of_the_tree(into: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", "*.so", "*.c", "*.o", "corpus", "*.bin")
    for name in ("vfu_platform", "testbench", "tests"):
        shutil.copytree(REPO / name, into / name, ignore=ignore)
    shutil.copy(REPO / "pyproject.toml", into / "pyproject.toml")
    return into


def append(path: Path, line: str) -> None:
    path.write_text(path.read_text() + f"\n{line}\n")


def test_the_tree_keeps_every_contract() -> None:
    result = lint(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "broken", "names"),
    [
        ("irq/engine.py", "from vfu_platform.server import session as _up", "layers import only downward",
         "vfu_platform.irq.engine -> vfu_platform.server.session"),
        ("backends/base.py", "import vfu_platform.bridge.device as _up", "layers import only downward",
         "vfu_platform.backends.base -> vfu_platform.bridge.device"),
        ("protocol/header.py", "from vfu_platform.trace import Tracer as _up", "layers import only downward",
         "vfu_platform.protocol.header -> vfu_platform.trace"),
        ("protocol/constants.py", "from vfu_platform.protocol import codec as _cycle",
         "no import cycle between sibling modules", "No cycles are allowed in vfu_platform.protocol"),
        ("dma.py", "import testbench.paths as _bench", "the installed package imports no test bench",
         "vfu_platform.dma -> testbench.paths"),
    ],
    ids=["irq-imports-server", "backends-import-bridge", "protocol-imports-trace", "cycle-in-protocol",
         "package-imports-testbench"],
)
def test_a_bad_import_breaks_a_contract(tmp_path: Path, module: str, line: str, broken: str, names: str) -> None:
    root = copy_of_the_tree(tmp_path)
    append(root / "vfu_platform" / module, line)
    result = lint(root)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{broken}" in result.stdout and "BROKEN" in result.stdout
    assert names in result.stdout, result.stdout
