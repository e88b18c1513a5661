#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
#
# provision-qemu.sh [DEST]
#
# Provision what the end-to-end guest tests need, on a Debian 12 (bookworm) amd64
# host, as root, without installing anything into the host system:
#
#   * QEMU >= 10.1 (qemu-system-x86 from trixie-backports: the first Debian QEMU
#     with the vfio-user client, -device vfio-user-pci) plus its whole library
#     closure, unpacked into DEST/qemu/root and started through that root's own
#     dynamic loader (wrapper: DEST/bin/qemu-system-x86_64);
#   * a Debian trixie guest kernel and its modules (DEST/kernel);
#   * busybox-static (DEST/bin/busybox): the guest's userland, and on the host the
#     cpio/xz/depmod of mkinitramfs.sh.
#
# DEST defaults to ${VFU_CACHE:-$HOME/.cache/vfu-platform}. Each stage is stamped
# when complete and skipped when its stamp and its files are present, so a second
# call is instant; an interrupted call resumes with the missing stages.
#
# Result: DEST/env.sh (shell assignments, also read by vfu_platform.testbench.qemu)
# and DEST/provision.log.
#
# Knobs (environment):
#   VFU_KERNEL_FLAVOUR  guest kernel flavour (default amd64; see "kernel flavour" below)
#   VFU_QEMU_SUITE      suite of qemu-system-x86 (default trixie-backports)
#   VFU_GUEST_SUITE     suite of the kernel and busybox (default trixie)
#   VFU_DEB_MIRROR      Debian archive URI (default: the one this machine's apt uses)
#   VFU_KEEP_DEBS=1     keep the downloaded .deb files
#   VFU_FORCE=1         redo every stage
#
# Kernel flavour: the guest mounts the host's root over virtio-9p and runs the
# host's Python from it, so the kernel must have 9p, 9pnet_virtio and virtio-pci.
# trixie's cloud-amd64 kernel is a third of the size but is built without 9p
# (CONFIG_NET_9P is not set), so the generic amd64 flavour is the default; the
# stage checks the kernel config and refuses a flavour that lacks what we need.
set -euo pipefail

VFU_CACHE=${VFU_CACHE:-$HOME/.cache/vfu-platform}
DEST=${1:-$VFU_CACHE}
KFLAVOUR=${VFU_KERNEL_FLAVOUR:-amd64}
QSUITE=${VFU_QEMU_SUITE:-trixie-backports}
GSUITE=${VFU_GUEST_SUITE:-trixie}
BASE_SUITE=${GSUITE%%-*}

mkdir -p "$DEST"
DEST=$(cd "$DEST" && pwd)
ENVF=$DEST/env.sh
LOG=$DEST/provision.log
APTD=$DEST/apt
QROOT=$DEST/qemu/root
KDIR=$DEST/kernel/$KFLAVOUR
BIN=$DEST/bin

STAMP_QEMU=$DEST/qemu/.done-$QSUITE
STAMP_KERNEL=$KDIR/.done-$GSUITE
STAMP_BB=$BIN/.busybox-done-$GSUITE

T0=$EPOCHREALTIME
elapsed() { awk -v a="$EPOCHREALTIME" -v b="$T0" 'BEGIN { printf "%.1f", a - b }'; }
log() { printf '[%6ss] %s\n' "$(elapsed)" "$*" | tee -a "$LOG" >&2; }
die() { log "ERROR: $*"; exit 1; }

stage_done() {  # stage_done STAMP FILE... : stamp present and every file still there
    local s=$1; shift
    [[ -z ${VFU_FORCE:-} && -f $s ]] || return 1
    local f; for f in "$@"; do [[ -e $f ]] || return 1; done
}

print_summary() {
    # shellcheck disable=SC1090
    . "$ENVF"
    cat <<EOF
vfu-platform QEMU bench in $DEST ($(elapsed) s)
  qemu     $VFU_QEMU  ($VFU_QEMU_VERSION)
  kernel   $VFU_KERNEL  ($VFU_KVER, flavour $VFU_KERNEL_FLAVOUR)
  modules  $VFU_KMODDIR
  busybox  $VFU_BUSYBOX
  env      $ENVF
EOF
}

# ---- fast path: everything already there ---------------------------------------
KVMLINUZ_LINK=$KDIR/vmlinuz
all_done() {
    [[ -f $ENVF ]] && stage_done "$STAMP_QEMU" "$BIN/qemu-system-x86_64" "$QROOT/usr/bin/qemu-system-x86_64" &&
        stage_done "$STAMP_KERNEL" "$KVMLINUZ_LINK" && stage_done "$STAMP_BB" "$BIN/busybox" &&
        grep -q "^VFU_KERNEL_FLAVOUR='$KFLAVOUR'$" "$ENVF"
}
if all_done; then
    print_summary
    exit 0
fi

[[ $(id -u) == 0 ]] || die "run as root (the guest initramfs needs device nodes, QEMU reads the host root)"
[[ $(dpkg --print-architecture) == amd64 ]] || die "amd64 hosts only"
for t in apt-get apt-cache dpkg-deb awk flock; do command -v "$t" >/dev/null || die "missing host tool $t"; done
# One provisioner at a time per cache (tests and the demo may start together);
# whoever waited re-checks what is left to do.
exec 9>"$DEST/.lock"
flock 9
if all_done; then
    print_summary
    exit 0
fi
: >>"$LOG"
log "provisioning into $DEST"

# ---- the Debian archive this machine's apt already uses ------------------------
# Prints the first URI whose entry lists suite $1, from one-line (.list) and deb822
# (.sources) files; disabled entries and files with other suffixes are ignored.
apt_archive_uri() {
    local want=$1 f
    {
        for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
            [[ -r $f ]] || continue
            awk -v want="$want" '
                { sub(/#.*/, ""); gsub(/\[[^]]*\]/, "") }
                $1 == "deb" && $3 == want { print $2; exit }' "$f"
        done
        for f in /etc/apt/sources.list.d/*.sources; do
            [[ -r $f ]] || continue
            awk -v want="$want" '
                function flush() {
                    if (types ~ /(^| )deb( |$)/ && enabled != "no" && (" " suites " ") ~ (" " want " "))
                        { split(uris, u, " "); if (u[1] != "") { print u[1]; found = 1; exit } }
                    types = ""; suites = ""; uris = ""; enabled = ""
                }
                /^[ \t]*#/ { next }
                /^[ \t]*$/ { flush(); next }
                {
                    key = $0; sub(/:.*/, "", key); val = $0; sub(/^[^:]*:[ \t]*/, "", val)
                    key = tolower(key)
                    if (key == "types") types = val
                    else if (key == "suites") suites = val
                    else if (key == "uris") uris = val
                    else if (key == "enabled") enabled = tolower(val)
                }
                END { if (!found) flush() }' "$f"
        done
    } | head -n 1
}

MIRROR=${VFU_DEB_MIRROR:-}
if [[ -z $MIRROR ]]; then
    CODENAME=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    MIRROR=$(apt_archive_uri "$CODENAME")
fi
[[ -n $MIRROR ]] || die "no Debian archive found in this machine's apt configuration; set VFU_DEB_MIRROR"

# ---- private apt state -----------------------------------------------------------
# Own sources, lists, archives and an EMPTY dpkg status (so apt resolves the full
# closure, as for an empty system); the host's apt.conf.d snippets (proxy, retries)
# still apply. Nothing here touches the host's dpkg database.
mkdir -p "$APTD/lists/partial" "$APTD/archives/partial" "$APTD/cache" "$APTD/debs"
printf 'deb %s %s main\n' "$MIRROR" "$BASE_SUITE" "$MIRROR" "$QSUITE" | sort -u >"$APTD/sources.list.new"
[[ $GSUITE != "$BASE_SUITE" ]] && printf 'deb %s %s main\n' "$MIRROR" "$GSUITE" >>"$APTD/sources.list.new"
mv "$APTD/sources.list.new" "$APTD/sources.list"
: >"$APTD/status"
APTO=(-q -o Dir::Etc::SourceList="$APTD/sources.list" -o Dir::Etc::SourceParts=/dev/null
      -o Dir::Etc::Preferences=/dev/null -o Dir::Etc::PreferencesParts=/dev/null
      -o Dir::State::Lists="$APTD/lists" -o Dir::State::status="$APTD/status"
      -o Dir::Cache="$APTD/cache" -o Dir::Cache::archives="$APTD/archives"
      -o APT::Install-Recommends=false -o APT::Install-Suggests=false
      -o APT::Sandbox::User=root -o APT::Architectures=amd64 -o Acquire::Languages=none)

log "apt update: $BASE_SUITE, $QSUITE from the host's archive (private lists in $APTD/lists)"
apt-get "${APTO[@]}" update >>"$LOG" 2>&1 || die "apt update failed (see $LOG)"

# ---- QEMU --------------------------------------------------------------------------
if ! stage_done "$STAMP_QEMU" "$BIN/qemu-system-x86_64" "$QROOT/usr/bin/qemu-system-x86_64"; then
    log "download qemu-system-x86 from $QSUITE with its full dependency closure"
    # -t: every package that has a version in $QSUITE comes from there; qemu-system-common,
    # qemu-system-data and seabios must move together with qemu-system-x86.
    apt-get "${APTO[@]}" -y -t "$QSUITE" --download-only install qemu-system-x86 >>"$LOG" 2>&1 ||
        die "download of qemu-system-x86 failed (see $LOG)"
    shopt -s nullglob
    debs=("$APTD"/archives/*.deb)
    shopt -u nullglob
    (( ${#debs[@]} > 0 )) || die "apt downloaded nothing"
    log "unpack ${#debs[@]} packages ($(du -sh "$APTD/archives" | cut -f1)) into $QROOT"
    rm -rf "$QROOT"
    mkdir -p "$QROOT" "$BIN"
    for d in "${debs[@]}"; do dpkg-deb -x "$d" "$QROOT"; done

    LDSO=$QROOT/usr/lib64/ld-linux-x86-64.so.2
    LIBDIR=$QROOT/usr/lib/x86_64-linux-gnu
    [[ -x $LDSO && -x $QROOT/usr/bin/qemu-system-x86_64 ]] || die "unpacked QEMU root is incomplete"
    # Every shared object must resolve inside the private root, never on the host.
    outside=$("$LDSO" --library-path "$LIBDIR" --list "$QROOT/usr/bin/qemu-system-x86_64" |
              grep -v -e "$QROOT" -e linux-vdso || true)
    [[ -z $outside ]] || die "libraries resolved outside $QROOT: $outside"

    # The wrapper: trixie's QEMU through trixie's loader and libraries. /proc/self/exe is
    # the loader, so QEMU cannot find its data directory by itself (-L); and its compiled-in
    # module directory might hold a host QEMU's modules (QEMU_MODULE_DIR comes first).
    cat >"$BIN/qemu-system-x86_64" <<EOF
#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# Generated by vfu-platform scripts/provision-qemu.sh: QEMU from $QSUITE, own loader and libraries.
R='$QROOT'
QEMU_MODULE_DIR="\$R/usr/lib/x86_64-linux-gnu/qemu"
GIO_MODULE_DIR="\$R/usr/lib/x86_64-linux-gnu/gio/modules"
export QEMU_MODULE_DIR GIO_MODULE_DIR
exec "\$R/usr/lib64/ld-linux-x86-64.so.2" --library-path "\$R/usr/lib/x86_64-linux-gnu" \\
     "\$R/usr/bin/qemu-system-x86_64" -L "\$R/usr/share/qemu" "\$@"
EOF
    chmod 0755 "$BIN/qemu-system-x86_64"
    for dev in vfio-user-pci edu virtio-9p-pci; do
        "$BIN/qemu-system-x86_64" -device "$dev,help" >/dev/null 2>&1 || die "this QEMU has no -device $dev"
    done
    "$BIN/qemu-system-x86_64" --version | head -n 1 >"$DEST/qemu/version"
    [[ -n ${VFU_KEEP_DEBS:-} ]] || rm -f "$APTD"/archives/*.deb
    touch "$STAMP_QEMU"
    log "qemu: $(cat "$DEST/qemu/version")"
else
    log "qemu: present ($(cat "$DEST/qemu/version"))"
fi
QVER=$(cat "$DEST/qemu/version")

# ---- guest kernel --------------------------------------------------------------------
# Kernel options the guest needs (=y or =m).
KCONFIG_NEEDED=(CONFIG_VIRTIO_PCI CONFIG_NET_9P CONFIG_NET_9P_VIRTIO CONFIG_9P_FS CONFIG_UIO
                CONFIG_UIO_PCI_GENERIC CONFIG_DEVTMPFS CONFIG_SERIAL_8250_CONSOLE CONFIG_HOTPLUG_PCI_PCIE)
if ! stage_done "$STAMP_KERNEL" "$KVMLINUZ_LINK"; then
    KPKG=$(apt-cache "${APTO[@]}" depends "linux-image-$KFLAVOUR/$GSUITE" 2>>"$LOG" |
           awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }')
    [[ -n $KPKG ]] || die "cannot resolve linux-image-$KFLAVOUR in $GSUITE"
    log "download $KPKG from $GSUITE (without dependencies)"
    rm -f "$APTD"/debs/linux-image-*.deb
    (cd "$APTD/debs" && apt-get "${APTO[@]}" download "$KPKG/$GSUITE" >>"$LOG" 2>&1) ||
        die "download of $KPKG failed (see $LOG)"
    KDEB=$(ls "$APTD"/debs/linux-image-*.deb)
    log "unpack $KPKG ($(du -h "$KDEB" | cut -f1)) into $KDIR"
    rm -rf "$KDIR"
    mkdir -p "$KDIR"
    dpkg-deb -x "$KDEB" "$KDIR/root"
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
    ln -sfn "root/boot/vmlinuz-$KVER" "$KVMLINUZ_LINK"
    printf '%s\n' "$KVER" >"$KDIR/kver"
    printf '%s\n' "$KMODDIR" >"$KDIR/kmoddir"
    [[ -n ${VFU_KEEP_DEBS:-} ]] || rm -f "$KDEB"
    touch "$STAMP_KERNEL"
    log "kernel: $KVER ($KFLAVOUR); $(grep -E '^CONFIG_(NET_9P|9P_FS|UIO_PCI_GENERIC)=' "$KCONFIG" | tr '\n' ' ')"
else
    log "kernel: present ($(cat "$KDIR/kver"), $KFLAVOUR)"
fi
KVER=$(cat "$KDIR/kver")
KMODDIR=$(cat "$KDIR/kmoddir")

# ---- busybox -------------------------------------------------------------------------
if ! stage_done "$STAMP_BB" "$BIN/busybox"; then
    log "download busybox-static from $GSUITE"
    rm -f "$APTD"/debs/busybox-static_*.deb
    (cd "$APTD/debs" && apt-get "${APTO[@]}" download "busybox-static/$GSUITE" >>"$LOG" 2>&1) ||
        die "download of busybox-static failed (see $LOG)"
    BBDEB=$(ls "$APTD"/debs/busybox-static_*.deb)
    tmp=$(mktemp -d "$DEST/.bb.XXXXXX")
    dpkg-deb -x "$BBDEB" "$tmp"
    mkdir -p "$BIN"
    install -m 0755 "$tmp/usr/bin/busybox" "$BIN/busybox"
    rm -rf "$tmp"
    [[ -n ${VFU_KEEP_DEBS:-} ]] || rm -f "$BBDEB"
    touch "$STAMP_BB"
    log "busybox: $("$BIN/busybox" | head -n 1)"
fi

cat >"$ENVF.new" <<EOF
# SPDX-License-Identifier: BSD-3-Clause
# Generated by vfu-platform scripts/provision-qemu.sh; plain KEY='value' lines.
VFU_BENCH_DIR='$DEST'
VFU_QEMU='$BIN/qemu-system-x86_64'
VFU_QEMU_VERSION='$QVER'
VFU_BUSYBOX='$BIN/busybox'
VFU_KERNEL='$KDIR/vmlinuz'
VFU_KVER='$KVER'
VFU_KMODDIR='$KMODDIR'
VFU_KERNEL_FLAVOUR='$KFLAVOUR'
EOF
mv "$ENVF.new" "$ENVF"
log "done: $(du -sh "$DEST" | cut -f1) in $DEST"
print_summary
