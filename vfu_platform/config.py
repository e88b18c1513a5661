# SPDX-License-Identifier: BSD-3-Clause
"""The TOML configuration file (decoded and validated by msgspec).

Example:

    [device]
    model = "gpio"
    options = { lines = 4 }

    # or a device group, several platform devices behind one bridge function
    # (the same as `--device pl031,pl061 -o pl061.ngpios=8`): options per member label
    # models = ["pl031", "pl061"]
    # options = { pl061 = { ngpios = 8 } }    # or [device.options.pl061] ngpios = 8

    [bridge]
    vendor_id = 0x1234
    device_id = 0x5650
    irq_mode = "msix"          # or "intx" (default)

    [[bridge.region]]
    index = 1
    mmap = "never"             # "auto" (default), "never", "always"

    [[bridge.ack]]             # an exact-EOI acknowledge register
    irq = 0
    region = 0
    offset = 0x104
    mask = 1

    [server]
    max_data_xfer_size = 1048576
    message_timeout = 5.0      # drop a client stalled this long (seconds)
    socket_mode = "0660"       # the socket file's permissions (default 0600)
    socket_group = "kvm"       # and its group (name or gid): libvirt's QEMU can connect

Devices example: several devices in one process, each on its own socket (then no
[device] and no --socket); each keeps its own client, IRQ engine and DMA table.

    [[devices]]
    socket = "/run/vfu/edu{n}.sock"   # {n}: 0 .. count-1
    count = 4
    device = { model = "edu" }

    [[devices]]
    socket = "/run/vfu/gpio.sock"
    device = { model = "gpio", options = { lines = 4 } }
    bridge = { irq_mode = "msix" }
    trace = "/var/log/vfu/gpio.trace"   # also control = PATH

Unknown keys are errors, so a typo never passes silently.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from vfu_platform.protocol.constants import (
    DEFAULT_MAX_DATA_XFER_SIZE,
    DEFAULT_MESSAGE_TIMEOUT,
    DEFAULT_PGSIZES,
    QEMU_MAX_DATA_XFER_SIZE,
)

U16 = Annotated[int, msgspec.Meta(ge=0, le=0xFFFF)]
U32 = Annotated[int, msgspec.Meta(ge=0, le=0xFFFFFFFF)]


class DeviceSection(msgspec.Struct, forbid_unknown_fields=True):
    model: str | None = None
    #: a device group (vfu_platform.backends.group): member models in order; then
    #: `options` is a table per member label (model name, "name#k" when repeated)
    models: list[str] | None = None
    host: str | None = None
    sysfsdev: str | None = None
    options: dict[str, Any] = {}


class RegionSection(msgspec.Struct, forbid_unknown_fields=True):
    index: Annotated[int, msgspec.Meta(ge=0)]
    mmap: Literal["auto", "never", "always"] = "auto"
    bits64: bool = False
    prefetchable: bool = False


class AckSection(msgspec.Struct, forbid_unknown_fields=True):
    irq: Annotated[int, msgspec.Meta(ge=0)]
    region: Annotated[int, msgspec.Meta(ge=0)]
    offset: Annotated[int, msgspec.Meta(ge=0)]
    mask: U32 = 0xFFFFFFFF


class BridgeSection(msgspec.Struct, forbid_unknown_fields=True):
    vendor_id: U16 | None = None
    device_id: U16 | None = None
    subsystem_vendor_id: U16 | None = None
    subsystem_id: U16 | None = None
    class_code: Annotated[int, msgspec.Meta(ge=0, le=0xFFFFFF)] | None = None
    revision: Annotated[int, msgspec.Meta(ge=0, le=0xFF)] | None = None
    irq_mode: Literal["intx", "msix"] | None = None
    page_size: Annotated[int, msgspec.Meta(ge=DEFAULT_PGSIZES)] | None = None
    use_model_acks: bool = True
    region: list[RegionSection] = []
    ack: list[AckSection] = []


class ServerSection(msgspec.Struct, forbid_unknown_fields=True):
    max_data_xfer_size: Annotated[int, msgspec.Meta(ge=DEFAULT_PGSIZES, le=QEMU_MAX_DATA_XFER_SIZE)] = DEFAULT_MAX_DATA_XFER_SIZE
    write_multiple: bool = True
    #: seconds a client may stall (no VERSION, a message left incomplete, a reply not taken)
    message_timeout: Annotated[float, msgspec.Meta(gt=0, le=3600)] = DEFAULT_MESSAGE_TIMEOUT
    #: the socket file's permissions ("0660" or 0o660) and group (name or gid): --socket-mode/--socket-group
    socket_mode: str | int = 0o600
    socket_group: str | int | None = None


class ServedDeviceSection(msgspec.Struct, forbid_unknown_fields=True):
    """One of several devices a process serves, each on its own socket ([[devices]])."""

    #: the socket path; with `count` > 1 it must contain "{n}" (0 .. count-1)
    socket: str
    device: DeviceSection = msgspec.field(default_factory=DeviceSection)
    bridge: BridgeSection = msgspec.field(default_factory=BridgeSection)
    #: this many devices alike, on the sockets "{n}" names
    count: Annotated[int, msgspec.Meta(ge=1, le=4096)] = 1
    trace: str | None = None
    #: the control socket (default SOCKET.ctl); "{n}" as in `socket`
    control: str | None = None


class Config(msgspec.Struct, forbid_unknown_fields=True):
    device: DeviceSection = msgspec.field(default_factory=DeviceSection)
    bridge: BridgeSection = msgspec.field(default_factory=BridgeSection)
    server: ServerSection = msgspec.field(default_factory=ServerSection)
    #: several devices in one process, each with its own socket, client, IRQ engine and DMA table
    devices: list[ServedDeviceSection] = []


def expand_devices(config: Config) -> list[tuple[str, Config, str | None, str | None]]:
    """(socket, the config of that device alone, trace, control) for each device [[devices]] lists.

    Raises ConfigError for a socket used twice or a `count` without "{n}".
    """
    out: list[tuple[str, Config, str | None, str | None]] = []
    seen: set[str] = set()
    for k, entry in enumerate(config.devices):
        if entry.count > 1 and "{n}" not in entry.socket:
            raise ConfigError(f"devices[{k}]: count = {entry.count} needs \"{{n}}\" in socket = {entry.socket!r}")
        if entry.device.host or entry.device.sysfsdev:
            if entry.count > 1:
                raise ConfigError(f"devices[{k}]: a host device cannot be served {entry.count} times")
        for n in range(entry.count):
            socket = entry.socket.replace("{n}", str(n))
            if socket in seen:
                raise ConfigError(f"devices[{k}]: socket {socket} is listed twice")
            seen.add(socket)
            alone = Config(device=entry.device, bridge=entry.bridge, server=config.server)
            trace = entry.trace.replace("{n}", str(n)) if entry.trace else None
            control = entry.control.replace("{n}", str(n)) if entry.control else None
            out.append((socket, alone, trace, control))
    return out


class ConfigError(Exception):
    """A configuration file that cannot be used; the message is one line."""


def load_config(path: str) -> Config:
    try:
        with open(path, "rb") as stream:
            raw = stream.read()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    try:
        return msgspec.toml.decode(raw, type=Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"config {path}: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ConfigError(f"config {path}: not valid TOML: {str(exc).splitlines()[0]}") from None
