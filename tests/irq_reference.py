# SPDX-License-Identifier: BSD-3-Clause
"""A plain reference model of the IRQ engine's rules, for differential testing.

Written for reading, not speed, and deliberately shaped differently from
`vfu_platform.irq.engine`: line states live in a dict of strings, the ACTIVE line is
found by searching, the PBA is recomputed from the states, and after every event a
`_deliver_everything_deliverable()` pass runs (the engine instead only checks where
something can have changed).  It shares only the data types (actions, specs, enums)
with the engine, so the property test compares behaviour, not code.

The rules, in the words of the seed (QEMU's hw/vfio/platform.c) plus the decisions
written down in the engine's module docstring.
"""
from __future__ import annotations

from typing import Literal

from vfu_platform.irq.engine import LineSpec, LineState, Route, Signal, UnmaskLine

Action = Signal | UnmaskLine


class ReferenceIrq:
    def __init__(self, specs: list[LineSpec]) -> None:
        self.specs = list(specs)
        self.signal_count = 0
        self.eoi_count = 0
        self.coalesced_count = 0
        self.ignored_eoi_count = 0
        self.power_on()

    def power_on(self) -> None:
        self.state = {line: "inactive" for line in range(len(self.specs))}
        self.queue: list[int] = []
        self.held_edges: set[int] = set()
        self.signalled = False
        self.unmask_seen = False
        self.ack_seen = False
        self.masked_on_device = {
            line for line in range(len(self.specs)) if self.specs[line].automasked
        }
        self.msix_on = False
        self.intx_on = False
        self.client_masked = False
        self.intx_disable_bit = False
        self.function_masked = False
        self.vector_masked = {v: False for v in range(len(self.specs))}
        self.vector_has_fd = {v: False for v in range(len(self.specs))}
        self.last_ack_did_eoi = False
        # IRQ_CTRL.EXACT_EOI as written, and the value it had when the ACTIVE line
        # was signalled (that one rules the activation until its EOI).
        self.exact_eoi_bit = False
        self.exact_when_signalled = False
        self.taken = False

    # ---------------------------------------------------------------- helpers

    def exact_rules_active(self) -> bool:
        """Does the exact-EOI rule decide the ACTIVE line's EOI?"""
        if self.signalled:
            return self.exact_when_signalled
        return self.exact_eoi_bit

    def find_active(self) -> int | None:
        for line, state in self.state.items():
            if state == "active":
                return line
        return None

    def current_route(self) -> Route:
        return Route.MSIX if self.msix_on else Route.INTX

    def intx_can_deliver(self) -> bool:
        return self.intx_on and not self.client_masked and not self.intx_disable_bit

    def vector_can_deliver(self, vector: int) -> bool:
        return (
            self.msix_on
            and not self.function_masked
            and not self.vector_masked[vector]
            and self.vector_has_fd[vector]
        )

    def signal(self, target: Literal["intx"] | int, actions: list[Action]) -> None:
        self.signal_count += 1
        actions.append(Signal(target))

    def signal_active_if_possible(self, actions: list[Action]) -> None:
        line = self.find_active()
        if line is None or self.signalled:
            return
        if self.current_route() == Route.INTX:
            if self.intx_can_deliver():
                self.signalled = True
                self.exact_when_signalled = self.exact_eoi_bit
                self.taken = False
                self.signal("intx", actions)
        else:
            if self.vector_can_deliver(line):
                self.signalled = True
                self.exact_when_signalled = self.exact_eoi_bit
                self.taken = False
                self.signal(line, actions)

    def deliver_everything_deliverable(self, actions: list[Action]) -> None:
        self.signal_active_if_possible(actions)
        for line in sorted(self.held_edges):
            if self.vector_can_deliver(line):
                self.held_edges.remove(line)
                self.state[line] = "inactive"
                self.signal(line, actions)

    def make_active(self, line: int, actions: list[Action]) -> None:
        self.state[line] = "active"
        self.signalled = False
        self.exact_when_signalled = False
        self.unmask_seen = False
        self.ack_seen = False
        self.signal_active_if_possible(actions)

    def take_fire(self, line: int, actions: list[Action]) -> None:
        edge = not self.specs[line].automasked
        if self.current_route() == Route.MSIX and edge:
            if self.vector_can_deliver(line):
                self.signal(line, actions)
            else:
                self.state[line] = "pending"
                self.held_edges.add(line)
            return
        something_waiting = self.find_active() is not None or len(self.queue) > 0
        if something_waiting:
            self.state[line] = "pending"
            self.queue.append(line)
        else:
            self.make_active(line, actions)

    def complete_eoi(self, actions: list[Action]) -> None:
        line = self.find_active()
        assert line is not None
        self.state[line] = "inactive"
        self.eoi_count += 1
        if self.specs[line].automasked:
            self.masked_on_device.remove(line)
            actions.append(UnmaskLine(line))
        if self.queue:
            head = self.queue.pop(0)
            self.make_active(head, actions)

    def forget_everything_in_flight(self) -> None:
        for line in self.state:
            self.state[line] = "inactive"
        self.queue = []
        self.held_edges = set()
        self.signalled = False
        self.exact_when_signalled = False
        self.unmask_seen = False
        self.ack_seen = False

    def unmask_masked_lines_not_waiting(self, actions: list[Action]) -> None:
        for line in sorted(self.masked_on_device):
            if self.state[line] == "inactive":
                self.masked_on_device.remove(line)
                actions.append(UnmaskLine(line))

    def finish(self, actions: list[Action]) -> list[Action]:
        self.deliver_everything_deliverable(actions)
        return actions

    # ----------------------------------------------------------------- events

    def fire(self, line: int) -> list[Action]:
        self.last_ack_did_eoi = False
        actions: list[Action] = []
        if self.specs[line].automasked:
            self.masked_on_device.add(line)
        if self.state[line] in ("active", "pending"):
            self.coalesced_count += 1
        else:
            self.take_fire(line, actions)
        return self.finish(actions)

    def client_unmask(self) -> list[Action]:
        self.last_ack_did_eoi = False
        actions: list[Action] = []
        self.client_masked = False
        line = self.find_active()
        if self.current_route() == Route.INTX and line is not None:
            if not self.signalled:
                pass  # finish() signals it now that the client mask is gone
            elif self.exact_when_signalled:
                if self.ack_seen:  # the IRQ_EOI write came first
                    self.complete_eoi(actions)
                elif not self.taken:  # INTx lowered before the guest read IRQ_ACTIVE: raise it again
                    self.signal("intx", actions)
                else:
                    self.unmask_seen = True
            elif not self.specs[line].has_ack:
                self.complete_eoi(actions)
            elif self.ack_seen:
                self.complete_eoi(actions)
            else:
                self.unmask_seen = True
        return self.finish(actions)

    def client_mask(self) -> list[Action]:
        self.last_ack_did_eoi = False
        self.client_masked = True
        return self.finish([])

    def ack(self, line: int) -> list[Action]:
        self.last_ack_did_eoi = False
        actions: list[Action] = []
        if self.find_active() == line and self.exact_rules_active():
            pass  # only the IRQ_EOI write ends it
        elif self.find_active() == line and not self.signalled:
            # serviced by polling while held: EOI now, nothing delivered
            self.complete_eoi(actions)
            self.last_ack_did_eoi = True
        elif line in self.queue:
            # acknowledged before its turn: out of the queue, unmasked, not an EOI
            self.queue.remove(line)
            self.state[line] = "inactive"
            if self.specs[line].automasked:
                self.masked_on_device.remove(line)
                actions.append(UnmaskLine(line))
        elif self.find_active() == line and self.signalled:
            if self.current_route() == Route.MSIX:
                self.complete_eoi(actions)
                self.last_ack_did_eoi = True
            elif self.unmask_seen:
                self.complete_eoi(actions)
                self.last_ack_did_eoi = True
            else:
                self.ack_seen = True
        return self.finish(actions)

    def trapped_access(self) -> list[Action]:
        actions: list[Action] = []
        if self.last_ack_did_eoi:
            self.last_ack_did_eoi = False  # the same write: one access, one EOI
            return self.finish(actions)
        line = self.find_active()
        if (
            self.current_route() == Route.MSIX
            and line is not None
            and self.signalled
            and not self.specs[line].has_ack
            and not self.exact_when_signalled
        ):
            self.complete_eoi(actions)
        return self.finish(actions)

    def eoi(self, line: int) -> list[Action]:
        """The guest wrote `line` to IRQ_EOI (engine: `eoi`)."""
        self.last_ack_did_eoi = False
        actions: list[Action] = []
        active = self.find_active()
        if active is None or line != active or not self.exact_rules_active():
            self.ignored_eoi_count += 1
        elif not self.signalled or self.current_route() == Route.MSIX or self.unmask_seen:
            self.complete_eoi(actions)
            self.last_ack_did_eoi = True
        else:
            self.ack_seen = True  # waits for the client's unmask
        return self.finish(actions)

    def active_read(self) -> list[Action]:
        """The guest read IRQ_ACTIVE: it took the last INTx signal."""
        if self.find_active() is not None and self.signalled:
            self.taken = True
        return []

    def set_exact_eoi(self, flag: bool) -> list[Action]:
        self.last_ack_did_eoi = False
        self.exact_eoi_bit = flag
        return self.finish([])

    def set_intx_disable(self, flag: bool) -> list[Action]:
        self.last_ack_did_eoi = False
        self.intx_disable_bit = flag
        return self.finish([])

    def intx_enable(self, flag: bool) -> list[Action]:
        self.last_ack_did_eoi = False
        actions: list[Action] = []
        was_on = self.intx_on
        if flag:
            self.intx_on = True
            if not was_on and self.current_route() == Route.INTX:
                self.signal_active_if_possible(actions)
                self.unmask_masked_lines_not_waiting(actions)
        else:
            self.intx_on = False
            self.client_masked = False
            if was_on and self.current_route() == Route.INTX:
                self.forget_everything_in_flight()
        return self.finish(actions)

    def msix_enable(self, flag: bool) -> list[Action]:
        self.last_ack_did_eoi = False
        actions: list[Action] = []
        if flag and not self.msix_on:
            # Everything recorded but never signalled moves over, oldest first.
            move_over: list[int] = []
            line = self.find_active()
            if line is not None and not self.signalled:
                move_over.append(line)
            move_over += self.queue
            self.forget_everything_in_flight()
            self.msix_on = True
            for line in move_over:
                self.take_fire(line, actions)
            self.unmask_masked_lines_not_waiting(actions)
        elif not flag:
            self.vector_has_fd = {v: False for v in self.vector_has_fd}
            self.vector_masked = {v: False for v in self.vector_masked}
            if self.msix_on:
                self.forget_everything_in_flight()
                self.msix_on = False
                if self.intx_on:
                    self.unmask_masked_lines_not_waiting(actions)
        return self.finish(actions)

    def msix_function_mask(self, flag: bool) -> list[Action]:
        self.last_ack_did_eoi = False
        self.function_masked = flag
        return self.finish([])

    def msix_vector_mask(self, vector: int, flag: bool) -> list[Action]:
        self.last_ack_did_eoi = False
        self.vector_masked[vector] = flag
        return self.finish([])

    def vector_fd(self, vector: int, present: bool) -> list[Action]:
        self.last_ack_did_eoi = False
        self.vector_has_fd[vector] = present
        return self.finish([])

    def reset(self) -> list[Action]:
        self.power_on()
        return []

    # ---------------------------------------------------------------- queries

    def observable(self) -> dict[str, object]:
        """Everything the engine exposes, in the engine's types."""
        route = self.current_route()
        active = self.find_active()
        pba = 0
        if route == Route.MSIX:
            for line, state in self.state.items():
                if state == "pending" or (state == "active" and not self.signalled):
                    pba |= 1 << line
        states = {"inactive": LineState.INACTIVE, "active": LineState.ACTIVE,
                  "pending": LineState.PENDING}
        return {
            "route": route,
            "active": active,
            "pending": tuple(self.queue),
            "intx_asserted": route == Route.INTX and active is not None and self.signalled,
            "pba": pba,
            "line_states": tuple(states[self.state[line]] for line in range(len(self.specs))),
            "device_masked": frozenset(self.masked_on_device),
            "signals": self.signal_count,
            "eois": self.eoi_count,
            "coalesced": self.coalesced_count,
            "exact_eoi": self.exact_eoi_bit,
            "active_needs_irq_eoi": active is not None and self.exact_rules_active(),
            "ignored_eois": self.ignored_eoi_count,
        }
