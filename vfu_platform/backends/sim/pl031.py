# SPDX-License-Identifier: BSD-3-Clause
"""ARM PrimeCell PL031 real time clock (ARM DDI 0224), as Linux's rtc-pl031 drives it.

Region 0, 4 KiB of 32-bit little-endian registers:

    0x000  RTCDR    RO   the counter (seconds)
    0x004  RTCMR    RW   match value
    0x008  RTCLR    RW   load: a write sets the counter; reads the last value written
    0x00C  RTCCR    RW   bit 0 start: 1 starts the counter; once started a write
                         cannot stop it (only a reset of the counter domain could)
    0x010  RTCIMSC  RW   bit 0 alarm interrupt mask (1 = the interrupt reaches the line)
    0x014  RTCRIS   RO   bit 0 raw alarm status: latched when the counter equals MR
    0x018  RTCMIS   RO   RIS & IMSC
    0x01C  RTCICR   WO   write 1 to bit 0: clear RIS
    0xFE0-0xFFC          PrimeCell IDs: peripheral ID 0x00141031 (r1; revision option), cell ID

Unknown and write-only offsets read 0; writes to read-only or unknown offsets are
ignored.  A 1- or 2-byte read returns those bytes of the register; a partial write
merges into the register's stored value (for RTCLR: its last written value, which
is then loaded).  An 8-byte access is two registers.

The counter counts whole seconds of a monotonic clock (`clock`, default
`time.monotonic`) from `epoch` (default: the host's wall-clock time at creation).
Loading it (RTCLR, or the host's `set_time`) keeps the 1 Hz prescaler's phase, as
the hardware does.  A match is evaluated at every second boundary (a `defer()`
timer) and when MR or the counter is written: RIS latches when the counter has
reached MR since the last evaluation, including seconds a late timer skipped over
(a load that jumps over MR does not match, as on the hardware).  The one IRQ is a
level line, asserted while RIS & IMSC.

Reset (DEVICE_RESET, a client leaving) resets the APB side (MR, LR, IMSC, RIS) and
keeps the counter and its start bit: an RTC keeps its time across a system reset
(its counter has a reset of its own, nRTCRST, that the system reset does not drive).

`start=False` models an RTC that firmware has not started: the counter holds
`epoch` and RTCCR reads 0 until the guest writes bit 0 (Linux's probe does).
"""

from __future__ import annotations

import math
import time as _time
from collections.abc import Callable

from vfu_platform import vfio_abi
from vfu_platform.backends.base import AckRegister
from vfu_platform.backends.guest import Bind, GuestDevice, GuestIrq, GuestRegion, Trigger
from vfu_platform.backends.sim.device import Deferred, RegisterRegion, SimDevice
from vfu_platform.backends.sim.primecell import IdBlock, make_periphid, read_lanes, write_lanes

REGS_SIZE = 0x1000

REG_DR = 0x000
REG_MR = 0x004
REG_LR = 0x008
REG_CR = 0x00C
REG_IMSC = 0x010
REG_RIS = 0x014
REG_MIS = 0x018
REG_ICR = 0x01C

CR_START = 0x1
INT_ALARM = 0x1  # RTC_BIT_AI in IMSC / RIS / MIS / ICR

PART_NUMBER = 0x031
#: revision 1, the r1 part's ID as QEMU's pl031 and real silicon report it (Linux's amba
#: table lists 0x00041031 with a mask that ignores the revision digit)
DEFAULT_REVISION = 1
PERIPH_ID = make_periphid(PART_NUMBER, revision=DEFAULT_REVISION)  # 0x00141031

#: the timer fires this long after a second boundary, so that the count has moved
TICK_SLACK = 0.001

_U32 = 0xFFFF_FFFF
_HALF = 1 << 31


class Pl031Device(SimDevice):
    """PL031 RTC; see the module docstring."""

    name = "pl031"
    control_names = ("rtc",)
    compatible = ("arm,pl031", "arm,primecell")
    #: the vfu-platform bridge with a guest descriptor (docs/guest-descriptor.md)
    pci_vendor, pci_device, pci_class = 0x1234, 0x5646, 0x088000
    device_flags = vfio_abi.DEVICE_FLAGS_AMBA | vfio_abi.DEVICE_FLAGS_RESET
    irq_regions = frozenset({0})
    ack_registers = (AckRegister(irq=0, region=0, offset=REG_ICR, mask=INT_ALARM),)

    def __init__(
        self,
        *,
        epoch: int | None = None,
        start: bool = True,
        revision: int = DEFAULT_REVISION,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if epoch is None:
            epoch = int(_time.time())
        if not 0 <= epoch <= _U32:
            raise ValueError(f"pl031: epoch must be 0..{_U32:#x} (32-bit seconds), not {epoch}")
        if clock is not None and not callable(clock):
            raise ValueError("pl031: clock must be a function returning seconds (tests only)")
        super().__init__()
        self.periphid = make_periphid(PART_NUMBER, revision=revision)  # ValueError past 15
        self._ids = IdBlock(self.periphid)
        self._clock = clock or _time.monotonic
        self.add_region(RegisterRegion(REGS_SIZE, self._read, self._write, name="pl031-regs"))
        self.irq = self.add_level_irq("rtc")
        # Counter state: running, count = (offset + whole seconds since phase0) mod 2^32;
        # stopped, count = held.
        self._running = start
        self._phase0 = self._clock()
        self._offset = epoch
        self._held = epoch
        self._last_seen = epoch
        self._tick: Deferred | None = None
        #: how many times RIS was latched by a match
        self.matches = 0
        self.on_reset()

    # ---- host side ----------------------------------------------------------

    def time(self) -> int:
        """The counter now (what RTCDR reads)."""
        return self._count()

    def set_time(self, seconds: int) -> None:
        """Set the counter, as if the clock were changed from outside (RTCLR is untouched)."""
        if not 0 <= seconds <= _U32:
            raise ValueError(f"pl031: time must be 0..{_U32:#x}, not {seconds}")
        self._load(seconds)

    def line(self) -> bool:
        """The interrupt output (RIS & IMSC)."""
        return bool(self.ris & self.imsc)

    def control(self, words: list[str]) -> str:
        """Host commands: `get`, `set SECONDS`, `status`, `help`."""
        if not words:
            return "error: pl031: no command (commands: get, set SECONDS, status)"
        command, args = words[0], words[1:]
        if command == "help" and not args:
            return "ok commands: get, set SECONDS, status"
        if command == "get" and not args:
            return f"ok {self.time()}"
        if command == "set" and len(args) == 1:
            try:
                seconds = int(args[0], 0)
            except ValueError:
                return f"error: pl031: time {args[0]!r} is not a number of seconds"
            if not 0 <= seconds <= _U32:
                return f"error: pl031: time {seconds} is outside 0..{_U32}"
            self.set_time(seconds)
            return f"ok {self.time()}"
        if command == "status" and not args:
            return (f"ok time={self.time()} mr={self.mr} lr={self.lr} cr={self._cr()} "
                    f"imsc={self.imsc} ris={self.ris} line={int(self.line())} matches={self.matches}")
        if command in ("help", "get", "set", "status"):
            return f"error: pl031: wrong arguments for {command!r} (commands: get, set SECONDS, status)"
        return f"error: pl031: unknown command {command!r} (commands: get, set SECONDS, status)"

    def guest_devices(self) -> tuple[GuestDevice, ...]:
        return (
            GuestDevice(
                name="pl031",
                bind=Bind.AMBA,
                amba_id=self.periphid,
                compatible=self.compatible,
                regions=(GuestRegion(0, size=REGS_SIZE),),
                irqs=(GuestIrq(self.irq, Trigger.LEVEL_HIGH),),
            ),
        )

    # ---- counter ------------------------------------------------------------

    def _ticks(self) -> int:
        """Whole seconds of the 1 Hz prescaler since it started."""
        return math.floor(self._clock() - self._phase0)

    def _count(self) -> int:
        if not self._running:
            return self._held
        return (self._offset + self._ticks()) & _U32

    def _load(self, value: int) -> None:
        self._evaluate_match()
        value &= _U32
        if self._running:
            self._offset = (value - self._ticks()) & _U32
        else:
            self._held = value
        self._last_seen = value
        if value == self.mr:
            self._match()

    def _start(self) -> None:
        if self._running:
            return
        self._running = True
        self._phase0 = self._clock()
        self._offset = self._held
        self._last_seen = self._held
        self._arm_tick()

    def _arm_tick(self) -> None:
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None
        if not self._running or self.closed:
            return
        elapsed = self._clock() - self._phase0
        delay = math.floor(elapsed) + 1 - elapsed + TICK_SLACK
        self._tick = self.defer(delay, self._on_tick)

    def _on_tick(self) -> None:
        self._tick = None
        self._evaluate_match()
        self._arm_tick()

    def _evaluate_match(self) -> None:
        """Latch RIS if the counter passed MR since the last evaluation."""
        now = self._count()
        advanced = (now - self._last_seen) & _U32
        if 0 < advanced < _HALF and 0 < (self.mr - self._last_seen) & _U32 <= advanced:
            self._match()
        self._last_seen = now

    def _match(self) -> None:
        self.matches += 1
        self.counters.bump("pl031.matches")
        self.ris |= INT_ALARM
        self._update_line()

    def _update_line(self) -> None:
        self.set_line(self.irq, self.line())

    def _cr(self) -> int:
        return CR_START if self._running else 0

    def on_reset(self) -> None:
        self.mr = 0
        self.lr = 0
        self.imsc = 0
        self.ris = 0
        self._last_seen = self._count()
        # `reset` has cancelled every deferred job; the counter keeps running.
        self._tick = None
        self._arm_tick()

    # ---- registers ----------------------------------------------------------

    def _read(self, offset: int, size: int) -> int:
        self._evaluate_match()  # a late tick must not let RIS lag behind DR
        return read_lanes(self._read_word, offset, size)

    def _read_word(self, offset: int) -> int:
        if offset == REG_DR:
            return self._count()
        if offset == REG_MR:
            return self.mr
        if offset == REG_LR:
            return self.lr
        if offset == REG_CR:
            return self._cr()
        if offset == REG_IMSC:
            return self.imsc
        if offset == REG_RIS:
            return self.ris
        if offset == REG_MIS:
            return self.ris & self.imsc
        if IdBlock.covers(offset):
            return self._ids.read(offset)
        return 0

    def _write(self, offset: int, size: int, value: int) -> None:
        self._evaluate_match()  # a match the old MR / counter was due first
        write_lanes(self._write_word, offset, size, value)

    def _write_word(self, offset: int, value: int, mask: int) -> None:
        if offset == REG_MR:
            self.mr = self.mr & ~mask | value
            if self._count() == self.mr:
                self._match()
        elif offset == REG_LR:
            self.lr = self.lr & ~mask | value
            self._load(self.lr)
        elif offset == REG_CR:
            if value & CR_START:
                self._start()
        elif offset == REG_IMSC:
            self.imsc = (self.imsc & ~mask | value) & INT_ALARM
            self._update_line()
        elif offset == REG_ICR:
            self.ris &= ~(value & INT_ALARM)
            self._update_line()

    def status(self) -> dict[str, object]:
        snapshot = super().status()
        snapshot["registers"] = {
            "dr": self._count(),
            "mr": self.mr,
            "lr": self.lr,
            "cr": self._cr(),
            "imsc": self.imsc,
            "ris": self.ris,
        }
        return snapshot
