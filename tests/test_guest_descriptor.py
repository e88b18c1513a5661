# SPDX-License-Identifier: BSD-3-Clause
"""The guest descriptor codec (docs/guest-descriptor.md): bytes in, records out.

The spec's example is checked byte for byte against bytes written out by hand here;
the invalid descriptors are built with a small record builder of this file's own (not
the encoder), so the decoder is checked against the spec, not against itself.
"""
from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vfu_platform import guest_descriptor as gd
from vfu_platform.guest_descriptor import (
    Capability,
    DescriptorError,
    DeviceRecord,
    IrqRecord,
    PropertyRecord,
    RegionRecord,
)

NOVEC = gd.NO_VECTOR


# --------------------------------------------------------------------------- builders


def rec(kind: int, value: bytes) -> bytes:
    """One record: type, len, value, zero padding to 4."""
    return struct.pack("<HH", kind, len(value)) + value + bytes(-len(value) % 4)


def cstr(text: str) -> bytes:
    return text.encode() + b"\0"


def header(body: bytes, device_count: int, irq_mode: int = 0, **override: int) -> bytes:
    fields = dict(magic=gd.MAGIC, version=1, header_len=16, total_len=16 + len(body),
                  device_count=device_count, irq_mode=irq_mode)
    fields.update(override)
    return struct.pack("<IHHIHH", *fields.values()) + body


def region(bar: int = 0, flags: int = 2, offset: int = 0, size: int = 0x1000, name: str = "") -> bytes:
    return rec(0x14, struct.pack("<IIQQ", bar, flags, offset, size) + cstr(name))


def irq(line: int = 0, vector: int = NOVEC, trigger: int = 4, name: str = "") -> bytes:
    return rec(0x15, struct.pack("<III", line, vector, trigger) + cstr(name))


def prop(prop_type: int, name: bytes, value: bytes, name_len: int | None = None) -> bytes:
    head = struct.pack("<HH", prop_type, len(name) if name_len is None else name_len) + name
    return rec(0x16, head + bytes(-len(head) % 4) + value)


def device(*records: bytes) -> bytes:
    return rec(0x01, b"".join(records))


NAME = rec(0x10, cstr("dev"))
BIND_PLATFORM = rec(0x11, struct.pack("<I", 2))
MINIMAL = (NAME, BIND_PLATFORM, region())


def one_device(*records: bytes, **override: int) -> bytes:
    count = override.pop("device_count", 1)
    return header(device(*records), count, **override)


# --------------------------------------------------------------------------- the spec's example

# `vfu-platform serve --device pl031,pl061 --irq-mode intx`, written out from the spec.
PL031 = bytes.fromhex(
    "0100 7400"                                   # DEVICE, 116 bytes
    "1000 0600" "706c30333100" "0000"             # NAME "pl031"
    "1100 0400" "01000000"                        # BIND AMBA
    "1200 0400" "31101400"                        # AMBA_ID 0x00141031 (r1)
    "1300 0a00" "61726d2c706c30333100" "0000"     # COMPATIBLE "arm,pl031"
    "1300 0e00" "61726d2c7072696d6563656c6c00" "0000"  # COMPATIBLE "arm,primecell"
    "1400 1900" "00000000" "02000000" "0000000000000000" "0010000000000000" "00" "000000"  # REGION
    "1500 0d00" "00000000" "ffffffff" "04000000" "00" "000000"  # IRQ line 0
)
PL061 = bytes.fromhex(
    "0100 8800"                                   # DEVICE, 136 bytes
    "1000 0600" "706c30363100" "0000"
    "1100 0400" "01000000"
    "1200 0400" "61100400"
    "1300 0a00" "61726d2c706c30363100" "0000"
    "1300 0e00" "61726d2c7072696d6563656c6c00" "0000"
    "1400 1900" "01000000" "02000000" "0000000000000000" "0010000000000000" "00" "000000"
    "1500 0d00" "01000000" "ffffffff" "04000000" "00" "000000"  # IRQ line 1
    "1600 1000" "0100 0700" "6e6770696f7300" "00" "08000000"   # PROPERTY u32 "ngpios" = 8
)
EXAMPLE = bytes.fromhex("56465544 0100 1000 14010000 0200 0000") + PL031 + PL061

EXAMPLE_DEVICES = (
    DeviceRecord("pl031", gd.BIND_AMBA, (RegionRecord(0, 0, 0x1000, gd.REGION_TRAPPED),),
                 (IrqRecord(0, NOVEC, 4),), amba_id=0x00141031, compatible=("arm,pl031", "arm,primecell")),
    DeviceRecord("pl061", gd.BIND_AMBA, (RegionRecord(1, 0, 0x1000, gd.REGION_TRAPPED),),
                 (IrqRecord(1, NOVEC, 4),), amba_id=0x00041061, compatible=("arm,pl061", "arm,primecell"),
                 properties=(PropertyRecord("ngpios", gd.PROP_U32, (8,)),)),
)


def test_example_encodes_byte_exact() -> None:
    assert len(EXAMPLE) == 0x114
    assert gd.encode(EXAMPLE_DEVICES, gd.IRQ_MODE_INTX) == EXAMPLE


def test_example_decodes() -> None:
    desc = gd.decode(EXAMPLE)
    assert desc.irq_mode == 0 and desc.version == 1
    assert desc.devices == EXAMPLE_DEVICES
    assert desc.devices[1].property("ngpios") == PropertyRecord("ngpios", 1, (8,))
    assert desc.devices[0].property("ngpios") is None


def test_capability_bytes() -> None:
    raw = gd.encode_capability(Capability(bar=2, offset=0x1000, length=0x114), next_pointer=0x40)
    assert raw == bytes.fromhex("09 40 14 01 56465544 02 01 0000 00100000 14010000")
    assert gd.decode_capability(raw) == Capability(2, 0x1000, 0x114)


@pytest.mark.parametrize("raw", [
    bytes.fromhex("09 00 14 02 56465544 02 01 0000 00100000 14010000"),  # another cfg_type
    bytes.fromhex("09 00 14 01 56465545 02 01 0000 00100000 14010000"),  # another signature
    bytes.fromhex("11 00 14 01 56465544 02 01 0000 00100000 14010000"),  # not vendor-specific
    bytes.fromhex("09 00 14 01 56465544"),                               # short
])
def test_capability_that_is_not_ours(raw: bytes) -> None:
    with pytest.raises(DescriptorError):
        gd.decode_capability(raw)


# --------------------------------------------------------------------------- round trips


def test_round_trip_every_field_and_property_type() -> None:
    devices = (
        DeviceRecord("dw-apb-uart", gd.BIND_DT_COMPATIBLE,
                     (RegionRecord(3, 0x100, 0x100, gd.REGION_MMAPPED, "regs"),
                      RegionRecord(4, 0, 1 << 40, 0, "big")),
                     (IrqRecord(0, 0, 1, "rx"), IrqRecord(7, 1, 8, "tx"), IrqRecord(2, 2, 3)),
                     compatible=("snps,dw-apb-uart",),
                     properties=(PropertyRecord("reg-shift", gd.PROP_U32, (2,)),
                                 PropertyRecord("clock-names", gd.PROP_STRINGS, ("baudclk", "", "apb_pclk")),
                                 PropertyRecord("big-endian", gd.PROP_FLAG, True),
                                 PropertyRecord("x", gd.PROP_U64, (1 << 63, 0)),
                                 PropertyRecord("p", gd.PROP_U32, (1, 2, 3)))),
        DeviceRecord("edu", gd.BIND_PLATFORM_NAME, (RegionRecord(0, 0, 0x100000),)),
        DeviceRecord("ü", gd.BIND_AMBA, (RegionRecord(5, 0, 16),), amba_id=0xFFFFFFFF),
    )
    for mode in (gd.IRQ_MODE_INTX, gd.IRQ_MODE_MSIX):
        raw = gd.encode(devices, mode)
        assert len(raw) % 4 == 0
        assert gd.decode(raw) == gd.Descriptor(mode, devices)


def test_no_devices() -> None:
    raw = gd.encode((), gd.IRQ_MODE_MSIX)
    assert raw == bytes.fromhex("56465544 0100 1000 10000000 0000 0100")
    assert gd.decode(raw) == gd.Descriptor(1, ())


def test_trailing_bytes_past_total_len_are_not_read() -> None:
    assert gd.decode(EXAMPLE + b"\xff" * 20).devices == EXAMPLE_DEVICES
    assert gd.decode(EXAMPLE + b"\xff" * 20, length=len(EXAMPLE)).devices == EXAMPLE_DEVICES


def test_unknown_record_types_are_skipped_at_both_levels() -> None:
    raw = header(rec(0x7777, b"future top-level")
                 + device(rec(0x0999, b"\x01\x02\x03"), *MINIMAL, rec(0x10FF, b""), irq())
                 + rec(0x0002, b""), 1)
    (dev,) = gd.decode(raw).devices
    assert dev == DeviceRecord("dev", 2, (RegionRecord(0, 0, 0x1000, 2),), (IrqRecord(0, NOVEC, 4),))


def test_unknown_property_types_are_skipped() -> None:
    raw = one_device(*MINIMAL, prop(9, b"new\0", b"\x01\x02"), prop(1, b"n\0", struct.pack("<I", 5)))
    (dev,) = gd.decode(raw).devices
    assert dev.properties == (PropertyRecord("n", 1, (5,)),)


def test_header_len_larger_than_16_skips_the_extension() -> None:
    body = b"\xAA" * 8 + device(*MINIMAL)
    raw = struct.pack("<IHHIHH", gd.MAGIC, 1, 24, 16 + len(body), 1, 0) + body
    assert gd.decode(raw).devices[0].name == "dev"


# --------------------------------------------------------------------------- invalid descriptors

INVALID = {
    "short": (b"VFUD", "too short"),
    "magic": (one_device(*MINIMAL, magic=0x12345678), "magic"),
    "version": (one_device(*MINIMAL, version=2), "version 2"),
    "header_len small": (one_device(*MINIMAL, header_len=12), "header_len"),
    "header_len unaligned": (one_device(*MINIMAL, header_len=18), "header_len"),
    "total_len past length": (one_device(*MINIMAL, total_len=0x200), "larger than the capability"),
    "irq_mode": (one_device(*MINIMAL, irq_mode=2), "irq_mode"),
    "device_count high": (one_device(*MINIMAL, device_count=2), "device_count 2"),
    "device_count low": (header(device(*MINIMAL) * 2, 1), "device_count 1"),
    "record past the descriptor": (header(struct.pack("<HH", 1, 200) + bytes(8), 1), "runs past"),
    "record header cut": (header(device(*MINIMAL) + b"\x01\x00", 1), "record header"),
    "record past its device": (header(struct.pack("<HH", 1, 8) + struct.pack("<HH", 0x10, 40) + bytes(40), 1),
                               "runs past"),
    "NAME without NUL": (one_device(rec(0x10, b"dev"), BIND_PLATFORM, region()), "terminating NUL"),
    "NAME empty value": (one_device(rec(0x10, b""), BIND_PLATFORM, region()), "terminating NUL"),
    "NAME inner NUL": (one_device(rec(0x10, b"d\0v\0"), BIND_PLATFORM, region()), "NUL before"),
    "NAME not UTF-8": (one_device(rec(0x10, b"\xff\0"), BIND_PLATFORM, region()), "UTF-8"),
    "no NAME": (one_device(BIND_PLATFORM, region()), "0 NAME"),
    "two NAMEs": (one_device(NAME, *MINIMAL), "2 NAME"),
    "no BIND": (one_device(NAME, region()), "0 BIND"),
    "two BINDs": (one_device(BIND_PLATFORM, *MINIMAL), "2 BIND"),
    "BIND short": (one_device(NAME, rec(0x11, b"\x02\0"), region()), "expected a u32"),
    "BIND kind": (one_device(NAME, rec(0x11, struct.pack("<I", 4)), region()), "BIND kind 4"),
    "AMBA without ID": (one_device(NAME, rec(0x11, struct.pack("<I", 1)), region()), "without an AMBA_ID"),
    "two AMBA_IDs": (one_device(*MINIMAL, rec(0x12, bytes(4)), rec(0x12, bytes(4))), "AMBA_ID"),
    "COMPATIBLE without NUL": (one_device(*MINIMAL, rec(0x13, b"arm,pl031")), "COMPATIBLE"),
    "no REGION": (one_device(NAME, BIND_PLATFORM), "no REGION"),
    "REGION short": (one_device(NAME, BIND_PLATFORM, rec(0x14, bytes(24))), "REGION of 24"),
    "REGION name without NUL": (one_device(NAME, BIND_PLATFORM, rec(0x14, bytes(16) + struct.pack("<Q", 1) + b"a")),
                                "REGION name"),
    "REGION bar": (one_device(NAME, BIND_PLATFORM, region(bar=6)), "BAR 6"),
    "REGION empty": (one_device(NAME, BIND_PLATFORM, region(size=0)), "non-empty"),
    "REGION wraps": (one_device(NAME, BIND_PLATFORM, region(offset=(1 << 63) + 1, size=1 << 63)), "64-bit"),
    "IRQ short": (one_device(*MINIMAL, rec(0x15, bytes(12))), "IRQ of 12"),
    "IRQ trigger": (one_device(*MINIMAL, irq(trigger=5)), "trigger 5"),
    "IRQ trigger 0": (one_device(*MINIMAL, irq(trigger=0)), "trigger 0"),
    "PROPERTY short": (one_device(*MINIMAL, rec(0x16, b"\x01\0")), "PROPERTY of 2"),
    "PROPERTY name_len 0": (one_device(*MINIMAL, prop(1, b"", bytes(4))), "name_len 0"),
    "PROPERTY name_len past": (one_device(*MINIMAL, prop(1, b"ab\0", b"", name_len=9)), "name_len 9"),
    "PROPERTY name without NUL": (one_device(*MINIMAL, prop(1, b"abc", bytes(4))), "PROPERTY name"),
    "PROPERTY empty name": (one_device(*MINIMAL, prop(1, b"\0", bytes(4))), "empty name"),
    "PROPERTY padding past": (one_device(*MINIMAL, rec(0x16, struct.pack("<HH", 1, 2) + b"a\0")), "padding"),
    "u32 odd length": (one_device(*MINIMAL, prop(1, b"n\0", bytes(6))), "array of 4-byte"),
    "u32 empty": (one_device(*MINIMAL, prop(1, b"n\0", b"")), "array of 4-byte"),
    "u64 odd length": (one_device(*MINIMAL, prop(4, b"n\0", bytes(12))), "array of 8-byte"),
    "strings without NUL": (one_device(*MINIMAL, prop(2, b"n\0", b"ab")), "terminating NUL"),
    "strings empty": (one_device(*MINIMAL, prop(2, b"n\0", b"")), "terminating NUL"),
    "flag with value": (one_device(*MINIMAL, prop(3, b"n\0", bytes(4))), "flag"),
}


@pytest.mark.parametrize("name", sorted(INVALID))
def test_invalid_descriptor(name: str) -> None:
    raw, why = INVALID[name]
    with pytest.raises(DescriptorError) as info:
        gd.decode(raw)
    message = str(info.value)
    assert why in message, message
    assert "\n" not in message


def test_total_len_larger_than_the_capability_length_is_invalid() -> None:
    with pytest.raises(DescriptorError, match="larger than the capability's length 100"):
        gd.decode(EXAMPLE, length=100)
    with pytest.raises(DescriptorError, match="only"):
        gd.decode(EXAMPLE, length=len(EXAMPLE) + 1)


def test_a_region_in_the_irq_page_bar_is_invalid() -> None:
    assert gd.decode(EXAMPLE, irq_page_bar=2).devices == EXAMPLE_DEVICES
    with pytest.raises(DescriptorError, match="BAR 1, the IRQ page's"):
        gd.decode(EXAMPLE, irq_page_bar=1)


def test_total_len_over_4k_is_invalid() -> None:
    body = device(*MINIMAL, rec(0x7777, bytes(0x1000)))
    with pytest.raises(DescriptorError, match="exceeds 4096"):
        gd.decode(header(body, 1))


def test_the_builder_itself_makes_valid_descriptors() -> None:
    """The invalid cases above differ from a valid one only in what they name."""
    assert gd.decode(one_device(*MINIMAL, irq(), prop(2, b"n\0", b"a\0b\0"), prop(3, b"f\0", b""))).devices[0]


# --------------------------------------------------------------------------- encoder refusals


@pytest.mark.parametrize("devices, why", [
    ((DeviceRecord("a\0b", 2, (RegionRecord(0, 0, 1),)),), "NUL"),
    ((DeviceRecord("a", 2, ()),), "at least one region"),
    ((DeviceRecord("a", 1, (RegionRecord(0, 0, 1),)),), "peripheral ID"),
    ((DeviceRecord("a", 9, (RegionRecord(0, 0, 1),)),), "bind kind 9"),
    ((DeviceRecord("a", 2, (RegionRecord(6, 0, 1),)),), "BAR 6"),
    ((DeviceRecord("a", 2, (RegionRecord(0, 0, 1),), (IrqRecord(0, NOVEC, 6),)),), "trigger 6"),
    ((DeviceRecord("a", 2, (RegionRecord(0, 0, 1),), (IrqRecord(-1, NOVEC, 4),)),), "IRQ line"),
    ((DeviceRecord("a", 2, (RegionRecord(0, 0, 1),), properties=(PropertyRecord("p", 1, (1 << 32,)),)),), "32 bits"),
    ((DeviceRecord("a", 2, (RegionRecord(0, 0, 1),), properties=(PropertyRecord("p", 3, False),)),), "flag"),
    ((DeviceRecord("a", 2, (RegionRecord(0, 0, 1),), properties=(PropertyRecord("p", 2, ()),)),), "strings"),
    ((DeviceRecord("a", 2, (RegionRecord(0, 0, 1),), properties=(PropertyRecord("p", 7, (1,)),)),), "unknown"),
    ((DeviceRecord("a", 2, (RegionRecord(0, 0, 1),), compatible=("x" * 5000,)),), "at most 4096"),
])
def test_encoder_refuses(devices: tuple[DeviceRecord, ...], why: str) -> None:
    with pytest.raises(DescriptorError, match=why):
        gd.encode(devices, 0)


def test_encoder_refuses_a_bad_irq_mode() -> None:
    with pytest.raises(DescriptorError, match="irq_mode"):
        gd.encode((), 3)


# --------------------------------------------------------------------------- robustness

FUZZ = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_descriptor_error(data: bytes) -> None:
    try:
        gd.decode(data)
    except DescriptorError:
        pass


@FUZZ
@given(st.binary(max_size=300))
def test_random_records_behind_a_valid_header_raise_only_descriptor_error(body: bytes) -> None:
    for count in (0, 1, 2):
        try:
            gd.decode(header(body, count))
        except DescriptorError:
            pass


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(EXAMPLE) - 1), st.integers(0, 255)), min_size=1, max_size=6),
       st.integers(0, len(EXAMPLE)))
def test_corrupted_example_decodes_or_raises_descriptor_error(edits: list[tuple[int, int]], cut: int) -> None:
    raw = bytearray(EXAMPLE)
    for position, value in edits:
        raw[position] = value
    try:
        gd.decode(bytes(raw[:cut]) if cut < 16 else bytes(raw), length=None if cut < 16 else len(raw))
    except DescriptorError:
        pass
