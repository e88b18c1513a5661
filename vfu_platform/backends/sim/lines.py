# SPDX-License-Identifier: BSD-3-Clause
"""A simulated device's IRQ lines, with the kernel's vfio-platform semantics.

`IrqLines` is the state machine behind `SimDevice`'s line methods: a level line
that fires masks itself (AUTOMASKED) and stays masked until unmasked; a line
still asserted when it is unmasked, or when a trigger is installed while it is
unmasked, fires at once; an edge line is not maskable; after construction and
after `reset` every level line is masked; triggers survive `reset`.  Firing is
left to the owner (`signal(irq, eventfd)`), which counts and observes it.
"""
from __future__ import annotations

import enum
import errno
from collections.abc import Callable
from dataclasses import dataclass

from vfu_platform import vfio_abi
from vfu_platform.backends.base import BackendError, IrqInfo


class LineKind(enum.Enum):
    """Level (automasked, maskable) or edge (neither)."""

    LEVEL = "level"
    EDGE = "edge"


_LEVEL_FLAGS = vfio_abi.IRQ_INFO_EVENTFD | vfio_abi.IRQ_INFO_MASKABLE | vfio_abi.IRQ_INFO_AUTOMASKED
_LINE_FLAGS = {LineKind.LEVEL: _LEVEL_FLAGS, LineKind.EDGE: vfio_abi.IRQ_INFO_EVENTFD}

Signal = Callable[[int, int], None]
"""signal(irq, eventfd): deliver one interrupt of line `irq` through its trigger."""


@dataclass(slots=True)
class Line:
    """One line's state."""

    kind: LineKind
    name: str
    asserted: bool = False
    masked: bool = False
    trigger: int | None = None


class IrqLines:
    """The lines of one device; see the module docstring.

    Model-side misuse (a wrong index or kind) is a ValueError: a bug in the
    model.  VFIO-side errors (from the layers above) are BackendError(EINVAL).
    """

    def __init__(self, owner: Callable[[], str], signal: Signal) -> None:
        self._owner = owner
        self._signal = signal
        self.lines: list[Line] = []

    def __len__(self) -> int:
        return len(self.lines)

    def add(self, kind: LineKind, name: str) -> int:
        """Add a line (level lines start masked); returns its index."""
        self.lines.append(Line(kind=kind, name=name, masked=kind is LineKind.LEVEL))
        return len(self.lines) - 1

    # ---- the model's side ---------------------------------------------------

    def model_line(self, irq: int, kind: LineKind) -> Line:
        """Line `irq`, which the model says is of `kind` (ValueError otherwise)."""
        if not 0 <= irq < len(self.lines):
            raise ValueError(f"{self._owner()}: no IRQ line {irq}")
        line = self.lines[irq]
        if line.kind is not kind:
            raise ValueError(f"{self._owner()}: IRQ {irq} is a {line.kind.value} line")
        return line

    def set_level(self, irq: int, asserted: bool) -> None:
        """Drive a level line; an asserted, unmasked line with a trigger fires."""
        line = self.model_line(irq, LineKind.LEVEL)
        line.asserted = asserted
        if asserted:
            self._evaluate(irq, line)

    # ---- the VFIO side ------------------------------------------------------

    def line(self, irq: int) -> Line:
        if not 0 <= irq < len(self.lines):
            raise BackendError(errno.EINVAL, f"{self._owner()}: no IRQ {irq}")
        return self.lines[irq]

    def _maskable(self, irq: int) -> Line:
        line = self.line(irq)
        if line.kind is not LineKind.LEVEL:
            raise BackendError(errno.EINVAL, f"{self._owner()}: IRQ {irq} is not maskable")
        return line

    def set_trigger(self, irq: int, eventfd: int | None) -> None:
        line = self.line(irq)
        if eventfd is not None and (not isinstance(eventfd, int) or eventfd < 0):
            raise BackendError(errno.EINVAL, f"{self._owner()}: bad eventfd {eventfd!r} for IRQ {irq}")
        line.trigger = eventfd
        if line.kind is LineKind.LEVEL:
            self._evaluate(irq, line)

    def mask(self, irq: int) -> None:
        self._maskable(irq).masked = True

    def unmask(self, irq: int) -> None:
        line = self._maskable(irq)
        line.masked = False
        self._evaluate(irq, line)

    def reset(self) -> None:
        """Deassert every line and mask the level ones; triggers are kept."""
        for line in self.lines:
            line.asserted = False
            line.masked = line.kind is LineKind.LEVEL

    def infos(self) -> list[IrqInfo]:
        return [
            IrqInfo(index=i, count=1, flags=_LINE_FLAGS[line.kind], name=line.name)
            for i, line in enumerate(self.lines)
        ]

    def status(self) -> list[dict[str, object]]:
        return [
            {
                "index": i,
                "name": line.name,
                "kind": line.kind.value,
                "asserted": line.asserted,
                "masked": line.masked,
                "trigger": line.trigger is not None,
            }
            for i, line in enumerate(self.lines)
        ]

    def _evaluate(self, irq: int, line: Line) -> None:
        if line.asserted and not line.masked and line.trigger is not None:
            line.masked = True  # automask first, as the kernel's handler does
            self._signal(irq, line.trigger)


__all__ = ["IrqLines", "Line", "LineKind", "Signal"]
