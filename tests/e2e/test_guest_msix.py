# SPDX-License-Identifier: BSD-3-Clause
"""Platform IRQs as MSI-X vectors, one per line, seen by guest vfio-pci.

Our server's gpio model in `--irq-mode msix`, driven inside the guest through
vfio-pci and the project's own `VfioHostBackend` (type1 container behind a vIOMMU:
no Debian kernel has VFIO_NOIOMMU), with one eventfd per vector
(testbench/guest/msix.py).  Twice:

* `acks=model`: the gpio's ack registers are exact EOIs: each line alone on its own
  vector once; lines 0,1,2 raised at one instant arrive one at a time in FIFO order,
  each only after the previous one's ack, with the waiting ones in the PBA; the edge
  line arrives at once, even while a level line is ACTIVE;
* `acks=none` (`[bridge] use_model_acks = false`): the EOI is the first trapped
  access after an injection; a single trapped read completes one EOI, not two.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from testbench import qemu

pytestmark = pytest.mark.qemu
GuestFactory = Callable[..., qemu.GuestResult]

QEMU_TRACE = ["vfio_msix*", "vfio_user_set_irqs*", "vfio_user_region_*"]
COMMON_CHECKS = {
    "params", "find-device", "vfio-bind", "vfio-open", "vfio-regions", "vfio-msix-info", "config-command",
    "gpio-ident", "irq-page", "irq-route", "msix-no-spurious", "alone-line0", "alone-line1", "alone-line2",
    "alone-line3", "edge-alone", "no-strays", "msix-disable",
}
MODEL_ACK_CHECKS = COMMON_CHECKS | {"edge-bypasses-active", "fifo-order", "fifo-pba", "fifo-quiet"}
NO_ACK_CHECKS = COMMON_CHECKS | {"noack-fifo-order", "noack-read-eoi", "noack-read-eoi-once", "noack-fifo-quiet",
                                 "noack-level-refire"}


def _run(run_guest: GuestFactory, name: str, acks: str, config: Path | None) -> qemu.GuestResult:
    extra = ["--irq-mode", "msix"]
    if config is not None:
        extra += ["--config", str(config)]
    return run_guest(name, "msix", device="gpio", server_extra=extra, params={"acks": acks},
                     qemu_trace=QEMU_TRACE, timeout=240.0, boot_timeout=120.0, **qemu.viommu_options())


@pytest.fixture(scope="module")
def msix_model_acks(run_guest: GuestFactory) -> qemu.GuestResult:
    return _run(run_guest, "gpio-msix-acks", "model", None)


@pytest.fixture(scope="module")
def msix_no_acks(run_guest: GuestFactory, tmp_path_factory: pytest.TempPathFactory) -> qemu.GuestResult:
    config = tmp_path_factory.mktemp("msix-config") / "no-acks.toml"
    config.write_text("[bridge]\nuse_model_acks = false\n")
    return _run(run_guest, "gpio-msix-noacks", "none", config)


def assert_all_passed(result: qemu.GuestResult, expected: set[str]) -> None:
    assert result.passed, result.describe()
    missing = expected - set(result.checks)
    assert not missing, f"checks never ran: {sorted(missing)}\n{result.describe()}"


def test_msix_exact_acks(msix_model_acks: qemu.GuestResult) -> None:
    assert_all_passed(msix_model_acks, MODEL_ACK_CHECKS)
    assert "per-ack=0|1|2" in msix_model_acks.checks["fifo-order"].detail, msix_model_acks.describe()
    assert "pba=0x6,0x4,0x0" in msix_model_acks.checks["fifo-pba"].detail, msix_model_acks.describe()


def test_msix_first_access_eoi(msix_no_acks: qemu.GuestResult) -> None:
    assert_all_passed(msix_no_acks, NO_ACK_CHECKS)
    assert "per-access=0|1|2" in msix_no_acks.checks["noack-fifo-order"].detail, msix_no_acks.describe()


def signal_targets(result: qemu.GuestResult) -> list[object]:
    """The server's `irq-signal` events, in order: which vector it wrote each time."""
    targets = []
    for line in (result.workdir / qemu.SERVER_TRACE_NAME).read_text().splitlines():
        rec = json.loads(line)
        if rec.get("kind") == "event" and rec.get("event") == "irq-signal":
            targets.append(rec["fields"]["target"])
    return targets


# What the guest program raises, in order (see guest/msix.py): lines 0-3 alone, the edge
# alone, then per mode.  The server must have signalled exactly these vectors.
EXPECTED_SIGNALS = {
    # line 3 then the edge while it is ACTIVE; FIFO 0,1,2
    "msix_model_acks": [0, 1, 2, 3, 4, 3, 4, 0, 1, 2],
    # FIFO 0,1,2; line 3, and again after the read that EOIed it while still asserted
    "msix_no_acks": [0, 1, 2, 3, 4, 0, 1, 2, 3, 3],
}


@pytest.mark.parametrize("which", sorted(EXPECTED_SIGNALS))
def test_msix_server_trace(which: str, request: pytest.FixtureRequest) -> None:
    """Host side of the same runs: the server signalled exactly the vectors the guest saw,
    only MSI-X vectors, and answered no request with an error."""
    result: qemu.GuestResult = request.getfixturevalue(which)
    assert result.passed, result.describe()
    assert signal_targets(result) == EXPECTED_SIGNALS[which]
    trace = result.server_trace()
    assert not trace.errors, f"error replies: {trace.errors}"
