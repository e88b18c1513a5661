# SPDX-License-Identifier: BSD-3-Clause
"""The PCI identity of a device model: the ids the bridge writes into the function's config space.

A model declares it as class attributes (`SimDevice` documents them)::

    class Blinky(SimDevice):
        pci_vendor = 0x1234
        pci_device = 0x5701
        pci_class = 0x088000     # base class << 16 | subclass << 8 | prog-if

A model that declares no `pci_device` gets the default identity, 1234:56ff class
ff0000, and a `UnidentifiedModelWarning` naming it.  Device id 0x56ff under
vendor 0x1234 is reserved by vfu-platform for "a model that did not say what it
is": no built-in model uses it, and a guest driver should never bind to it.
(edu's 1234:11e8 belongs to QEMU's edu device and is only edu's.)
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

#: vendor id of the default identity (QEMU's vendor id for emulated devices)
DEFAULT_PCI_VENDOR = 0x1234
#: device id reserved for a model that declares no identity of its own
UNIDENTIFIED_PCI_DEVICE = 0x56FF
#: class code of the default identity: base class 0xff, "does not fit any defined class"
DEFAULT_PCI_CLASS = 0xFF0000


class UnidentifiedModelWarning(UserWarning):
    """A model declares no PCI identity; it is served with the reserved default one."""


@dataclass(frozen=True, slots=True)
class PciIdentity:
    """Vendor id, device id and 24-bit class code of a model."""

    vendor: int
    device: int
    class_code: int

    def __str__(self) -> str:
        return f"{self.vendor:04x}:{self.device:04x} class {self.class_code:06x}"


DEFAULT_IDENTITY = PciIdentity(DEFAULT_PCI_VENDOR, UNIDENTIFIED_PCI_DEVICE, DEFAULT_PCI_CLASS)


def declares_identity(model: type) -> bool:
    """True when the model class (or a base of its own) sets a `pci_device` other than the reserved one."""
    return getattr(model, "pci_device", UNIDENTIFIED_PCI_DEVICE) != UNIDENTIFIED_PCI_DEVICE


def model_identity(model: type, warn: bool = True) -> PciIdentity:
    """The PCI identity a model class declares, or the default one (with a warning naming the model)."""
    if not declares_identity(model):
        if warn:
            from vfu_platform.backends.sim.model_file import class_label

            name = getattr(model, "name", "") or model.__name__
            warnings.warn(
                f"device model {name!r} ({class_label(model)}) declares no PCI identity "
                f"(pci_vendor, pci_device, pci_class); serving it as {DEFAULT_IDENTITY}, the id reserved "
                "for unidentified models",
                UnidentifiedModelWarning,
                stacklevel=2,
            )
        return DEFAULT_IDENTITY
    return PciIdentity(
        int(getattr(model, "pci_vendor", DEFAULT_PCI_VENDOR)),
        int(getattr(model, "pci_device")),
        int(getattr(model, "pci_class", DEFAULT_PCI_CLASS)),
    )


__all__ = [
    "DEFAULT_IDENTITY",
    "DEFAULT_PCI_CLASS",
    "DEFAULT_PCI_VENDOR",
    "PciIdentity",
    "UNIDENTIFIED_PCI_DEVICE",
    "UnidentifiedModelWarning",
    "declares_identity",
    "model_identity",
]
