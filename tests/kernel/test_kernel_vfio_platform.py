# SPDX-License-Identifier: BSD-3-Clause
"""VfioHostBackend on a real kernel's vfio-platform / vfio-amba: aarch64 `virt` guest, no-IOMMU mode.

pl031 (AMBA, level IRQ) and an empty virtio-mmio slot (platform, edge IRQ), with
drivers/vfio rebuilt by provisioning (no Debian kernel enables VFIO_NOIOMMU,
VFIO_PLATFORM or VFIO_AMBA).  The guest program is
testbench/kguest/platform.py, run by Debian's arm64 Python with
our package and its cffi extension cross-built for aarch64.  The same boot also
runs our vfio-user server on the pl031 and drives it with our client library.
"""
from __future__ import annotations

import os

import pytest

from testbench.kernel import GuestResult, KernelBench

pytestmark = pytest.mark.kernel

EXPECTED = [
    # errors, for real: wrong driver (with no-IOMMU mode off: the fix turns it on), permissions
    "pl031_wrong_driver", "pl031_wrong_driver_fixed", "no_permission_eacces", "no_permission_cap_sys_rawio",
    "vmmio_wrong_driver", "vmmio_wrong_driver_fixed", "pl031_busy", "vmmio_type1_refused_in_noiommu_group",
    "iommufd_unavailable",
    # pl031 through vfio-amba
    "pl031_open", "pl031_noiommu_container", "pl031_flags_amba", "pl031_compatible", "pl031_region",
    "pl031_read_ids", "pl031_mmap_ids", "pl031_irq_level_automasked", "pl031_no_spurious",
    "pl031_irq_delivered", "pl031_automasked_until_unmask", "pl031_user_mask_unmask", "pl031_unmask_eventfd",
    "pl031_reset_flag_absent", "pl031_reset_unsupported", "pl031_inspect_report",
    # DMA in no-IOMMU mode: refused unless opted in
    "noiommu_dma_refused", "noiommu_dma_unsafe_opt_in",
    # the virtio-mmio slot through vfio-platform
    "vmmio_flags_platform", "vmmio_compatible", "vmmio_region_not_mmappable", "vmmio_magic", "vmmio_irq_edge",
    "vmmio_loopback",
    # `vfu-platform inspect`: table and JSON with the bridge plan
    "pl031_inspect_cli_table", "pl031_inspect_cli_json", "vmmio_inspect_cli_json",
    # the guest descriptor of the real pl031 (sysfs + DT) equals the simulated pl031's
    "pl031_descriptor_matches_model", "pl031_descriptor_capability",
]


#: our vfio-user server (`vfu-platform serve --host`) on the real pl031, driven by our client library,
#: both inside the guest (kguest/vfio_user_e2e.py); VFU_KERNEL_E2E=0 leaves it out
E2E_EXPECTED = [
    "e2e_server_started", "e2e_device_info_pci", "e2e_region_read_ids", "e2e_region_mmap", "e2e_intx_real_irq",
    "e2e_dma_noiommu_refused", "e2e_dma_without_fd_accepted", "e2e_reset_reported", "e2e_server_clean_exit",
    # The IRQ bypass path against the mediated one, counted in server wake-ups (IRQ page IRQ_WAKEUPS).
    "bypass_mediated_one_wakeup_per_irq", "bypass_no_wakeup_per_irq", "bypass_automask_until_resample",
    "bypass_off_mediated_again",
]
E2E = os.environ.get("VFU_KERNEL_E2E", "1") != "0"


@pytest.fixture(scope="module")
def arm64(kernel_bench: KernelBench) -> GuestResult:
    return kernel_bench.run_arm64_platform(vfio_user=E2E)


def test_guest_ran_every_backend_check_clean(arm64: GuestResult) -> None:
    assert arm64.reached_init, f"{arm64.name} never reached its init in {arm64.boots} boots"
    assert arm64.summary is not None, arm64.describe()
    failed = [c for c in arm64.failures if c.name not in E2E_EXPECTED]
    assert not failed, arm64.describe()


@pytest.mark.parametrize("name", EXPECTED)
def test_check(arm64: GuestResult, name: str) -> None:
    check = arm64.status(name)
    assert check is not None, f"check {name} did not run\n{arm64.describe()}"
    assert check.status == "PASS", f"{name}: {check.detail}"


@pytest.mark.skipif(not E2E, reason="VFU_KERNEL_E2E=0")
@pytest.mark.parametrize("name", E2E_EXPECTED)
def test_vfio_user_end_to_end(arm64: GuestResult, name: str) -> None:
    check = arm64.status(name)
    assert check is not None, f"check {name} did not run\n{arm64.describe()}"
    assert check.status == "PASS", f"{name}: {check.detail}"


def test_no_unexpected_checks(arm64: GuestResult) -> None:
    extra = {c.name for c in arm64.checks} - set(EXPECTED) - set(E2E_EXPECTED) - {"vfio_user_roundtrip"}
    assert not extra, f"add these to EXPECTED: {sorted(extra)}"
