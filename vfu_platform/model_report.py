# SPDX-License-Identifier: BSD-3-Clause
"""What a simulated device model is: `vfu-platform models --json` and `inspect --device MODEL`.

A model is described from a real instance built with its default options (or
the given ones): its PCI identity, regions, IRQ lines and constructor options.
An option's help is the model class's `option_help` mapping (name -> one line),
when the class has one.  The plan is `inspect_report.bridge_plan` over the
same regions and IRQs, so `inspect --device` prints the BARs that `serve
--device` would present, exactly as `inspect HOST` does for a host device.
"""
from __future__ import annotations

import inspect as _inspect
from collections.abc import Sequence

import msgspec

from vfu_platform import vfio_abi
from vfu_platform.backends.base import DeviceBackend
from vfu_platform.backends.sim.model_file import class_label
from vfu_platform.backends.vfio.inspect import DeviceReport, HostReport, IrqReport, RegionReport
from vfu_platform.inspect_report import PlanReport, bridge_plan, plan_lines

_REGION_FLAGS = (("READ", vfio_abi.REGION_FLAG_READ), ("WRITE", vfio_abi.REGION_FLAG_WRITE),
                 ("MMAP", vfio_abi.REGION_FLAG_MMAP))
_IRQ_FLAGS = (("EVENTFD", vfio_abi.IRQ_INFO_EVENTFD), ("MASKABLE", vfio_abi.IRQ_INFO_MASKABLE),
              ("AUTOMASKED", vfio_abi.IRQ_INFO_AUTOMASKED))


class ModelPci(msgspec.Struct, frozen=True):
    """The PCI identity the bridge gives the model; `declared` is False for the reserved default."""

    vendor: int
    device: int
    class_code: int
    declared: bool = True


class ModelRegion(msgspec.Struct, frozen=True):
    """One region of the model (platform region index, not BAR)."""

    index: int
    name: str
    size: int
    flags: list[str]


class ModelIrq(msgspec.Struct, frozen=True):
    """One IRQ line of the model."""

    index: int
    name: str
    count: int
    trigger: str  # "level" (automasked) | "edge"
    flags: list[str]


class ModelOption(msgspec.Struct, frozen=True):
    """A constructor option (`--option NAME=VALUE`)."""

    name: str
    default: object = None  # JSON value, or the repr of one that is not
    type: str = ""
    help: str | None = None
    required: bool = False


class ModelReport(msgspec.Struct, frozen=True, rename={"class_path": "class"}):
    """A model: its name, class, identity, regions, IRQs and options (`plan` with `inspect --device`)."""

    name: str
    class_path: str  # "module:Class"
    pci: ModelPci
    compatible: list[str] = []
    regions: list[ModelRegion] = []
    irqs: list[ModelIrq] = []
    options: list[ModelOption] = []
    plan: PlanReport | None = None


def class_path(cls: type) -> str:
    """ "module:Class" of a model class ("PATH.py:Class" for one from a model file)."""
    return class_label(cls)


def _flag_names(value: int, table: Sequence[tuple[str, int]]) -> list[str]:
    return [name for name, bit in table if value & bit]


def _json_value(value: object) -> object:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def model_options(cls: type) -> list[ModelOption]:
    """The keyword options a model class's constructor takes, with defaults and help."""
    helps = getattr(cls, "option_help", None) or {}
    options = []
    try:
        parameters = _inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):  # no introspectable signature
        return []
    for param in parameters:
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        annotation = param.annotation
        type_name = "" if annotation is param.empty else annotation if isinstance(annotation, str) else getattr(
            annotation, "__name__", repr(annotation))
        required = param.default is param.empty
        options.append(ModelOption(name=param.name, default=None if required else _json_value(param.default),
                                   type=type_name, help=helps.get(param.name), required=required))
    return options


def describe_backend(name: str, cls: type, backend: DeviceBackend, pci: ModelPci, plan: bool = False,
                     options: list[ModelOption] | None = None) -> ModelReport:
    """The report of a built model (`backend`, an instance of `cls` or a device group).

    `options` default to `cls`'s constructor options; `plan` adds the bridge plan.
    """
    regions = [ModelRegion(r.index, r.name, r.size, _flag_names(r.flags, _REGION_FLAGS)) for r in backend.regions()]
    irqs = [ModelIrq(q.index, q.name, q.count, "level" if q.automasked else "edge", _flag_names(q.flags, _IRQ_FLAGS))
            for q in backend.irqs()]
    return ModelReport(
        name=name, class_path=class_path(cls), pci=pci,
        compatible=list(getattr(backend, "compatible", ()) or ()),
        regions=regions, irqs=irqs, options=model_options(cls) if options is None else options,
        plan=model_plan(name, backend) if plan else None,
    )


def model_plan(name: str, backend: DeviceBackend) -> PlanReport:
    """What the bridge makes of the model (default bridge options), as `inspect` plans a host device."""
    regions = [RegionReport(index=r.index, name=r.name, size=r.size, offset=r.mmap_offset,
                            flags=_flag_names(r.flags, _REGION_FLAGS),
                            sparse_areas=[list(a) for a in r.sparse_areas] or None)  # type: ignore[misc]
               for r in backend.regions()]
    irqs = [IrqReport(index=q.index, name=q.name, count=q.count, flags=_flag_names(q.flags, _IRQ_FLAGS),
                      trigger="none" if q.count == 0 else "level" if q.automasked else "edge")
            for q in backend.irqs()]
    device = DeviceReport(name=name, bus="sim", sysfs_path="", driver=None, vfio_driver="", iommu_group=None,
                          group_node=None, group_members=[], flags=["PLATFORM"], can_reset=True,
                          num_regions=len(regions), num_irqs=len(irqs))
    return bridge_plan(HostReport(device=device, compatible=list(getattr(backend, "compatible", ()) or ()),
                                  regions=regions, irqs=irqs))


def _table(rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [indent + "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]


def format_model(report: ModelReport) -> str:
    """The report as aligned text (what `inspect --device MODEL` prints)."""
    pci = report.pci
    ids = f"{pci.vendor:04x}:{pci.device:04x} class {pci.class_code:06x}"
    model = report.name if report.name == report.class_path else f"{report.name} ({report.class_path})"
    lines = [f"{'model':<12}{model}",
             f"{'pci ids':<12}{ids}{'' if pci.declared else ' (the default: the model declares none)'}"]
    if report.compatible:
        lines.append(f"{'compatible':<12}{', '.join(report.compatible)}")
    if report.options:
        lines.append(f"{'options':<12}" + ", ".join(
            o.name + ("" if o.required else f"={o.default}") for o in report.options))
    if report.regions:
        lines.append("regions")
        rows = [["index", "name", "size", "flags"]]
        rows += [[f"region {r.index}", r.name, hex(r.size), " ".join(r.flags) or "-"] for r in report.regions]
        lines += _table(rows)
    if report.irqs:
        lines.append("irqs")
        rows = [["index", "name", "count", "trigger", "flags"]]
        rows += [[f"irq {q.index}", q.name, str(q.count), q.trigger, " ".join(q.flags) or "-"] for q in report.irqs]
        lines += _table(rows)
    if report.plan is not None:
        lines += plan_lines(report.plan)
    return "\n".join(lines)


__all__ = ["ModelIrq", "ModelOption", "ModelPci", "ModelRegion", "ModelReport", "class_path", "describe_backend",
           "format_model", "model_options", "model_plan"]
