# SPDX-License-Identifier: BSD-3-Clause
"""Where the checkout and the bench's own files are, for every bench module."""
from __future__ import annotations

from pathlib import Path

BENCH = Path(__file__).resolve().parent   # this package: testbench/
REPO = BENCH.parent                       # the checkout (holds vfu_platform/, scripts/, tests/)
SCRIPTS = REPO / "scripts"
GUEST = BENCH / "guest"                   # QEMU-client bench guest programs
KGUEST = BENCH / "kguest"                 # kernel-bench guest programs
