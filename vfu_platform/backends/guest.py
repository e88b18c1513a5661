# SPDX-License-Identifier: BSD-3-Clause
"""How a guest should instantiate the platform devices a backend carries.

A backend (a simulated model, or a host device read from sysfs) declares one
`GuestDevice` per platform device; the bridge turns them into the guest
descriptor (docs/guest-descriptor.md), mapping backend region and IRQ indices to
BARs, IRQ lines and MSI-X vectors.  The types only describe; they do no I/O.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TypeAlias


class Bind(enum.IntEnum):
    """How the guest binds the stock driver (descriptor BIND kinds)."""

    AMBA = 1            #: AMBA (PrimeCell) device, matched by peripheral ID
    PLATFORM_NAME = 2   #: platform device, matched by name
    DT_COMPATIBLE = 3   #: matched by DT compatible (driver_override where no DT node can be made)


class Trigger(enum.IntEnum):
    """Interrupt trigger type, with Linux's IRQ_TYPE_* / the DT's values."""

    EDGE_RISING = 1
    EDGE_FALLING = 2
    EDGE_BOTH = 3
    LEVEL_HIGH = 4
    LEVEL_LOW = 8

    @property
    def is_level(self) -> bool:
        return self in (Trigger.LEVEL_HIGH, Trigger.LEVEL_LOW)


@dataclass(frozen=True, slots=True)
class GuestRegion:
    """Backend region `region`, from `offset` for `size` bytes (None: to its end)."""

    region: int
    offset: int = 0
    size: int | None = None
    name: str = ""


@dataclass(frozen=True, slots=True)
class GuestIrq:
    """Backend IRQ index `irq` with its trigger type."""

    irq: int
    trigger: Trigger = Trigger.LEVEL_HIGH
    name: str = ""


@dataclass(frozen=True, slots=True)
class U64:
    """A property value sent as u64 (plain ints are u32)."""

    values: tuple[int, ...]


#: int / tuple of ints: u32 array; str / tuple of str: strings; True: a flag; U64: u64 array
PropertyValue: TypeAlias = int | tuple[int, ...] | str | tuple[str, ...] | bool | U64


@dataclass(frozen=True, slots=True)
class GuestDevice:
    """One platform device as the guest should see it."""

    name: str
    bind: Bind
    regions: tuple[GuestRegion, ...]
    irqs: tuple[GuestIrq, ...] = ()
    amba_id: int = 0
    compatible: tuple[str, ...] = ()
    properties: tuple[tuple[str, PropertyValue], ...] = ()
