# SPDX-License-Identifier: BSD-3-Clause
"""Check reporting for the programs that run inside the kernel-bench guests.

Console protocol, one line each, parsed by `testbench.kernel`:

    CHECK <name> PASS|FAIL|SKIP <detail on one line>
    N passed, N failed[, N skipped]

A check body that raises is a FAIL of that check (with the exception on the
line), never the end of the program: one broken step must not hide the rest.
The same results are written as JSON to the output share when a path is given.
"""
from __future__ import annotations

import json
import sys
import time
import traceback
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class Checks:
    def __init__(self, program: str) -> None:
        self.program = program
        self.results: list[dict[str, object]] = []
        self.t0 = time.monotonic()

    def _out(self, line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    def check(self, name: str, ok: bool, detail: object = "") -> bool:
        text = " ".join(str(detail).split())
        self._out(f"CHECK {name} {'PASS' if ok else 'FAIL'} {text}".rstrip())
        self.results.append({"name": name, "status": "PASS" if ok else "FAIL", "detail": text})
        return ok

    def skip(self, name: str, why: str) -> None:
        self._out(f"CHECK {name} SKIP {why}")
        self.results.append({"name": name, "status": "SKIP", "detail": why})

    def info(self, text: str) -> None:
        self._out(f"INFO {' '.join(text.split())}")

    def guard(self, name: str, body: Callable[[], T]) -> T | None:
        """Run `body`; an exception becomes `CHECK name FAIL exception ...`."""
        try:
            return body()
        except Exception as e:  # noqa: BLE001 - every failure is a reported check
            for line in traceback.format_exc().splitlines():
                self._out(f"  | {line}")
            self.check(name, False, f"exception {type(e).__name__}: {e}")
            return None

    def counts(self) -> tuple[int, int, int]:
        statuses = [r["status"] for r in self.results]
        return statuses.count("PASS"), statuses.count("FAIL"), statuses.count("SKIP")

    def finish(self, json_path: str | None = None) -> int:
        passed, failed, skipped = self.counts()
        seconds = time.monotonic() - self.t0
        self.info(f"{self.program} took {seconds:.2f}s")
        tail = f", {skipped} skipped" if skipped else ""
        self._out(f"{passed} passed, {failed} failed{tail}")
        if json_path:
            try:
                with open(json_path, "w", encoding="utf-8") as f:
                    json.dump({"program": self.program, "seconds": round(seconds, 3), "checks": self.results}, f,
                              indent=1)
            except OSError as e:
                self.info(f"could not write {json_path}: {e}")
        return 1 if failed else 0
