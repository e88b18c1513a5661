# SPDX-License-Identifier: BSD-3-Clause
"""QEMU's educational device ("edu", docs/specs/edu.rst), as a platform device.

Register for register like QEMU's hw/misc/edu.c, with one 1 MiB trapped
register region (index 0) and one level IRQ line (index 0) standing in for
the PCI INTx pin (the constants are in `edu_map`, shared with the guest drivers):

    0x00 RO  identification 0x010000ed
    0x04 RW  liveness: reads return the inverse of the last value written
    0x08 RW  factorial: a write starts computing value! (uint32, wrapping)
    0x20 RW  status: bit0 computing (RO), bit7 raise IRQ 0x001 when done
    0x24 RO  interrupt status
    0x60 WO  interrupt raise (OR into the status, assert the line)
    0x64 WO  interrupt acknowledge (clear bits; line drops at 0)
    0x80 RW  DMA source, 0x88 DMA destination, 0x90 DMA count (64-bit)
    0x98 RW  DMA command: bit0 start, bit1 direction (1: EDU -> RAM),
             bit2 raise IRQ 0x100 when done

As in QEMU: accesses below 0x80 must be 4 bytes, at 0x80 and above 4 or 8;
other sizes read all-ones and writes are ignored; undefined registers (and
the write-only ones) read all-ones.  The DMA registers cannot be written
while a transfer runs; a 4-byte write replaces the whole 64-bit register.
Bus addresses are clamped with the DMA mask (28 bits by default).

Differences, on purpose:

* The factorial runs as deferred work after `fact_delay` seconds (QEMU uses a
  thread); without an attached context it completes inside the write.
* The DMA runs as deferred work after `dma_delay` seconds (QEMU: 100 ms).
* A DMA that does not fit in the 4 KiB buffer at 0x40000 makes old QEMU abort
  the VM (hw_error) and new QEMU log and copy out of bounds.  Here it moves
  no data and is recorded in `errors` (and counter "dma.errors"); otherwise
  it completes as usual: command bit0 clears and IRQ 0x100 is raised if bit2
  asked for it, so a driver waiting for completion is not left hanging.  A
  DMA the client memory refuses (DmaError), or one started while the device
  is detached, ends the same way.
* `reset` restores power-on state (QEMU's edu has no reset handler).
"""

from __future__ import annotations

from vfu_platform.backends.base import AckRegister
from vfu_platform.backends.sim.device import RegisterRegion, SimDevice
from vfu_platform.backends.sim.edu_map import (  # the register map, shared with the bench's drivers
    DEFAULT_DMA_MASK,
    DMA_BUFFER_ADDR,
    DMA_BUFFER_SIZE,
    DMA_CMD_IRQ,
    DMA_CMD_RUN,
    DMA_CMD_TO_RAM,
    DMA_IRQ,
    FACT_IRQ,
    IDENTIFICATION,
    MMIO_SIZE,
    REG_DMA_CMD,
    REG_DMA_COUNT,
    REG_DMA_DST,
    REG_DMA_SRC,
    REG_FACTORIAL,
    REG_ID,
    REG_IRQ_ACK,
    REG_IRQ_RAISE,
    REG_IRQ_STATUS,
    REG_LIVENESS,
    REG_STATUS,
    STATUS_COMPUTING,
    STATUS_IRQFACT,
    WIDE_ACCESS_START,
)

_U32 = 0xFFFF_FFFF
_U64 = 0xFFFF_FFFF_FFFF_FFFF
_ALL_ONES = _U64


class _EduRegisters(RegisterRegion):
    """edu's MMIO region: a 1, 2, 4 or 8-byte access that is not naturally aligned is
    invalid, as in QEMU (edu's ops do not allow unaligned accesses): it reads all-ones
    and a write is dropped.  Split into aligned pieces instead, an 8-byte write at 0x04
    would land on liveness and also start a factorial at 0x08."""

    def read(self, offset: int, size: int) -> bytes:
        if size in (1, 2, 4, 8) and offset % size:
            return b"\xff" * size
        return super().read(offset, size)

    def write(self, offset: int, data: bytes) -> None:
        if len(data) in (1, 2, 4, 8) and offset % len(data):
            return
        super().write(offset, data)


def factorial_u32(n: int) -> int:
    """n! in uint32 arithmetic, as edu computes it (0 from 34! on: 2**32 divides it)."""
    if n >= 34:
        return 0
    result = 1
    for i in range(2, n + 1):
        result = (result * i) & _U32
    return result


class EduDevice(SimDevice):
    """QEMU's edu device as a platform device; see the module docstring."""

    name = "edu"
    compatible = ("vfu-platform,edu",)
    #: QEMU's own edu device: its driver binds to 1234:11e8
    pci_vendor, pci_device, pci_class = 0x1234, 0x11E8, 0x00FF00
    ack_registers = (AckRegister(irq=0, region=0, offset=REG_IRQ_ACK, mask=_U32),)
    irq_regions = frozenset({0})

    def __init__(
        self,
        *,
        dma_mask: int = DEFAULT_DMA_MASK,
        fact_delay: float = 0.001,
        dma_delay: float = 0.005,
    ) -> None:
        if not 0 <= dma_mask <= _U64:
            raise ValueError(f"edu: dma_mask {dma_mask:#x} is not a 64-bit mask")
        if fact_delay < 0 or dma_delay < 0:
            raise ValueError("edu: delays must not be negative")
        super().__init__()
        self.dma_mask = dma_mask
        self.fact_delay = fact_delay
        self.dma_delay = dma_delay
        self.add_region(
            _EduRegisters(MMIO_SIZE, self._mmio_read, self._mmio_write, name="edu-mmio")
        )
        self.irq = self.add_level_irq("edu")
        self.dma_buffer = bytearray(DMA_BUFFER_SIZE)
        self.on_reset()

    def on_reset(self) -> None:
        self.liveness = 0
        self.fact = 0
        self.status_reg = 0
        self.irq_status = 0
        self.dma_src = 0
        self.dma_dst = 0
        self.dma_count = 0
        self.dma_cmd = 0
        self.dma_buffer[:] = bytes(DMA_BUFFER_SIZE)

    # ---- interrupt status ---------------------------------------------------

    def _raise(self, bits: int) -> None:
        self.irq_status |= bits & _U32
        if self.irq_status:
            self.set_line(self.irq, True)

    def _lower(self, bits: int) -> None:
        self.irq_status &= ~bits & _U32
        if not self.irq_status:
            self.set_line(self.irq, False)

    # ---- MMIO ---------------------------------------------------------------

    @staticmethod
    def _size_ok(offset: int, size: int) -> bool:
        return size == 4 or (size == 8 and offset >= WIDE_ACCESS_START)

    def _mmio_read(self, offset: int, size: int) -> int:
        if not self._size_ok(offset, size):
            return _ALL_ONES
        if offset == REG_ID:
            return IDENTIFICATION
        if offset == REG_LIVENESS:
            return self.liveness
        if offset == REG_FACTORIAL:
            return self.fact
        if offset == REG_STATUS:
            return self.status_reg
        if offset == REG_IRQ_STATUS:
            return self.irq_status
        if offset == REG_DMA_SRC:
            return self.dma_src
        if offset == REG_DMA_DST:
            return self.dma_dst
        if offset == REG_DMA_COUNT:
            return self.dma_count
        if offset == REG_DMA_CMD:
            return self.dma_cmd
        return _ALL_ONES

    def _mmio_write(self, offset: int, size: int, value: int) -> None:
        if not self._size_ok(offset, size):
            return
        if offset == REG_LIVENESS:
            self.liveness = ~value & _U32
        elif offset == REG_FACTORIAL:
            self._start_factorial(value)
        elif offset == REG_STATUS:
            if value & STATUS_IRQFACT:
                self.status_reg |= STATUS_IRQFACT
            else:
                self.status_reg &= ~STATUS_IRQFACT
        elif offset == REG_IRQ_RAISE:
            self._raise(value)
        elif offset == REG_IRQ_ACK:
            self._lower(value)
        elif offset in (REG_DMA_SRC, REG_DMA_DST, REG_DMA_COUNT):
            if self.dma_cmd & DMA_CMD_RUN:
                return
            if offset == REG_DMA_SRC:
                self.dma_src = value
            elif offset == REG_DMA_DST:
                self.dma_dst = value
            else:
                self.dma_count = value
        elif offset == REG_DMA_CMD:
            if value & DMA_CMD_RUN and not self.dma_cmd & DMA_CMD_RUN:
                self.dma_cmd = value
                self._start_dma()

    # ---- factorial ----------------------------------------------------------

    def _start_factorial(self, value: int) -> None:
        if self.status_reg & STATUS_COMPUTING:
            return
        self.fact = value & _U32
        self.status_reg |= STATUS_COMPUTING
        if self.attached:
            self.defer(self.fact_delay, self._finish_factorial)
        else:
            self._finish_factorial()

    def _finish_factorial(self) -> None:
        self.fact = factorial_u32(self.fact)
        self.status_reg &= ~STATUS_COMPUTING
        self.counters.bump("edu.factorials")
        if self.status_reg & STATUS_IRQFACT:
            self._raise(FACT_IRQ)

    # ---- DMA ----------------------------------------------------------------

    def _start_dma(self) -> None:
        if self.attached:
            self.defer(self.dma_delay, self._run_dma)
        else:
            # Detached: the transfer cannot reach client memory; it fails
            # (recorded by dma_read/dma_write) and completes at once.
            self._run_dma()

    def _run_dma(self) -> None:
        if not self.dma_cmd & DMA_CMD_RUN:
            return
        to_ram = bool(self.dma_cmd & DMA_CMD_TO_RAM)
        count = self.dma_count
        buffer_addr, bus_addr = (
            (self.dma_src, self.dma_dst) if to_ram else (self.dma_dst, self.dma_src)
        )
        bus_addr &= self.dma_mask
        if (
            DMA_BUFFER_ADDR <= buffer_addr
            and buffer_addr + count <= DMA_BUFFER_ADDR + DMA_BUFFER_SIZE
        ):
            start = buffer_addr - DMA_BUFFER_ADDR
            if to_ram:
                self.dma_write(bus_addr, bytes(self.dma_buffer[start : start + count]), self._dma_done)
            else:
                self.dma_read(bus_addr, count, lambda data: self._dma_read_done(start, data))
            return
        self.counters.bump("dma.errors")
        self.record_error(
            f"edu: DMA of {count:#x} bytes at device address {buffer_addr:#x} is outside "
            f"the buffer [{DMA_BUFFER_ADDR:#x}, {DMA_BUFFER_ADDR + DMA_BUFFER_SIZE:#x})"
        )
        self._dma_done(False)

    def _dma_read_done(self, start: int, data: bytes | None) -> None:
        if data is not None:
            self.dma_buffer[start : start + len(data)] = data
        self._dma_done(data is not None)

    def _dma_done(self, transferred: bool) -> None:
        """The transfer is over (done, or failed with an error recorded): RUN clears, the IRQ fires."""
        if transferred:
            self.counters.bump("edu.dma_transfers")
        self.dma_cmd &= ~DMA_CMD_RUN
        if self.dma_cmd & DMA_CMD_IRQ:
            self._raise(DMA_IRQ)

    def status(self) -> dict[str, object]:
        snapshot = super().status()
        snapshot["registers"] = {
            "status": self.status_reg,
            "irq_status": self.irq_status,
            "fact": self.fact,
            "dma_src": self.dma_src,
            "dma_dst": self.dma_dst,
            "dma_count": self.dma_count,
            "dma_cmd": self.dma_cmd,
        }
        return snapshot
