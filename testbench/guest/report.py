# SPDX-License-Identifier: BSD-3-Clause
"""Console reporting for the guest programs, and their kernel command-line parameters.

Output protocol (one line each, parsed by the host harness):

    CHECK <name> PASS|FAIL <detail>
    INFO <key> <value>
    RESULT PASS|FAIL [note]

Details of a CHECK are meant to be compared between two runs (the reference edu and
ours), so they hold only device-visible values; anything that depends on the machine
(addresses, node names, poll counts) goes into INFO lines.
"""
from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

PREFIX = "vfu."


def kernel_params(path: str = "/proc/cmdline") -> dict[str, str]:
    """The ``vfu.<key>=<value>`` words of the kernel command line, as {key: value}.

    The kernel does not hand dotted parameters to /init, so programs read them here.
    Values cannot contain spaces; lists are comma-separated.
    """
    try:
        with open(path) as f:
            words = f.read().split()
    except OSError:
        return {}
    params: dict[str, str] = {}
    for word in words:
        if word.startswith(PREFIX):
            key, _, value = word[len(PREFIX):].partition("=")
            params[key] = value
    return params


class Fatal(Exception):
    """A failed check after which the program cannot go on."""


class Report:
    """Collects checks, prints them at once, and prints the final result line."""

    def __init__(self, program: str, params: dict[str, str] | None = None) -> None:
        self.program = program
        self.params = kernel_params() if params is None else params
        self.expected_failures = {n for n in self.params.get("xfail", "").split(",") if n}
        self.failed: list[str] = []
        self.passed: list[str] = []
        self.t0 = time.monotonic()

    def line(self, text: str) -> None:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    def info(self, key: str, value: object) -> None:
        self.line(f"INFO {key} {value}")

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        self.line(f"CHECK {name} {'PASS' if ok else 'FAIL'} {detail}".rstrip())
        (self.passed if ok else self.failed).append(name)
        return ok

    def require(self, name: str, ok: bool, detail: str = "") -> None:
        """A check the rest of the program depends on: stop here if it failed."""
        if not self.check(name, ok, detail):
            raise Fatal(name)

    def guarded(self, name: str, body: Callable[[], T]) -> T | None:
        """Run one check body; an exception becomes a FAIL of `name` with its message."""
        try:
            return body()
        except Fatal:
            raise
        except Exception as e:  # noqa: BLE001 - any error is a failed check, with its cause
            for line in traceback.format_exc().splitlines():
                self.line(f"  | {line}")
            self.check(name, False, f"exception {type(e).__name__}: {e}")
            return None

    def finish(self) -> int:
        unexpected = [n for n in self.failed if n not in self.expected_failures]
        expected = [n for n in self.failed if n in self.expected_failures]
        self.info("elapsed_s", f"{time.monotonic() - self.t0:.2f}")
        note = f" ({len(expected)} expected failures: {','.join(expected)})" if expected else ""
        if unexpected:
            self.line(f"RESULT FAIL {len(unexpected)} failed: {','.join(unexpected)}{note}")
            return 1
        self.line(f"RESULT PASS {len(self.passed)} passed{note}")
        return 0


def run(program: str, body: Callable[[Report], None]) -> int:
    """Run a program's body with a Report, turning a Fatal stop into a FAIL result."""
    report = Report(program)
    report.info("program", program)
    try:
        body(report)
    except Fatal as e:
        report.info("stopped_after", e)
    except Exception as e:  # noqa: BLE001 - report, never die silently on the console
        for line in traceback.format_exc().splitlines():
            report.line(f"  | {line}")
        report.check("program", False, f"exception {type(e).__name__}: {e}")
    return report.finish()
