# SPDX-License-Identifier: BSD-3-Clause
"""Strict conformance: the corners where the server used to differ from libvfio-user or from itself.

* A request carrying the reply type bit is answered EINVAL (libvfio-user's
  `test_unsolicited_reply`), or not at all with NO_REPLY, and the session keeps serving.
* SET_IRQS TRIGGER | DATA_NONE, start 0, count 0 (QEMU's blind "disable") succeeds on an
  index with no vectors for a host device passed through, as for a simulated one.
* Every SET_IRQS path: the passthrough device (over a fake host that answers like
  vfio-pci) and the simulated bridge give the same answer to the same request, from the
  same interrupt state, with one documented exception (MSI-X MASK/UNMASK, which vfio-pci
  does not implement).
"""
from __future__ import annotations

import errno
import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from fake_host import EDGE, LEVEL, FakeHostBackend, VfioPciIrqs, serve_in_thread
from vfu_platform.testing import ProcessServer
from vfu_platform import vfio_abi
from vfu_platform.backends.base import BackendError
from vfu_platform.backends.sim.edu import EduDevice
from vfu_platform.backends.sim.gpio import GpioDevice
from vfu_platform.backends.vfio.discovery import HostIrq
from vfu_platform.bridge.device import BridgeOptions, PciBridge
from vfu_platform.bridge.pci_passthrough import PciPassthrough
from vfu_platform.client import VfioUserClient, VfioUserError, make_eventfd
from vfu_platform.protocol import messages as m
from vfu_platform.protocol.constants import HEADER_SIZE, Command, MsgFlags
from vfu_platform.protocol.header import HEADER

INTX, MSI, MSIX, ERR, REQ = range(5)
MASK, UNMASK, TRIGGER = vfio_abi.IRQ_SET_ACTION_MASK, vfio_abi.IRQ_SET_ACTION_UNMASK, vfio_abi.IRQ_SET_ACTION_TRIGGER
NONE, BOOL, EVENTFD = vfio_abi.IRQ_SET_DATA_NONE, vfio_abi.IRQ_SET_DATA_BOOL, vfio_abi.IRQ_SET_DATA_EVENTFD
REPLY = int(MsgFlags.TYPE_REPLY)


# --------------------------------------------------------------------------- unsolicited replies


def error_of(client: VfioUserClient, data: bytes, msg_id: int) -> int:
    client.send_raw(data)
    reply = client.wait_reply(msg_id)
    reply.close_fds()
    assert reply.header.size == HEADER_SIZE
    return reply.header.error if reply.header.is_error else 0


@pytest.mark.parametrize(("command", "payload"), [
    (Command.DEVICE_SET_IRQS, b""),  # libvfio-user's test_unsolicited_reply, exactly
    (Command.DEVICE_RESET, b""),
    (Command.DEVICE_GET_INFO, m.DeviceInfo(16).pack()),
    (Command.REGION_READ, m.RegionAccess(0, 0, 4).pack()),  # not taken by the REGION_READ fast path
    (Command.DMA_READ, m.DmaAccess(0, 4).pack()),  # a reply to a DMA request the server never sent
], ids=["set-irqs-header-only", "device-reset", "get-info", "region-read", "dma-read"])
def test_unsolicited_reply_gets_einval_and_the_session_goes_on(vfu_server, command: int, payload: bytes) -> None:
    server: ProcessServer = vfu_server("edu")
    client = server.connect()
    data = HEADER.pack(0xBAD2, command, HEADER_SIZE + len(payload), REPLY, 0) + payload
    assert error_of(client, data, 0xBAD2) == errno.EINVAL
    client.send_raw(HEADER.pack(0xBAD3, command, HEADER_SIZE + len(payload), REPLY | MsgFlags.NO_REPLY, 0) + payload)
    client.expect_no_reply()
    assert client.read32(0, 0) == 0x010000ED  # edu identification: still serving
    assert server.alive() and "Traceback" not in server.stderr()


def test_error_flagged_unsolicited_reply_gets_einval(vfu_server) -> None:
    server: ProcessServer = vfu_server("edu")
    client = server.connect()
    data = HEADER.pack(77, Command.DEVICE_RESET, HEADER_SIZE, REPLY | MsgFlags.ERROR, errno.EIO)
    assert error_of(client, data, 77) == errno.EINVAL
    assert client.device_info().num_regions == 9


# --------------------------------------------------------------------------- a disable on an index without vectors


def bridge_like_irqs(msix_vectors: int) -> list[HostIrq]:
    """A host function whose IRQ indexes count like the bridge's (INTx 1, MSI 0, MSI-X n, ERR 1, REQ 0)."""
    return [HostIrq(INTX, LEVEL, 1), HostIrq(MSI, EDGE, 0), HostIrq(MSIX, EDGE, msix_vectors),
            HostIrq(ERR, EDGE, 1), HostIrq(REQ, EDGE, 0)]


def test_the_kernel_model_refuses_what_qemu_sends_blindly() -> None:
    """What the passthrough must not forward: vfio-pci answers EINVAL to a disable of an empty index."""
    kernel = VfioPciIrqs([1, 1, 4, 0, 1])
    with pytest.raises(BackendError) as info:
        kernel.set_irqs(ERR, TRIGGER, NONE, 0, 0, ())
    assert info.value.errno == errno.EINVAL
    with pytest.raises(BackendError):
        kernel.set_irqs(MSIX, TRIGGER, NONE, 0, 0, ())  # MSI-X is not enabled: EINVAL too


@pytest.mark.parametrize("index", [INTX, MSI, MSIX, ERR, REQ])
def test_passthrough_disable_of_any_index_succeeds(tmp_path: Path, index: int) -> None:
    fake = FakeHostBackend(kernel_checks=True, irqs=[HostIrq(INTX, LEVEL, 1), HostIrq(MSI, EDGE, 0),
                                                      HostIrq(MSIX, EDGE, 0), HostIrq(ERR, EDGE, 0),
                                                      HostIrq(REQ, EDGE, 0)])
    with serve_in_thread(PciPassthrough(fake), tmp_path) as running:  # type: ignore[arg-type]
        with VfioUserClient.connect(running.socket_path) as client:
            assert client.irq_info(index).count == (1 if index == INTX else 0)
            client.set_irqs(index, TRIGGER | NONE, 0, 0)  # raises VfioUserError on EINVAL
            assert client.device_info().num_irqs == 5


# --------------------------------------------------------------------------- differential: passthrough vs bridge

SHAPES = {"edu-intx": 0, "gpio-msix": 5}
START_COUNT = [(0, 0), (0, 1), (1, 0), (0, 2), (1, 1), (4, 1), (0, 5)]
# (action, data type) pairs: every combination, also those validation refuses.
KINDS = list(itertools.product((MASK, UNMASK, TRIGGER), (NONE, BOOL, EVENTFD)))

#: Where the two are allowed to differ, and how: vfio-pci has no MSI/MSI-X masking
#: (VFIO_IRQ_SET_ACTION_MASK/UNMASK on those indexes is ENOTTY); QEMU never sends it,
#: it masks an MSI-X vector by swapping its eventfd.  The bridge honours it.
EXPECTED_DIFFERENCES = {(MSIX, MASK), (MSIX, UNMASK)}


def make_bridge(shape: str) -> PciBridge:
    if shape == "edu-intx":
        return PciBridge(EduDevice())
    return PciBridge(GpioDevice(), BridgeOptions(irq_mode="msix"))


def answer(client: VfioUserClient, index: int, flags: int, start: int, count: int, with_fds: bool) -> int:
    fds = [make_eventfd() for _ in range(count)] if with_fds else []
    data = b"\x01" * count if flags & BOOL else b""
    try:
        client.set_irqs(index, flags, start, count, fds, data=data)
        return 0
    except VfioUserError as exc:
        return exc.errno
    finally:
        for fd in fds:
            os.close(fd)


def prepare(client: VfioUserClient, state: str, msix_vectors: int, keep: list[int]) -> None:
    if state == "fresh":
        return
    trigger, err = make_eventfd(), make_eventfd()
    keep += [trigger, err]
    client.set_irqs(INTX, TRIGGER | EVENTFD, 0, 1, [trigger])
    client.set_irqs(ERR, TRIGGER | EVENTFD, 0, 1, [err])
    if msix_vectors:
        vectors = [make_eventfd() for _ in range(msix_vectors)]
        keep += vectors
        client.set_irqs(MSIX, TRIGGER | EVENTFD, 0, msix_vectors, vectors)


def requests(index: int) -> Iterator[tuple[int, int, int, bool]]:
    for (action, data_type), (start, count) in itertools.product(KINDS, START_COUNT):
        for with_fds in ((False, True) if data_type == EVENTFD and count else (False,)):
            yield action | data_type, start, count, with_fds


def answers(socket_path: str, index: int, state: str, msix_vectors: int) -> dict[tuple[int, int, int, bool], int]:
    out = {}
    for request in requests(index):
        keep: list[int] = []
        with VfioUserClient.connect(socket_path) as client:  # each request from the same state
            prepare(client, state, msix_vectors, keep)
            out[request] = answer(client, index, *request)
            client.device_info()  # still serving
        for fd in keep:
            os.close(fd)
    return out


@pytest.mark.parametrize("state", ["fresh", "wired"])
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("index", [INTX, MSI, MSIX, ERR, REQ, 5], ids=["intx", "msi", "msix", "err", "req", "bad-index"])
def test_passthrough_answers_set_irqs_like_the_bridge(tmp_path: Path, shape: str, state: str, index: int) -> None:
    msix_vectors = SHAPES[shape]
    (tmp_path / "bridge").mkdir()
    (tmp_path / "passthrough").mkdir()
    with serve_in_thread(make_bridge(shape), tmp_path / "bridge") as running:
        expected = answers(running.socket_path, index, state, msix_vectors)
    fake = FakeHostBackend(kernel_checks=True, irqs=bridge_like_irqs(msix_vectors))
    with serve_in_thread(PciPassthrough(fake), tmp_path / "passthrough") as running:  # type: ignore[arg-type]
        got = answers(running.socket_path, index, state, msix_vectors)
    assert not fake.kernel_fds, "every eventfd handed to the host was taken back when the clients left"
    accepted = sum(1 for v in expected.values() if v == 0)
    if index < 5:
        assert 0 < accepted < len(expected), "the grid holds both accepted and refused requests"
    else:
        assert accepted == 0 and set(expected.values()) == {errno.EINVAL}
    differences = {req: (expected[req], got[req]) for req in expected if expected[req] != got[req]}
    allowed = {req: diff for req, diff in differences.items()
               if (index, req[0] & vfio_abi.IRQ_SET_ACTION_TYPE_MASK) in EXPECTED_DIFFERENCES}
    assert differences == allowed, {f"flags {r[0]:#x} start {r[1]} count {r[2]} fds {r[3]}": d
                                    for r, d in differences.items() if r not in allowed}
    for bridge_errno, passthrough_errno in allowed.values():
        assert (bridge_errno, passthrough_errno) == (0, errno.ENOTTY)
