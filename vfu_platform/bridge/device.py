# SPDX-License-Identifier: BSD-3-Clause
"""The bridge: a platform device (backend) presented as a PCI function.

`PciBridge` is the `ServedDevice` the server talks to, a composition of parts
with one job each, which share one counters object and one trace hook:

* `bar_routing`: the BAR plan, REGION_INFO, and where REGION_READ/WRITE go;
* `config_space` (the register model) and `config_routing` (a write's effects);
* `irq_routing`: the IRQ engine's inputs and actions, the client's IRQ
  eventfds, the IRQ page; `irq_bypass` under it hands a lone host INTx line to
  the host kernel;
* `bus_master`: the DMA gate a backend is lent;
* `descriptor`: the guest descriptor and its vendor capability, for a backend
  whose `guest_devices()` is not empty (docs/guest-descriptor.md); the others
  keep the 4 KiB IRQ page and no capability, so what they show a guest does not
  change;
* `host_dma` and `device_reset` for host devices.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from vfu_platform import guest_descriptor, vfio_abi
from vfu_platform.backends.base import AckRegister, DeviceBackend, DeviceContext
from vfu_platform.bridge import descriptor as guest_desc
from vfu_platform.bridge.api import ClientContext
from vfu_platform.bridge.bar_plan import IRQ_PAGE_SIZE, IRQ_PAGE_WITH_DESCRIPTOR, BarPlan
from vfu_platform.bridge.bar_routing import BarRouter, MmapPolicy, RegionLayout, RegionOptions, group_acks
from vfu_platform.bridge.bus_master import BusMasterGate
from vfu_platform.bridge.config_routing import ConfigRouting
from vfu_platform.bridge.config_space import ConfigSpace, PciIds
from vfu_platform.bridge.device_reset import DeviceResetter, is_host_backend
from vfu_platform.bridge.host_dma import HostDma, supports_host_dma
from vfu_platform.bridge.irq_page import IrqPage
from vfu_platform.bridge.irq_routing import IrqRouter
from vfu_platform.bridge.msix import MsixTable
from vfu_platform.counters import Counters
from vfu_platform.irq import IrqEngine, LineSpec
from vfu_platform.protocol import messages as m
from vfu_platform.trace import TraceHook, Tracer

IrqMode = Literal["intx", "msix"]

_NUM_REGIONS = vfio_abi.PCI_NUM_REGIONS
_NUM_IRQS = vfio_abi.PCI_NUM_IRQS


@dataclass(slots=True)
class BridgeOptions:
    ids: PciIds = field(default_factory=PciIds)
    irq_mode: IrqMode = "intx"
    page_size: int | None = None
    regions: dict[int, RegionOptions] = field(default_factory=dict)
    #: extra acknowledge registers (platform region numbering), added to the backend's own
    ack_registers: tuple[AckRegister, ...] = ()
    #: use the backend's own acknowledge registers for exact EOIs
    use_model_acks: bool = True
    #: wire the client's INTx eventfds straight into a host device when the semantics allow it
    irq_bypass: bool = True
    #: reset the device when a client goes away; None: yes for host devices (the next client
    #: must not inherit the last one's device), no for simulated ones (it must see their state)
    reset_on_client_loss: bool | None = None


class PciBridge:
    """A backend served as one PCI function: the parts wired together, and the client's lifecycle."""

    # The ServedDevice methods are the parts' own bound methods, set in __init__: the
    # session's call lands in the part that does the work (no extra call per access).
    region_read: Callable[[int, int, int], bytes]
    region_write: Callable[[int, int, bytes], None]
    region_size: Callable[[int], int]
    region_info: Callable[[int], tuple[m.RegionInfo, int | None]]
    irq_info: Callable[[int], tuple[int, int]]
    set_irqs: Callable[[m.IrqSet, list[int]], None]

    def __init__(self, backend: DeviceBackend, options: BridgeOptions | None = None) -> None:
        self.backend = backend
        self.options = options = options or BridgeOptions()
        #: the bridge's counters, shared by its parts
        self.counters = Counters()
        #: the bridge's trace hook, shared by its parts; it records while a client's tracer is set
        self.trace = TraceHook()
        declared = tuple(backend.guest_devices())
        self.layout = layout = RegionLayout(
            backend, options.regions, options.page_size,
            IRQ_PAGE_WITH_DESCRIPTOR if declared else IRQ_PAGE_SIZE,
        )
        self.plan: BarPlan = layout.plan
        irqs = list(backend.irqs())
        acks = list(options.ack_registers)
        if options.use_model_acks:
            acks += list(backend.ack_registers)
        acks_by_region = group_acks(acks, len(irqs))
        acked = {ack.irq for ack in acks}
        self.engine = IrqEngine([LineSpec(automasked=i.automasked, has_ack=i.index in acked) for i in irqs])
        msix_vectors = len(irqs) if options.irq_mode == "msix" and irqs else 0
        self.msix = MsixTable(msix_vectors) if msix_vectors else None
        records, data, vendor_cap = guest_desc.build(
            declared, layout.platform_regions, irqs, self.plan, layout.mmapped, msix_vectors > 0)
        #: the guest descriptor's records and bytes (empty without guest devices)
        self.guest_devices: tuple[guest_descriptor.DeviceRecord, ...] = records
        self.descriptor = data
        self.config = ConfigSpace(options.ids, self.plan, msix_vectors=msix_vectors, interrupt_pin=1,
                                  vendor_cap=vendor_cap)
        self.irqs = IrqRouter(backend, irqs, self.engine, self.msix, self.config, data, options.irq_bypass,
                              self.counters, self.trace)
        self.irq_page: IrqPage = self.irqs.page
        config_routing = ConfigRouting(self.config, self.irqs, self.trace)
        self.bars = BarRouter(
            layout, backend, self.config, acks_by_region,
            config_write=config_routing.write,
            page_read=self.irqs.page_read,
            page_write=self.irqs.page_write,
            engine=self.engine,
            apply=self.irqs.apply,
        )
        self.region_read = self.bars.read
        self.region_write = self.bars.write
        self.region_size = layout.region_size
        self.region_info = layout.region_info
        self.irq_info = self.irqs.irq_info
        self.set_irqs = self.irqs.set_irqs
        self._resetter = DeviceResetter(backend, self.trace)
        #: the client's DMA windows in the host IOMMU, for a host device while a client is attached
        self.host_dma: HostDma | None = None

    @property
    def tracer(self) -> Tracer | None:
        return self.trace.tracer

    @property
    def irq_wakeups(self) -> int:
        """Times the server woke up for an interrupt (a line trigger or the resamplefd)."""
        return self.irqs.wakeups

    # ------------------------------------------------------------ client lifecycle
    def client_attached(self, context: ClientContext) -> None:
        self.trace.tracer = context.tracer
        self.irqs.attach(context.loop)
        gate = BusMasterGate(context.dma, self.config, self.counters, self.trace)
        self.backend.attach(DeviceContext(gate, context.loop))
        self.irqs.sync_config()
        if supports_host_dma(self.backend):
            self.host_dma = HostDma(self.backend, self.trace)  # type: ignore[arg-type]
            self.host_dma.attach(context.dma)

    def client_lost(self) -> None:
        self.irqs.end_bypass()
        self.backend.attach(None)
        self.irqs.detach()
        self.trace("irq-reset", reason="client lost")
        reset = self.options.reset_on_client_loss
        if reset or (reset is None and is_host_backend(self.backend)):
            self.reset("client lost")
        if self.host_dma is not None:  # IOMMU unmaps now: the session munmaps after client_lost
            self.host_dma.detach()
            self.host_dma = None

    def close(self) -> None:
        """Server shutdown: release the line eventfds and the backend."""
        self.irqs.close()
        self.backend.close()

    # ------------------------------------------------------------ info
    def device_info(self) -> tuple[int, int, int]:
        return vfio_abi.DEVICE_FLAGS_PCI | vfio_abi.DEVICE_FLAGS_RESET, _NUM_REGIONS, _NUM_IRQS

    # ------------------------------------------------------------ reset
    def reset(self, reason: str = "DEVICE_RESET") -> None:
        self.irqs.end_bypass()
        self._resetter.reset(reason)  # a device without reset is reported, never an error
        self.config.reset()
        self.irqs.reset()
        self.trace("device-reset")


__all__ = ["BridgeOptions", "IrqMode", "MmapPolicy", "PciBridge", "RegionOptions"]
