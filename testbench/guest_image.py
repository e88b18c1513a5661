# SPDX-License-Identifier: BSD-3-Clause
"""Pieces of a guest initramfs, built on the host without root or host tools.

`Cpio` writes the newc archive the kernel unpacks (device nodes included: no
mknod, so no root); `module_closure` resolves the loadable modules a `.ko`
depends on from a kernel's modules.dep (built-in ones need nothing), the way
scripts/mkinitramfs.sh does with depmod data, and decompresses them. That
script cannot be reused for an arm64 guest: it runs its busybox (the guest's)
on the host for xz, strings, depmod and cpio.
"""
from __future__ import annotations

import gzip
import io
import lzma
import re
import subprocess
from pathlib import Path


def modinfo(ko: bytes) -> dict[str, str]:
    """key=value strings of a module's .modinfo (found by scanning: no ELF parser needed)."""
    info: dict[str, str] = {}
    for m in re.finditer(rb"(?:^|\0)(vermagic|depends|name|license)=([^\0]*)", ko):
        info.setdefault(m.group(1).decode(), m.group(2).decode(errors="replace"))
    return info


def _read_ko(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".gz"):
        return gzip.decompress(data)
    if path.name.endswith(".zst"):
        proc = subprocess.run(["zstd", "-qdc", str(path)], stdout=subprocess.PIPE, check=True)
        return proc.stdout
    return data


def _modname(path: str) -> str:
    base = path.rsplit("/", 1)[-1]
    return base.split(".ko", 1)[0].replace("-", "_")


def module_closure(modules: Path, kver: str, ko: bytes, needed_by: str = "the module") -> list[tuple[str, bytes]]:
    """The loadable modules `ko` depends on, dependencies first, decompressed.

    `modules` is the kernel's /lib/modules/<kver> tree (GK_MODULES). A dependency
    built into the kernel (modules.builtin) needs nothing; one that is neither
    loadable nor built in is a LookupError (the module could not be loaded).
    """
    dep_file = modules / "modules.dep"
    deps: dict[str, tuple[str, list[str]]] = {}
    for line in dep_file.read_text().splitlines():
        path, _, rest = line.partition(":")
        deps[_modname(path)] = (path, [_modname(p) for p in rest.split()])
    builtin = {_modname(p) for p in (modules / "modules.builtin").read_text().split()} \
        if (modules / "modules.builtin").exists() else set()
    order: list[str] = []

    def visit(name: str, chain: tuple[str, ...]) -> None:
        name = name.replace("-", "_")
        if name in order or name in builtin:
            return
        if name not in deps:
            raise LookupError(f"module {name} (needed by {' <- '.join(chain)}) is neither in "
                              f"{dep_file} nor built into {kver}")
        for d in deps[name][1]:
            visit(d, (*chain, name))
        order.append(name)

    wanted = [d for d in modinfo(ko).get("depends", "").split(",") if d]
    for d in wanted:
        visit(d, (needed_by,))
    return [(n, _read_ko(modules / deps[n][0])) for n in order]


class Cpio:
    """A newc ("070701") archive, as the kernel unpacks an initramfs; entries in call order."""

    def __init__(self) -> None:
        self._buf = io.BytesIO()
        self._ino = 1
        self._dirs: set[str] = set()

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        fields = [self._ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name) + 1, 0]
        self._ino += 1
        hdr = b"070701" + b"".join(b"%08x" % f for f in fields)
        self._buf.write(hdr + name.encode() + b"\0")
        self._pad()
        self._buf.write(data)
        self._pad()

    def _pad(self) -> None:
        self._buf.write(b"\0" * (-self._buf.tell() % 4))

    def dir(self, name: str) -> None:
        name = name.strip("/")
        parts = name.split("/")
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in self._dirs:
                self._dirs.add(d)
                self._entry(d, 0o040755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        name = name.strip("/")
        if "/" in name:
            self.dir(name.rsplit("/", 1)[0])
        self._entry(name, 0o100000 | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name.strip("/"), 0o120777, target.encode())

    def chardev(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._entry(name.strip("/"), 0o020000 | mode, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        self._buf.write(b"\0" * (-self._buf.tell() % 512))
        return self._buf.getvalue()
