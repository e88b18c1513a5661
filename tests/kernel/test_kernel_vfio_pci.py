# SPDX-License-Identifier: BSD-3-Clause
"""VfioHostBackend on a real kernel's vfio-pci: x86-64 q35 + intel-iommu guest, QEMU's edu, type1.

The guest program is testbench/kguest/edu.py; its checks are listed
here so that a check that silently stopped running fails as surely as one that
failed.
"""
from __future__ import annotations

import os

import pytest

from testbench.kernel import GuestResult, KernelBench

pytestmark = pytest.mark.kernel

EXPECTED = [
    # host-side errors, for real, in the order a person meets them
    "no_such_device", "wrong_driver_unbound", "fix_commands_bind", "wrong_driver_bound", "group_not_viable",
    "no_permission", "open_by_name", "busy", "inspect_busy_reports_error", "busy_names_holder",
    # discovery
    "iommu_type1v2", "iommufd_fallback_note", "device_flags_pci", "bar0_info", "bar0_mmap_fd", "config_region",
    "config_ids", "inspect_report",
    # register access, trapped and mmapped through the RegionInfo fd/offset
    "read_id", "write_liveness", "factorial", "mmap_region",
    # INTx (automasked level), the unmask-eventfd bypass, MSI
    "intx_info_automasked", "intx_no_spurious", "intx_delivered", "intx_automasked_until_unmask",
    "intx_user_mask_unmask", "intx_unmask_eventfd", "intx_loopback", "msi_info", "msi_delivered",
    # DMA through VFIO_IOMMU_MAP_DMA into memfd memory the test owns
    "iommu_info", "dma_mappings", "dma_roundtrip_via_iommu", "dma_unmap", "dma_map_unaligned_refused",
    # reset reported plainly, release on close
    "reset_flag_absent", "reset_unsupported", "closed", "reopen_by_sysfsdev",
    # `vfu-platform inspect` on the free device: table and JSON, passthrough plan
    "inspect_cli_table", "inspect_cli_json",
]

#: our vfio-user server (`vfu-platform serve --host`) passing edu through as itself (bridge/pci_passthrough.py),
#: driven by our client library in the same guest (kguest/edu.py, the vfio-user path); VFU_KERNEL_E2E=0 leaves it out
E2E_EXPECTED = [
    "pt_server_started", "pt_device_info", "pt_region_info", "pt_config_forwarded", "pt_bar_registers_emulated",
    "pt_command_forwarded", "pt_read_id", "pt_write_liveness", "pt_factorial", "pt_mmap_fast_path",
    "pt_intx_no_spurious", "pt_intx_delivered", "pt_intx_automasked_until_unmask", "pt_msi_info", "pt_msi_delivered", "pt_dma_iommu_mapped", "pt_dma_roundtrip",
    "pt_dma_unmapped", "pt_dma_without_fd_accepted", "pt_reset_reported", "pt_inspect_busy",
    "pt_client_loss_unmaps", "pt_next_client", "pt_server_clean_exit",
]
E2E = os.environ.get("VFU_KERNEL_E2E", "1") != "0"


@pytest.fixture(scope="module")
def x86(kernel_bench: KernelBench) -> GuestResult:
    return kernel_bench.run_x86_pci(vfio_user=E2E)


def test_guest_ran_every_check_clean(x86: GuestResult) -> None:
    assert x86.reached_init, f"{x86.name} never reached its init in {x86.boots} boots"
    assert x86.ok, x86.describe()


@pytest.mark.parametrize("name", EXPECTED)
def test_check(x86: GuestResult, name: str) -> None:
    check = x86.status(name)
    assert check is not None, f"check {name} did not run\n{x86.describe()}"
    assert check.status == "PASS", f"{name}: {check.detail}"


@pytest.mark.skipif(not E2E, reason="VFU_KERNEL_E2E=0")
@pytest.mark.parametrize("name", E2E_EXPECTED)
def test_passthrough_end_to_end(x86: GuestResult, name: str) -> None:
    check = x86.status(name)
    assert check is not None, f"check {name} did not run\n{x86.describe()}"
    assert check.status == "PASS", f"{name}: {check.detail}"


def test_no_unexpected_checks(x86: GuestResult) -> None:
    """Every check the guest ran is listed above (or is the not-yet-enabled vfio-user hook)."""
    extra = {c.name for c in x86.checks} - set(EXPECTED) - set(E2E_EXPECTED) - {"vfio_user_roundtrip"}
    assert not extra, f"add these to EXPECTED: {sorted(extra)}"
