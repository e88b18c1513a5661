# SPDX-License-Identifier: BSD-3-Clause
"""Region/BAR routing: which vfio-user region is what, and where each access goes.

Regions 0-5 are the BARs of the BAR plan (platform regions, then the IRQ page),
6 the (absent) ROM, 7 the emulated config space, 8 the (absent) VGA region.
`RegionLayout` is the static half (the plan, sizes, REGION_INFO, the mmap
policy); `BarRouter` serves REGION_READ / REGION_WRITE: a platform BAR to the
backend (its slack past the region reads 0, takes writes and drops them), config
space to the config model, the IRQ page to the IRQ router, and each trapped
access is an input for the IRQ engine.  Acknowledge registers are seen here.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from vfu_platform import vfio_abi
from vfu_platform.backends.base import AckRegister, DeviceBackend
from vfu_platform.bridge.bar_plan import SLACK, BarPlan, RegionSpec, plan_bars
from vfu_platform.bridge.config_space import CONFIG_SPACE_SIZE, ConfigSpace
from vfu_platform.irq import Actions, IrqEngine
from vfu_platform.protocol import messages as m

MmapPolicy = Literal["auto", "never", "always"]

_CONFIG = vfio_abi.PCI_CONFIG_REGION_INDEX
_RW = vfio_abi.REGION_FLAG_READ | vfio_abi.REGION_FLAG_WRITE


@dataclass(slots=True)
class RegionOptions:
    mmap: MmapPolicy = "auto"
    is_64bit: bool = False
    prefetchable: bool = False


class RegionLayout:
    """The BAR plan of a backend's regions, and what REGION_INFO says of each region."""

    def __init__(self, backend: DeviceBackend, options: dict[int, RegionOptions], page_size: int | None,
                 irq_page_size: int) -> None:
        self._backend = backend
        self._options = options
        regions = list(backend.regions())
        #: the backend's regions, in its order (plan region k is `platform_regions[k]`)
        self.platform_regions = regions
        specs = [
            RegionSpec(
                size=r.size,
                name=r.name,
                is_64bit=options.get(r.index, RegionOptions()).is_64bit,
                prefetchable=options.get(r.index, RegionOptions()).prefetchable,
            )
            for r in regions
        ]
        self.plan: BarPlan = plan_bars(specs, page_size=page_size, irq_page=True, irq_page_size=irq_page_size)
        irq_bar = self.plan.irq_bar
        assert irq_bar is not None
        self.irq_bar_index = irq_bar.index
        #: per BAR: the platform region behind it (None: the IRQ page)
        self.bar_region: dict[int, int | None] = {
            bar.index: None if bar.region is None else regions[bar.region].index for bar in self.plan.bars
        }
        #: the hot path: BAR -> (platform region, its real size) for accesses that need no slack handling
        self.direct: dict[int, tuple[int, int]] = {
            bar.index: (regions[bar.region].index, regions[bar.region].size)
            for bar in self.plan.bars
            if bar.region is not None
        }
        self.region_sizes = list(self.plan.region_sizes()) + [0, CONFIG_SPACE_SIZE, 0]

    def region_size(self, index: int) -> int:
        return self.region_sizes[index]

    def region_info(self, index: int) -> tuple[m.RegionInfo, int | None]:
        size = self.region_sizes[index]
        if size == 0:
            return m.RegionInfo(0, 0, index, 0, 0, 0), None
        if index == _CONFIG:
            return m.RegionInfo(0, _RW, index, 0, size, 0), None
        platform_index = self.bar_region.get(index)
        if platform_index is None:  # the IRQ page: always trapped
            return m.RegionInfo(0, _RW, index, 0, size, 0), None
        region = self.platform_regions[platform_index]
        if not self.mmapped(platform_index):
            return m.RegionInfo(0, _RW, index, 0, size, 0), None
        areas = region.sparse_areas or ((0, region.size),)
        caps = (m.SparseMmapCap(tuple(areas)),)
        info = m.RegionInfo(0, _RW | vfio_abi.REGION_FLAG_MMAP, index, 0, size, region.mmap_offset, caps)
        return info, region.mmap_fd

    def mmapped(self, platform_index: int) -> bool:
        """Whether backend region `platform_index` is offered to the client for mmap."""
        region = self.platform_regions[platform_index]
        policy = self._options.get(platform_index, RegionOptions()).mmap
        if policy == "never" or not region.mmappable:
            return False
        if policy == "always":
            return True
        return platform_index not in self._backend.irq_regions and region.size % self.plan.page_size == 0


def group_acks(acks: Sequence[AckRegister], irq_count: int) -> dict[int, list[AckRegister]]:
    """Acknowledge registers by platform region; ValueError for one naming an IRQ the device lacks."""
    by_region: dict[int, list[AckRegister]] = {}
    for ack in acks:
        if ack.irq >= irq_count:
            raise ValueError(f"acknowledge register for IRQ {ack.irq}: the device has {irq_count} IRQs")
        by_region.setdefault(ack.region, []).append(ack)
    return by_region


class BarRouter:
    """REGION_READ / REGION_WRITE of the function, to whoever serves each region.

    Every trapped access is an input for `engine` (`trapped_access`), and
    `apply` carries out the engine's actions; `page_read` / `page_write` serve the IRQ
    page, `config_write` config-space writes; an acknowledge-register write is the
    engine's `ack(line)`.
    """

    def __init__(
        self,
        layout: RegionLayout,
        backend: DeviceBackend,
        config: ConfigSpace,
        acks: dict[int, list[AckRegister]],
        *,
        config_write: Callable[[int, bytes], None],
        page_read: Callable[[int, int], bytes],
        page_write: Callable[[int, bytes], None],
        engine: IrqEngine,
        apply: Callable[[Actions], None],
    ) -> None:
        self._plan = layout.plan
        self._direct = layout.direct
        self._bar_region = layout.bar_region
        self._irq_bar_index = layout.irq_bar_index
        self._backend = backend
        self._config = config
        self._acks_by_region = acks
        self._config_write = config_write
        self._page_read = page_read
        self._page_write = page_write
        self._engine = engine
        self._apply = apply

    def read(self, index: int, offset: int, count: int) -> bytes:
        direct = self._direct.get(index)
        if direct is not None and offset + count <= direct[1]:
            data = self._backend.read(direct[0], offset, count)
        elif index == _CONFIG:
            return self._config.read(offset, count)
        elif index == self._irq_bar_index:
            data = self._page_read(offset, count)
        else:
            data = self._bar_read(index, offset, count)
        actions = self._engine.trapped_access()
        if actions:  # nothing to do is the common case: skip the bookkeeping
            self._apply(actions)
        return data

    def _bar_read(self, index: int, offset: int, count: int) -> bytes:
        span = self._plan.locate(index, offset, count)
        if span is SLACK:
            return bytes(count)
        data = self._backend.read(span.region if span.region is not None else 0, span.offset, span.length)
        return data if span.length == count else data + bytes(count - span.length)

    def write(self, index: int, offset: int, data: bytes) -> None:
        if index == _CONFIG:
            self._config_write(offset, data)
            return
        if index == self._irq_bar_index:
            self._page_write(offset, data)
        else:
            direct = self._direct.get(index)
            if direct is not None and offset + len(data) <= direct[1]:
                self._backend.write(direct[0], offset, data)
                self._check_acks(direct[0], offset, data)
            else:
                span = self._plan.locate(index, offset, len(data))
                if span is not SLACK:
                    platform_index = self._bar_region[index]
                    assert platform_index is not None
                    self._backend.write(platform_index, span.offset, data[: span.length])
                    self._check_acks(platform_index, span.offset, data[: span.length])
        actions = self._engine.trapped_access()
        if actions:
            self._apply(actions)

    def _check_acks(self, region: int, offset: int, data: bytes) -> None:
        acks = self._acks_by_region.get(region)
        if not acks:
            return
        end = offset + len(data)
        for ack in acks:
            if offset <= ack.offset < end:
                value = int.from_bytes(data[ack.offset - offset : ack.offset - offset + 4], "little")
                if value & ack.mask:
                    self._apply(self._engine.ack(ack.irq))


__all__ = ["BarRouter", "MmapPolicy", "RegionLayout", "RegionOptions", "group_acks"]
