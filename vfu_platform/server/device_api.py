# SPDX-License-Identifier: BSD-3-Clause
"""The device API the session serves through: defined one layer down, in `vfu_platform.bridge.api`.

Named here so that the server's modules read it from their own package; the
types are the bridge layer's (the server imports them from below, never the
other way round).
"""
from __future__ import annotations

from vfu_platform.bridge.api import ClientContext, ServedDevice

__all__ = ["ClientContext", "ServedDevice"]
