# SPDX-License-Identifier: BSD-3-Clause
"""setuptools glue for the cffi build in bindings/ (pyproject.toml holds the metadata)."""
from setuptools import setup

setup(cffi_modules=["bindings/vfio_build.py:ffibuilder"])
