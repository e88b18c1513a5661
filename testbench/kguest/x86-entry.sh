# SPDX-License-Identifier: BSD-3-Clause
# x86-64 kernel-bench guest entry (busybox sh, run by the initramfs /init).
# Loads the stock vfio-pci + type1 modules and runs kguest.edu from the host's
# Python over the read-only 9p root ($HOST).  Binding edu to vfio-pci is left
# to the program: its first check is the error that says how, then it applies it.
# Kernel command line: vfu.repo=CHECKOUT vfu.python=INTERPRETER vfu.out=DIR [vfu.e2e=1]
REPO= PY=
for arg in $(cat /proc/cmdline); do
  case $arg in
    vfu.repo=*) REPO=${arg#vfu.repo=} ;;
    vfu.python=*) PY=${arg#vfu.python=} ;;
  esac
done
modprobe vfio_iommu_type1 || echo "kguest: modprobe vfio_iommu_type1 FAILED"
modprobe vfio_pci || echo "kguest: modprobe vfio_pci FAILED"
echo "kguest: python start at $(cut -d' ' -f1 /proc/uptime)s"
PYTHONDONTWRITEBYTECODE=1 PYTHONPATH=$REPO chroot "$HOST" "$PY" -m testbench.kguest.edu \
  ${OUT:+--json $OUT/kguest-edu.json}
echo "kguest: program rc=$? at $(cut -d' ' -f1 /proc/uptime)s"
dmesg | grep -iE 'vfio|DMAR: DRHD|iommu' | tail -6
