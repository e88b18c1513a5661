# SPDX-License-Identifier: BSD-3-Clause
"""Logging for people: `-v` and `-vv`, per-module loggers under "vfu_platform".

* `-v` (INFO): connections, negotiation, a client gone and why, IRQ state changes
  (INTx/MSI-X wiring, INTx disable, EOI mode).
* `-vv` (DEBUG): also one line per message, written by `MessageLog`, an observer with
  the same `message()` / `event()` methods as `trace.Tracer`.  It is put in the
  session's hook only at `-vv` (`trace.observers(tracer, message_log)`): below that
  the hook does not carry it, and the fast path for region accesses stays on.

A `--log-file` is opened for append and reopened by `reopen()` (logrotate, SIGHUP);
warnings and errors go to stderr as well.
"""
from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from vfu_platform import vfio_abi
from vfu_platform.protocol.constants import COMMAND_NAMES
from vfu_platform.protocol.header import Header
from vfu_platform.trace import errno_name, flag_names

#: the package's logger: every module logs under it ("vfu_platform.session", ...)
ROOT = "vfu_platform"
STDERR_FORMAT = "vfu-platform: %(message)s"
FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_VALUE_SIZES = (1, 2, 4, 8)
#: vfio-pci's fixed region indexes (the BARs are named by the device when it can)
_PCI_REGION_NAMES = {
    **{vfio_abi.PCI_BAR0_REGION_INDEX + i: f"BAR{i}" for i in range(6)},
    vfio_abi.PCI_ROM_REGION_INDEX: "ROM",
    vfio_abi.PCI_CONFIG_REGION_INDEX: "config",
    vfio_abi.PCI_VGA_REGION_INDEX: "VGA",
}


class _ReopenableFileHandler(logging.FileHandler):
    """A FileHandler whose file can be opened again by name (after logrotate moved it)."""

    def reopen(self) -> None:
        self.acquire()
        try:
            stream, self.stream = self.stream, self._open()
            if stream is not None:
                stream.close()
        finally:
            self.release()


#: the handlers configure_logging installed (replaced by the next call)
_installed: list[logging.Handler] = []


def level_for(verbosity: int) -> int:
    """WARNING without -v, INFO with -v, DEBUG with -vv (or more)."""
    return (logging.WARNING, logging.INFO, logging.DEBUG)[max(0, min(verbosity, 2))]


def configure_logging(verbosity: int, log_file: str | None = None) -> None:
    """Send the package's logs to stderr, or to `log_file` (warnings to stderr too).

    Raises OSError when `log_file` cannot be opened.
    """
    level = level_for(verbosity)
    handlers: list[logging.Handler] = []
    stderr = logging.StreamHandler()
    stderr.setFormatter(logging.Formatter(STDERR_FORMAT))
    if log_file:
        file_handler = _ReopenableFileHandler(log_file, mode="a", encoding="utf-8")
        file_handler.setFormatter(logging.Formatter(FILE_FORMAT))
        file_handler.setLevel(level)
        stderr.setLevel(logging.WARNING)
        handlers += [file_handler, stderr]
    else:
        stderr.setLevel(level)
        handlers.append(stderr)
    logger = logging.getLogger(ROOT)
    for old in _installed:
        logger.removeHandler(old)
        old.close()
    _installed[:] = handlers
    for handler in handlers:
        logger.addHandler(handler)
    logger.setLevel(level)


def reopen() -> None:
    """Open the log file again by its name (SIGHUP after logrotate); nothing without one."""
    for handler in _installed:
        if isinstance(handler, _ReopenableFileHandler):
            handler.reopen()


def reopen_on_sighup(add_reader: Callable[[int, Callable[[], None]], None],
                     reopeners: Sequence[Callable[[], None]]) -> Callable[[], None]:
    """Call each of `reopeners` on SIGHUP, from the event loop (never inside a write).

    The signal handler only writes a byte to a pipe; `add_reader` (the server loop's)
    watches its other end.  Returns what undoes it (handler back to default, pipe closed).
    """
    read_fd, write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def on_signal(_signum: int, _frame: object) -> None:
        try:
            os.write(write_fd, b"h")
        except BlockingIOError:
            pass  # a reopen is already due

    def on_readable() -> None:
        try:
            os.read(read_fd, 64)
        except BlockingIOError:
            return
        logging.getLogger(ROOT).info("SIGHUP: reopening the log and trace files")
        for reopen_file in reopeners:
            reopen_file()

    add_reader(read_fd, on_readable)
    signal.signal(signal.SIGHUP, on_signal)

    def undo() -> None:
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        os.close(read_fd)
        os.close(write_fd)

    return undo


def pci_region_namer(bar_names: Mapping[int, str] | None = None) -> Callable[[int], str]:
    """Names for a PCI function's region indexes: "BAR0 edu-mmio", "config", else "region N".

    `bar_names` gives what is behind each BAR (a platform region's name, "irq-page").
    """
    names = dict(_PCI_REGION_NAMES)
    for index, name in (bar_names or {}).items():
        base = _PCI_REGION_NAMES.get(index, f"region {index}")
        names[index] = f"{base} {name}" if name else base
    return lambda index: names.get(index, f"region {index}")


def _default_namer(index: int) -> str:
    return f"region {index}"


class MessageLog:
    """One readable DEBUG line per message and per event (an observer like `trace.Tracer`).

    `region_name` names a region index for the line (`pci_region_namer`); without
    one a region is "region N".
    """

    def __init__(self, region_name: Callable[[int], str] | None = None,
                 logger: logging.Logger | None = None) -> None:
        self.region_name = region_name or _default_namer
        self.logger = logger or logging.getLogger(f"{ROOT}.messages")

    def message(self, direction: str, header: Header, nfds: int, error: int = 0, note: str = "", *,
                region: int | None = None, offset: int | None = None, count: int | None = None,
                value: int | None = None) -> None:
        logger = self.logger
        if not logger.isEnabledFor(logging.DEBUG):
            return
        logger.debug("%s", self.format(direction, header, nfds, error, note, region=region, offset=offset,
                                       count=count, value=value))

    def format(self, direction: str, header: Header, nfds: int, error: int = 0, note: str = "", *,
               region: int | None = None, offset: int | None = None, count: int | None = None,
               value: int | None = None) -> str:
        """The line `message()` logs."""
        parts = [f"{direction:<7}", COMMAND_NAMES.get(header.command, f"command-{header.command}"),
                 f"id={header.msg_id}", "+".join(flag_names(header.flags, error))]
        if error:
            parts.append(f"errno={errno_name(error)}")
        if region is not None:
            parts.append(f"region={region} ({self.region_name(region)})")
        if offset is not None:
            parts.append(f"offset={offset:#x}" if region is not None else f"iova={offset:#x}")
        if count is not None:
            parts.append(f"size={count}")
        if value is not None and count in _VALUE_SIZES:
            parts.append(f"value={value:#0{2 + 2 * count}x}")
        parts.append(f"bytes={header.size}")
        if nfds:
            parts.append(f"fds={nfds}")
        line = " ".join(parts)
        return f"{line}: {note}" if note else line

    def event(self, event: str, **fields: Any) -> None:
        logger = self.logger
        if not logger.isEnabledFor(logging.DEBUG):
            return
        logger.debug("event %s %s", event, " ".join(f"{key}={value}" for key, value in fields.items()))


__all__ = ["MessageLog", "configure_logging", "level_for", "pci_region_namer", "reopen", "reopen_on_sighup"]
