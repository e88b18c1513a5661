# SPDX-License-Identifier: BSD-3-Clause
"""The bridge: a platform device (backend) presented as a PCI function.

Regions 0-5 are the BARs of the BAR plan (platform regions, then the IRQ page),
6 the (absent) ROM, 7 the emulated config space, 8 the (absent) VGA region.
IRQ indexes: INTx (count 1), MSI (0), MSI-X (one vector per platform IRQ in
`msix` mode, else 0), ERR (1, never signalled), REQ (0).

Guest descriptor: a backend whose `guest_devices()` is not empty gets the
vendor-specific capability and the descriptor at 0x1000 of an 8 KiB IRQ page
(docs/guest-descriptor.md); the others keep the 4 KiB IRQ page and no capability,
so what they show a guest does not change.

Interrupts: each platform line's trigger eventfd (between bridge and backend,
owned here, kept across clients) is watched by the event loop; its signal is an
event for the IRQ engine, whose actions the bridge carries out: write the
client's INTx or MSI-X eventfd, or unmask the line on the device.
"""
from __future__ import annotations

import errno
import logging
import os
from dataclasses import dataclass, field
from typing import Literal

from vfu_platform import vfio_abi
from vfu_platform.backends.base import (
    AckRegister,
    BackendError,
    DeviceBackend,
    DeviceContext,
    DmaError,
    DmaSpace,
)
from vfu_platform import guest_descriptor
from vfu_platform.bridge import descriptor as guest_desc
from vfu_platform.bridge.bar_plan import (
    IRQ_PAGE_SIZE,
    IRQ_PAGE_WITH_DESCRIPTOR,
    SLACK,
    BarPlan,
    RegionSpec,
    plan_bars,
)
from vfu_platform.bridge.config_space import CONFIG_SPACE_SIZE, ConfigSpace, ConfigWriteEffects, PciIds
from vfu_platform.bridge.device_reset import DeviceResetter, is_host_backend
from vfu_platform.bridge.host_dma import HostDma, supports_host_dma
from vfu_platform.bridge.irq_page import DESCRIPTOR_OFFSET, IRQ_ACTIVE, IRQ_CTRL, IRQ_CTRL_EXACT_EOI, IRQ_EOI, IrqPage
from vfu_platform.bridge.msix import ENTRY_SIZE, MsixTable
from vfu_platform.irq import IrqEngine, LineSpec, Route, Signal, UnmaskLine
from vfu_platform.protocol import messages as m
from vfu_platform.server.device_api import ClientContext

log = logging.getLogger("vfu_platform.bridge")

MmapPolicy = Literal["auto", "never", "always"]
IrqMode = Literal["intx", "msix"]

_NUM_REGIONS = vfio_abi.PCI_NUM_REGIONS
_NUM_IRQS = vfio_abi.PCI_NUM_IRQS
_CONFIG = vfio_abi.PCI_CONFIG_REGION_INDEX
_INTX = vfio_abi.PCI_INTX_IRQ_INDEX
_MSI = vfio_abi.PCI_MSI_IRQ_INDEX
_MSIX = vfio_abi.PCI_MSIX_IRQ_INDEX
_ERR = vfio_abi.PCI_ERR_IRQ_INDEX
_RW = vfio_abi.REGION_FLAG_READ | vfio_abi.REGION_FLAG_WRITE
_EVENTFD_ONE = (1).to_bytes(8, "little")
_VECTOR_CONTROL = 12  # offset of the vector control word (mask bit 0) in an MSI-X table entry


@dataclass(slots=True)
class RegionOptions:
    mmap: MmapPolicy = "auto"
    is_64bit: bool = False
    prefetchable: bool = False


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


class BusMasterGate:
    """Device DMA is allowed only while COMMAND.bus-master is set.

    QEMU enforces bus mastering for its in-process devices; over vfio-user it hands
    the server guest memory regardless, so the server has to check.
    """

    def __init__(self, dma: DmaSpace, config: ConfigSpace, bridge: "PciBridge") -> None:
        self._dma = dma
        self._config = config
        self._bridge = bridge

    def _check(self, what: str, iova: int, size: int) -> None:
        if not self._config.bus_master:
            self._bridge._bump("dma-refused-no-bus-master")
            self._bridge.trace("dma-refused", reason="bus master disabled", op=what, iova=iova, size=size)
            raise DmaError(errno.EPERM, f"device DMA {what} at {iova:#x} refused: bus master is disabled")

    def read(self, iova: int, size: int) -> bytes:
        self._check("read", iova, size)
        return self._dma.read(iova, size)

    def write(self, iova: int, data: bytes) -> None:
        self._check("write", iova, len(data))
        self._dma.write(iova, data)


class PciBridge:
    def __init__(self, backend: DeviceBackend, options: BridgeOptions | None = None) -> None:
        self.backend = backend
        self.options = options or BridgeOptions()
        self.counters: dict[str, int] = {}
        platform_regions = list(backend.regions())
        self._platform_regions = platform_regions
        specs = [
            RegionSpec(
                size=r.size,
                name=r.name,
                is_64bit=self.options.regions.get(r.index, RegionOptions()).is_64bit,
                prefetchable=self.options.regions.get(r.index, RegionOptions()).prefetchable,
            )
            for r in platform_regions
        ]
        declared = tuple(backend.guest_devices())
        self.plan: BarPlan = plan_bars(
            specs, page_size=self.options.page_size, irq_page=True,
            irq_page_size=IRQ_PAGE_WITH_DESCRIPTOR if declared else IRQ_PAGE_SIZE,
        )
        irqs = list(backend.irqs())
        self._irqs = irqs
        acks = list(self.options.ack_registers)
        if self.options.use_model_acks:
            acks += list(backend.ack_registers)
        self._acks_by_region: dict[int, list[AckRegister]] = {}
        for ack in acks:
            if ack.irq >= len(irqs):
                raise ValueError(f"acknowledge register for IRQ {ack.irq}: the device has {len(irqs)} IRQs")
            self._acks_by_region.setdefault(ack.region, []).append(ack)
        acked = {ack.irq for ack in acks}
        self.engine = IrqEngine([LineSpec(automasked=i.automasked, has_ack=i.index in acked) for i in irqs])
        msix_vectors = len(irqs) if self.options.irq_mode == "msix" and irqs else 0
        self.msix = MsixTable(msix_vectors) if msix_vectors else None
        irq_bar = self.plan.irq_bar
        assert irq_bar is not None
        self._irq_bar_index = irq_bar.index
        #: the guest descriptor's records and bytes (empty without guest devices)
        self.guest_devices: tuple[guest_descriptor.DeviceRecord, ...] = ()
        self.descriptor = b""
        vendor_cap = None
        if declared:
            self.guest_devices = guest_desc.resolve(
                declared, platform_regions, irqs, self.plan, self._mmapped, msix_vectors > 0)
            self.descriptor = guest_desc.encode(self.guest_devices, msix_vectors > 0)
            cap = guest_descriptor.Capability(irq_bar.index, DESCRIPTOR_OFFSET, len(self.descriptor))
            vendor_cap = guest_descriptor.encode_capability(cap)
        self.config = ConfigSpace(self.options.ids, self.plan, msix_vectors=msix_vectors, interrupt_pin=1,
                                  vendor_cap=vendor_cap)
        self.irq_page = IrqPage(self.engine, self.msix, lambda: self.irq_wakeups, self.descriptor)
        #: times the server woke up for an interrupt (a line trigger or the resamplefd)
        self.irq_wakeups = 0
        self._bypassed = False
        self._intx_client_masked = False
        # Per BAR: the platform region behind it (None: the IRQ page).
        self._bar_region: dict[int, int | None] = {}
        for bar in self.plan.bars:
            self._bar_region[bar.index] = None if bar.region is None else platform_regions[bar.region].index
        # The hot path: BAR -> (platform region, its real size) for accesses that need no slack handling.
        self._direct: dict[int, tuple[int, int]] = {
            bar.index: (platform_regions[bar.region].index, platform_regions[bar.region].size)
            for bar in self.plan.bars
            if bar.region is not None
        }
        self._region_sizes = list(self.plan.region_sizes()) + [0, CONFIG_SPACE_SIZE, 0]
        # Line trigger eventfds (bridge <-> backend), created once, kept across clients.
        self._line_fds: list[int] = []
        self._client: ClientContext | None = None
        # Client-side fds.
        self._intx_trigger: int | None = None
        self._intx_resample: int | None = None
        self._err_trigger: int | None = None
        self._vector_fds: dict[int, int] = {}
        self.tracer = None
        self._resetter = DeviceResetter(backend, self.trace)
        self._host_dma: HostDma | None = None  # the client's DMA windows in the host IOMMU

    # ------------------------------------------------------------ observability
    def trace(self, event: str, **fields: object) -> None:
        if self.tracer is not None:
            self.tracer.event(event, **fields)

    def _bump(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    # ------------------------------------------------------------ client lifecycle
    def client_attached(self, context: ClientContext) -> None:
        self._client = context
        self.tracer = context.tracer
        if not self._line_fds:
            for irq in self._irqs:
                fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
                self._line_fds.append(fd)
                self.backend.set_irq_trigger(irq.index, fd)
        for line, fd in enumerate(self._line_fds):
            context.loop.add_reader(fd, lambda line=line, fd=fd: self._on_line(line, fd))
        self.backend.attach(DeviceContext(BusMasterGate(context.dma, self.config, self), context.loop))
        self.engine_sync_intx_disable()
        # Config space outlives clients; the engine (reset when the last one left) must
        # follow what it says, as for INTX_DISABLE above.
        self._apply(self.engine.msix_function_mask(self.config.msix_function_masked))
        if supports_host_dma(self.backend):
            self._host_dma = HostDma(self.backend, self.trace)  # type: ignore[arg-type]
            self._host_dma.attach(context.dma)

    def client_lost(self) -> None:
        self._end_bypass()
        self.backend.attach(None)
        if self._client is not None:
            for fd in self._line_fds:
                self._client.loop.remove_reader(fd)
        self._drop_client_fds()
        self._apply(self.engine.reset())
        for irq in self._irqs:
            if irq.automasked:
                self.backend.mask_irq(irq.index)
        self._update_intx_status()
        self._client = None
        self.trace("irq-reset", reason="client lost")
        reset = self.options.reset_on_client_loss
        if reset or (reset is None and is_host_backend(self.backend)):
            self.reset("client lost")
        if self._host_dma is not None:  # IOMMU unmaps now: the session munmaps after client_lost
            self._host_dma.detach()
            self._host_dma = None

    def _drop_client_fds(self) -> None:
        # Stop watching the resamplefd before closing it: epoll watches the open file,
        # which lives on in the client (KVM) after our close, and an unregister by a
        # closed fd number fails, leaving a stale registration the loop spins on.
        if self._intx_resample is not None and self._client is not None:
            self._client.loop.remove_reader(self._intx_resample)
        for fd in [self._intx_trigger, self._intx_resample, self._err_trigger, *self._vector_fds.values()]:
            if fd is not None:
                _close(fd)
        self._intx_trigger = self._intx_resample = self._err_trigger = None
        self._vector_fds.clear()

    def close(self) -> None:
        """Server shutdown: release the line eventfds and the backend."""
        for irq in self._irqs:
            self.backend.set_irq_trigger(irq.index, None)
        for fd in self._line_fds:
            _close(fd)
        self._line_fds.clear()
        self.backend.close()

    def engine_sync_intx_disable(self) -> None:
        self._apply(self.engine.set_intx_disable(self.config.intx_disabled))

    # ------------------------------------------------------------ info
    def device_info(self) -> tuple[int, int, int]:
        return vfio_abi.DEVICE_FLAGS_PCI | vfio_abi.DEVICE_FLAGS_RESET, _NUM_REGIONS, _NUM_IRQS

    def region_size(self, index: int) -> int:
        return self._region_sizes[index]

    def region_info(self, index: int) -> tuple[m.RegionInfo, int | None]:
        size = self._region_sizes[index]
        if size == 0:
            return m.RegionInfo(0, 0, index, 0, 0, 0), None
        if index == _CONFIG:
            return m.RegionInfo(0, _RW, index, 0, size, 0), None
        platform_index = self._bar_region.get(index)
        if platform_index is None:  # the IRQ page: always trapped
            return m.RegionInfo(0, _RW, index, 0, size, 0), None
        region = self._platform_regions[platform_index]
        if not self._mmapped(platform_index):
            return m.RegionInfo(0, _RW, index, 0, size, 0), None
        areas = region.sparse_areas or ((0, region.size),)
        caps = (m.SparseMmapCap(tuple(areas)),)
        info = m.RegionInfo(0, _RW | vfio_abi.REGION_FLAG_MMAP, index, 0, size, region.mmap_offset, caps)
        return info, region.mmap_fd

    def _mmapped(self, platform_index: int) -> bool:
        region = self._platform_regions[platform_index]
        policy = self.options.regions.get(platform_index, RegionOptions()).mmap
        if policy == "never" or not region.mmappable:
            return False
        if policy == "always":
            return True
        return platform_index not in self.backend.irq_regions and region.size % self.plan.page_size == 0

    def irq_info(self, index: int) -> tuple[int, int]:
        eventfd = vfio_abi.IRQ_INFO_EVENTFD
        if index == _INTX:
            return eventfd | vfio_abi.IRQ_INFO_MASKABLE | vfio_abi.IRQ_INFO_AUTOMASKED, 1
        if index == _MSIX:
            # No NORESIZE: vectors may be added one at a time (QEMU would otherwise
            # tear the whole index down and set it up again for every new vector).
            return eventfd, (self.msix.vectors if self.msix else 0)
        if index == _ERR:
            return eventfd, 1
        return eventfd, 0  # MSI, REQ

    # ------------------------------------------------------------ region access
    def region_read(self, index: int, offset: int, count: int) -> bytes:
        direct = self._direct.get(index)
        if direct is not None and offset + count <= direct[1]:
            data = self.backend.read(direct[0], offset, count)
        elif index == _CONFIG:
            return self.config.read(offset, count)
        else:
            data = self._bar_read(index, offset, count)
        actions = self.engine.trapped_access()
        if actions:  # nothing to do is the common case: skip the bookkeeping
            self._apply(actions)
        return data

    def _bar_read(self, index: int, offset: int, count: int) -> bytes:
        if index == self._irq_bar_index:
            if offset <= IRQ_ACTIVE < offset + count:
                self.engine.active_read()  # the guest takes the interrupt (exact EOI; no actions)
            return self.irq_page.read(offset, count)
        span = self.plan.locate(index, offset, count)
        if span is SLACK:
            return bytes(count)
        data = self.backend.read(span.region if span.region is not None else 0, span.offset, span.length)
        return data if span.length == count else data + bytes(count - span.length)

    def region_write(self, index: int, offset: int, data: bytes) -> None:
        if index == _CONFIG:
            self._config_write(offset, data)
            return
        if index == self._irq_bar_index:
            self._irq_page_registers(offset, data)
            if offset < DESCRIPTOR_OFFSET and self.msix is not None:
                self.irq_page.write(offset, data)
                # Hand the engine every mask bit this write touched, changed or not: the
                # table powers on masked while the engine starts unmasked (QEMU emulates
                # the table itself and never writes it), so a driver's first "mask" write
                # changes no bit here, yet it must hold delivery.
                end = offset + len(data)
                for vector in range(self.msix.vectors):
                    if offset <= vector * ENTRY_SIZE + _VECTOR_CONTROL < end:
                        self._apply(self.engine.msix_vector_mask(vector, self.msix.masked(vector)))
        else:
            direct = self._direct.get(index)
            if direct is not None and offset + len(data) <= direct[1]:
                self.backend.write(direct[0], offset, data)
                self._check_acks(direct[0], offset, data)
            else:
                span = self.plan.locate(index, offset, len(data))
                if span is not SLACK:
                    platform_index = self._bar_region[index]
                    assert platform_index is not None
                    self.backend.write(platform_index, span.offset, data[: span.length])
                    self._check_acks(platform_index, span.offset, data[: span.length])
        actions = self.engine.trapped_access()
        if actions:
            self._apply(actions)

    def _irq_page_registers(self, offset: int, data: bytes) -> None:
        """IRQ_EOI and IRQ_CTRL writes (docs/irq-page.md): engine inputs."""
        for register, value in self.irq_page.register_writes(offset, data):
            if register == IRQ_EOI:
                ignored = self.engine.ignored_eois
                self._apply(self.engine.eoi(value))
                if self.engine.ignored_eois != ignored:
                    self._bump("irq-eoi-ignored")
                self.trace("irq-eoi-write", line=value, ignored=self.engine.ignored_eois != ignored)
            elif register == IRQ_CTRL:
                exact = bool(value & IRQ_CTRL_EXACT_EOI)
                self.trace("irq-ctrl", exact_eoi=exact)
                self._apply(self.engine.set_exact_eoi(exact))

    def _check_acks(self, region: int, offset: int, data: bytes) -> None:
        acks = self._acks_by_region.get(region)
        if not acks:
            return
        end = offset + len(data)
        for ack in acks:
            if offset <= ack.offset < end:
                value = int.from_bytes(data[ack.offset - offset : ack.offset - offset + 4], "little")
                if value & ack.mask:
                    self._apply(self.engine.ack(ack.irq))

    def _config_write(self, offset: int, data: bytes) -> None:
        effects: ConfigWriteEffects = self.config.write(offset, data)
        if not effects.any_changed:
            return
        if effects.intx_disable_changed:
            self._bypass_hold_changed()
            self.trace("intx-disable", value=self.config.intx_disabled)
            self._apply(self.engine.set_intx_disable(self.config.intx_disabled))
        if effects.bus_master_changed:
            self.trace("bus-master", value=self.config.bus_master)
        if effects.msix_mask_changed:
            self._apply(self.engine.msix_function_mask(self.config.msix_function_masked))

    # ------------------------------------------------------------ interrupts
    def _on_line(self, line: int, fd: int) -> None:
        try:
            os.eventfd_read(fd)
        except BlockingIOError:
            return
        self.irq_wakeups += 1
        self._bump("line-fires")
        self.trace("irq-fire", line=line)
        self._apply(self.engine.fire(line))

    def _on_resample(self) -> None:
        fd = self._intx_resample
        if fd is None:
            return
        try:
            os.eventfd_read(fd)
        except BlockingIOError:
            return
        self.irq_wakeups += 1
        self._bump("resample-eois")
        self.trace("intx-eoi", source="resamplefd")
        self._apply(self.engine.client_unmask())

    def _apply(self, actions: tuple) -> None:
        for action in actions:
            if isinstance(action, Signal):
                self._signal(action.target)
            elif isinstance(action, UnmaskLine):
                self.trace("irq-unmask", line=action.line)
                self.backend.unmask_irq(action.line)
        # Also without actions: an index disable or an edge line's EOI changes the
        # engine's state without telling the bridge to do anything.
        self._update_intx_status()
        if not self._bypassed and self.engine.active is None:
            self._update_bypass()

    def _update_intx_status(self) -> None:
        # STATUS.INTERRUPT is the function's interrupt state: set while a platform IRQ is
        # ACTIVE on the INTx route, whether or not delivery is held (INTX_DISABLE, client
        # MASK).  PCI: setting Interrupt Disable has no effect on this bit; QEMU's
        # pci_irq_handler likewise updates it before looking at pci_irq_disabled().
        engine = self.engine
        self.config.set_intx_status(engine.route is Route.INTX and engine.active is not None)

    def _signal(self, target: object) -> None:
        fd = self._intx_trigger if target == "intx" else self._vector_fds.get(target)  # type: ignore[arg-type]
        self.trace("irq-signal", target=target, active=self.engine.active)
        if fd is None:
            self._bump("signals-without-fd")
            return
        self._bump("signals")
        os.write(fd, _EVENTFD_ONE)

    def set_irqs(self, request: m.IrqSet, fds: list[int]) -> None:
        try:
            if request.index == _INTX:
                self._end_bypass()  # INTx wiring may change: decided again below
            self._set_irqs(request, fds)
            if request.index == _INTX:
                self._update_bypass()
        finally:
            for fd in fds:
                _close(fd)
            fds.clear()

    def _set_irqs(self, request: m.IrqSet, fds: list[int]) -> None:
        action, data_type = request.action, request.data_type
        index, start, count = request.index, request.start, request.count
        selected = _selected(request)
        self.trace("set-irqs", index=index, flags=request.flags, start=start, count=count, fds=len(fds))
        if action == vfio_abi.IRQ_SET_ACTION_TRIGGER:
            if data_type == vfio_abi.IRQ_SET_DATA_NONE and count == 0:
                self._disable_index(index)
            elif data_type == vfio_abi.IRQ_SET_DATA_EVENTFD:
                self._set_triggers(index, start, count, fds)
            else:
                self._loopback(index, selected)
            return
        if index == _INTX and selected:
            if data_type != vfio_abi.IRQ_SET_DATA_EVENTFD:
                self._intx_client_masked = action == vfio_abi.IRQ_SET_ACTION_MASK
            if action == vfio_abi.IRQ_SET_ACTION_MASK:
                self._apply(self.engine.client_mask())
            elif data_type == vfio_abi.IRQ_SET_DATA_EVENTFD:
                self._set_resample(fds.pop() if fds else None)
            else:
                self.trace("intx-eoi", source="unmask message")
                self._apply(self.engine.client_unmask())
        elif index == _MSIX:
            for vector in selected:
                masked = action == vfio_abi.IRQ_SET_ACTION_MASK
                self._apply(self.engine.msix_vector_mask(vector, masked))
        # MASK/UNMASK of ERR/REQ are refused by validation; of MSI there are no vectors.

    def _disable_index(self, index: int) -> None:
        if index == _INTX:
            self._set_resample(None)
            if self._intx_trigger is not None:
                _close(self._intx_trigger)
                self._intx_trigger = None
            self._apply(self.engine.intx_enable(False))
        elif index == _MSIX:
            for fd in self._vector_fds.values():
                _close(fd)
            self._vector_fds.clear()
            self._apply(self.engine.msix_enable(False))
        elif index == _ERR and self._err_trigger is not None:
            _close(self._err_trigger)
            self._err_trigger = None

    def _set_triggers(self, index: int, start: int, count: int, fds: list[int]) -> None:
        new = list(fds) if fds else [None] * count
        fds.clear()
        if index == _INTX:
            if self._intx_trigger is not None:
                _close(self._intx_trigger)
            self._intx_trigger = new[0]
            self._apply(self.engine.intx_enable(new[0] is not None))
        elif index == _MSIX:
            if self.msix is None:
                raise BackendError(errno.EINVAL, "MSI-X is not offered (irq_mode is intx)")
            if self.engine.route.name != "MSIX":
                self._apply(self.engine.msix_enable(True))
            for vector, fd in enumerate(new, start):
                old = self._vector_fds.pop(vector, None)
                if old is not None:
                    _close(old)
                if fd is not None:
                    self._vector_fds[vector] = fd
                self._apply(self.engine.vector_fd(vector, fd is not None))
        elif index == _ERR:
            if self._err_trigger is not None:
                _close(self._err_trigger)
            self._err_trigger = new[0]
        else:
            for fd in new:
                if fd is not None:
                    _close(fd)

    def _set_resample(self, fd: int | None) -> None:
        if self._intx_resample is not None:
            if self._client is not None:
                self._client.loop.remove_reader(self._intx_resample)
            _close(self._intx_resample)
        self._intx_resample = fd
        if fd is not None and self._client is not None:
            self._client.loop.add_reader(fd, self._on_resample)

    def _loopback(self, index: int, selected: list[int]) -> None:
        """TRIGGER with DATA_NONE/BOOL: software-trigger the eventfds (as the kernel does)."""
        for sub in selected:
            if index == _INTX and self._intx_trigger is not None:
                os.write(self._intx_trigger, _EVENTFD_ONE)
            elif index == _MSIX and sub in self._vector_fds:
                os.write(self._vector_fds[sub], _EVENTFD_ONE)
            elif index == _ERR and self._err_trigger is not None:
                os.write(self._err_trigger, _EVENTFD_ONE)

    # ------------------------------------------------------------ bypass
    def _bypass_wanted(self) -> bool:
        """One platform IRQ on INTx, a client trigger and, for a level line, a resamplefd.

        Then the host kernel can do it all: signal the client's trigger, and unmask the
        line when the guest's EOI signals the resamplefd (the seed's KVM irqfd +
        resamplefd path).  Several lines need the FIFO and the single-active rule,
        which only the engine keeps; simulated devices have no kernel to hand it to.
        """
        if not self.options.irq_bypass or len(self._irqs) != 1 or self._client is None:
            return False
        if not hasattr(self.backend, "set_irq_unmask_eventfd"):
            return False
        if self._intx_trigger is None or self.engine.route is not Route.INTX:
            return False
        return self._intx_resample is not None or not self._irqs[0].automasked

    def _update_bypass(self) -> None:
        if self._bypassed or not self._bypass_wanted():
            return
        if self.engine.active is not None or self.engine.pending:
            return  # an interrupt is in flight through the engine: switch once it completes
        line = self._irqs[0]
        self.backend.set_irq_trigger(line.index, self._intx_trigger)
        if line.automasked:
            assert self._intx_resample is not None and self._client is not None
            self._client.loop.remove_reader(self._intx_resample)  # the host kernel consumes it now
            getattr(self.backend, "set_irq_unmask_eventfd")(line.index, self._intx_resample)
        self._bypassed = True
        self._bump("bypass-on")
        self.trace("irq-bypass", on=True, line=line.index)
        self._bypass_hold_changed()

    def _bypass_hold_changed(self) -> None:
        """In bypass, INTx-disable and the client's INTx MASK hold the host line itself."""
        if not self._bypassed:
            return
        line = self._irqs[0].index
        if self.config.intx_disabled or self._intx_client_masked:
            self.backend.mask_irq(line)
        else:
            self.backend.unmask_irq(line)

    def _end_bypass(self) -> None:
        if not self._bypassed:
            return
        line = self._irqs[0]
        self._bypassed = False
        if line.automasked:
            getattr(self.backend, "set_irq_unmask_eventfd")(line.index, None)
        self.backend.set_irq_trigger(line.index, self._line_fds[line.index])
        if self._intx_resample is not None and self._client is not None:
            self._client.loop.add_reader(self._intx_resample, self._on_resample)
        # A line the host masked for a bypassed interrupt would stay masked: unmask it;
        # if it is still asserted it fires again, now through the engine.
        self.backend.unmask_irq(line.index)
        self._bump("bypass-off")
        self.trace("irq-bypass", on=False, line=line.index)

    # ------------------------------------------------------------ reset
    def reset(self, reason: str = "DEVICE_RESET") -> None:
        self._end_bypass()
        self._resetter.reset(reason)  # a device without reset is reported, never an error
        self.config.reset()
        if self.msix is not None:
            self.msix.reset()
        for fd in self._vector_fds.values():
            _close(fd)
        self._vector_fds.clear()
        self._apply(self.engine.reset())
        if self._intx_trigger is not None:
            self._apply(self.engine.intx_enable(True))
        self._update_intx_status()
        self._update_bypass()
        self.trace("device-reset")


def _selected(request: m.IrqSet) -> list[int]:
    """Sub-indexes a MASK/UNMASK/TRIGGER applies to (DATA_BOOL picks some)."""
    indexes = range(request.start, request.start + request.count)
    if request.data_type == vfio_abi.IRQ_SET_DATA_BOOL:
        return [i for i, flag in zip(indexes, request.data) if flag]
    return list(indexes)


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
