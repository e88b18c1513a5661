# SPDX-License-Identifier: BSD-3-Clause
"""docs/architecture.md stays true to the tree it maps.

Checked: (a) every path in backticks under a repo folder (`vfu_platform/...`, `testbench/...`,
`tests/...`, `scripts/...`, `docs/...`, `bindings/...`) exists; (b) every "`file.py` `Name`"
pair names a def, class or attribute (class body, or `self.x =` in a method) in that file
(parsed with ast, nothing imported), and every other `Class.attr` in backticks exists in
one of the files the page names; every numbered hop of "## Message paths" names at least
one pair, and each of the three messages has its hops; (c) the layer list under "## Layers"
equals the importlinter `layers` contract in pyproject.toml.

`check_doc(doc, ...)` takes the page's path, so the tests below also feed it broken copies
and assert that each check reports what was broken.
"""
from __future__ import annotations

import ast
import re
import tomllib
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "architecture.md"
PYPROJECT = REPO / "pyproject.toml"

PATH_PREFIXES = ("vfu_platform/", "testbench/", "tests/", "scripts/", "docs/", "bindings/")
MESSAGES = ("REGION_READ", "DEVICE_SET_IRQS", "DMA_MAP")
MIN_HOPS = 3

_TICKED = re.compile(r"`([^`]+)`")
_PAIR = re.compile(r"`([\w./-]+\.py)` `([A-Za-z_]\w*(?:\.\w+)*)`")
_CLASS_ATTR = re.compile(r"[A-Z]\w*\.\w+")
_HOP = re.compile(r"\d+\. ")
_ITEM = re.compile(r"(\d+\. |- )")


def logical_lines(text: str) -> list[str]:
    """Paragraphs and list items as one line each (wrapped lines joined back with one space)."""
    lines: list[str] = []
    for line in text.splitlines():
        starts_block = line.startswith("#") or _ITEM.match(line) is not None
        if lines and line.strip() and lines[-1].strip() and not starts_block and not lines[-1].startswith("#"):
            lines[-1] += " " + line.strip()
        else:
            lines.append(line)
    return lines


def sections(text: str, level: str) -> dict[str, list[str]]:
    """Logical lines under each heading of `level` ("##" or "###"), up to the next heading as high."""
    out: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in logical_lines(text):
        if line.startswith(level + " "):
            current = out.setdefault(line[len(level) + 1 :].strip(), [])
        elif line.startswith("#") and len(line) - len(line.lstrip("#")) <= len(level):
            current = None
        elif current is not None:
            current.append(line)
    return out


@cache
def defined_names(path: Path) -> frozenset[str]:
    """"f", "C" and "C.x" for what `path` defines at top level and in class bodies (and self.x)."""
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()

    def targets(node: ast.AST) -> list[ast.expr]:
        if isinstance(node, ast.Assign):
            return node.targets
        if isinstance(node, (ast.AnnAssign, ast.AugAssign)):
            return [node.target]
        return []

    def own(node: ast.stmt) -> list[str]:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            return [node.name]
        return [t.id for t in targets(node) if isinstance(t, ast.Name)]

    for node in tree.body:
        names.update(own(node))
        if isinstance(node, ast.ClassDef):
            for member in node.body:
                names.update(f"{node.name}.{name}" for name in own(member))
                if isinstance(member, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    for sub in ast.walk(member):
                        for target in targets(sub):
                            if (isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name)
                                    and target.value.id == "self"):
                                names.add(f"{node.name}.{target.attr}")
    return frozenset(names)


def missing_paths(text: str, repo: Path) -> list[str]:
    problems = []
    for token in sorted(set(_TICKED.findall(text))):
        if token.startswith(PATH_PREFIXES) and " " not in token:
            found = any(repo.glob(token)) if "*" in token else (repo / token).exists()
            if not found:
                problems.append(f"path `{token}` does not exist")
    return problems


def missing_names(text: str, repo: Path) -> list[str]:
    problems = []
    joined = "\n".join(logical_lines(text))
    files = sorted({path for path in _TICKED.findall(joined)
                    if path.endswith(".py") and (repo / path).is_file()})
    for path, name in sorted(set(_PAIR.findall(joined))):
        if (repo / path).is_file() and name not in defined_names(repo / path):
            problems.append(f"`{path}` defines no `{name}`")
    paired = {name for _path, name in _PAIR.findall(joined)}
    for token in sorted(set(_TICKED.findall(joined)) - paired):
        if _CLASS_ATTR.fullmatch(token) and not any(token in defined_names(repo / path) for path in files):
            problems.append(f"`{token}` is defined in none of the files this page names")
    return problems


def hop_problems(text: str) -> list[str]:
    problems = []
    paths = sections(text, "###")
    for message in MESSAGES:
        hops = [line for line in paths.get(message, []) if _HOP.match(line)]
        if len(hops) < MIN_HOPS:
            problems.append(f"message path {message}: {len(hops)} hops, expected at least {MIN_HOPS}")
    for line in sections(text, "##").get("Message paths", []):
        if _HOP.match(line) and not _PAIR.search(line):
            problems.append(f"hop names no \"`file.py` `Name`\" pair: {line[:80]!r}")
    return problems


def doc_layers(text: str) -> list[str]:
    layers = []
    for line in sections(text, "##").get("Layers", []):
        if _HOP.match(line):
            ticked = _TICKED.search(line)
            layers.append(ticked.group(1) if ticked else line)
    return layers


def contract_layers(pyproject: Path) -> list[str]:
    contracts = tomllib.loads(pyproject.read_text())["tool"]["importlinter"]["contracts"]
    (layers,) = [c["layers"] for c in contracts if c["type"] == "layers"]
    return layers


def layer_problems(text: str, pyproject: Path) -> list[str]:
    documented, contract = doc_layers(text), contract_layers(pyproject)
    if documented == contract:
        return []
    return [f"layers differ from {pyproject.name}: doc {documented} != contract {contract}"]


def check_doc(doc: Path, repo: Path = REPO, pyproject: Path = PYPROJECT) -> list[str]:
    """Every way `doc` is untrue to `repo` and its import contract (empty: the map is true)."""
    text = doc.read_text()
    return missing_paths(text, repo) + missing_names(text, repo) + hop_problems(text) + layer_problems(text, pyproject)


# ------------------------------------------------------------------ the page itself
def test_the_map_is_true() -> None:
    assert check_doc(DOC) == []


def test_the_checks_have_something_to_check() -> None:
    """A parser that found nothing would pass everything: count what it found."""
    text = DOC.read_text()
    joined = "\n".join(logical_lines(text))
    assert len(doc_layers(text)) == len(contract_layers(PYPROJECT)) >= 5
    assert len(set(_PAIR.findall(joined))) >= 60
    assert sum(token.startswith(PATH_PREFIXES) for token in _TICKED.findall(joined)) >= 80
    hops = sections(text, "###")
    assert all(sum(bool(_HOP.match(line)) for line in hops[m]) >= 5 for m in MESSAGES)


# ------------------------------------------------------------------ broken copies are caught
BREAKS = {
    "a-folder-that-is-gone": ([("`testbench/kguest/`", "`testbench/kguests/`")],
                              "path `testbench/kguests/` does not exist"),
    "a-module-that-is-gone": ([("1. `vfu_platform/server/loop.py` `EventLoop.run_once`",
                                "1. `vfu_platform/server/eventloop.py` `EventLoop.run_once`")],
                              "path `vfu_platform/server/eventloop.py` does not exist"),
    "a-renamed-method": ([("`vfu_platform/server/session.py` `Session._dma_map` —",
                           "`vfu_platform/server/session.py` `Session._map_dma` —")],
                         "`vfu_platform/server/session.py` defines no `Session._map_dma`"),
    "a-method-on-the-wrong-class": ([("6. `vfu_platform/bridge/bar_routing.py` `BarRouter.read`",
                                      "6. `vfu_platform/bridge/bar_routing.py` `PciBridge.read`")],
                                    "defines no `PciBridge.read`"),
    "a-method-named-without-its-file": ([("`Connection._on_writable`", "`Connection._undrain`")],
                                        "`Connection._undrain` is defined in none of the files"),
    "a-hop-without-code": ([("9. `vfu_platform/server/connection.py` `Connection._flush`",
                             "9. the reply goes out.\n10. `vfu_platform/server/connection.py` `Connection._flush`")],
                           "hop names no"),
    "a-message-path-dropped": ([("### DMA_MAP", "### DMA MAP")], "message path DMA_MAP: 0 hops"),
    "two-layers-swapped": ([("6. `vfu_platform.irq`", "6. `vfu_platform.backends`"),
                            ("7. `vfu_platform.backends`", "7. `vfu_platform.irq`")], "layers differ"),
    "a-layer-member-dropped": ([("`vfu_platform.dma | vfu_platform.transport |", "`vfu_platform.transport |")],
                               "layers differ"),
}


@pytest.mark.parametrize(("edits", "reported"), BREAKS.values(), ids=BREAKS.keys())
def test_a_broken_copy_is_reported(tmp_path: Path, edits: list[tuple[str, str]], reported: str) -> None:
    text = DOC.read_text()
    for old, new in edits:
        assert text.count(old) == 1, f"the page no longer holds {old!r} once: update this test"
        text = text.replace(old, new)
    broken = tmp_path / "architecture.md"
    broken.write_text(text)
    problems = check_doc(broken)
    assert any(reported in problem for problem in problems), problems


def test_a_changed_contract_is_reported(tmp_path: Path) -> None:
    """The other side of (c): a layer added to pyproject.toml and not to the page."""
    text = PYPROJECT.read_text()
    old = '    "vfu_platform.server",\n'
    assert text.count(old) == 1
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(text.replace(old, old + '    "vfu_platform.middle",\n'))
    assert contract_layers(pyproject)[4] == "vfu_platform.middle"
    problems = check_doc(DOC, pyproject=pyproject)
    assert any("layers differ" in problem for problem in problems), problems
