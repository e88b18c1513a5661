#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
#
# provision-qemu.sh [DEST]
#
# Provision the private QEMU that every guest suite uses, on a Debian 12 (bookworm)
# amd64 host, as root, without installing anything into the host system:
#
#   * QEMU >= 10.1 for x86_64 and aarch64 (qemu-system-x86 and qemu-system-arm from
#     trixie-backports: the first Debian QEMU with the vfio-user client) plus their
#     whole library and firmware closure, unpacked into DEST/qemu/root and started
#     through that root's own dynamic loader (wrappers: DEST/bin/qemu-system-x86_64,
#     DEST/bin/qemu-system-aarch64);
#   * a Debian trixie guest kernel and its modules (DEST/kernel/amd64) and trixie's
#     arm64 kernel image (DEST/kernel/arm64, for the aarch64 smoke boot);
#   * busybox-static for amd64 (DEST/bin/busybox: the guests' userland, and on the
#     host the cpio/xz/depmod of mkinitramfs.sh) and arm64 (DEST/bin/busybox-arm64).
#
# Firmware is found, not listed: every folder of the unpacked packages that holds
# BIOS/ROM images becomes a -L of the wrappers, and absolute symlinks inside the root
# are redirected into it, so a package reshuffle in the suite cannot send QEMU to the
# host's files. The cache is marked ready only after a smoke boot of each QEMU (kernel +
# busybox initramfs up to a marker line) with the host's QEMU folders hidden (a private
# mount namespace), and `-device help` works. The versions taken are recorded in
# DEST/manifest.txt and printed.
#
# DEST defaults to ${VFU_CACHE:-$HOME/.cache/vfu-platform}. A second call with a ready
# cache is instant; a cache from an older provisioning (another FORMAT) is rebuilt.
#
# Result: DEST/env.sh (KEY='value' lines, read by the test benches), DEST/manifest.txt,
# DEST/provision.log (everything the tools printed).
#
# Knobs (environment):
#   VFU_KERNEL_FLAVOUR  guest kernel flavour (default amd64; see "kernel flavour" below)
#   VFU_QEMU_SUITE      suite of qemu-system-x86/-arm (default trixie-backports)
#   VFU_GUEST_SUITE     suite of the kernels and busybox (default trixie)
#   VFU_DEB_MIRROR      Debian archive URI (default: the one this machine's apt uses)
#   VFU_FORCE=1         redo every stage
#
# Kernel flavour: the x86 guest mounts the host's root over virtio-9p and runs the
# host's Python from it, so the kernel must have 9p, 9pnet_virtio and virtio-pci.
# trixie's cloud-amd64 kernel is built without 9p, so the generic amd64 flavour is the
# default; the stage checks the kernel config and refuses a flavour that lacks it.
set -euo pipefail

# Bump when the layout or the checks change: a cache of another format is rebuilt.
FORMAT=2
# The last versions this project was seen to work with; a different one is reported.
KNOWN_GOOD_QEMU='1:11.1.3+ds-2~bpo13+1'

VFU_CACHE=${VFU_CACHE:-$HOME/.cache/vfu-platform}
DEST=${1:-$VFU_CACHE}
KFLAVOUR=${VFU_KERNEL_FLAVOUR:-amd64}
QSUITE=${VFU_QEMU_SUITE:-trixie-backports}
GSUITE=${VFU_GUEST_SUITE:-trixie}
BASE_SUITE=${GSUITE%%-*}
HERE=$(cd "$(dirname "$0")" && pwd)

mkdir -p "$DEST"
DEST=$(cd "$DEST" && pwd)
ENVF=$DEST/env.sh
MANIFEST=$DEST/manifest.txt
LOG=$DEST/provision.log
APTD=$DEST/apt
QROOT=$DEST/qemu/root
KDIR=$DEST/kernel/$KFLAVOUR
KDIR_ARM=$DEST/kernel/arm64
BIN=$DEST/bin
READY=$DEST/.ready-$FORMAT-$QSUITE-$GSUITE-$KFLAVOUR

T0=$EPOCHREALTIME
STEP_T0=$T0
secs() { awk -v a="$EPOCHREALTIME" -v b="$1" 'BEGIN { printf "%.1f", a - b }'; }
log() { printf 'provision-qemu [%6ss] %s\n' "$(secs "$T0")" "$*" | tee -a "$LOG" >&2; }
step() { STEP_T0=$EPOCHREALTIME; log "$*"; }
step_done() { log "  done in $(secs "$STEP_T0") s${1:+: $1}"; }
die() {  # die REASON [DETAIL...]: one line that says it all, details below it
    local reason=$1; shift
    {
        printf 'provision-qemu: FAILED at step "%s": %s (log: %s)\n' "${CURRENT_STEP:-start}" "$reason" "$LOG"
        (( $# == 0 )) || printf '  %s\n' "$@"
    } | tee -a "$LOG" >&2
    exit 1
}
size_of() { du -ch "$@" 2>/dev/null | tail -n 1 | cut -f1; }

print_summary() {
    # shellcheck disable=SC1090
    . "$ENVF"
    cat >&2 <<EOF
vfu-platform QEMU bench in $DEST
  qemu     $VFU_QEMU ($VFU_QEMU_VERSION)
  aarch64  $VFU_QEMU_AARCH64
  kernel   $VFU_KERNEL ($VFU_KVER, flavour $VFU_KERNEL_FLAVOUR); arm64 $VFU_KERNEL_ARM64
  versions $MANIFEST
EOF
}

ready() {
    [[ -z ${VFU_FORCE:-} && -f $READY && -f $ENVF && -f $MANIFEST ]] || return 1
    # shellcheck disable=SC1090
    . "$ENVF"
    local f
    for f in "$VFU_QEMU" "$VFU_QEMU_AARCH64" "$VFU_KERNEL" "$VFU_KERNEL_ARM64" "$VFU_BUSYBOX" \
             "$VFU_BUSYBOX_ARM64"; do
        [[ -e $f ]] || return 1
    done
}
if ready; then
    print_summary
    exit 0
fi

CURRENT_STEP="host checks"
[[ $(id -u) == 0 ]] || die "run as root (the guest initramfs needs device nodes, QEMU reads the host root)"
[[ $(dpkg --print-architecture) == amd64 ]] || die "amd64 hosts only"
for t in apt-get apt-cache dpkg-deb awk flock gzip; do
    command -v "$t" >/dev/null || die "missing host tool $t (Debian package: see README)"
done
# One provisioner at a time per cache (tests and the demo may start together);
# whoever waited re-checks what is left to do.
exec 9>"$DEST/.lock"
flock 9
if ready; then
    print_summary
    exit 0
fi
: >>"$LOG"
rm -f "$DEST"/.ready-*
log "provisioning into $DEST (format $FORMAT; about 250 MB to download on a fresh machine)"

# ---- the Debian archive this machine's apt already uses ------------------------
CURRENT_STEP="find the Debian archive"
MIRROR=${VFU_DEB_MIRROR:-}
if [[ -z $MIRROR ]]; then
    CODENAME=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    MIRROR=$(python3 "$HERE/kernel/debian-archive.py" "$CODENAME" 2>/dev/null || true)
fi
[[ -n $MIRROR ]] || die "no Debian archive in this machine's apt configuration (/etc/apt/sources.list*); set VFU_DEB_MIRROR"

# ---- private apt state -----------------------------------------------------------
# Own sources, lists, archives and an EMPTY dpkg status (so apt resolves the full
# closure, as for an empty system); the host's apt.conf.d snippets (proxy, retries)
# still apply. Nothing here touches the host's dpkg database.
mkdir -p "$APTD/lists/partial" "$APTD/archives/partial" "$APTD/cache" "$APTD/debs"
{
    printf 'deb [arch=amd64,arm64] %s %s main\n' "$MIRROR" "$BASE_SUITE" "$MIRROR" "$QSUITE"
    if [[ $GSUITE != "$BASE_SUITE" ]]; then printf 'deb [arch=amd64,arm64] %s %s main\n' "$MIRROR" "$GSUITE"; fi
} | sort -u >"$APTD/sources.list"
: >"$APTD/status"
APTO=(-q -o Dir::Etc::SourceList="$APTD/sources.list" -o Dir::Etc::SourceParts=/dev/null
      -o Dir::Etc::Preferences=/dev/null -o Dir::Etc::PreferencesParts=/dev/null
      -o Dir::State::Lists="$APTD/lists" -o Dir::State::status="$APTD/status"
      -o Dir::Cache="$APTD/cache" -o Dir::Cache::archives="$APTD/archives"
      -o APT::Install-Recommends=false -o APT::Install-Suggests=false
      -o APT::Sandbox::User=root -o APT::Architecture=amd64 -o APT::Architectures::=amd64
      -o APT::Architectures::=arm64 -o Acquire::Languages=none)

CURRENT_STEP="apt update"
step "apt update: $BASE_SUITE, $QSUITE from the host's archive (private lists in $APTD/lists)"
apt-get "${APTO[@]}" --error-on=any update >>"$LOG" 2>&1 ||
    die "apt update of $BASE_SUITE/$QSUITE from $MIRROR failed (network? archive?)"
step_done

# version_of PACKAGE[:ARCH] SUITE: the candidate version in that suite
version_of() {
    apt-cache "${APTO[@]}" show "$1/$2" 2>>"$LOG" | awk '/^Version:/ { print $2; exit }'
}

# download DIR PACKAGE/SUITE...: apt-get download into DIR, with size and time
download() {
    local dir=$1; shift
    mkdir -p "$dir"
    (cd "$dir" && apt-get "${APTO[@]}" download "$@" >>"$LOG" 2>&1) || die "download of $* failed"
}

# ---- QEMU --------------------------------------------------------------------------
CURRENT_STEP="download QEMU"
QVERSION=$(version_of qemu-system-x86 "$QSUITE")
[[ -n $QVERSION ]] || die "$QSUITE has no qemu-system-x86 (the suite moved?)"
[[ $QVERSION == "$KNOWN_GOOD_QEMU" ]] ||
    log "note: $QSUITE now has qemu-system-x86 $QVERSION; the last version known to work is $KNOWN_GOOD_QEMU"
step "download qemu-system-x86 and qemu-system-arm $QVERSION with their dependency closure"
rm -f "$APTD"/archives/*.deb
# -t: every package that has a version in $QSUITE comes from there (qemu-system-common,
# -data, seabios, ipxe… must move together with qemu-system-x86/-arm).
apt-get "${APTO[@]}" -y -t "$QSUITE" --download-only install qemu-system-x86 qemu-system-arm >>"$LOG" 2>&1 ||
    die "apt could not resolve or download qemu-system-x86 + qemu-system-arm from $QSUITE"
shopt -s nullglob
debs=("$APTD"/archives/*.deb)
shopt -u nullglob
(( ${#debs[@]} > 0 )) || die "apt downloaded nothing for QEMU"
step_done "${#debs[@]} packages, $(size_of "${debs[@]}")"

CURRENT_STEP="unpack QEMU"
step "unpack ${#debs[@]} packages into $QROOT"
rm -rf "$QROOT"
mkdir -p "$QROOT" "$BIN"
: >"$MANIFEST.new"
for d in "${debs[@]}"; do
    dpkg-deb -x "$d" "$QROOT"
    dpkg-deb -W --showformat='${Package} ${Version} ${Architecture}\n' "$d" >>"$MANIFEST.new"
done
# A symlink with an absolute target points at the host (Debian links, e.g., firmware
# into /usr/share/seabios): redirect it into the root, or QEMU reads the host's files.
while IFS= read -r -d '' link; do
    target=$(readlink "$link")
    [[ $target == /* ]] || continue
    ln -sfn "$QROOT$target" "$link"
done < <(find "$QROOT" -type l -print0)
LDSO=$QROOT/usr/lib64/ld-linux-x86-64.so.2
LIBDIR=$QROOT/usr/lib/x86_64-linux-gnu
for b in qemu-system-x86_64 qemu-system-aarch64; do
    [[ -x $QROOT/usr/bin/$b ]] || die "the unpacked packages have no usr/bin/$b"
    # Every shared object must resolve inside the private root, never on the host.
    outside=$("$LDSO" --library-path "$LIBDIR" --list "$QROOT/usr/bin/$b" | grep -v -e "$QROOT" -e linux-vdso || true)
    [[ -z $outside ]] || die "libraries of $b resolved outside $QROOT:" "$outside"
done
# Firmware folders: every directory of the root (data and lib trees) that holds BIOS,
# ROM, flash or device-tree images, the QEMU data directory first.
mapfile -t FWDIRS < <(
    {
        echo "$QROOT/usr/share/qemu"
        find -L "$QROOT/usr/share" "$QROOT/usr/lib" -type f \
             \( -name '*.bin' -o -name '*.rom' -o -name '*.fd' -o -name '*.dtb' -o -name '*.img' \) \
             -printf '%h\n' 2>/dev/null | grep -v -e '/doc/' -e '/usr/lib/modules/' | LC_ALL=C sort -u
    } | awk '!seen[$0]++'
)
[[ -e $QROOT/usr/share/qemu/bios-256k.bin ]] || [[ -n $(find -L "${FWDIRS[@]}" -maxdepth 1 -name bios-256k.bin 2>/dev/null) ]] ||
    die "no bios-256k.bin in any unpacked package (x86 QEMU cannot boot without it)"
step_done "$(du -sh "$QROOT" | cut -f1); firmware folders: ${FWDIRS[*]#"$QROOT"}"

# The wrappers: trixie's QEMU through trixie's loader and libraries. /proc/self/exe is
# the loader, so QEMU cannot find its data directory by itself (-L, one per firmware
# folder); its compiled-in module directory might hold a host QEMU's modules
# (QEMU_MODULE_DIR is searched first).
write_wrapper() {
    local name=$1 l="" d
    for d in "${FWDIRS[@]}"; do l+=" -L \"\$R${d#"$QROOT"}\""; done
    cat >"$BIN/$name" <<EOF
#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# Generated by vfu-platform scripts/provision-qemu.sh: QEMU $QVERSION from $QSUITE,
# its own loader, libraries, modules and firmware folders.
R='$QROOT'
QEMU_MODULE_DIR="\$R/usr/lib/x86_64-linux-gnu/qemu"
GIO_MODULE_DIR="\$R/usr/lib/x86_64-linux-gnu/gio/modules"
export QEMU_MODULE_DIR GIO_MODULE_DIR
exec "\$R/usr/lib64/ld-linux-x86-64.so.2" --library-path "\$R/usr/lib/x86_64-linux-gnu" \\
     "\$R/usr/bin/$name"$l "\$@"
EOF
    chmod 0755 "$BIN/$name"
}
write_wrapper qemu-system-x86_64
write_wrapper qemu-system-aarch64
QVER=$("$BIN/qemu-system-x86_64" --version | head -n 1)
[[ -n $QVER ]] || die "the private qemu-system-x86_64 does not start (see $LOG)"
rm -f "$APTD"/archives/*.deb

# ---- guest kernels -------------------------------------------------------------------
# Kernel options the x86 guest needs (=y or =m).
KCONFIG_NEEDED=(CONFIG_VIRTIO_PCI CONFIG_NET_9P CONFIG_NET_9P_VIRTIO CONFIG_9P_FS CONFIG_UIO
                CONFIG_UIO_PCI_GENERIC CONFIG_DEVTMPFS CONFIG_SERIAL_8250_CONSOLE CONFIG_HOTPLUG_PCI_PCIE)
# kernel_package FLAVOUR ARCH: the versioned image package linux-image-FLAVOUR depends on
kernel_package() {
    apt-cache "${APTO[@]}" depends "linux-image-$1:$2/$GSUITE" 2>>"$LOG" |
        awk '$1 == "Depends:" { sub(/:.*/, "", $2); if ($2 ~ /^linux-image-[0-9]/) { print $2; exit } }'
}

CURRENT_STEP="download the amd64 guest kernel"
KPKG=$(kernel_package "$KFLAVOUR" amd64)
[[ -n $KPKG ]] || die "cannot resolve linux-image-$KFLAVOUR in $GSUITE"
step "download $KPKG from $GSUITE"
rm -f "$APTD"/debs/linux-image-*.deb
download "$APTD/debs" "$KPKG:amd64/$GSUITE"
KDEB=$(ls "$APTD"/debs/linux-image-*_amd64.deb)
step_done "$(size_of "$KDEB")"
CURRENT_STEP="unpack the amd64 guest kernel"
rm -rf "$KDIR"
mkdir -p "$KDIR"
dpkg-deb -x "$KDEB" "$KDIR/root"
dpkg-deb -W --showformat='${Package} ${Version} ${Architecture}\n' "$KDEB" >>"$MANIFEST.new"
VMLINUZ=$(ls "$KDIR"/root/boot/vmlinuz-*)
KVER=${VMLINUZ##*/vmlinuz-}
KCONFIG=$KDIR/root/boot/config-$KVER
for opt in "${KCONFIG_NEEDED[@]}"; do
    grep -qE "^$opt=(y|m)$" "$KCONFIG" ||
        die "kernel $KVER lacks $opt (choose another VFU_KERNEL_FLAVOUR; amd64 has everything)"
done
# Keep the tree small: drop the parts of the module tree the guest never loads.
KMODDIR=$KDIR/root/usr/lib/modules/$KVER
[[ -d $KMODDIR ]] || KMODDIR=$KDIR/root/lib/modules/$KVER
rm -rf "$KMODDIR/kernel/drivers/gpu" "$KMODDIR/kernel/drivers/net/wireless" \
       "$KMODDIR/kernel/drivers/media" "$KMODDIR/kernel/sound" "$KMODDIR/kernel/drivers/infiniband"
ln -sfn "root/boot/vmlinuz-$KVER" "$KDIR/vmlinuz"
rm -f "$KDEB"

CURRENT_STEP="download the arm64 guest kernel"
KPKG_ARM=$(kernel_package arm64 arm64)
[[ -n $KPKG_ARM ]] || die "cannot resolve linux-image-arm64 in $GSUITE"
step "download $KPKG_ARM (arm64) from $GSUITE (its image only, for the aarch64 smoke boot)"
rm -f "$APTD"/debs/linux-image-*_arm64.deb
download "$APTD/debs" "$KPKG_ARM:arm64/$GSUITE"
KDEB_ARM=$(ls "$APTD"/debs/linux-image-*_arm64.deb)
step_done "$(size_of "$KDEB_ARM")"
rm -rf "$KDIR_ARM"
mkdir -p "$KDIR_ARM"
dpkg-deb --fsys-tarfile "$KDEB_ARM" | tar -x -C "$KDIR_ARM" --wildcards './boot/vmlinuz-*'
dpkg-deb -W --showformat='${Package} ${Version} ${Architecture}\n' "$KDEB_ARM" >>"$MANIFEST.new"
VMLINUZ_ARM=$(ls "$KDIR_ARM"/boot/vmlinuz-*)
ln -sfn "boot/${VMLINUZ_ARM##*/}" "$KDIR_ARM/vmlinuz"
rm -f "$KDEB_ARM"

# ---- busybox -------------------------------------------------------------------------
CURRENT_STEP="download busybox"
step "download busybox-static (amd64, arm64) from $GSUITE"
rm -f "$APTD"/debs/busybox-static_*.deb
download "$APTD/debs" "busybox-static:amd64/$GSUITE" "busybox-static:arm64/$GSUITE"
step_done "$(size_of "$APTD"/debs/busybox-static_*.deb)"
for a in amd64 arm64; do
    deb=$(ls "$APTD"/debs/busybox-static_*_"$a".deb)
    tmp=$(mktemp -d "$DEST/.bb.XXXXXX")
    dpkg-deb -x "$deb" "$tmp"
    dst=$BIN/busybox
    [[ $a == amd64 ]] || dst=$BIN/busybox-$a
    install -m 0755 "$tmp/usr/bin/busybox" "$dst"
    rm -rf "$tmp"
    dpkg-deb -W --showformat='${Package} ${Version} ${Architecture}\n' "$deb" >>"$MANIFEST.new"
    rm -f "$deb"
done

cat >"$ENVF.new" <<EOF
# SPDX-License-Identifier: BSD-3-Clause
# Generated by vfu-platform scripts/provision-qemu.sh; plain KEY='value' lines.
VFU_BENCH_DIR='$DEST'
VFU_QEMU='$BIN/qemu-system-x86_64'
VFU_QEMU_AARCH64='$BIN/qemu-system-aarch64'
VFU_QEMU_VERSION='$QVER'
VFU_QEMU_PACKAGE='$QVERSION'
VFU_BUSYBOX='$BIN/busybox'
VFU_BUSYBOX_ARM64='$BIN/busybox-arm64'
VFU_KERNEL='$KDIR/vmlinuz'
VFU_KVER='$KVER'
VFU_KMODDIR='$KMODDIR'
VFU_KERNEL_FLAVOUR='$KFLAVOUR'
VFU_KERNEL_ARM64='$KDIR_ARM/vmlinuz'
EOF
mv "$ENVF.new" "$ENVF"
LC_ALL=C sort -u "$MANIFEST.new" >"$MANIFEST"
rm -f "$MANIFEST.new"

# ---- smoke boots: prove what was made, with the host's QEMU folders out of reach ------
CURRENT_STEP="smoke boot"
step "smoke boot of both QEMUs (TCG) with the host's QEMU folders hidden"
SMOKE_OUT=$DEST/smoke.log
if ! bash "$HERE/qemu-smoke.sh" "$ENVF" >"$SMOKE_OUT" 2>&1; then
    cat "$SMOKE_OUT" >>"$LOG"
    die "the provisioned QEMU cannot boot a guest on its own files ($(grep -m1 'smoke: FAIL' "$SMOKE_OUT" || echo 'see smoke.log'))" \
        "last lines of $SMOKE_OUT:" "$(tail -n 12 "$SMOKE_OUT")"
fi
cat "$SMOKE_OUT" >>"$LOG"
step_done "$(grep -c '^smoke: ok' "$SMOKE_OUT") checks passed ($SMOKE_OUT)"

touch "$READY"
log "ready: $(du -sh "$DEST" | cut -f1) in $DEST, $(secs "$T0") s in all"
print_summary
