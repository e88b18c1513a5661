# SPDX-License-Identifier: BSD-3-Clause
"""A test kit for vfio-user devices: serve a device, connect a client, check what it holds.

`serve_in_thread` runs the server's own event loop on a thread of this process;
`serve_in_subprocess` runs `python -m vfu_platform serve` in a process of its own.
Both return a `RunningServer` (a context manager; `stop()` checks a clean end).
The pytest fixtures (`vfu_server`, `vfu_client`, `vfu_device`, `vfu_eventfds`,
`vfu_memfds`) come from `vfu_platform.testing.plugin`, which pytest loads by itself
once vfu_platform is installed (entry point `pytest11`).
"""
from vfu_platform.testing.helpers import (
    ARRIVE,
    CONFIG,
    INTX,
    IRQ_PAGE_BAR,
    MASK_NONE,
    MSIX,
    NO_IRQ,
    QUIET,
    TRIGGER_EVENTFD,
    TRIGGER_NONE,
    UNMASK_EVENTFD,
    UNMASK_NONE,
    EventFd,
    MemfdWindow,
    config_read,
    config_write,
    install_intx,
    intx_status,
    intx_unmask,
    irq_reg,
    pci_status,
    set_command,
    wait_until,
    write_config,
)
from vfu_platform.testing.raw import expect_error, expect_no_reply_to, header_bytes, raw_request
from vfu_platform.testing.serving import (
    PYTHON,
    ProcessServer,
    Resources,
    RunningServer,
    ServerFailed,
    ThreadServer,
    serve_in_subprocess,
    serve_in_thread,
    server_argv,
)

__all__ = [
    "ARRIVE", "CONFIG", "INTX", "IRQ_PAGE_BAR", "MASK_NONE", "MSIX", "NO_IRQ", "QUIET", "TRIGGER_EVENTFD",
    "TRIGGER_NONE", "UNMASK_EVENTFD", "UNMASK_NONE", "EventFd", "MemfdWindow", "config_read", "config_write",
    "install_intx", "intx_status", "intx_unmask", "irq_reg", "pci_status", "set_command", "wait_until",
    "write_config", "expect_error", "expect_no_reply_to", "header_bytes", "raw_request", "PYTHON",
    "ProcessServer", "Resources", "RunningServer", "ServerFailed", "ThreadServer", "serve_in_subprocess",
    "serve_in_thread", "server_argv",
]
