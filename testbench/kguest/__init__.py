# SPDX-License-Identifier: BSD-3-Clause
"""Programs that run inside the kernel-bench guests (`testbench.kernel` boots them).

    x86-entry.sh    q35 + intel-iommu guest: loads vfio-pci/type1, runs `edu`
    arm64-entry.sh  aarch64 virt guest: loads the rebuilt vfio/vfio-platform/vfio-amba, runs `platform`
    edu.py          QEMU's edu on vfio-pci, one driver over two paths: VfioHostBackend (type1, DMA),
                    and our vfio-user server passing it through, driven by our client
    platform.py     VfioHostBackend against pl031 (vfio-amba) and a virtio-mmio slot (vfio-platform), no-IOMMU
    checks.py       the CHECK / "N passed, N failed" console protocol
    common.py       eventfds, sysfs writes, DMA buffers, running as another user
    vfio_user_hook.py  where the in-guest vfio-user server + client scenario plugs in

They import only what they use: under TCG every module costs start-up time.
"""
