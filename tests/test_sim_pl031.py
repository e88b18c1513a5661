# SPDX-License-Identifier: BSD-3-Clause
"""The PL031 RTC model against ARM DDI 0224 and what Linux's rtc-pl031 does with it.

Register-level tests run the model on a virtual clock (its `clock` and the
scheduler advance together); the last ones serve it through a real server and
let real seconds pass.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from vfu_platform.testing import ProcessServer, install_intx, intx_unmask
from sim_doubles import ManualScheduler, take
from vfu_platform import vfio_abi
from vfu_platform.backends.base import AckRegister, DeviceContext
from vfu_platform.backends.guest import Bind, GuestIrq, GuestRegion, Trigger
from vfu_platform.backends.sim import pl031
from vfu_platform.backends.sim.pl031 import Pl031Device
from vfu_platform.backends.sim.primecell import compose_periphid
from vfu_platform.backends.sim.registry import create_model
from vfu_platform.bridge import irq_page
from vfu_platform.server.control import request

EPOCH = 1_700_000_000


class NoDma:
    def read(self, iova: int, size: int) -> bytes:
        raise AssertionError("pl031 does no DMA")

    def write(self, iova: int, data: bytes) -> None:
        raise AssertionError("pl031 does no DMA")


class Rtc:
    """A PL031 on a virtual clock, its IRQ wired (trigger installed, unmasked)."""

    def __init__(self, start_at: float = 0.25, **options: object) -> None:
        self.sched = ManualScheduler()
        self.sched.now = start_at  # the prescaler phase: boundaries at start_at + k
        self.dev = Pl031Device(clock=lambda: self.sched.now, **options)  # type: ignore[arg-type]
        self.dev.attach(DeviceContext(dma=NoDma(), scheduler=self.sched))
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.dev.set_irq_trigger(0, self.fd)
        self.dev.unmask_irq(0)

    def r32(self, offset: int) -> int:
        return int.from_bytes(self.dev.read(0, offset, 4), "little")

    def w32(self, offset: int, value: int) -> None:
        self.dev.write(0, offset, value.to_bytes(4, "little"))

    def fired(self) -> int:
        return take(self.fd)

    def eoi(self) -> None:
        """What the bridge does when the guest completes the interrupt."""
        self.dev.unmask_irq(0)

    def close(self) -> None:
        self.dev.close()
        os.close(self.fd)


@pytest.fixture
def rtc() -> Iterator[Rtc]:
    r = Rtc(epoch=EPOCH)
    yield r
    r.close()


# ---- description ------------------------------------------------------------


def test_description() -> None:
    dev = Pl031Device(epoch=0)
    (regs,) = dev.regions()
    assert (regs.size, regs.mmappable) == (0x1000, False)
    (irq,) = dev.irqs()
    assert irq.automasked
    assert dev.device_flags & vfio_abi.DEVICE_FLAGS_AMBA and dev.device_flags & vfio_abi.DEVICE_FLAGS_RESET
    assert not dev.device_flags & vfio_abi.DEVICE_FLAGS_PLATFORM
    assert dev.irq_regions == frozenset({0})
    assert dev.ack_registers == (AckRegister(irq=0, region=0, offset=pl031.REG_ICR, mask=1),)
    assert dev.compatible == ("arm,pl031", "arm,primecell")
    (guest,) = dev.guest_devices()
    assert guest.name == "pl031" and guest.bind is Bind.AMBA and guest.amba_id == 0x00141031
    assert guest.compatible == ("arm,pl031", "arm,primecell")
    assert guest.regions == (GuestRegion(0, size=0x1000),)
    assert guest.irqs == (GuestIrq(0, Trigger.LEVEL_HIGH),)
    dev.close()


def test_id_registers_match_the_declared_amba_id(rtc: Rtc) -> None:
    periph = [rtc.r32(0xFE0 + 4 * k) for k in range(4)]
    cell = [rtc.r32(0xFF0 + 4 * k) for k in range(4)]
    assert periph == [0x31, 0x10, 0x14, 0x00]  # the r1 part, as QEMU's pl031 (the kernel bench's host device)
    assert cell == [0x0D, 0xF0, 0x05, 0xB1]
    assert compose_periphid(periph) == 0x00141031 == rtc.dev.guest_devices()[0].amba_id
    # Linux's amba table entry for the ARM part: id 0x00041031, mask 0x000fffff
    assert compose_periphid(periph) & 0x000FFFFF == 0x00041031


def test_revision_option_changes_id_registers_and_descriptor_together() -> None:
    dev = create_model("pl031", {"revision": "0", "epoch": "0"})
    assert int.from_bytes(dev.read(0, 0xFE8, 4), "little") == 0x04
    assert dev.guest_devices()[0].amba_id == 0x00041031
    dev.close()
    with pytest.raises(ValueError, match="revision"):
        Pl031Device(revision=16)


def test_reset_values(rtc: Rtc) -> None:
    assert rtc.r32(pl031.REG_DR) == EPOCH
    assert [rtc.r32(o) for o in (pl031.REG_MR, pl031.REG_LR, pl031.REG_IMSC, pl031.REG_RIS, pl031.REG_MIS)] == [0] * 5
    assert rtc.r32(pl031.REG_CR) == pl031.CR_START  # started by default (QEMU's pl031 runs from power-on)
    assert rtc.r32(pl031.REG_ICR) == 0  # write-only
    assert rtc.r32(0x020) == 0 and rtc.r32(0xFDC) == 0  # unknown


def test_epoch_defaults_to_host_wall_clock() -> None:
    before = int(time.time())
    dev = Pl031Device()
    assert before <= dev.time() <= int(time.time()) + 1
    dev.close()


def test_epoch_option_from_strings_and_bad_values() -> None:
    dev = create_model("pl031", {"epoch": "0x1000"})
    assert dev.time() == 0x1000  # type: ignore[attr-defined]
    dev.close()
    with pytest.raises(ValueError, match="epoch"):
        create_model("pl031", {"epoch": str(1 << 32)})
    with pytest.raises(ValueError, match="not a valid int"):
        create_model("pl031", {"epoch": "soon"})


# ---- the counter ------------------------------------------------------------


def test_counter_counts_whole_seconds(rtc: Rtc) -> None:
    rtc.sched.advance(0.5)
    assert rtc.r32(pl031.REG_DR) == EPOCH
    rtc.sched.advance(0.5)  # past the first boundary (phase 0.25)
    assert rtc.r32(pl031.REG_DR) == EPOCH + 1
    rtc.sched.advance(10)
    assert rtc.r32(pl031.REG_DR) == EPOCH + 11 == rtc.dev.time()


def test_dr_is_read_only(rtc: Rtc) -> None:
    rtc.w32(pl031.REG_DR, 5)
    assert rtc.r32(pl031.REG_DR) == EPOCH


def test_load_sets_the_counter_and_keeps_the_prescaler_phase(rtc: Rtc) -> None:
    rtc.sched.advance(0.9)  # 1.15: 0.1 s before the next boundary
    rtc.w32(pl031.REG_LR, 1000)
    assert rtc.r32(pl031.REG_DR) == 1000
    assert rtc.r32(pl031.REG_LR) == 1000  # LR reads the last value written
    rtc.sched.advance(0.2)  # the boundary at 1.25 passed: not a full second after the load
    assert rtc.r32(pl031.REG_DR) == 1001


def test_counter_wraps_at_32_bits() -> None:
    r = Rtc(epoch=0xFFFF_FFFF)
    r.sched.advance(1)
    assert r.r32(pl031.REG_DR) == 0
    r.close()


def test_host_set_time_and_time(rtc: Rtc) -> None:
    rtc.dev.set_time(42)
    assert rtc.dev.time() == 42 == rtc.r32(pl031.REG_DR)
    assert rtc.r32(pl031.REG_LR) == 0  # the guest's LR is not what the host set
    with pytest.raises(ValueError):
        rtc.dev.set_time(-1)


def test_not_started_holds_until_the_guest_sets_cr() -> None:
    r = Rtc(epoch=100, start=False)
    assert r.r32(pl031.REG_CR) == 0
    r.sched.advance(5)
    assert r.r32(pl031.REG_DR) == 100
    r.w32(pl031.REG_CR, r.r32(pl031.REG_CR) | pl031.CR_START)  # what Linux's probe does
    assert r.r32(pl031.REG_CR) == 1
    r.sched.advance(2.01)
    assert r.r32(pl031.REG_DR) == 102
    r.w32(pl031.REG_CR, 0)  # once started, writing 0 does not stop it
    assert r.r32(pl031.REG_CR) == 1
    r.sched.advance(1)
    assert r.r32(pl031.REG_DR) == 103
    r.close()


def test_partial_writes_merge_into_the_register(rtc: Rtc) -> None:
    rtc.w32(pl031.REG_MR, 0x1122_3344)
    rtc.dev.write(0, pl031.REG_MR + 2, b"\xaa\xbb")
    assert rtc.r32(pl031.REG_MR) == 0xBBAA_3344
    assert rtc.dev.read(0, pl031.REG_MR + 3, 1) == b"\xbb"


# ---- the match interrupt -----------------------------------------------------


def test_alarm_fires_at_the_matching_second(rtc: Rtc) -> None:
    rtc.w32(pl031.REG_MR, EPOCH + 3)
    rtc.w32(pl031.REG_IMSC, 1)
    rtc.sched.advance(2.5)  # 2.75, counter EPOCH+2 (boundaries at 1.25, 2.25)
    assert rtc.r32(pl031.REG_DR) == EPOCH + 2
    assert rtc.fired() == 0 and rtc.r32(pl031.REG_RIS) == 0
    rtc.sched.advance(0.8)  # 3.55: past the boundary at 3.25
    assert rtc.fired() == 1
    assert rtc.r32(pl031.REG_DR) == EPOCH + 3
    assert (rtc.r32(pl031.REG_RIS), rtc.r32(pl031.REG_MIS)) == (1, 1)
    assert rtc.dev.line_asserted(0)


def test_alarm_is_latched_until_icr(rtc: Rtc) -> None:
    rtc.w32(pl031.REG_MR, EPOCH + 1)
    rtc.w32(pl031.REG_IMSC, 1)
    rtc.sched.advance(1.01)  # the tick runs just after the boundary
    assert rtc.fired() == 1
    rtc.sched.advance(5)  # the counter moves on; RIS stays
    assert rtc.r32(pl031.REG_RIS) == 1
    rtc.eoi()  # still asserted: a level line fires again when unmasked
    assert rtc.fired() == 1
    rtc.w32(pl031.REG_ICR, 0)  # writing 0 clears nothing
    assert rtc.r32(pl031.REG_RIS) == 1
    rtc.w32(pl031.REG_ICR, 1)
    assert (rtc.r32(pl031.REG_RIS), rtc.r32(pl031.REG_MIS)) == (0, 0)
    assert not rtc.dev.line_asserted(0)
    rtc.eoi()
    assert rtc.fired() == 0


def test_imsc_masks_the_line_but_not_ris(rtc: Rtc) -> None:
    rtc.w32(pl031.REG_MR, EPOCH + 1)
    rtc.sched.advance(1.0)
    assert rtc.r32(pl031.REG_RIS) == 1 and rtc.r32(pl031.REG_MIS) == 0
    assert rtc.fired() == 0 and not rtc.dev.line_asserted(0)
    rtc.w32(pl031.REG_IMSC, 0xFFFF_FFFF)  # only bit 0 exists
    assert rtc.r32(pl031.REG_IMSC) == 1
    assert rtc.fired() == 1 and rtc.r32(pl031.REG_MIS) == 1
    rtc.w32(pl031.REG_IMSC, 0)
    assert not rtc.dev.line_asserted(0)


def test_match_register_write_equal_to_the_counter_fires_at_once(rtc: Rtc) -> None:
    rtc.w32(pl031.REG_IMSC, 1)
    rtc.w32(pl031.REG_MR, EPOCH)
    assert rtc.fired() == 1 and rtc.r32(pl031.REG_RIS) == 1


def test_load_equal_to_match_fires_and_a_load_past_it_does_not(rtc: Rtc) -> None:
    rtc.w32(pl031.REG_IMSC, 1)
    rtc.w32(pl031.REG_MR, 5000)
    rtc.w32(pl031.REG_LR, 6000)  # jumps over MR: no match, as on the hardware
    assert rtc.fired() == 0 and rtc.r32(pl031.REG_RIS) == 0
    rtc.w32(pl031.REG_LR, 5000)
    assert rtc.fired() == 1 and rtc.r32(pl031.REG_RIS) == 1


def test_host_set_time_to_just_before_the_alarm(rtc: Rtc) -> None:
    rtc.w32(pl031.REG_MR, 2_000_000_000)
    rtc.w32(pl031.REG_IMSC, 1)
    rtc.dev.set_time(2_000_000_000 - 2)
    rtc.sched.advance(1.01)  # 1.26
    assert rtc.fired() == 0
    rtc.sched.advance(1.0)  # 2.26
    assert rtc.fired() == 1 and rtc.dev.time() == 2_000_000_000


def test_a_late_tick_still_matches_the_second_it_skipped(rtc: Rtc) -> None:
    rtc.w32(pl031.REG_MR, EPOCH + 2)
    rtc.w32(pl031.REG_IMSC, 1)
    rtc.dev.attach(None)  # ticks parked, the counter itself keeps counting
    rtc.sched.advance(5)
    assert rtc.fired() == 0
    assert rtc.r32(pl031.REG_RIS) == 1  # the access catches up: the counter passed MR
    assert rtc.fired() == 1


def test_alarm_repeats_after_a_counter_wrap_only(rtc: Rtc) -> None:
    rtc.w32(pl031.REG_MR, EPOCH + 1)
    rtc.sched.advance(1.0)
    rtc.w32(pl031.REG_ICR, 1)
    rtc.sched.advance(10)
    assert rtc.r32(pl031.REG_RIS) == 0
    assert rtc.dev.matches == 1


def test_reset_keeps_time_and_clears_the_apb_side(rtc: Rtc) -> None:
    rtc.w32(pl031.REG_LR, 7777)
    rtc.w32(pl031.REG_MR, 7777)  # matches at once
    rtc.w32(pl031.REG_IMSC, 1)
    assert rtc.fired() == 1
    rtc.sched.advance(3)
    rtc.dev.reset()
    assert rtc.dev.line_masked(0)
    assert [rtc.r32(o) for o in (pl031.REG_MR, pl031.REG_LR, pl031.REG_IMSC, pl031.REG_RIS)] == [0, 0, 0, 0]
    assert rtc.r32(pl031.REG_DR) == 7780 and rtc.r32(pl031.REG_CR) == 1
    # the second-boundary timer was re-armed by the reset
    rtc.eoi()
    rtc.w32(pl031.REG_MR, 7782)
    rtc.w32(pl031.REG_IMSC, 1)
    rtc.sched.advance(2.01)
    assert rtc.fired() == 1


def test_one_timer_at_a_time(rtc: Rtc) -> None:
    rtc.sched.advance(30)
    assert rtc.sched.pending() == 1
    rtc.dev.reset()
    assert rtc.sched.pending() == 1


# ---- control commands ---------------------------------------------------------


def test_control_commands(rtc: Rtc) -> None:
    assert rtc.dev.control(["get"]) == f"ok {EPOCH}"
    assert rtc.dev.control(["set", "1234"]) == "ok 1234"
    assert rtc.dev.time() == 1234
    assert rtc.dev.control(["set", "0x10"]) == "ok 16"
    assert rtc.dev.control(["status"]).startswith("ok time=16 mr=0 lr=0 cr=1 imsc=0 ris=0 line=0")
    assert rtc.dev.control(["help"]).startswith("ok ")
    for bad in (["set"], ["set", "x"], ["set", "-1"], ["set", str(1 << 32)], ["get", "1"], ["frob"], []):
        reply = rtc.dev.control(bad)
        assert reply.startswith("error: pl031: "), (bad, reply)
    assert rtc.dev.time() == 16


# ---- through the server ---------------------------------------------------------

REGS = 0
IRQ_PAGE = 1


@pytest.fixture
def served(vfu_server: Callable[..., ProcessServer], tmp_path: Path) -> tuple[ProcessServer, str]:
    control = str(tmp_path / "rtc.control")
    return vfu_server("pl031", extra=["-o", f"epoch={EPOCH}", "--control", control]), control


def test_served_identity_and_ids(served: tuple[ProcessServer, str]) -> None:
    server, _ = served
    with server.connect() as client:
        info = client.device_info()
        assert info.num_regions >= 9
        assert [client.read32(REGS, 0xFE0 + 4 * k) for k in range(8)] == [0x31, 0x10, 0x14, 0x00, 0x0D, 0xF0, 0x05, 0xB1]
        assert abs(client.read32(REGS, pl031.REG_DR) - EPOCH) <= 30
        ids = client.region_read(vfio_abi.PCI_CONFIG_REGION_INDEX, 0, 4)
        assert int.from_bytes(ids, "little") == 0x5646_1234
        assert int.from_bytes(client.region_read(vfio_abi.PCI_CONFIG_REGION_INDEX, 0x09, 3), "little") == 0x088000


def test_served_alarm_fires_at_the_right_second(served: tuple[ProcessServer, str], vfu_eventfds) -> None:
    server, control = served
    (trigger,) = vfu_eventfds(1)
    with server.connect() as client:
        install_intx(client, trigger)
        client.write32(REGS, pl031.REG_LR, 1_800_000_000)
        client.write32(REGS, pl031.REG_MR, 1_800_000_002)
        client.write32(REGS, pl031.REG_ICR, 1)  # what Linux's alarm_irq_enable does first
        client.write32(REGS, pl031.REG_IMSC, 1)
        loaded = time.monotonic()
        trigger.expect_none(wait=0.9, what="alarm before its second")  # it is due 1..2 s after the load
        trigger.expect_one(what="alarm")
        assert 1.0 <= time.monotonic() - loaded <= 2.5
        assert client.read32(REGS, pl031.REG_DR) == 1_800_000_002
        assert client.read32(REGS, pl031.REG_MIS) == 1
        assert client.read32(IRQ_PAGE, irq_page.IRQ_ACTIVE) == 0
        assert request(control, ["rtc", "status"]).startswith("ok time=1800000002 mr=1800000002")
        # the guest's handler: ICR (the ack register) and the INTx unmask end the interrupt
        client.write32(REGS, pl031.REG_ICR, 1)
        intx_unmask(client)
        trigger.expect_none(what="alarm after ICR")
        assert client.read32(IRQ_PAGE, irq_page.IRQ_ACTIVE) == irq_page.NO_IRQ


def test_served_host_sets_the_clock_through_the_control_socket(served: tuple[ProcessServer, str], vfu_eventfds) -> None:
    server, control = served
    (trigger,) = vfu_eventfds(1)
    with server.connect() as client:
        install_intx(client, trigger)
        client.write32(REGS, pl031.REG_MR, 1_234_567_890)
        client.write32(REGS, pl031.REG_IMSC, 1)
        assert request(control, ["rtc", "set", "1234567890"]) == "ok 1234567890"
        trigger.expect_one(what="alarm when the host set the clock onto MR")
        assert client.read32(REGS, pl031.REG_RIS) == 1
        assert int(request(control, ["get"]).split()[1]) in (1_234_567_890, 1_234_567_891)
