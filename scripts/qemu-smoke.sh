#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
#
# qemu-smoke.sh ENV_FILE
#
# Prove that the QEMUs provision-qemu.sh made work on their own files: in a private
# mount namespace where the host's QEMU folders (data, firmware, modules) are hidden
# under empty tmpfs mounts, each QEMU lists its devices (`-device help`, which loads
# every module) and boots its guest kernel with a busybox initramfs to a marker line
# (x86: q35 through SeaBIOS; aarch64: virt). Prints `smoke: ok …` per check; exit 1 on
# the first failure with what QEMU printed. Without a mount namespace (no privilege)
# it says so and runs with the host folders visible.
set -euo pipefail
ENVF=$1
# shellcheck disable=SC1090
. "$ENVF"
HOST_QEMU_DIRS=(/usr/share/qemu /usr/share/seabios /usr/share/ipxe /usr/lib/ipxe /usr/share/OVMF
                /usr/share/AAVMF /usr/share/qemu-efi-aarch64 /usr/share/edk2 /usr/lib/x86_64-linux-gnu/qemu)
MARK=VFU-SMOKE-OK

if [[ -z ${VFU_SMOKE_INNER:-} ]]; then
    if unshare --mount true 2>/dev/null; then
        exec unshare --mount env VFU_SMOKE_INNER=1 bash "$0" "$@"
    fi
    echo "smoke: note: no private mount namespace (unshare --mount failed): host QEMU folders stay visible"
else
    mount --make-rprivate /
    for d in "${HOST_QEMU_DIRS[@]}"; do
        if [[ -d $d ]]; then
            mount -t tmpfs -o ro,size=4k vfu-hidden "$d"
            echo "smoke: hid the host's $d"
        fi
    done
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/vfu-smoke.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

initramfs() {  # initramfs BUSYBOX OUT: /init prints the marker and powers off
    local bb=$1 out=$2 st
    st=$(mktemp -d "$WORK/root.XXXXXX")
    mkdir -p "$st/bin" "$st/dev" "$st/proc"
    install -m 0755 "$bb" "$st/bin/busybox"
    ln -s busybox "$st/bin/sh"
    mknod -m 600 "$st/dev/console" c 5 1
    printf '#!/bin/sh\n/bin/busybox mount -t proc proc /proc\necho "%s $(/bin/busybox uname -m)"\n/bin/busybox poweroff -f\n' \
        "$MARK" >"$st/init"
    chmod 0755 "$st/init"
    (cd "$st" && find . | LC_ALL=C sort | "$VFU_BUSYBOX" cpio -o -H newc -R 0:0 2>/dev/null) | gzip -n -1 >"$out"
}

check_devices() {  # check_devices QEMU NAME: -device help loads every module
    local out
    out=$("$1" -device help 2>&1) || { echo "smoke: FAIL $2 -device help:"; echo "$out" | tail -n 5; exit 1; }
    grep -q '"vfio-user-pci"' <<<"$out" || { echo "smoke: FAIL $2 has no vfio-user-pci"; exit 1; }
    echo "smoke: ok $2 -device help ($(grep -c '^name ' <<<"$out") devices, vfio-user-pci among them)"
}

boot() {  # boot NAME MACHINE QEMU-ARGS...: "MARK MACHINE" (uname -m) must appear in time
    local name=$1 machine=$2 out t0 rc=0
    shift 2
    t0=$EPOCHREALTIME
    out=$(timeout 300 "$@" </dev/null 2>&1) || rc=$?
    if ! grep -q "$MARK $machine" <<<"$out"; then
        echo "smoke: FAIL $name did not reach its marker (rc=$rc); QEMU and console said:"
        tail -n 20 <<<"$out"
        exit 1
    fi
    echo "smoke: ok $name boots to its marker in $(awk -v a="$EPOCHREALTIME" -v b="$t0" 'BEGIN { printf "%.1f", a - b }') s"
}

initramfs "$VFU_BUSYBOX" "$WORK/amd64.cpio.gz"
initramfs "$VFU_BUSYBOX_ARM64" "$WORK/arm64.cpio.gz"
check_devices "$VFU_QEMU" qemu-system-x86_64
check_devices "$VFU_QEMU_AARCH64" qemu-system-aarch64
boot "x86_64 q35 (SeaBIOS)" x86_64 "$VFU_QEMU" -M q35 -accel tcg -m 256M -smp 1 -nographic -no-reboot -nic none \
    -kernel "$VFU_KERNEL" -initrd "$WORK/amd64.cpio.gz" -append "console=ttyS0 panic=-1 rdinit=/init quiet"
boot "aarch64 virt" aarch64 "$VFU_QEMU_AARCH64" -M virt,gic-version=3 -cpu cortex-a57 -accel tcg -m 256M -smp 1 \
    -nographic -no-reboot -nic none -kernel "$VFU_KERNEL_ARM64" -initrd "$WORK/arm64.cpio.gz" \
    -append "console=ttyAMA0 panic=-1 rdinit=/init quiet"
