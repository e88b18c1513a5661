# SPDX-License-Identifier: BSD-3-Clause
"""Fuzzing in the test suite: the short, deterministic run of the coverage-guided targets.

tests/fuzz/fuzz_targets.py holds the atheris targets (the decoder, the whole session
over a real socketpair); this runs them from the seed corpus of real QEMU sessions
(tests/fuzz/corpus/seed, rebuilt from the recorded client trace by
tests/fuzz/qemu_corpus.py) with a fixed seed: 7*10^4 decoder and 3*10^4 session
inputs, in child processes.  Each target checks its own oracle per input (see its
docstring); here: exit 0, every input run, no crash input, no traceback, fds flat,
RSS flat.  The long run is scripts/fuzz (10^6 per target).

Also here: a hypothesis state machine that plays a client against a real server
process, mixing well-formed and damaged messages, and checks every answer.
"""
from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

sys.path.insert(0, str(Path(__file__).resolve().parent / "fuzz"))

import qemu_corpus  # noqa: E402
import runner  # noqa: E402
from vfu_platform.testing import ProcessServer, serve_in_subprocess  # noqa: E402
from vfu_platform.protocol import messages as m  # noqa: E402
from vfu_platform.protocol.constants import HEADER_SIZE, Command, MsgFlags  # noqa: E402
from vfu_platform.protocol.header import HEADER  # noqa: E402

TRACE = Path("/work/shared/docs/qemu-client-trace.txt")
SHORT_RUNS = {"decoder": 70_000, "session": 30_000}
#: coverage (libFuzzer "cov") a short run reaches at least: well below what it reaches (77, ~900)
MIN_COVERAGE = {"decoder": 60, "session": 600}


def test_seed_corpus_is_the_recorded_qemu_session() -> None:
    """The stored seeds are what the generator makes from the trace, and they are small."""
    stored = {p.name: p.read_bytes() for p in runner.SEED_CORPUS.iterdir()}
    assert sum(len(v) for v in stored.values()) < 64 << 10
    session = stored["session.bin"]
    pos, commands = 0, []
    while pos < len(session):
        header = HEADER.unpack_from(session, pos)
        commands.append(header[1])
        pos += header[2]
    assert pos == len(session) and len(commands) == 194
    assert commands[0] == Command.VERSION and commands.count(Command.REGION_READ) == 80
    if TRACE.exists():  # shared/ is laid beside the repository for sessions and CI
        assert qemu_corpus.seed_files(TRACE.read_text()) == stored


def test_the_seed_session_is_served_as_qemu_was(vfu_server) -> None:
    """Replayed to a real server, the recorded session gets one reply per non-posted request, none an error
    it should not be (the ones QEMU's firmware provokes: unmapping what was never mapped)."""
    server: ProcessServer = vfu_server("edu")
    client = server.connect(negotiate=False)
    session = (runner.SEED_CORPUS / "session.bin").read_bytes()
    pos, waits = 0, []
    while pos < len(session):
        msg_id, command, size, flags, _ = HEADER.unpack_from(session, pos)
        if not flags & MsgFlags.NO_REPLY:
            waits.append((msg_id, command))
        pos += size
    client.send_raw(session)
    errors = []
    for msg_id, command in waits:
        reply = client.wait_reply(msg_id)
        reply.close_fds()
        assert reply.header.command == command
        if reply.header.is_error:
            errors.append((command, reply.header.error))
    assert all(err == (Command.DMA_UNMAP, errno.ENOENT) for err in errors), errors


@pytest.mark.parametrize("target", list(SHORT_RUNS))
def test_fuzz_short_run(target: str, tmp_path: Path) -> None:
    result = runner.run(target, SHORT_RUNS[target], seed=1, workdir=tmp_path / "corpus",
                        artifact_dir=tmp_path / "crashes", python=sys.executable, report_every=10_000)
    print(result.summary())
    assert result.returncode == 0 and not result.artifacts, result.log[-3000:]
    assert result.execs == SHORT_RUNS[target]
    assert result.tracebacks == 0
    assert result.coverage >= MIN_COVERAGE[target], "the target must reach the code it fuzzes"
    assert len(result.fds) >= 3 and all(fds == base for fds, base in result.fds), result.fds
    assert result.rss_mb[-1] - result.rss_mb[0] < 32, f"RSS grew: {result.rss_mb}"


# --------------------------------------------------------------------------- stateful


class ClientAgainstServer(RuleBasedStateMachine):
    """A client doing valid and broken things in any order; the server must answer each as it should."""

    server: ProcessServer

    @initialize()
    def connect(self) -> None:
        self.client = self.server.connect()
        self.liveness: int | None = None
        self.maps: set[int] = set()

    def teardown(self) -> None:
        self.client.close()

    def _error(self, data: bytes, msg_id: int) -> int:
        self.client.send_raw(data)
        reply = self.client.wait_reply(msg_id)
        reply.close_fds()
        return reply.header.error if reply.header.is_error else 0

    @rule(value=st.integers(0, 0xFFFFFFFF), posted=st.booleans())
    def write_liveness(self, value: int, posted: bool) -> None:
        self.client.write32(0, 0x04, value, posted=posted)
        self.liveness = value

    @rule(index=st.integers(0, 12), offset=st.integers(0, 1 << 21), count=st.sampled_from([0, 1, 3, 4, 8, 4096, 1 << 20, (1 << 20) + 1, 1 << 31]))
    def region_read(self, index: int, offset: int, count: int) -> None:
        msg_id = self.client.next_id()
        data = HEADER.pack(msg_id, Command.REGION_READ, 32, 0, 0) + m.RegionAccess(offset, index, count).pack()
        self.client.send_raw(data)
        reply = self.client.wait_reply(msg_id)
        size = {0: 1 << 20, 1: 0x1000, 7: 256}.get(index, 0)
        if count > 1 << 20 or offset + count > size:
            assert reply.header.is_error and reply.header.error == errno.EINVAL
        else:
            assert not reply.header.is_error and len(reply.body) == 16 + count

    @rule(iova=st.integers(0, 8).map(lambda p: p << 20), size=st.sampled_from([0x1000, 0x3000]))
    def dma_map(self, iova: int, size: int) -> None:
        fd = os.memfd_create("hyp")
        os.ftruncate(fd, size)
        try:
            overlaps = any(iova < base + 0x4000 and base < iova + size for base in self.maps)
            try:
                self.client.dma_map(iova, size, fd=fd)
                assert not overlaps or iova in self.maps
                self.maps.add(iova)
            except Exception as exc:  # noqa: BLE001 - checked
                assert overlaps, exc
        finally:
            os.close(fd)

    @rule(data=st.binary(min_size=0, max_size=64), command=st.integers(0, 20), flags=st.sampled_from([0, 1, 2, 0x21]))
    def junk(self, data: bytes, command: int, flags: int) -> None:
        msg_id = self.client.next_id()
        message = HEADER.pack(msg_id, command, HEADER_SIZE + len(data), flags, 0) + data
        if command in (Command.VERSION, Command.DMA_MAP, Command.DMA_UNMAP, Command.DEVICE_RESET,
                       Command.DEVICE_SET_IRQS, Command.REGION_WRITE, Command.REGION_WRITE_MULTI) and flags == 0:
            return  # could be valid and change state this model does not follow
        err = self._error(message, msg_id)
        if flags & 0xF or command not in range(1, 19) or command in (11, 12, 14):
            assert err == errno.EINVAL
        else:
            assert err in (0, errno.EINVAL, errno.ENOTTY, errno.ENOENT)

    @invariant()
    def still_serving(self) -> None:
        if self.liveness is not None:
            assert self.client.read32(0, 0x04) == ~self.liveness & 0xFFFFFFFF


def test_session_state_machine(tmp_path: Path) -> None:
    server = serve_in_subprocess(directory=tmp_path, model="edu")
    try:
        ClientAgainstServer.server = server
        run = ClientAgainstServer.TestCase
        run.settings = settings(max_examples=30, stateful_step_count=25, deadline=None, derandomize=True,
                                suppress_health_check=list(HealthCheck))
        run().runTest()
        assert server.alive() and "Traceback" not in server.stderr()
    finally:
        assert server.stop() == 0
