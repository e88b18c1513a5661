# SPDX-License-Identifier: BSD-3-Clause
"""The QEMU arguments that attach a served device (`vfu-platform qemu-args`).

Three things, all required by QEMU's vfio-user client:

* `-device` in its JSON form: `vfio-user-pci,socket=PATH` and the dotted
  `socket.path=` keys do not parse (the socket is a QAPI object);
* guest RAM in a shared memfd (`-object memory-backend-memfd,...,share=on`), so
  the DMA_MAPs carry fds and the server maps guest memory instead of asking QEMU
  for every DMA access; `-m` must equal the backend's size;
* the machine, naming that backend (`-machine TYPE,memory-backend=ID`): x86
  `q35` or `pc`, Arm `virt` (with a GICv3, whose ITS takes the device's MSIs).
  `virt` also gets `-cpu max`: its default CPU is a 32-bit cortex-a15, which no
  aarch64 kernel runs on (`max` is the host's CPU under KVM, every feature under TCG).
"""
from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Sequence

#: the machine option per machine type
MACHINES = {
    "q35": "q35",
    "pc": "pc",
    "virt": "virt,gic-version=3",
}
#: the CPU per machine type, where QEMU's default does not fit (none: QEMU's default)
CPUS = {"virt": "max"}
FORMATS = ("lines", "shell", "json")

_SIZE = re.compile(r"^[1-9][0-9]*[KMGT]?$")


class QemuArgsError(ValueError):
    """A bad option value; its text is one line."""


def qemu_args(socket: str, machine: str = "q35", memory: str = "1G", device_id: str = "vfu0",
              memory_id: str = "mem") -> list[str]:
    """The arguments, in order, one list item per argv word; `socket` is made absolute."""
    if machine not in MACHINES:
        raise QemuArgsError(f"unknown machine {machine!r} (known: {', '.join(MACHINES)})")
    size = memory.upper()
    if not _SIZE.match(size):
        raise QemuArgsError(f"bad memory size {memory!r}: a number with an optional K, M, G or T suffix")
    for what, value in (("device id", device_id), ("memory id", memory_id)):
        if not re.match(r"^[A-Za-z][A-Za-z0-9_.-]*$", value):
            raise QemuArgsError(f"bad {what} {value!r}: a letter, then letters, digits, '-', '.' or '_'")
    device = {"driver": "vfio-user-pci", "id": device_id,
              "socket": {"type": "unix", "path": os.path.abspath(socket)}}
    cpu = ["-cpu", CPUS[machine]] if machine in CPUS else []
    return [
        "-machine", f"{MACHINES[machine]},memory-backend={memory_id}",
        *cpu,
        "-m", size,
        "-object", f"memory-backend-memfd,id={memory_id},size={size},share=on",
        "-device", json.dumps(device, separators=(",", ":")),
    ]


def format_args(args: Sequence[str], form: str) -> str:
    """`lines`: one argument per line, unquoted; `shell`: one shell-quoted line; `json`: a JSON list."""
    if form == "lines":
        return "\n".join(args)
    if form == "shell":
        return shlex.join(args)
    if form == "json":
        return json.dumps(list(args))
    raise QemuArgsError(f"unknown format {form!r} (known: {', '.join(FORMATS)})")
