# SPDX-License-Identifier: BSD-3-Clause
"""MSI-X through the bridge (`--irq-mode msix`, gpio): one vector per platform IRQ.

There is no client EOI for MSI-X, so the server infers it: a write to the line's
acknowledge register, or (a line without one) the first trapped access after the
injection, the seed's heuristic.  Masking happens in the function mask (config
MSI-X control bit 14) and in the per-vector mask bit of the MSI-X table (IRQ page),
and while masked the PBA (IRQ page 0x800) shows the pending bit.
"""
from __future__ import annotations

from collections.abc import Callable

import pytest

from vfu_platform.testing import CONFIG, MSIX, NO_IRQ, TRIGGER_EVENTFD, TRIGGER_NONE, EventFd, ProcessServer, config_read, config_write, intx_status, irq_reg, wait_until, write_config
from vfu_platform import vfio_abi
from vfu_platform.backends.sim import gpio
from vfu_platform.bridge import irq_page, msix
from vfu_platform.bridge.config_space import MSIX_CAP_OFFSET
from vfu_platform.client import VfioUserClient

LEVEL_LINES = 4  # gpio default
EDGE_LINE = 4
VECTORS = LEVEL_LINES + 1
IRQ_BAR = 2
MSIX_CONTROL = MSIX_CAP_OFFSET + 2
CONTROL_ENABLE = 0x8000
CONTROL_MASKALL = 0x4000


def raise_line(client: VfioUserClient, line: int) -> None:
    client.write32(0, gpio.line_register(line, gpio.LINE_RAISE), 1)


def ack_line(client: VfioUserClient, line: int) -> None:
    client.write32(0, gpio.line_register(line, gpio.LINE_ACK), 1)


def pba(client: VfioUserClient) -> int:
    return client.read64(IRQ_BAR, msix.PBA_OFFSET)


def page(client: VfioUserClient, register: int) -> int:
    return irq_reg(client, "gpio", register)


def vector_control(client: VfioUserClient, vector: int, value: int) -> None:
    client.write32(IRQ_BAR, msix.TABLE_OFFSET + msix.ENTRY_SIZE * vector + 12, value)


def enable_msix(client: VfioUserClient, vectors: list[EventFd]) -> None:
    """What QEMU sends: 'MSI-X on, no vectors', then the vectors in one chunk."""
    config_write(client, MSIX_CONTROL, 2, CONTROL_ENABLE)
    client.set_irqs(MSIX, TRIGGER_EVENTFD, 0, 1)
    client.set_irqs(MSIX, TRIGGER_EVENTFD, 0, len(vectors), [v.fd for v in vectors])


@pytest.fixture
def msix_client(gpio_msix_server: ProcessServer, vfu_eventfds) -> tuple[VfioUserClient, list[EventFd]]:
    client = gpio_msix_server.connect()
    vectors = vfu_eventfds(VECTORS)
    enable_msix(client, vectors)
    return client, vectors


def assert_quiet(vectors: list[EventFd], but: int | None = None) -> None:
    for number, vector in enumerate(vectors):
        if number != but:
            vector.expect_none(wait=0.02, what=f"signal on vector {number}")


# --------------------------------------------------------------------------- shape


def test_irq_info_has_one_vector_per_platform_irq(gpio_msix_server: ProcessServer) -> None:
    client = gpio_msix_server.connect()
    info = client.irq_info(MSIX)
    assert info.count == VECTORS
    assert info.flags & vfio_abi.IRQ_INFO_EVENTFD
    assert client.irq_info(vfio_abi.PCI_INTX_IRQ_INDEX).count == 1  # INTx stays available
    assert client.irq_info(vfio_abi.PCI_MSI_IRQ_INDEX).count == 0


def test_config_space_has_an_msix_capability(gpio_msix_server: ProcessServer) -> None:
    client = gpio_msix_server.connect()
    assert config_read(client, 0x06, 2) & 0x0010, "STATUS.CAP_LIST"
    assert config_read(client, 0x34, 1) == MSIX_CAP_OFFSET
    assert config_read(client, MSIX_CAP_OFFSET, 1) == 0x11  # MSI-X
    assert config_read(client, MSIX_CAP_OFFSET + 1, 1) == 0  # end of the chain
    assert config_read(client, MSIX_CONTROL, 2) == VECTORS - 1  # table size - 1, disabled, unmasked
    assert config_read(client, MSIX_CAP_OFFSET + 4, 4) == msix.TABLE_OFFSET | IRQ_BAR
    assert config_read(client, MSIX_CAP_OFFSET + 8, 4) == msix.PBA_OFFSET | IRQ_BAR
    # The table and PBA fit in the IRQ page BAR.
    info, _fd = client.region_info(IRQ_BAR)
    assert msix.PBA_OFFSET + 8 <= info.size
    assert page(client, irq_page.IRQ_LINES) == VECTORS


def test_intx_mode_has_no_msix(vfu_server: Callable[..., ProcessServer]) -> None:
    client = vfu_server("gpio").connect()
    assert client.irq_info(MSIX).count == 0
    assert config_read(client, 0x34, 1) == 0
    assert not config_read(client, 0x06, 2) & 0x0010


def test_msix_table_powers_on_masked_and_is_readable(gpio_msix_server: ProcessServer) -> None:
    client = gpio_msix_server.connect()
    for vector in range(VECTORS):
        entry = client.region_read(IRQ_BAR, msix.ENTRY_SIZE * vector, msix.ENTRY_SIZE)
        assert entry == bytes(12) + (1).to_bytes(4, "little")
    client.write64(IRQ_BAR, 0x10, 0xFEE0_0000)
    client.write32(IRQ_BAR, 0x18, 0x4041)
    assert client.read64(IRQ_BAR, 0x10) == 0xFEE0_0000
    assert client.read32(IRQ_BAR, 0x18) == 0x4041


# --------------------------------------------------------------------------- delivery


@pytest.mark.parametrize("line", range(LEVEL_LINES))
def test_each_level_line_signals_its_own_vector(msix_client, line: int) -> None:
    client, vectors = msix_client
    raise_line(client, line)
    vectors[line].expect_one(what=f"vector {line}")
    assert_quiet(vectors, but=line)
    assert page(client, irq_page.IRQ_ACTIVE) == line
    assert page(client, irq_page.IRQ_ROUTE) == 1
    assert not intx_status(client), "no INTx status on the MSI-X route"
    ack_line(client, line)  # the ack register: an exact EOI
    assert page(client, irq_page.IRQ_ACTIVE) == NO_IRQ
    assert page(client, irq_page.IRQ_EOIS) == 1
    vectors[line].expect_none()


def test_edge_line_signals_its_vector_without_eoi(msix_client) -> None:
    client, vectors = msix_client
    for _ in range(3):
        client.write32(0, gpio.REG_EDGE_PULSE, 1)
        vectors[EDGE_LINE].expect_one(what="edge vector")
    assert_quiet(vectors, but=EDGE_LINE)
    assert page(client, irq_page.IRQ_ACTIVE) == NO_IRQ  # edges bypass the active/pending queue
    assert page(client, irq_page.IRQ_SIGNALS) == 3


def test_simultaneous_level_lines_are_injected_one_at_a_time(msix_client) -> None:
    client, vectors = msix_client
    client.write32(0, gpio.REG_RAISE, 0b111)
    for line in range(3):
        vectors[line].expect_one(what=f"vector {line}")
        assert_quiet(vectors, but=line)
        assert page(client, irq_page.IRQ_ACTIVE) == line
        assert pba(client) == sum(1 << later for later in range(line + 1, 3)), "queued lines show in the PBA"
        ack_line(client, line)
    assert page(client, irq_page.IRQ_ACTIVE) == NO_IRQ
    assert pba(client) == 0
    assert_quiet(vectors)


def test_vector_installed_after_the_fire_gets_it(gpio_msix_server: ProcessServer, vfu_eventfds) -> None:
    client = gpio_msix_server.connect()
    client.set_irqs(MSIX, TRIGGER_EVENTFD, 0, 1)  # MSI-X on, no vectors yet
    raise_line(client, 1)
    client.sync()
    wait_until(lambda: pba(client) == 0b10, what="line 1 pending in the PBA")
    (vector,) = vfu_eventfds(1)
    client.set_irqs(MSIX, TRIGGER_EVENTFD, 1, 1, [vector.fd])  # QEMU: the guest unmasked vector 1
    vector.expect_one(what="held vector 1")
    assert pba(client) == 0


def test_replaced_vector_fd_gets_later_signals(msix_client, vfu_eventfds) -> None:
    client, vectors = msix_client
    (replacement,) = vfu_eventfds(1)
    client.set_irqs(MSIX, TRIGGER_EVENTFD, 2, 1, [replacement.fd])
    raise_line(client, 2)
    replacement.expect_one()
    vectors[2].expect_none(what="signal on the replaced fd")


def test_msix_disable_returns_to_intx(msix_client, vfu_eventfds) -> None:
    client, vectors = msix_client
    client.set_irqs(MSIX, TRIGGER_NONE, 0, 0)
    assert page(client, irq_page.IRQ_ROUTE) == 0
    (intx,) = vfu_eventfds(1)
    client.set_irqs(vfio_abi.PCI_INTX_IRQ_INDEX, TRIGGER_EVENTFD, 0, 1, [intx.fd])
    raise_line(client, 0)
    intx.expect_one(what="INTx after MSI-X was disabled")
    assert_quiet(vectors)


# --------------------------------------------------------------------------- EOI by trapped access


@pytest.fixture
def no_ack_client(vfu_server: Callable[..., ProcessServer], tmp_path, vfu_eventfds) -> tuple[VfioUserClient, list[EventFd]]:
    config = write_config(tmp_path, '[device]\nmodel = "gpio"\n[bridge]\nirq_mode = "msix"\nuse_model_acks = false\n')
    client = vfu_server("gpio", config=config).connect()
    vectors = vfu_eventfds(VECTORS)
    enable_msix(client, vectors)
    return client, vectors


def test_first_trapped_access_completes_the_eoi_exactly_once(no_ack_client) -> None:
    client, vectors = no_ack_client
    raise_line(client, 0)
    vectors[0].expect_one()
    # The driver's first trapped access after the injection: it deasserts the line at
    # the device and is the EOI.  (Reading the IRQ page first would be the EOI instead.)
    ack_line(client, 0)
    assert page(client, irq_page.IRQ_EOIS) == 1
    assert page(client, irq_page.IRQ_ACTIVE) == NO_IRQ
    # Later accesses complete nothing more.
    client.read32(0, gpio.REG_ID)
    client.write32(0, gpio.REG_SCRATCH, 5)
    assert page(client, irq_page.IRQ_EOIS) == 1
    assert page(client, irq_page.IRQ_SIGNALS) == 1
    vectors[0].expect_none()


def test_trapped_read_of_the_irq_page_is_an_eoi(no_ack_client) -> None:
    client, vectors = no_ack_client
    raise_line(client, 1)
    vectors[1].expect_one()
    # The driver reads IRQ_ACTIVE first: it is served before the EOI the read triggers.
    assert page(client, irq_page.IRQ_ACTIVE) == 1
    # The line is still asserted at the device: the EOI unmasked it and it fired again.
    vectors[1].expect_one(what="re-fire of the still-asserted level line")
    ack_line(client, 1)  # deasserts; as the first access after the re-fire, also its EOI
    assert page(client, irq_page.IRQ_EOIS) == 2
    assert page(client, irq_page.IRQ_ACTIVE) == NO_IRQ
    vectors[1].expect_none()


def test_trapped_access_eois_one_line_and_injects_the_next(no_ack_client) -> None:
    client, vectors = no_ack_client
    client.write32(0, gpio.REG_RAISE, 0b011)
    vectors[0].expect_one()
    # EOI of line 0; line 1 is injected and must not be EOId by the same access (it is
    # still asserted, so an early EOI would show up as a second signal and a third EOI).
    ack_line(client, 0)
    vectors[1].expect_one()
    ack_line(client, 1)
    assert page(client, irq_page.IRQ_EOIS) == 2
    assert page(client, irq_page.IRQ_ACTIVE) == NO_IRQ
    assert_quiet(vectors)


def test_msix_config_writes_are_not_trapped_bar_accesses(no_ack_client) -> None:
    client, vectors = no_ack_client
    raise_line(client, 2)
    vectors[2].expect_one()
    config_read(client, 0x00, 4)
    config_write(client, 0x3C, 1, 11)
    assert client.region_read(CONFIG, 0x3C, 1) == b"\x0b"
    assert page(client, irq_page.IRQ_ACTIVE) == 2, "config space accesses are no EOI"


# --------------------------------------------------------------------------- masking and the PBA


def test_function_mask_holds_delivery_and_sets_pba(msix_client) -> None:
    client, vectors = msix_client
    config_write(client, MSIX_CONTROL, 2, CONTROL_ENABLE | CONTROL_MASKALL)
    raise_line(client, 0)
    client.write32(0, gpio.REG_EDGE_PULSE, 1)
    assert_quiet(vectors)
    wait_until(lambda: pba(client) == (1 << 0) | (1 << EDGE_LINE), what="pending bits in the PBA")
    config_write(client, MSIX_CONTROL, 2, CONTROL_ENABLE)
    vectors[0].expect_one(what="vector 0 after the function unmask")
    vectors[EDGE_LINE].expect_one(what="edge vector after the function unmask")
    assert pba(client) == 0
    ack_line(client, 0)
    assert_quiet(vectors)


@pytest.mark.parametrize("line", [0, EDGE_LINE], ids=["level", "edge"])
def test_vector_mask_in_the_table_holds_delivery(msix_client, line: int) -> None:
    client, vectors = msix_client
    vector_control(client, line, 1)  # mask (the guest's first write to a vector's control)
    if line == EDGE_LINE:
        client.write32(0, gpio.REG_EDGE_PULSE, 1)
    else:
        raise_line(client, line)
    vectors[line].expect_none(what="a masked vector")
    wait_until(lambda: pba(client) == 1 << line, what="pending bit")
    vector_control(client, line, 0)
    vectors[line].expect_one(what="vector after its unmask")
    assert pba(client) == 0
    vector_control(client, line, 1)
    vector_control(client, line, 0)
    vectors[line].expect_none(what="a second delivery of the same interrupt")


def test_vector_mask_then_unmask_then_mask_again(msix_client) -> None:
    client, vectors = msix_client
    vector_control(client, 3, 0)
    vector_control(client, 3, 1)
    raise_line(client, 3)
    vectors[3].expect_none()
    assert pba(client) == 1 << 3
    vector_control(client, 3, 0)
    vectors[3].expect_one()


def test_masking_one_vector_does_not_hold_others(msix_client) -> None:
    client, vectors = msix_client
    vector_control(client, 0, 1)
    client.write32(0, gpio.REG_EDGE_PULSE, 1)
    vectors[EDGE_LINE].expect_one()
    raise_line(client, 0)
    vectors[0].expect_none()
    assert pba(client) == 1


def test_pba_is_zero_in_intx_route(gpio_msix_server: ProcessServer, vfu_eventfds) -> None:
    client = gpio_msix_server.connect()
    (intx,) = vfu_eventfds(1)
    client.set_irqs(vfio_abi.PCI_INTX_IRQ_INDEX, TRIGGER_EVENTFD, 0, 1, [intx.fd])
    client.write32(0, gpio.REG_RAISE, 0b11)
    intx.expect_one()
    assert pba(client) == 0
    assert page(client, irq_page.IRQ_PENDING) == 1


def test_reset_drops_vectors(msix_client) -> None:
    client, vectors = msix_client
    client.reset()
    raise_line(client, 0)
    assert_quiet(vectors)
