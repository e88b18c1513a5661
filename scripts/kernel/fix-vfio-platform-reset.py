#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
"""Backport the 6.12 reset lookup logic into a 6.1 vfio_platform_common.c.

On 6.1.y, vfio_platform_init_common() returns the reset lookup's -ENOENT even
when reset_required is false, so vfio-platform (with reset_required=0) and
vfio-amba (always reset_required=false) refuse every device that has no reset
module - i.e. every device of QEMU's arm `virt` board.  Later kernels only fail
when a reset is required.  The edit is idempotent: an already-fixed file is
left alone.
"""
from __future__ import annotations

import re
import sys

# The 6.1 tail of vfio_platform_init_common(): report and return the error.
_BROKEN = re.compile(
    r"(\tif \(ret && vdev->reset_required\)\n"
    r"\t\tdev_err\(dev, \"No reset function found for device %s\\n\",\n"
    r"\t\t\tvdev->name\);\n)"
    r"\treturn ret;\n}"
)


def main(argv: list[str]) -> int:
    path = argv[1]
    source = open(path, encoding="utf-8").read()
    fixed, count = _BROKEN.subn(
        lambda m: m.group(1).replace(")\n\t\tdev_err", ") {\n\t\tdev_err", 1)
        + "\t\treturn ret;\n\t}\n\n\treturn 0;\n}",
        source,
    )
    if count:
        open(path, "w", encoding="utf-8").write(fixed)
        print(f"fix-vfio-platform-reset: patched {path}")
    elif "return 0;\n}" in source and "reset_required) {" in source:
        print(f"fix-vfio-platform-reset: {path} already fixed")
    else:
        print(f"fix-vfio-platform-reset: {path}: pattern not found (kernel changed?)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
