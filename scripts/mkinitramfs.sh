#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
#
# mkinitramfs.sh [-e ENV.sh] -i INIT -o OUT.cpio.gz [-m MODULE]... [-f SRC:DST]...
#
# Build the test guest's initramfs: the provisioned static busybox as the whole
# userland, INIT as /init, the named kernel modules with their dependency closure
# (decompressed, with a modules.dep made by busybox depmod, so `modprobe NAME`
# works in the guest), and extra files SRC copied to DST inside the image.
#
#   -e ENV.sh   env file written by provision-qemu.sh
#               (default ${VFU_CACHE:-$HOME/.cache/vfu-platform}/env.sh)
#   -m MODULE   may be repeated, or hold several names separated by spaces
#
# Host tools: bash, gzip and the provisioned busybox (cpio, xz, depmod, strings);
# no cpio, xz-utils or kmod needed on the host. Needs root for the /dev/console
# node (the kernel opens it before /init runs). Callers that want to reuse an
# image key it by its inputs (testbench/qemu.py build_initramfs does).
set -euo pipefail

usage() { sed -n '4,18p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
ENVF=${VFU_CACHE:-$HOME/.cache/vfu-platform}/env.sh
INIT= OUT= MODS=() EXTRA=()
while getopts "e:i:o:m:f:h" o; do
    case $o in
        e) ENVF=$OPTARG ;;
        i) INIT=$OPTARG ;;
        o) OUT=$OPTARG ;;
        m) read -r -a more <<<"$OPTARG"; MODS+=("${more[@]}") ;;
        f) EXTRA+=("$OPTARG") ;;
        *) usage ;;
    esac
done
[[ -n $INIT && -n $OUT ]] || usage
[[ -r $ENVF ]] || { echo "mkinitramfs: no $ENVF: run scripts/provision-qemu.sh first" >&2; exit 1; }
# shellcheck disable=SC1090
. "$ENVF"
BB=$VFU_BUSYBOX
KVER=$VFU_KVER
KMODDIR=$VFU_KMODDIR

ST=$(mktemp -d "${TMPDIR:-/tmp}/vfu-initrd.XXXXXX")
trap 'rm -rf "$ST" "${TMPOUT:-}"' EXIT
mkdir -p "$ST"/{bin,sbin,dev,proc,sys,tmp,run,root,etc,host,usr/bin,usr/sbin} "$ST/lib/modules/$KVER"
install -m 0755 "$BB" "$ST/bin/busybox"
ln -s busybox "$ST/bin/sh"
install -m 0755 "$INIT" "$ST/init"
# The kernel opens /dev/console before /init runs and before anything mounts
# devtmpfs, so the node has to be in the image.
mknod -m 600 "$ST/dev/console" c 5 1
mknod -m 666 "$ST/dev/null" c 1 3

# ---- modules and their closure (depends= of each module's .modinfo) -------------
declare -A MODPATH=() DONE=()
if (( ${#MODS[@]} )); then
    while IFS= read -r f; do
        n=${f##*/}; n=${n%%.ko*}; MODPATH[${n//-/_}]=$f
    done < <(find "$KMODDIR/kernel" -name '*.ko*')
fi
add_module() {
    local key=${1//-/_} src rel dst dep
    [[ -z ${DONE[$key]:-} ]] || return 0
    DONE[$key]=1
    src=${MODPATH[$key]:-}
    if [[ -z $src ]]; then
        # Built into the kernel (then modprobe in the guest is a no-op) or absent.
        grep -q "/${1//_/[-_]}\.ko$" "$KMODDIR/modules.builtin" 2>/dev/null ||
            echo "mkinitramfs: module $1 not found in $KVER (neither loadable nor built in)" >&2
        return 0
    fi
    rel=${src#"$KMODDIR"/}
    dst=$ST/lib/modules/$KVER/${rel%.*}
    [[ $dst == *.ko ]] || dst=$ST/lib/modules/$KVER/$rel
    mkdir -p "${dst%/*}"
    case $src in
        *.ko.xz)  "$BB" xz -dc "$src" >"$dst" ;;
        *.ko.gz)  gzip -dc "$src" >"$dst" ;;
        *.ko.zst) zstd -qdc "$src" >"$dst" ;;
        *.ko)     cp "$src" "$dst" ;;
        *) echo "mkinitramfs: cannot unpack $src" >&2; return 1 ;;
    esac
    for dep in $("$BB" strings "$dst" | sed -n 's/^depends=//p' | head -n 1 | tr ',' ' '); do
        add_module "$dep"
    done
}
for m in "${MODS[@]}"; do add_module "$m"; done
cp "$KMODDIR"/modules.builtin* "$ST/lib/modules/$KVER/" 2>/dev/null || true
"$BB" depmod -b "$ST" "$KVER"

for spec in "${EXTRA[@]}"; do
    src=${spec%%:*} dst=${spec#*:}
    mkdir -p "$ST/$(dirname "$dst")"
    cp -a "$src" "$ST/$dst"
done

mkdir -p "$(dirname "$OUT")"
# Written aside in the same directory and renamed: nobody ever sees half an image.
TMPOUT=$OUT.$$.tmp
(cd "$ST" && find . | LC_ALL=C sort | "$BB" cpio -o -H newc -R 0:0 2>/dev/null) | gzip -n -1 >"$TMPOUT"
mv "$TMPOUT" "$OUT"
echo "mkinitramfs: $OUT ($(du -h "$OUT" | cut -f1)); modules: ${!DONE[*]}"
