# SPDX-License-Identifier: BSD-3-Clause
"""Device backends: a real host VFIO device or a simulated one, behind one interface."""
