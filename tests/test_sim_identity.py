# SPDX-License-Identifier: BSD-3-Clause
"""A model's PCI identity: class attributes on the model, a reserved default with a warning."""
from __future__ import annotations

import warnings

import pytest

from vfu_platform.backends.sim.device import SimDevice
from vfu_platform.backends.sim.identity import (
    DEFAULT_IDENTITY,
    PciIdentity,
    UnidentifiedModelWarning,
    declares_identity,
    model_identity,
)
from vfu_platform.backends.sim.registry import MODELS


class Anonymous(SimDevice):
    name = "anonymous"


class Declared(SimDevice):
    name = "declared"
    pci_vendor, pci_device, pci_class = 0x1AF4, 0x1234, 0x058000


class Inherits(Declared):
    name = "inherits"


def test_the_default_is_the_reserved_id_and_not_edus() -> None:
    assert DEFAULT_IDENTITY == PciIdentity(0x1234, 0x56FF, 0xFF0000)
    assert (SimDevice.pci_vendor, SimDevice.pci_device, SimDevice.pci_class) == (0x1234, 0x56FF, 0xFF0000)
    assert (DEFAULT_IDENTITY.vendor, DEFAULT_IDENTITY.device) != (0x1234, 0x11E8)


def test_a_model_without_identity_gets_the_default_and_a_warning_naming_it() -> None:
    with pytest.warns(UnidentifiedModelWarning, match="'anonymous'.*test_sim_identity:Anonymous"):
        assert model_identity(Anonymous) == DEFAULT_IDENTITY
    assert not declares_identity(Anonymous)


def test_declared_and_inherited_identities_do_not_warn() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert model_identity(Declared) == PciIdentity(0x1AF4, 0x1234, 0x058000)
        assert model_identity(Inherits) == model_identity(Declared)
        assert model_identity(Anonymous, warn=False) == DEFAULT_IDENTITY


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_builtin_model_declares_its_identity(name: str) -> None:
    cls = MODELS[name]
    assert declares_identity(cls)
    identity = model_identity(cls)
    assert identity.vendor == 0x1234 and 0 <= identity.class_code <= 0xFFFFFF
    # only edu is QEMU's edu device
    assert (identity.device == 0x11E8) == (name == "edu")
