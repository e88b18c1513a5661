# SPDX-License-Identifier: BSD-3-Clause
"""Config-space writes and what they change outside config space.

`config_space.ConfigSpace` is the register model (it does no I/O and knows no
IRQs); a write's effects are routed from here: COMMAND.INTX_DISABLE and the
MSI-X function mask are IRQ engine inputs (`irq_routing`), COMMAND.bus-master
is traced (the `bus_master` gate reads the bit itself at every DMA).
"""
from __future__ import annotations

from vfu_platform.bridge.config_space import ConfigSpace
from vfu_platform.bridge.irq_routing import IrqRouter
from vfu_platform.trace import TraceFn


class ConfigRouting:
    def __init__(self, config: ConfigSpace, irqs: IrqRouter, trace: TraceFn) -> None:
        self._config = config
        self._irqs = irqs
        self._trace = trace

    def write(self, offset: int, data: bytes) -> None:
        effects = self._config.write(offset, data)
        if not effects.any_changed:
            return
        if effects.intx_disable_changed:
            self._irqs.intx_disable_changed()
        if effects.bus_master_changed:
            self._trace("bus-master", value=self._config.bus_master)
        if effects.msix_mask_changed:
            self._irqs.msix_function_mask_changed()


__all__ = ["ConfigRouting"]
