# SPDX-License-Identifier: BSD-3-Clause
"""IRQ engine: the seed's (vfio-platform) interrupt semantics as a pure state machine."""
from vfu_platform.irq.engine import (
    INTX,
    NO_ACTIONS,
    Action,
    Actions,
    IrqEngine,
    LineSpec,
    LineState,
    Route,
    Signal,
    Transition,
    UnmaskLine,
)

__all__ = [
    "INTX",
    "NO_ACTIONS",
    "Action",
    "Actions",
    "IrqEngine",
    "LineSpec",
    "LineState",
    "Route",
    "Signal",
    "Transition",
    "UnmaskLine",
]
