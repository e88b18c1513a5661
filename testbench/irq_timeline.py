# SPDX-License-Identifier: BSD-3-Clause
"""IRQ deliveries read back from our server's `--trace` JSON lines.

The bridge traces `irq-fire` (a platform line rose), `irq-signal` (INTx or an MSI-X
vector, with the ACTIVE line), `intx-eoi` (the client's INTx unmask), `irq-eoi-write`
(the guest's IRQ_EOI write) and `irq-unmask` (the level line unmasked on the device:
the end of the activation). `IrqTimeline.deliveries()` pairs them into one record per
activation, which is what the guest-driver tests and `scripts/demo --arm` look at:
raise -> deliver -> EOI, the FIFO order of two lines raised together, and
activations left hanging.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class IrqEvent:
    t: float
    event: str
    fields: Mapping[str, object]


@dataclass
class Delivery:
    """One interrupt through the bridge: the line fired, was signalled to the client, was EOId."""

    line: int
    fired: float
    signalled: float | None = None
    eoi: float | None = None
    queued_behind: int | None = None  # the line that was ACTIVE when this one fired
    #: the client's INTx unmasks (QEMU's EOI) while this activation was signalled and not yet EOId
    client_unmasks: list[float] = field(default_factory=list)
    #: the guest's IRQ_EOI writes for this line that the server took
    eoi_writes: list[float] = field(default_factory=list)

    def describe(self) -> str:
        def at(t: float | None) -> str:
            return "-" if t is None else f"{t:.3f}"
        q = f" queued behind line {self.queued_behind}" if self.queued_behind is not None else ""
        u = f" client-unmask {','.join(f'{t:.3f}' for t in self.client_unmasks)}" if self.client_unmasks else ""
        w = f" eoi-write {','.join(f'{t:.3f}' for t in self.eoi_writes)}" if self.eoi_writes else ""
        return f"line {self.line}: fire {at(self.fired)} signal {at(self.signalled)}{u}{w} eoi {at(self.eoi)}{q}"


#: events that end an activation (the EOI): the level line unmasked, or an explicit EOI record
_EOI_EVENTS = ("irq-unmask", "irq-eoi")


@dataclass
class IrqTimeline:
    """The server trace's IRQ events in order, and the deliveries they make.

    The bridge traces `irq-fire` (a line rose), `irq-signal` (target intx or an MSI-X
    vector, with the ACTIVE line), and the EOI as `irq-unmask` (the level line unmasked
    once the guest completed it) or an `irq-eoi` record when the bridge has one.
    """

    events: list[IrqEvent] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> IrqTimeline:
        tl = cls()
        if not path.exists():
            return tl
        for line in path.read_text(errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("kind") == "event":
                tl.events.append(IrqEvent(float(rec.get("t", 0.0)), str(rec.get("event")), rec.get("fields") or {}))
        return tl

    def names(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for e in self.events:
            out[e.event] = out.get(e.event, 0) + 1
        return out

    def deliveries(self) -> list[Delivery]:
        """Fire -> signal -> EOI per activation, matched in order (one ACTIVE at a time)."""
        out: list[Delivery] = []
        open_: dict[int, Delivery] = {}
        closed: dict[int, Delivery] = {}
        active: int | None = None
        for e in self.events:
            line = e.fields.get("line")
            if e.event == "irq-fire" and isinstance(line, int):
                if line in open_:
                    continue  # coalesced into the open activation
                d = Delivery(line, e.t, queued_behind=active if active is not None and active != line else None)
                open_[line] = d
                out.append(d)
            elif e.event == "irq-signal":
                act = e.fields.get("active")
                if isinstance(act, int) and act in open_:
                    d = open_[act]
                    if d.signalled is None:
                        d.signalled = e.t
                    active = act
            elif e.event == "intx-eoi" and active is not None and active in open_:
                open_[active].client_unmasks.append(e.t)
            elif e.event == "irq-eoi-write" and isinstance(line, int) and not e.fields.get("ignored"):
                # traced just after the EOI it completed, or before it (INTx: the unmask still due)
                target = open_.get(line) or closed.get(line)
                if target is not None:
                    target.eoi_writes.append(e.t)
            elif e.event in _EOI_EVENTS and isinstance(line, int) and line in open_:
                d = open_.pop(line)
                d.eoi = e.t
                closed[line] = d
                if active == line:
                    active = None
            elif e.event in ("irq-reset", "device-reset", "client-gone"):
                open_.clear()
                closed.clear()
                active = None
        return out

    def hanging(self) -> list[Delivery]:
        """Activations signalled to the client and never EOId before the client left.

        On INTx with exact EOI, one with client unmasks but no IRQ_EOI write is an
        interrupt the guest never took: QEMU's vfio "EOI on BAR access" deasserts
        INTx at the first BAR access after the assertion, and a vCPU already inside
        a BAR access when the assertion lands loses it.
        """
        return [d for d in self.deliveries() if d.signalled is not None and d.eoi is None]

    def complete(self, line: int) -> list[Delivery]:
        return [d for d in self.deliveries() if d.line == line and d.signalled is not None and d.eoi is not None]

    def fifo_pairs(self) -> list[tuple[Delivery, Delivery]]:
        """(first, second) where `second` fired while `first` was ACTIVE and was signalled after its EOI."""
        ds = self.deliveries()
        pairs = []
        for i, first in enumerate(ds):
            for second in ds[i + 1:]:
                if (second.queued_behind == first.line and first.eoi is not None and second.signalled is not None
                        and first.signalled is not None and second.fired <= first.eoi <= second.signalled):
                    pairs.append((first, second))
        return pairs
