# SPDX-License-Identifier: BSD-3-Clause
"""The one exception a host VFIO misconfiguration raises.

A person setting up device assignment meets these errors first, usually in a
terminal, so each carries a single line that says what is wrong *and* the
command that fixes it.  The structured parts (`problem`, `fix_writes`) let
programs (tests, `vfu-platform inspect`) act on the error without parsing text.
"""
from __future__ import annotations

import enum
import errno as errno_codes

from vfu_platform.backends.base import BackendError


class Problem(enum.Enum):
    """What went wrong, coarse enough for a program to branch on."""

    NO_DEVICE = "no-device"
    WRONG_DRIVER = "wrong-driver"
    NO_VFIO = "no-vfio"
    NO_IOMMU_GROUP = "no-iommu-group"
    GROUP_NOT_VIABLE = "group-not-viable"
    BUSY = "busy"
    PERMISSION = "permission"
    NO_IOMMU_BACKEND = "no-iommu-backend"
    IOMMUFD_UNAVAILABLE = "iommufd-unavailable"
    UNSUPPORTED = "unsupported"
    UNSAFE_NOIOMMU_DMA = "unsafe-noiommu-dma"
    KERNEL = "kernel"  # an ioctl failed for a reason none of the above explains


_DEFAULT_ERRNO = {
    Problem.NO_DEVICE: errno_codes.ENODEV,
    Problem.WRONG_DRIVER: errno_codes.ENODEV,
    Problem.NO_VFIO: errno_codes.ENOENT,
    Problem.NO_IOMMU_GROUP: errno_codes.ENODEV,
    Problem.GROUP_NOT_VIABLE: errno_codes.EPERM,
    Problem.BUSY: errno_codes.EBUSY,
    Problem.PERMISSION: errno_codes.EACCES,
    Problem.NO_IOMMU_BACKEND: errno_codes.ENODEV,
    Problem.IOMMUFD_UNAVAILABLE: errno_codes.ENODEV,
    Problem.UNSUPPORTED: errno_codes.ENOTSUP,
    Problem.UNSAFE_NOIOMMU_DMA: errno_codes.EPERM,
    Problem.KERNEL: errno_codes.EIO,
}


class VfioHostError(BackendError):
    """A host VFIO device could not be opened or driven; `str()` is one actionable line.

    `fix_writes` lists the sysfs writes (path, value) that the message tells the
    user to do, in order, so a test or a tool can apply exactly what was printed.
    """

    #: the CLI prints such an error as its one line, without a traceback
    one_line = True

    def __init__(
        self,
        problem: Problem,
        message: str,
        errno: int | None = None,
        fix_writes: tuple[tuple[str, str], ...] = (),
    ) -> None:
        line = " ".join(message.split())  # one line, whatever the caller passed
        super().__init__(errno if errno is not None else _DEFAULT_ERRNO[problem], line)
        self.problem = problem
        self.fix_writes = fix_writes

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.problem, str(self), self.errno, self.fix_writes))


def kernel_error(what: str, error: OSError) -> VfioHostError:
    """Wrap an unexpected ioctl failure, keeping the kernel's errno for the client."""
    code = error.errno or errno_codes.EIO
    return VfioHostError(
        Problem.KERNEL, f"{what} failed: {errno_codes.errorcode.get(code, code)} ({error.strerror})", code
    )
