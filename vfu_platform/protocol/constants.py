# SPDX-License-Identifier: BSD-3-Clause
"""Command numbers, header flags and protocol limits."""
from __future__ import annotations

import enum


class Command(enum.IntEnum):
    VERSION = 1
    DMA_MAP = 2
    DMA_UNMAP = 3
    DEVICE_GET_INFO = 4
    DEVICE_GET_REGION_INFO = 5
    DEVICE_GET_REGION_IO_FDS = 6
    DEVICE_GET_IRQ_INFO = 7
    DEVICE_SET_IRQS = 8
    REGION_READ = 9
    REGION_WRITE = 10
    DMA_READ = 11
    DMA_WRITE = 12
    DEVICE_RESET = 13
    DIRTY_PAGES = 14  # obsolete: answered EINVAL
    REGION_WRITE_MULTI = 15
    DEVICE_FEATURE = 16
    MIG_DATA_READ = 17
    MIG_DATA_WRITE = 18


COMMAND_NAMES: dict[int, str] = {c.value: c.name for c in Command}


class MsgFlags(enum.IntFlag):
    TYPE_COMMAND = 0x0
    TYPE_REPLY = 0x1
    NO_REPLY = 0x10
    ERROR = 0x20


TYPE_MASK = 0xF

HEADER_SIZE = 16
VERSION_MAJOR = 0
VERSION_MINOR = 0

# Capability defaults from the spec, and the limits QEMU 11 enforces on a server's values.
DEFAULT_MAX_MSG_FDS = 1
DEFAULT_MAX_DATA_XFER_SIZE = 1 << 20
DEFAULT_MAX_DMA_MAPS = 65535
DEFAULT_PGSIZES = 4096
QEMU_MAX_MSG_FDS = 16
QEMU_MAX_DATA_XFER_SIZE = 64 << 20
QEMU_MAX_DMA_MAPS = 65535
# lvu rejects a client's max_msg_fds above this.
MAX_PEER_MSG_FDS = 1024
# Linux refuses to pass more than SCM_MAX_FD (253) fds in one sendmsg().
SCM_MAX_FD = 253

WRITE_MULTI_ENTRY_DATA = 8
# QEMU flushes a WRITE_MULTI batch at 200 entries.
WRITE_MULTI_MAX_ENTRIES = 256
