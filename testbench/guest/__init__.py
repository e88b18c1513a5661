# SPDX-License-Identifier: BSD-3-Clause
"""Programs that run inside the test guest, and the guest's /init (init.sh).

The guest mounts the host's root read-only over virtio-9p and runs these modules
with the host's Python, chrooted into that mount (see init.sh). They use only the
standard library and the guest kernel's user interfaces: sysfs, /dev/uioN, mmap of
/sys/bus/pci/devices/X/resourceN, /proc/self/pagemap.  The exception is msix.py: it
binds the device to guest vfio-pci and drives it with the project's own
VfioHostBackend (its GuestRun needs `qemu.viommu_options()`: the VFIO modules and
an intel-iommu).

Each program prints ``CHECK <name> PASS|FAIL <detail>`` lines, ``INFO <key> <value>``
lines, and a final ``RESULT PASS|FAIL``; the host side (testbench.qemu)
parses them from the serial console.
"""
