# SPDX-License-Identifier: BSD-3-Clause
"""Unit tests of the sans-I/O codec: payload round-trips, the region-info retry, cap chains."""
from __future__ import annotations

import errno
import struct

import pytest

from vfu_platform.protocol import messages as m
from vfu_platform.protocol.caps import Capabilities, Migration, TwinSocket, decode_capabilities
from vfu_platform.protocol.codec import (
    REPLY_TYPES,
    REQUEST_TYPES,
    decode_reply,
    decode_request,
    encode,
    encode_error,
    encode_reply,
)
from vfu_platform.protocol.constants import Command, MsgFlags
from vfu_platform.protocol.errors import ProtocolError
from vfu_platform.protocol.header import Header, pack_header, parse_header

READ, WRITE, MMAP, CAPS = 0x1, 0x2, 0x4, 0x8
SPARSE = m.SparseMmapCap(((0, 0x1000), (0x2000, 0x3000)))

ROUND_TRIPS = {
    "version-bare": m.Version(0, 0),
    "version-caps": m.Version(0, 2, Capabilities(max_msg_fds=16, max_data_xfer_size=1 << 20, max_dma_maps=65535,
                                                 pgsizes=4096, migration=Migration(4096, 1 << 28),
                                                 twin_socket=TwinSocket(True, 1), write_multiple=True)),
    "version-empty-caps": m.Version(0, 0, Capabilities()),
    "dma-map": m.DmaMap(32, READ | WRITE, 0x1000, 0xFFFF_0000_0000, 1 << 40),
    "dma-unmap": m.DmaUnmap(24, 2, 0, 0),
    "dma-unmap-bitmap": m.DmaUnmap(48, 1, 0x10000, 0x8000, bitmap_pgsize=4096, bitmap_size=8,
                                   bitmap=b"\x0f" + bytes(7)),
    "device-info": m.DeviceInfo(16, 3, 9, 5),
    "region-info": m.RegionInfo(32, READ | WRITE, 7, 0, 256, 0),
    "region-info-caps": m.RegionInfo(120, READ | WRITE | MMAP | CAPS, 1, 32, 1 << 20, 1 << 40,
                                     (SPARSE, m.TypeCap(0x8086, 1), m.MsixMappableCap(),
                                      m.UnknownCap(9, 3, b"12345678"))),
    "region-io-fds": m.RegionIoFds(96, 0, 0, 2, (m.IoFdEntry(0x10, 4, 0, 0, 1, 0xDEAD),
                                                 m.IoFdEntry(0x20, 0, 1, 1, 0, 7))),
    "irq-info": m.IrqInfo(16, 0x7, 0, 1),
    "irq-set": m.IrqSet(20, 0x24, 2, 0, 3),
    "irq-set-bool": m.IrqSet(23, 0x22, 2, 1, 3, b"\x01\x00\x01"),
    "region-access": m.RegionAccess(0x1000, 0, 4),
    "region-access-data": m.RegionAccess(0xFFFF_FFFF_FFFF_FFF8, 5, 8, b"abcdefgh"),
    "dma-access": m.DmaAccess(1 << 33, 16),
    "dma-access-data": m.DmaAccess(0x40000, 4, b"wxyz"),
    "write-multi": m.RegionWriteMulti((m.WriteMultiEntry(4, 0, 4, b"abcd"),
                                       m.WriteMultiEntry(0x80, 0, 8, b"12345678"))),
    "write-multi-empty": m.RegionWriteMulti(()),
    "device-feature": m.DeviceFeature(24, (1 << 16) | 11, bytes(16)),
    "mig-data": m.MigData(12, 4, b"data"),
    "empty": m.Empty(),
}


@pytest.mark.parametrize("message", ROUND_TRIPS.values(), ids=ROUND_TRIPS.keys())
def test_round_trip(message):
    assert type(message).unpack(message.pack()) == message


def test_round_trip_through_a_memoryview():
    message = m.RegionAccess(8, 1, 3, b"xyz")
    assert m.RegionAccess.unpack(memoryview(bytearray(message.pack()))) == message


def test_write_multi_reply_is_the_count_only():
    assert m.RegionWriteMulti(wr_cnt=3).pack() == struct.pack("<Q", 3)


# ---------------------------------------------------------------- command tables and whole messages
@pytest.mark.parametrize("command", [c for c in Command if c != Command.DIRTY_PAGES], ids=lambda c: c.name)
def test_every_command_has_request_and_reply_types(command):
    assert command in REQUEST_TYPES and command in REPLY_TYPES


def test_reply_types_that_differ_from_the_request():
    assert REPLY_TYPES[Command.DMA_MAP] is m.Empty
    assert REPLY_TYPES[Command.DMA_WRITE] is m.Empty  # QEMU answers header-only
    assert decode_reply(Command.DMA_WRITE, b"") == m.Empty()


def test_decode_request_picks_the_payload_class():
    assert decode_request(Command.REGION_READ, m.RegionAccess(4, 0, 4).pack()) == m.RegionAccess(4, 0, 4)
    assert decode_request(Command.DEVICE_RESET, b"") == m.Empty()


@pytest.mark.parametrize("command", [0, 14, 19, 0xFFFF])
def test_unknown_command_is_einval(command):
    for decode in (decode_request, decode_reply):
        with pytest.raises(ProtocolError) as info:
            decode(command, bytes(32))
        assert info.value.errno == errno.EINVAL


def test_encode_whole_messages():
    assert encode(5, 9, b"abc", MsgFlags.NO_REPLY) == pack_header(5, 9, 19, 0x10) + b"abc"
    assert encode_reply(6, 4, b"xy") == pack_header(6, 4, 18, 0x1) + b"xy"
    assert encode_error(7, 2, errno.ENOSPC) == pack_header(7, 2, 16, 0x21, errno.ENOSPC)


def test_header_fields():
    header = parse_header(pack_header(0xFFFF, 8, 36, 0x31, 22))
    assert header == Header(0xFFFF, 8, 36, 0x31, 22)
    assert header.is_reply and header.no_reply and header.is_error
    assert (header.msg_type, header.body_size) == (1, 20)
    assert parse_header(pack_header(1, 1, 16, 0x2, 0)).msg_type == 2


# ---------------------------------------------------------------- malformed payloads
SHORT = {
    "version": (m.Version, 3),
    "dma-map": (m.DmaMap, 31),
    "dma-unmap": (m.DmaUnmap, 23),
    "device-info": (m.DeviceInfo, 15),
    "region-info": (m.RegionInfo, 31),
    "region-io-fds": (m.RegionIoFds, 15),
    "irq-info": (m.IrqInfo, 15),
    "irq-set": (m.IrqSet, 19),
    "region-access": (m.RegionAccess, 15),
    "dma-access": (m.DmaAccess, 15),
    "write-multi": (m.RegionWriteMulti, 7),
    "device-feature": (m.DeviceFeature, 7),
    "mig-data": (m.MigData, 7),
}


@pytest.mark.parametrize("kind, length", SHORT.values(), ids=SHORT.keys())
def test_short_payload_is_einval(kind, length):
    with pytest.raises(ProtocolError) as info:
        kind.unpack(bytes(length))
    assert info.value.errno == errno.EINVAL


@pytest.mark.parametrize("payload", [
    struct.pack("<HH", 0, 0) + b"{}",                 # no NUL
    struct.pack("<HH", 0, 0) + b"\0",                 # empty JSON
    struct.pack("<HH", 0, 0) + b"{x\0",               # not JSON
    struct.pack("<HH", 0, 0) + b'{"capabilities":[]}\0',
    struct.pack("<HH", 0, 0) + b'{"capabilities":{"max_msg_fds":1025}}\0',
    struct.pack("<HH", 0, 0) + b'{"capabilities":{"pgsizes":-4096}}\0',
    struct.pack("<HH", 0, 0) + b'{"capabilities":{"write_multiple":"yes"}}\0',
], ids=["no-nul", "empty", "not-json", "caps-array", "max-fds", "negative", "bool-type"])
def test_bad_version_json_is_einval(payload):
    with pytest.raises(ProtocolError) as info:
        m.Version.unpack(payload)
    assert info.value.errno == errno.EINVAL


def test_unknown_capabilities_are_ignored():
    caps = decode_capabilities(b'{"capabilities":{"max_msg_fds":4,"future":{"x":1}},"other":[]}')
    assert caps == Capabilities(max_msg_fds=4)
    assert caps.effective_max_data_xfer_size() == 1 << 20 and caps.effective_max_msg_fds() == 4
    assert Capabilities().effective_max_msg_fds() == 1  # the spec default


def test_dirty_bitmap_flag_needs_its_header():
    with pytest.raises(ProtocolError):
        m.DmaUnmap.unpack(m.DmaUnmap(24, 1, 0, 0x1000).pack())


@pytest.mark.parametrize("payload", [
    struct.pack("<Q", 2) + m.WriteMultiEntry(0, 0, 4, b"abcd").pack(),           # count above the entries
    struct.pack("<Q", 0) + m.WriteMultiEntry(0, 0, 4, b"abcd").pack(),           # count below them
    struct.pack("<Q", 1) + struct.pack("<QII8s", 0, 0, 9, bytes(8)),             # entry count > 8
    struct.pack("<Q", 257) + m.WriteMultiEntry(0, 0, 1, b"a").pack() * 257,       # too many entries
    struct.pack("<Q", 1 << 63),
], ids=["count-high", "count-low", "entry-9-bytes", "257-entries", "huge-count"])
def test_bad_write_multi_is_einval(payload):
    with pytest.raises(ProtocolError) as info:
        m.RegionWriteMulti.unpack(payload)
    assert info.value.errno == errno.EINVAL


# ---------------------------------------------------------------- region info: argsz and caps
def mmap_region() -> m.RegionInfo:
    return m.RegionInfo(0, READ | WRITE | MMAP, 1, 0, 0x4000, 1 << 40, (SPARSE,))


NEEDED = 32 + 8 + 8 + 2 * 16


def test_reply_without_caps_is_the_bare_struct():
    info = m.RegionInfo(0, READ | WRITE, 0, 0, 0x1000, 0)
    for argsz in (32, 4096):
        payload, complete = info.pack_reply(argsz)
        assert complete and payload == struct.pack("<IIIIQQ", 32, READ | WRITE, 0, 0, 0x1000, 0)


@pytest.mark.parametrize("argsz", [32, NEEDED - 1])
def test_caps_that_do_not_fit_ask_for_a_retry(argsz):
    payload, complete = mmap_region().pack_reply(argsz)
    assert not complete
    assert payload == struct.pack("<IIIIQQ", NEEDED, READ | WRITE | MMAP, 1, 0, 0x4000, 1 << 40)


@pytest.mark.parametrize("argsz", [NEEDED, NEEDED + 1, 4096])
def test_retry_gets_exactly_the_caps(argsz):
    payload, complete = mmap_region().pack_reply(argsz)
    assert complete and len(payload) == NEEDED
    info = m.RegionInfo.unpack(payload)
    assert (info.argsz, info.flags, info.cap_offset) == (NEEDED, READ | WRITE | MMAP | CAPS, 32)
    assert info.caps == (SPARSE,) and info.sparse_areas == SPARSE.areas


def test_retry_form_drops_a_caps_flag_set_by_the_device():
    info = mmap_region()
    info.flags |= CAPS
    payload, _ = info.pack_reply(32)
    assert struct.unpack_from("<I", payload, 4)[0] & CAPS == 0


def test_client_retry_loop_against_pack_reply():
    """What VfioUserClient.region_info and QEMU do: ask with 32, then with the argsz returned."""
    argsz, asked = 32, []
    while True:
        asked.append(argsz)
        info = m.RegionInfo.unpack(mmap_region().pack_reply(argsz)[0])
        if info.argsz <= argsz:
            break
        argsz = info.argsz
    assert asked == [32, NEEDED] and info.caps == (SPARSE,)


def test_caps_are_ignored_without_the_caps_flag():
    payload = bytearray(mmap_region().pack_reply(4096)[0])
    struct.pack_into("<I", payload, 4, READ | WRITE | MMAP)
    assert m.RegionInfo.unpack(bytes(payload)).caps == ()


def test_chained_caps_are_8_byte_aligned():
    caps = (m.UnknownCap(9, 1, b"abc"), m.MsixMappableCap())
    chain = m.encode_caps(caps, 32)
    assert len(chain) == 16 + 8
    assert struct.unpack_from("<HHI", chain, 0) == (9, 1, 48)
    assert struct.unpack_from("<HHI", chain, 16) == (3, 1, 0)


# ---------------------------------------------------------------- malformed cap chains
def region_image(first: int, chain: bytes) -> bytes:
    return struct.pack("<IIIIQQ", 32 + len(chain), READ | WRITE | MMAP | CAPS, 1, first, 0x1000, 0) + chain


def cap(cap_id: int, next_offset: int, body: bytes = b"") -> bytes:
    return struct.pack("<HHI", cap_id, 1, next_offset) + body


MALFORMED_CHAINS = {
    "first-inside-the-struct": region_image(16, cap(3, 0)),
    "first-past-the-end": region_image(64, cap(3, 0)),
    "header-cut-short": region_image(32, cap(3, 0)[:6]),
    "next-to-itself": region_image(32, cap(3, 32)),
    "next-backwards": region_image(32, cap(3, 40) + cap(3, 32)),
    "next-inside-own-header": region_image(32, cap(3, 36) + bytes(8)),
    "next-past-the-end": region_image(32, cap(3, 200)),
    "sparse-without-count": region_image(32, cap(1, 0, b"\x01\0\0\0")),
    "sparse-areas-past-the-end": region_image(32, cap(1, 0, struct.pack("<II", 2, 0) + bytes(16))),
    "sparse-huge-count": region_image(32, cap(1, 0, struct.pack("<II", 0xFFFF_FFFF, 0))),
    "sparse-cut-by-next": region_image(32, cap(1, 48, struct.pack("<II", 1, 0) + bytes(16)) + cap(3, 0)),
}


@pytest.mark.parametrize("image", MALFORMED_CHAINS.values(), ids=MALFORMED_CHAINS.keys())
def test_malformed_cap_chain_is_a_protocol_error(image):
    with pytest.raises(ProtocolError) as info:
        m.RegionInfo.unpack(image)
    assert info.value.errno == errno.EINVAL


def test_short_type_cap_is_kept_as_unknown():
    (only,) = m.RegionInfo.unpack(region_image(32, cap(2, 0, b"\1\0\0\0"))).caps
    assert only == m.UnknownCap(2, 1, b"\1\0\0\0")
