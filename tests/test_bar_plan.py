# SPDX-License-Identifier: BSD-3-Clause
"""BAR planning: sizes, slot assignment, the slot limit and the (BAR, offset) map."""
from __future__ import annotations

import mmap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vfu_platform.bridge.bar_plan import (
    BAR_SLOTS,
    IRQ_PAGE_SIZE,
    IRQ_PAGE_WITH_DESCRIPTOR,
    SLACK,
    Bar,
    BarPlan,
    BarPlanError,
    RegionSpan,
    RegionSpec,
    bar_size,
    plan_bars,
)

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB


@pytest.mark.parametrize(
    ("region", "page", "expected"),
    [
        (1 * MIB, 4 * KIB, 1 * MIB),
        (0x200, 4 * KIB, 4 * KIB),
        (5000, 4 * KIB, 8 * KIB),
        (4 * KIB, 4 * KIB, 4 * KIB),
        (4 * KIB + 1, 4 * KIB, 8 * KIB),
        (1, 4 * KIB, 4 * KIB),
        (0x200, 64 * KIB, 64 * KIB),
        (5000, 64 * KIB, 64 * KIB),
        (1 * MIB, 64 * KIB, 1 * MIB),
        (64 * KIB + 1, 64 * KIB, 128 * KIB),
    ],
)
def test_bar_size(region: int, page: int, expected: int) -> None:
    assert bar_size(region, page) == expected
    plan = plan_bars([RegionSpec(region)], page_size=page, irq_page=False)
    assert plan.bars[0].size == expected
    assert plan.bars[0].region_size == region


def test_default_page_size_is_the_hosts() -> None:
    plan = plan_bars([RegionSpec(0x200)])
    assert plan.page_size == mmap.PAGESIZE
    assert plan.bars[0].size == max(mmap.PAGESIZE, 0x200)


def test_irq_page_follows_the_regions() -> None:
    plan = plan_bars([RegionSpec(1 * MIB, "regs"), RegionSpec(0x200, "sram")], page_size=4 * KIB)
    assert plan.bars == (
        Bar(0, 1 * MIB, 0, False, False, 1 * MIB, "regs"),
        Bar(1, 4 * KIB, 1, False, False, 0x200, "sram"),
        Bar(2, 4 * KIB, None, False, False, IRQ_PAGE_SIZE, "irq-page"),
    )
    assert plan.irq_bar == plan.bars[2]
    assert plan.region_sizes() == (1 * MIB, 4 * KIB, 4 * KIB, 0, 0, 0)


def test_irq_page_on_a_64k_host_is_one_page_with_slack() -> None:
    plan = plan_bars([], page_size=64 * KIB)
    (irq,) = plan.bars
    assert (irq.index, irq.size, irq.backed_size) == (0, 64 * KIB, IRQ_PAGE_SIZE)
    assert plan.locate(0, IRQ_PAGE_SIZE - 4, 4) == RegionSpan(None, IRQ_PAGE_SIZE - 4, 4)
    assert plan.locate(0, IRQ_PAGE_SIZE, 4) is SLACK


def test_irq_page_with_a_guest_descriptor_is_8k() -> None:
    plan = plan_bars([RegionSpec(0x1000, "regs")], page_size=4 * KIB, irq_page_size=IRQ_PAGE_WITH_DESCRIPTOR)
    irq = plan.irq_bar
    assert irq is not None and (irq.index, irq.size, irq.backed_size) == (1, 8 * KIB, 8 * KIB)
    assert plan.locate(1, 0x1FFC, 4) == RegionSpan(None, 0x1FFC, 4)
    big = plan_bars([], page_size=64 * KIB, irq_page_size=IRQ_PAGE_WITH_DESCRIPTOR)
    (irq,) = big.bars
    assert (irq.size, irq.backed_size) == (64 * KIB, 8 * KIB)
    assert big.locate(0, 8 * KIB, 4) is SLACK


def test_irq_page_size_is_one_of_the_two() -> None:
    with pytest.raises(BarPlanError, match="IRQ page size"):
        plan_bars([], page_size=4 * KIB, irq_page_size=0x3000)


def test_64bit_bars_take_two_slots() -> None:
    plan = plan_bars(
        [RegionSpec(8 * KIB, is_64bit=True, prefetchable=True), RegionSpec(4 * KIB), RegionSpec(4 * KIB, is_64bit=True)],
        page_size=4 * KIB,
        irq_page_64bit=False,
    )
    assert [(b.index, b.region, b.is_64bit, b.prefetchable) for b in plan.bars] == [
        (0, 0, True, True),
        (2, 1, False, False),
        (3, 2, True, False),
        (5, None, False, False),
    ]
    assert plan.region_sizes() == (8 * KIB, 0, 4 * KIB, 4 * KIB, 0, 4 * KIB)
    assert plan.bar(1) is None and plan.is_upper_half(1)
    assert plan.bar(4) is None and plan.is_upper_half(4)
    assert not plan.is_upper_half(2)


def test_regions_over_2gib_get_a_64bit_bar() -> None:
    plan = plan_bars([RegionSpec(2 * GIB), RegionSpec(2 * GIB + 1)], page_size=4 * KIB, irq_page=False)
    assert [(b.index, b.size, b.is_64bit) for b in plan.bars] == [(0, 2 * GIB, False), (1, 4 * GIB, True)]


def test_zero_sized_regions_take_no_slot() -> None:
    plan = plan_bars([RegionSpec(0, "empty"), RegionSpec(0x100, "regs")], page_size=4 * KIB)
    assert [(b.index, b.region) for b in plan.bars] == [(0, 1), (1, None)]
    assert plan.bar_for_region(0) is None
    assert plan.bar_for_region(1) == plan.bars[0]
    # Six regions fit with the IRQ page when one of them is empty.
    plan = plan_bars([RegionSpec(0x100)] * 5 + [RegionSpec(0)], page_size=4 * KIB)
    assert len(plan.bars) == 6


def test_six_slots_fit_exactly() -> None:
    assert len(plan_bars([RegionSpec(0x100)] * 5, page_size=4 * KIB).bars) == 6
    assert len(plan_bars([RegionSpec(0x100)] * 6, page_size=4 * KIB, irq_page=False).bars) == 6
    plan = plan_bars([RegionSpec(0x100, is_64bit=True)] * 2, page_size=4 * KIB, irq_page_64bit=True)
    assert [b.index for b in plan.bars] == [0, 2, 4]


@pytest.mark.parametrize(
    ("regions", "irq_page", "message"),
    [
        (
            [RegionSpec(0x100)] * 6,
            True,
            "6 platform regions plus the IRQ page need 7 BAR slots (a 64-bit BAR takes 2), but a PCI function has 6",
        ),
        (
            [RegionSpec(0x100)] * 7,
            False,
            "7 platform regions need 7 BAR slots (a 64-bit BAR takes 2), but a PCI function has 6",
        ),
        (
            [RegionSpec(0x100, is_64bit=True)] * 3,
            True,
            "3 platform regions plus the IRQ page need 7 BAR slots (a 64-bit BAR takes 2), but a PCI function has 6",
        ),
    ],
)
def test_too_many_regions(regions: list[RegionSpec], irq_page: bool, message: str) -> None:
    with pytest.raises(BarPlanError) as caught:
        plan_bars(regions, page_size=4 * KIB, irq_page=irq_page)
    assert str(caught.value) == message
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("page", [0, 1, 2048, 4097, 3 * 4096, -4096])
def test_bad_page_size(page: int) -> None:
    with pytest.raises(BarPlanError):
        plan_bars([RegionSpec(1)], page_size=page)


def test_bad_region_sizes() -> None:
    with pytest.raises(BarPlanError):
        plan_bars([RegionSpec(-1)], page_size=4 * KIB)
    with pytest.raises(BarPlanError):
        plan_bars([RegionSpec((1 << 63) + 1)], page_size=4 * KIB)


def test_locate() -> None:
    plan = plan_bars([RegionSpec(5000), RegionSpec(4 * KIB)], page_size=4 * KIB)
    assert plan.locate(0, 0, 4) == RegionSpan(0, 0, 4)
    assert plan.locate(0, 4996, 4) == RegionSpan(0, 4996, 4)
    assert plan.locate(0, 4998, 4) == RegionSpan(0, 4998, 2)  # tail falls in the slack
    assert plan.locate(0, 5000, 4) is SLACK
    assert plan.locate(0, 8 * KIB - 8, 8) is SLACK
    assert plan.locate(1, 4 * KIB - 1) == RegionSpan(1, 4 * KIB - 1, 1)
    assert plan.locate(2, 0x800, 8) == RegionSpan(None, 0x800, 8)
    assert plan.locate(0, 8 * KIB, 0) is SLACK


@pytest.mark.parametrize(("bar", "offset", "size"), [(0, 8 * KIB - 2, 4), (0, -1, 1), (3, 0, 1), (6, 0, 1), (0, 0, -1)])
def test_locate_rejects_accesses_outside_bars(bar: int, offset: int, size: int) -> None:
    plan = plan_bars([RegionSpec(5000), RegionSpec(4 * KIB)], page_size=4 * KIB)
    with pytest.raises(ValueError):
        plan.locate(bar, offset, size)


@pytest.mark.parametrize(
    "bars",
    [
        (Bar(0, 4096, 0, True, False), Bar(1, 4096, 1, False, False)),  # upper half reused
        (Bar(5, 4096, 0, True, False),),  # 64-bit in the last slot
        (Bar(0, 3000, 0, False, False),),  # not a power of two
        (Bar(0, 8, 0, False, False),),  # below 16 bytes
        (Bar(0, 4 * GIB, 0, False, False),),  # too big for 32 bits
        (Bar(0, 4096, 0, False, False, 4097),),  # region larger than the BAR
        (Bar(0, 4096, 0, False, False), Bar(1, 4096, 0, False, False)),  # region twice
        (Bar(0, 4096, None, False, False), Bar(1, 4096, None, False, False)),  # two IRQ pages
    ],
)
def test_plan_validation(bars: tuple[Bar, ...]) -> None:
    with pytest.raises(BarPlanError):
        BarPlan(bars)


region_specs = st.builds(
    RegionSpec,
    size=st.integers(0, 1 << 34),
    is_64bit=st.booleans(),
    prefetchable=st.booleans(),
)


@settings(max_examples=200, deadline=None)
@given(
    regions=st.lists(region_specs, max_size=7),
    page=st.sampled_from([4 * KIB, 16 * KIB, 64 * KIB]),
    irq_page=st.booleans(),
)
def test_plan_properties(regions: list[RegionSpec], page: int, irq_page: bool) -> None:
    try:
        plan = plan_bars(regions, page_size=page, irq_page=irq_page)
    except BarPlanError:
        needed = sum(
            2 if (r.is_64bit or bar_size(r.size, page) > 1 << 31) else 1 for r in regions if r.size
        ) + int(irq_page)
        assert needed > BAR_SLOTS
        return
    platform = [b for b in plan.bars if b.region is not None]
    assert [b.region for b in platform] == [i for i, r in enumerate(regions) if r.size]
    assert [b.index for b in plan.bars] == sorted(b.index for b in plan.bars)
    if irq_page:
        assert plan.bars[-1].region is None
    next_free = 0
    for bar in plan.bars:
        assert bar.index == next_free  # packed: no holes
        next_free += bar.slots
        assert bar.size & (bar.size - 1) == 0
        assert bar.size >= page and bar.size >= bar.backed_size
        if bar.region is not None:
            spec = regions[bar.region]
            assert bar.backed_size == spec.size and bar.size < 2 * max(spec.size, page)
            assert bar.prefetchable == spec.prefetchable
            assert bar.is_64bit == (spec.is_64bit or bar.size > 1 << 31)
    sizes = plan.region_sizes()
    assert len(sizes) == BAR_SLOTS
    for index in range(BAR_SLOTS):
        bar = plan.bar(index)
        assert sizes[index] == (bar.size if bar else 0)
