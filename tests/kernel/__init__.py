# SPDX-License-Identifier: BSD-3-Clause
"""Kernel VFIO tests: VfioHostBackend against real devices inside QEMU guests (marker `kernel`)."""
