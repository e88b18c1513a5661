# SPDX-License-Identifier: BSD-3-Clause
"""ARM PrimeCell PL061 GPIO (ARM DDI 0190), as Linux's gpio-pl061 drives it.

Eight lines.  Region 0, 4 KiB of 8-bit registers in 32-bit slots (bits 31:8 read
zero, writes to them are ignored):

    0x000-0x3FC  GPIODATA   RW  address-masked: offset bits [9:2] select the lines an
                                access touches.  A read returns the selected lines'
                                levels (0 for the others); a write changes only the
                                selected lines that are outputs
    0x400        GPIODIR    RW  1 = output
    0x404        GPIOIS     RW  interrupt sense: 1 = level, 0 = edge
    0x408        GPIOIBE    RW  edge lines: 1 = both edges (GPIOIEV ignored)
    0x40C        GPIOIEV    RW  1 = rising edge / high level, 0 = falling / low
    0x410        GPIOIE     RW  interrupt mask: 1 = the line's interrupt reaches GPIOINTR
    0x414        GPIORIS    RO  raw status: latched edges | level lines at their level
    0x418        GPIOMIS    RO  RIS & IE
    0x41C        GPIOIC     WO  write 1: clear that line's latched edge (no effect on
                                level-sensitive lines: they follow the pin)
    0x420        GPIOAFSEL  RW  stored (this model has no alternate function)
    0xFE0-0xFFC             PrimeCell IDs: peripheral ID 0x00041061, cell ID

Unknown offsets read 0 and ignore writes; 1- and 2-byte accesses reach byte 0 of
a register (what Linux's readb/writeb do).

A line's pin level is its output value when GPIODIR makes it an output, else the
level the host drives on it (`set_input`, the control channel).  Interrupt
detection watches the pin, so an output line can interrupt too (the pad loops
back; Linux never asks for that).  GPIOINTR, the model's one level IRQ, is
asserted while GPIOMIS != 0.

Host side: `set_input(line, level)`, `inputs()`, `outputs()` -> (values, direction
mask), `pins()`, and `on_output(values, direction)` / `output_changes` to watch
the outputs.  Reset puts every register at its TRM reset value (all lines inputs,
nothing latched); the host's input levels are outside the device and stay.

No acknowledge register is declared, on purpose.  GPIOIC is the per-line clear,
but a write to it does not come with every interrupt: a level-sensitive source
that goes away before the handler reads GPIOMIS leaves it nothing to clear, and
Linux's handler then writes nothing.  With GPIOIC as the EOI source the bridge
would wait for that write (INTx: unmask *and* ack; MSI-X: ack alone) and the line
would stay ACTIVE for good, losing every later GPIO interrupt.  Without it the
EOI is the client's unmask (INTx) or the first trapped access (MSI-X); the cost
is that an interrupt still asserted at that moment fires once more and Linux's
chained handler finds GPIOMIS empty, which it tolerates.  (The guest
descriptor's exact-EOI mode takes the EOI from the bridge driver's IRQ_EOI
write and needs no ack register at all.)
"""

from __future__ import annotations

from collections.abc import Callable

from vfu_platform import vfio_abi
from vfu_platform.backends.guest import Bind, GuestDevice, GuestIrq, GuestRegion, Trigger
from vfu_platform.backends.sim.device import RegisterRegion, SimDevice
from vfu_platform.backends.sim.primecell import IdBlock, make_periphid, read_lanes, write_lanes

REGS_SIZE = 0x1000
NGPIOS = 8
LINES_MASK = (1 << NGPIOS) - 1

DATA_END = 0x400  # GPIODATA spans 0x000-0x3FC
REG_DIR = 0x400
REG_IS = 0x404
REG_IBE = 0x408
REG_IEV = 0x40C
REG_IE = 0x410
REG_RIS = 0x414
REG_MIS = 0x418
REG_IC = 0x41C
REG_AFSEL = 0x420

PART_NUMBER = 0x061
PERIPH_ID = make_periphid(PART_NUMBER)  # 0x00041061

#: the plain read/write registers and the attributes that hold them
_STORAGE = {REG_DIR: "dir", REG_IS: "isense", REG_IBE: "ibe", REG_IEV: "iev",
            REG_IE: "ie", REG_AFSEL: "afsel"}


def data_offset(lines: int) -> int:
    """The GPIODATA offset whose address mask selects `lines` (a bitmask)."""
    if not 0 <= lines <= LINES_MASK:
        raise ValueError(f"pl061: line mask {lines:#x} is not 8 bits")
    return lines << 2


OutputWatcher = Callable[[int, int], None]
"""on_output(values, direction): output values (bits of output lines) and GPIODIR."""


class Pl061Device(SimDevice):
    """PL061 GPIO; see the module docstring."""

    name = "pl061"
    control_names = ("gpio",)
    compatible = ("arm,pl061", "arm,primecell")
    #: the vfu-platform bridge with a guest descriptor (docs/guest-descriptor.md)
    pci_vendor, pci_device, pci_class = 0x1234, 0x5646, 0x088000
    device_flags = vfio_abi.DEVICE_FLAGS_AMBA | vfio_abi.DEVICE_FLAGS_RESET
    irq_regions = frozenset({0})

    def __init__(self, *, inputs: int = 0) -> None:
        if not 0 <= inputs <= LINES_MASK:
            raise ValueError(f"pl061: inputs must be an 8-bit mask, not {inputs:#x}")
        super().__init__()
        self.periphid = PERIPH_ID
        self._ids = IdBlock(self.periphid)
        self.add_region(RegisterRegion(REGS_SIZE, self._read, self._write, name="pl061-regs"))
        self.irq = self.add_level_irq("gpio")
        self._inputs = inputs  # levels the host drives (outside the device: kept by reset)
        #: observer of output changes: on_output(values, direction)
        self.on_output: OutputWatcher | None = None
        #: how many times the outputs (values or direction) changed
        self.output_changes = 0
        self._reported = (0, 0)
        self.on_reset()

    def on_reset(self) -> None:
        self.data = 0  # output latch (only output lines' bits are ever written)
        self.dir = 0
        self.isense = 0
        self.ibe = 0
        self.iev = 0
        self.ie = 0
        self.afsel = 0
        self.edges = 0  # latched edge detections
        self._pin_levels = self.pins()
        self._changed()

    # ---- host side ----------------------------------------------------------

    def set_input(self, line: int, level: bool | int) -> None:
        """Drive `line` from outside (seen on the pin while it is an input)."""
        if not 0 <= line < NGPIOS:
            raise ValueError(f"pl061: no line {line} (lines 0..{NGPIOS - 1})")
        bit = 1 << line
        self._inputs = self._inputs | bit if level else self._inputs & ~bit
        self._changed()

    def inputs(self) -> int:
        """The levels the host drives on the lines (a bitmask; also for output lines)."""
        return self._inputs

    def outputs(self) -> tuple[int, int]:
        """(values, direction): the output lines' levels and GPIODIR."""
        return self.data & self.dir, self.dir

    def pins(self) -> int:
        """Every line's level: the output value for outputs, the host's input otherwise."""
        return (self.data & self.dir | self._inputs & ~self.dir) & LINES_MASK

    def ris(self) -> int:
        level_hit = ~(self.pins() ^ self.iev) & self.isense
        return (self.edges | level_hit) & LINES_MASK

    def mis(self) -> int:
        return self.ris() & self.ie

    def line(self) -> bool:
        """GPIOINTR."""
        return self.mis() != 0

    def control(self, words: list[str]) -> str:
        """Host commands: `set LINE LEVEL`, `get [LINE]`, `status`, `help`."""
        usage = "commands: set LINE 0|1, get [LINE], status"
        if not words:
            return f"error: pl061: no command ({usage})"
        command, args = words[0], words[1:]
        if command == "help" and not args:
            return f"ok {usage}"
        if command == "set" and len(args) == 2:
            line = _parse_line(args[0])
            if line is None:
                return f"error: pl061: no line {args[0]!r} (lines 0..{NGPIOS - 1})"
            if args[1] not in ("0", "1"):
                return f"error: pl061: level {args[1]!r} is not 0 or 1"
            self.set_input(line, args[1] == "1")
            return f"ok pins={self.pins():#04x}"
        if command == "get" and len(args) == 1:
            line = _parse_line(args[0])
            if line is None:
                return f"error: pl061: no line {args[0]!r} (lines 0..{NGPIOS - 1})"
            direction = "out" if self.dir >> line & 1 else "in"
            return f"ok {self.pins() >> line & 1} {direction}"
        if command == "get" and not args:
            values, direction = self.outputs()
            return (f"ok pins={self.pins():#04x} inputs={self._inputs:#04x} "
                    f"outputs={values:#04x} dir={direction:#04x}")
        if command == "status" and not args:
            return (f"ok pins={self.pins():#04x} dir={self.dir:#04x} is={self.isense:#04x} "
                    f"ibe={self.ibe:#04x} iev={self.iev:#04x} ie={self.ie:#04x} "
                    f"ris={self.ris():#04x} mis={self.mis():#04x} afsel={self.afsel:#04x} "
                    f"line={int(self.line())} output_changes={self.output_changes}")
        if command in ("help", "set", "get", "status"):
            return f"error: pl061: wrong arguments for {command!r} ({usage})"
        return f"error: pl061: unknown command {command!r} ({usage})"

    def guest_devices(self) -> tuple[GuestDevice, ...]:
        return (
            GuestDevice(
                name="pl061",
                bind=Bind.AMBA,
                amba_id=self.periphid,
                compatible=self.compatible,
                regions=(GuestRegion(0, size=REGS_SIZE),),
                irqs=(GuestIrq(self.irq, Trigger.LEVEL_HIGH),),
                properties=(("ngpios", NGPIOS),),
            ),
        )

    # ---- the pins and the interrupt logic --------------------------------------

    def _changed(self) -> None:
        """After anything that can move a pin or the interrupt state."""
        pins = self.pins()
        moved = pins ^ self._pin_levels
        if moved:
            rising = moved & pins
            falling = moved & ~pins
            edge_lines = ~self.isense
            both = moved & self.ibe
            chosen = rising & self.iev | falling & ~self.iev
            self.edges |= (both | chosen) & edge_lines & LINES_MASK
            self._pin_levels = pins
        reported = self.outputs()
        if reported != self._reported:
            self._reported = reported
            self.output_changes += 1
            self.counters.bump("pl061.output_changes")
            if self.on_output is not None:
                self.on_output(*reported)
        self.set_line(self.irq, self.line())

    # ---- registers ----------------------------------------------------------

    def _read(self, offset: int, size: int) -> int:
        return read_lanes(self._read_word, offset, size)

    def _read_word(self, offset: int) -> int:
        if offset < DATA_END:
            return self.pins() & offset >> 2
        if offset == REG_RIS:
            return self.ris()
        if offset == REG_MIS:
            return self.mis()
        name = _STORAGE.get(offset)
        if name is not None:
            return getattr(self, name)
        if IdBlock.covers(offset):
            return self._ids.read(offset)
        return 0  # GPIOIC (write-only) and unknown offsets

    def _write(self, offset: int, size: int, value: int) -> None:
        write_lanes(self._write_word, offset, size, value)

    def _write_word(self, offset: int, value: int, mask: int) -> None:
        if not mask & LINES_MASK:
            return  # bytes 1-3 of an 8-bit register
        value &= LINES_MASK
        if offset < DATA_END:
            select = offset >> 2 & self.dir
            self.data = self.data & ~select | value & select
        elif offset == REG_IC:
            self.edges &= ~value
        elif offset == REG_IS:
            self.isense = value
            self.edges &= ~value  # a line turned level-sensitive follows its pin only
        elif offset in _STORAGE:
            setattr(self, _STORAGE[offset], value)
        else:
            return
        self._changed()

    def status(self) -> dict[str, object]:
        snapshot = super().status()
        snapshot["registers"] = {
            "pins": self.pins(), "data": self.data, "dir": self.dir, "is": self.isense,
            "ibe": self.ibe, "iev": self.iev, "ie": self.ie, "ris": self.ris(),
            "mis": self.mis(), "afsel": self.afsel, "inputs": self._inputs,
        }
        return snapshot


def _parse_line(text: str) -> int | None:
    try:
        line = int(text, 10)
    except ValueError:
        return None
    return line if 0 <= line < NGPIOS else None
