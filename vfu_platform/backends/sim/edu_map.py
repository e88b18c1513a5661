# SPDX-License-Identifier: BSD-3-Clause
"""QEMU's edu device register map, written once (layout of QEMU docs/specs/edu.rst).

Read by the model (`vfu_platform.backends.sim.edu`) and by every guest driver of
the test bench (`testbench/guest/edu.py`, `testbench/kguest/edu.py`), so the device
and its drivers cannot disagree.  Only constants: no imports, cheap inside a guest.

BAR0 (PCI) or region 0 (platform) is 1 MiB of MMIO:

    0x00 RO  identification 0xRRrr00ed (major RR, minor rr): 0x010000ed
    0x04 RW  card liveness check: reads return the inverse of the last value written
    0x08 RW  factorial: a write starts computing value! (uint32)
    0x20 RW  status: 0x01 computing (RO), 0x80 raise an interrupt when the factorial is done
    0x24 RO  interrupt status
    0x60 WO  interrupt raise (OR into the status, assert the interrupt)
    0x64 WO  interrupt acknowledge (clear bits; deassert at 0)
    0x80 RW  DMA source address      0x88 RW DMA destination address
    0x90 RW  DMA transfer count      0x98 RW DMA command
             (0x01 start, 0x02 direction: 1 = edu -> RAM, 0x04 raise interrupt 0x100 when done)

Accesses below 0x80 are 4 bytes wide; from 0x80 on, 4 or 8.  Interrupt status bits:
0x001 factorial done, 0x100 DMA done.  The DMA buffer is 4 KiB at device address
0x40000; bus addresses are clamped with the DMA mask (28 bits by default).
"""

PCI_VENDOR_ID = 0x1234
PCI_DEVICE_ID = 0x11E8

MMIO_SIZE = 1 << 20
IDENTIFICATION = 0x010000ED

REG_ID = 0x00
REG_LIVENESS = 0x04
REG_FACTORIAL = 0x08
REG_STATUS = 0x20
REG_IRQ_STATUS = 0x24
REG_IRQ_RAISE = 0x60
REG_IRQ_ACK = 0x64
REG_DMA_SRC = 0x80
REG_DMA_DST = 0x88
REG_DMA_COUNT = 0x90
REG_DMA_CMD = 0x98

WIDE_ACCESS_START = 0x80   # registers from here on also take 8-byte accesses

STATUS_COMPUTING = 0x01
STATUS_IRQFACT = 0x80

FACT_IRQ = 0x001
DMA_IRQ = 0x100

DMA_CMD_RUN = 0x1
DMA_CMD_TO_RAM = 0x2
DMA_CMD_IRQ = 0x4

DMA_BUFFER_ADDR = 0x40000
DMA_BUFFER_SIZE = 0x1000
DEFAULT_DMA_MASK = (1 << 28) - 1
