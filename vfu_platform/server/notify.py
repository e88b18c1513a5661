# SPDX-License-Identifier: BSD-3-Clause
"""Readiness and status for a service manager: the sd_notify(3) protocol.

A datagram of newline-separated KEY=VALUE lines to the unix socket named by
$NOTIFY_SOCKET (a path, or "@name" for the abstract namespace).  The server sends
READY=1 once it listens, STATUS= lines as clients come and go, and STOPPING=1 when
it shuts down.  Without $NOTIFY_SOCKET (not run by systemd with Type=notify) every
call does nothing.
"""
from __future__ import annotations

import logging
import os
import socket
from collections.abc import MutableMapping

log = logging.getLogger("vfu_platform.server")


class Notifier:
    """Sends sd_notify messages to one address (None: sends nothing)."""

    def __init__(self, address: str | None) -> None:
        self.address = address
        self._warned = False

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str] | None = None) -> Notifier:
        """The notifier $NOTIFY_SOCKET names; the variable is removed, so no child uses it."""
        env = os.environ if environ is None else environ
        return cls(env.pop("NOTIFY_SOCKET", None) or None)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *lines: str) -> bool:
        """Send one message of `lines`; False (and a warning, once) if it cannot be sent."""
        if self.address is None:
            return False
        address = self.address
        if address.startswith("@"):
            address = "\0" + address[1:]
        elif not address.startswith("/"):
            self._warn(f"NOTIFY_SOCKET={self.address!r}: only unix socket addresses are supported")
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto("\n".join(lines).encode(), socket.MSG_DONTWAIT, address)
        except OSError as exc:
            self._warn(f"cannot notify {self.address}: {exc.strerror or exc}")
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def status(self, status: str) -> bool:
        return self.send(f"STATUS={status}")

    def stopping(self, status: str = "stopping") -> bool:
        return self.send("STOPPING=1", f"STATUS={status}")

    def _warn(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            log.warning("%s", message)
