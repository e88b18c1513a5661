# SPDX-License-Identifier: BSD-3-Clause
"""Structured trace: one JSON line per protocol message and per IRQ transition.

Written with msgspec so that tracing a busy session stays cheap.  Each record
has a monotonic timestamp `t` (seconds since the trace started) and a `kind`.
`TraceHook` is the one way a component emits an event: `trace(event, **fields)`,
a no-op until a `Tracer` is set on it.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import IO, Any

import msgspec

from vfu_platform.protocol.constants import COMMAND_NAMES
from vfu_platform.protocol.header import Header


class MessageRecord(msgspec.Struct, omit_defaults=True, tag_field="kind", tag="msg"):
    t: float
    dir: str  # "in" (from the client), "out" (sent), or "dropped" (a NO_REPLY failure: nothing sent)
    cmd: str
    id: int
    size: int
    type: str  # "command" | "reply"
    no_reply: bool = False
    fds: int = 0
    errno: int = 0
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


TraceRecord = MessageRecord | EventRecord


_log = logging.getLogger("vfu_platform.trace")


class Tracer:
    """Writes the trace; a write that fails (disk full, EIO) stops the trace, never the serving."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._encoder = msgspec.json.Encoder()
        self._t0 = time.monotonic()
        #: why the trace stopped ("" while it is written)
        self.failed = ""

    @classmethod
    def open(cls, path: str) -> "Tracer":
        return cls(open(path, "ab", buffering=1 << 16))

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

    def message(self, direction: str, header: Header, nfds: int, error: int = 0, note: str = "", *,
                region: int | None = None, offset: int | None = None, count: int | None = None,
                value: int | None = None) -> None:
        self._write(
            MessageRecord(
                t=round(time.monotonic() - self._t0, 6),
                dir=direction,
                cmd=COMMAND_NAMES.get(header.command, str(header.command)),
                id=header.msg_id,
                size=header.size,
                type="reply" if header.is_reply or error else "command",
                no_reply=header.no_reply,
                fds=nfds,
                errno=error,
                note=note,
                region=region,
                offset=offset,
                count=count,
                value=value,
            )
        )

    def event(self, event: str, **fields: Any) -> None:
        self._write(EventRecord(t=round(time.monotonic() - self._t0, 6), event=event, fields=fields))
        self.flush()

    def flush(self) -> None:
        if self.failed:
            return
        try:
            self._stream.flush()
        except OSError as exc:
            self._fail(exc)

    def close(self) -> None:
        try:
            self._stream.close()
        except OSError as exc:
            if not self.failed:
                self._fail(exc)


#: what a component that emits events is given: call it as trace(event, **fields)
TraceFn = Callable[..., None]


class TraceHook:
    """The one trace hook: `hook(event, **fields)` records an event while `tracer` is set."""

    __slots__ = ("tracer",)

    def __init__(self, tracer: Tracer | None = None) -> None:
        self.tracer = tracer

    def __call__(self, event: str, **fields: Any) -> None:
        tracer = self.tracer
        if tracer is not None:
            tracer.event(event, **fields)


def read_trace(path: str) -> list[TraceRecord]:
    decoder = msgspec.json.Decoder(TraceRecord)
    with open(path, "rb") as stream:
        return [decoder.decode(line) for line in stream if line.strip()]
