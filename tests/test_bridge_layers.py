# SPDX-License-Identifier: BSD-3-Clause
"""No upward import out of the bridge or the VFIO host backend (every import, TYPE_CHECKING ones too).

Layers, top to bottom: cli / inspect_report -> server -> bridge -> irq -> backends,
with protocol messages, dma, trace, counters, errors, fds and vfio_abi as shared
leaves.  The session's device API is defined in `bridge.api` so that the server
imports it from below; `inspect`'s bridge plan lives in `vfu_platform.inspect_report`,
above both.  (An import-linter contract for the whole package can replace this.)
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vfu_platform"
ABOVE_BRIDGE = ("vfu_platform.server", "vfu_platform.cli", "vfu_platform.client", "vfu_platform.transport",
                "vfu_platform.inspect_report", "vfu_platform.testbench")
ABOVE_BACKENDS = ABOVE_BRIDGE + ("vfu_platform.bridge", "vfu_platform.irq")


def imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def upward(folder: str, forbidden: tuple[str, ...]) -> list[str]:
    return [f"{path.relative_to(PACKAGE.parent)} imports {name}"
            for path in sorted((PACKAGE / folder).rglob("*.py"))
            for name in imports(path)
            if any(name == top or name.startswith(top + ".") for top in forbidden)]


@pytest.mark.parametrize(("folder", "forbidden"), [
    ("bridge", ABOVE_BRIDGE),
    ("backends/vfio", ABOVE_BACKENDS),
])
def test_no_upward_import(folder: str, forbidden: tuple[str, ...]) -> None:
    assert upward(folder, forbidden) == []


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from vfu_platform.server.loop import EventLoop\n")
    assert imports(module) == ["typing", "vfu_platform.server.loop"]
