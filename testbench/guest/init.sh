#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
#
# /init of the vfu-platform test guest (busybox ash, PID 1).
#
# Mounts the host's root read-only over virtio-9p (mount tag "hostroot") at /host,
# gives it /proc, /sys, /dev and a writable /run (TMPDIR=/run/tmp), and runs one check program
# with the HOST's Python chrooted into /host, so the checkout and its venv are used
# as they are. Prints the program's output on the console, then powers off.
#
# Kernel command line (the kernel keeps dotted words away from /init's environment,
# so they are read from /proc/cmdline):
#   vfu.run=MODULE        Python module to run with -m (required)
#   vfu.python=PATH       interpreter, a host path (required)
#   vfu.src=DIR           host directory put first on PYTHONPATH (the checkout)
#   vfu.modules=a,b       guest kernel modules to load first (besides the 9p stack)
# Console markers for the host harness: "VFU-INIT ...", "VFU-EXIT rc=N".
/bin/busybox mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
echo "VFU-INIT uptime=$(cut -d' ' -f1 /proc/uptime) kernel=$(uname -r)"

RUN= PY= SRC= MODS=
for w in $(cat /proc/cmdline); do
    case $w in
        vfu.run=*) RUN=${w#vfu.run=} ;;
        vfu.python=*) PY=${w#vfu.python=} ;;
        vfu.src=*) SRC=${w#vfu.src=} ;;
        vfu.modules=*) MODS=${w#vfu.modules=} ;;
    esac
done

fail() {
    echo "RESULT FAIL init: $*"
    echo "--- dmesg tail"
    dmesg | tail -n 30
    finish 1
}
finish() {
    echo "VFU-EXIT rc=$1 uptime=$(cut -d' ' -f1 /proc/uptime)"
    sync
    poweroff -f
    sleep 5
}

for m in 9pnet_virtio 9p $(echo "$MODS" | tr ',' ' '); do
    modprobe "$m" || echo "VFU-WARN modprobe $m failed"
done
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot /host ||
    fail "9p mount of the host root failed"
mount -t proc proc /host/proc &&
mount -t sysfs sysfs /host/sys &&
mount -t devtmpfs devtmpfs /host/dev &&
mount -t tmpfs tmpfs /host/run &&
mkdir -m 1777 /host/run/tmp || fail "mounts inside /host failed"
# Never a tmpfs over /host/tmp: the checkout and its venv may live under the host's /tmp
# (CI clones there); the program's scratch space is /run/tmp (TMPDIR) instead.
[ -n "$RUN" ] && [ -n "$PY" ] || fail "vfu.run= and vfu.python= are required"
# (an absolute symlink, as a venv's python is, only resolves inside the chroot)
[ -e "/host$PY" ] || [ -L "/host$PY" ] || fail "no interpreter $PY in the host root"

echo "VFU-RUN $RUN uptime=$(cut -d' ' -f1 /proc/uptime)"
HOME=/root TMPDIR=/run/tmp PYTHONPATH=$SRC PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    chroot /host "$PY" -B -m "$RUN"
finish $?
