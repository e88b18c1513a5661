# SPDX-License-Identifier: BSD-3-Clause
"""Run a fuzz target of fuzz_targets.py in a child process and read what it reports.

Used by the short run in the test suite (tests/test_fuzz_session.py) and the long one
(scripts/fuzz).  The child is libFuzzer under atheris: it exits non-zero on a crash,
an uncaught exception or a timeout (a hang), and writes the input that did it to
`artifact_dir` (crash-*, timeout-*).

libFuzzer's own RSS limit is off (-rss_limit_mb=0): it reads getrusage's ru_maxrss,
which a child inherits from the process that started it (a pytest of 1 GB makes
every child "use" 1 GB from its first input).  The targets measure their own RSS
from /proc/self/statm instead and fail past `RSS_LIMIT_MB` (fuzz_targets.py).
"""
from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGETS = HERE / "fuzz_targets.py"
SEED_CORPUS = HERE / "corpus" / "seed"
CRASH_CORPUS = HERE / "corpus" / "crashes"

_DONE = re.compile(r"#(\d+)\s+DONE\s+cov: (\d+) ft: (\d+) corp: (\d+)/")
_STATS = re.compile(r"#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+)")
_RESOURCES = re.compile(r"vfu-fuzz: execs (\d+) fds (\d+) baseline (\d+) rss_mb ([\d.]+)")


@dataclass
class FuzzResult:
    target: str
    returncode: int
    execs: int = 0
    coverage: int = 0  # libFuzzer "cov": edges (Python: bytecode branches) reached
    features: int = 0
    corpus: int = 0
    artifacts: list[Path] = field(default_factory=list)
    fds: list[tuple[int, int]] = field(default_factory=list)  # (count, baseline) per report
    rss_mb: list[float] = field(default_factory=list)
    log: str = ""

    @property
    def tracebacks(self) -> int:
        return self.log.count("Traceback (most recent call last)")

    def summary(self) -> str:
        rss = f", RSS {self.rss_mb[0]:.1f} -> {self.rss_mb[-1]:.1f} MB" if self.rss_mb else ""
        fds = f", fds {self.fds[0][0]} -> {self.fds[-1][0]}" if self.fds else ""
        return (f"{self.target}: {self.execs} execs, cov {self.coverage}, ft {self.features}, corpus {self.corpus}, "
                f"{len(self.artifacts)} crash inputs, {self.tracebacks} tracebacks, exit {self.returncode}{fds}{rss}")


def run(target: str, runs: int, *, seed: int = 1, workdir: Path, artifact_dir: Path, max_len: int = 16384,
        timeout_s: int = 20, python: str = sys.executable, extra: list[str] | None = None,
        report_every: int = 10000) -> FuzzResult:
    """Fuzz `target` for `runs` inputs, from the seed corpus, growing the corpus in `workdir`."""
    workdir.mkdir(parents=True, exist_ok=True)
    artifact_dir.mkdir(parents=True, exist_ok=True)
    before = set(artifact_dir.iterdir())
    args = [python, str(TARGETS), target, f"-runs={runs}", f"-seed={seed}", f"-max_len={max_len}",
            f"-timeout={timeout_s}", "-rss_limit_mb=0", f"-artifact_prefix={artifact_dir}/{target}-",
            "-print_final_stats=1", *(extra or []), str(workdir), str(SEED_CORPUS)]
    env = {"VFU_FUZZ_REPORT": str(report_every), "PATH": "/usr/bin:/bin", "PYTHONHASHSEED": str(seed)}
    proc = subprocess.run(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          env=env, cwd=HERE.parents[1])
    log = proc.stdout.decode(errors="replace")
    result = FuzzResult(target, proc.returncode, log=log)
    done = _DONE.search(log)
    if done:
        result.execs, result.coverage, result.features, result.corpus = map(int, done.groups())
    else:
        stats = _STATS.findall(log)
        if stats:
            result.execs, result.coverage, result.features = map(int, stats[-1])
    for match in _RESOURCES.finditer(log):
        result.fds.append((int(match[2]), int(match[3])))
        result.rss_mb.append(float(match[4]))
    result.artifacts = sorted(set(artifact_dir.iterdir()) - before)
    return result
