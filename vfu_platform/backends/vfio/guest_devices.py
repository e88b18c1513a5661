# SPDX-License-Identifier: BSD-3-Clause
"""The guest devices of a host platform/AMBA device, derived from sysfs and its DT node.

`describe_host_guest_devices(device_path)` reads only sysfs (the device's directory and
the device-tree nodes under /sys/firmware/devicetree/base that its `of_node` links
into), so it runs standalone anywhere, e.g. inside a guest kernel with the device bound
to vfio-amba or vfio-platform, and in tests against fake trees.

How each field is found (docs/guest-descriptor.md):

* BIND: an AMBA device (sysfs bus `amba`) is AMBA, with AMBA_ID from the bus's `id`
  attribute (present whether the device is bound to its driver or to vfio-amba; the
  AMBA bus reads it from the hardware before any driver binds), or the DT's
  `arm,primecell-periphid` when that is 0 or missing.  NAME is the DT node name
  without its unit address ("pl031@9010000" -> "pl031").  A platform device is
  DT_COMPATIBLE; its NAME is the Linux driver name for the first compatible string
  the small table `DRIVER_NAMES` knows, else the first compatible string itself (a
  hint: a guest that can create DT nodes matches on COMPATIBLE and never needs it).
* COMPATIBLE: `of_node/compatible`, in order.
* REGION k: the device's VFIO region k (vfio-platform's regions are its MEM resources,
  the DT `reg` entries, in order); the name from `reg-names`.  Without `num_regions`
  the count comes from `reg` and the parent's #address-cells/#size-cells.
* IRQ k: VFIO IRQ k (the k-th DT interrupt), named from `interrupt-names`; the
  trigger from the `interrupts` cells (or `interrupts-extended`), read with the
  controller's `#interrupt-cells`: the controller is found through `interrupt-parent`
  (on the node or the nearest ancestor), a phandle resolved by searching the tree.
  3 cells (GIC: type, number, flags): the third cell's low 4 bits; 2 cells (number,
  flags): the second's low 4 bits; 1 cell: no trigger.  A missing or unusable trigger
  (0, a combination) falls back to what VFIO says (`irq_flags`: AUTOMASKED = level
  high, else edge rising), and to level high without that.
* PROPERTY: the DT properties in `U32_PROPERTIES` (as u32 arrays) and `FLAG_PROPERTIES`
  (present: a flag); `clock-frequency`, when absent, from the node's first `clocks`
  entry when that is a fixed clock (#clock-cells 0 with its own `clock-frequency`).

A device without an `of_node` (ACPI, or a kernel without DT) has nothing to describe:
the function returns ().  Malformed properties raise `HostDescriptionError`.
"""
from __future__ import annotations

import os
import struct
from collections.abc import Sequence

from vfu_platform import vfio_abi
from vfu_platform.backends.guest import Bind, GuestDevice, GuestIrq, GuestRegion, PropertyValue, Trigger

#: Linux platform driver names of common DT compatibles (for driver_override).
DRIVER_NAMES: dict[str, str] = {
    "snps,dw-apb-uart": "dw-apb-uart",
    "ns16550a": "of_serial",
    "ns16550": "of_serial",
    "ns8250": "of_serial",
    "virtio,mmio": "virtio-mmio",
    "arm,sp805": "sp805-wdt",
    "snps,dw-apb-gpio": "gpio-dwapb",
    "snps,designware-i2c": "i2c_designware",
    "arm,pl330": "dma-pl330",
    "gpio-keys": "gpio-keys",
}

U32_PROPERTIES = ("clock-frequency", "reg-shift", "reg-io-width", "ngpios", "current-speed",
                  "fifo-size", "reg-offset", "timeout-sec")
FLAG_PROPERTIES = ("big-endian", "little-endian", "native-endian", "no-loopback-test",
                   "dcd-override", "dsr-override", "cts-override", "ri-override", "gpio-controller")

_TRIGGERS = {int(t) for t in Trigger}


class HostDescriptionError(ValueError):
    """The device's DT description cannot be read (one line: which property, why)."""


def describe_host_guest_devices(
    device_path: str,
    *,
    num_regions: int | None = None,
    irq_flags: Sequence[int] | None = None,
) -> tuple[GuestDevice, ...]:
    """The guest device for the host device at `device_path` (any of its sysfs paths).

    `num_regions` and `irq_flags` are what VFIO reports (region count, the flags of each
    IRQ index), when the device is open; without them the DT alone decides.
    """
    path = os.path.realpath(device_path)
    node_link = os.path.join(path, "of_node")
    if not os.path.isdir(node_link):
        return ()
    node = os.path.realpath(node_link)
    bus = _bus(path)
    compatible = _strings(node, "compatible")

    count = num_regions if num_regions is not None else _reg_count(node)
    reg_names = _strings(node, "reg-names")
    regions = tuple(GuestRegion(k, name=reg_names[k] if k < len(reg_names) else "") for k in range(count))

    triggers = _dt_triggers(node)
    irq_count = len(irq_flags) if irq_flags is not None else len(triggers)
    irq_names = _strings(node, "interrupt-names")
    irqs = []
    for k in range(irq_count):
        trigger = triggers[k] if k < len(triggers) else None
        if trigger is None:
            level = irq_flags is None or bool(irq_flags[k] & vfio_abi.IRQ_INFO_AUTOMASKED)
            trigger = Trigger.LEVEL_HIGH if level else Trigger.EDGE_RISING
        irqs.append(GuestIrq(k, trigger, irq_names[k] if k < len(irq_names) else ""))

    properties = _properties(node)
    if bus == "amba":
        periphid = _amba_id(path, node)
        stem = os.path.basename(node).partition("@")[0] or os.path.basename(path)
        return (GuestDevice(name=stem, bind=Bind.AMBA, regions=regions, irqs=tuple(irqs), amba_id=periphid,
                            compatible=compatible, properties=properties),)
    if not compatible:
        return ()  # a DT node without compatible: nothing a guest could match
    name = next((DRIVER_NAMES[c] for c in compatible if c in DRIVER_NAMES), compatible[0])
    return (GuestDevice(name=name, bind=Bind.DT_COMPATIBLE, regions=regions, irqs=tuple(irqs),
                        compatible=compatible, properties=properties),)


# ------------------------------------------------------------------ DT reading


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def _strings(node: str, prop: str) -> tuple[str, ...]:
    raw = _read(os.path.join(node, prop))
    if not raw:
        return ()
    return tuple(s.decode("utf-8", "replace") for s in raw.rstrip(b"\0").split(b"\0"))


def _cells(node: str, prop: str) -> tuple[int, ...] | None:
    raw = _read(os.path.join(node, prop))
    if raw is None:
        return None
    if len(raw) % 4:
        raise HostDescriptionError(f"{node}/{prop}: {len(raw)} bytes is not a whole number of 32-bit cells")
    return struct.unpack(f">{len(raw) // 4}I", raw)


def _one_cell(node: str, prop: str) -> int | None:
    cells = _cells(node, prop)
    if cells is None:
        return None
    if len(cells) != 1:
        raise HostDescriptionError(f"{node}/{prop}: {len(cells)} cells, expected 1")
    return cells[0]


def _bus(path: str) -> str:
    link = os.path.join(path, "subsystem")
    return os.path.basename(os.readlink(link)) if os.path.islink(link) else ""


def _dt_root(node: str) -> str:
    """The tree's root: the `devicetree/base` directory the node lives under."""
    probe = node
    while True:
        parent = os.path.dirname(probe)
        if os.path.basename(probe) == "base" and os.path.basename(parent) == "devicetree":
            return probe
        if parent == probe:
            raise HostDescriptionError(f"{node}: not under a devicetree/base directory")
        probe = parent


def _parent(node: str, root: str) -> str | None:
    return None if node == root else os.path.dirname(node)


def _find_phandle(root: str, phandle: int) -> str:
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for prop in ("phandle", "linux,phandle"):
            if prop in files and _one_cell(folder, prop) == phandle:
                return folder
    raise HostDescriptionError(f"no device-tree node has phandle {phandle:#x}")


def _interrupt_parent(node: str, root: str) -> str:
    probe: str | None = node
    while probe is not None:
        phandle = _one_cell(probe, "interrupt-parent")
        if phandle is not None:
            return _find_phandle(root, phandle)
        probe = _parent(probe, root)
    raise HostDescriptionError(f"{node}: interrupts without an interrupt-parent on the node or its ancestors")


def _interrupt_cells(controller: str) -> int:
    value = _one_cell(controller, "#interrupt-cells")
    if value is None or not 1 <= value <= 4:
        raise HostDescriptionError(f"{controller}: #interrupt-cells {value} (expected 1..4)")
    return value


def _trigger(cells: Sequence[int]) -> Trigger | None:
    if len(cells) == 1:
        return None
    flags = cells[2] if len(cells) >= 3 else cells[1]
    kind = flags & 0xF
    return Trigger(kind) if kind in _TRIGGERS else None


def _dt_triggers(node: str) -> list[Trigger | None]:
    """The trigger of each DT interrupt of `node` (None: the DT does not say)."""
    extended = _cells(node, "interrupts-extended")
    plain = _cells(node, "interrupts")
    if extended is None and plain is None:
        return []
    root = _dt_root(node)
    out: list[Trigger | None] = []
    if extended is not None:
        position = 0
        while position < len(extended):
            controller = _find_phandle(root, extended[position])
            n = _interrupt_cells(controller)
            entry = extended[position + 1 : position + 1 + n]
            if len(entry) != n:
                raise HostDescriptionError(f"{node}/interrupts-extended: truncated entry at cell {position}")
            out.append(_trigger(entry))
            position += 1 + n
        return out
    assert plain is not None
    n = _interrupt_cells(_interrupt_parent(node, root))
    if len(plain) % n:
        raise HostDescriptionError(f"{node}/interrupts: {len(plain)} cells is not a multiple of #interrupt-cells {n}")
    return [_trigger(plain[k : k + n]) for k in range(0, len(plain), n)]


def _reg_count(node: str) -> int:
    reg = _cells(node, "reg")
    if not reg:
        return 0
    root = _dt_root(node)
    parent = _parent(node, root) or root
    address = _one_cell(parent, "#address-cells")
    size = _one_cell(parent, "#size-cells")
    per = (2 if address is None else address) + (1 if size is None else size)
    if per == 0 or len(reg) % per:
        raise HostDescriptionError(f"{node}/reg: {len(reg)} cells is not a multiple of {per}")
    return len(reg) // per


def _amba_id(path: str, node: str) -> int:
    raw = _read(os.path.join(path, "id"))
    value = 0
    if raw is not None:
        try:
            value = int(raw.decode().strip(), 16)
        except ValueError:
            raise HostDescriptionError(f"{path}/id: {raw!r} is not a hex peripheral ID") from None
    if value == 0:
        value = _one_cell(node, "arm,primecell-periphid") or 0
    if value == 0:
        raise HostDescriptionError(f"{path}: AMBA device without a peripheral ID (sysfs id or arm,primecell-periphid)")
    return value


def _properties(node: str) -> tuple[tuple[str, PropertyValue], ...]:
    out: list[tuple[str, PropertyValue]] = []
    for prop in U32_PROPERTIES:
        cells = _cells(node, prop)
        if cells:
            out.append((prop, cells))
    if not any(name == "clock-frequency" for name, _ in out):
        rate = _fixed_clock_rate(node)
        if rate is not None:
            out.append(("clock-frequency", rate))
    for prop in FLAG_PROPERTIES:
        if os.path.isfile(os.path.join(node, prop)):
            out.append((prop, True))
    return tuple(out)


def _fixed_clock_rate(node: str) -> int | None:
    clocks = _cells(node, "clocks")
    if not clocks:
        return None
    clock = _find_phandle(_dt_root(node), clocks[0])
    if _one_cell(clock, "#clock-cells") != 0:
        return None
    return _one_cell(clock, "clock-frequency")


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m vfu_platform.backends.vfio.guest_devices /sys/bus/amba/devices/NAME`: print them."""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m vfu_platform.backends.vfio.guest_devices SYSFS_DEVICE_PATH", file=sys.stderr)
        return 2
    try:
        devices = describe_host_guest_devices(args[0])
    except HostDescriptionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for device in devices:
        print(device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
