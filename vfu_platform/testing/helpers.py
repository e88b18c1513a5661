# SPDX-License-Identifier: BSD-3-Clause
"""Real eventfds and memfds for a test, and short readers of PCI config space and INTx state."""
from __future__ import annotations

import mmap
import os
import select
import time
from collections.abc import Callable
from pathlib import Path

from vfu_platform import vfio_abi
from vfu_platform.bridge import irq_page
from vfu_platform.client import VfioUserClient, make_eventfd

CONFIG = vfio_abi.PCI_CONFIG_REGION_INDEX  # region 7
INTX = vfio_abi.PCI_INTX_IRQ_INDEX
MSIX = vfio_abi.PCI_MSIX_IRQ_INDEX

TRIGGER_EVENTFD = vfio_abi.IRQ_SET_ACTION_TRIGGER | vfio_abi.IRQ_SET_DATA_EVENTFD
TRIGGER_NONE = vfio_abi.IRQ_SET_ACTION_TRIGGER | vfio_abi.IRQ_SET_DATA_NONE
UNMASK_NONE = vfio_abi.IRQ_SET_ACTION_UNMASK | vfio_abi.IRQ_SET_DATA_NONE
UNMASK_EVENTFD = vfio_abi.IRQ_SET_ACTION_UNMASK | vfio_abi.IRQ_SET_DATA_EVENTFD
MASK_NONE = vfio_abi.IRQ_SET_ACTION_MASK | vfio_abi.IRQ_SET_DATA_NONE

#: BAR index of the IRQ page per model (edu: BAR0 registers; gpio: BAR0 registers, BAR1 SRAM).
IRQ_PAGE_BAR = {"edu": 1, "gpio": 2}
NO_IRQ = irq_page.NO_IRQ

#: How long a "nothing arrives" check waits.  Signals the server sends in answer to a
#: message are written before its reply; those that follow a line firing come one
#: event-loop turn later, well inside this.
QUIET = 0.1
#: How long a "this arrives" check waits before failing.
ARRIVE = 3.0


def write_config(directory: Path, text: str, name: str = "vfu.toml") -> str:
    """Write a server config file (TOML) into `directory`; returns its path."""
    path = directory / name
    path.write_text(text)
    return str(path)


# --------------------------------------------------------------------------- eventfds


class EventFd:
    """A real non-blocking eventfd the test keeps (the server gets a duplicate via SCM_RIGHTS)."""

    def __init__(self) -> None:
        self.fd = make_eventfd()

    def take(self) -> int:
        """Read and clear the counter (0 if nothing was signalled)."""
        try:
            return os.eventfd_read(self.fd)
        except BlockingIOError:
            return 0

    def wait(self, timeout: float = ARRIVE) -> int:
        """Wait for a signal; returns the counter (0 on timeout)."""
        readable, _, _ = select.select([self.fd], [], [], timeout)
        return self.take() if readable else 0

    def expect_one(self, timeout: float = ARRIVE, what: str = "signal") -> None:
        """Exactly one signal arrives (and no second one right after it)."""
        count = self.wait(timeout)
        assert count >= 1, f"no {what} within {timeout} s"
        time.sleep(QUIET / 2)
        count += self.take()
        assert count == 1, f"{what}: expected exactly one signal, got {count}"

    def expect_none(self, wait: float = QUIET, what: str = "signal") -> None:
        count = self.wait(wait)
        assert count == 0, f"unexpected {what} (counter {count})"

    def signal(self) -> None:
        os.eventfd_write(self.fd, 1)

    def pending(self) -> bool:
        """True while the counter is non-zero, without consuming it.

        The server holds the same eventfd (SCM_RIGHTS passes the open file, not a copy),
        so `take()` would steal a signal meant for it; use this to see whether it read one.
        """
        readable, _, _ = select.select([self.fd], [], [], 0)
        return bool(readable)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def install_intx(client: VfioUserClient, trigger: EventFd) -> None:
    client.set_irqs(INTX, TRIGGER_EVENTFD, 0, 1, [trigger.fd])


def intx_unmask(client: VfioUserClient) -> None:
    """The userspace-path EOI QEMU sends after the first trapped BAR access."""
    client.set_irqs(INTX, UNMASK_NONE, 0, 1)


# --------------------------------------------------------------------------- memfd windows


class MemfdWindow:
    """A memfd the test maps itself; its fd goes to the server with DMA_MAP."""

    def __init__(self, size: int, name: str = "vfu-test-dma") -> None:
        self.size = size
        self.fd = os.memfd_create(name, os.MFD_CLOEXEC)
        os.ftruncate(self.fd, size)
        self.map = mmap.mmap(self.fd, size)

    def close(self) -> None:
        self.map.close()
        os.close(self.fd)


# --------------------------------------------------------------------------- reading state


def config_read(client: VfioUserClient, offset: int, size: int) -> int:
    return int.from_bytes(client.region_read(CONFIG, offset, size), "little")


def config_write(client: VfioUserClient, offset: int, size: int, value: int) -> None:
    client.region_write(CONFIG, offset, value.to_bytes(size, "little"))


def pci_status(client: VfioUserClient) -> int:
    return config_read(client, 0x06, 2)


def intx_status(client: VfioUserClient) -> bool:
    """PCI STATUS bit 3: the function's INTx is pending."""
    return bool(pci_status(client) & 0x0008)


def set_command(client: VfioUserClient, bits: int) -> None:
    config_write(client, 0x04, 2, bits)


def irq_reg(client: VfioUserClient, model: str, offset: int) -> int:
    """A register of the bridge's IRQ page (docs/irq-page.md)."""
    return client.read32(IRQ_PAGE_BAR[model], offset)


def wait_until(predicate: Callable[[], bool], timeout: float = ARRIVE, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)
