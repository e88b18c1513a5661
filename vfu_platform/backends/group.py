# SPDX-License-Identifier: BSD-3-Clause
"""A device group: several platform devices behind one bridge function.

`DeviceGroup` is a composite backend.  It concatenates its members' regions and IRQs
in member order (member 0's regions first, then member 1's, ...; the same for IRQs),
so each member keeps its own BARs, and its IRQs share INTx under the engine's
one-active/FIFO rule or get one MSI-X vector each.  Everything indexed is remapped:
acknowledge registers, `irq_regions` and each member's `guest_devices()`.  Region
and IRQ operations, reset, attach and close are forwarded to the owning member(s).

Members are named by *labels* for options, traces, status and control commands: the
model name ("pl031"; for "package.module:Class" the class name), and, when a name
occurs more than once, "name#k" (k counting from 0 among the members of that name:
"gpio#0", "gpio#1").  Labels never contain a ".", so a per-member option is written
"LABEL.KEY=VALUE" (`-o pl061.ngpios=8`).
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

from vfu_platform import vfio_abi
from vfu_platform.backends.base import (
    AckRegister,
    DeviceBackend,
    DeviceContext,
    IrqInfo,
    RegionInfo,
    route_control,
)
from vfu_platform.backends.guest import GuestDevice


def member_labels(models: Sequence[str]) -> tuple[str, ...]:
    """The label of each member model (see the module docstring)."""
    stems = [model.rpartition(":")[2] if ":" in model else model for model in models]
    for stem, model in zip(stems, models):
        if not stem or "." in stem or "#" in stem:
            raise ValueError(f"device group: cannot name member {model!r} (its name must not contain '.' or '#')")
    total = Counter(stems)
    seen: Counter[str] = Counter()
    labels = []
    for stem in stems:
        labels.append(f"{stem}#{seen[stem]}" if total[stem] > 1 else stem)
        seen[stem] += 1
    return tuple(labels)


def split_member_options(labels: Sequence[str], options: Mapping[str, object]) -> list[dict[str, object]]:
    """Per-member option dicts from "LABEL.KEY" keys (command line) or {LABEL: {KEY: VALUE}} (TOML).

    ValueError (one line) for an option that names no member or no member at all.
    """
    per_member: list[dict[str, object]] = [{} for _ in labels]
    index = {label: number for number, label in enumerate(labels)}
    for key, value in options.items():
        if isinstance(value, Mapping):
            items = [(f"{key}.{inner}", inner_value) for inner, inner_value in value.items()]
        else:
            items = [(key, value)]
        for full, item in items:
            label, dot, option = full.partition(".")
            if not dot or not option:
                raise ValueError(f"device group option {full!r}: name the member as LABEL.KEY "
                                 f"(members: {', '.join(labels)})")
            if label not in index:
                raise ValueError(f"device group option {full!r}: no member {label!r} (members: {', '.join(labels)})")
            per_member[index[label]][option] = item
    return per_member


class DeviceGroup(DeviceBackend):
    """Members' regions and IRQs, concatenated; see the module docstring."""

    def __init__(self, members: Sequence[DeviceBackend], labels: Sequence[str] | None = None) -> None:
        if not members:
            raise ValueError("a device group needs at least one member")
        self.members: tuple[DeviceBackend, ...] = tuple(members)
        self.labels: tuple[str, ...] = tuple(labels) if labels is not None else member_labels(
            [m.name or type(m).__name__ for m in members])
        if len(self.labels) != len(self.members) or len(set(self.labels)) != len(self.labels):
            raise ValueError(f"device group: labels {self.labels} must be unique, one per member")
        self.name = "+".join(self.labels)
        flags = vfio_abi.DEVICE_FLAGS_PLATFORM
        if all(m.device_flags & vfio_abi.DEVICE_FLAGS_RESET for m in members):
            flags |= vfio_abi.DEVICE_FLAGS_RESET
        self.device_flags = flags
        self.compatible = ()
        self.control_names = ()

        regions: list[RegionInfo] = []
        irqs: list[IrqInfo] = []
        #: group region index -> (member number, member region index); the same for IRQs
        self._region_owner: list[tuple[int, int]] = []
        self._irq_owner: list[tuple[int, int]] = []
        self._region_map: list[dict[int, int]] = []  # per member: member index -> group index
        self._irq_map: list[dict[int, int]] = []
        for number, (member, label) in enumerate(zip(self.members, self.labels)):
            region_map: dict[int, int] = {}
            for r in member.regions():
                region_map[r.index] = len(regions)
                self._region_owner.append((number, r.index))
                regions.append(replace(r, index=len(regions), name=f"{label}.{r.name}" if r.name else label))
            irq_map: dict[int, int] = {}
            for q in member.irqs():
                irq_map[q.index] = len(irqs)
                self._irq_owner.append((number, q.index))
                irqs.append(replace(q, index=len(irqs), name=f"{label}.{q.name}" if q.name else label))
            self._region_map.append(region_map)
            self._irq_map.append(irq_map)
        self._regions = tuple(regions)
        self._irqs = tuple(irqs)
        self.ack_registers = tuple(
            AckRegister(self._irq(n, a.irq, "acknowledge register"), self._region(n, a.region, "acknowledge register"),
                        a.offset, a.mask)
            for n, member in enumerate(self.members) for a in member.ack_registers
        )
        self.irq_regions = frozenset(
            self._region(n, r, "irq_regions") for n, member in enumerate(self.members) for r in member.irq_regions
        )

    # ---- index mapping --------------------------------------------------------
    def _region(self, member: int, index: int, what: str) -> int:
        try:
            return self._region_map[member][index]
        except KeyError:
            raise ValueError(f"device group member {self.labels[member]!r}: {what} names region {index}, "
                             f"which it does not have") from None

    def _irq(self, member: int, index: int, what: str) -> int:
        try:
            return self._irq_map[member][index]
        except KeyError:
            raise ValueError(f"device group member {self.labels[member]!r}: {what} names IRQ {index}, "
                             f"which it does not have") from None

    def region_owner(self, region: int) -> tuple[str, int]:
        """(member label, member region index) of group region `region`."""
        number, index = self._region_owner[region]
        return self.labels[number], index

    def irq_owner(self, irq: int) -> tuple[str, int]:
        """(member label, member IRQ index) of group IRQ (platform line) `irq`."""
        number, index = self._irq_owner[irq]
        return self.labels[number], index

    # ---- DeviceBackend --------------------------------------------------------
    def regions(self) -> Sequence[RegionInfo]:
        return self._regions

    def irqs(self) -> Sequence[IrqInfo]:
        return self._irqs

    def read(self, region: int, offset: int, size: int) -> bytes:
        number, index = self._region_owner[region]
        return self.members[number].read(index, offset, size)

    def write(self, region: int, offset: int, data: bytes) -> None:
        number, index = self._region_owner[region]
        self.members[number].write(index, offset, data)

    def _irq_call(self, irq: int) -> tuple[DeviceBackend, int]:
        number, index = self._irq_owner[irq]
        return self.members[number], index

    def set_irq_trigger(self, irq: int, eventfd: int | None) -> None:
        member, index = self._irq_call(irq)
        member.set_irq_trigger(index, eventfd)

    def mask_irq(self, irq: int) -> None:
        member, index = self._irq_call(irq)
        member.mask_irq(index)

    def unmask_irq(self, irq: int) -> None:
        member, index = self._irq_call(irq)
        member.unmask_irq(index)

    def trigger_irq(self, irq: int) -> None:
        """Software-trigger a group IRQ on its member (for members that support it)."""
        member, index = self._irq_call(irq)
        trigger: Callable[[int], None] | None = getattr(member, "trigger_irq", None) or getattr(
            member, "signal_irq", None)
        if trigger is None:
            raise ValueError(f"device group member {self.labels[self._irq_owner[irq][0]]!r} cannot trigger IRQs")
        trigger(index)

    def reset(self) -> None:
        for member in self.members:
            member.reset()

    def attach(self, context: DeviceContext | None) -> None:
        for member in self.members:
            member.attach(context)

    def close(self) -> None:
        for member in self.members:
            member.close()

    def guest_devices(self) -> tuple[GuestDevice, ...]:
        out: list[GuestDevice] = []
        for number, member in enumerate(self.members):
            for device in member.guest_devices():
                what = f"guest device {device.name!r}"
                out.append(replace(
                    device,
                    regions=tuple(replace(g, region=self._region(number, g.region, what)) for g in device.regions),
                    irqs=tuple(replace(q, irq=self._irq(number, q.irq, what)) for q in device.irqs),
                ))
        return tuple(out)

    def control(self, words: list[str]) -> str:
        """A control command for one member: its label (or name) first."""
        if words:
            for label, member in zip(self.labels, self.members):
                if words[0] == label:
                    return member.control(words[1:])
        return route_control(self.members, words)


def create_group(
    models: Sequence[str],
    options: Mapping[str, object],
    create: Callable[[str, Mapping[str, object]], DeviceBackend],
) -> DeviceGroup:
    """Build the members with `create(model, options)` and group them; closes them on failure."""
    labels = member_labels(models)
    per_member = split_member_options(labels, options)
    built: list[DeviceBackend] = []
    try:
        for model, label, member_options in zip(models, labels, per_member):
            try:
                built.append(create(model, member_options))
            except ValueError as exc:
                raise ValueError(f"device group member {label!r}: {exc}") from None
        return DeviceGroup(built, labels)
    except BaseException:
        for member in built:
            member.close()
        raise
