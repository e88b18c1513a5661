# SPDX-License-Identifier: BSD-3-Clause
"""Fake sysfs trees with device-tree nodes, shaped like a real arm64 kernel's.

    SYS/devices/platform/NAME/{subsystem -> SYS/bus/BUS, of_node -> DT node, id}
    SYS/bus/BUS/devices/NAME -> SYS/devices/platform/NAME
    SYS/firmware/devicetree/base/...   one folder per node, one file per property

Property values are given as Python values: int or tuple of ints (big-endian u32
cells, as the kernel shows them), str or tuple of str (NUL-terminated strings),
True (an empty property), bytes (raw).
"""
from __future__ import annotations

import os
import struct
from pathlib import Path

PropValue = int | tuple[int, ...] | str | tuple[str, ...] | bool | bytes


def encode_prop(value: PropValue) -> bytes:
    if value is True:
        return b""
    if isinstance(value, bytes):
        return value
    if isinstance(value, int):
        return struct.pack(">I", value)
    if isinstance(value, str):
        return value.encode() + b"\0"
    if all(isinstance(v, int) for v in value):
        return struct.pack(f">{len(value)}I", *value)
    return b"".join(v.encode() + b"\0" for v in value)  # type: ignore[union-attr]


class FakeSysfs:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.dt = root / "firmware" / "devicetree" / "base"
        self.dt.mkdir(parents=True)

    def node(self, path: str, **props: PropValue) -> Path:
        """A DT node at `path` ("" = the root, "soc/uart@9000000"); property names use
        "_" for "," and "__" prefix for "#" (or pass them through `raw`)."""
        folder = self.dt / path if path else self.dt
        folder.mkdir(parents=True, exist_ok=True)
        for key, value in props.items():
            self.prop(folder, _prop_name(key), value)
        return folder

    @staticmethod
    def prop(node: Path, name: str, value: PropValue) -> None:
        (node / name).write_bytes(encode_prop(value))

    def device(self, name: str, bus: str, node: Path | None, periphid: str | None = None) -> Path:
        """The device's sysfs folder (bound nowhere; vfio-amba keeps `id` as it is)."""
        folder = self.root / "devices" / "platform" / name
        folder.mkdir(parents=True)
        bus_dir = self.root / "bus" / bus / "devices"
        bus_dir.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(self.root / "bus" / bus, folder), folder / "subsystem")
        os.symlink(os.path.relpath(folder, bus_dir), bus_dir / name)
        if node is not None:
            os.symlink(os.path.relpath(node, folder), folder / "of_node")
        if periphid is not None:
            (folder / "id").write_text(periphid + "\n")
        return bus_dir / name


def _prop_name(key: str) -> str:
    if key.startswith("__"):
        key = "#" + key[2:]
    return key.replace("_", "-").replace("--", ",")


def qemu_virt(root: Path) -> FakeSysfs:
    """The parts of QEMU's arm `virt` tree the tests use: a GIC (3 cells), the apb-pclk
    fixed clock, a pl031 and pl061 (AMBA), and a dw-apb-uart behind a 2-cell
    controller, and a node that inherits a 1-cell interrupt parent from its bus."""
    fs = FakeSysfs(root)
    fs.node("", interrupt_parent=0x8002, __address_cells=2, __size_cells=2, compatible="linux,dummy-virt")
    fs.node("intc@8000000", phandle=0x8002, __interrupt_cells=3, interrupt_controller=True,
            compatible=("arm,cortex-a15-gic",))
    fs.node("apb-pclk", phandle=0x8000, __clock_cells=0, clock_frequency=24000000, compatible="fixed-clock")
    fs.node("pl031@9010000", compatible=("arm,pl031", "arm,primecell"), reg=(0, 0x9010000, 0, 0x1000),
            interrupts=(0, 2, 4), clocks=0x8000, clock_names="apb_pclk")
    fs.node("pl061@9030000", compatible=("arm,pl061", "arm,primecell"), reg=(0, 0x9030000, 0, 0x1000),
            interrupts=(0, 7, 4), clocks=0x8000, __gpio_cells=2, gpio_controller=True)
    fs.node("gpio-intc", phandle=0x9000, __interrupt_cells=2, interrupt_controller=True)
    fs.node("uart@9040000", compatible="snps,dw-apb-uart", reg=(0, 0x9040000, 0, 0x100, 0, 0x9041000, 0, 0x100),
            reg_names=("regs", "dma"), interrupt_parent=0x9000, interrupts=(5, 2, 6, 1),
            interrupt_names=("rx", "tx"), reg_shift=2, reg_io_width=4, clock_frequency=1843200)
    fs.node("bus", interrupt_parent=0x9100, __address_cells=1, __size_cells=1)
    fs.node("bus/simple-intc", phandle=0x9100, __interrupt_cells=1, interrupt_controller=True)
    fs.node("bus/timer@1000", compatible=("acme,timer", "acme,timer-v1"), reg=(0x1000, 0x40), interrupts=(9,),
            big_endian=True)
    return fs
