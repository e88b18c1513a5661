# SPDX-License-Identifier: BSD-3-Clause
"""The fuzz seed corpus: real QEMU sessions, rebuilt as bytes from a recorded client trace.

/work/shared/docs/qemu-client-trace.txt (a copy of its decoded part is the input
here) lists every request QEMU 11.1 sent to an edu server during one boot, edu test
and poweroff: command, size, and the fields that matter.  `messages()` turns each line
back into the message QEMU sent (same id order, same flags: BAR writes posted with
NO_REPLY, the same VERSION JSON).  What the trace does not show is filled in
plausibly: written values (a BAR sizing write is 0xffffffff, an edu register write a
small number) and fds (none: a fuzz input is bytes only).

`python tests/fuzz/qemu_corpus.py TRACE OUTDIR` writes the seed files:
  session.bin    the whole session (194 messages)
  realize.bin    VERSION .. the first config reads (what every QEMU attach sends)
  firmware.bin   the DMA_MAP / DMA_UNMAP churn of SeaBIOS and the BAR programming
  guest.bin      the guest's edu test: BAR reads, posted writes, INTx unmasks
  one-*.bin      one message of each command
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

from vfu_platform.protocol import messages as m
from vfu_platform.protocol.codec import encode
from vfu_platform.protocol.constants import Command, MsgFlags

LINE = re.compile(r"^#(?P<n>\d+)\s+C->S\s+(?P<cmd>\w+)\s+req=(?P<req>\d+)\s+reply=(?P<reply>\S+)\s*(?P<rest>.*)$")
QEMU_CAPS = (b'{"capabilities": {"pgsizes": 4096, "max_msg_fds": 16, "max_dma_maps": 65535, '
             b'"max_data_xfer_size": 1048576, "migration": {"max_bitmap_size": 268435456, "pgsize": 4096}, '
             b'"write_multiple": true}}')


def _fields(rest: str) -> dict[str, int]:
    words = rest.split()
    out = {}
    for key, value in zip(words, words[1:]):
        if re.fullmatch(r"(0x[0-9a-f]+|\d+)", value):
            out[key] = int(value, 0)
    return out


def _write_value(region: int, offset: int, count: int) -> bytes:
    if region == 7 and (0x10 <= offset < 0x28 or offset == 0x30):
        value = 0xFFFFFFFF  # BAR sizing
    elif region == 7 and offset == 0x04:
        value = 0x0107  # COMMAND: I/O, memory, bus master, SERR
    else:
        value = {0x04: 0x12345678, 0x08: 5, 0x60: 1, 0x64: 1}.get(offset, 0)
    return (value & ((1 << (8 * count)) - 1)).to_bytes(count, "little")


def message(msg_id: int, cmd: str, req: int, posted: bool, f: dict[str, int]) -> bytes:
    command = Command[cmd]
    flags = int(MsgFlags.NO_REPLY) if posted else 0
    if command == Command.VERSION:
        payload = m.Version(0, 0, None).pack() + QEMU_CAPS + b"\0"
    elif command == Command.DMA_MAP:
        payload = m.DmaMap(32, f.get("flags", 3), f.get("off", 0), f.get("iova", 0), f.get("size", 0x1000)).pack()
    elif command == Command.DMA_UNMAP:
        payload = m.DmaUnmap(24, f.get("flags", 0), f.get("iova", 0), f.get("size", 0x1000)).pack()
    elif command == Command.DEVICE_GET_INFO:
        payload = m.DeviceInfo(16).pack()
    elif command == Command.DEVICE_GET_REGION_INFO:
        payload = m.RegionInfo(32, index=f.get("index", 0)).pack()
    elif command == Command.DEVICE_GET_IRQ_INFO:
        payload = m.IrqInfo(16, index=f.get("index", 0)).pack()
    elif command == Command.DEVICE_SET_IRQS:
        payload = m.IrqSet(20, f.get("flags", 0), f.get("index", 0), f.get("start", 0), f.get("count", 0)).pack()
    elif command == Command.REGION_READ:
        payload = m.RegionAccess(f.get("offset", 0), f.get("region", 0), f.get("count", 4)).pack()
    elif command == Command.REGION_WRITE:
        region, offset, count = f.get("region", 0), f.get("offset", 0), f.get("count", 4)
        payload = m.RegionAccess(offset, region, count, _write_value(region, offset, count)).pack()
    elif command == Command.DEVICE_RESET:
        payload = b""
    else:
        raise ValueError(f"no seed for {cmd}")
    data = encode(msg_id, command, payload, flags)
    if len(data) != req:
        raise ValueError(f"#{msg_id} {cmd}: rebuilt {len(data)} bytes, the trace says {req}")
    return data


def messages(trace_text: str) -> list[tuple[str, bytes]]:
    """(command name, message bytes) for every request of the decoded trace, in order."""
    out = []
    for line in trace_text.splitlines():
        match = LINE.match(line)
        if match:
            n = int(match["n"])
            out.append((match["cmd"], message(n, match["cmd"], int(match["req"]), match["reply"] == "posted",
                                              _fields(match["rest"]))))
    return out


def seed_files(trace_text: str) -> dict[str, bytes]:
    msgs = messages(trace_text)
    whole = [data for _cmd, data in msgs]
    first_bar = next(i for i, (cmd, data) in enumerate(msgs) if cmd == "REGION_READ" and data[24:28] == b"\0\0\0\0"
                     and i > 100)
    files = {
        "session.bin": b"".join(whole),
        "realize.bin": b"".join(whole[:20]),
        "firmware.bin": b"".join(whole[:1] + whole[20:first_bar]),
        "guest.bin": b"".join(whole[:1] + whole[first_bar:]),
    }
    seen: set[str] = set()
    for cmd, data in msgs:
        if cmd not in seen:
            seen.add(cmd)
            files[f"one-{cmd.lower()}.bin"] = (whole[0] + data) if cmd != "VERSION" else data
    return files


def main(argv: list[str]) -> int:
    trace, outdir = Path(argv[1]), Path(argv[2])
    outdir.mkdir(parents=True, exist_ok=True)
    for name, data in seed_files(trace.read_text()).items():
        (outdir / name).write_bytes(data)
        print(f"{outdir / name}: {len(data)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
