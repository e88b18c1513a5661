#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# Put this checkout's vfu_platform into the arm64 root, with the cffi VFIO
# extension cross-compiled for aarch64, and its testbench/ (the guest programs).
#
# usage: stage-arm64-package.sh REPO ROOTFS PYDEV
#   REPO    the checkout (its vfu_platform/, testbench/ and bindings/vfio_build.py)
#   ROOTFS  the arm64 root from mkrootfs-arm64.sh
#   PYDEV   an unpacked libpython3.11-dev arm64 .deb (Python headers)
#
# How the extension is built: the host's cffi emits the C source of
# bindings/vfio_build.py (the same source `pip install -e .` compiles), and
# aarch64-linux-gnu-gcc-12 compiles it against the arm64 Python headers and
# the cross toolchain's arm64 <linux/vfio.h>.  At run time it binds to Debian's
# arm64 _cffi_backend (python3-cffi-backend), which accepts the generated
# module's ABI version.  The compile is skipped when the C source is unchanged.
# Only .py and .sh files are copied: the checkout's own x86 _vfio*.so must not shadow ours.
set -euo pipefail
REPO=$(realpath "$1") R=$(realpath "$2") PYDEV=$(realpath "$3")
PY=${PYTHON:-python3}
CC=${CROSS_CC:-aarch64-linux-gnu-gcc-12}
DEST=$R/opt/vfu/vfu_platform
BUILD=$R/opt/vfu/.build
mkdir -p "$BUILD"
rm -rf "$DEST.tmp"
(cd "$REPO" && find vfu_platform \( -name "*.py" -o -name "*.sh" \) -not -path "*/__pycache__/*" -print0) | while IFS= read -r -d '' f; do
  mkdir -p "$R/opt/vfu/$(dirname "${f/vfu_platform/vfu_platform.tmp}")"
  cp "$REPO/$f" "$R/opt/vfu/${f/vfu_platform/vfu_platform.tmp}"
done
"$PY" - "$REPO/bindings" "$BUILD/_vfio.new.c" <<'PY'
import sys
sys.path.insert(0, sys.argv[1])
import vfio_build
vfio_build.ffibuilder.emit_c_code(sys.argv[2])
PY
SO=_vfio.cpython-311-aarch64-linux-gnu.so
if ! cmp -s "$BUILD/_vfio.new.c" "$BUILD/_vfio.c" || ! [ -e "$BUILD/$SO" ]; then
  "$CC" -shared -fPIC -O2 -fno-strict-aliasing \
    -I"$PYDEV/usr/include/python3.11" -I"$PYDEV/usr/include" \
    -o "$BUILD/$SO.tmp" "$BUILD/_vfio.new.c"
  mv "$BUILD/$SO.tmp" "$BUILD/$SO"
  mv "$BUILD/_vfio.new.c" "$BUILD/_vfio.c"
  echo "stage-arm64-package: built $SO"
else
  rm -f "$BUILD/_vfio.new.c"
fi
cp "$BUILD/$SO" "$DEST.tmp/$SO"
if "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  "$PY" -m compileall -q -d /opt/vfu/vfu_platform "$DEST.tmp" > /dev/null || true
fi
rm -rf "$DEST"
mv "$DEST.tmp" "$DEST"
echo "stage-arm64-package: $DEST ($(find "$DEST" -name '*.py' | wc -l) modules)"
BENCH=$R/opt/vfu/testbench
rm -rf "$BENCH.tmp"
(cd "$REPO" && find testbench \( -name "*.py" -o -name "*.sh" \) -not -path "*/__pycache__/*" -print0) | while IFS= read -r -d '' f; do
  mkdir -p "$R/opt/vfu/$(dirname "${f/testbench/testbench.tmp}")"
  cp "$REPO/$f" "$R/opt/vfu/${f/testbench/testbench.tmp}"
done
rm -rf "$BENCH"
mv "$BENCH.tmp" "$BENCH"
echo "stage-arm64-package: $BENCH ($(find "$BENCH" -name '*.py' | wc -l) modules)"
