# SPDX-License-Identifier: BSD-3-Clause
"""Structured trace: one JSON line per protocol message and per IRQ transition.

Written with msgspec so that tracing a busy session stays cheap.  Each record
has a monotonic timestamp `t` (seconds since the trace started) and a `kind`:

* "header": the first record of every run (`RunHeader`: format, version, device,
  PID, options, wall-clock time, argv).  A trace file is opened for *append*: an
  earlier run's trace is never lost, and each run (and each `reopen()`, e.g. after
  logrotate moved the file) begins with its own header, so the runs never blur.
  `t` keeps counting across a reopen within one run.
* "msg": a message (`MessageRecord`), with named flags and, for region accesses,
  region, offset, count and value.
* "event": anything else (`EventRecord`): clients, IRQ inputs and the IRQ engine's
  transitions ("irq-raised", "irq-queued", "irq-delivered", "irq-eoi" with the EOI's
  `source`, "irq-coalesced", "irq-dequeued", "irq-dropped").

`TraceHook` is the one way a component emits an event: `trace(event, **fields)`,
a no-op until an observer is set on it.  `Observers` fans one hook out to several
observers (a `Tracer` and a `logs.MessageLog`); `observers()` builds the cheapest
hook for a set of them (None when there is none: the session's fast path stays on).
"""
from __future__ import annotations

import errno as _errno
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import IO, Any, Protocol

import msgspec

from vfu_platform import __version__
from vfu_platform.protocol.constants import COMMAND_NAMES, TYPE_MASK, MsgFlags
from vfu_platform.protocol.header import Header

#: bumped when a record changes incompatibly
TRACE_FORMAT = 1

_TYPE_REPLY = int(MsgFlags.TYPE_REPLY)
_NO_REPLY = int(MsgFlags.NO_REPLY)
_ERROR = int(MsgFlags.ERROR)


class RunHeader(msgspec.Struct, tag_field="kind", tag="header"):
    t: float
    format: int
    version: str
    device: str
    pid: int
    #: wall-clock time of this header, ISO 8601 UTC (the run's `t` counts from its trace start)
    time: str
    argv: list[str]
    options: dict[str, Any] = {}
    #: written by `Tracer.reopen()` (the same run goes on in a new file)
    reopened: bool = False


class MessageRecord(msgspec.Struct, omit_defaults=True, tag_field="kind", tag="msg"):
    t: float
    dir: str  # "in" (from the client), "out" (sent), or "dropped" (a NO_REPLY failure: nothing sent)
    cmd: str
    id: int
    size: int
    type: str  # "command" | "reply"
    #: the message's flags by name: "command" or "reply", then "no_reply", "error"
    flags: tuple[str, ...] = ()
    #: the header's flags word as on the wire (an error reply: TYPE_REPLY | ERROR)
    flags_raw: int = 0
    no_reply: bool = False
    fds: int = 0
    errno: int = 0
    #: errno by name ("EINVAL"), "" without an error
    error: str = ""
    note: str = ""
    #: a region access (REGION_READ/WRITE, DMA_READ/WRITE): region index (None for DMA), offset or iova,
    #: byte count, and the value for accesses of 1, 2, 4 or 8 bytes
    region: int | None = None
    offset: int | None = None
    count: int | None = None
    value: int | None = None


class EventRecord(msgspec.Struct, omit_defaults=True, tag_field="kind", tag="event"):
    t: float
    event: str
    fields: dict[str, Any] = {}


TraceRecord = RunHeader | MessageRecord | EventRecord


_log = logging.getLogger("vfu_platform.trace")


def errno_name(value: int) -> str:
    """"EINVAL" for 22; the number as text for an errno Linux does not name."""
    return _errno.errorcode.get(value, str(value))


def flag_names(flags: int, error: int = 0) -> tuple[str, ...]:
    """A header's flags by name (an `error` makes it an error reply)."""
    names = ["reply" if flags & TYPE_MASK == _TYPE_REPLY or error else "command"]
    if flags & _NO_REPLY:
        names.append("no_reply")
    if flags & _ERROR or error:
        names.append("error")
    return tuple(names)


class Observer(Protocol):
    """What the session, the listener and the bridge report to (`Tracer`, `MessageLog`, `Observers`)."""

    def message(self, direction: str, header: Header, nfds: int, error: int = 0, note: str = "", *,
                region: int | None = None, offset: int | None = None, count: int | None = None,
                value: int | None = None) -> None: ...

    def event(self, event: str, **fields: Any) -> None: ...


@dataclass(frozen=True, slots=True)
class RunInfo:
    """What a run's header says besides version, PID and time."""

    device: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    argv: tuple[str, ...] = field(default_factory=lambda: tuple(sys.argv))


class Tracer:
    """Writes the trace; a write that fails (disk full, EIO) stops the trace, never the serving."""

    def __init__(self, stream: IO[bytes], run: RunInfo | None = None, path: str | None = None) -> None:
        self._stream = stream
        self._path = path
        self._encoder = msgspec.json.Encoder()
        self._t0 = time.monotonic()
        self._flag_cache: dict[tuple[int, bool, bool], tuple[tuple[str, ...], int]] = {}
        self.run = run
        #: why the trace stopped ("" while it is written)
        self.failed = ""
        if run is not None:
            self._write_header(reopened=False)

    @classmethod
    def open(cls, path: str, run: RunInfo | None = None) -> "Tracer":
        """Append to `path` (created if need be), starting with a header when `run` is given."""
        return cls(open(path, "ab", buffering=1 << 16), run, path)

    def _now(self) -> float:
        return round(time.monotonic() - self._t0, 6)

    def _write_header(self, reopened: bool) -> None:
        run = self.run or RunInfo()
        self._write(RunHeader(
            t=self._now(), format=TRACE_FORMAT, version=__version__, device=run.device, pid=os.getpid(),
            time=datetime.now(timezone.utc).isoformat(timespec="microseconds"),
            argv=list(run.argv), options=dict(run.options), reopened=reopened,
        ))

    def _write(self, record: TraceRecord) -> None:
        if self.failed:
            return
        # Flushed line by line: a trace is read most when the server died.
        try:
            self._stream.write(self._encoder.encode(record) + b"\n")
            self._stream.flush()
        except OSError as exc:
            self._fail(exc)

    def _fail(self, exc: OSError) -> None:
        self.failed = exc.strerror or str(exc)
        _log.warning("trace stopped: %s (the server goes on serving; the trace ends here)", self.failed)

    def _flags(self, direction: str, header: Header, error: int) -> tuple[tuple[str, ...], int]:
        key = (header.flags, bool(error), direction == "out")
        cached = self._flag_cache.get(key)
        if cached is None:
            raw = header.flags
            if error and direction == "out":
                raw = _TYPE_REPLY | _ERROR  # what encode_error puts on the wire
            cached = self._flag_cache[key] = (flag_names(raw, error), raw)
        return cached

    def message(self, direction: str, header: Header, nfds: int, error: int = 0, note: str = "", *,
                region: int | None = None, offset: int | None = None, count: int | None = None,
                value: int | None = None) -> None:
        names, raw = self._flags(direction, header, error)
        self._write(
            MessageRecord(
                t=self._now(),
                dir=direction,
                cmd=COMMAND_NAMES.get(header.command, str(header.command)),
                id=header.msg_id,
                size=header.size,
                type=names[0],
                flags=names,
                flags_raw=raw,
                no_reply=header.no_reply,
                fds=nfds,
                errno=error,
                error=errno_name(error) if error else "",
                note=note,
                region=region,
                offset=offset,
                count=count,
                value=value,
            )
        )

    def event(self, event: str, **fields: Any) -> None:
        self._write(EventRecord(t=self._now(), event=event, fields=fields))

    def flush(self) -> None:
        if self.failed:
            return
        try:
            self._stream.flush()
        except OSError as exc:
            self._fail(exc)

    def reopen(self) -> None:
        """Open the trace file again by its path (logrotate moved it) and write a new header.

        A trace stopped by a failed write gets another chance in the new file.
        """
        if self._path is None:
            return
        try:
            stream = open(self._path, "ab", buffering=1 << 16)
        except OSError as exc:
            self._fail(exc)
            return
        old, self._stream = self._stream, stream
        try:
            old.close()
        except OSError:
            pass  # what could not be written to the old file is lost either way
        self.failed = ""
        self._write_header(reopened=True)

    def close(self) -> None:
        try:
            self._stream.close()
        except OSError as exc:
            if not self.failed:
                self._fail(exc)


class Observers:
    """One observer that hands every message and event to several, in order."""

    __slots__ = ("sinks",)

    def __init__(self, sinks: Iterable[Observer]) -> None:
        self.sinks: tuple[Observer, ...] = tuple(sinks)

    def message(self, direction: str, header: Header, nfds: int, error: int = 0, note: str = "", *,
                region: int | None = None, offset: int | None = None, count: int | None = None,
                value: int | None = None) -> None:
        for sink in self.sinks:
            sink.message(direction, header, nfds, error, note, region=region, offset=offset, count=count,
                         value=value)

    def event(self, event: str, **fields: Any) -> None:
        for sink in self.sinks:
            sink.event(event, **fields)


def observers(*sinks: Observer | None) -> Observer | None:
    """The hook for these observers: None for none, the observer itself for one, else `Observers`."""
    present = [sink for sink in sinks if sink is not None]
    if not present:
        return None
    if len(present) == 1:
        return present[0]
    return Observers(present)


#: what a component that emits events is given: call it as trace(event, **fields)
TraceFn = Callable[..., None]


class TraceHook:
    """The one trace hook: `hook(event, **fields)` records an event while `tracer` is set.

    True while an observer is set: a component may skip work only a trace needs.
    """

    __slots__ = ("tracer",)

    def __init__(self, tracer: Observer | None = None) -> None:
        self.tracer = tracer

    def __call__(self, event: str, **fields: Any) -> None:
        tracer = self.tracer
        if tracer is not None:
            tracer.event(event, **fields)

    def __bool__(self) -> bool:
        return self.tracer is not None


def read_trace(path: str, *, tolerate_truncation: bool = False) -> list[TraceRecord]:
    """Every record of a trace file; with `tolerate_truncation` a cut-off last line is skipped."""
    decoder = msgspec.json.Decoder(TraceRecord)
    with open(path, "rb") as stream:
        lines = [line for line in stream if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(decoder.decode(line))
        except msgspec.DecodeError:
            if tolerate_truncation and number == len(lines) and not line.endswith(b"\n"):
                break
            raise
    return records
