# SPDX-License-Identifier: BSD-3-Clause
"""Simulated platform devices: the model API (`device`), built-in models, model lookup.

A model author needs one module, `vfu_platform.backends.sim.device`: its docstring
is the guide.  Its helpers live beside it (`registers`, `memory`, `lines`, `timers`).
"""

from vfu_platform.backends.sim.device import (
    Deferred,
    LineKind,
    MemoryRegion,
    RegisterRegion,
    SimDevice,
    SimRegion,
)
from vfu_platform.backends.sim.edu import EduDevice
from vfu_platform.backends.sim.gpio import GpioDevice
from vfu_platform.backends.sim.registry import create_model, known_models, resolve_model

__all__ = [
    "Deferred",
    "EduDevice",
    "GpioDevice",
    "LineKind",
    "MemoryRegion",
    "RegisterRegion",
    "SimDevice",
    "SimRegion",
    "create_model",
    "known_models",
    "resolve_model",
]
