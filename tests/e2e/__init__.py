# SPDX-License-Identifier: BSD-3-Clause
"""End-to-end tests: a QEMU guest drives a device served over vfio-user (marker `qemu`)."""
