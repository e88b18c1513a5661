# SPDX-License-Identifier: BSD-3-Clause
"""File-descriptor helpers shared by every layer (a leaf: imports nothing from the package)."""
from __future__ import annotations

import os


def close_quietly(fd: int | None) -> None:
    """Close `fd`, ignoring None and any OSError (an fd already gone, a bad number)."""
    if fd is None:
        return
    try:
        os.close(fd)
    except OSError:
        pass


__all__ = ["close_quietly"]
