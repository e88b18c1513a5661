# SPDX-License-Identifier: BSD-3-Clause
"""Resetting the device behind a served function, without ever failing the client.

QEMU sends DEVICE_RESET at every machine reset and gives up on the device if
the reply is an error, yet many host devices cannot be reset at all: QEMU's
edu has no FLR/PM/bus reset, and vfio-platform/vfio-amba only reset devices
with a reset module for their compatible string.  So a reset that the device
does not offer, or that fails, is reported plainly (a warning the first time,
then at info level, and a trace event every time) and the caller goes on to
reset its own emulated state.

Host backends (a real device, which a next client must not find in the
previous client's state) are reset between clients by default; simulated
models keep their state, as the vfio-user spec asks of a server.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

from vfu_platform.backends.base import BackendError, DeviceBackend
from vfu_platform.bridge.host_dma import supports_host_dma

log = logging.getLogger("vfu_platform.bridge.reset")

Trace = Callable[..., None]


def is_host_backend(backend: DeviceBackend) -> bool:
    """A real device, as opposed to a simulated model: one with a host IOMMU behind it."""
    return supports_host_dma(backend)


class DeviceResetter:
    """Runs `backend.reset()` when asked and turns "cannot" into a report."""

    def __init__(self, backend: DeviceBackend, trace: Trace) -> None:
        self.backend = backend
        self._trace = trace
        self._warned = False
        #: how many resets reached the device / were reported as impossible or failed
        self.done = 0
        self.skipped = 0

    def reset(self, reason: str) -> bool:
        """True if the device was reset; False (reported, never raised) if it could not be."""
        name = self.backend.name or type(self.backend).__name__
        if getattr(self.backend, "can_reset", True) is False:
            self._report(f"{name} has no reset (the host driver offers no VFIO_DEVICE_RESET); "
                         "only the emulated state is reset", reason, "unsupported")
            return False
        try:
            self.backend.reset()
        except BackendError as exc:
            self._report(f"{name}: reset failed: {exc}", reason, "failed", errno=exc.errno)
            return False
        self.done += 1
        self._trace("device-reset-host", reason=reason)
        return True

    def _report(self, message: str, reason: str, outcome: str, **fields: object) -> None:
        self.skipped += 1
        level = logging.INFO if self._warned else logging.WARNING
        self._warned = True
        log.log(level, "%s (%s)", message, reason)
        self._trace(f"device-reset-{outcome}", reason=reason, message=message, **fields)
