# SPDX-License-Identifier: BSD-3-Clause
"""The PCI function's config space: a fully emulated 256-byte type-0 header.

Conventional PCI (no PCIe capability, as the protocol brief recommends for
vfio-user-pci), with at most two capabilities: MSI-X at 0x40, then the vendor-specific
one that announces the guest descriptor (docs/guest-descriptor.md) at 0x50, chained in
that order from CAPABILITY_LIST; both read-only except the two MSI-X control bits.  QEMU keeps its own copy of the BARs,
the ROM BAR, the capability pointers and the MSI-X capability, but it reads the raw BAR
type bits from here, forwards every guest config write, and passes through COMMAND,
STATUS and the interrupt line and pin.

Every write goes through a per-byte write mask: a bit is writable only where the mask has
a 1, everything else keeps its value.  That one rule gives all the register semantics:
read-only fields, the command bits we implement, BAR sizing (the mask of a BAR of size S
is ~(S - 1) without the type nibble, so writing all-ones reads back the size mask | type),
the absent ROM BAR (mask 0: reads 0 after the 0xfffff800 probe), and the two writable
MSI-X control bits.  Partial, unaligned and cross-register writes therefore never fail;
the brief prefers read-only semantics over errors because QEMU logs each failed write.

STATUS is read-only: CAP_LIST is fixed, INTERRUPT follows `set_intx_status`, and the
write-1-to-clear error bits are never set, so writes to them have nothing to clear.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from vfu_platform.bridge import msix
from vfu_platform.bridge.bar_plan import BarPlan

CONFIG_SPACE_SIZE: Final = 256

# Header offsets (type 0).
VENDOR_ID: Final = 0x00
DEVICE_ID: Final = 0x02
COMMAND: Final = 0x04
STATUS: Final = 0x06
REVISION_ID: Final = 0x08
CLASS_CODE: Final = 0x09  # 3 bytes: prog-if, subclass, base class
CACHE_LINE_SIZE: Final = 0x0C
LATENCY_TIMER: Final = 0x0D
HEADER_TYPE: Final = 0x0E
BIST: Final = 0x0F
BAR0: Final = 0x10
SUBSYSTEM_VENDOR_ID: Final = 0x2C
SUBSYSTEM_ID: Final = 0x2E
ROM_ADDRESS: Final = 0x30
CAPABILITY_LIST: Final = 0x34
INTERRUPT_LINE: Final = 0x3C
INTERRUPT_PIN: Final = 0x3D
MIN_GNT: Final = 0x3E
MAX_LAT: Final = 0x3F

COMMAND_IO: Final = 0x0001
COMMAND_MEMORY: Final = 0x0002
COMMAND_MASTER: Final = 0x0004
COMMAND_SERR: Final = 0x0100
COMMAND_INTX_DISABLE: Final = 0x0400
# IO stays read-only 0: a BarPlan has memory BARs only, and the IO enable bit is
# writable only when an IO BAR exists.
COMMAND_WRITABLE: Final = COMMAND_MEMORY | COMMAND_MASTER | COMMAND_SERR | COMMAND_INTX_DISABLE

STATUS_INTERRUPT: Final = 0x0008
STATUS_CAP_LIST: Final = 0x0010

BAR_MEM_TYPE_64: Final = 0x4
BAR_MEM_PREFETCH: Final = 0x8

CAP_ID_MSIX: Final = 0x11
#: Where the MSI-X capability lives (the first offset after the header).
MSIX_CAP_OFFSET: Final = 0x40
MSIX_CONTROL: Final = 2  # offsets inside the capability
MSIX_TABLE: Final = 4
MSIX_PBA: Final = 8
MSIX_CAP_SIZE: Final = 12
MSIX_CONTROL_QSIZE: Final = 0x07FF
MSIX_CONTROL_MASKALL: Final = 0x4000
MSIX_CONTROL_ENABLE: Final = 0x8000
CAP_ID_VENDOR: Final = 0x09
#: Where the vendor-specific (guest descriptor) capability lives: after MSI-X's 12 bytes.
VENDOR_CAP_OFFSET: Final = 0x50


@dataclass(frozen=True, slots=True)
class PciIds:
    """Identity registers; the defaults are QEMU's `edu` device."""

    vendor: int = 0x1234
    device: int = 0x11E8
    subsystem_vendor: int = 0x1AF4
    subsystem_id: int = 0x1100
    class_code: int = 0x00FF00  # base class << 16 | subclass << 8 | prog-if
    revision: int = 0x10

    def __post_init__(self) -> None:
        for name, bits in (
            ("vendor", 16),
            ("device", 16),
            ("subsystem_vendor", 16),
            ("subsystem_id", 16),
            ("class_code", 24),
            ("revision", 8),
        ):
            value = getattr(self, name)
            if not 0 <= value < 1 << bits:
                raise ValueError(f"PCI {name} {value:#x} does not fit in {bits} bits")


@dataclass(frozen=True, slots=True)
class ConfigWriteEffects:
    """What a config write changed that the bridge has to act on."""

    command_old: int
    command_new: int
    msix_enabled_old: bool
    msix_enabled_new: bool
    msix_masked_old: bool  # function mask
    msix_masked_new: bool

    @property
    def command_changed(self) -> bool:
        return self.command_old != self.command_new

    @property
    def memory_enable_changed(self) -> bool:
        return bool((self.command_old ^ self.command_new) & COMMAND_MEMORY)

    @property
    def bus_master_changed(self) -> bool:
        return bool((self.command_old ^ self.command_new) & COMMAND_MASTER)

    @property
    def intx_disable_changed(self) -> bool:
        return bool((self.command_old ^ self.command_new) & COMMAND_INTX_DISABLE)

    @property
    def msix_enable_changed(self) -> bool:
        return self.msix_enabled_old != self.msix_enabled_new

    @property
    def msix_mask_changed(self) -> bool:
        return self.msix_masked_old != self.msix_masked_new

    @property
    def any_changed(self) -> bool:
        """True if anything in this object changed (BAR, line and cache-line writes do not count)."""
        return self.command_changed or self.msix_enable_changed or self.msix_mask_changed


class ConfigSpace:
    """The emulated config space of one PCI function.

    `msix_vectors` > 0 adds an MSI-X capability at `MSIX_CAP_OFFSET` whose table sits at
    `msix.TABLE_OFFSET` and PBA at `msix.PBA_OFFSET` of BAR `msix_bar` (default: the
    plan's IRQ page BAR).  `interrupt_pin` is 0 (no INTx) or 1..4 (INTA..INTD).
    `vendor_cap` (the bytes of a vendor-specific capability from its cap_id, whose
    cap_next this fills in) is placed at `VENDOR_CAP_OFFSET`, after MSI-X in the list.
    """

    def __init__(
        self,
        ids: PciIds,
        plan: BarPlan,
        msix_vectors: int = 0,
        msix_bar: int | None = None,
        interrupt_pin: int = 1,
        vendor_cap: bytes | None = None,
    ) -> None:
        if not 0 <= interrupt_pin <= 4:
            raise ValueError(f"interrupt pin {interrupt_pin} not in 0..4")
        if not 0 <= msix_vectors <= msix.MAX_VECTORS:
            raise ValueError(f"MSI-X vector count {msix_vectors} not in 0..{msix.MAX_VECTORS}")
        self._ids = ids
        self._plan = plan
        self._msix_vectors = msix_vectors
        self._interrupt_pin = interrupt_pin
        self._msix_cap: int | None = None
        self._msix_bar: int | None = None
        self._vendor_cap: int | None = None

        cfg = bytearray(CONFIG_SPACE_SIZE)
        wmask = bytearray(CONFIG_SPACE_SIZE)
        _put(cfg, VENDOR_ID, 2, ids.vendor)
        _put(cfg, DEVICE_ID, 2, ids.device)
        _put(cfg, REVISION_ID, 1, ids.revision)
        _put(cfg, CLASS_CODE, 3, ids.class_code)
        _put(cfg, SUBSYSTEM_VENDOR_ID, 2, ids.subsystem_vendor)
        _put(cfg, SUBSYSTEM_ID, 2, ids.subsystem_id)
        _put(cfg, INTERRUPT_PIN, 1, interrupt_pin)
        # HEADER_TYPE, BIST, ROM_ADDRESS, MIN_GNT, MAX_LAT: 0 and read-only.
        _put(wmask, COMMAND, 2, COMMAND_WRITABLE)
        _put(wmask, CACHE_LINE_SIZE, 1, 0xFF)
        _put(wmask, LATENCY_TIMER, 1, 0xFF)
        _put(wmask, INTERRUPT_LINE, 1, 0xFF)

        for bar in plan.bars:
            register = BAR0 + 4 * bar.index
            size_mask = ~(bar.size - 1) & 0xFFFF_FFFF_FFFF_FFFF
            flags = (BAR_MEM_TYPE_64 if bar.is_64bit else 0) | (BAR_MEM_PREFETCH if bar.prefetchable else 0)
            _put(cfg, register, 4, flags)
            _put(wmask, register, 4, size_mask & 0xFFFF_FFF0)
            if bar.is_64bit:
                _put(wmask, register + 4, 4, size_mask >> 32)

        if msix_vectors:
            if msix_bar is None:
                irq_bar = plan.irq_bar
                if irq_bar is None:
                    raise ValueError("MSI-X needs a BAR for its table: the plan has no IRQ page")
                msix_bar = irq_bar.index
            bar = plan.bar(msix_bar)
            if bar is None:
                raise ValueError(f"MSI-X BAR{msix_bar} is not a BAR of the plan")
            end = msix.PBA_OFFSET + msix.pba_size(msix_vectors)
            if end > bar.backed_size:
                raise ValueError(f"MSI-X table and PBA need {end:#x} bytes; BAR{msix_bar} backs {bar.backed_size:#x}")
            cap = MSIX_CAP_OFFSET
            _put(cfg, CAPABILITY_LIST, 1, cap)
            _put(cfg, STATUS, 2, STATUS_CAP_LIST)
            _put(cfg, cap, 1, CAP_ID_MSIX)  # next pointer (cap + 1) stays 0: end of chain
            _put(cfg, cap + MSIX_CONTROL, 2, msix_vectors - 1)
            _put(cfg, cap + MSIX_TABLE, 4, msix.TABLE_OFFSET | msix_bar)
            _put(cfg, cap + MSIX_PBA, 4, msix.PBA_OFFSET | msix_bar)
            _put(wmask, cap + MSIX_CONTROL, 2, MSIX_CONTROL_MASKALL | MSIX_CONTROL_ENABLE)
            self._msix_cap = cap
            self._msix_bar = msix_bar
        elif msix_bar is not None:
            raise ValueError("msix_bar given without MSI-X vectors")

        if vendor_cap is not None:
            cap = VENDOR_CAP_OFFSET
            if len(vendor_cap) < 3 or vendor_cap[0] != CAP_ID_VENDOR or cap + len(vendor_cap) > CONFIG_SPACE_SIZE:
                raise ValueError("vendor capability: expected cap_id 0x09 and a length that fits the header")
            cfg[cap : cap + len(vendor_cap)] = vendor_cap
            _put(cfg, cap + 1, 1, 0)  # end of chain
            if self._msix_cap is not None:
                _put(cfg, self._msix_cap + 1, 1, cap)
            else:
                _put(cfg, CAPABILITY_LIST, 1, cap)
            _put(cfg, STATUS, 2, STATUS_CAP_LIST)
            self._vendor_cap = cap

        self._cfg = cfg
        self._wmask = bytes(wmask)
        self._power_on = bytes(cfg)

    # -- access ---------------------------------------------------------------

    def read(self, offset: int, size: int) -> bytes:
        """Read `size` bytes at `offset` (any alignment; must lie within the 256 bytes)."""
        _check(offset, size)
        return bytes(self._cfg[offset : offset + size])

    def write(self, offset: int, data: bytes) -> ConfigWriteEffects:
        """Apply a write byte by byte through the write mask; never fails for in-range writes."""
        _check(offset, len(data))
        command_old = self.command
        msix_enabled_old = self.msix_enabled
        msix_masked_old = self.msix_function_masked
        cfg, wmask = self._cfg, self._wmask
        for position, value in enumerate(data, offset):
            writable = wmask[position]
            if writable:
                cfg[position] = (cfg[position] & ~writable) | (value & writable)
        return ConfigWriteEffects(
            command_old,
            self.command,
            msix_enabled_old,
            self.msix_enabled,
            msix_masked_old,
            self.msix_function_masked,
        )

    def set_intx_status(self, asserted: bool) -> None:
        """Mirror the INTx line into STATUS.INTERRUPT (the bridge calls this on every change)."""
        if asserted:
            self._cfg[STATUS] |= STATUS_INTERRUPT
        else:
            self._cfg[STATUS] &= ~STATUS_INTERRUPT & 0xFF

    def reset(self) -> None:
        """Back to power-on values: command 0, BAR bases 0, MSI-X off and unmasked,
        interrupt line, cache line size and latency timer 0, STATUS.INTERRUPT clear
        (the bridge sets it again if the line is still asserted after the reset)."""
        self._cfg[:] = self._power_on

    # -- state the bridge acts on ----------------------------------------------

    @property
    def command(self) -> int:
        return self._cfg[COMMAND] | self._cfg[COMMAND + 1] << 8

    @property
    def memory_enabled(self) -> bool:
        return bool(self.command & COMMAND_MEMORY)

    @property
    def bus_master(self) -> bool:
        return bool(self.command & COMMAND_MASTER)

    @property
    def intx_disabled(self) -> bool:
        return bool(self.command & COMMAND_INTX_DISABLE)

    @property
    def intx_status(self) -> bool:
        return bool(self._cfg[STATUS] & STATUS_INTERRUPT)

    @property
    def msix_enabled(self) -> bool:
        return self._msix_control_bit(MSIX_CONTROL_ENABLE)

    @property
    def msix_function_masked(self) -> bool:
        return self._msix_control_bit(MSIX_CONTROL_MASKALL)

    # -- static shape ------------------------------------------------------------

    @property
    def ids(self) -> PciIds:
        return self._ids

    @property
    def plan(self) -> BarPlan:
        return self._plan

    @property
    def interrupt_pin(self) -> int:
        return self._interrupt_pin

    @property
    def msix_vectors(self) -> int:
        return self._msix_vectors

    @property
    def msix_cap_offset(self) -> int | None:
        """Offset of the MSI-X capability, None without MSI-X."""
        return self._msix_cap

    @property
    def vendor_cap_offset(self) -> int | None:
        """Offset of the vendor-specific (guest descriptor) capability, None without it."""
        return self._vendor_cap

    @property
    def msix_bar(self) -> int | None:
        """BAR index holding the MSI-X table and PBA, None without MSI-X."""
        return self._msix_bar

    def _msix_control_bit(self, bit: int) -> bool:
        cap = self._msix_cap
        if cap is None:
            return False
        high = self._cfg[cap + MSIX_CONTROL + 1]  # both control bits live in the high byte
        return bool(high & (bit >> 8))


def _put(buffer: bytearray, offset: int, size: int, value: int) -> None:
    buffer[offset : offset + size] = value.to_bytes(size, "little")


def _check(offset: int, size: int) -> None:
    if offset < 0 or size < 0 or offset + size > CONFIG_SPACE_SIZE:
        raise ValueError(f"config access {offset:#x}+{size:#x} outside 0..{CONFIG_SPACE_SIZE:#x}")

