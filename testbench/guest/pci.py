# SPDX-License-Identifier: BSD-3-Clause
"""Guest-side PCI access through the kernel's user interfaces only.

* config space: /sys/bus/pci/devices/X/config (reads and writes of 1, 2 or 4 bytes);
* BARs: mmap of /sys/bus/pci/devices/X/resourceN. Accesses go through a memoryview
  cast to 'I' or 'Q', which CPython turns into one 32- or 64-bit load or store; the
  struct module's '<I' would read byte by byte, and edu ignores 1-byte accesses;
* interrupts: uio_pci_generic and /dev/uioN. That driver has no irqcontrol: its
  handler masks INTx by setting COMMAND.INTX_DISABLE, so re-arming is a config write
  that clears the bit (`Device.unmask_intx`);
* DMA buffers: an anonymous page, mlocked, whose physical address comes from
  /proc/self/pagemap (needs root).
"""
from __future__ import annotations

import ctypes
import mmap
import os
import select
import struct
import time
from pathlib import Path

SYSFS_PCI = Path("/sys/bus/pci")
PAGE = mmap.PAGESIZE

CFG_VENDOR = 0x00
CFG_DEVICE = 0x02
CFG_COMMAND = 0x04
CFG_STATUS = 0x06
CFG_REVISION = 0x08
CFG_INT_PIN = 0x3D

CMD_MEMORY = 0x0002
CMD_MASTER = 0x0004
CMD_INTX_DISABLE = 0x0400
STATUS_INTERRUPT = 0x0008

UIO_DRIVER = "uio_pci_generic"


def read_text(path: Path) -> str:
    return path.read_text().strip()


def find_devices(vendor: int | None = None, device: int | None = None) -> list[Path]:
    """sysfs directories of the PCI functions matching vendor (and device), sorted."""
    found = []
    for d in sorted((SYSFS_PCI / "devices").iterdir()):
        v = int(read_text(d / "vendor"), 16)
        i = int(read_text(d / "device"), 16)
        if (vendor is None or v == vendor) and (device is None or i == device):
            found.append(d)
    return found


class Bar:
    """A memory BAR mapped from resourceN."""

    def __init__(self, dev: Path, index: int) -> None:
        self.index = index
        self.path = dev / f"resource{index}"
        self.size = self.path.stat().st_size
        self._fd = os.open(self.path, os.O_RDWR | os.O_SYNC)
        self._mm = mmap.mmap(self._fd, self.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._u32 = memoryview(self._mm).cast("I")
        self._u64 = memoryview(self._mm).cast("Q")

    def read32(self, off: int) -> int:
        return self._u32[off >> 2]

    def write32(self, off: int, value: int) -> None:
        self._u32[off >> 2] = value & 0xFFFF_FFFF

    def read64(self, off: int) -> int:
        return self._u64[off >> 3]

    def write64(self, off: int, value: int) -> None:
        self._u64[off >> 3] = value & 0xFFFF_FFFF_FFFF_FFFF

    def close(self) -> None:
        self._u32.release()
        self._u64.release()
        self._mm.close()
        os.close(self._fd)


class Device:
    """One PCI function, by its sysfs directory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.bdf = path.name

    # ---- config space ------------------------------------------------------------

    def config_read(self, off: int, size: int) -> int:
        with open(self.path / "config", "rb", buffering=0) as f:
            data = os.pread(f.fileno(), size, off)
        if len(data) != size:
            raise OSError(f"short config read at {off:#x}: {len(data)} of {size} bytes")
        return int.from_bytes(data, "little")

    def config_write(self, off: int, size: int, value: int) -> None:
        with open(self.path / "config", "r+b", buffering=0) as f:
            n = os.pwrite(f.fileno(), value.to_bytes(size, "little"), off)
        if n != size:
            raise OSError(f"short config write at {off:#x}: {n} of {size} bytes")

    @property
    def command(self) -> int:
        return self.config_read(CFG_COMMAND, 2)

    @command.setter
    def command(self, value: int) -> None:
        self.config_write(CFG_COMMAND, 2, value)

    def set_bus_master(self, on: bool) -> None:
        cmd = self.command
        self.command = (cmd | CMD_MASTER) if on else (cmd & ~CMD_MASTER)

    def unmask_intx(self) -> int:
        """Clear COMMAND.INTX_DISABLE (set by uio_pci_generic's handler); returns the old COMMAND."""
        cmd = self.command
        if cmd & CMD_INTX_DISABLE:
            self.command = cmd & ~CMD_INTX_DISABLE
        return cmd

    # ---- sysfs attributes ----------------------------------------------------------

    def attr(self, name: str) -> str:
        return read_text(self.path / name)

    def enable(self) -> None:
        """pci_enable_device(): turns on memory decoding."""
        (self.path / "enable").write_text("1")

    def resources(self) -> list[tuple[int, int, int]]:
        """(start, end, flags) of each line of the resource file (BAR0..5, ROM, ...)."""
        rows = []
        for line in read_text(self.path / "resource").splitlines():
            start, end, flags = (int(x, 16) for x in line.split())
            rows.append((start, end, flags))
        return rows

    def bar_size(self, index: int) -> int:
        start, end, _ = self.resources()[index]
        return 0 if end == 0 else end - start + 1

    def bar(self, index: int) -> Bar:
        return Bar(self.path, index)

    def driver(self) -> str | None:
        link = self.path / "driver"
        return os.path.basename(os.readlink(link)) if link.exists() else None

    def bind(self, driver: str) -> None:
        """Bind `driver` to this function only (driver_override + drivers_probe)."""
        current = self.driver()
        if current == driver:
            return
        if current is not None:
            (self.path / "driver" / "unbind").write_text(self.bdf)
        (self.path / "driver_override").write_text(driver)
        (SYSFS_PCI / "drivers_probe").write_text(self.bdf)

    def uio_name(self, timeout: float = 5.0) -> str | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            d = self.path / "uio"
            if d.is_dir():
                names = sorted(os.listdir(d))
                if names and Path("/dev", names[0]).exists():
                    return names[0]
            time.sleep(0.05)
        return None


class Uio:
    """/dev/uioN: a read returns the interrupt count once it moved since the last read."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.fd = os.open(f"/dev/{name}", os.O_RDONLY)
        self._poll = select.poll()
        self._poll.register(self.fd, select.POLLIN)
        self.last: int | None = None

    def wait(self, timeout: float) -> int | None:
        """Interrupt count after the next interrupt, or None when none came within timeout."""
        if not self._poll.poll(int(timeout * 1000)):
            return None
        (count,) = struct.unpack("=I", os.read(self.fd, 4))
        self.last = count
        return count

    def close(self) -> None:
        os.close(self.fd)


def interrupt_count(irq: str) -> int:
    """Total of the /proc/interrupts row of `irq` (a number), over all CPUs."""
    for line in Path("/proc/interrupts").read_text().splitlines():
        head, _, rest = line.partition(":")
        if head.strip() == irq:
            total = 0
            for word in rest.split():
                if not word.isdigit():
                    break
                total += int(word)
            return total
    return -1


_libc = ctypes.CDLL(None, use_errno=True)


class DmaPage:
    """One locked page of anonymous memory with a known physical address."""

    def __init__(self) -> None:
        self.mm = mmap.mmap(-1, PAGE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self.mm.write(b"\0" * PAGE)  # fault it in before locking it
        buf = ctypes.c_char.from_buffer(self.mm)
        self.vaddr = ctypes.addressof(buf)
        del buf  # a live from_buffer export would keep the mmap from closing
        if _libc.mlock(ctypes.c_void_p(self.vaddr), ctypes.c_size_t(PAGE)) != 0:
            raise OSError(ctypes.get_errno(), "mlock failed")
        self.phys = virt_to_phys(self.vaddr)

    def fill(self, data: bytes) -> None:
        self.mm.seek(0)
        self.mm.write(data.ljust(PAGE, b"\0")[:PAGE])

    def read(self, n: int = PAGE, off: int = 0) -> bytes:
        return bytes(self.mm[off:off + n])


def virt_to_phys(vaddr: int) -> int:
    """Physical address of a resident page of this process (root only: the PFN reads as 0 otherwise)."""
    with open("/proc/self/pagemap", "rb", buffering=0) as f:
        entry = int.from_bytes(os.pread(f.fileno(), 8, (vaddr // PAGE) * 8), "little")
    if not entry >> 63 & 1:
        raise OSError(f"page at {vaddr:#x} is not present")
    pfn = entry & ((1 << 55) - 1)
    if pfn == 0:
        raise PermissionError("pagemap hides the PFN (not root?)")
    return pfn * PAGE + (vaddr % PAGE)
