# SPDX-License-Identifier: BSD-3-Clause
"""The SET_IRQS checks every device gets, beside the IRQ routing that applies a request.

libvfio-user's order (protocol brief 4.5): a request that passes reaches the
device's `set_irqs` (the bridge's `irq_routing`), which then only has to apply it.
"""
from __future__ import annotations

from typing import Protocol

from vfu_platform import vfio_abi
from vfu_platform.protocol import messages as m
from vfu_platform.protocol.errors import ProtocolError


class IrqLayout(Protocol):
    """What the checks read of a device: its IRQ indexes and their vector counts."""

    def device_info(self) -> tuple[int, int, int]: ...

    def irq_info(self, index: int) -> tuple[int, int]: ...


def validate_irq_set(request: m.IrqSet, nfds: int, device: IrqLayout) -> None:
    """libvfio-user's SET_IRQS checks, in its order (protocol brief 4.5)."""
    if request.argsz < m.IrqSet.LAYOUT.size:
        raise ProtocolError.invalid(f"SET_IRQS argsz {request.argsz}")
    data_type, action = request.data_type, request.action
    if data_type == vfio_abi.IRQ_SET_DATA_BOOL and len(request.data) != request.count:
        raise ProtocolError.invalid(f"SET_IRQS DATA_BOOL with {len(request.data)} bytes for count {request.count}")
    num_irqs = device.device_info()[2]
    if request.index >= num_irqs:
        raise ProtocolError.invalid(f"SET_IRQS index {request.index} does not exist")
    if action not in (vfio_abi.IRQ_SET_ACTION_MASK, vfio_abi.IRQ_SET_ACTION_UNMASK, vfio_abi.IRQ_SET_ACTION_TRIGGER):
        raise ProtocolError.invalid(f"SET_IRQS flags {request.flags:#x}: not exactly one action")
    if data_type not in (vfio_abi.IRQ_SET_DATA_NONE, vfio_abi.IRQ_SET_DATA_BOOL, vfio_abi.IRQ_SET_DATA_EVENTFD):
        raise ProtocolError.invalid(f"SET_IRQS flags {request.flags:#x}: not exactly one data type")
    if request.flags & ~(vfio_abi.IRQ_SET_DATA_TYPE_MASK | vfio_abi.IRQ_SET_ACTION_TYPE_MASK):
        raise ProtocolError.invalid(f"SET_IRQS flags {request.flags:#x}: unknown bits")
    _flags, vectors = device.irq_info(request.index)
    disable = request.count == 0 and request.start == 0
    if not disable:
        if request.start >= vectors:
            raise ProtocolError.invalid(f"SET_IRQS start {request.start} >= {vectors} vectors")
        if request.start + request.count > vectors:
            raise ProtocolError.invalid(f"SET_IRQS [{request.start}, +{request.count}) past {vectors} vectors")
    if request.index in (vfio_abi.PCI_ERR_IRQ_INDEX, vfio_abi.PCI_REQ_IRQ_INDEX):
        if action != vfio_abi.IRQ_SET_ACTION_TRIGGER or request.count > 1:
            raise ProtocolError.invalid("SET_IRQS on ERR/REQ: only TRIGGER of one vector")
    if request.count == 0:
        if request.start != 0:
            raise ProtocolError.invalid("SET_IRQS count 0 with start != 0")
        if not (action == vfio_abi.IRQ_SET_ACTION_TRIGGER and data_type == vfio_abi.IRQ_SET_DATA_NONE):
            raise ProtocolError.invalid("SET_IRQS count 0 is only TRIGGER|DATA_NONE (disable)")
    if nfds and data_type != vfio_abi.IRQ_SET_DATA_EVENTFD:
        raise ProtocolError.invalid("SET_IRQS: fds without DATA_EVENTFD")
    if nfds and nfds != request.count:
        raise ProtocolError.invalid(f"SET_IRQS: {nfds} fds for count {request.count}")
    if data_type == vfio_abi.IRQ_SET_DATA_EVENTFD and action == vfio_abi.IRQ_SET_ACTION_MASK:
        raise ProtocolError.invalid("SET_IRQS MASK|EVENTFD is not supported")
    if data_type == vfio_abi.IRQ_SET_DATA_EVENTFD and action == vfio_abi.IRQ_SET_ACTION_UNMASK and request.count > 1:
        raise ProtocolError.invalid("SET_IRQS UNMASK|EVENTFD takes one vector")


__all__ = ["IrqLayout", "validate_irq_set"]
