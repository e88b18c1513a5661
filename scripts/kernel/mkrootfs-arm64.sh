#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# Build the arm64 root the aarch64 guest runs Python from (shared over 9p).
#
# usage: mkrootfs-arm64.sh DEBDIR WHEELDIR OUTDIR
#   DEBDIR    Debian arm64 .debs to unpack (python3.11 and its libraries,
#             python3-cffi-backend); nothing is installed on the host
#   WHEELDIR  aarch64 wheels to unpack into /opt/vfu/site (msgspec)
#   OUTDIR    the root; /opt/vfu/vfu_platform is filled later, per run, by
#             stage-arm64-package.sh
#
# Debian ships no .pyc (py3compile makes them at install time) and compiling
# the standard library under TCG costs seconds at every start, so the host's
# Python 3.11 precompiles them: .pyc files are architecture-independent and
# the magic number is the same across 3.11.x.
set -euo pipefail
D=$1 WHEELS=$2 R=$3
PY=${PYTHON:-python3}
rm -rf "$R.tmp"
mkdir -p "$R.tmp"
for deb in "$D"/*.deb; do dpkg-deb -x "$deb" "$R.tmp"; done
mkdir -p "$R.tmp"/{proc,sys,dev,run,tmp,out,opt/vfu/site}
ln -sf python3.11 "$R.tmp/usr/bin/python3"
for whl in "$WHEELS"/*.whl; do
  [ -e "$whl" ] || continue
  "$PY" -m zipfile -e "$whl" "$R.tmp/opt/vfu/site"
done
if "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  "$PY" -m compileall -q -j0 -d /usr/lib/python3.11 "$R.tmp/usr/lib/python3.11" > /dev/null || true
  "$PY" -m compileall -q -d /opt/vfu/site "$R.tmp/opt/vfu/site" > /dev/null || true
fi
rm -rf "$R"
mv "$R.tmp" "$R"
echo "mkrootfs-arm64: $R ($(du -sh "$R" | cut -f1))"
