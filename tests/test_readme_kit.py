# SPDX-License-Identifier: BSD-3-Clause
"""README's "Test your own device" example, run as a user would: its two code blocks,
taken verbatim, in a directory of their own, under a pytest with the kit's plugin."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"<!-- kit-example: (\S+) -->\n```python\n(.*?)```\n", re.S)


def examples() -> dict[str, str]:
    return {name: code for name, code in BLOCK.findall(README.read_text())}


def plugin_args(directory: Path) -> list[str]:
    """-p for the plugin only when the metadata pytest sees lacks its pytest11 entry point.

    Asked in `directory`, where the inner pytest runs: a stray vfu_platform.egg-info in
    this process's working directory must not answer for it.
    """
    probe = ("import importlib.metadata as m; "
             "print('vfu_platform' in {ep.name for ep in m.entry_points(group='pytest11')})")
    found = subprocess.run([sys.executable, "-c", probe], cwd=directory, capture_output=True, text=True,
                           timeout=60, check=True).stdout.strip()
    return [] if found == "True" else ["-p", "vfu_platform.testing.plugin"]


def run_pytest(directory: Path, files: dict[str, str]) -> subprocess.CompletedProcess[str]:
    for name, code in files.items():
        (directory / name).write_text(code)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *plugin_args(directory),
                           "--rootdir", str(directory), str(directory)],
                          cwd=directory, capture_output=True, text=True, timeout=120)


def test_readme_has_the_model_and_its_test() -> None:
    found = examples()
    assert set(found) == {"ticker.py", "test_ticker.py"}
    assert "class Ticker(SimDevice)" in found["ticker.py"]
    assert "def test_" in found["test_ticker.py"]


def test_readme_example_passes(tmp_path: Path) -> None:
    result = run_pytest(tmp_path, examples())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


def test_readme_example_fails_on_a_broken_model(tmp_path: Path) -> None:
    files = examples()
    raise_line = "self.set_line(self.tick, True)"
    assert raise_line in files["ticker.py"]
    files["ticker.py"] = files["ticker.py"].replace(raise_line, "pass  # broken: the line never rises")
    result = run_pytest(tmp_path, files)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 failed" in result.stdout and "no tick within" in result.stdout
