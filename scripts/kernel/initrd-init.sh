#!/bin/busybox sh
# SPDX-License-Identifier: BSD-3-Clause
# PID 1 of the kernel-bench initramfs.
#
# Mounts the 9p root (tag hostroot, read-only) at /host and the writable 9p
# share (tag kbout) at /host$OUT, then runs the guest entry script named by
# vfu.run= (a path inside the 9p root) with busybox sh and powers off.  The
# "kguest: init" line is what the harness looks for to tell a guest that never
# booted (retried) from one whose checks failed (not retried).
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
echo "kguest: init at $(cut -d' ' -f1 /proc/uptime)s $(uname -r) $(uname -m)"
RUN= OUT=
for arg in $(cat /proc/cmdline); do
  case $arg in
    vfu.run=*) RUN=${arg#vfu.run=} ;;
    vfu.out=*) OUT=${arg#vfu.out=} ;;
  esac
done
for m in virtio_pci virtio_mmio 9pnet_virtio 9p; do modprobe $m 2>/dev/null; done
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot /host \
  || echo "kguest: 9p root mount FAILED"
mount -t proc proc /host/proc
mount -t sysfs sys /host/sys
mount -t devtmpfs dev /host/dev
mount -t tmpfs run /host/run
[ -n "$OUT" ] && mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 kbout "/host$OUT"
export HOST=/host OUT PATH=/bin:/sbin
if [ -n "$RUN" ]; then
  sh "/host$RUN"
  echo "kguest: entry script rc=$?"
else
  echo "kguest: no vfu.run= given"
fi
echo "kguest: poweroff at $(cut -d' ' -f1 /proc/uptime)s"
sync
poweroff -f
