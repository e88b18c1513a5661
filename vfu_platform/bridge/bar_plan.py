# SPDX-License-Identifier: BSD-3-Clause
"""Which platform region goes into which PCI BAR, and how big each BAR is.

A PCI function has six BAR slots; a 64-bit BAR uses two (its upper slot reports size 0).
QEMU asserts that a BAR's size is a power of two and aborts otherwise, and a BAR meant to
be mmapped must cover whole host pages (arm64 hosts may use 64 KiB pages), so:

    BAR size = max(next power of two >= region size, host page size)

The bytes of a BAR past the end of its region ("slack") read as zero and drop writes.

Platform regions take BARs in region order from BAR0; the server-emulated IRQ page (MSI-X
table, PBA, IRQ status registers: `IRQ_PAGE_SIZE` bytes, or `IRQ_PAGE_WITH_DESCRIPTOR`
when it also carries the guest descriptor at 0x1000) takes the next free slot.

Zero-sized platform regions get no BAR and use no slot: a PCI BAR of size 0 is "absent",
so such a region could never be reached by the guest anyway, and skipping it leaves the
slot to a region that can.  Their BAR is reported as None by `BarPlan.bar_for_region`;
as a result region k is not always BAR k, which is why every `Bar` names its region.
"""
from __future__ import annotations

import dataclasses
import mmap
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

#: Number of BAR slots in a type-0 header.
BAR_SLOTS: Final = 6
#: Bytes of the server-emulated IRQ page that carry registers (MSI-X table, PBA, status).
IRQ_PAGE_SIZE: Final = 0x1000
#: The IRQ page when it also holds the guest descriptor (docs/guest-descriptor.md) from 0x1000.
IRQ_PAGE_WITH_DESCRIPTOR: Final = 0x2000
#: A 32-bit memory BAR can decode at most 2 GiB; larger regions get a 64-bit BAR.
MAX_32BIT_BAR: Final = 1 << 31
#: The largest BAR a 64-bit register can describe.
MAX_64BIT_BAR: Final = 1 << 63
#: PCI: memory BARs are at least 16 bytes (the low nibble holds the type bits).
MIN_BAR: Final = 16
#: vfio-user page sizes below 4 KiB are refused by QEMU; no host has smaller pages.
MIN_PAGE_SIZE: Final = 0x1000


class BarPlanError(ValueError):
    """The regions cannot be laid out as BARs (the message is one line, for the user)."""


@dataclass(frozen=True, slots=True)
class RegionSpec:
    """A platform MMIO region as the planner needs to see it."""

    size: int
    name: str = ""
    is_64bit: bool = False  # force a 64-bit BAR (regions > 2 GiB get one regardless)
    prefetchable: bool = False  # no read side effects (plain memory)


@dataclass(frozen=True, slots=True)
class Bar:
    """One memory BAR.

    `region` is the platform region index it exposes, or None for the IRQ page.
    `region_size` is how many leading bytes of the BAR that region backs (None: all of
    it); the rest is slack.
    """

    index: int
    size: int
    region: int | None
    is_64bit: bool
    prefetchable: bool
    region_size: int | None = None
    name: str = ""

    @property
    def backed_size(self) -> int:
        """Bytes at the start of the BAR that reach the region; the rest is slack."""
        return self.size if self.region_size is None else self.region_size

    @property
    def slots(self) -> int:
        return 2 if self.is_64bit else 1


@dataclass(frozen=True, slots=True)
class RegionSpan:
    """The part of a BAR access that reaches its region.

    `length` may be shorter than the access: the remaining bytes fall in the slack
    (reads give zero, writes are dropped).
    """

    region: int | None  # platform region index; None = the IRQ page
    offset: int  # offset inside the region
    length: int


@dataclass(frozen=True, slots=True)
class Slack:
    """An access wholly past the end of the BAR's region: reads zero, writes ignored."""


SLACK: Final = Slack()


@dataclass(frozen=True, slots=True)
class BarPlan:
    """The BAR layout of the PCI function; validated on construction."""

    bars: tuple[Bar, ...]
    page_size: int = MIN_PAGE_SIZE

    def __post_init__(self) -> None:
        used: set[int] = set()
        regions: set[int] = set()
        for bar in self.bars:
            slots = range(bar.index, bar.index + bar.slots)
            if bar.index < 0 or slots.stop > BAR_SLOTS:
                raise BarPlanError(f"BAR{bar.index}: slots {slots.start}..{slots.stop - 1} out of 0..{BAR_SLOTS - 1}")
            if used.intersection(slots):
                raise BarPlanError(f"BAR{bar.index}: slot already in use")
            used.update(slots)
            if not _is_power_of_two(bar.size) or bar.size < MIN_BAR:
                raise BarPlanError(f"BAR{bar.index}: size {bar.size:#x} is not a power of two >= {MIN_BAR}")
            width = 64 if bar.is_64bit else 32
            if bar.size > (MAX_64BIT_BAR if bar.is_64bit else MAX_32BIT_BAR):
                raise BarPlanError(f"BAR{bar.index}: size {bar.size:#x} too large for a {width}-bit BAR")
            if bar.region_size is not None and not 0 <= bar.region_size <= bar.size:
                raise BarPlanError(f"BAR{bar.index}: region size {bar.region_size:#x} outside the BAR")
            if bar.region is not None:
                if bar.region in regions:
                    raise BarPlanError(f"region {bar.region} is in two BARs")
                regions.add(bar.region)
        if sum(bar.region is None for bar in self.bars) > 1:
            raise BarPlanError("more than one IRQ page BAR")

    def bar(self, index: int) -> Bar | None:
        """The BAR whose register is at slot `index`; None for absent slots and upper halves."""
        for bar in self.bars:
            if bar.index == index:
                return bar
        return None

    def is_upper_half(self, index: int) -> bool:
        """True if slot `index` holds the high dword of a 64-bit BAR."""
        return any(bar.is_64bit and bar.index + 1 == index for bar in self.bars)

    @property
    def irq_bar(self) -> Bar | None:
        """The IRQ page's BAR, if the plan has one."""
        for bar in self.bars:
            if bar.region is None:
                return bar
        return None

    def bar_for_region(self, region: int) -> Bar | None:
        """The BAR exposing platform region `region`; None if it has none (zero-sized)."""
        for bar in self.bars:
            if bar.region == region:
                return bar
        return None

    def region_sizes(self) -> tuple[int, ...]:
        """vfio-user region sizes of regions 0-5: the BAR size, 0 for absent slots and upper halves."""
        sizes = [0] * BAR_SLOTS
        for bar in self.bars:
            sizes[bar.index] = bar.size
        return tuple(sizes)

    def locate(self, bar_index: int, offset: int, size: int = 1) -> RegionSpan | Slack:
        """Where an access of `size` bytes at `offset` in BAR `bar_index` lands.

        Raises ValueError if the BAR is absent or the access leaves it (the server
        bounds-checks against the region size first, so this is a programming error).
        """
        bar = self.bar(bar_index)
        if bar is None:
            raise ValueError(f"BAR{bar_index} is not a BAR of this plan")
        if offset < 0 or size < 0 or offset + size > bar.size:
            raise ValueError(f"access {offset:#x}+{size:#x} outside BAR{bar_index} (size {bar.size:#x})")
        backed = bar.backed_size
        if offset >= backed:
            return SLACK
        return RegionSpan(bar.region, offset, min(size, backed - offset))


def bar_size(region_size: int, page_size: int = MIN_PAGE_SIZE) -> int:
    """The BAR size for a region: next power of two >= the region size and >= the page size."""
    if region_size < 0:
        raise ValueError(f"negative region size {region_size}")
    return max(1 << max(region_size - 1, 0).bit_length(), page_size)


def plan_bars(
    regions: Sequence[RegionSpec],
    *,
    page_size: int | None = None,
    irq_page: bool = True,
    irq_page_64bit: bool = False,
    irq_page_size: int = IRQ_PAGE_SIZE,
) -> BarPlan:
    """Lay out `regions` (in order) and, if wanted, the IRQ page (`irq_page_size` bytes) as BARs.

    `page_size` defaults to this host's (`mmap.PAGESIZE`).  Raises `BarPlanError` when
    the regions do not fit in six BAR slots or a region is too large for any BAR.
    """
    if page_size is None:
        page_size = mmap.PAGESIZE
    if not _is_power_of_two(page_size) or page_size < MIN_PAGE_SIZE:
        raise BarPlanError(f"page size {page_size:#x} is not a power of two >= {MIN_PAGE_SIZE:#x}")

    wanted: list[Bar] = []  # index 0 for now: slots are assigned once they are known to fit
    for number, spec in enumerate(regions):
        label = f"region {number} ({spec.name or 'unnamed'})"
        if spec.size < 0:
            raise BarPlanError(f"{label}: negative size {spec.size}")
        if spec.size == 0:
            continue
        size = bar_size(spec.size, page_size)
        if size > MAX_64BIT_BAR:
            raise BarPlanError(f"{label}: size {spec.size:#x} exceeds the largest BAR")
        is_64bit = spec.is_64bit or size > MAX_32BIT_BAR
        wanted.append(Bar(0, size, number, is_64bit, spec.prefetchable, spec.size, spec.name))
    if irq_page:
        if irq_page_size not in (IRQ_PAGE_SIZE, IRQ_PAGE_WITH_DESCRIPTOR):
            raise BarPlanError(f"IRQ page size {irq_page_size:#x} is not {IRQ_PAGE_SIZE:#x} or "
                               f"{IRQ_PAGE_WITH_DESCRIPTOR:#x}")
        size = bar_size(irq_page_size, page_size)
        wanted.append(Bar(0, size, None, irq_page_64bit, False, irq_page_size, "irq-page"))

    needed = sum(bar.slots for bar in wanted)
    if needed > BAR_SLOTS:
        platform = len(wanted) - irq_page
        what = f"{platform} platform region{'s' if platform != 1 else ''}"
        if irq_page:
            what += " plus the IRQ page"
        raise BarPlanError(f"{what} need {needed} BAR slots (a 64-bit BAR takes 2), but a PCI function has {BAR_SLOTS}")

    bars: list[Bar] = []
    index = 0
    for bar in wanted:
        bars.append(dataclasses.replace(bar, index=index))
        index += bar.slots
    return BarPlan(tuple(bars), page_size)


def _is_power_of_two(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0
