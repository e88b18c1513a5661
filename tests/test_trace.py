# SPDX-License-Identifier: BSD-3-Clause
"""`serve --trace FILE`: one JSON line per protocol message and per IRQ transition.

The trace is read back with `vfu_platform.trace.read_trace` after the server stopped
(stopping flushes it).
"""
from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

from server_fixtures import (
    INTX,
    MemfdWindow,
    ServerProcess,
    install_intx,
    intx_unmask,
    set_command,
    start_server,
    wait_until,
)
from server_fixtures import eventfds, memfds, server_factory  # noqa: F401  (fixtures)
from vfu_platform.backends.sim import edu, gpio
from vfu_platform.client import VfioUserError
from vfu_platform.protocol.header import Header
from vfu_platform.trace import EventRecord, MessageRecord, Tracer, read_trace


def messages(records: list) -> list[MessageRecord]:
    return [r for r in records if isinstance(r, MessageRecord)]


def events(records: list, name: str | None = None) -> list[EventRecord]:
    return [r for r in records if isinstance(r, EventRecord) and (name is None or r.event == name)]


def stop_and_read(server: ServerProcess) -> list:
    assert server.stop() == 0
    assert server.trace_path is not None
    return read_trace(server.trace_path)


@pytest.fixture
def traced_edu(server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    return server_factory(device="edu", trace=True)


def test_every_line_is_one_json_object(traced_edu: ServerProcess) -> None:
    with traced_edu.connect() as client:
        client.device_info()
    traced_edu.clients.clear()
    stop_and_read(traced_edu)
    lines = Path(traced_edu.trace_path).read_text().splitlines()  # type: ignore[arg-type]
    assert lines
    for line in lines:
        record = json.loads(line)
        assert record["kind"] in ("msg", "event")
        assert isinstance(record["t"], (int, float))


def test_one_record_per_message_each_way(traced_edu: ServerProcess) -> None:
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


def test_error_replies_carry_the_errno(traced_edu: ServerProcess) -> None:
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


def test_posted_writes_have_no_reply_record(traced_edu: ServerProcess) -> None:
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


def test_fds_are_counted(traced_edu: ServerProcess, memfds, eventfds) -> None:
    client = traced_edu.connect()
    window: MemfdWindow = memfds(0x1000)
    client.dma_map(0x10_0000, 0x1000, fd=window.fd)
    (trigger,) = eventfds(1)
    install_intx(client, trigger)
    client.close()
    traced_edu.clients.clear()
    records = messages(stop_and_read(traced_edu))
    assert [r.fds for r in records if r.cmd == "DMA_MAP" and r.dir == "in"] == [1]
    assert [r.fds for r in records if r.cmd == "DEVICE_SET_IRQS" and r.dir == "in"] == [1]


def test_region_info_reply_with_fd_is_counted(server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory(device="gpio", trace=True)
    client = server.connect()
    _info, fd = client.region_info(1)
    assert fd is not None
    os.close(fd)
    client.close()
    server.clients.clear()
    records = messages(stop_and_read(server))
    replies = [r for r in records if r.cmd == "DEVICE_GET_REGION_INFO" and r.dir == "out"]
    assert replies[-1].fds == 1


def test_interrupt_transitions(traced_edu: ServerProcess, eventfds) -> None:
    client = traced_edu.connect()
    (trigger,) = eventfds(1)
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


def test_resample_eoi_and_config_events(traced_edu: ServerProcess, eventfds) -> None:
    client = traced_edu.connect()
    trigger, resample = eventfds(2)
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


def test_dma_requests_and_refusals_are_traced(traced_edu: ServerProcess) -> None:
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


def test_timestamps_never_go_back(traced_edu: ServerProcess, eventfds) -> None:
    client = traced_edu.connect()
    (trigger,) = eventfds(1)
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
        server = start_server(tmp_path, device=device, trace=True)
        with server.connect() as client:
            client.sync()
        server.clients.clear()
        assert server.stop(signal.SIGINT) == 0
    records = read_trace(str(tmp_path / "vfu.sock.trace"))
    assert len(events(records, "client-connected")) == 2


def test_trace_is_complete_after_a_client_leaves(traced_edu: ServerProcess) -> None:
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
