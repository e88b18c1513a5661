# SPDX-License-Identifier: BSD-3-Clause
"""Command numbers, header flags and every protocol limit (message size, fds, DMA maps, timeouts)."""
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

# ---- Limits against the peer, in one place (libvfio-user keeps its own in one header).
# Region and IRQ index limits are the kernel's (vfio_abi.PCI_NUM_REGIONS / PCI_NUM_IRQS,
# compiled from <linux/vfio.h>); a device's own counts come from DEVICE_GET_INFO.

# Message size and fds.  A server's largest legal request is a REGION_WRITE of
# max_data_xfer_size bytes: HEADER_SIZE + the 16-byte access head + data.
DEFAULT_MAX_MSG_FDS = 1  # spec default when a peer does not say
DEFAULT_MAX_DATA_XFER_SIZE = 1 << 20  # spec default when a peer does not say; ours unless configured
QEMU_MAX_MSG_FDS = 16  # the most fds QEMU 11 takes from a server: what we offer
QEMU_MAX_DATA_XFER_SIZE = 64 << 20  # the largest max_data_xfer_size QEMU 11 accepts from a server
MAX_PEER_MSG_FDS = 1024  # lvu rejects a client's max_msg_fds above this
SCM_MAX_FD = 253  # Linux refuses to pass more than SCM_MAX_FD fds in one sendmsg()

# DMA maps.
DEFAULT_MAX_DMA_MAPS = 65535  # spec default; what we offer
DEFAULT_PGSIZES = 4096  # the page sizes we offer (a bitmap: 4 KiB only)
MAX_DMA_WINDOW_SIZE = 8 << 40  # libvfio-user caps one window at 8 TiB (ENOSPC above)

# REGION_WRITE_MULTI.
WRITE_MULTI_ENTRY_DATA = 8
WRITE_MULTI_MAX_ENTRIES = 256  # QEMU flushes a batch at 200 entries

# Timeouts (seconds).
DEFAULT_MESSAGE_TIMEOUT = 5.0  # QEMU's x-msg-timeout default: how long a peer waits for any reply
#: A peer that does not take a message within this time is gone: QEMU gives up on a reply
#: after 5 s anyway, and a single-threaded server blocked in send() would serve nothing else.
SEND_TIMEOUT = 5.0
#: How long a device's DMA_READ / DMA_WRITE to the client may wait for its reply.
DMA_REQUEST_TIMEOUT = 5.0

# Server-side bookkeeping.
#: ids of our own requests that timed out, remembered so a late reply is dropped quietly
MAX_ABANDONED_REQUESTS = 64
