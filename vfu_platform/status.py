# SPDX-License-Identifier: BSD-3-Clause
"""What a running server is doing, as one JSON-able dict (`vfu-platform status`).

Read-only: it looks at the listener (`Server.session`, `Server.sessions_served`,
`Server.session_started`), the session (`closed`, `counters`, `dma`) and the
served device (a `PciBridge`'s IRQ engine and PCI ids, or a passed-through host
function's config header), and changes nothing: no region is read through the
bridge (a trapped access is an EOI source for the IRQ engine).

`format_status` turns the dict into the text `vfu-platform status` prints.
"""
from __future__ import annotations

import os
import time
from typing import Any

from vfu_platform import vfio_abi
from vfu_platform.bridge.device import PciBridge
from vfu_platform.bridge.pci_passthrough import PciPassthrough
from vfu_platform.server.listener import Server

#: bumped when a field changes meaning (fields may be added without a bump)
STATUS_VERSION = 1


def collect_status(server: Server, name: str, kind: str) -> dict[str, Any]:
    """The state of `server`, which serves device `name` (`kind`: "model" or "host")."""
    session = server.session
    connected = session is not None and not session.closed
    started = getattr(server, "session_started", None)
    client: dict[str, Any] = {
        "connected": connected,
        "since": _iso(started) if connected and started else None,
        "connected_seconds": round(time.time() - started, 3) if connected and started else None,
        "sessions_served": server.sessions_served,
        "refused": server.refused,
    }
    counters = {key: session.counters[key] for key in session.counters} if session is not None else {}
    dma_maps = len(session.dma) if connected and session is not None else 0
    return {
        "version": STATUS_VERSION,
        "pid": os.getpid(),
        "socket": server.path,
        "client": client,
        "counters": counters,
        "counters_of": None if session is None else ("current client" if connected else "last client"),
        "dma": {"maps": dma_maps},
        "irq": _irq_state(server.device),
        "device": _device_state(server.device, name, kind),
    }


def _iso(stamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(stamp))


def _irq_state(device: object) -> dict[str, Any] | None:
    """The IRQ engine's state (a bridge), or None (a passed-through function has no engine)."""
    if not isinstance(device, PciBridge):
        return None
    engine = device.engine
    return {
        "route": engine.route.name.lower(),
        "lines": len(engine.specs),
        "active": engine.active,
        "pending": list(engine.pending),
        "masked": sorted(engine.device_masked),
        "intx_asserted": engine.intx_asserted,
        "exact_eoi": engine.exact_eoi,
        "signals": engine.signals,
        "eois": engine.eois,
        "coalesced": engine.coalesced,
    }


def _device_state(device: object, name: str, kind: str) -> dict[str, Any]:
    state: dict[str, Any] = {"name": name, "kind": kind}
    if isinstance(device, PciBridge):
        ids = device.options.ids
        state.update(served_as="bridge", vendor=ids.vendor, device=ids.device, class_code=ids.class_code,
                     subsystem_vendor=ids.subsystem_vendor, subsystem_id=ids.subsystem_id)
    elif isinstance(device, PciPassthrough):
        header = device.backend.read(vfio_abi.PCI_CONFIG_REGION_INDEX, 0, 12)
        state.update(served_as="pci-passthrough",
                     vendor=int.from_bytes(header[0:2], "little"),
                     device=int.from_bytes(header[2:4], "little"),
                     class_code=int.from_bytes(header[9:12], "little"))
    return state


def format_status(status: dict[str, Any]) -> str:
    """The readable form: one `key: value` line per fact, counters indented."""
    client, dev, irq = status["client"], status["device"], status["irq"]
    lines = [f"socket:          {status['socket']} (pid {status['pid']})"]
    ids = ""
    if "vendor" in dev:
        ids = f" {dev['vendor']:04x}:{dev['device']:04x} class {dev['class_code']:06x}"
    lines.append(f"device:          {dev['name']} ({dev['kind']}{', ' + dev['served_as'] if 'served_as' in dev else ''}){ids}")
    if client["connected"]:
        since = f" since {client['since']} ({client['connected_seconds']:.0f} s)" if client["since"] else ""
        lines.append(f"client:          yes{since}")
    else:
        lines.append("client:          no")
    lines.append(f"sessions served: {client['sessions_served']} (refused {client['refused']})")
    lines.append(f"dma maps:        {status['dma']['maps']}")
    if irq is None:
        lines.append("irq engine:      none (a PCI function passed through)")
    else:
        active = "none" if irq["active"] is None else str(irq["active"])
        lines.append(f"irq engine:      route {irq['route']}, {irq['lines']} lines, active {active}, "
                     f"pending {_list(irq['pending'])}, masked {_list(irq['masked'])}")
        lines.append(f"                 signals {irq['signals']}, eois {irq['eois']}, coalesced {irq['coalesced']}"
                     f"{', exact EOI' if irq['exact_eoi'] else ''}")
    of = status["counters_of"]
    lines.append(f"counters:        {'none' if of is None else '(' + of + ')'}")
    for key in sorted(status["counters"]):
        lines.append(f"  {key:<30} {status['counters'][key]}")
    return "\n".join(lines)


def _list(values: list[int]) -> str:
    return "[" + " ".join(str(v) for v in values) + "]"
