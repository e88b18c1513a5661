# SPDX-License-Identifier: BSD-3-Clause
"""What a backend declares (`GuestDevice`s) resolved against the bridge's layout.

A backend names its own region and IRQ indices; the guest needs BAR indices, offsets
inside those BARs, IRQ lines and MSI-X vectors (docs/guest-descriptor.md).  This module
does that mapping, refuses bad declarations with one line naming the device, and hands
the records to the codec (`vfu_platform.guest_descriptor`).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

from vfu_platform import guest_descriptor as gd
from vfu_platform.backends.base import IrqInfo, RegionInfo
from vfu_platform.backends.guest import U64, GuestDevice, PropertyValue
from vfu_platform.bridge.bar_plan import BarPlan
from vfu_platform.bridge.irq_page import DESCRIPTOR_OFFSET


def build(
    devices: Sequence[GuestDevice],
    regions: Sequence[RegionInfo],
    irqs: Sequence[IrqInfo],
    plan: BarPlan,
    mmapped: Callable[[int], bool],
    msix: bool,
) -> tuple[tuple[gd.DeviceRecord, ...], bytes, bytes | None]:
    """(records, descriptor bytes, vendor capability bytes) for the bridge; nothing without devices.

    The descriptor lives at `DESCRIPTOR_OFFSET` of the IRQ page BAR, which the
    capability names.  ValueError (one line) for a bad declaration.
    """
    if not devices:
        return (), b"", None
    records = resolve(devices, regions, irqs, plan, mmapped, msix)
    data = encode(records, msix)
    irq_bar = plan.irq_bar
    assert irq_bar is not None
    capability = gd.encode_capability(gd.Capability(irq_bar.index, DESCRIPTOR_OFFSET, len(data)))
    return records, data, capability


def resolve(
    devices: Sequence[GuestDevice],
    regions: Sequence[RegionInfo],
    irqs: Sequence[IrqInfo],
    plan: BarPlan,
    mmapped: Callable[[int], bool],
    msix: bool,
) -> tuple[gd.DeviceRecord, ...]:
    """The descriptor records for `devices`; ValueError (one line) for a bad declaration.

    `regions`/`irqs` are the backend's, in its order (region k of the plan is
    `regions[k]`; IRQ line k is `irqs[k]`); `mmapped(index)` says whether the bridge
    mmaps backend region `index`.
    """
    position = {r.index: number for number, r in enumerate(regions)}
    lines = {q.index: number for number, q in enumerate(irqs)}
    records = []
    for device in devices:
        where = f"guest device {device.name!r}"
        out_regions = []
        for g in device.regions:
            number = position.get(g.region)
            if number is None:
                raise ValueError(f"{where}: region {g.region} does not exist (the device has {len(regions)} regions)")
            region = regions[number]
            size = region.size - g.offset if g.size is None else g.size
            if g.offset < 0 or size <= 0 or g.offset + size > region.size:
                raise ValueError(f"{where}: region {g.region} range offset {g.offset:#x} size {size:#x} "
                                 f"does not fit the region's {region.size:#x} bytes")
            bar = plan.bar_for_region(number)
            if bar is None:
                raise ValueError(f"{where}: region {g.region} is empty and has no BAR")
            flags = gd.REGION_MMAPPED if mmapped(region.index) else gd.REGION_TRAPPED
            out_regions.append(gd.RegionRecord(bar.index, g.offset, size, flags, g.name))
        out_irqs = []
        for q in device.irqs:
            line = lines.get(q.irq)
            if line is None:
                raise ValueError(f"{where}: IRQ {q.irq} does not exist (the device has {len(irqs)} IRQs)")
            out_irqs.append(gd.IrqRecord(line, line if msix else gd.NO_VECTOR, int(q.trigger), q.name))
        properties = []
        for name, value in device.properties:
            prop = _property(name, value, where)
            if prop is not None:
                properties.append(prop)
        records.append(gd.DeviceRecord(
            name=device.name,
            bind=int(device.bind),
            regions=tuple(out_regions),
            irqs=tuple(out_irqs),
            amba_id=device.amba_id if device.bind == gd.BIND_AMBA or device.amba_id else None,
            compatible=tuple(device.compatible),
            properties=tuple(properties),
        ))
    return tuple(records)


def encode(records: Sequence[gd.DeviceRecord], msix: bool) -> bytes:
    """The descriptor bytes; ValueError (DescriptorError) when they do not fit."""
    return gd.encode(tuple(records), gd.IRQ_MODE_MSIX if msix else gd.IRQ_MODE_INTX)


def _property(name: str, value: PropertyValue, where: str) -> gd.PropertyRecord | None:
    """A declared value as its descriptor type (see `vfu_platform.backends.guest.PropertyValue`)."""
    if isinstance(value, bool):
        return gd.PropertyRecord(name, gd.PROP_FLAG, True) if value else None
    if isinstance(value, int):
        return gd.PropertyRecord(name, gd.PROP_U32, (value,))
    if isinstance(value, str):
        return gd.PropertyRecord(name, gd.PROP_STRINGS, (value,))
    if isinstance(value, U64):
        return gd.PropertyRecord(name, gd.PROP_U64, tuple(value.values))
    if isinstance(value, tuple) and value:
        if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return gd.PropertyRecord(name, gd.PROP_U32, value)
        if all(isinstance(v, str) for v in value):
            return gd.PropertyRecord(name, gd.PROP_STRINGS, value)
    raise ValueError(f"{where}: property {name!r} = {value!r} is not an int, str, bool, U64 or a tuple of one kind")
