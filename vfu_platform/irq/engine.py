# SPDX-License-Identifier: BSD-3-Clause
"""The IRQ engine: vfio-platform interrupt semantics as a pure state machine.

QEMU's removed `hw/vfio/platform.c` (the seed) kept one platform IRQ ACTIVE at a time,
queued the others in FIFO order, and took the guest's EOI from the first trapped
region access.  This module carries those rules on the server side, for the two ways
the bridge delivers platform lines to a PCI client:

* route INTX: every line is multiplexed onto the single PCI INTx ("intx");
* route MSIX: line k is delivered on MSI-X vector k.

The engine does no I/O.  Each event method returns the actions the caller must carry
out, in order: `Signal(target)` (write the client's trigger eventfd) and
`UnmaskLine(line)` (unmask the host/simulated line).  Queries expose what the bridge
shows the guest (PCI STATUS.INTx, the PBA) and what a trace shows a person.

Rules (the spec; `tests/irq_reference.py` is an independent model of the same):

fire(line)
    An automasked (level) line is masked on the device when it fires.  A fire of a
    line that is already ACTIVE or PENDING is coalesced.  Route MSIX, edge line: it
    bypasses the queue, is signalled at once if its vector is deliverable, else held
    (PENDING, shown in the PBA) until it is.  Otherwise: if a line is ACTIVE the new
    one joins the FIFO queue (PENDING), else it becomes ACTIVE and is signalled if
    deliverable, else held until it is (exactly one signal per activation).

EOI completion
    ACTIVE -> INACTIVE, `UnmaskLine` if automasked, then the queue head becomes
    ACTIVE and is signalled if deliverable.  The EOI comes from:
    route INTX: `client_unmask()` after the signal; for a line with an ack register,
    both the client unmask and `ack(line)` (either order).
    route MSIX: `ack(line)` for a line with an ack register, else the first
    `trapped_access()` after the signal (the seed's heuristic).

Exact EOI (`set_exact_eoi`, the IRQ page's IRQ_CTRL.EXACT_EOI; docs/guest-descriptor.md)
    While the flag governs an activation, its EOI source is `eoi(line)` (the guest's
    IRQ_EOI write) instead of the above: route INTX needs both the client unmask and
    `eoi(line)` (either order, the ack-register rule), route MSIX `eoi(line)` alone;
    `ack()` and `trapped_access()` then never complete it.  The flag in force when a
    line is signalled governs that activation to its end (a change never alters the
    rules of an interrupt the guest already sees); a line not yet signalled follows
    the current flag.  `eoi(line)` of the ACTIVE line while its delivery is held
    completes the EOI without delivering it, as `ack()` does.  `eoi(x)` is ignored
    and counted (`ignored_eois`) when x is out of range, is not the ACTIVE line, or
    the flag does not govern that activation: x is a guest-written number, never a
    caller bug.  An `ack()` of a queued line still takes it out of the queue.
    `reset()` clears the flag.
    Route INTX under exact EOI, INTx is a level that stays up until the EOI: the guest
    takes an interrupt by reading IRQ_ACTIVE (`active_read()`, like an interrupt
    controller's acknowledge). A client unmask that comes after an INTx signal the
    guest has not taken means the client lowered INTx before the guest saw it (QEMU
    without KVM ends INTx at the first BAR access after it, whoever makes it), so the
    engine signals INTx again instead of recording the unmask; an unmask after the
    guest took it counts as the unmask half of the EOI, as above.

Liveness: a route is live when its index is enabled (route MSIX implies MSI-X is
enabled; route INTX is live while the INTx trigger is installed).

* While nothing is live, fires are recorded exactly as above (queue order, INTX
  rules) but nothing is signalled.
* When a route becomes live, a recorded ACTIVE line is signalled if deliverable, then
  every automasked line the engine knows to be masked on the device and that is not
  recorded (ACTIVE/PENDING) gets `UnmaskLine`, in ascending order, so a level line
  that is still asserted fires again.  Initially and after `reset()` all automasked
  lines count as masked.  Recorded lines stay masked until their own EOI.
* When the live route stops being live (INTx disabled in route INTX, MSI-X
  disabled), ACTIVE, queue and held edges are dropped; their level lines stay masked
  (no `UnmaskLine`) until a route goes live again.
* `msix_enable(True)` (route INTX -> MSIX) drops nothing that was never signalled:
  the recorded lines that were not signalled (a held ACTIVE line, then the queue)
  are fired again, in order, under the MSIX rules.  An INTx activation already
  signalled is abandoned: the guest saw it; its level line is unmasked as above.

Transitions (for traces; off unless `record_transitions(True)`): the engine then also
keeps a list of what happened to each line, in order, as `Transition(kind, line)`;
`take_transitions()` hands it over and empties it.  Kinds: "raised" (a fire taken in),
"coalesced" (a fire of a line already ACTIVE/PENDING), "queued" (PENDING: behind the
ACTIVE line, or a held MSI-X edge), "delivered" (signalled; `target` is "intx" or the
vector), "eoi" (its EOI completed), "dequeued" (acked while queued), "dropped" (forgotten
by a route going down or a reset).  Recording changes no decision.

The event that EOIs one line never EOIs the next one: an `ack()` or `eoi()` that
completes an EOI makes the following `trapped_access()` (the same guest write, the caller's
contract is to call `ack` then `trapped_access`) a no-op.  Any other event in between
cancels that.  An explicit ack is never suppressed, though: one write that covers the
ack registers of two lines acknowledges both sources on the device, so `ack(a)` then
`ack(b)` may complete two EOIs (else b would wait for an ack that already happened).
"""
from __future__ import annotations

import enum
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

#: The INTx signal target.
INTX: Final = "intx"


class LineState(enum.Enum):
    INACTIVE = "inactive"
    ACTIVE = "active"
    #: In the FIFO queue, or (route MSIX) an edge line held until its vector is
    #: deliverable.
    PENDING = "pending"


class Route(enum.Enum):
    INTX = "intx"
    MSIX = "msix"


@dataclass(frozen=True, slots=True)
class LineSpec:
    """One platform IRQ line.

    automasked: a level line; the device masks it when it fires and it stays masked
    until an `UnmaskLine`.  has_ack: the line has an acknowledge register whose
    trapped write the caller reports with `ack(line)`.
    """

    automasked: bool
    has_ack: bool = False


@dataclass(frozen=True, slots=True)
class Signal:
    """Write the client's trigger eventfd: INTx ("intx") or MSI-X vector `target`."""

    target: Literal["intx"] | int


@dataclass(frozen=True, slots=True)
class UnmaskLine:
    """Unmask platform line `line` on the device (it fires again if still asserted)."""

    line: int


@dataclass(frozen=True, slots=True)
class Transition:
    """What happened to one line (see "Transitions" in the module docs)."""

    kind: Literal["raised", "coalesced", "queued", "delivered", "eoi", "dequeued", "dropped"]
    line: int
    #: for "delivered": "intx" or the MSI-X vector
    target: Literal["intx"] | int | None = None


Action: TypeAlias = Signal | UnmaskLine
Actions: TypeAlias = tuple[Action, ...]

#: Returned by every event that has nothing to do (shared, allocation-free).
NO_ACTIONS: Final[Actions] = ()

_INACTIVE: Final = LineState.INACTIVE
_ACTIVE: Final = LineState.ACTIVE
_PENDING: Final = LineState.PENDING


def _result(out: list[Action]) -> Actions:
    return tuple(out) if out else NO_ACTIONS


class IrqEngine:
    """Active/pending/EOI state for `len(specs)` platform lines (see module docs).

    Line and vector numbers outside 0..N-1 raise ValueError, as does `ack()` for a
    line without an ack register: both are the caller's bugs, not the peer's.
    """

    __slots__ = (
        "_specs", "_n", "_signal_intx", "_signal_vector", "_unmask_line",
        "_state", "_active", "_signalled", "_unmask_seen", "_ack_seen", "_queue",
        "_held", "_masked", "_route", "_intx_enabled", "_client_masked",
        "_intx_disabled", "_msix_enabled", "_function_masked", "_vector_masked",
        "_vector_fd", "_access_spent", "_signals", "_eois", "_coalesced",
        "_exact", "_active_exact", "_ignored_eois", "_taken", "_resignals", "_log",
    )

    def __init__(self, specs: Sequence[LineSpec]) -> None:
        self._specs: tuple[LineSpec, ...] = tuple(specs)
        self._n = len(self._specs)
        # Actions are immutable; build each one once instead of on every event.
        self._signal_intx = Signal(INTX)
        self._signal_vector = tuple(Signal(v) for v in range(self._n))
        self._unmask_line = tuple(UnmaskLine(line) for line in range(self._n))
        self._signals = 0
        self._eois = 0
        self._coalesced = 0
        self._ignored_eois = 0
        #: transitions since the last take_transitions(), or None while not recording
        self._log: list[Transition] | None = None
        self._clear()

    def _clear(self) -> None:
        """Power-on state: nothing recorded, indexes disabled, level lines masked."""
        self._state: list[LineState] = [_INACTIVE] * self._n
        self._active: int | None = None
        self._signalled = False  # the ACTIVE line's Signal was emitted
        self._unmask_seen = False  # route INTX, ack line or exact EOI: client unmask seen
        self._ack_seen = False  # route INTX, ack line or exact EOI: ack (IRQ_EOI) seen
        self._queue: deque[int] = deque()
        self._held: set[int] = set()  # route MSIX: edge lines waiting for their vector
        # Automasked lines the engine knows to be masked on the device.
        self._masked: set[int] = {i for i, s in enumerate(self._specs) if s.automasked}
        self._route = Route.INTX
        self._intx_enabled = False
        self._client_masked = False
        self._intx_disabled = False
        self._msix_enabled = False
        self._function_masked = False
        self._vector_masked: list[bool] = [False] * self._n
        self._vector_fd: list[bool] = [False] * self._n
        self._access_spent = False
        self._exact = False  # IRQ_CTRL.EXACT_EOI
        self._active_exact = False  # the flag latched when the ACTIVE line was signalled
        self._taken = False  # route INTX, exact: the guest read IRQ_ACTIVE since the last signal
        self._resignals = 0  # INTx signalled again: lowered by the client before the guest took it

    # ------------------------------------------------------------------ events

    def fire(self, line: int) -> Actions:
        """The line's trigger fired (an automasked line is now masked on the device)."""
        self._check_line(line)
        self._access_spent = False
        if self._specs[line].automasked:
            self._masked.add(line)
        if self._state[line] is not _INACTIVE:
            self._coalesced += 1
            if self._log is not None:
                self._log.append(Transition("coalesced", line))
            return NO_ACTIONS
        if self._log is not None:
            self._log.append(Transition("raised", line))
        out: list[Action] = []
        self._record(line, out)
        return _result(out)

    def client_unmask(self) -> Actions:
        """SET_IRQS(INTx, UNMASK), as a message or a resamplefd signal."""
        self._access_spent = False
        self._client_masked = False
        active = self._active
        if active is None or self._route is not Route.INTX:
            return NO_ACTIONS
        out: list[Action] = []
        if not self._signalled:
            self._signal_active(out)  # it was held by the client mask
        elif self._ack_seen or not (self._active_exact or self._specs[active].has_ack):
            self._complete_eoi(out)
        elif self._active_exact and not self._taken:
            self._resignals += 1  # lowered before the guest took it: raise it again
            self._emit(self._signal_intx, out, active)
        else:
            self._unmask_seen = True
        return _result(out)

    def active_read(self) -> Actions:
        """The guest read IRQ_ACTIVE: it has taken the INTx signalled last (exact EOI)."""
        if self._active is not None and self._signalled:
            self._taken = True
        return NO_ACTIONS

    def client_mask(self) -> Actions:
        """SET_IRQS(INTx, MASK): hold INTx delivery."""
        self._access_spent = False
        self._client_masked = True
        return NO_ACTIONS

    def ack(self, line: int) -> Actions:
        """A trapped write hit `line`'s acknowledge register (call before trapped_access)."""
        self._check_line(line)
        if not self._specs[line].has_ack:
            raise ValueError(f"IRQ line {line} has no ack register")
        self._access_spent = False
        out: list[Action] = []
        if line == self._active and self._governed_by_exact():
            return NO_ACTIONS  # exact EOI: only IRQ_EOI ends this activation
        if line == self._active and not self._signalled:
            # Serviced by polling while its delivery was held (INTx disabled, masked,
            # no vector): the EOI completes and nothing is delivered.  Signalling it
            # later would raise an interrupt the driver finds nothing for, and in the
            # INTx route that activation could then never complete.
            self._complete_eoi(out)
            self._access_spent = True
            return _result(out)
        if self._state[line] is _PENDING and line in self._queue:
            # Acknowledged before its turn: it leaves the queue (not an EOI; the same
            # write still counts as a trapped access for the ACTIVE line).
            self._queue.remove(line)
            self._state[line] = _INACTIVE
            if self._log is not None:
                self._log.append(Transition("dequeued", line))
            if self._specs[line].automasked:
                self._masked.discard(line)
                out.append(self._unmask_line[line])
            return _result(out)
        if line != self._active:
            return NO_ACTIONS
        if self._route is Route.INTX and not self._unmask_seen:
            self._ack_seen = True
            return NO_ACTIONS
        self._complete_eoi(out)
        self._access_spent = True
        return _result(out)

    def eoi(self, line: int) -> Actions:
        """The guest wrote `line` to IRQ_EOI (any int; see "Exact EOI" in the module docs)."""
        self._access_spent = False
        if line != self._active or not self._governed_by_exact():
            self._ignored_eois += 1
            return NO_ACTIONS
        out: list[Action] = []
        if self._signalled and self._route is Route.INTX and not self._unmask_seen:
            self._ack_seen = True
            return NO_ACTIONS
        self._complete_eoi(out)  # held (serviced by polling), MSIX, or INTX after the unmask
        self._access_spent = True
        return _result(out)

    def set_exact_eoi(self, flag: bool) -> Actions:
        """IRQ_CTRL.EXACT_EOI: governs activations signalled from now on."""
        self._access_spent = False
        self._exact = flag
        return NO_ACTIONS

    def trapped_access(self) -> Actions:
        """Any trapped region access: the seed's first-access EOI (route MSIX only)."""
        if self._access_spent:
            self._access_spent = False
            return NO_ACTIONS
        active = self._active
        if (
            active is None
            or not self._signalled
            or self._route is not Route.MSIX
            or self._specs[active].has_ack
            or self._active_exact
        ):
            return NO_ACTIONS
        out: list[Action] = []
        self._complete_eoi(out)
        return _result(out)

    def set_intx_disable(self, flag: bool) -> Actions:
        """PCI COMMAND.INTX_DISABLE (bit 10): hold INTx delivery while set."""
        self._access_spent = False
        self._intx_disabled = flag
        if flag:
            return NO_ACTIONS
        out: list[Action] = []
        self._release(out)
        return _result(out)

    def intx_enable(self, flag: bool) -> Actions:
        """The INTx trigger was installed (True) / removed or the index disabled (False).

        Only a change acts: enabling an enabled index is a no-op, and so is disabling a
        disabled one (fires recorded meanwhile are kept).  Disabling also clears the
        client INTx mask, as an index disable drops its masking state.
        """
        self._access_spent = False
        if not flag:
            self._client_masked = False
            if self._intx_enabled and self._route is Route.INTX:
                self._drop_inflight()
            self._intx_enabled = False
            return NO_ACTIONS
        if self._intx_enabled:
            return NO_ACTIONS
        self._intx_enabled = True
        if self._route is not Route.INTX:
            return NO_ACTIONS
        out: list[Action] = []
        self._release(out)
        self._unmask_orphans(out)
        return _result(out)

    def msix_enable(self, flag: bool) -> Actions:
        """MSI-X index enabled (route -> MSIX) or disabled with count 0 (route -> INTX).

        Disabling always drops the vector fds and vector masks (that is what an index
        disable means), even when MSI-X was already off.
        """
        self._access_spent = False
        if not flag:
            self._vector_fd = [False] * self._n
            self._vector_masked = [False] * self._n
            if not self._msix_enabled:
                return NO_ACTIONS
            self._msix_enabled = False
            self._drop_inflight()
            self._route = Route.INTX
            if not self._intx_enabled:
                return NO_ACTIONS
            out: list[Action] = []
            self._unmask_orphans(out)
            return _result(out)
        if self._msix_enabled:
            return NO_ACTIONS
        carried: list[int] = []
        if self._active is not None and not self._signalled:
            carried.append(self._active)
        carried.extend(self._queue)
        log, self._log = self._log, None  # the carried lines go on: not "dropped"
        if log is not None and self._active is not None and self._signalled:
            log.append(Transition("dropped", self._active))  # the abandoned INTx activation
        self._drop_inflight()
        self._log = log
        self._msix_enabled = True
        self._route = Route.MSIX
        out = []
        for line in carried:
            self._record(line, out)
        self._unmask_orphans(out)
        return _result(out)

    def msix_function_mask(self, flag: bool) -> Actions:
        """MSI-X Function Mask (message control bit 14)."""
        self._access_spent = False
        self._function_masked = flag
        if flag:
            return NO_ACTIONS
        out: list[Action] = []
        self._release(out)
        return _result(out)

    def msix_vector_mask(self, vector: int, flag: bool) -> Actions:
        """Per-vector mask (SET_IRQS MASK/UNMASK on the MSI-X index, or the table)."""
        self._check_vector(vector)
        self._access_spent = False
        self._vector_masked[vector] = flag
        if flag:
            return NO_ACTIONS
        out: list[Action] = []
        self._release(out)
        return _result(out)

    def vector_fd(self, vector: int, present: bool) -> Actions:
        """The vector's trigger eventfd was installed (True) or de-assigned (False)."""
        self._check_vector(vector)
        self._access_spent = False
        self._vector_fd[vector] = present
        if not present:
            return NO_ACTIONS
        out: list[Action] = []
        self._release(out)
        return _result(out)

    def reset(self) -> Actions:
        """DEVICE_RESET or client loss: back to power-on; counters are kept."""
        if self._log is not None:
            self._log_dropped()
        self._clear()
        return NO_ACTIONS

    # ----------------------------------------------------------------- queries

    @property
    def specs(self) -> tuple[LineSpec, ...]:
        return self._specs

    @property
    def route(self) -> Route:
        return self._route

    @property
    def active(self) -> int | None:
        return self._active

    @property
    def pending(self) -> tuple[int, ...]:
        """The FIFO queue, head first (held MSIX edge lines are not queued)."""
        return tuple(self._queue)

    @property
    def intx_asserted(self) -> bool:
        """Route INTX: the ACTIVE line was signalled and its EOI has not completed."""
        return self._route is Route.INTX and self._active is not None and self._signalled

    @property
    def pba(self) -> int:
        """Route MSIX: vectors with a queued line, a held ACTIVE line or a held edge."""
        if self._route is not Route.MSIX:
            return 0
        bits = 0
        for line in self._queue:
            bits |= 1 << line
        for line in self._held:
            bits |= 1 << line
        if self._active is not None and not self._signalled:
            bits |= 1 << self._active
        return bits

    @property
    def device_masked(self) -> frozenset[int]:
        """Automasked lines the engine believes are masked on the device."""
        return frozenset(self._masked)

    @property
    def signals(self) -> int:
        return self._signals

    @property
    def eois(self) -> int:
        return self._eois

    @property
    def coalesced(self) -> int:
        """Fires ignored because the line was already ACTIVE or PENDING."""
        return self._coalesced

    @property
    def resignals(self) -> int:
        """INTx signals repeated because the client lowered INTx before the guest took it."""
        return self._resignals

    @property
    def exact_eoi(self) -> bool:
        """IRQ_CTRL.EXACT_EOI as last set (cleared by `reset()`)."""
        return self._exact

    @property
    def active_needs_irq_eoi(self) -> bool:
        """True if the ACTIVE line's EOI is ruled by exact EOI (its IRQ_EOI write)."""
        return self._active is not None and self._governed_by_exact()

    @property
    def ignored_eois(self) -> int:
        """`eoi()` calls that did nothing (out of range, not ACTIVE, not exact)."""
        return self._ignored_eois

    def record_transitions(self, on: bool) -> None:
        """Keep a list of transitions from now on (True), or stop and forget it (False)."""
        self._log = [] if on else None

    def take_transitions(self) -> list[Transition]:
        """The transitions since the last call, oldest first (empty while not recording)."""
        log = self._log
        if not log:
            return []
        self._log = []
        return log

    def line_state(self, line: int) -> LineState:
        self._check_line(line)
        return self._state[line]

    # ---------------------------------------------------------------- internals

    def _check_line(self, line: int) -> None:
        if not 0 <= line < self._n:
            raise ValueError(f"IRQ line {line} out of range 0..{self._n - 1}")

    def _check_vector(self, vector: int) -> None:
        if not 0 <= vector < self._n:
            raise ValueError(f"MSI-X vector {vector} out of range 0..{self._n - 1}")

    def _governed_by_exact(self) -> bool:
        """Whether the exact-EOI rule applies to the ACTIVE line (assumes there is one)."""
        return self._active_exact if self._signalled else self._exact

    def _intx_deliverable(self) -> bool:
        return self._intx_enabled and not self._client_masked and not self._intx_disabled

    def _vector_deliverable(self, vector: int) -> bool:
        return (
            self._msix_enabled
            and not self._function_masked
            and not self._vector_masked[vector]
            and self._vector_fd[vector]
        )

    def _record(self, line: int, out: list[Action]) -> None:
        """Take in a fire of an INACTIVE line."""
        if self._route is Route.MSIX and not self._specs[line].automasked:
            if self._vector_deliverable(line):
                self._emit(self._signal_vector[line], out, line)
            else:
                self._state[line] = _PENDING
                self._held.add(line)
                if self._log is not None:
                    self._log.append(Transition("queued", line))
        elif self._active is not None:  # invariant: a non-empty queue has an ACTIVE line
            self._state[line] = _PENDING
            self._queue.append(line)
            if self._log is not None:
                self._log.append(Transition("queued", line))
        else:
            self._activate(line, out)

    def _activate(self, line: int, out: list[Action]) -> None:
        self._state[line] = _ACTIVE
        self._active = line
        self._signalled = False
        self._active_exact = False
        self._unmask_seen = False
        self._ack_seen = False
        self._signal_active(out)

    def _signal_active(self, out: list[Action]) -> None:
        """Signal the ACTIVE line if it is held and its target is deliverable now."""
        active = self._active
        if active is None or self._signalled:
            return
        if self._route is Route.INTX:
            if not self._intx_deliverable():
                return
            signal = self._signal_intx
        else:
            if not self._vector_deliverable(active):
                return
            signal = self._signal_vector[active]
        self._signalled = True
        self._active_exact = self._exact
        self._taken = False
        self._emit(signal, out, active)

    def _release(self, out: list[Action]) -> None:
        """After a mask/enable change: signal whatever became deliverable.

        The ACTIVE line first, then held edges in ascending vector order.
        """
        self._signal_active(out)
        if self._held:
            for line in sorted(self._held):
                if self._vector_deliverable(line):
                    self._held.discard(line)
                    self._state[line] = _INACTIVE
                    self._emit(self._signal_vector[line], out, line)

    def _emit(self, signal: Signal, out: list[Action], line: int) -> None:
        self._signals += 1
        out.append(signal)
        if self._log is not None:
            self._log.append(Transition("delivered", line, signal.target))

    def _complete_eoi(self, out: list[Action]) -> None:
        active = self._active
        assert active is not None
        self._state[active] = _INACTIVE
        self._active = None
        self._eois += 1
        if self._log is not None:
            self._log.append(Transition("eoi", active))
        if self._specs[active].automasked:
            self._masked.discard(active)
            out.append(self._unmask_line[active])
        if self._queue:
            self._activate(self._queue.popleft(), out)

    def _drop_inflight(self) -> None:
        """Forget ACTIVE, queue and held edges; their level lines stay masked."""
        if self._log is not None:
            self._log_dropped()
        if self._active is not None:
            self._state[self._active] = _INACTIVE
        for line in self._queue:
            self._state[line] = _INACTIVE
        for line in self._held:
            self._state[line] = _INACTIVE
        self._active = None
        self._signalled = False
        self._active_exact = False
        self._unmask_seen = False
        self._ack_seen = False
        self._queue.clear()
        self._held.clear()

    def _log_dropped(self) -> None:
        assert self._log is not None
        for line in range(self._n):
            if self._state[line] is not _INACTIVE:
                self._log.append(Transition("dropped", line))

    def _unmask_orphans(self, out: list[Action]) -> None:
        """Unmask every known-masked line that is not ACTIVE or PENDING."""
        for line in sorted(self._masked):
            if self._state[line] is _INACTIVE:
                self._masked.discard(line)
                out.append(self._unmask_line[line])
