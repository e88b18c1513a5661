#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# Build a busybox initramfs for a kernel-bench guest.
#
# usage: mkinitramfs.sh BUSYBOX KMODROOT KVER OUT.cpio.gz MODULE...
#   BUSYBOX   static busybox for the guest architecture
#   KMODROOT  directory holding lib/modules/KVER (an unpacked Debian kernel .deb)
#   KVER      kernel release
#   MODULE    modules to include; their dependencies are resolved with kmod
# EXTRA_KO="a.ko b.ko" adds rebuilt modules under extra/ and drops the stock
# modules of the same name, so depmod resolves to ours.  KMOD= names the
# directory holding kmod's modprobe/depmod, CPIO= the cpio binary.
#
# Why an initramfs at all: Debian's 6.1 kernels build 9p and virtio as
# modules, and busybox cannot insmod compressed (.ko.xz) modules, so they are
# decompressed here.
set -euo pipefail
BB=$(realpath "$1") KROOT=$(realpath "$2") KVER=$3 OUT=$(realpath -m "$4")
shift 4
KMOD=${KMOD:-/sbin}
HERE=$(cd "$(dirname "$0")" && pwd)
ST=$(mktemp -d "${TMPDIR:-/tmp}/vfu-initrd.XXXXXX")
trap 'rm -rf "$ST"' EXIT
mkdir -p "$ST"/{bin,sbin,proc,sys,dev,host,tmp,run,lib/modules/$KVER}
cp "$BB" "$ST/bin/busybox"
chmod 755 "$ST/bin/busybox"
for applet in sh mount insmod modprobe; do ln -s busybox "$ST/bin/$applet"; done
declare -A seen=()
for module in "$@"; do
  while read -r cmd path _; do
    [ "$cmd" = insmod ] || continue
    [ -n "${seen[$path]:-}" ] && continue
    seen[$path]=1
    rel=${path#*/lib/modules/$KVER/}
    mkdir -p "$ST/lib/modules/$KVER/$(dirname "$rel")"
    case $path in
      *.xz) xz -dc "$path" > "$ST/lib/modules/$KVER/${rel%.xz}" ;;
      *.zst) zstd -qdc "$path" > "$ST/lib/modules/$KVER/${rel%.zst}" ;;
      *) cp "$path" "$ST/lib/modules/$KVER/$rel" ;;
    esac
  done < <("$KMOD/modprobe" -d "$KROOT" -S "$KVER" --show-depends "$module")
done
for ko in ${EXTRA_KO:-}; do
  name=$(basename "$ko")
  find "$ST/lib/modules/$KVER/kernel" -name "$name" -delete
  mkdir -p "$ST/lib/modules/$KVER/extra"
  cp "$ko" "$ST/lib/modules/$KVER/extra/$name"
done
cp "$KROOT/lib/modules/$KVER"/modules.{order,builtin,builtin.modinfo} "$ST/lib/modules/$KVER/" 2>/dev/null || true
"$KMOD/depmod" -b "$ST" "$KVER"
cp "$HERE/initrd-init.sh" "$ST/init"
chmod 755 "$ST/init"
(cd "$ST" && find . | "${CPIO:-cpio}" -o -H newc --quiet | gzip -1 > "$OUT.tmp")
mv "$OUT.tmp" "$OUT"
echo "mkinitramfs: $OUT ($(du -h "$OUT" | cut -f1), $(find "$ST/lib/modules" -name '*.ko' | wc -l) modules)"
