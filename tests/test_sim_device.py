# SPDX-License-Identifier: BSD-3-Clause
"""The simulator base: regions, IRQ semantics (vfio-platform), deferred work, DMA, registry."""

from __future__ import annotations

import errno
import mmap
import os
from collections.abc import Callable, Iterator

import pytest

from vfu_platform import vfio_abi
from vfu_platform.backends.base import BackendError, DeviceContext
from vfu_platform.backends.sim import (
    EduDevice,
    GpioDevice,
    MemoryRegion,
    RegisterRegion,
    SimDevice,
    create_model,
    known_models,
)
from vfu_platform.backends.sim.registers import natural_chunks
from sim_doubles import ManualScheduler, RamDma, take

# ---- test doubles -----------------------------------------------------------


@pytest.fixture
def eventfds() -> Iterator[Callable[[], int]]:
    opened: list[int] = []

    def make() -> int:
        fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        opened.append(fd)
        return fd

    yield make
    for fd in opened:
        os.close(fd)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# ---- a tiny user model ------------------------------------------------------


class Tiny(SimDevice):
    """One register region, one memory region, a level and an edge line.

    Registers: 0x0 value (RW, 64-bit); 0x8 line (write bit0 drives the level
    line); 0xc pulse (any write); 0x10 DMA now (wrongly, inside the write);
    0x14 DMA later (deferred).
    """

    name = "tiny"
    compatible = ("test,tiny",)

    def __init__(self, value: int = 0, label: str = "t", fast: bool = False) -> None:
        super().__init__()
        self.initial = value
        self.label = label
        self.fast = fast
        self.accesses: list[tuple[str, int, int]] = []
        self.add_region(RegisterRegion(0x100, self.reg_read, self.reg_write, name="regs"))
        self.mem = MemoryRegion(0x1000, name="mem")
        self.add_region(self.mem)
        self.level = self.add_level_irq("level")
        self.edge = self.add_edge_irq("edge")
        self.dma_result: bytes | None = None
        self.on_reset()

    def on_reset(self) -> None:
        self.value = self.initial

    def reg_read(self, offset: int, size: int) -> int:
        self.accesses.append(("r", offset, size))
        if offset == 0:
            return self.value
        return -1

    def reg_write(self, offset: int, size: int, value: int) -> None:
        self.accesses.append(("w", offset, size))
        if offset == 0:
            self.value = value
        elif offset == 0x8:
            self.set_line(self.level, bool(value & 1))
        elif offset == 0xC:
            self.pulse(self.edge)
        elif offset == 0x10:
            self.dma_read(0, 4, self._dma_got)
        elif offset == 0x14:
            self.defer(0.001, self._dma_later)

    def _dma_later(self) -> None:
        self.dma_read(0, 4, self._dma_got)

    def _dma_got(self, data: bytes | None) -> None:
        self.dma_result = data


LEVEL, EDGE = 0, 1


def wire(dev: SimDevice, make: Callable[[], int]) -> list[int]:
    """Install a trigger on every line and unmask the level ones (what the server does)."""
    fds = []
    for info in dev.irqs():
        fd = make()
        dev.set_irq_trigger(info.index, fd)
        if info.automasked:
            dev.unmask_irq(info.index)
        fds.append(fd)
    return fds


# ---- device description -----------------------------------------------------


def test_device_info() -> None:
    dev = Tiny()
    try:
        assert dev.device_flags == vfio_abi.DEVICE_FLAGS_PLATFORM | vfio_abi.DEVICE_FLAGS_RESET
        regs, mem = dev.regions()
        assert (regs.index, regs.size, regs.mmappable) == (0, 0x100, False)
        assert regs.flags == vfio_abi.REGION_FLAG_READ | vfio_abi.REGION_FLAG_WRITE
        assert (mem.index, mem.size, mem.mmappable, mem.mmap_fd) == (1, 0x1000, True, dev.mem.fd)
        assert mem.flags & vfio_abi.REGION_FLAG_MMAP
        level, edge = dev.irqs()
        assert level.flags == (
            vfio_abi.IRQ_INFO_EVENTFD | vfio_abi.IRQ_INFO_MASKABLE | vfio_abi.IRQ_INFO_AUTOMASKED
        )
        assert edge.flags == vfio_abi.IRQ_INFO_EVENTFD
        assert (level.count, edge.count) == (1, 1)
    finally:
        dev.close()


# ---- register regions -------------------------------------------------------


def test_register_region_little_endian_sizes() -> None:
    dev = Tiny(value=0x1122334455667788)
    for size, expected in [(1, 0x88), (2, 0x7788), (4, 0x55667788), (8, 0x1122334455667788)]:
        assert dev.read(0, 0, size) == expected.to_bytes(size, "little")
    dev.write(0, 0, (0xDEADBEEF).to_bytes(4, "little"))
    assert dev.value == 0xDEADBEEF
    assert dev.read(0, 0x20, 4) == b"\xff" * 4  # -1 from the callback reads as all-ones
    dev.close()


def test_register_region_splits_odd_accesses() -> None:
    assert natural_chunks(0x2, 4) == [(0x2, 2), (0x4, 2)]
    assert natural_chunks(0x0, 16) == [(0x0, 8), (0x8, 8)]
    assert natural_chunks(0x1, 6) == [(0x1, 1), (0x2, 2), (0x4, 2), (0x6, 1)]
    dev = Tiny()
    dev.accesses.clear()
    dev.read(0, 0x2, 4)
    assert dev.accesses == [("r", 0x2, 2), ("r", 0x4, 2)]
    dev.accesses.clear()
    dev.write(0, 0x1, b"\x01\x02\x03")
    assert dev.accesses == [("w", 0x1, 1), ("w", 0x2, 2)]
    dev.close()


def test_register_region_without_split_refuses() -> None:
    region = RegisterRegion(0x10, lambda o, s: 0, lambda o, s, v: None, split=False)
    assert region.read(4, 4) == bytes(4)
    with pytest.raises(BackendError) as info:
        region.read(2, 4)
    assert info.value.errno == errno.EINVAL
    with pytest.raises(BackendError):
        region.write(0, b"abc")


def test_bad_region_and_bounds() -> None:
    dev = Tiny()
    for call in (
        lambda: dev.read(2, 0, 4),
        lambda: dev.read(0, 0xFE, 4),
        lambda: dev.write(1, 0xFFF, b"ab"),
    ):
        with pytest.raises(BackendError) as info:
            call()
        assert info.value.errno == errno.EINVAL
    read_only = RegisterRegion(0x10, read=lambda o, s: 0)
    assert read_only.info(0).flags == vfio_abi.REGION_FLAG_READ
    with pytest.raises(BackendError):
        read_only.write(0, b"\0\0\0\0")
    dev.close()


# ---- memory regions ---------------------------------------------------------


def test_memory_region_is_shared_with_its_memfd() -> None:
    dev = Tiny()
    info = dev.regions()[1]
    assert info.mmap_fd is not None
    view = mmap.mmap(info.mmap_fd, info.size)
    try:
        dev.write(1, 0x10, b"hello")
        assert view[0x10:0x15] == b"hello"
        view[0x800:0x804] = b"\x01\x02\x03\x04"
        assert dev.read(1, 0x800, 4) == b"\x01\x02\x03\x04"
        # The client gets this fd: it must not be able to shrink it under our mapping.
        with pytest.raises(PermissionError):
            os.ftruncate(info.mmap_fd, 0)
        dev.reset()
        assert view[0x10:0x15] == bytes(5)
    finally:
        view.close()
        dev.close()


# ---- IRQ semantics ----------------------------------------------------------


def test_level_lines_start_masked(eventfds: Callable[[], int]) -> None:
    dev = Tiny()
    fd = eventfds()
    dev.set_irq_trigger(LEVEL, fd)
    dev.write(0, 0x8, b"\x01\0\0\0")
    assert take(fd) == 0 and dev.line_masked(LEVEL)
    dev.unmask_irq(LEVEL)  # asserted while masked: fires on unmask
    assert take(fd) == 1 and dev.line_masked(LEVEL)
    assert dev.fired(LEVEL) == 1
    dev.close()


def test_level_automask_and_refire(eventfds: Callable[[], int]) -> None:
    dev = Tiny()
    level, _ = wire(dev, eventfds)
    dev.write(0, 0x8, b"\x01\0\0\0")
    assert take(level) == 1 and dev.line_masked(LEVEL)
    dev.write(0, 0x8, b"\x01\0\0\0")  # asserted again while automasked: nothing
    assert take(level) == 0
    dev.unmask_irq(LEVEL)  # still asserted: fires again, masks again
    assert take(level) == 1 and dev.line_masked(LEVEL)
    dev.write(0, 0x8, b"\0\0\0\0")
    dev.unmask_irq(LEVEL)  # deasserted: quiet, stays unmasked
    assert take(level) == 0 and not dev.line_masked(LEVEL)
    dev.write(0, 0x8, b"\x01\0\0\0")
    assert take(level) == 1
    assert dev.fired(LEVEL) == 3
    dev.close()


def test_mask_and_unmask(eventfds: Callable[[], int]) -> None:
    dev = Tiny()
    level, _ = wire(dev, eventfds)
    dev.mask_irq(LEVEL)
    dev.write(0, 0x8, b"\x01\0\0\0")
    assert take(level) == 0
    dev.unmask_irq(LEVEL)
    assert take(level) == 1
    for call, irq in ((dev.mask_irq, EDGE), (dev.unmask_irq, EDGE), (dev.mask_irq, 7)):
        with pytest.raises(BackendError) as info:
            call(irq)
        assert info.value.errno == errno.EINVAL
    dev.close()


def test_level_fires_when_trigger_arrives(eventfds: Callable[[], int]) -> None:
    dev = Tiny()
    dev.unmask_irq(LEVEL)  # unmasked, no trigger yet
    dev.write(0, 0x8, b"\x01\0\0\0")
    assert dev.fired(LEVEL) == 0 and not dev.line_masked(LEVEL)
    fd = eventfds()
    dev.set_irq_trigger(LEVEL, fd)
    assert take(fd) == 1 and dev.line_masked(LEVEL)
    dev.set_irq_trigger(LEVEL, None)
    dev.unmask_irq(LEVEL)  # no trigger: pending, not lost
    assert take(fd) == 0
    dev.set_irq_trigger(LEVEL, fd)
    assert take(fd) == 1
    dev.close()


def test_edge_pulses(eventfds: Callable[[], int]) -> None:
    dev = Tiny()
    events: list[tuple[int, str]] = []
    dev.on_irq = lambda irq, what: events.append((irq, what))
    dev.write(0, 0xC, b"\0\0\0\0")  # no trigger: lost
    fd = eventfds()
    dev.set_irq_trigger(EDGE, fd)
    assert take(fd) == 0
    dev.write(0, 0xC, b"\0\0\0\0")
    dev.write(0, 0xC, b"\0\0\0\0")
    assert take(fd) == 2
    assert events == [(EDGE, "lost"), (EDGE, "fired"), (EDGE, "fired")]
    assert dev.counters.values["irq1.lost"] == 1 and dev.fired(EDGE) == 2
    dev.close()


def test_model_misuse_of_lines_is_a_bug() -> None:
    dev = Tiny()
    with pytest.raises(ValueError):
        dev.pulse(LEVEL)
    with pytest.raises(ValueError):
        dev.set_line(EDGE, True)
    with pytest.raises(BackendError):
        dev.set_irq_trigger(5, None)
    dev.close()


def test_signal_failure_is_recorded_not_raised(eventfds: Callable[[], int]) -> None:
    dev = Tiny()
    read_end, write_end = os.pipe()
    os.close(write_end)
    dev.set_irq_trigger(EDGE, read_end)  # not writable: eventfd_write fails
    dev.write(0, 0xC, b"\0\0\0\0")
    assert dev.counters.values["irq1.signal_errors"] == 1 and dev.errors
    os.close(read_end)
    dev.close()


def test_reset(eventfds: Callable[[], int]) -> None:
    dev = Tiny(value=7)
    level, edge = wire(dev, eventfds)
    dev.write(0, 0, (99).to_bytes(8, "little"))
    dev.write(0, 0x8, b"\x01\0\0\0")
    assert take(level) == 1
    dev.reset()
    assert dev.value == 7
    assert not dev.line_asserted(LEVEL) and dev.line_masked(LEVEL)
    dev.write(0, 0x8, b"\x01\0\0\0")  # triggers kept, but masked after reset
    assert take(level) == 0
    dev.unmask_irq(LEVEL)
    assert take(level) == 1
    dev.write(0, 0xC, b"\0\0\0\0")
    assert take(edge) == 1
    dev.close()


# ---- deferred work and DMA --------------------------------------------------


def test_dma_inside_register_write_is_refused() -> None:
    dev = Tiny()
    ram = RamDma(0x100)
    ram.ram[0:4] = b"abcd"
    dev.attach(DeviceContext(dma=ram, scheduler=ManualScheduler()))
    dev.write(0, 0x10, b"\0\0\0\0")
    assert dev.dma_result is None
    assert "inside a register access" in dev.errors[-1]
    dev.close()


def test_deferred_dma_and_detach_parking() -> None:
    dev = Tiny()
    ram = RamDma(0x100)
    ram.ram[0:4] = b"abcd"
    sched = ManualScheduler()
    dev.attach(DeviceContext(dma=ram, scheduler=sched))
    dev.write(0, 0x14, b"\0\0\0\0")
    assert dev.dma_result is None
    sched.advance(0.01)
    assert dev.dma_result == b"abcd"

    dev.dma_result = None
    dev.write(0, 0x14, b"\0\0\0\0")
    dev.attach(None)  # time stops while detached
    assert sched.pending() == 0
    assert dev.status()["pending_work"] == 1
    later = ManualScheduler()
    dev.attach(DeviceContext(dma=ram, scheduler=later))
    later.advance(0.01)
    assert dev.dma_result == b"abcd"
    dev.close()


def test_dma_without_context_or_unmapped() -> None:
    dev = Tiny()
    results: list[object] = []
    dev.dma_read(0, 4, results.append)
    dev.dma_write(0, b"x", results.append)
    assert results == [None, False]
    assert "no DMA context" in dev.errors[-1]
    dev.attach(DeviceContext(dma=RamDma(0x10), scheduler=ManualScheduler()))
    dev.dma_read(0x20, 4, results.append)
    assert results[-1] is None
    assert "not mapped" in dev.errors[-1]
    assert dev.counters.values["dma.errors"] == 3
    dev.close()


def test_reset_and_close_cancel_deferred_work() -> None:
    dev = Tiny()
    sched = ManualScheduler()
    dev.attach(DeviceContext(dma=RamDma(0x10), scheduler=sched))
    dev.write(0, 0x14, b"\0\0\0\0")
    dev.reset()
    assert sched.pending() == 0
    dev.write(0, 0x14, b"\0\0\0\0")
    dev.close()
    assert sched.pending() == 0


# ---- close ------------------------------------------------------------------


@pytest.mark.parametrize("make", [Tiny, GpioDevice, EduDevice])
def test_close_releases_fds(make: Callable[[], SimDevice]) -> None:
    before = open_fds()
    dev = make()
    dev.read(0, 0, 4)
    dev.close()
    dev.close()  # idempotent
    assert open_fds() == before
    with pytest.raises(BackendError):
        dev.read(0, 0, 4)


# ---- registry ---------------------------------------------------------------


def test_registry_builtins() -> None:
    assert known_models() == tuple(sorted(known_models()))
    assert {"edu", "gpio", "pl031", "pl061"} <= set(known_models())
    edu = create_model("edu", {"dma_mask": "0xfff", "dma_delay": "0.5"})
    assert isinstance(edu, EduDevice) and edu.dma_mask == 0xFFF and edu.dma_delay == 0.5
    gpio = create_model("gpio", {"lines": "6", "edge": "false"})
    assert isinstance(gpio, GpioDevice) and len(gpio.irqs()) == 6
    edu.close()
    gpio.close()


def test_registry_user_class() -> None:
    dev = create_model(f"{__name__}:Tiny", {"value": "0x10", "label": "x", "fast": "yes"})
    assert isinstance(dev, Tiny)
    assert (dev.value, dev.label, dev.fast) == (0x10, "x", True)
    dev.close()


def test_registry_unknown_name() -> None:
    with pytest.raises(ValueError) as info:
        create_model("nope", {})
    message = str(info.value)
    assert "\n" not in message and "'nope'" in message and "edu, gpio" in message


@pytest.mark.parametrize(
    "name, options, fragment",
    [
        ("no_such_module_xyz:Thing", {}, "cannot import"),
        (f"{__name__}:ManualScheduler", {}, "not a DeviceBackend"),
        ("vfu_platform.backends.base:DeviceBackend", {}, "abstract"),
        ("gpio", {"colour": "red"}, "no option 'colour'"),
        ("gpio", {"lines": "many"}, "not a valid int"),
        ("gpio", {"lines": 99}, "lines must be"),
        ("edu", {"fact_delay": "soon"}, "not a valid float"),
        (":Tiny", {}, "package.module:ClassName"),
    ],
)
def test_registry_errors(name: str, options: dict[str, object], fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        create_model(name, options)
    assert fragment in str(info.value)
