# SPDX-License-Identifier: BSD-3-Clause
"""vfio-user message payloads: one class per payload layout, packing both ways.

Offsets are relative to the end of the 16-byte header.  `unpack` validates only
what the layout itself demands (lengths, the NUL of VERSION, the cap chain);
checks that need device knowledge (index ranges, sizes) live in the server.
Every failure is a `ProtocolError` with the errno libvfio-user answers with.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar, Union

from vfu_platform import vfio_abi
from vfu_platform.protocol.caps import Capabilities, decode_capabilities, encode_capabilities
from vfu_platform.protocol.constants import WRITE_MULTI_ENTRY_DATA, WRITE_MULTI_MAX_ENTRIES
from vfu_platform.protocol.errors import ProtocolError

Buffer = Union[bytes, bytearray, memoryview]

VERSION_HEAD = struct.Struct("<HH")
DMA_MAP = struct.Struct("<IIQQQ")
DMA_UNMAP = struct.Struct("<IIQQ")
DIRTY_BITMAP = struct.Struct("<QQ")
REGION_IO_FDS = struct.Struct("<IIII")
IO_FD_ENTRY = struct.Struct("<QQIIIIQ")
REGION_ACCESS = struct.Struct("<QII")
DMA_ACCESS = struct.Struct("<QQ")
WRITE_MULTI_COUNT = struct.Struct("<Q")
WRITE_MULTI_ENTRY = struct.Struct(f"<QII{WRITE_MULTI_ENTRY_DATA}s")
MIG_DATA = struct.Struct("<II")


def _need(body: Buffer, size: int, what: str) -> None:
    if len(body) < size:
        raise ProtocolError.invalid(f"{what}: payload {len(body)} bytes, need {size}")


# --------------------------------------------------------------------- VERSION
@dataclass(slots=True)
class Version:
    major: int
    minor: int
    caps: Capabilities | None = None  # None: no JSON at all

    def pack(self) -> bytes:
        head = VERSION_HEAD.pack(self.major, self.minor)
        if self.caps is None:
            return head
        return head + encode_capabilities(self.caps) + b"\0"

    @classmethod
    def unpack(cls, body: Buffer) -> "Version":
        _need(body, VERSION_HEAD.size, "VERSION")
        major, minor = VERSION_HEAD.unpack_from(body)
        raw = bytes(body[VERSION_HEAD.size :])
        if not raw:
            return cls(major, minor, None)
        if raw[-1] != 0:
            raise ProtocolError.invalid("VERSION JSON is not NUL-terminated")
        return cls(major, minor, decode_capabilities(raw[:-1]))


# --------------------------------------------------------------------- DMA map
@dataclass(slots=True)
class DmaMap:
    argsz: int
    flags: int
    offset: int
    address: int
    size: int

    def pack(self) -> bytes:
        return DMA_MAP.pack(self.argsz, self.flags, self.offset, self.address, self.size)

    @classmethod
    def unpack(cls, body: Buffer) -> "DmaMap":
        _need(body, DMA_MAP.size, "DMA_MAP")
        return cls(*DMA_MAP.unpack_from(body))


@dataclass(slots=True)
class DmaUnmap:
    argsz: int
    flags: int
    address: int
    size: int
    bitmap_pgsize: int | None = None  # only with GET_DIRTY_BITMAP
    bitmap_size: int | None = None
    bitmap: bytes = b""

    def pack(self) -> bytes:
        out = DMA_UNMAP.pack(self.argsz, self.flags, self.address, self.size)
        if self.bitmap_pgsize is not None:
            out += DIRTY_BITMAP.pack(self.bitmap_pgsize, self.bitmap_size or 0) + self.bitmap
        return out

    @classmethod
    def unpack(cls, body: Buffer) -> "DmaUnmap":
        _need(body, DMA_UNMAP.size, "DMA_UNMAP")
        argsz, flags, address, size = DMA_UNMAP.unpack_from(body)
        msg = cls(argsz, flags, address, size)
        if flags & vfio_abi.DMA_UNMAP_FLAG_GET_DIRTY_BITMAP:
            _need(body, DMA_UNMAP.size + DIRTY_BITMAP.size, "DMA_UNMAP with dirty bitmap")
            msg.bitmap_pgsize, msg.bitmap_size = DIRTY_BITMAP.unpack_from(body, DMA_UNMAP.size)
            msg.bitmap = bytes(body[DMA_UNMAP.size + DIRTY_BITMAP.size :])
        return msg


# --------------------------------------------------------------------- device info
@dataclass(slots=True)
class DeviceInfo:
    argsz: int
    flags: int = 0
    num_regions: int = 0
    num_irqs: int = 0

    LAYOUT: ClassVar[struct.Struct] = vfio_abi.DEVICE_INFO

    def pack(self) -> bytes:
        return self.LAYOUT.pack(self.argsz, self.flags, self.num_regions, self.num_irqs)

    @classmethod
    def unpack(cls, body: Buffer) -> "DeviceInfo":
        _need(body, cls.LAYOUT.size, "DEVICE_GET_INFO")
        return cls(*cls.LAYOUT.unpack_from(body))


# --------------------------------------------------------------------- region info
@dataclass(frozen=True, slots=True)
class SparseMmapCap:
    areas: tuple[tuple[int, int], ...]

    ID: ClassVar[int] = vfio_abi.REGION_CAP_SPARSE_MMAP
    VERSION: ClassVar[int] = 1

    def body(self) -> bytes:
        head = struct.pack("<II", len(self.areas), 0)
        return head + b"".join(vfio_abi.SPARSE_MMAP_AREA.pack(o, s) for o, s in self.areas)


@dataclass(frozen=True, slots=True)
class TypeCap:
    type: int
    subtype: int

    ID: ClassVar[int] = vfio_abi.REGION_CAP_TYPE
    VERSION: ClassVar[int] = 1

    def body(self) -> bytes:
        return vfio_abi.CAP_TYPE_BODY.pack(self.type, self.subtype)


@dataclass(frozen=True, slots=True)
class MsixMappableCap:
    ID: ClassVar[int] = vfio_abi.REGION_CAP_MSIX_MAPPABLE
    VERSION: ClassVar[int] = 1

    def body(self) -> bytes:
        return b""


@dataclass(frozen=True, slots=True)
class UnknownCap:
    id: int
    version: int
    data: bytes

    def body(self) -> bytes:
        return self.data


RegionCap = Union[SparseMmapCap, TypeCap, MsixMappableCap, UnknownCap]


def encode_caps(caps: tuple[RegionCap, ...], base: int) -> bytes:
    """A cap chain placed at `base` bytes from the start of vfio_region_info."""
    out = bytearray()
    for i, cap in enumerate(caps):
        body = cap.body()
        cap_id = cap.id if isinstance(cap, UnknownCap) else cap.ID
        version = cap.version if isinstance(cap, UnknownCap) else cap.VERSION
        size = vfio_abi.CAP_HEADER.size + len(body)
        size += -size % 8  # keep every cap 8-byte aligned, as the kernel does
        nxt = base + len(out) + size if i + 1 < len(caps) else 0
        out += vfio_abi.CAP_HEADER.pack(cap_id, version, nxt) + body
        out += b"\0" * (size - vfio_abi.CAP_HEADER.size - len(body))
    return bytes(out)


def decode_caps(info: Buffer, first: int) -> tuple[RegionCap, ...]:
    """Walk the cap chain of a vfio_region_info image (offsets from its start)."""
    caps: list[RegionCap] = []
    seen: set[int] = set()
    offset = first
    head_size = vfio_abi.CAP_HEADER.size
    while offset:
        if offset in seen or offset < vfio_abi.REGION_INFO.size or offset + head_size > len(info):
            raise ProtocolError.invalid(f"bad region cap offset {offset}")
        seen.add(offset)
        cap_id, version, nxt = vfio_abi.CAP_HEADER.unpack_from(info, offset)
        body_end = nxt if nxt else len(info)
        if body_end < offset + head_size or body_end > len(info):
            raise ProtocolError.invalid(f"bad region cap next {nxt}")
        body = bytes(info[offset + head_size : body_end])
        if cap_id == vfio_abi.REGION_CAP_SPARSE_MMAP:
            if len(body) < 8:
                raise ProtocolError.invalid("short sparse mmap cap")
            (count,) = struct.unpack_from("<I", body)
            area = vfio_abi.SPARSE_MMAP_AREA
            if 8 + count * area.size > len(body):
                raise ProtocolError.invalid("sparse mmap cap areas past its end")
            caps.append(SparseMmapCap(tuple(area.unpack_from(body, 8 + i * area.size) for i in range(count))))
        elif cap_id == vfio_abi.REGION_CAP_TYPE and len(body) >= vfio_abi.CAP_TYPE_BODY.size:
            caps.append(TypeCap(*vfio_abi.CAP_TYPE_BODY.unpack_from(body)))
        elif cap_id == vfio_abi.REGION_CAP_MSIX_MAPPABLE:
            caps.append(MsixMappableCap())
        else:
            caps.append(UnknownCap(cap_id, version, body))
        offset = nxt
    return tuple(caps)


@dataclass(slots=True)
class RegionInfo:
    argsz: int
    flags: int = 0
    index: int = 0
    cap_offset: int = 0
    size: int = 0
    offset: int = 0
    caps: tuple[RegionCap, ...] = ()

    LAYOUT: ClassVar[struct.Struct] = vfio_abi.REGION_INFO

    def pack(self) -> bytes:
        """The request form, or a reply that fits: caps chained right after the struct."""
        caps = encode_caps(self.caps, self.LAYOUT.size) if self.caps else b""
        flags = self.flags | (vfio_abi.REGION_FLAG_CAPS if caps else 0)
        cap_offset = self.LAYOUT.size if caps else 0
        return self.LAYOUT.pack(self.argsz, flags, self.index, cap_offset, self.size, self.offset) + caps

    def pack_reply(self, client_argsz: int) -> tuple[bytes, bool]:
        """Reply within the client's argsz: (payload, caps_included).

        If the caps do not fit, the reply is the bare struct with argsz = the
        size needed, no CAPS flag and cap_offset 0, and the client asks again
        (QEMU and libvfio-user both work this way).
        """
        caps = encode_caps(self.caps, self.LAYOUT.size) if self.caps else b""
        needed = self.LAYOUT.size + len(caps)
        if needed > client_argsz:
            return self.LAYOUT.pack(needed, self.flags & ~vfio_abi.REGION_FLAG_CAPS, self.index, 0,
                                    self.size, self.offset), False
        flags = self.flags | (vfio_abi.REGION_FLAG_CAPS if caps else 0)
        cap_offset = self.LAYOUT.size if caps else 0
        return self.LAYOUT.pack(needed, flags, self.index, cap_offset, self.size, self.offset) + caps, True

    @classmethod
    def unpack(cls, body: Buffer) -> "RegionInfo":
        _need(body, cls.LAYOUT.size, "DEVICE_GET_REGION_INFO")
        argsz, flags, index, cap_offset, size, offset = cls.LAYOUT.unpack_from(body)
        caps: tuple[RegionCap, ...] = ()
        if flags & vfio_abi.REGION_FLAG_CAPS and cap_offset:
            caps = decode_caps(body, cap_offset)
        return cls(argsz, flags, index, cap_offset, size, offset, caps)

    @property
    def sparse_areas(self) -> tuple[tuple[int, int], ...] | None:
        for cap in self.caps:
            if isinstance(cap, SparseMmapCap):
                return cap.areas
        return None


# --------------------------------------------------------------------- region io fds
@dataclass(frozen=True, slots=True)
class IoFdEntry:
    offset: int
    size: int
    fd_index: int
    type: int
    flags: int
    datamatch: int

    def pack(self) -> bytes:
        return IO_FD_ENTRY.pack(self.offset, self.size, self.fd_index, self.type, self.flags, 0, self.datamatch)


@dataclass(slots=True)
class RegionIoFds:
    argsz: int
    flags: int = 0
    index: int = 0
    count: int = 0
    entries: tuple[IoFdEntry, ...] = ()

    def pack(self) -> bytes:
        return REGION_IO_FDS.pack(self.argsz, self.flags, self.index, self.count) + b"".join(
            e.pack() for e in self.entries
        )

    @classmethod
    def unpack(cls, body: Buffer) -> "RegionIoFds":
        _need(body, REGION_IO_FDS.size, "DEVICE_GET_REGION_IO_FDS")
        argsz, flags, index, count = REGION_IO_FDS.unpack_from(body)
        entries = []
        for pos in range(REGION_IO_FDS.size, len(body) - IO_FD_ENTRY.size + 1, IO_FD_ENTRY.size):
            o, s, fdi, t, f, _pad, dm = IO_FD_ENTRY.unpack_from(body, pos)
            entries.append(IoFdEntry(o, s, fdi, t, f, dm))
        return cls(argsz, flags, index, count, tuple(entries))


# --------------------------------------------------------------------- irq info / set
@dataclass(slots=True)
class IrqInfo:
    argsz: int
    flags: int = 0
    index: int = 0
    count: int = 0

    LAYOUT: ClassVar[struct.Struct] = vfio_abi.IRQ_INFO

    def pack(self) -> bytes:
        return self.LAYOUT.pack(self.argsz, self.flags, self.index, self.count)

    @classmethod
    def unpack(cls, body: Buffer) -> "IrqInfo":
        _need(body, cls.LAYOUT.size, "DEVICE_GET_IRQ_INFO")
        return cls(*cls.LAYOUT.unpack_from(body))


@dataclass(slots=True)
class IrqSet:
    argsz: int
    flags: int
    index: int
    start: int
    count: int
    data: bytes = b""  # DATA_BOOL: one byte per sub-index

    LAYOUT: ClassVar[struct.Struct] = vfio_abi.IRQ_SET

    def pack(self) -> bytes:
        return self.LAYOUT.pack(self.argsz, self.flags, self.index, self.start, self.count) + self.data

    @classmethod
    def unpack(cls, body: Buffer) -> "IrqSet":
        _need(body, cls.LAYOUT.size, "DEVICE_SET_IRQS")
        return cls(*cls.LAYOUT.unpack_from(body), bytes(body[cls.LAYOUT.size :]))

    @property
    def data_type(self) -> int:
        return self.flags & vfio_abi.IRQ_SET_DATA_TYPE_MASK

    @property
    def action(self) -> int:
        return self.flags & vfio_abi.IRQ_SET_ACTION_TYPE_MASK


# --------------------------------------------------------------------- region access
@dataclass(slots=True)
class RegionAccess:
    """REGION_READ / REGION_WRITE request and reply: offset, region, count (+ data)."""

    offset: int
    region: int
    count: int
    data: bytes = b""

    def pack(self) -> bytes:
        return REGION_ACCESS.pack(self.offset, self.region, self.count) + self.data

    @classmethod
    def unpack(cls, body: Buffer) -> "RegionAccess":
        _need(body, REGION_ACCESS.size, "region access")
        return cls(*REGION_ACCESS.unpack_from(body), bytes(body[REGION_ACCESS.size :]))


@dataclass(slots=True)
class DmaAccess:
    """DMA_READ / DMA_WRITE (server to client): address, count (+ data).

    count is packed as u64, which on little-endian is also QEMU's
    {u32 count; u32 pad} layout for any count below 4 GiB.
    """

    address: int
    count: int
    data: bytes = b""

    def pack(self) -> bytes:
        return DMA_ACCESS.pack(self.address, self.count) + self.data

    @classmethod
    def unpack(cls, body: Buffer) -> "DmaAccess":
        _need(body, DMA_ACCESS.size, "DMA access")
        return cls(*DMA_ACCESS.unpack_from(body), bytes(body[DMA_ACCESS.size :]))


@dataclass(frozen=True, slots=True)
class WriteMultiEntry:
    offset: int
    region: int
    count: int
    data: bytes  # up to 8 bytes used

    def pack(self) -> bytes:
        return WRITE_MULTI_ENTRY.pack(self.offset, self.region, self.count, self.data.ljust(8, b"\0"))


@dataclass(slots=True)
class RegionWriteMulti:
    entries: tuple[WriteMultiEntry, ...] = ()
    wr_cnt: int | None = None  # the reply carries only the count

    def pack(self) -> bytes:
        count = len(self.entries) if self.wr_cnt is None else self.wr_cnt
        return WRITE_MULTI_COUNT.pack(count) + b"".join(e.pack() for e in self.entries)

    @classmethod
    def unpack(cls, body: Buffer) -> "RegionWriteMulti":
        _need(body, WRITE_MULTI_COUNT.size, "REGION_WRITE_MULTI")
        (count,) = WRITE_MULTI_COUNT.unpack_from(body)
        if count > WRITE_MULTI_MAX_ENTRIES:
            raise ProtocolError.invalid(f"REGION_WRITE_MULTI: {count} entries, at most {WRITE_MULTI_MAX_ENTRIES}")
        if len(body) != WRITE_MULTI_COUNT.size + count * WRITE_MULTI_ENTRY.size:
            raise ProtocolError.invalid(f"REGION_WRITE_MULTI: payload {len(body)} bytes for {count} entries")
        entries = []
        for i in range(count):
            offset, region, n, data = WRITE_MULTI_ENTRY.unpack_from(body, WRITE_MULTI_COUNT.size + i * WRITE_MULTI_ENTRY.size)
            if n > WRITE_MULTI_ENTRY_DATA:
                raise ProtocolError.invalid(f"REGION_WRITE_MULTI entry {i}: count {n} > 8")
            entries.append(WriteMultiEntry(offset, region, n, data[:n]))
        return cls(tuple(entries))


# --------------------------------------------------------------------- feature / migration
@dataclass(slots=True)
class DeviceFeature:
    argsz: int
    flags: int
    data: bytes = b""

    LAYOUT: ClassVar[struct.Struct] = vfio_abi.DEVICE_FEATURE

    def pack(self) -> bytes:
        return self.LAYOUT.pack(self.argsz, self.flags) + self.data

    @classmethod
    def unpack(cls, body: Buffer) -> "DeviceFeature":
        _need(body, cls.LAYOUT.size, "DEVICE_FEATURE")
        return cls(*cls.LAYOUT.unpack_from(body), bytes(body[cls.LAYOUT.size :]))


@dataclass(slots=True)
class MigData:
    argsz: int
    size: int
    data: bytes = b""

    def pack(self) -> bytes:
        return MIG_DATA.pack(self.argsz, self.size) + self.data

    @classmethod
    def unpack(cls, body: Buffer) -> "MigData":
        _need(body, MIG_DATA.size, "MIG_DATA")
        return cls(*MIG_DATA.unpack_from(body), bytes(body[MIG_DATA.size :]))


@dataclass(slots=True)
class Empty:
    """A payload-less message (DEVICE_RESET, DMA_MAP reply, ...)."""

    def pack(self) -> bytes:
        return b""

    @classmethod
    def unpack(cls, body: Buffer) -> "Empty":
        return cls()


Message = Union[
    Version, DmaMap, DmaUnmap, DeviceInfo, RegionInfo, RegionIoFds, IrqInfo, IrqSet, RegionAccess,
    DmaAccess, RegionWriteMulti, DeviceFeature, MigData, Empty,
]
