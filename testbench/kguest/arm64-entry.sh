# SPDX-License-Identifier: BSD-3-Clause
# aarch64 kernel-bench guest entry (busybox sh, run by the initramfs /init).
# Loads the rebuilt vfio (no-IOMMU capable, but *not* enabled here: the
# program's first check is the error that says to enable it), vfio-platform
# without a required reset, and vfio-amba, then runs kguest.platform from the
# arm64 Python root ($HOST, with our package staged in /opt/vfu).
modprobe vfio || echo "kguest: modprobe vfio FAILED"
modprobe vfio_platform reset_required=0 || echo "kguest: modprobe vfio_platform FAILED"
modprobe vfio_amba || echo "kguest: modprobe vfio_amba FAILED"
echo "kguest: python start at $(cut -d' ' -f1 /proc/uptime)s"
PYTHONDONTWRITEBYTECODE=1 PYTHONPATH=/opt/vfu:/opt/vfu/site chroot "$HOST" /usr/bin/python3.11 \
  -m testbench.kguest.platform ${OUT:+--json $OUT/kguest-platform.json}
echo "kguest: program rc=$? at $(cut -d' ' -f1 /proc/uptime)s"
dmesg | grep -iE 'vfio|noiommu' | tail -6
