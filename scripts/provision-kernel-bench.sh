#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# Provision the kernel VFIO bench: everything needed to boot Debian's own
# kernels under QEMU (TCG) with a real VFIO device inside, from Debian
# packages only.  Idempotent and cached; the tests call it on every run.
#
# usage: provision-kernel-bench.sh [--refresh]
#   cache: ${VFU_CACHE:-$HOME/.cache/vfu-platform}/kernel
#   result: $CACHE/env.sh (paths the harness reads); prints "provisioned: ..."
#
# What it does (each step skipped when its output exists):
#   1. host packages, if missing (said before they are installed):
#      gcc-12-aarch64-linux-gnu with libc6-dev-arm64-cross and
#      linux-libc-dev-arm64-cross (the arm64 cffi extension needs libc and uAPI
#      headers; the kernel modules need neither), make bc xz-utils: Debian 12's
#      own packages, the only thing any suite installs on the host. The guests
#      run on the private QEMU 11 of scripts/provision-qemu.sh (no host QEMU).
#   2. a private arm64 apt configuration (no `dpkg --add-architecture`), using
#      the archive this machine's apt already uses (no host name is written here)
#   3. downloads: linux-image amd64+arm64 of the current bookworm ABI,
#      arm64 headers + common headers + linux-kbuild (host tools), linux-source
#      (for drivers/vfio), busybox-static (both arches), kmod, cpio, the arm64
#      python3.11 packages + python3-cffi-backend + libpython3.11-dev, and the
#      aarch64 msgspec wheel at the version of the host's msgspec (PyPI)
#   4. rebuilds drivers/vfio for arm64 out of tree: no Debian kernel enables
#      VFIO_NOIOMMU, VFIO_PLATFORM or VFIO_AMBA; 6.1's vfio-platform reset
#      lookup bug is fixed first (kernel/fix-vfio-platform-reset.py)
#   5. initramfs images: amd64 with the stock vfio-pci/type1 modules (the x86
#      guest gets an emulated intel-iommu), arm64 with the rebuilt set
#   6. the arm64 Python root (kernel/mkrootfs-arm64.sh)
#
# Everything but step 1 runs unprivileged; step 1 needs root (apt-get).
set -euo pipefail
# The whole script is one function, read before it runs: editing the file while
# it runs cannot change what it does.
main() {
HERE=$(cd "$(dirname "$0")" && pwd)
KS=$HERE/kernel
CACHE=${VFU_CACHE:-$HOME/.cache/vfu-platform}/kernel
REPO=$(cd "$HERE/.." && pwd)
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  PY=python3
  [ -x "$REPO/.venv/bin/python" ] && PY=$REPO/.venv/bin/python
fi
NICE=(nice -n 10)
REFRESH=0
[ "${1:-}" = --refresh ] && REFRESH=1 || true
log() { echo "provision-kernel-bench: $* ($(date +%T))"; }
export DEBIAN_FRONTEND=noninteractive

# ---- fast path: a complete earlier run -------------------------------------
if [ $REFRESH = 0 ] && [ -f "$CACHE/env.sh" ]; then
  # shellcheck disable=SC1091
  . "$CACHE/env.sh"
  ok=1
  for f in "$KB_KERNEL_AMD64" "$KB_KERNEL_ARM64" "$KB_INITRD_AMD64" "$KB_INITRD_ARM64" \
           "$KB_ROOTFS_ARM64/usr/bin/python3.11" "$KB_PYDEV_ARM64/usr/include/python3.11/Python.h"; do
    [ -e "$f" ] || ok=0
  done
  [ "$KS/initrd-init.sh" -nt "$KB_INITRD_AMD64" ] && ok=0
  command -v aarch64-linux-gnu-gcc-12 > /dev/null || ok=0
  [ -e /usr/aarch64-linux-gnu/include/linux/vfio.h ] || ok=0
  if [ $ok = 1 ]; then
    echo "provisioned: $CACHE/env.sh (cached)"
    exit 0
  fi
fi

# ---- 1. host packages ---------------------------------------------------------
need=()
for p in gcc-12-aarch64-linux-gnu libc6-dev-arm64-cross linux-libc-dev-arm64-cross make bc xz-utils; do
  dpkg -s "$p" > /dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  log "installing Debian 12 host packages ${need[*]} (the arm64 cross compiler that rebuilds drivers/vfio and the cffi extension; see README)"
  if [ "$(id -u)" != 0 ]; then
    echo "provision-kernel-bench: need root to apt-get install ${need[*]}" >&2
    exit 1
  fi
  apt-get update -qq
  "${NICE[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" > /dev/null
fi

mkdir -p "$CACHE"/{debs,debs-arm64,debs-arm64-py,debs-arm64-dev,wheels-arm64,tools,tools-arm64}
cd "$CACHE"

# ---- 2. private arm64 apt lists ----------------------------------------------
CODENAME=$(. /etc/os-release && echo "$VERSION_CODENAME")
DEB_MAIN=${DEB_MAIN:-${VFU_DEB_MIRROR:-$("$PY" "$KS/debian-archive.py" "$CODENAME" || true)}}
DEB_SECURITY=${DEB_SECURITY:-$("$PY" "$KS/debian-archive.py" "$CODENAME-security" || true)}
if [ -z "$DEB_MAIN" ]; then
  echo "provision-kernel-bench: no Debian archive for $CODENAME in this machine's apt configuration (set DEB_MAIN)" >&2
  exit 1
fi
A64=$CACHE/apt-arm64
mkdir -p "$A64"/lists/partial "$A64"/cache/archives/partial
printf '%s\n' "deb [arch=arm64] $DEB_MAIN $CODENAME main" \
  "deb [arch=arm64] $DEB_MAIN $CODENAME-updates main" \
  "deb [arch=arm64] ${DEB_SECURITY:-$DEB_MAIN} $CODENAME-security main" > "$A64/sources.list"
cat > "$A64/apt.conf" << EOF
Dir::Etc::SourceList "$A64/sources.list";
Dir::Etc::SourceParts "/dev/null";
Dir::State::Lists "$A64/lists";
Dir::Cache "$A64/cache";
Dir::State::status "/dev/null";
APT::Architecture "arm64";
APT::Architectures { "arm64"; };
Acquire::Languages "none";
EOF
# As root, apt hands downloads to the _apt user, which cannot enter a private
# cache under /root: download as root instead (what apt falls back to, minus the warning).
SANDBOX=()
[ "$(id -u)" = 0 ] && SANDBOX=(-o APT::Sandbox::User=root)
apt64() { APT_CONFIG=$A64/apt.conf "$@"; }
if [ $REFRESH = 1 ] || ! ls "$A64"/lists/*_Packages > /dev/null 2>&1; then
  log "apt-get update (private arm64 lists)"
  apt64 apt-get "${SANDBOX[@]}" --error-on=any update -qq
fi

# ---- 3. versions and downloads ------------------------------------------------
KPKG=$(apt-cache depends linux-image-amd64 2> /dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
if [ -z "$KPKG" ]; then
  log "apt-get update (host lists are empty)"
  apt-get update -qq
  KPKG=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
fi
ABI=${KPKG#linux-image-}
ABI=${ABI%-amd64}                                                   # e.g. 6.1.0-56
KVERS=$(apt-cache show "$KPKG" | awk '/^Version:/{print $2; exit}') # e.g. 6.1.192-2
SER=$(echo "$ABI" | cut -d. -f1-2)                                  # e.g. 6.1
log "kernel ABI $ABI ($KVERS)"

fetch() {  # fetch DIR APT-PREFIX PACKAGE[=VERSION]...: apt-get download what is not there yet
  local dir=$1 prefix=$2
  shift 2
  local p missing=()
  for p in "$@"; do
    case $p in
      *=*) ls "$dir/${p%%=*}_${p#*=}_"*.deb > /dev/null 2>&1 || missing+=("$p") ;;  # that exact version
      *) ls "$dir/${p}_"*.deb > /dev/null 2>&1 || missing+=("$p") ;;
    esac
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "download ${missing[*]}"
  (cd "$dir" && $prefix apt-get "${SANDBOX[@]}" download -qq "${missing[@]}")
}
fetch debs "" "linux-image-$ABI-amd64" "linux-headers-$ABI-common" \
  "linux-kbuild-$SER=$KVERS" "linux-source-$SER=$KVERS" busybox-static cpio kmod
fetch debs-arm64 apt64 "linux-image-$ABI-arm64" "linux-headers-$ABI-arm64" busybox-static
fetch debs-arm64-py apt64 libc6 libexpat1 zlib1g libffi8 python3.11-minimal \
  libpython3.11-minimal libpython3.11-stdlib libcrypt1 libbz2-1.0 liblzma5 python3-cffi-backend
fetch debs-arm64-dev apt64 libpython3.11-dev
MSGSPEC=$("$PY" -c 'import importlib.metadata as m; print(m.version("msgspec"))')
if ! ls wheels-arm64/msgspec-"$MSGSPEC"-*.whl > /dev/null 2>&1; then
  log "pip download msgspec==$MSGSPEC (aarch64 wheel)"
  rm -f wheels-arm64/msgspec-*.whl
  "$PY" -m pip download -q --no-deps --only-binary=:all: --platform manylinux2014_aarch64 \
    --python-version 3.11 --implementation cp -d wheels-arm64 "msgspec==$MSGSPEC"
fi

# ---- unpack -----------------------------------------------------------------------
x() { dpkg-deb -x "$1" "$2"; }
W=$CACHE/$ABI
mkdir -p "$W"
if ! [ -x tools/sbin/modprobe ]; then
  for f in debs/busybox-static_*.deb debs/cpio_*.deb debs/kmod_*.deb; do x "$f" tools; done
  for t in depmod modprobe modinfo insmod; do ln -sf ../bin/kmod tools/sbin/$t; done
fi
[ -x tools-arm64/bin/busybox ] || x debs-arm64/busybox-static_*.deb tools-arm64
for a in amd64 arm64; do
  d=debs
  [ $a = arm64 ] && d=debs-arm64
  if ! [ -f "$W/k-$a/boot/vmlinuz-$ABI-$a" ]; then
    log "unpack linux-image-$ABI-$a"
    rm -rf "$W/k-$a"
    x $d/linux-image-$ABI-${a}_*.deb "$W/k-$a"
    tools/sbin/depmod -b "$W/k-$a" "$ABI-$a"
  fi
done
HDR=$W/hdr-arm64/usr/src/linux-headers-$ABI-arm64
if ! [ -f "$HDR/Makefile" ]; then
  log "unpack arm64 headers"
  rm -rf "$W/hdr-arm64"
  x debs-arm64/linux-headers-$ABI-arm64_*.deb "$W/hdr-arm64"
  x debs/linux-headers-$ABI-common_*.deb "$W/hdr-arm64"
  x debs/linux-kbuild-${SER}_${KVERS}_amd64.deb "$W/hdr-arm64"     # host (amd64) kbuild tools
  # the flavour Makefile includes the common one by absolute path
  sed -i "s#/usr/src/linux-headers-$ABI-common#$W/hdr-arm64/usr/src/linux-headers-$ABI-common#" "$HDR/Makefile"
fi
if ! [ -d "$W/src/drivers/vfio" ]; then
  log "unpack drivers/vfio from linux-source-$SER"
  rm -rf "$W/src"
  mkdir -p "$W/src"
  dpkg-deb --fsys-tarfile debs/linux-source-${SER}_${KVERS}_all.deb \
    | tar -xO "./usr/src/linux-source-$SER.tar.xz" \
    | tar -xJ -C "$W/src" --strip-components=1 "linux-source-$SER/drivers/vfio"
fi
PYDEV=$CACHE/pydev-arm64
[ -f "$PYDEV/usr/include/python3.11/Python.h" ] || { rm -rf "$PYDEV"; x debs-arm64-dev/libpython3.11-dev_*.deb "$PYDEV"; }

# ---- 4. out-of-tree vfio modules (arm64: NOIOMMU + platform + amba) --------------
V=$W/vfio-arm64
if ! [ -f "$V/platform/vfio-amba.ko" ]; then
  log "build drivers/vfio for arm64 (NOIOMMU, VFIO_PLATFORM, VFIO_AMBA)"
  rm -rf "$V"
  cp -r "$W/src/drivers/vfio" "$V"
  "$PY" "$KS/fix-vfio-platform-reset.py" "$V/platform/vfio_platform_common.c"
  # The whole directory is built as one set, so symbol CRCs match among the vfio modules.
  "${NICE[@]}" make -s -C "$HDR" M="$V" ARCH=arm64 CROSS_COMPILE=aarch64-linux-gnu- \
    KCFLAGS=-DCONFIG_VFIO_NOIOMMU=1 CONFIG_VFIO_PLATFORM=m CONFIG_VFIO_AMBA=m \
    -j"$(nproc)" modules 2>&1 | grep -vE 'Skipping BTF|^$' || true
  [ -f "$V/platform/vfio-amba.ko" ] || { echo "provision-kernel-bench: vfio module build failed" >&2; exit 1; }
fi

# ---- 5. initramfs images ------------------------------------------------------------
export KMOD=$CACHE/tools/sbin CPIO=$CACHE/tools/bin/cpio
INITRD_AMD64=$W/initrd-amd64.cpio.gz
INITRD_ARM64=$W/initrd-arm64.cpio.gz
# rebuilt when the init script changes
if ! [ -f "$INITRD_AMD64" ] || [ "$KS/initrd-init.sh" -nt "$INITRD_AMD64" ]; then
  "$KS/mkinitramfs.sh" tools/bin/busybox "$W/k-amd64" "$ABI-amd64" "$INITRD_AMD64" \
    virtio_pci 9pnet_virtio 9p vfio_pci vfio_iommu_type1
fi
if ! [ -f "$INITRD_ARM64" ] || [ "$KS/initrd-init.sh" -nt "$INITRD_ARM64" ]; then
  EXTRA_KO="$V/vfio.ko $V/vfio_virqfd.ko $V/vfio_iommu_type1.ko $V/platform/vfio-platform-base.ko \
$V/platform/vfio-platform.ko $V/platform/vfio-amba.ko $V/pci/vfio-pci-core.ko $V/pci/vfio-pci.ko" \
    "$KS/mkinitramfs.sh" tools-arm64/bin/busybox "$W/k-arm64" "$ABI-arm64" "$INITRD_ARM64" \
    virtio_pci virtio_mmio 9pnet_virtio 9p vfio_iommu_type1
fi

# ---- 6. arm64 Python root ------------------------------------------------------------
ROOTFS=$CACHE/rootfs-arm64
if ! [ -x "$ROOTFS/usr/bin/python3.11" ] || ! ls "$ROOTFS"/opt/vfu/site/msgspec* > /dev/null 2>&1 \
   || ! ls "$ROOTFS"/usr/lib/python3/dist-packages/_cffi_backend* > /dev/null 2>&1; then
  PYTHON=$PY "$KS/mkrootfs-arm64.sh" debs-arm64-py wheels-arm64 "$ROOTFS"
fi

cat > "$CACHE/env.sh.tmp" << EOF
# written by provision-kernel-bench.sh
KB_CACHE=$CACHE
KB_ABI=$ABI
KB_KERNEL_AMD64=$W/k-amd64/boot/vmlinuz-$ABI-amd64
KB_KERNEL_ARM64=$W/k-arm64/boot/vmlinuz-$ABI-arm64
KB_INITRD_AMD64=$INITRD_AMD64
KB_INITRD_ARM64=$INITRD_ARM64
KB_ROOTFS_ARM64=$ROOTFS
KB_PYDEV_ARM64=$PYDEV
EOF
mv "$CACHE/env.sh.tmp" "$CACHE/env.sh"
echo "provisioned: $CACHE/env.sh"
}
main "$@"
