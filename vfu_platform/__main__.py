# SPDX-License-Identifier: BSD-3-Clause
"""`python -m vfu_platform` is the `vfu-platform` command."""
import sys

from vfu_platform.cli import main

sys.exit(main())
