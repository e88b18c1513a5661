#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
#
# provision-guest-kernel.sh --arch {arm64,amd64} [--image-only]
#
# Provision, from Debian trixie (13), what a guest-side kernel module needs:
#
#   * the stock 6.12 kernel image linux-image-<arch> (resolved to its versioned
#     package) with its modules, unpacked (arm64: the gzip'd vmlinuz is also
#     gunzipped to the raw Image, which QEMU's -kernel takes as well);
#   * its headers: linux-headers-<ver>-<arch>, linux-headers-<ver>-common and
#     the linux-kbuild package they depend on (host tools, amd64);
#   * a gcc-14 that can build modules for it (bookworm's gcc-12 cannot build 6.12
#     modules: -fmin-function-alignment=8): gcc-14-aarch64-linux-gnu for arm64,
#     gcc-14 for amd64, with binutils, plus trixie's kmod (modinfo, depmod).
#
# Nothing is installed on the host: apt runs with private sources, lists, cache
# and an empty dpkg status, the packages are unpacked with dpkg-deb -x, and the
# trixie x86 binaries (which need trixie's glibc) are patched with trixie's own
# patchelf to start through the private root's loader and libraries.
# The archive is the one this machine's apt uses for its own suite (no host name
# is written anywhere); VFU_DEB_MIRROR overrides it.
#
# Cache: ${VFU_CACHE:-$HOME/.cache/vfu-platform}/guest-kernel/<arch>/
# Result: <cache>/env.sh, plain KEY='value' lines:
#   GK_ARCH GK_KVER GK_IMAGE GK_MODULES GK_KCONFIG   (written as soon as the image is there)
#   GK_BUILD GK_CROSS GK_MAKE_ARGS GK_PACKAGES GK_MODINFO GK_DEPMOD GK_READY=1
#                                                    (after a trivial module built)
# Use: . env.sh; make -C "$GK_BUILD" M=$PWD $GK_MAKE_ARGS modules
# (GK_MAKE_ARGS holds ARCH, CROSS_COMPILE, CC, LD, ... as absolute paths.)
#
# --image-only stops after the image part (env.sh without GK_READY).
# Knobs: VFU_DEB_MIRROR (archive URI), VFU_GK_SUITE (default trixie), VFU_FORCE=1.
set -euo pipefail

main() {
ARCH=
IMAGE_ONLY=0
while (($#)); do
    case $1 in
        --arch) ARCH=${2:-}; shift 2 ;;
        --arch=*) ARCH=${1#--arch=}; shift ;;
        --image-only) IMAGE_ONLY=1; shift ;;
        -h|--help) sed -n '3,35p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "provision-guest-kernel: unknown argument $1" >&2; exit 2 ;;
    esac
done
case $ARCH in
    arm64) KARCH=arm64; TRIPLET=aarch64-linux-gnu ;;
    amd64) KARCH=x86_64; TRIPLET=x86_64-linux-gnu ;;
    *) echo "usage: provision-guest-kernel.sh --arch {arm64,amd64} [--image-only]" >&2; exit 2 ;;
esac

SUITE=${VFU_GK_SUITE:-trixie}
TOP=${VFU_CACHE:-$HOME/.cache/vfu-platform}/guest-kernel
C=$TOP/$ARCH
APTD=$TOP/apt              # shared by both arches (lists cover amd64 and arm64)
ENVF=$C/env.sh
READY=$C/.ready
mkdir -p "$C" "$APTD"
T0=$EPOCHREALTIME
log() { awk -v a="$EPOCHREALTIME" -v b="$T0" -v m="$*" \
        'BEGIN { printf "provision-guest-kernel[%s]: [%6.1fs] %s\n", "'"$ARCH"'", a - b, m }' >&2; }
die() { log "ERROR: $*"; exit 1; }

envget() { sed -n "s/^$1='\(.*\)'\$/\1/p" "$ENVF" 2>/dev/null; }
ready() {
    [[ -z ${VFU_FORCE:-} && -f $READY && -f $ENVF ]] || return 1
    [[ $(envget GK_READY) == 1 ]] || return 1
    local k; for k in GK_IMAGE GK_MODULES GK_KCONFIG GK_BUILD GK_MODINFO; do
        [[ -e $(envget $k) ]] || return 1
    done
}
summary() {
    log "ready: $(envget GK_KVER), image $(envget GK_IMAGE)"
    echo "$ENVF"
}
if ready; then summary; exit 0; fi

for t in apt-get apt-cache dpkg-deb flock gzip make; do
    command -v $t >/dev/null || die "missing host tool $t"
done
[[ $(dpkg --print-architecture) == amd64 ]] || die "amd64 hosts only"

# One provisioner at a time for the whole guest-kernel cache (the apt dir is shared).
exec 9>"$TOP/.lock"
flock 9
if ready; then summary; exit 0; fi

# ---- the archive: the URI this machine's apt lists for its own suite -------------
MIRROR=${VFU_DEB_MIRROR:-}
if [[ -z $MIRROR ]]; then
    CODENAME=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    MIRROR=$(apt_archive_uri "$CODENAME")
fi
[[ -n $MIRROR ]] || die "no Debian archive in this machine's apt configuration; set VFU_DEB_MIRROR"

# ---- private apt state ----------------------------------------------------------
mkdir -p "$APTD/lists/partial" "$APTD/archives/partial" "$APTD/cache" "$APTD/debs"
printf 'deb [arch=amd64,arm64] %s %s main\n' "$MIRROR" "$SUITE" >"$APTD/sources.list.new"
if ! cmp -s "$APTD/sources.list.new" "$APTD/sources.list"; then
    mv "$APTD/sources.list.new" "$APTD/sources.list"
    rm -f "$APTD/.updated"
else
    rm -f "$APTD/sources.list.new"
fi
[[ -f $APTD/status ]] || : >"$APTD/status"
SANDBOX=()
[[ $(id -u) == 0 ]] && SANDBOX=(-o APT::Sandbox::User=root)
APTO=(-q -o Dir::Etc::SourceList="$APTD/sources.list" -o Dir::Etc::SourceParts=/dev/null
      -o Dir::Etc::Preferences=/dev/null -o Dir::Etc::PreferencesParts=/dev/null
      -o Dir::State::Lists="$APTD/lists" -o Dir::State::status="$APTD/status"
      -o Dir::Cache="$APTD/cache" -o Dir::Cache::archives="$APTD/archives"
      -o APT::Install-Recommends=false -o APT::Install-Suggests=false
      -o APT::Architecture=amd64 -o APT::Architectures::=amd64 -o APT::Architectures::=arm64
      -o Acquire::Languages=none "${SANDBOX[@]}")
ALOG=$APTD/apt.log
# Lists are refreshed when older than a day (or on VFU_FORCE): a stale list points at
# .debs the archive no longer has.
if [[ -n ${VFU_FORCE:-} || ! -f $APTD/.updated ]] || [[ -n $(find "$APTD/.updated" -mmin +1440) ]]; then
    t=$EPOCHREALTIME
    before=$(du -sk "$APTD/lists" | cut -f1)
    apt-get "${APTO[@]}" update >>"$ALOG" 2>&1 || die "apt update of $SUITE failed (see $ALOG)"
    touch "$APTD/.updated"
    log "step apt-update: $SUITE lists, $(( $(du -sk "$APTD/lists" | cut -f1) - before )) KiB, $(secs "$t") s"
fi
acache() { apt-cache "${APTO[@]}" "$@" 2>>"$ALOG"; }
# pkgver PKG[:ARCH] -> candidate version
pkgver() { acache policy "$1" | awk '$1 == "Candidate:" { print $2; exit }'; }
# fetch DIR PKG[:ARCH]=VER... : apt-get download into DIR what is not there yet
fetch() {
    local dir=$1; shift
    mkdir -p "$dir"
    (cd "$dir" && apt-get "${APTO[@]}" download "$@" >>"$ALOG" 2>&1) || die "download of $* failed (see $ALOG)"
}
debfile() {  # debfile DIR PKG VER ARCH -> path (epoch colon is %3a in file names)
    local v=${3//:/%3a}
    ls "$1/$2_${v}_$4.deb" 2>/dev/null || true
}

# ---- step 1: the kernel image ------------------------------------------------------
KI=$C/image
if [[ -n ${VFU_FORCE:-} || ! -f $KI/.done ]]; then
    t=$EPOCHREALTIME
    KPKG=$(acache depends "linux-image-$ARCH:$ARCH" |
           awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { sub(/:.*/, "", $2); print $2; exit }')
    [[ -n $KPKG ]] || die "cannot resolve linux-image-$ARCH in $SUITE"
    KPVER=$(pkgver "$KPKG:$ARCH")
    [[ -n $KPVER ]] || die "no version of $KPKG"
    D=$APTD/debs/$ARCH
    f=$(debfile "$D" "$KPKG" "$KPVER" "$ARCH")
    [[ -n $f ]] || fetch "$D" "$KPKG:$ARCH=$KPVER"
    f=$(debfile "$D" "$KPKG" "$KPVER" "$ARCH")
    [[ -n $f ]] || die "download of $KPKG gave no .deb"
    rm -rf "$KI"
    mkdir -p "$KI"
    dpkg-deb -x "$f" "$KI/root"
    VMLINUZ=$(ls "$KI"/root/boot/vmlinuz-* | head -n 1)
    KVER=${VMLINUZ##*/vmlinuz-}
    KMOD=$KI/root/usr/lib/modules/$KVER
    [[ -d $KMOD ]] || KMOD=$KI/root/lib/modules/$KVER
    [[ -d $KMOD && -f $KI/root/boot/config-$KVER ]] || die "$KPKG is not laid out as expected"
    if [[ $ARCH == arm64 ]]; then
        # Debian's arm64 vmlinuz is a gzip'd Image; keep the raw Image too.
        if gzip -t "$VMLINUZ" 2>/dev/null; then
            gzip -dc "$VMLINUZ" >"$KI/Image"
        else
            cp "$VMLINUZ" "$KI/Image"
        fi
        # arm64 Image header: magic "ARM\x64" at offset 0x38
        [[ $(od -An -tx1 -j56 -N4 "$KI/Image" | tr -d ' ') == 41524d64 ]] ||
            die "$VMLINUZ is not an arm64 Image"
        IMAGE=$KI/Image
    else
        IMAGE=$VMLINUZ
    fi
    printf "%s\n" "$KVER" >"$KI/kver"
    printf "%s\n" "$KMOD" >"$KI/kmoddir"
    printf "%s\n" "$IMAGE" >"$KI/image"
    printf "%s=%s\n" "$KPKG:$ARCH" "$KPVER" >"$KI/packages"
    touch "$KI/.done"
    log "step image: $KPKG=$KPVER, $(du -h "$f" | cut -f1) downloaded, $(du -sh "$KI" | cut -f1) unpacked, $(secs "$t") s"
fi
KVER=$(cat "$KI/kver")
KMOD=$(cat "$KI/kmoddir")
IMAGE=$(cat "$KI/image")
KCONFIG=$KI/root/boot/config-$KVER
write_env 0
log "image: $IMAGE ($KVER), modules $KMOD"
[[ $IMAGE_ONLY == 1 ]] && { echo "$ENVF"; exit 0; }

# ---- step 2: the toolchain root (amd64 binaries from trixie) -------------------------
# gcc, binutils, kmod, patchelf and linux-kbuild's host tools, with their library
# closure (apt resolves it against an empty status), unpacked into one root.
TR=$C/toolroot
GCCPKG=gcc-14
[[ $ARCH == arm64 ]] && GCCPKG=gcc-14-aarch64-linux-gnu
HPKG=linux-headers-$KVER
HVER=$(pkgver "$HPKG:$ARCH")
[[ -n $HVER ]] || die "no $HPKG in $SUITE"
read -r HCOMMON KBUILD < <(acache depends "$HPKG:$ARCH" | awk '
    $1 == "Depends:" { gsub(/[<>]/, "", $2); sub(/:.*/, "", $2) }
    $1 == "Depends:" && $2 ~ /^linux-headers-.*-common$/ { c = $2 }
    $1 == "Depends:" && $2 ~ /^linux-kbuild-/ { k = $2 }
    END { print c, k }')
[[ -n $HCOMMON && -n $KBUILD ]] || die "cannot resolve the dependencies of $HPKG"
if [[ -n ${VFU_FORCE:-} || ! -f $TR/.done ]]; then
    t=$EPOCHREALTIME
    rm -f "$APTD"/archives/*.deb
    apt-get "${APTO[@]}" -y --download-only install \
        "$GCCPKG:amd64" "kmod:amd64" "patchelf:amd64" "$KBUILD:amd64" >>"$ALOG" 2>&1 ||
        die "download of $GCCPKG failed (see $ALOG)"
    shopt -s nullglob
    debs=("$APTD"/archives/*.deb)
    shopt -u nullglob
    ((${#debs[@]})) || die "apt downloaded nothing for $GCCPKG"
    size=$(du -ch "${debs[@]}" | tail -n 1 | cut -f1)
    rm -rf "$TR"
    mkdir -p "$TR"
    for d in "${debs[@]}"; do dpkg-deb -x "$d" "$TR"; done
    for d in "${debs[@]}"; do
        dpkg-deb --show --showformat='${Package}:${Architecture}=${Version}\n' "$d"
    done | sort >"$TR/.packages"
    rm -f "$APTD"/archives/*.deb
    patch_root "$TR"
    touch "$TR/.done"
    log "step toolchain: $GCCPKG + kmod + $KBUILD, ${#debs[@]} packages, $size downloaded, $(du -sh "$TR" | cut -f1) unpacked, $(secs "$t") s"
fi

# Tool directory: the names kbuild calls, as symlinks into the patched root.
BIN=$C/bin
rm -rf "$BIN"
mkdir -p "$BIN"
for tool in as ld ld.bfd nm ar objcopy objdump readelf strip; do
    [[ -e $TR/usr/bin/$TRIPLET-$tool ]] && ln -s "$TR/usr/bin/$TRIPLET-$tool" "$BIN/$TRIPLET-$tool"
done
ln -s "$TR/usr/bin/$TRIPLET-gcc-14" "$BIN/$TRIPLET-gcc"
[[ -x $BIN/$TRIPLET-gcc && -x $BIN/$TRIPLET-ld ]] || die "toolchain root lacks $TRIPLET-gcc-14 or ld"
for t in kmod; do ln -s "$TR/usr/bin/$t" "$BIN/$t"; done
for t in modinfo depmod modprobe insmod; do ln -s kmod "$BIN/$t"; done
"$BIN/$TRIPLET-gcc" --version >/dev/null 2>&1 || die "the private gcc does not run"

# ---- step 3: headers ---------------------------------------------------------------------
HR=$C/headers
if [[ -n ${VFU_FORCE:-} || ! -f $HR/.done ]]; then
    t=$EPOCHREALTIME
    HCVER=$(pkgver "$HCOMMON:all"); [[ -n $HCVER ]] || HCVER=$(pkgver "$HCOMMON")
    D=$APTD/debs/$ARCH
    fs=()
    for spec in "$HPKG:$HVER:$ARCH" "$HCOMMON:$HCVER:all"; do
        IFS=: read -r p v a <<<"$spec"
        f=$(debfile "$D" "$p" "$v" "$a")
        [[ -n $f ]] || { fetch "$D" "$p:$a=$v"; f=$(debfile "$D" "$p" "$v" "$a"); }
        [[ -n $f ]] || die "download of $p gave no .deb"
        fs+=("$f")
    done
    rm -rf "$HR"
    mkdir -p "$HR"
    for f in "${fs[@]}"; do dpkg-deb -x "$f" "$HR"; done
    # linux-kbuild (host tools) lives in the tool root; the headers reach it by
    # relative symlinks (scripts -> ../../lib/linux-kbuild-*/scripts), and the flavour
    # Makefile includes the common tree by absolute path: point both into the private trees.
    mkdir -p "$HR/usr/lib"
    ln -sfn "$TR/usr/lib/$KBUILD" "$HR/usr/lib/$KBUILD"
    while IFS= read -r l; do
        tgt=$(readlink "$l")
        case $tgt in
            /usr/lib/linux-kbuild-*) ln -sfn "$TR$tgt" "$l" ;;
            /usr/src/*) ln -sfn "$HR$tgt" "$l" ;;
        esac
    done < <(find "$HR" -type l)
    grep -rlZ --include=Makefile "/usr/src/linux-headers-" "$HR/usr/src" 2>/dev/null |
        xargs -0r sed -i "s#\([ \"']\)/usr/src/linux-headers-#\1$HR/usr/src/linux-headers-#g"
    printf '%s\n' "$HPKG:$ARCH=$HVER" "$HCOMMON:all=$HCVER" >"$HR/.packages"
    touch "$HR/.done"
    log "step headers: $HPKG=$HVER + $HCOMMON, $(du -ch "${fs[@]}" | tail -n 1 | cut -f1) downloaded, $(secs "$t") s"
fi
KBUILD_DIR=$HR/usr/src/linux-headers-$KVER
[[ -f $KBUILD_DIR/Makefile ]] || die "no $KBUILD_DIR/Makefile"

# modules.dep etc. for the unpacked image (the .deb leaves it to its postinst)
if [[ ! -f $KMOD/modules.dep ]]; then
    # merged /usr: depmod -b looks under BASE/lib/modules
    [[ -e $KI/root/lib ]] || ln -s usr/lib "$KI/root/lib"
    "$BIN/depmod" -b "$KI/root" "$KVER" || die "depmod failed"
fi

# ---- step 4: a trivial module must build -----------------------------------------------
CROSS=
MAKE_ARGS="ARCH=$KARCH CC=$BIN/$TRIPLET-gcc LD=$BIN/$TRIPLET-ld AR=$BIN/$TRIPLET-ar NM=$BIN/$TRIPLET-nm OBJCOPY=$BIN/$TRIPLET-objcopy OBJDUMP=$BIN/$TRIPLET-objdump READELF=$BIN/$TRIPLET-readelf STRIP=$BIN/$TRIPLET-strip"
if [[ $ARCH == arm64 ]]; then
    CROSS=$BIN/$TRIPLET-
    MAKE_ARGS+=" CROSS_COMPILE=$CROSS"
else
    MAKE_ARGS+=" HOSTCC=$BIN/$TRIPLET-gcc"
fi
# pahole is not provisioned: no BTF for modules (the headers have no vmlinux anyway).
MAKE_ARGS+=" CONFIG_DEBUG_INFO_BTF_MODULES="
t=$EPOCHREALTIME
TM=$C/testmod
rm -rf "$TM"
mkdir -p "$TM"
cat >"$TM/gk_hello.c" <<'EOF'
// SPDX-License-Identifier: BSD-3-Clause
#include <linux/module.h>
#include <linux/init.h>
static int __init gk_hello_init(void) { return 0; }
static void __exit gk_hello_exit(void) { }
module_init(gk_hello_init);
module_exit(gk_hello_exit);
MODULE_DESCRIPTION("provision-guest-kernel test module");
MODULE_LICENSE("Dual BSD/GPL");
EOF
echo 'obj-m := gk_hello.o' >"$TM/Kbuild"
# shellcheck disable=SC2086
if ! nice -n 10 make -C "$KBUILD_DIR" M="$TM" $MAKE_ARGS modules >"$TM/build.log" 2>&1 ||
    [[ ! -f $TM/gk_hello.ko ]]; then
    tail -n 30 "$TM/build.log" >&2
    die "test module build failed (see $TM/build.log)"
fi
vm=$("$BIN/modinfo" -F vermagic "$TM/gk_hello.ko")
[[ $vm == "$KVER "* ]] || die "test module vermagic '$vm' does not start with $KVER"
log "step test-build: gk_hello.ko ok (vermagic $vm), $(secs "$t") s"

PACKAGES=$(cat "$KI/packages" "$HR/.packages" "$TR/.packages" | paste -sd' ')
write_env 1
touch "$READY"
summary
}

secs() { awk -v a="$EPOCHREALTIME" -v b="$1" 'BEGIN { printf "%.1f", a - b }'; }

# write_env READY: the image keys always; the build keys once the toolchain is ready.
write_env() {
    {
        echo "# SPDX-License-Identifier: BSD-3-Clause"
        echo "# Generated by vfu-platform scripts/provision-guest-kernel.sh; plain KEY='value' lines."
        echo "GK_ARCH='$ARCH'"
        echo "GK_KVER='$KVER'"
        echo "GK_IMAGE='$IMAGE'"
        echo "GK_MODULES='$KMOD'"
        echo "GK_KCONFIG='$KCONFIG'"
        if [[ $1 == 1 ]]; then
            echo "GK_BUILD='$KBUILD_DIR'"
            echo "GK_CROSS='$CROSS'"
            echo "GK_MAKE_ARGS='$MAKE_ARGS'"
            echo "GK_MODINFO='$BIN/modinfo'"
            echo "GK_DEPMOD='$BIN/depmod'"
            echo "GK_PACKAGES='$PACKAGES'"
            echo "GK_READY='1'"
        else
            echo "GK_READY='0'"
        fi
    } >"$ENVF.new"
    mv "$ENVF.new" "$ENVF"
}

# patch_root ROOT: every dynamically linked amd64 executable in ROOT starts through
# ROOT's loader and finds its libraries in ROOT (DT_RPATH, so LD_LIBRARY_PATH cannot
# redirect it to the host's). patchelf itself (trixie's) runs through the loader.
patch_root() {
    local r=$1 ldso=$1/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2
    [[ -x $ldso ]] || ldso=$r/lib64/ld-linux-x86-64.so.2
    [[ -e $ldso ]] || die "no loader in $r"
    local libs=$r/usr/lib/x86_64-linux-gnu:$r/lib/x86_64-linux-gnu
    local pe=("$ldso" --library-path "$libs" "$r/usr/bin/patchelf")
    "${pe[@]}" --version >/dev/null || die "trixie's patchelf does not run"
    local n=0 w=0 f interp
    while IFS= read -r -d '' f; do
        # not patchelf itself, nor shared objects (libc.so.6 has an interpreter too)
        case ${f##*/} in patchelf | *.so | *.so.*) continue ;; esac
        interp=$("${pe[@]}" --print-interpreter "$f" 2>/dev/null) || continue
        [[ $interp == */ld-linux-x86-64.so.2 ]] || continue
        if [[ $(od -An -tu2 -j16 -N2 "$f" | tr -d ' ') == 2 ]]; then
            # Non-PIE (ET_EXEC, e.g. gcc's cc1): patchelf's rewrite of those can crash
            # them (cc1 segfaulted), so they become wrappers that name the loader.
            mv "$f" "$f.real"
            printf '#!/bin/sh\n# SPDX-License-Identifier: BSD-3-Clause\n# generated by provision-guest-kernel.sh\nexec %q --library-path %q %q "$@"\n' \
                "$ldso" "$libs" "$f.real" >"$f"
            chmod 0755 "$f"
            w=$((w + 1))
        else
            "${pe[@]}" --set-interpreter "$ldso" --force-rpath --set-rpath "$libs" "$f" ||
                die "patchelf failed on $f"
            n=$((n + 1))
        fi
    done < <(find "$r" -type f -perm -u+x ! -name '*.real' -print0)
    log "patched $n executables in $r to use its own loader, wrapped $w non-PIE ones"
}

# Prints the first URI whose entry lists suite $1, from one-line (.list) and deb822
# (.sources) files; disabled entries and files with other suffixes are ignored.
# (Same as scripts/provision-qemu.sh.)
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

main "$@"
