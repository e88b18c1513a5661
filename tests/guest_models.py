# SPDX-License-Identifier: BSD-3-Clause
"""Small test-only device models that declare guest devices (docs/guest-descriptor.md).

Importable by a server subprocess as `tests.guest_models:Name` (the server runs
with the repository as its working directory).
"""
from __future__ import annotations

from vfu_platform.backends.base import AckRegister
from vfu_platform.backends.guest import U64, Bind, GuestDevice, GuestIrq, GuestRegion, Trigger
from vfu_platform.backends.sim.device import MemoryRegion, RegisterRegion, SimDevice

REGS = 0x1000
SRAM = 0x2000
REG_RAISE = 0x0  # write bit k: assert level line k (k = 0), pulse edge line (bit 1)
REG_LOWER = 0x4  # write 1: lower the level line
REG_ACK = 0x8  # write 1: lower the level line and acknowledge it (an ack register)


class Widget(SimDevice):
    """Two regions (trapped registers, mmapped SRAM), a level and an edge line, and a
    guest device that uses every part of the declaration (sub-ranges, names, every
    property type)."""

    name = "widget"
    compatible = ("acme,widget",)
    irq_regions = frozenset({0})
    ack_registers = (AckRegister(irq=0, region=0, offset=REG_ACK, mask=1),)

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple] = []
        self.add_region(RegisterRegion(REGS, self._read, self._write, name="regs"))
        self.add_region(MemoryRegion(SRAM, name="sram"))
        self.level = self.add_level_irq("level")
        self.edge = self.add_edge_irq("edge")

    def _read(self, offset: int, size: int) -> int:
        return 0x57494447 if offset == 0x10 else 0

    def _write(self, offset: int, size: int, value: int) -> None:
        self.log.append(("write", offset, value))
        if offset == REG_RAISE:
            if value & 1:
                self.set_line(self.level, True)
            if value & 2:
                self.pulse(self.edge)
        elif offset in (REG_LOWER, REG_ACK) and value & 1:
            self.set_line(self.level, False)

    def on_reset(self) -> None:
        self.log.append(("reset",))

    def guest_devices(self) -> tuple[GuestDevice, ...]:
        return (
            GuestDevice(
                name="snps,dw-apb-uart",
                bind=Bind.DT_COMPATIBLE,
                regions=(GuestRegion(0, name="regs"), GuestRegion(1, offset=0x100, size=0x100, name="fifo")),
                irqs=(GuestIrq(self.level, Trigger.LEVEL_HIGH, "rx"), GuestIrq(self.edge, Trigger.EDGE_RISING)),
                compatible=("acme,widget", "snps,dw-apb-uart"),
                properties=(
                    ("reg-shift", 2),
                    ("clock-frequency", (24000000,)),
                    ("clock-names", ("baudclk", "apb_pclk")),
                    ("label", "w0"),
                    ("big-endian", True),
                    ("no-loopback-test", False),  # a false flag is not sent
                    ("wide", U64((1 << 40,))),
                ),
            ),
            GuestDevice(name="widget-sram", bind=Bind.PLATFORM_NAME, regions=(GuestRegion(1),)),
        )


class Plain(SimDevice):
    """One register region and one level line; declares nothing for the guest."""

    name = "plain"
    pci_vendor = 0x1234  # a test model, with an identity of its own (not the unidentified default)
    pci_device = 0x5700
    pci_class = 0xFF0000

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple] = []
        self.add_region(RegisterRegion(REGS, self._read, self._write, name="regs"))
        self.level = self.add_level_irq("level")

    def _read(self, offset: int, size: int) -> int:
        return 0x504C4149 if offset == 0x10 else 0

    def _write(self, offset: int, size: int, value: int) -> None:
        self.log.append(("write", offset, value))
        if offset == REG_RAISE:
            self.set_line(self.level, bool(value & 1))

    def on_reset(self) -> None:
        self.log.append(("reset",))


class _Declares(Plain):
    """Plain, declaring `declared` (subclasses set it to something wrong)."""

    declared: tuple[GuestDevice, ...] = ()

    def guest_devices(self) -> tuple[GuestDevice, ...]:
        return self.declared


def _one(**fields: object) -> tuple[GuestDevice, ...]:
    base: dict[str, object] = dict(name="bad", bind=Bind.PLATFORM_NAME, regions=(GuestRegion(0),))
    base.update(fields)
    return (GuestDevice(**base),)  # type: ignore[arg-type]


class BadRegionIndex(_Declares):
    declared = _one(regions=(GuestRegion(3),))


class BadIrqIndex(_Declares):
    declared = _one(irqs=(GuestIrq(1),))


class RegionTooLong(_Declares):
    declared = _one(regions=(GuestRegion(0, offset=0x800, size=0x1000),))


class OffsetPastRegion(_Declares):
    declared = _one(regions=(GuestRegion(0, offset=0x1000),))


class BadProperty(_Declares):
    declared = _one(properties=(("mixed", (1, "a")),))  # type: ignore[arg-type]


class TooBig(_Declares):
    declared = _one(compatible=tuple(f"vendor,compatible-string-{k:04d}" for k in range(200)))
