# SPDX-License-Identifier: BSD-3-Clause
"""Tests for vfu_platform.irq.engine: one example per rule, then differential tests.

The differential (stateful) test drives random interleavings of every event into the
engine and into the plain reference model in `irq_reference.py`, and requires the same
actions and the same observable state after every step.
"""
from __future__ import annotations

import copy
from collections import deque
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from irq_reference import ReferenceIrq
from vfu_platform.irq import (
    INTX,
    NO_ACTIONS,
    Actions,
    IrqEngine,
    LineSpec,
    LineState,
    Route,
    Signal,
    UnmaskLine,
)

LEVEL = LineSpec(automasked=True)
EDGE = LineSpec(automasked=False)
LEVEL_ACK = LineSpec(automasked=True, has_ack=True)
EDGE_ACK = LineSpec(automasked=False, has_ack=True)


def live_intx(*specs: LineSpec) -> IrqEngine:
    """An engine whose INTx route is live (the initial unmask burst is discarded)."""
    engine = IrqEngine(specs)
    engine.intx_enable(True)
    return engine


def live_msix(*specs: LineSpec) -> IrqEngine:
    """An engine on route MSIX with every vector deliverable."""
    engine = IrqEngine(specs)
    engine.msix_enable(True)
    for vector in range(len(specs)):
        engine.vector_fd(vector, True)
    return engine


def queue_of(engine: IrqEngine) -> tuple[Route, int | None, tuple[int, ...]]:
    return engine.route, engine.active, engine.pending


class Device:
    """A device model around an engine, behaving as the backend contract says.

    A level line masks itself when it fires and stays masked until `UnmaskLine`; if it
    is still asserted then, it fires again.  An edge line fires on each pulse.  The
    re-fire after an unmask is delivered after the current batch of actions, as an
    eventfd would be.
    """

    def __init__(self, engine: IrqEngine) -> None:
        self.engine = engine
        self.specs = engine.specs
        self.asserted: set[int] = set()
        self.masked = {i for i, s in enumerate(self.specs) if s.automasked}
        self.signals: list[str | int] = []
        self.unmasks: list[int] = []

    def run(self, actions: Actions) -> None:
        refire: deque[int] = deque()
        batch: Sequence[Any] = actions
        while True:
            for action in batch:
                if isinstance(action, Signal):
                    self.signals.append(action.target)
                else:
                    assert isinstance(action, UnmaskLine)
                    assert action.line in self.masked, "unmask of a line that is not masked"
                    self.unmasks.append(action.line)
                    self.masked.discard(action.line)
                    if action.line in self.asserted:
                        self.masked.add(action.line)
                        refire.append(action.line)
            if not refire:
                return
            batch = self.engine.fire(refire.popleft())

    def raise_line(self, line: int) -> None:
        if self.specs[line].automasked:
            self.asserted.add(line)
            if line not in self.masked:
                self.masked.add(line)
                self.run(self.engine.fire(line))
        else:
            self.run(self.engine.fire(line))

    def lower_line(self, line: int) -> None:
        self.asserted.discard(line)

    def reset(self) -> None:
        self.masked = {i for i, s in enumerate(self.specs) if s.automasked}
        self.run(self.engine.reset())


# --------------------------------------------------------------------- fire / FIFO


def test_fire_activates_and_signals_intx() -> None:
    engine = live_intx(LEVEL, LEVEL)
    assert engine.fire(1) == (Signal(INTX),)
    assert engine.active == 1
    assert engine.line_state(1) is LineState.ACTIVE
    assert engine.intx_asserted
    assert engine.signals == 1


def test_first_enable_unmasks_all_level_lines() -> None:
    engine = IrqEngine([LEVEL, EDGE, LEVEL_ACK])
    assert engine.device_masked == {0, 2}
    assert engine.intx_enable(True) == (UnmaskLine(0), UnmaskLine(2))
    assert engine.device_masked == frozenset()
    assert engine.intx_enable(True) == ()  # enabling an enabled index changes nothing


def test_three_lines_fired_at_once_arrive_one_at_a_time_in_fifo_order() -> None:
    engine = IrqEngine([LEVEL, LEVEL, LEVEL, LEVEL])
    device = Device(engine)
    device.run(engine.intx_enable(True))
    for line in (2, 0, 3):
        device.raise_line(line)
    assert device.signals == [INTX]
    assert engine.active == 2 and engine.pending == (0, 3)
    assert engine.line_state(0) is LineState.PENDING

    delivered: list[int] = []
    while engine.active is not None:
        assert len(device.signals) == len(delivered) + 1  # one signal per activation
        line = engine.active
        delivered.append(line)
        device.lower_line(line)  # the guest handler quiets the source
        device.run(engine.trapped_access())  # its status read (no EOI on route INTX)
        device.run(engine.client_unmask())  # QEMU's EOI
    assert delivered == [2, 0, 3]
    assert device.signals == [INTX] * 3
    assert device.unmasks[-3:] == [2, 0, 3]
    assert engine.eois == 3 and engine.signals == 3
    assert not engine.intx_asserted


def test_refire_of_active_or_pending_line_is_coalesced() -> None:
    engine = live_intx(EDGE, EDGE)
    assert engine.fire(0) == (Signal(INTX),)
    assert engine.fire(1) == ()
    assert engine.fire(0) == ()
    assert engine.fire(1) == ()
    assert engine.pending == (1,)
    assert engine.coalesced == 2
    # An edge line in route INTX: EOI without UnmaskLine, next one signalled.
    assert engine.client_unmask() == (Signal(INTX),)
    assert engine.client_unmask() == ()
    assert engine.active is None and engine.signals == 2


def test_unmask_without_active_line_does_nothing() -> None:
    engine = live_intx(LEVEL)
    assert engine.client_unmask() == ()  # e.g. a resamplefd signal for another source
    assert engine.eois == 0


# -------------------------------------------------------------- INTx delivery holds


def test_intx_disable_holds_then_releases_exactly_one_signal() -> None:
    engine = live_intx(LEVEL, LEVEL)
    assert engine.set_intx_disable(True) == ()
    assert engine.fire(0) == ()
    assert engine.fire(1) == ()
    assert engine.active == 0 and not engine.intx_asserted
    assert engine.client_unmask() == ()  # not signalled: no EOI
    assert engine.set_intx_disable(False) == (Signal(INTX),)
    assert engine.set_intx_disable(True) == ()
    assert engine.set_intx_disable(False) == ()  # once per activation
    assert engine.signals == 1 and engine.eois == 0
    assert engine.intx_asserted


def test_client_mask_holds_and_unmask_signals_instead_of_eoi() -> None:
    engine = live_intx(LEVEL)
    engine.client_mask()
    assert engine.fire(0) == ()
    assert engine.client_unmask() == (Signal(INTX),)
    assert engine.eois == 0
    assert engine.client_unmask() == (UnmaskLine(0),)  # now it is the EOI
    assert engine.eois == 1


def test_mask_then_unmask_after_signal_is_an_eoi() -> None:
    # QEMU's INTx route change: MASK, then UNMASK(NONE).
    engine = live_intx(LEVEL, LEVEL)
    engine.fire(0)
    engine.fire(1)
    assert engine.client_mask() == ()
    assert engine.client_unmask() == (UnmaskLine(0), Signal(INTX))
    assert engine.active == 1


def test_intx_not_enabled_records_fires_and_delivers_on_enable() -> None:
    engine = IrqEngine([EDGE, EDGE])
    assert engine.fire(1) == ()
    assert engine.fire(0) == ()
    assert engine.active == 1 and engine.pending == (0,)
    assert engine.intx_enable(True) == (Signal(INTX),)
    assert engine.client_unmask() == (Signal(INTX),)
    assert engine.active == 0


# ------------------------------------------------------------------- ack registers


def test_ack_before_unmask_completes_exactly_once() -> None:
    engine = live_intx(LEVEL_ACK, LEVEL)
    engine.fire(0)
    engine.fire(1)
    assert engine.ack(0) == ()
    assert engine.trapped_access() == ()
    assert engine.client_unmask() == (UnmaskLine(0), Signal(INTX))
    assert engine.ack(0) == ()
    assert engine.client_unmask() == (UnmaskLine(1),)
    assert engine.eois == 2 and engine.signals == 2


def test_unmask_before_ack_completes_exactly_once() -> None:
    engine = live_intx(LEVEL_ACK, LEVEL)
    engine.fire(0)
    engine.fire(1)
    assert engine.client_unmask() == ()
    assert engine.intx_asserted  # the device still asserts until the ack
    assert engine.client_unmask() == ()
    assert engine.ack(0) == (UnmaskLine(0), Signal(INTX))
    assert engine.trapped_access() == ()
    assert engine.ack(0) == ()
    assert engine.eois == 1 and engine.active == 1


def test_ack_of_held_or_pending_lines_is_service_by_polling() -> None:
    """A driver that polls with INTx disabled acks lines that were never delivered."""
    engine = live_intx(LEVEL_ACK, LEVEL_ACK, LEVEL_ACK)
    engine.set_intx_disable(True)
    engine.fire(0)
    engine.fire(1)
    engine.fire(2)
    # Pending: it leaves the queue and is unmasked; not an EOI, nothing delivered.
    assert engine.ack(1) == (UnmaskLine(1),)
    assert engine.pending == (2,) and engine.eois == 0
    # Active but held: its EOI completes at once; the next one becomes ACTIVE, still held.
    assert engine.ack(0) == (UnmaskLine(0),)
    assert engine.eois == 1 and engine.active == 2 and engine.pending == ()
    assert engine.trapped_access() == ()  # the same write: no second EOI
    # Released: exactly the one line left is delivered, and completes normally.
    assert engine.set_intx_disable(False) == (Signal(INTX),)
    assert engine.client_unmask() == ()
    assert engine.ack(2) == (UnmaskLine(2),)
    assert engine.active is None and engine.eois == 2


def test_ack_of_an_inactive_line_does_nothing() -> None:
    engine = live_intx(LEVEL_ACK, LEVEL_ACK)
    engine.fire(0)
    assert engine.ack(1) == ()
    assert engine.active == 0 and engine.eois == 0


def test_edge_line_with_ack_in_intx_route() -> None:
    engine = live_intx(EDGE_ACK)
    engine.fire(0)
    assert engine.ack(0) == ()
    assert engine.client_unmask() == ()  # EOI, no UnmaskLine for an edge line
    assert engine.eois == 1 and engine.active is None


# ------------------------------------------------------------------ MSI-X route


def test_msix_trapped_access_after_injection_completes_exactly_once() -> None:
    engine = live_msix(LEVEL, LEVEL)
    assert engine.trapped_access() == ()
    assert engine.fire(0) == (Signal(0),)
    assert engine.fire(1) == ()
    assert engine.pba == 0b10
    assert engine.trapped_access() == (UnmaskLine(0), Signal(1))
    assert engine.trapped_access() == (UnmaskLine(1),)
    assert engine.trapped_access() == ()
    assert engine.eois == 2 and engine.signals == 2


def test_msix_client_unmask_is_not_an_eoi() -> None:
    engine = live_msix(LEVEL)
    engine.fire(0)
    assert engine.client_unmask() == ()
    assert engine.active == 0 and not engine.intx_asserted


def test_msix_ack_line_ignores_first_access_rule_and_completes_on_ack() -> None:
    engine = live_msix(LEVEL_ACK, LEVEL)
    engine.fire(0)
    assert engine.trapped_access() == ()
    assert engine.ack(0) == (UnmaskLine(0),)
    assert engine.trapped_access() == ()
    assert engine.eois == 1


def test_one_access_never_completes_two_eois() -> None:
    engine = live_msix(LEVEL_ACK, LEVEL)
    engine.fire(0)
    engine.fire(1)
    # One guest write to line 0's ack register: ack, then the access itself.
    assert engine.ack(0) == (UnmaskLine(0), Signal(1))
    assert engine.trapped_access() == ()
    assert engine.active == 1
    # The next access is the EOI of line 1.
    assert engine.trapped_access() == (UnmaskLine(1),)
    assert engine.eois == 2


def test_one_write_covering_two_ack_registers_acknowledges_both() -> None:
    engine = live_msix(LEVEL_ACK, LEVEL_ACK)
    engine.fire(0)
    engine.fire(1)
    assert engine.ack(0) == (UnmaskLine(0), Signal(1))
    assert engine.ack(1) == (UnmaskLine(1),)
    assert engine.trapped_access() == ()
    assert engine.eois == 2 and engine.active is None


def test_ack_guard_is_cancelled_by_any_other_event() -> None:
    engine = live_msix(LEVEL_ACK, LEVEL)
    engine.fire(0)
    engine.fire(1)
    engine.ack(0)
    engine.fire(0)  # something else happened: the next access is a new one
    assert engine.trapped_access() == (UnmaskLine(1), Signal(0))


def test_msix_edge_bypasses_queue_and_never_becomes_active() -> None:
    engine = live_msix(LEVEL, EDGE)
    engine.fire(0)
    assert engine.fire(1) == (Signal(1),)
    assert engine.fire(1) == (Signal(1),)
    assert engine.line_state(1) is LineState.INACTIVE
    assert engine.active == 0 and engine.pending == ()


def test_msix_held_edge_is_in_pba_and_signalled_once_when_deliverable() -> None:
    engine = live_msix(EDGE, EDGE)
    engine.msix_vector_mask(1, True)
    assert engine.fire(1) == ()
    assert engine.fire(1) == ()  # coalesced into one pending bit
    assert engine.line_state(1) is LineState.PENDING
    assert engine.pba == 0b10
    assert engine.msix_vector_mask(1, False) == (Signal(1),)
    assert engine.pba == 0 and engine.line_state(1) is LineState.INACTIVE
    assert engine.msix_vector_mask(1, False) == ()
    assert engine.signals == 1 and engine.coalesced == 1


def test_msix_held_active_line_signalled_when_vector_becomes_deliverable() -> None:
    engine = IrqEngine([LEVEL, EDGE, LEVEL])
    engine.msix_enable(True)
    engine.vector_fd(1, True)
    engine.msix_function_mask(True)
    assert engine.fire(2) == ()
    assert engine.fire(1) == ()
    assert engine.fire(0) == ()
    assert engine.pba == 0b111
    assert engine.trapped_access() == ()  # not signalled: no EOI
    # The ACTIVE line first, then held edges by vector.
    assert engine.msix_function_mask(False) == (Signal(1),)
    assert engine.vector_fd(2, True) == (Signal(2),)
    assert engine.vector_fd(2, True) == ()
    assert engine.pba == 0b001
    engine.vector_fd(0, True)
    assert engine.trapped_access() == (UnmaskLine(2), Signal(0))


# ----------------------------------------------------- disable, reset, route switch


def test_reset_clears_everything_and_leaves_lines_masked() -> None:
    engine = live_intx(LEVEL, LEVEL, EDGE)
    engine.fire(0)
    engine.fire(1)
    engine.fire(2)
    engine.client_mask()
    engine.set_intx_disable(True)
    assert engine.reset() == ()
    assert engine.active is None and engine.pending == ()
    assert [engine.line_state(i) for i in range(3)] == [LineState.INACTIVE] * 3
    assert engine.device_masked == {0, 1}
    assert engine.route is Route.INTX and not engine.intx_asserted
    assert engine.signals == 1  # counters survive a reset
    # Both indexes and all masks are cleared: nothing is delivered until enabled.
    assert engine.fire(2) == ()
    assert engine.intx_enable(True) == (Signal(INTX), UnmaskLine(0), UnmaskLine(1))


def test_disable_drops_inflight_keeps_lines_masked_and_enable_unmasks_them() -> None:
    engine = live_intx(LEVEL, LEVEL, EDGE)
    engine.fire(0)
    engine.fire(1)
    engine.fire(2)
    engine.client_mask()
    assert engine.intx_enable(False) == ()
    assert engine.active is None and engine.pending == ()
    assert engine.device_masked == {0, 1}
    assert engine.intx_enable(False) == ()
    assert engine.fire(2) == ()  # recorded while disabled
    # Re-enable: the client mask was dropped with the index; the recorded edge is
    # delivered, then the masked level lines are unmasked to fire again.
    assert engine.intx_enable(True) == (Signal(INTX), UnmaskLine(0), UnmaskLine(1))


def test_route_switch_intx_msix_intx_loses_nothing_still_asserted() -> None:
    engine = IrqEngine([LEVEL, LEVEL, LEVEL_ACK])
    device = Device(engine)
    device.run(engine.intx_enable(True))
    for line in (0, 1, 2):
        device.raise_line(line)
    assert device.signals == [INTX]
    # QEMU enables MSI-X: INTx disabled first, then "MSI-X on, no vectors", then fds.
    device.run(engine.intx_enable(False))
    device.run(engine.msix_enable(True))
    assert queue_of(engine) == (Route.MSIX, 0, (1, 2))  # re-fired, in line order
    assert engine.pba == 0b111
    for vector in range(3):
        device.run(engine.vector_fd(vector, True))
    assert device.signals == [INTX, 0]
    device.lower_line(0)
    device.run(engine.trapped_access())
    assert device.signals == [INTX, 0, 1]
    # The guest disables MSI-X while 1 is in flight and 2 waits; INTx comes back.
    device.run(engine.msix_enable(False))
    assert queue_of(engine) == (Route.INTX, None, ())
    device.run(engine.intx_enable(True))
    assert queue_of(engine) == (Route.INTX, 1, (2,))
    assert device.signals == [INTX, 0, 1, INTX]
    device.lower_line(1)
    device.run(engine.client_unmask())
    device.lower_line(2)
    device.run(engine.ack(2))
    device.run(engine.client_unmask())
    assert device.signals == [INTX, 0, 1, INTX, INTX]
    assert engine.active is None and not device.masked and engine.device_masked == set()


def test_msix_enable_carries_fires_recorded_while_nothing_was_live() -> None:
    engine = IrqEngine([EDGE, LEVEL, EDGE])
    engine.intx_enable(True)
    engine.intx_enable(False)
    engine.vector_fd(2, True)  # stored while MSI-X is off
    engine.fire(2)
    engine.fire(1)
    engine.fire(0)
    assert engine.active == 2 and engine.pending == (1, 0)
    # Replayed in order under the MSI-X rules: edge 2 goes straight out on vector 2,
    # level 1 becomes ACTIVE (held: no fd), edge 0 is held in the PBA.
    assert engine.msix_enable(True) == (Signal(2),)
    assert engine.active == 1 and not engine.pending
    assert engine.pba == 0b011
    assert engine.device_masked == {1}


def test_msix_enable_abandons_a_signalled_intx_activation() -> None:
    engine = live_intx(LEVEL, LEVEL, EDGE)
    engine.fire(0)
    engine.fire(1)
    engine.fire(2)
    # MSI-X enabled while INTx is still live: line 0 was seen by the guest on INTx,
    # so its activation is dropped and its line unmasked (it fires again if still
    # asserted); the never-signalled lines 1 and 2 move over.
    assert engine.msix_enable(True) == (UnmaskLine(0),)
    assert engine.active == 1 and engine.pba == 0b110


def test_msix_disable_with_intx_enabled_unmasks_at_once() -> None:
    engine = live_msix(LEVEL, LEVEL)
    engine.intx_enable(True)  # not the route: only recorded
    engine.fire(0)
    engine.fire(1)
    assert engine.msix_enable(False) == (UnmaskLine(0), UnmaskLine(1))
    assert engine.route is Route.INTX
    engine.msix_enable(True)
    assert engine.fire(0) == ()  # vector fds were dropped with the index


def test_intx_enable_in_msix_route_only_records_the_flag() -> None:
    engine = live_msix(LEVEL)
    assert engine.intx_enable(True) == ()
    engine.fire(0)
    assert engine.intx_enable(False) == ()
    assert engine.active == 0


# ---------------------------------------------------------- inputs and hot path


def test_illegal_inputs_raise_value_error() -> None:
    engine = IrqEngine([LEVEL, LEVEL_ACK])
    with pytest.raises(ValueError):
        engine.fire(2)
    with pytest.raises(ValueError):
        engine.fire(-1)
    with pytest.raises(ValueError):
        engine.ack(2)
    with pytest.raises(ValueError):
        engine.ack(0)  # line 0 has no ack register
    with pytest.raises(ValueError):
        engine.msix_vector_mask(2, True)
    with pytest.raises(ValueError):
        engine.vector_fd(-1, True)
    with pytest.raises(ValueError):
        engine.line_state(5)


def test_idle_events_return_the_shared_empty_result() -> None:
    engine = live_msix(LEVEL)
    assert engine.trapped_access() is NO_ACTIONS
    engine.fire(0)
    engine.trapped_access()
    assert engine.trapped_access() is NO_ACTIONS
    assert engine.client_mask() is NO_ACTIONS


# ------------------------------------------------------------------- exact EOI


def exact_intx(*specs: LineSpec) -> IrqEngine:
    engine = live_intx(*specs)
    assert engine.set_exact_eoi(True) is NO_ACTIONS
    return engine


@pytest.mark.parametrize("order", ["eoi-then-unmask", "unmask-then-eoi"])
def test_exact_eoi_needs_unmask_and_irq_eoi_in_either_order(order: str) -> None:
    engine = exact_intx(LEVEL, LEVEL)
    assert engine.fire(0) == (Signal(INTX),)
    assert engine.fire(1) == ()
    assert engine.active_read() == ()  # the guest's INTA handler reads IRQ_ACTIVE
    if order == "eoi-then-unmask":
        assert engine.eoi(0) == ()
        assert engine.active == 0
        assert engine.client_unmask() == (UnmaskLine(0), Signal(INTX))
    else:
        assert engine.client_unmask() == ()
        assert engine.active == 0, "the unmask alone must not end an exact-EOI interrupt"
        assert engine.eoi(0) == (UnmaskLine(0), Signal(INTX))
    assert engine.active == 1 and engine.eois == 1 and engine.ignored_eois == 0


def test_exact_eoi_intx_lowered_before_the_guest_took_it_is_raised_again() -> None:
    """QEMU without KVM ends INTx at the first BAR access after it, whoever makes it: an
    unmask before the guest read IRQ_ACTIVE means the guest never saw the interrupt."""
    engine = exact_intx(LEVEL, LEVEL)
    assert engine.fire(0) == (Signal(INTX),)
    assert engine.fire(1) == ()
    assert engine.client_unmask() == (Signal(INTX),)  # another driver's BAR access lowered it
    assert engine.client_unmask() == (Signal(INTX),)  # and again
    assert engine.resignals == 2 and engine.active == 0
    assert engine.active_read() == ()  # now the guest takes it
    assert engine.client_unmask() == ()  # the unmask half of its EOI
    assert engine.eoi(0) == (UnmaskLine(0), Signal(INTX))
    assert engine.active == 1 and engine.eois == 1
    assert engine.client_unmask() == (Signal(INTX),)  # line 1 not taken yet either


def test_active_read_changes_nothing_outside_exact_intx() -> None:
    engine = live_intx(LEVEL)
    engine.fire(0)
    assert engine.active_read() == ()
    assert engine.client_unmask() == (UnmaskLine(0),)  # the plain rule: the unmask is the EOI
    assert engine.resignals == 0


def test_exact_eoi_turns_off_the_first_access_heuristic_in_msix() -> None:
    engine = live_msix(LEVEL, LEVEL)
    engine.set_exact_eoi(True)
    assert engine.fire(0) == (Signal(0),)
    assert engine.trapped_access() == ()
    assert engine.active == 0
    assert engine.eoi(0) == (UnmaskLine(0),)
    assert engine.trapped_access() == ()  # the IRQ_EOI write itself: no second EOI
    assert engine.eois == 1


def test_exact_eoi_ignores_the_ack_register_of_the_active_line() -> None:
    engine = exact_intx(LEVEL_ACK)
    engine.fire(0)
    engine.active_read()
    assert engine.ack(0) == ()
    assert engine.client_unmask() == ()
    assert engine.active == 0
    assert engine.eoi(0) == (UnmaskLine(0),)


def test_ack_of_a_queued_line_still_dequeues_under_exact_eoi() -> None:
    engine = exact_intx(LEVEL, LEVEL_ACK)
    engine.fire(0)
    engine.fire(1)
    assert engine.ack(1) == (UnmaskLine(1),)
    assert engine.pending == ()


def test_bad_irq_eoi_writes_are_ignored_and_counted() -> None:
    engine = exact_intx(LEVEL, LEVEL)
    assert engine.eoi(0) == ()  # nothing active
    engine.fire(0)
    engine.fire(1)
    assert engine.eoi(1) == ()  # PENDING, not ACTIVE: no dequeue
    assert engine.eoi(2) == () and engine.eoi(-1) == () and engine.eoi(0xFFFFFFFF) == ()
    assert engine.ignored_eois == 5
    assert engine.active == 0 and engine.pending == (1,)


def test_irq_eoi_without_exact_is_ignored() -> None:
    engine = live_intx(LEVEL)
    engine.fire(0)
    assert engine.eoi(0) == ()
    assert engine.ignored_eois == 1
    assert engine.client_unmask() == (UnmaskLine(0),)  # the seed's rule still holds


def test_exact_flag_is_latched_when_the_line_is_signalled() -> None:
    engine = live_intx(LEVEL, LEVEL)
    engine.fire(0)  # signalled before exact: the seed's rule to its end
    engine.set_exact_eoi(True)
    assert engine.eoi(0) == () and engine.ignored_eois == 1
    engine.fire(1)
    assert engine.client_unmask() == (UnmaskLine(0), Signal(INTX))  # line 1 now exact
    engine.set_exact_eoi(False)
    engine.active_read()  # the guest takes line 1
    assert engine.client_unmask() == ()
    assert engine.eoi(1) == (UnmaskLine(1),)


def test_held_line_follows_the_current_flag_and_irq_eoi_services_it_by_polling() -> None:
    engine = exact_intx(LEVEL)
    engine.set_intx_disable(True)
    engine.fire(0)
    assert engine.eoi(0) == (UnmaskLine(0),)  # polled and EOId while held: never delivered
    assert engine.set_intx_disable(False) == ()
    assert engine.signals == 0 and engine.eois == 1


def test_reset_clears_exact_eoi() -> None:
    engine = exact_intx(LEVEL)
    assert engine.exact_eoi
    engine.reset()
    assert not engine.exact_eoi


# --------------------------------------------------------- differential testing

MAX_LINES = 5
SPECS = st.lists(st.builds(LineSpec, st.booleans(), st.booleans()), min_size=1, max_size=MAX_LINES)
INDEX = st.integers(min_value=0, max_value=MAX_LINES - 1)
HELD = st.sampled_from([False, False, True])  # start held by a mask one time in three
CONFIG_EVENTS = (
    "client_mask",
    "set_intx_disable",
    "intx_enable",
    "msix_enable",
    "msix_function_mask",
    "msix_vector_mask",
    "vector_fd",
    "set_exact_eoi",
    "reset",
)
#: Values a guest may write to IRQ_EOI: every line, and numbers that are none.
EOI_VALUE = st.integers(min_value=-1, max_value=MAX_LINES + 1) | st.just(0xFFFFFFFF)


def engine_observable(engine: IrqEngine) -> dict[str, object]:
    return {
        "route": engine.route,
        "active": engine.active,
        "pending": engine.pending,
        "intx_asserted": engine.intx_asserted,
        "pba": engine.pba,
        "line_states": tuple(engine.line_state(i) for i in range(len(engine.specs))),
        "device_masked": engine.device_masked,
        "signals": engine.signals,
        "eois": engine.eois,
        "coalesced": engine.coalesced,
        "exact_eoi": engine.exact_eoi,
        "active_needs_irq_eoi": engine.active_needs_irq_eoi,
        "ignored_eois": engine.ignored_eois,
    }


class EngineVersusReference(RuleBasedStateMachine):
    """Random interleavings of every event; engine and reference must agree."""

    engine_class: type[IrqEngine] = IrqEngine

    def __init__(self) -> None:
        super().__init__()
        self.engine: IrqEngine
        self.ref: ReferenceIrq
        self.n = 0

    @initialize(specs=SPECS, start=st.sampled_from(["cold", "intx", "msix"]), held=HELD)
    def setup(self, specs: list[LineSpec], start: str, held: bool) -> None:
        """Start cold (power-on), or with a live route, deliverable or held by a mask:
        most interesting interleavings need several enabling events before a fire."""
        self.engine = self.engine_class(specs)
        self.ref = ReferenceIrq(specs)
        self.n = len(specs)
        self.ack_lines = [i for i, s in enumerate(specs) if s.has_ack]
        if start == "intx":
            self.step("intx_enable", True)
            if held:
                self.step("client_mask")
        elif start == "msix":
            self.step("msix_enable", True)
            for vector in range(self.n):
                self.step("vector_fd", vector, True)
            if held:
                self.step("msix_function_mask", True)

    def step(self, event: str, *args: Any) -> None:
        got = getattr(self.engine, event)(*args)
        want = getattr(self.ref, event)(*args)
        assert list(got) == want, f"{event}{args}: engine {got} reference {want}"
        assert engine_observable(self.engine) == self.ref.observable(), f"after {event}{args}"

    @rule(index=INDEX)
    def fire(self, index: int) -> None:
        self.step("fire", index % self.n)

    @rule(indexes=st.lists(INDEX, min_size=2, max_size=3))
    def fire_several(self, indexes: list[int]) -> None:
        """Several lines fire at once (builds queues quickly)."""
        for index in indexes:
            self.step("fire", index % self.n)

    @rule()
    def client_unmask(self) -> None:
        self.step("client_unmask")

    @precondition(lambda self: self.ack_lines)
    @rule(index=INDEX)
    def ack_only(self, index: int) -> None:
        self.step("ack", self.ack_lines[index % len(self.ack_lines)])

    @precondition(lambda self: self.ack_lines)
    @rule(index=INDEX)
    def write_ack_register(self, index: int) -> None:
        """One guest write to an ack register: the caller's documented call order."""
        self.step("ack", self.ack_lines[index % len(self.ack_lines)])
        self.step("trapped_access")

    @rule()
    def trapped_access(self) -> None:
        self.step("trapped_access")

    @rule(value=EOI_VALUE)
    def write_irq_eoi(self, value: int) -> None:
        """The guest writes a number to IRQ_EOI: eoi(), then the access itself."""
        self.step("eoi", value)
        self.step("trapped_access")

    @rule()
    def read_irq_active(self) -> None:
        """The guest reads IRQ_ACTIVE (takes the interrupt), a trapped access."""
        self.step("active_read")
        self.step("trapped_access")

    @rule()
    def write_irq_eoi_for_active(self) -> None:
        """What a correct guest driver writes: the ACTIVE line (most useful case)."""
        active = self.engine.active
        self.step("eoi", 0 if active is None else active)
        self.step("trapped_access")

    # Configuration events share two rules, so that the delivery events above (which
    # need a live route to matter) make up most of each run.
    @rule(event=st.sampled_from(CONFIG_EVENTS), index=INDEX, flag=st.booleans())
    def configure(self, event: str, index: int, flag: bool) -> None:
        if event in ("client_mask", "reset"):
            self.step(event)
        elif event in ("msix_vector_mask", "vector_fd"):
            self.step(event, index % self.n, flag)
        else:
            self.step(event, flag)

    @rule(event=st.sampled_from(CONFIG_EVENTS), index=INDEX, flag=st.booleans())
    def configure_again(self, event: str, index: int, flag: bool) -> None:
        self.configure(event, index, flag)

    @invariant()
    def engine_is_consistent(self) -> None:
        if self.n == 0:
            return  # before setup
        engine = self.engine
        states = [engine.line_state(i) for i in range(self.n)]
        actives = [i for i, s in enumerate(states) if s is LineState.ACTIVE]
        assert actives == ([] if engine.active is None else [engine.active])
        assert all(states[i] is LineState.PENDING for i in engine.pending)
        assert len(set(engine.pending)) == len(engine.pending)
        assert engine.active is not None or not engine.pending
        recorded = set(actives) | set(engine.pending)
        levels = {i for i in range(self.n) if engine.specs[i].automasked}
        assert recorded & levels <= engine.device_masked <= levels
        if self.ref.msix_on or self.ref.intx_on:
            # A live route keeps masked only the lines that wait for their EOI.
            assert engine.device_masked == recorded & levels
        if engine.route is Route.MSIX:
            assert all(engine.specs[i].automasked for i in recorded)
        else:
            assert engine.pba == 0
            assert set(states[i] for i in range(self.n) if i not in recorded) <= {
                LineState.INACTIVE
            }


EngineVersusReference.TestCase.settings = settings(
    max_examples=2000,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestEngineVersusReference = EngineVersusReference.TestCase


# ------------------------------------------------------------- no-loss property

SERVICE_ROUNDS = 4 * MAX_LINES + 4


def service(device: Device, on_msix: bool) -> None:
    """Make one route live and deliverable, then act as the guest: for each interrupt,
    quiet the source, acknowledge it, and EOI (exactly one EOI each), until nothing is
    ACTIVE."""
    engine = device.engine
    n = len(engine.specs)
    if on_msix:
        device.run(engine.msix_enable(True))
        device.run(engine.msix_function_mask(False))
        for vector in range(n):
            device.run(engine.msix_vector_mask(vector, False))
            device.run(engine.vector_fd(vector, True))
    else:
        device.run(engine.msix_enable(False))
        device.run(engine.intx_enable(True))
        device.run(engine.set_intx_disable(False))
    device.run(engine.client_unmask())
    for _ in range(SERVICE_ROUNDS):
        line = engine.active
        if line is None:
            return
        assert engine.pba & (1 << line) == 0 and (on_msix or engine.intx_asserted)
        eois = engine.eois
        device.lower_line(line)
        exact = engine.active_needs_irq_eoi
        if engine.specs[line].has_ack:
            device.run(engine.ack(line))
        device.run(engine.trapped_access())
        if exact:  # the guest bridge driver's IRQ_EOI write (itself a trapped access)
            device.run(engine.eoi(line))
            device.run(engine.trapped_access())
        if not on_msix and engine.active == line:
            device.run(engine.client_unmask())  # QEMU's UNMASK, if not already sent
        assert engine.eois == eois + 1, "one serviced interrupt must be exactly one EOI"
    raise AssertionError("interrupts still ACTIVE after servicing every line")


class NothingAssertedIsLost(RuleBasedStateMachine):
    """A device model drives the engine through random histories.  After every step,
    a copy is serviced on each route: every level line that is still asserted must be
    delivered, and every line must end up unmasked.  This is independent of the
    reference model: it checks the engine against the device contract."""

    def __init__(self) -> None:
        super().__init__()
        self.device: Device

    @initialize(specs=SPECS, start=st.sampled_from(["cold", "intx", "msix"]))
    def setup(self, specs: list[LineSpec], start: str) -> None:
        engine = IrqEngine(specs)
        self.device = Device(engine)
        if start == "intx":
            self.device.run(engine.intx_enable(True))
        elif start == "msix":
            self.device.run(engine.msix_enable(True))

    @property
    def n(self) -> int:
        return len(self.device.specs)

    @rule(index=INDEX)
    def raise_line(self, index: int) -> None:
        self.device.raise_line(index % self.n)

    @rule(index=INDEX)
    def lower_line(self, index: int) -> None:
        self.device.lower_line(index % self.n)

    @rule(index=INDEX)
    def guest_access(self, index: int) -> None:
        """A trapped access; a write to the ack register of line `index` if it has one."""
        engine = self.device.engine
        line = index % self.n
        if engine.specs[line].has_ack:
            self.device.run(engine.ack(line))
        self.device.run(engine.trapped_access())

    @rule()
    def client_unmask(self) -> None:
        self.device.run(self.device.engine.client_unmask())

    @rule()
    def read_irq_active(self) -> None:
        """The guest reads IRQ_ACTIVE (a trapped read): it takes the interrupt."""
        engine = self.device.engine
        self.device.run(engine.active_read())
        self.device.run(engine.trapped_access())

    @rule(value=EOI_VALUE)
    def irq_eoi(self, value: int) -> None:
        """The guest writes IRQ_EOI (a trapped write)."""
        engine = self.device.engine
        self.device.run(engine.eoi(value))
        self.device.run(engine.trapped_access())

    @rule(event=st.sampled_from(CONFIG_EVENTS), index=INDEX, flag=st.booleans())
    def configure(self, event: str, index: int, flag: bool) -> None:
        engine = self.device.engine
        if event == "reset":
            self.device.reset()
        elif event == "client_mask":
            self.device.run(engine.client_mask())
        elif event in ("msix_vector_mask", "vector_fd"):
            self.device.run(getattr(engine, event)(index % self.n, flag))
        else:
            self.device.run(getattr(engine, event)(flag))

    @invariant()
    def servicing_drains_everything(self) -> None:
        if not hasattr(self, "device"):
            return  # before setup
        levels = {i for i, spec in enumerate(self.device.specs) if spec.automasked}
        for on_msix in (False, True):
            device = copy.deepcopy(self.device)
            service(device, on_msix)
            assert not device.asserted & levels, "an asserted level line was never delivered"
            assert not device.masked and not device.engine.device_masked
            assert device.engine.pba == 0


NothingAssertedIsLost.TestCase.settings = settings(
    max_examples=400,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestNothingAssertedIsLost = NothingAssertedIsLost.TestCase


# -------------------------------------------------- the differential test can fail


class _EngineIgnoringAckMaps(IrqEngine):
    """Deliberately broken: on route MSIX the first-access EOI also takes lines that
    have an ack register (the access is treated as if it were their ack)."""

    def trapped_access(self) -> Actions:
        active = self.active
        if active is not None and self.route is Route.MSIX and self.specs[active].has_ack:
            return self.ack(active)
        return super().trapped_access()


class _BrokenMachine(EngineVersusReference):
    engine_class = _EngineIgnoringAckMaps


def test_differential_test_catches_a_broken_engine() -> None:
    # Generation only (no shrinking): the point is that a failure is found at all.
    with pytest.raises(AssertionError):
        run_state_machine_as_test(
            _BrokenMachine,
            settings=settings(
                max_examples=2000,
                stateful_step_count=40,
                deadline=None,
                database=None,
                derandomize=True,
                phases=[Phase.generate],
                suppress_health_check=list(HealthCheck),
            ),
        )
