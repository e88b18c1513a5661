# SPDX-License-Identifier: BSD-3-Clause
"""`vfu-platform trace summary FILE`: a trace's numbers as a table (or JSON).

Per run (a run begins at each header record; a file may hold several): the clients
(connected, gone and why, refused), per-command message counts and errors by errno
name, and per IRQ line its transitions and latencies (raise -> deliver, deliver ->
EOI: count, p50, p99, max) with the sources of its EOIs.  A last line cut short (the
server died mid-write, the disk filled up) is skipped and reported; any other bad
line is an error naming its line number.
"""
from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import msgspec

from vfu_platform.trace import EventRecord, MessageRecord, RunHeader, TraceRecord, errno_name


class TraceFileError(Exception):
    """The file cannot be read as a trace (the message is one line, for the user)."""


def load(path: str) -> tuple[list[TraceRecord], bool]:
    """The records of `path`, and whether its last line was cut short (and skipped)."""
    decoder = msgspec.json.Decoder(TraceRecord)
    try:
        with open(path, "rb") as stream:
            lines = stream.read().split(b"\n")
    except OSError as exc:
        raise TraceFileError(f"cannot read {path}: {exc.strerror}") from None
    last = len(lines) - 1
    records: list[TraceRecord] = []
    for number, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(decoder.decode(line))
        except msgspec.DecodeError as exc:
            if number == last:  # no newline after it: the write was cut short
                return records, True
            raise TraceFileError(f"{path} line {number + 1}: not a trace record ({exc})") from None
    return records, False


def _stats(values: list[float]) -> dict[str, float | int]:
    """count, p50, p99, max of latencies in seconds, reported in microseconds (nearest rank)."""
    if not values:
        return {"count": 0}
    ordered = sorted(values)

    def rank(p: float) -> float:
        return ordered[max(0, math.ceil(p * len(ordered)) - 1)]

    return {"count": len(ordered), "p50_us": round(rank(0.50) * 1e6, 1),
            "p99_us": round(rank(0.99) * 1e6, 1), "max_us": round(ordered[-1] * 1e6, 1)}


@dataclass
class _Line:
    """One IRQ line's episode in progress and its totals."""

    name: str = ""
    raised_at: float | None = None
    delivered_at: float | None = None
    counts: Counter[str] = field(default_factory=Counter)
    to_deliver: list[float] = field(default_factory=list)
    to_eoi: list[float] = field(default_factory=list)
    sources: Counter[str] = field(default_factory=Counter)

    def take(self, kind: str, t: float, fields: dict[str, Any]) -> None:
        self.counts[kind] += 1
        if kind == "raised":
            self.raised_at, self.delivered_at = t, None
        elif kind == "delivered":
            if self.raised_at is not None:
                self.to_deliver.append(t - self.raised_at)
                self.raised_at = None
                self.delivered_at = t
            elif self.delivered_at is None:
                self.delivered_at = t  # carried over from another route: no raise of its own
        elif kind == "eoi":
            self.sources[str(fields.get("source", "?"))] += 1
            if self.delivered_at is not None:
                self.to_eoi.append(t - self.delivered_at)
            self.raised_at = self.delivered_at = None
        elif kind in ("dropped", "dequeued"):
            self.raised_at = self.delivered_at = None

    def report(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name} if self.name else {}
        out.update(transitions=dict(sorted(self.counts.items())), raise_to_deliver=_stats(self.to_deliver),
                   deliver_to_eoi=_stats(self.to_eoi), eoi_sources=dict(self.sources.most_common()))
        return out


class _Run:
    def __init__(self, header: RunHeader | None) -> None:
        self.header = header
        self.first_t: float | None = header.t if header is not None else None
        self.last_t = 0.0
        self.commands: dict[str, Counter[str]] = {}
        self.lines: dict[int, _Line] = {}
        self.connected = 0
        self.gone: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        self.trace_events = 0

    def _command(self, name: str) -> Counter[str]:
        counter = self.commands.get(name)
        if counter is None:
            counter = self.commands[name] = Counter()
        return counter

    def take(self, record: MessageRecord | EventRecord) -> None:
        if self.first_t is None:
            self.first_t = record.t
        self.last_t = max(self.last_t, record.t)
        if isinstance(record, MessageRecord):
            counter = self._command(record.cmd)
            if record.type == "command":
                counter["messages" if record.dir == "in" else "requests_sent"] += 1
            if record.errno:
                counter["error:" + (record.error or errno_name(record.errno))] += 1
            return
        event, fields = record.event, record.fields
        if event.startswith("irq-") and "line" in fields and event[4:] in _TRANSITIONS:
            line = int(fields["line"])
            state = self.lines.get(line)
            if state is None:
                state = self.lines[line] = _Line(str(fields.get("name", "")))
            state.take(event[4:], record.t, fields)
        elif event == "client-connected":
            self.connected += 1
        elif event == "client-gone":
            self.gone[str(fields.get("reason", "?"))] += 1
        elif event == "client-refused":
            self.refused[str(fields.get("reason", "?"))] += 1

    def report(self) -> dict[str, Any]:
        header = msgspec.to_builtins(self.header) if self.header is not None else None
        if header is not None:
            header.pop("kind", None)
        commands = {}
        for name, counter in sorted(self.commands.items()):
            errors = {key[6:]: n for key, n in sorted(counter.items()) if key.startswith("error:")}
            commands[name] = {"messages": counter["messages"], "requests_sent": counter["requests_sent"],
                              "errors": sum(errors.values()), "errors_by_errno": errors}
        return {
            "header": header,
            "duration_s": round(self.last_t - (self.first_t or 0.0), 6),
            "clients": {"connected": self.connected, "gone": sum(self.gone.values()),
                        "gone_reasons": dict(self.gone.most_common()),
                        "refused": sum(self.refused.values()), "refused_reasons": dict(self.refused.most_common())},
            "commands": commands,
            "irq_lines": {str(line): state.report() for line, state in sorted(self.lines.items())},
        }


_TRANSITIONS = frozenset({"raised", "coalesced", "queued", "delivered", "eoi", "dequeued", "dropped"})


def summarize(records: list[TraceRecord], truncated: bool = False) -> dict[str, Any]:
    """The summary as plain data (what --json prints)."""
    runs: list[_Run] = []
    for record in records:
        if isinstance(record, RunHeader):
            if record.reopened and runs and runs[-1].header is not None and runs[-1].header.pid == record.pid:
                continue  # the same run, its file reopened (logrotate)
            runs.append(_Run(record))
            continue
        if not runs:
            runs.append(_Run(None))  # a trace from before headers, or its header rotated away
        runs[-1].take(record)
    return {"runs": [run.report() for run in runs], "truncated": truncated}


def _latency(stats: dict[str, Any]) -> str:
    if not stats["count"]:
        return "-"
    return f"{stats['p50_us']:g} / {stats['p99_us']:g} / {stats['max_us']:g}"


def format_table(summary: dict[str, Any]) -> str:
    """The summary for a person to read."""
    out: list[str] = []
    for number, run in enumerate(summary["runs"], 1):
        header = run["header"]
        if header:
            out.append(f"run {number}: {header['device'] or '?'} (pid {header['pid']}, vfu-platform "
                       f"{header['version']}, started {header['time']}, {run['duration_s']:g} s traced)")
        else:
            out.append(f"run {number}: (no header record) {run['duration_s']:g} s traced")
        clients = run["clients"]
        line = f"  clients: {clients['connected']} connected, {clients['gone']} gone"
        if clients["gone_reasons"]:
            line += " (" + "; ".join(f"{reason}: {n}" for reason, n in clients["gone_reasons"].items()) + ")"
        if clients["refused"]:
            line += f", {clients['refused']} refused"
        out.append(line)
        if run["commands"]:
            out.append(f"  {'command':<26} {'in':>8} {'sent':>6} {'errors':>7}  by errno")
            for name, c in run["commands"].items():
                by = ", ".join(f"{e} {n}" for e, n in c["errors_by_errno"].items())
                out.append(f"  {name:<26} {c['messages']:>8} {c['requests_sent']:>6} {c['errors']:>7}  {by}")
        if run["irq_lines"]:
            out.append(f"  {'IRQ line':<14} {'raised':>7} {'deliv.':>7} {'EOI':>6}  "
                       f"{'raise->deliver us p50/p99/max':<30} {'deliver->EOI us p50/p99/max':<30} EOI sources")
            for key, irq in run["irq_lines"].items():
                label = f"{key} {irq['name']}" if irq.get("name") else key
                counts = irq["transitions"]
                sources = ", ".join(f"{s} {n}" for s, n in irq["eoi_sources"].items())
                out.append(f"  {label:<14} {counts.get('raised', 0):>7} {counts.get('delivered', 0):>7} "
                           f"{counts.get('eoi', 0):>6}  {_latency(irq['raise_to_deliver']):<30} "
                           f"{_latency(irq['deliver_to_eoi']):<30} {sources}")
        out.append("")
    if summary["truncated"]:
        out.append("(the last line was cut short and is not counted)")
    if not summary["runs"]:
        out.append("(no records)")
    return "\n".join(out).rstrip("\n")


def main(path: str, as_json: bool = False) -> int:
    """Print the summary of the trace at `path`; TraceFileError for a file that is no trace."""
    records, truncated = load(path)
    summary = summarize(records, truncated)
    print(json.dumps(summary, indent=2) if as_json else format_table(summary))
    return 0


__all__ = ["TraceFileError", "format_table", "load", "main", "summarize"]
