# SPDX-License-Identifier: BSD-3-Clause
"""End-to-end test benches: QEMU guests that drive a device served over vfio-user.

The QEMU-client bench (other modules here belong to other benches):

* `testbench.qemu`: provisioning, initramfs, and `GuestRun` (host side);
* `testbench.guest`: the guest's /init and check programs (guest side);
* `testbench.demo`: the `scripts/demo` walk-through.

Nothing is imported here: the guest programs import this package inside a slow TCG
guest, over 9p, and should pay only for what they use.
"""
