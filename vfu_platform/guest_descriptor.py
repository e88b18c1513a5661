# SPDX-License-Identifier: BSD-3-Clause
"""The guest descriptor (docs/guest-descriptor.md, version 1): a pure codec.

`encode()` turns resolved device records (BAR, offset and size per region; line,
vector and trigger per IRQ; properties) into the bytes the bridge serves at
`DESCRIPTOR_OFFSET` of its IRQ page BAR; `decode()` turns such bytes back into
records, checking everything the spec says makes a descriptor invalid, and raises
`DescriptorError` (one line saying where and why) for anything else it cannot use.
Records of unknown types, and properties of unknown types, are skipped.

A leaf module: it imports nothing from the project, so the bridge, the tests and
any tool reading a guest's BAR dump can share it.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final, TypeAlias

MAGIC: Final = 0x44554656  # "VFUD" as bytes 56 46 55 44
VERSION: Final = 1
HEADER_LEN: Final = 16
#: The descriptor lives in the second 4 KiB of the IRQ page BAR and may fill it.
MAX_LENGTH: Final = 0x1000
DESCRIPTOR_OFFSET: Final = 0x1000

# Capability (PCI vendor-specific, ID 0x09) layout.
CAP_ID_VENDOR: Final = 0x09
CAP_LEN: Final = 20
CAP_TYPE_DESCRIPTOR: Final = 0x01

IRQ_MODE_INTX: Final = 0
IRQ_MODE_MSIX: Final = 1
NO_VECTOR: Final = 0xFFFFFFFF

# Record types.
T_DEVICE: Final = 0x0001
T_NAME: Final = 0x0010
T_BIND: Final = 0x0011
T_AMBA_ID: Final = 0x0012
T_COMPATIBLE: Final = 0x0013
T_REGION: Final = 0x0014
T_IRQ: Final = 0x0015
T_PROPERTY: Final = 0x0016

BIND_AMBA: Final = 1
BIND_PLATFORM_NAME: Final = 2
BIND_DT_COMPATIBLE: Final = 3
BIND_KINDS: Final = frozenset({BIND_AMBA, BIND_PLATFORM_NAME, BIND_DT_COMPATIBLE})
TRIGGERS: Final = frozenset({1, 2, 3, 4, 8})

REGION_MMAPPED: Final = 0x1
REGION_TRAPPED: Final = 0x2

PROP_U32: Final = 1
PROP_STRINGS: Final = 2
PROP_FLAG: Final = 3
PROP_U64: Final = 4

_HEADER = struct.Struct("<IHHIHH")
_RECORD = struct.Struct("<HH")
_REGION = struct.Struct("<IIQQ")
_IRQ = struct.Struct("<III")
_PROP = struct.Struct("<HH")
_U32 = struct.Struct("<I")
_U16_MAX = 0xFFFF
_U32_MAX = 0xFFFF_FFFF
_U64_MAX = 0xFFFF_FFFF_FFFF_FFFF
_BAR_SLOTS = 6

PropertyValue: TypeAlias = "tuple[int, ...] | tuple[str, ...] | bool"


class DescriptorError(ValueError):
    """The descriptor is invalid (decode) or cannot be encoded; the message is one line."""


@dataclass(frozen=True, slots=True)
class RegionRecord:
    bar: int
    offset: int
    size: int
    flags: int = 0
    name: str = ""


@dataclass(frozen=True, slots=True)
class IrqRecord:
    line: int
    vector: int
    trigger: int
    name: str = ""


@dataclass(frozen=True, slots=True)
class PropertyRecord:
    """`prop_type` PROP_U32 / PROP_U64: a tuple of ints; PROP_STRINGS: a tuple of str;
    PROP_FLAG: True (a false flag is not sent)."""

    name: str
    prop_type: int
    value: PropertyValue


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    name: str
    bind: int
    regions: tuple[RegionRecord, ...]
    irqs: tuple[IrqRecord, ...] = ()
    amba_id: int | None = None
    compatible: tuple[str, ...] = ()
    properties: tuple[PropertyRecord, ...] = ()

    def property(self, name: str) -> PropertyRecord | None:
        for prop in self.properties:
            if prop.name == name:
                return prop
        return None


@dataclass(frozen=True, slots=True)
class Descriptor:
    irq_mode: int
    devices: tuple[DeviceRecord, ...]
    version: int = VERSION


@dataclass(frozen=True, slots=True)
class Capability:
    """The vendor-specific capability's fields after cap_id/cap_next."""

    bar: int
    offset: int
    length: int
    version: int = VERSION


# ------------------------------------------------------------------ capability


def encode_capability(cap: Capability, next_pointer: int = 0) -> bytes:
    """The 20 capability bytes (cap_next = `next_pointer`)."""
    return struct.pack(
        "<BBBBIBBHII", CAP_ID_VENDOR, next_pointer, CAP_LEN, CAP_TYPE_DESCRIPTOR, MAGIC,
        cap.bar, cap.version, 0, cap.offset, cap.length,
    )


def decode_capability(data: bytes) -> Capability:
    """Parse capability bytes (from cap_id on); DescriptorError if it is not ours."""
    if len(data) < CAP_LEN:
        raise DescriptorError(f"capability: {len(data)} bytes, need {CAP_LEN}")
    cap_id, _next, cap_len, cfg_type, signature, bar, version, _r, offset, length = struct.unpack_from(
        "<BBBBIBBHII", data)
    if cap_id != CAP_ID_VENDOR or cfg_type != CAP_TYPE_DESCRIPTOR or signature != MAGIC:
        raise DescriptorError(
            f"capability: id {cap_id:#x} type {cfg_type:#x} signature {signature:#x} is not a guest descriptor")
    if cap_len < CAP_LEN:
        raise DescriptorError(f"capability: cap_len {cap_len} < {CAP_LEN}")
    return Capability(bar=bar, offset=offset, length=length, version=version)


# ------------------------------------------------------------------ encoding


def encode(devices: tuple[DeviceRecord, ...] | list[DeviceRecord], irq_mode: int) -> bytes:
    """The descriptor for `devices`; DescriptorError if a field does not fit the format."""
    if irq_mode not in (IRQ_MODE_INTX, IRQ_MODE_MSIX):
        raise DescriptorError(f"irq_mode {irq_mode} is not 0 (INTx) or 1 (MSI-X)")
    if len(devices) > _U16_MAX:
        raise DescriptorError(f"{len(devices)} devices do not fit in device_count")
    body = b"".join(_record(T_DEVICE, _device(d)) for d in devices)
    total = HEADER_LEN + len(body)
    if total > MAX_LENGTH:
        raise DescriptorError(f"the descriptor needs {total} bytes; at most {MAX_LENGTH} fit in the IRQ page BAR")
    return _HEADER.pack(MAGIC, VERSION, HEADER_LEN, total, len(devices), irq_mode) + body


def _device(d: DeviceRecord) -> bytes:
    where = f"device {d.name!r}"
    if d.bind not in BIND_KINDS:
        raise DescriptorError(f"{where}: bind kind {d.bind} is not 1 (AMBA), 2 (PLATFORM_NAME) or 3 (DT_COMPATIBLE)")
    if not d.regions:
        raise DescriptorError(f"{where}: a device needs at least one region")
    if d.bind == BIND_AMBA and d.amba_id is None:
        raise DescriptorError(f"{where}: an AMBA device needs its peripheral ID")
    parts = [_record(T_NAME, _cstring(d.name, where)), _record(T_BIND, _U32.pack(d.bind))]
    if d.amba_id is not None:
        parts.append(_record(T_AMBA_ID, _U32.pack(_fit(d.amba_id, _U32_MAX, f"{where}: AMBA ID"))))
    parts += [_record(T_COMPATIBLE, _cstring(c, where)) for c in d.compatible]
    for r in d.regions:
        _check_region(r.bar, r.offset, r.size, f"{where}: region {r.name!r}", DescriptorError)
        value = _REGION.pack(r.bar, _fit(r.flags, _U32_MAX, f"{where}: region flags"), r.offset, r.size)
        parts.append(_record(T_REGION, value + _cstring(r.name, where)))
    for q in d.irqs:
        if q.trigger not in TRIGGERS:
            raise DescriptorError(f"{where}: IRQ {q.line} trigger {q.trigger} is not 1, 2, 3, 4 or 8")
        value = _IRQ.pack(_fit(q.line, _U32_MAX, f"{where}: IRQ line"),
                          _fit(q.vector, _U32_MAX, f"{where}: IRQ vector"), q.trigger)
        parts.append(_record(T_IRQ, value + _cstring(q.name, where)))
    parts += [_record(T_PROPERTY, _property(p, where)) for p in d.properties]
    return b"".join(parts)


def _property(p: PropertyRecord, where: str) -> bytes:
    where = f"{where}: property {p.name!r}"
    name = _cstring(p.name, where)
    if p.name == "":
        raise DescriptorError(f"{where}: empty name")
    value = p.value
    if p.prop_type in (PROP_U32, PROP_U64):
        limit, fmt = (_U32_MAX, "I") if p.prop_type == PROP_U32 else (_U64_MAX, "Q")
        if not isinstance(value, tuple) or not value or not all(isinstance(v, int) and not isinstance(v, bool)
                                                                 for v in value):
            raise DescriptorError(f"{where}: needs a non-empty tuple of ints")
        raw = struct.pack(f"<{len(value)}{fmt}", *(_fit(v, limit, where) for v in value))  # type: ignore[arg-type]
    elif p.prop_type == PROP_STRINGS:
        if not isinstance(value, tuple) or not value or not all(isinstance(v, str) for v in value):
            raise DescriptorError(f"{where}: needs a non-empty tuple of strings")
        raw = b"".join(_cstring(v, where) for v in value)  # type: ignore[arg-type]
    elif p.prop_type == PROP_FLAG:
        if value is not True:
            raise DescriptorError(f"{where}: a flag is True (a false flag is not sent)")
        raw = b""
    else:
        raise DescriptorError(f"{where}: unknown property type {p.prop_type}")
    head = _PROP.pack(p.prop_type, len(name)) + name
    return head + bytes(_pad(len(head))) + raw


def _record(kind: int, value: bytes) -> bytes:
    if len(value) > _U16_MAX:
        raise DescriptorError(f"record type {kind:#06x}: {len(value)} bytes do not fit in its length")
    return _RECORD.pack(kind, len(value)) + value + bytes(_pad(len(value)))


def _cstring(text: str, where: str) -> bytes:
    if "\0" in text:
        raise DescriptorError(f"{where}: string {text!r} contains a NUL")
    return text.encode("utf-8") + b"\0"


def _fit(value: int, limit: int, where: str) -> int:
    if not 0 <= value <= limit:
        raise DescriptorError(f"{where}: {value:#x} does not fit in {limit.bit_length()} bits")
    return value


def _check_region(bar: int, offset: int, size: int, where: str, error: type[Exception]) -> None:
    if not 0 <= bar < _BAR_SLOTS:
        raise error(f"{where}: BAR {bar} not in 0..{_BAR_SLOTS - 1}")
    if size <= 0 or offset < 0 or offset + size > _U64_MAX + 1:
        raise error(f"{where}: offset {offset:#x} size {size:#x} is not a non-empty 64-bit range")


def _pad(length: int) -> int:
    return -length % 4


# ------------------------------------------------------------------ decoding


def decode(data: bytes, length: int | None = None, irq_page_bar: int | None = None) -> Descriptor:
    """Decode a descriptor read from the BAR; `length` is the capability's (default len(data)),
    `irq_page_bar` its `bar` (a REGION there is invalid; None: not checked).

    Raises DescriptorError for every invalid descriptor: never anything else.
    """
    data = bytes(data)
    limit = len(data) if length is None else length
    if limit > len(data):
        raise DescriptorError(f"capability length {limit} but only {len(data)} bytes were read")
    if limit < HEADER_LEN:
        raise DescriptorError(f"{limit} bytes: too short for the {HEADER_LEN}-byte header")
    magic, version, header_len, total_len, device_count, irq_mode = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise DescriptorError(f"header: magic {magic:#010x}, expected {MAGIC:#010x} (VFUD)")
    if version != VERSION:
        raise DescriptorError(f"header: version {version}; this reader knows version {VERSION}")
    if total_len > limit:
        raise DescriptorError(f"header: total_len {total_len} is larger than the capability's length {limit}")
    if total_len > MAX_LENGTH:
        raise DescriptorError(f"header: total_len {total_len} exceeds {MAX_LENGTH}")
    if header_len < HEADER_LEN or header_len % 4 or header_len > total_len:
        raise DescriptorError(f"header: header_len {header_len} not a multiple of 4 in {HEADER_LEN}..total_len")
    if irq_mode not in (IRQ_MODE_INTX, IRQ_MODE_MSIX):
        raise DescriptorError(f"header: irq_mode {irq_mode} is not 0 (INTx) or 1 (MSI-X)")
    devices = []
    for kind, start, end in _records(data, header_len, total_len, "descriptor"):
        if kind == T_DEVICE:
            devices.append(_decode_device(data, start, end, len(devices), irq_page_bar))
    if len(devices) != device_count:
        raise DescriptorError(f"header: device_count {device_count} but {len(devices)} DEVICE records")
    return Descriptor(irq_mode=irq_mode, devices=tuple(devices), version=version)


def _records(data: bytes, start: int, end: int, where: str) -> list[tuple[int, int, int]]:
    """(type, value start, value end) of each record in data[start:end]."""
    out = []
    offset = start
    while offset < end:
        if end - offset < _RECORD.size:
            raise DescriptorError(f"{where}: record header at {offset:#x} runs past its container (ends {end:#x})")
        kind, size = _RECORD.unpack_from(data, offset)
        value = offset + _RECORD.size
        if value + size > end:
            raise DescriptorError(
                f"{where}: record type {kind:#06x} at {offset:#x} ({size} bytes) runs past its container")
        out.append((kind, value, value + size))
        offset = value + size + _pad(size)
    return out


def _decode_device(data: bytes, start: int, end: int, number: int, irq_page_bar: int | None) -> DeviceRecord:
    where = f"device {number}"
    names: list[str] = []
    binds: list[int] = []
    amba: list[int] = []
    compatible: list[str] = []
    regions: list[RegionRecord] = []
    irqs: list[IrqRecord] = []
    properties: list[PropertyRecord] = []
    for kind, vstart, vend in _records(data, start, end, where):
        value = data[vstart:vend]
        if kind == T_NAME:
            names.append(_string(value, f"{where}: NAME"))
            where = f"device {number} ({names[0]!r})"
        elif kind == T_BIND:
            binds.append(_u32(value, f"{where}: BIND"))
        elif kind == T_AMBA_ID:
            amba.append(_u32(value, f"{where}: AMBA_ID"))
        elif kind == T_COMPATIBLE:
            compatible.append(_string(value, f"{where}: COMPATIBLE"))
        elif kind == T_REGION:
            if len(value) < _REGION.size + 1:
                raise DescriptorError(f"{where}: REGION of {len(value)} bytes, need {_REGION.size + 1}")
            bar, flags, offset, size = _REGION.unpack_from(value)
            name = _string(value[_REGION.size:], f"{where}: REGION name")
            _check_region(bar, offset, size, f"{where}: REGION {name!r}", DescriptorError)
            if bar == irq_page_bar:
                raise DescriptorError(f"{where}: REGION {name!r} in BAR {bar}, the IRQ page's")
            regions.append(RegionRecord(bar, offset, size, flags, name))
        elif kind == T_IRQ:
            if len(value) < _IRQ.size + 1:
                raise DescriptorError(f"{where}: IRQ of {len(value)} bytes, need {_IRQ.size + 1}")
            line, vector, trigger = _IRQ.unpack_from(value)
            name = _string(value[_IRQ.size:], f"{where}: IRQ name")
            if trigger not in TRIGGERS:
                raise DescriptorError(f"{where}: IRQ line {line} trigger {trigger} is not 1, 2, 3, 4 or 8")
            irqs.append(IrqRecord(line, vector, trigger, name))
        elif kind == T_PROPERTY:
            prop = _decode_property(value, where)
            if prop is not None:
                properties.append(prop)
        # any other type: skipped (how version 1 grows)
    for what, found in (("NAME", names), ("BIND", binds)):
        if len(found) != 1:
            raise DescriptorError(f"{where}: {len(found)} {what} records, need exactly 1")
    if len(amba) > 1:
        raise DescriptorError(f"{where}: {len(amba)} AMBA_ID records, at most 1")
    bind = binds[0]
    if bind not in BIND_KINDS:
        raise DescriptorError(f"{where}: BIND kind {bind} is not 1 (AMBA), 2 (PLATFORM_NAME) or 3 (DT_COMPATIBLE)")
    if bind == BIND_AMBA and not amba:
        raise DescriptorError(f"{where}: BIND AMBA without an AMBA_ID record")
    if not regions:
        raise DescriptorError(f"{where}: no REGION record (a device needs at least one)")
    return DeviceRecord(
        name=names[0], bind=bind, regions=tuple(regions), irqs=tuple(irqs),
        amba_id=amba[0] if amba else None, compatible=tuple(compatible), properties=tuple(properties),
    )


def _decode_property(value: bytes, where: str) -> PropertyRecord | None:
    if len(value) < _PROP.size:
        raise DescriptorError(f"{where}: PROPERTY of {len(value)} bytes, need {_PROP.size}")
    prop_type, name_len = _PROP.unpack_from(value)
    head = _PROP.size + name_len
    if name_len < 1 or head > len(value):
        raise DescriptorError(f"{where}: PROPERTY name_len {name_len} does not fit its {len(value)}-byte record")
    name = _string(value[_PROP.size:head], f"{where}: PROPERTY name")
    if not name:
        raise DescriptorError(f"{where}: PROPERTY with an empty name")
    where = f"{where}: property {name!r}"
    start = head + _pad(head)
    if start > len(value):
        raise DescriptorError(f"{where}: the padding after the name runs past the record")
    raw = value[start:]
    if prop_type in (PROP_U32, PROP_U64):
        width = 4 if prop_type == PROP_U32 else 8
        if not raw or len(raw) % width:
            raise DescriptorError(f"{where}: {len(raw)} value bytes is not a non-empty array of {width}-byte numbers")
        return PropertyRecord(name, prop_type, struct.unpack(f"<{len(raw) // width}{'I' if width == 4 else 'Q'}", raw))
    if prop_type == PROP_STRINGS:
        if not raw or raw[-1] != 0:
            raise DescriptorError(f"{where}: string array without its terminating NUL")
        try:
            return PropertyRecord(name, prop_type, tuple(raw[:-1].decode("utf-8").split("\0")))
        except UnicodeDecodeError:
            raise DescriptorError(f"{where}: strings are not UTF-8") from None
    if prop_type == PROP_FLAG:
        if raw:
            raise DescriptorError(f"{where}: a flag has an empty value, not {len(raw)} bytes")
        return PropertyRecord(name, prop_type, True)
    return None  # an unknown property type: skipped, like an unknown record type


def _string(value: bytes, where: str) -> str:
    if not value or value[-1] != 0:
        raise DescriptorError(f"{where}: string without its terminating NUL")
    if 0 in value[:-1]:
        raise DescriptorError(f"{where}: string with a NUL before its end")
    try:
        return value[:-1].decode("utf-8")
    except UnicodeDecodeError:
        raise DescriptorError(f"{where}: string is not UTF-8") from None


def _u32(value: bytes, where: str) -> int:
    if len(value) != 4:
        raise DescriptorError(f"{where}: {len(value)} bytes, expected a u32")
    return _U32.unpack(value)[0]
