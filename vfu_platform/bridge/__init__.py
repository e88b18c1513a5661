# SPDX-License-Identifier: BSD-3-Clause
"""The bridge: presents a platform device (N MMIO regions, M IRQs) as one PCI function.

`device.PciBridge` composes parts with one job each: `bar_routing` (BAR plan,
REGION_INFO, access routing), `config_space` + `config_routing`, `irq_routing`
(INTx, MSI-X, the IRQ page) with `irq_bypass` under it, `bus_master`, `descriptor`.
The modules that carry no I/O (`bar_plan`, `config_space`, `msix`, `irq_page`) decide
the PCI shape of the device.  `pci_passthrough` serves a host PCI function as itself.
`api` is what the server gets from this layer (`ServedDevice`, `ClientContext`).
"""
