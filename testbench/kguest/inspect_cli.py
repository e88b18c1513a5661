# SPDX-License-Identifier: BSD-3-Clause
"""In-guest checks of `vfu-platform inspect NAME [--json]` against a real VFIO device.

The command runs as a user would run it (a `python -m vfu_platform` process), on
a device bound to its vfio driver: the table must describe the device and the
server's plan, the JSON must parse into the same facts, and a device that
cannot be opened (held by a running server) must give the report plus its
one-line error with exit status 1.
"""
from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from testbench.kguest.checks import Checks


def run_inspect(device: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vfu_platform", "inspect", device, *args],
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def _short(text: str, lines: int = 4) -> str:
    return " / ".join(text.strip().splitlines()[:lines])


def check_table(c: Checks, name: str, device: str, must_contain: list[str]) -> str:
    result = run_inspect(device)
    missing = [m for m in must_contain if m not in result.stdout]
    c.check(name, result.returncode == 0 and not missing and not result.stderr,
            f"rc={result.returncode} missing={missing} stderr={_short(result.stderr)} "
            f"table={_short(result.stdout, 40)}")
    return result.stdout


def check_json(c: Checks, name: str, device: str, predicate: Callable[[dict[str, Any]], bool],
               describe: Callable[[dict[str, Any]], object]) -> dict[str, Any] | None:
    result = run_inspect(device, "--json")
    try:
        report = json.loads(result.stdout)
    except ValueError as e:
        c.check(name, False, f"rc={result.returncode} not JSON ({e}): {_short(result.stdout)} "
                f"{_short(result.stderr)}")
        return None
    ok = result.returncode == 0 and not result.stderr and predicate(report)
    c.check(name, ok, f"rc={result.returncode} {describe(report)}")
    return report


def check_busy(c: Checks, name: str, device: str) -> None:
    """The device is held (by a running server): the report, its error line last, one line on stderr, exit 1."""
    table = run_inspect(device)
    stderr_lines = table.stderr.strip().splitlines()
    ok = (table.returncode == 1 and len(stderr_lines) == 1 and "is in use" in stderr_lines[0]
          and "Traceback" not in table.stderr and table.stdout.startswith(f"device      {device} ")
          and table.stdout.strip().splitlines()[-1].startswith("error       ") and "plan  " not in table.stdout)
    c.check(name, ok, f"rc={table.returncode} stderr={_short(table.stderr)} last={_short(table.stdout[-300:])}")
