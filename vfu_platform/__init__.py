# SPDX-License-Identifier: BSD-3-Clause
"""vfu_platform: a vfio-user server for platform devices (host VFIO or simulated)."""

__version__ = "0.1.0"
