# SPDX-License-Identifier: BSD-3-Clause
"""Hook: our vfio-user server on the real device inside the guest, driven by our client library.

The kernel guests give `VfioHostBackend` a real device; the issue's next step is
the whole path in one guest kernel (fds and eventfds cross the socket with
SCM_RIGHTS, so server and client must share a kernel):

    vfu-platform serve --host DEVICE  (VfioHostBackend -> bridge -> server, a subprocess)
        <- VfioUserClient: DEVICE_GET_INFO, REGION_READ, the region fd, INTx + UNMASK

It runs when the guest's kernel command line has `vfu.e2e=1`
(`KernelBench.run_*(vfio_user=True)`, `python -m testbench.kernel
--vfio-user`); otherwise it reports a SKIP, so the kernel suite does not depend
on the server's progress.  Scenarios: pl031 through the bridge
(vfio_user_e2e.run_pl031) and edu, a PCI function, passed through as itself
(edu.run_vfio_user).
"""
from __future__ import annotations

from testbench.kguest.checks import Checks


def enabled(cmdline: str = "/proc/cmdline") -> bool:
    try:
        with open(cmdline) as f:
            return "vfu.e2e=1" in f.read().split()
    except OSError:
        return False


def run(c: Checks, device: str, scenario: str) -> None:
    """Run `scenario` against `device` (closed by the caller: the server opens it itself)."""
    if not enabled():
        c.skip("vfio_user_roundtrip", "not enabled (kernel command line vfu.e2e=1)")
        return
    if scenario == "edu":
        from testbench.kguest import edu

        edu.run_vfio_user(c, device)
        return
    if scenario != "pl031":
        c.skip("vfio_user_roundtrip", f"no vfio-user scenario for {scenario} yet")
        return
    from testbench.kguest import vfio_user_e2e

    vfio_user_e2e.run_pl031(c, device)
