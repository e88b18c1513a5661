# SPDX-License-Identifier: BSD-3-Clause
"""`serve --trace FILE`: one JSON line per protocol message and per IRQ transition.

The trace is read back with `vfu_platform.trace.read_trace` after the server stopped
(stopping flushes it).
"""
from __future__ import annotations

import json
import os
import signal
from datetime import datetime
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

from vfu_platform.testing import INTX, MemfdWindow, ProcessServer, install_intx, intx_unmask, set_command, serve_in_subprocess, wait_until
from vfu_platform.backends.sim import edu, gpio
from vfu_platform.client import VfioUserError
from vfu_platform.protocol.header import Header
import vfu_platform
from vfu_platform.trace import (
    EventRecord,
    MessageRecord,
    Observers,
    RunHeader,
    RunInfo,
    TraceHook,
    Tracer,
    observers,
    read_trace,
)


def messages(records: list) -> list[MessageRecord]:
    return [r for r in records if isinstance(r, MessageRecord)]


def events(records: list, name: str | None = None) -> list[EventRecord]:
    return [r for r in records if isinstance(r, EventRecord) and (name is None or r.event == name)]


def stop_and_read(server: ProcessServer) -> list:
    assert server.stop() == 0
    assert server.trace_path is not None
    return read_trace(server.trace_path)


@pytest.fixture
def traced_edu(vfu_server: Callable[..., ProcessServer]) -> ProcessServer:
    return vfu_server("edu", trace=True)


def test_every_line_is_one_json_object(traced_edu: ProcessServer) -> None:
    with traced_edu.connect() as client:
        client.device_info()
    traced_edu.clients.clear()
    stop_and_read(traced_edu)
    lines = Path(traced_edu.trace_path).read_text().splitlines()  # type: ignore[arg-type]
    assert lines
    assert json.loads(lines[0])["kind"] == "header"
    for line in lines:
        record = json.loads(line)
        assert record["kind"] in ("header", "msg", "event")
        assert isinstance(record["t"], (int, float))


def test_one_record_per_message_each_way(traced_edu: ProcessServer) -> None:
    client = traced_edu.connect()
    client.device_info()
    client.read32(0, edu.REG_ID)
    client.write32(0, edu.REG_LIVENESS, 5)
    client.close()
    traced_edu.clients.clear()
    records = messages(stop_and_read(traced_edu))
    summary = [(r.dir, r.cmd, r.id, r.type) for r in records]
    assert summary == [
        ("in", "VERSION", 1, "command"),
        ("out", "VERSION", 1, "reply"),
        ("in", "DEVICE_GET_INFO", 2, "command"),
        ("out", "DEVICE_GET_INFO", 2, "reply"),
        ("in", "REGION_READ", 3, "command"),
        ("out", "REGION_READ", 3, "reply"),
        ("in", "REGION_WRITE", 4, "command"),
        ("out", "REGION_WRITE", 4, "reply"),
    ]
    sizes = {(r.dir, r.cmd): r.size for r in records}
    assert sizes[("in", "DEVICE_GET_INFO")] == 16 + 16
    assert sizes[("out", "REGION_READ")] == 16 + 16 + 4
    assert sizes[("in", "REGION_WRITE")] == 16 + 16 + 4
    assert sizes[("out", "REGION_WRITE")] == 16 + 16
    assert all(r.errno == 0 for r in records)


def test_error_replies_carry_the_errno(traced_edu: ProcessServer) -> None:
    client = traced_edu.connect()
    with pytest.raises(VfioUserError):
        client.region_read(6, 0, 4)  # the ROM region has size 0
    client.close()
    traced_edu.clients.clear()
    records = messages(stop_and_read(traced_edu))
    (failed,) = [r for r in records if r.dir == "out" and r.cmd == "REGION_READ"]
    assert failed.errno == 22
    assert failed.type == "reply"
    assert failed.note  # the reason, for a person reading the trace


def test_posted_writes_have_no_reply_record(traced_edu: ProcessServer) -> None:
    client = traced_edu.connect()
    client.write32(0, edu.REG_LIVENESS, 1, posted=True)
    client.write32(42, 0, 1, posted=True)  # fails: still no reply on the wire
    client.sync()
    client.close()
    traced_edu.clients.clear()
    records = messages(stop_and_read(traced_edu))
    writes = [r for r in records if r.cmd == "REGION_WRITE"]
    incoming = [r for r in writes if r.dir == "in"]
    assert len(incoming) == 2 and all(r.no_reply for r in incoming)
    # Nothing goes out for a posted write; the failed one is traced as dropped, with its errno.
    assert [r for r in writes if r.dir == "out"] == []
    (dropped,) = [r for r in writes if r.dir == "dropped"]
    assert dropped.no_reply and dropped.errno == 22 and dropped.note


def test_fds_are_counted(traced_edu: ProcessServer, vfu_memfds, vfu_eventfds) -> None:
    client = traced_edu.connect()
    window: MemfdWindow = vfu_memfds(0x1000)
    client.dma_map(0x10_0000, 0x1000, fd=window.fd)
    (trigger,) = vfu_eventfds(1)
    install_intx(client, trigger)
    client.close()
    traced_edu.clients.clear()
    records = messages(stop_and_read(traced_edu))
    assert [r.fds for r in records if r.cmd == "DMA_MAP" and r.dir == "in"] == [1]
    assert [r.fds for r in records if r.cmd == "DEVICE_SET_IRQS" and r.dir == "in"] == [1]


def test_region_info_reply_with_fd_is_counted(vfu_server: Callable[..., ProcessServer]) -> None:
    server = vfu_server("gpio", trace=True)
    client = server.connect()
    _info, fd = client.region_info(1)
    assert fd is not None
    os.close(fd)
    client.close()
    server.clients.clear()
    records = messages(stop_and_read(server))
    replies = [r for r in records if r.cmd == "DEVICE_GET_REGION_INFO" and r.dir == "out"]
    assert replies[-1].fds == 1


def test_interrupt_transitions(traced_edu: ProcessServer, vfu_eventfds) -> None:
    client = traced_edu.connect()
    (trigger,) = vfu_eventfds(1)
    install_intx(client, trigger)
    client.write32(0, edu.REG_IRQ_RAISE, 1)
    trigger.expect_one()
    client.write32(0, edu.REG_IRQ_ACK, 1)
    intx_unmask(client)
    client.close()
    traced_edu.clients.clear()
    records = stop_and_read(traced_edu)
    names = [r.event for r in events(records)]
    for name in ("client-connected", "set-irqs", "irq-fire", "irq-signal", "intx-eoi", "irq-unmask", "client-gone"):
        assert name in names, f"no {name!r} event in {names}"
    # Installing the trigger unmasks the level line (it powers on masked); the EOI unmasks it again.
    assert names[names.index("set-irqs") + 1] == "irq-unmask"
    assert names.index("irq-fire") < names.index("irq-signal") < names.index("intx-eoi")
    assert names[names.index("intx-eoi") + 1] == "irq-unmask"
    (fire,) = events(records, "irq-fire")
    assert fire.fields == {"line": 0}
    (sig,) = events(records, "irq-signal")
    assert sig.fields["target"] == "intx" and sig.fields["active"] == 0
    (eoi,) = events(records, "intx-eoi")
    assert eoi.fields["source"] == "unmask message"
    set_irqs = events(records, "set-irqs")
    assert set_irqs[0].fields["index"] == INTX and set_irqs[0].fields["fds"] == 1


def test_resample_eoi_and_config_events(traced_edu: ProcessServer, vfu_eventfds) -> None:
    client = traced_edu.connect()
    trigger, resample = vfu_eventfds(2)
    install_intx(client, trigger)
    client.set_irqs(INTX, 0x14, 0, 1, [resample.fd])
    set_command(client, 0x0406)
    set_command(client, 0x0006)
    client.write32(0, edu.REG_IRQ_RAISE, 1)
    trigger.expect_one()
    client.write32(0, edu.REG_IRQ_ACK, 1)
    resample.signal()
    wait_until(lambda: not resample.pending())
    client.reset()
    client.close()
    traced_edu.clients.clear()
    records = stop_and_read(traced_edu)
    assert [e.fields["source"] for e in events(records, "intx-eoi")] == ["resamplefd"]
    assert [e.fields["value"] for e in events(records, "intx-disable")] == [True, False]
    assert [e.fields["value"] for e in events(records, "bus-master")] == [True]
    assert events(records, "device-reset")
    assert events(records, "irq-reset")[-1].fields == {"reason": "client lost"}


def test_dma_requests_and_refusals_are_traced(traced_edu: ProcessServer) -> None:
    client = traced_edu.connect()
    client.dma_map(0x10_0000, 0x1000)  # no fd: DMA goes through messages
    for command in (0x0002, 0x0006):  # without, then with bus mastering
        set_command(client, command)
        client.write64(0, edu.REG_DMA_SRC, 0x10_0000)
        client.write64(0, edu.REG_DMA_DST, edu.DMA_BUFFER_ADDR)
        client.write64(0, edu.REG_DMA_COUNT, 8)
        client.write64(0, edu.REG_DMA_CMD, edu.DMA_CMD_RUN)
        while client.read64(0, edu.REG_DMA_CMD) & edu.DMA_CMD_RUN:
            pass
    client.close()
    traced_edu.clients.clear()
    records = stop_and_read(traced_edu)
    (refused,) = events(records, "dma-refused")
    assert refused.fields["op"] == "read" and refused.fields["iova"] == 0x10_0000
    dma = [r for r in messages(records) if r.cmd == "DMA_READ"]
    assert [(r.dir, r.type) for r in dma] == [("out", "command"), ("in", "reply")]
    assert dma[0].id == dma[1].id


def test_timestamps_never_go_back(traced_edu: ProcessServer, vfu_eventfds) -> None:
    client = traced_edu.connect()
    (trigger,) = vfu_eventfds(1)
    install_intx(client, trigger)
    for _ in range(5):
        client.write32(0, edu.REG_IRQ_RAISE, 1)
        trigger.expect_one()
        client.write32(0, edu.REG_IRQ_ACK, 1)
        intx_unmask(client)
    client.close()
    traced_edu.clients.clear()
    times = [r.t for r in stop_and_read(traced_edu)]
    assert times == sorted(times)


def test_a_second_run_appends(tmp_path: Path) -> None:
    for device in ("edu", "gpio"):
        server = serve_in_subprocess(directory=tmp_path, model=device, trace=True)
        with server.connect() as client:
            client.sync()
        server.clients.clear()
        assert server.stop(signal.SIGINT) == 0
    records = read_trace(str(tmp_path / "vfu.sock.trace"))
    assert len(events(records, "client-connected")) == 2
    # Each run begins with its own header: the two runs never blur.
    headers = [i for i, r in enumerate(records) if isinstance(r, RunHeader)]
    assert [records[i].device for i in headers] == ["edu", "gpio"]  # type: ignore[attr-defined]
    assert headers[0] == 0
    assert events(records[headers[0]:headers[1]], "client-connected")
    assert events(records[headers[1]:], "client-connected")


def test_trace_is_complete_after_a_client_leaves(traced_edu: ProcessServer) -> None:
    """Readable while the server runs: everything up to a client's departure is written."""
    with traced_edu.connect() as client:
        client.read32(0, gpio.REG_ID)
    traced_edu.clients.clear()
    path = traced_edu.trace_path
    assert path is not None
    wait_until(lambda: any(isinstance(r, EventRecord) and r.event == "client-gone" for r in read_trace(path)))
    cmds = [(r.dir, r.cmd) for r in messages(read_trace(path))]
    assert ("out", "REGION_READ") in cmds


def test_tracer_writes_read_trace_reads(tmp_path: Path) -> None:
    path = tmp_path / "unit.trace"
    tracer = Tracer.open(str(path))
    tracer.message("in", Header(7, 9, 32, 0, 0), 0)
    tracer.message("out", Header(7, 9, 16, 0x21, 22), 0, error=22, note="bad")
    tracer.event("irq-fire", line=3)
    tracer.close()
    records = read_trace(str(path))
    assert [type(r) for r in records] == [MessageRecord, MessageRecord, EventRecord]
    first, second, third = records
    assert (first.dir, first.cmd, first.id, first.size, first.type, first.errno) == ("in", "REGION_READ", 7, 32, "command", 0)
    assert (second.errno, second.type, second.note) == (22, "reply", "bad")
    assert third.event == "irq-fire" and third.fields == {"line": 3}
    with pytest.raises(msgspec.DecodeError):
        path.write_text("not json\n")
        read_trace(str(path))


# --------------------------------------------------------------------------- run header


def test_the_header_names_the_run(vfu_server: Callable[..., ProcessServer]) -> None:
    server = vfu_server("gpio", irq_mode="msix", trace=True, extra=["-o", "lines=3"])
    with server.connect() as client:
        client.sync()
    server.clients.clear()
    records = stop_and_read(server)
    header = records[0]
    assert isinstance(header, RunHeader)
    assert [r for r in records if isinstance(r, RunHeader)] == [header]
    assert header.device == "gpio" and header.pid == server.pid and header.version == vfu_platform.__version__
    assert header.format == 1 and not header.reopened
    assert header.options["irq_mode"] == "msix" and header.options["device_options"] == {"lines": "3"}
    assert "--trace" in header.argv and "serve" in header.argv
    started = datetime.fromisoformat(header.time)
    assert started.tzinfo is not None and abs((datetime.now(started.tzinfo) - started).total_seconds()) < 600
    assert header.t <= min(r.t for r in records[1:])


def test_reopen_starts_the_new_file_with_a_header(tmp_path: Path) -> None:
    path = tmp_path / "run.trace"
    tracer = Tracer.open(str(path), RunInfo("edu", {"irq_mode": "intx"}, ("vfu-platform", "serve")))
    tracer.event("client-connected", number=1)
    path.rename(tmp_path / "run.trace.1")  # what logrotate does
    tracer.event("before-reopen")  # still written to the moved file
    tracer.reopen()
    tracer.event("client-gone", reason="test")
    tracer.close()
    old = read_trace(str(tmp_path / "run.trace.1"))
    new = read_trace(str(path))
    assert [type(r) for r in old] == [RunHeader, EventRecord, EventRecord]
    assert isinstance(new[0], RunHeader) and new[0].reopened and new[0].device == "edu"
    assert new[0].argv == ["vfu-platform", "serve"] and new[0].pid == old[0].pid  # type: ignore[union-attr]
    assert [r.event for r in new[1:]] == ["client-gone"]  # type: ignore[union-attr]
    assert new[0].t >= old[-1].t  # one run's clock goes on across files


def test_sighup_reopens_the_trace_file(vfu_server: Callable[..., ProcessServer]) -> None:
    server = vfu_server("edu", trace=True)
    assert server.trace_path is not None
    rotated = server.trace_path + ".1"
    with server.connect() as client:
        client.sync()
    server.clients.clear()
    wait_until(lambda: bool(events(read_trace(server.trace_path), "client-gone")))  # type: ignore[arg-type]
    os.rename(server.trace_path, rotated)
    server.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: os.path.exists(server.trace_path))  # type: ignore[arg-type]
    with server.connect() as client:
        client.read32(0, edu.REG_ID)
    server.clients.clear()
    new = stop_and_read(server)
    assert isinstance(new[0], RunHeader) and new[0].reopened and new[0].pid == server.pid
    assert [r.cmd for r in messages(new) if r.dir == "in"] == ["VERSION", "REGION_READ"]
    old = read_trace(rotated)
    assert isinstance(old[0], RunHeader) and not old[0].reopened
    assert len(events(old, "client-connected")) == 1 and not any(r.cmd == "REGION_READ" for r in messages(old))
    assert "Traceback" not in server.stderr()


# --------------------------------------------------------------------------- message records


def test_flags_are_named_and_errors_by_name(traced_edu: ProcessServer) -> None:
    client = traced_edu.connect()
    client.write32(0, edu.REG_LIVENESS, 1, posted=True)
    client.write32(42, 0, 1, posted=True)  # fails, unanswered
    with pytest.raises(VfioUserError):
        client.region_read(6, 0, 4)
    client.close()
    traced_edu.clients.clear()
    records = messages(stop_and_read(traced_edu))
    posted = [r for r in records if r.cmd == "REGION_WRITE" and r.dir == "in"]
    assert [(r.flags, r.flags_raw) for r in posted] == [(("command", "no_reply"), 0x10)] * 2
    (dropped,) = [r for r in records if r.dir == "dropped"]
    assert dropped.flags == ("reply", "no_reply", "error") and dropped.error == "EINVAL"
    (failed,) = [r for r in records if r.cmd == "REGION_READ" and r.dir == "out"]
    assert (failed.flags, failed.flags_raw, failed.errno, failed.error) == (("reply", "error"), 0x21, 22, "EINVAL")
    version = [r for r in records if r.cmd == "VERSION"]
    assert [(r.flags, r.flags_raw) for r in version] == [(("command",), 0), (("reply",), 1)]


def test_accesses_carry_region_offset_count_and_value(traced_edu: ProcessServer) -> None:
    """Needs the session to pass region/offset/count/value (MessageObserver)."""
    client = traced_edu.connect()
    client.write32(0, edu.REG_LIVENESS, 0x1234)
    assert client.read32(0, edu.REG_LIVENESS) == ~0x1234 & 0xFFFFFFFF
    client.region_read(0, 0, 16)  # no value for a 16-byte access
    client.close()
    traced_edu.clients.clear()
    records = [r for r in messages(stop_and_read(traced_edu)) if r.cmd in ("REGION_READ", "REGION_WRITE")]
    got = [(r.dir, r.cmd, r.region, r.offset, r.count, r.value) for r in records]
    assert got == [
        ("in", "REGION_WRITE", 0, edu.REG_LIVENESS, 4, 0x1234),
        ("out", "REGION_WRITE", 0, edu.REG_LIVENESS, 4, None),
        ("in", "REGION_READ", 0, edu.REG_LIVENESS, 4, None),
        ("out", "REGION_READ", 0, edu.REG_LIVENESS, 4, ~0x1234 & 0xFFFFFFFF),
        ("in", "REGION_READ", 0, 0, 16, None),
        ("out", "REGION_READ", 0, 0, 16, None),
    ]


# --------------------------------------------------------------------------- IRQ transitions


def transitions(records: list) -> list[tuple[str, int, object]]:
    """(transition, line, target or EOI source) of the irq-raised/queued/delivered/eoi/... events."""
    out = []
    for r in events(records):
        kind = r.event[4:] if r.event.startswith("irq-") else ""
        if kind in ("raised", "coalesced", "queued", "delivered", "eoi", "dequeued", "dropped"):
            out.append((kind, r.fields["line"], r.fields.get("target", r.fields.get("source"))))
    return out


def test_edu_interrupt_transitions_with_their_eoi_source(traced_edu: ProcessServer, vfu_eventfds) -> None:
    client = traced_edu.connect()
    trigger, resample = vfu_eventfds(2)
    install_intx(client, trigger)
    client.write32(0, edu.REG_IRQ_RAISE, 1)
    trigger.expect_one()
    client.write32(0, edu.REG_IRQ_ACK, 1)  # the ack register: half of the EOI
    intx_unmask(client)  # the other half: this completes it
    client.set_irqs(INTX, 0x14, 0, 1, [resample.fd])  # UNMASK|EVENTFD: a resamplefd
    client.write32(0, edu.REG_IRQ_RAISE, 1)
    trigger.expect_one()
    client.write32(0, edu.REG_IRQ_ACK, 1)
    resample.signal()
    wait_until(lambda: not resample.pending())
    client.sync()
    client.close()
    traced_edu.clients.clear()
    records = stop_and_read(traced_edu)
    assert transitions(records) == [
        ("raised", 0, None), ("delivered", 0, "intx"), ("eoi", 0, "unmask message"),
        ("raised", 0, None), ("delivered", 0, "intx"), ("eoi", 0, "resamplefd"),
    ]
    times = [r.t for r in events(records) if r.event in ("irq-raised", "irq-delivered", "irq-eoi")]
    assert times == sorted(times)


def test_gpio_queued_lines_and_ack_register_eois(vfu_server: Callable[..., ProcessServer], vfu_eventfds) -> None:
    server = vfu_server("gpio", trace=True)
    client = server.connect()
    (trigger,) = vfu_eventfds(1)
    install_intx(client, trigger)
    client.write32(0, gpio.REG_RAISE, 0b011)  # two lines at once: line 1 waits behind line 0
    trigger.expect_one()
    client.write32(0, gpio.line_register(0, gpio.LINE_ACK), 1)
    intx_unmask(client)  # completes line 0's EOI (its ack came first)
    trigger.expect_one(what="line 1 after line 0's EOI")
    intx_unmask(client)
    client.write32(0, gpio.line_register(1, gpio.LINE_ACK), 1)  # completes line 1's EOI
    client.write32(0, gpio.REG_RAISE, 0b1111)
    trigger.expect_one()
    client.reset()  # the active line and the queue are dropped
    client.close()
    server.clients.clear()
    records = stop_and_read(server)
    got = transitions(records)
    assert got[:7] == [
        ("raised", 0, None), ("delivered", 0, "intx"), ("raised", 1, None), ("queued", 1, None),
        ("eoi", 0, "unmask message"), ("delivered", 1, "intx"), ("eoi", 1, "ack register"),
    ]
    rest = got[7:]
    assert ("delivered", 0, "intx") in rest
    assert sorted(t for t in rest if t[0] == "queued") == [("queued", 1, None), ("queued", 2, None), ("queued", 3, None)]
    assert [t for t in rest if t[0] == "dropped"] == [("dropped", line, None) for line in range(4)]


def test_no_transitions_are_kept_without_a_trace(vfu_server: Callable[..., ProcessServer], vfu_eventfds) -> None:
    """Untraced, the engine records nothing: a long run does not grow a list nobody reads."""
    server = vfu_server("edu")
    client = server.connect()
    (trigger,) = vfu_eventfds(1)
    install_intx(client, trigger)
    for _ in range(3):
        client.write32(0, edu.REG_IRQ_RAISE, 1)
        trigger.expect_one()
        client.write32(0, edu.REG_IRQ_ACK, 1)
        intx_unmask(client)
    assert client.read32(0, edu.REG_IRQ_STATUS) == 0
    client.close()
    server.clients.clear()
    assert server.stop() == 0


# --------------------------------------------------------------------------- one hook for several observers


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def message(self, direction: str, header: Header, nfds: int, error: int = 0, note: str = "", *,
                region: int | None = None, offset: int | None = None, count: int | None = None,
                value: int | None = None) -> None:
        self.calls.append(("message", direction, header.msg_id, nfds, error, note, region, offset, count, value))

    def event(self, event: str, **fields: object) -> None:
        self.calls.append(("event", event, fields))


def test_observers_gives_the_cheapest_hook() -> None:
    a, b = _Recorder(), _Recorder()
    assert observers() is None and observers(None, None) is None  # no hook: the session's fast path
    assert observers(None, a) is a  # one observer: itself, no fan-out
    both = observers(a, None, b)
    assert isinstance(both, Observers) and both.sinks == (a, b)
    both.message("in", Header(5, 9, 32, 0, 0), 2, 0, "", region=1, offset=8, count=4, value=7)
    both.event("irq-raised", line=3)
    hook = TraceHook()
    assert not hook
    hook("ignored")
    hook.tracer = both
    assert hook
    hook("irq-eoi", line=3, source="resamplefd")
    expected = [("message", "in", 5, 2, 0, "", 1, 8, 4, 7), ("event", "irq-raised", {"line": 3}),
                ("event", "irq-eoi", {"line": 3, "source": "resamplefd"})]
    assert a.calls == expected and b.calls == expected
