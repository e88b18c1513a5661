# SPDX-License-Identifier: BSD-3-Clause
"""The bridge: presents a platform device (N MMIO regions, M IRQs) as one PCI function.

The modules here that carry no I/O (`bar_plan`, `config_space`, `msix`) decide the PCI
shape of the device; the bridge glue wires them to a backend and the server.
"""
