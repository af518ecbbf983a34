#!/usr/bin/env bash
# build-image.sh OUTDIR - build the small runbox test rootfs into OUTDIR.
#
# Contents: static busybox (from Debian's busybox-static .deb, unpacked with
# dpkg-deb -x; nothing is installed on the host) with a symlink per applet in
# /bin, the static probe helper (rootfs/probe.c) at /bin/probe, a minimal /etc,
# and empty mount-point directories.  All mtimes are set to the epoch so the
# tree is reproducible.
#
# Idempotent: if OUTDIR/.runbox-image-v1 records the same inputs (this
# script, probe.c, compiler/libc versions and the apt candidate version of
# busybox-static), nothing is done.  Otherwise the image is built in
# OUTDIR.tmp.$$ and renamed into place.  Concurrent runs are serialised with
# flock on OUTDIR.lock.  On success the absolute OUTDIR is printed on stdout;
# all progress/diagnostics go to stderr.
set -euo pipefail

STAMP_NAME=.runbox-image-v1

log() { printf 'build-image: %s\n' "$*" >&2; }
die() { printf 'build-image: error: %s\n' "$*" >&2; exit 1; }

[[ $# -eq 1 && -n "$1" ]] || die "usage: bash rootfs/build-image.sh OUTDIR"

export LC_ALL=C DEBIAN_FRONTEND=noninteractive
umask 022

for tool in apt-get apt-cache dpkg-deb gcc sha256sum flock touch find; do
    command -v "$tool" >/dev/null 2>&1 || die "required tool '$tool' not found in PATH"
done

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SCRIPT_PATH="$SCRIPT_DIR/$(basename "${BASH_SOURCE[0]}")"
PROBE_SRC="$SCRIPT_DIR/probe.c"
[[ -f "$PROBE_SRC" ]] || die "probe source not found: $PROBE_SRC"

# Absolute OUTDIR (parent must exist or be creatable).
OUT_ARG=${1%/}
[[ -n "$OUT_ARG" ]] || die "refusing to use '/' as OUTDIR"
OUT_PARENT=$(dirname "$OUT_ARG")
mkdir -p "$OUT_PARENT" || die "cannot create parent directory $OUT_PARENT"
OUTDIR="$(cd "$OUT_PARENT" && pwd)/$(basename "$OUT_ARG")"
[[ "$OUTDIR" != "/" ]] || die "refusing to use '/' as OUTDIR"

busybox_candidate() {
    local v
    v=$(apt-cache policy busybox-static 2>/dev/null | awk '/Candidate:/ {print $2; exit}') || true
    if [[ -z "$v" || "$v" == "(none)" ]]; then v=unknown; fi
    printf '%s' "$v"
}

compute_inputs() {
    # $1 = busybox version to record
    printf 'input format=%s\n' "$STAMP_NAME"
    printf 'input script-sha256=%s\n' "$(sha256sum <"$SCRIPT_PATH" | cut -d' ' -f1)"
    printf 'input probe-sha256=%s\n' "$(sha256sum <"$PROBE_SRC" | cut -d' ' -f1)"
    printf 'input gcc=%s %s\n' "$(gcc -dumpfullversion 2>/dev/null || gcc -dumpversion)" "$(gcc -dumpmachine)"
    printf 'input libc6-dev=%s\n' "$(dpkg-query -W -f='${Version}' libc6-dev 2>/dev/null || echo unknown)"
    printf 'input busybox-static=%s\n' "$1"
}

stamp_matches() {
    local stamp="$OUTDIR/$STAMP_NAME"
    [[ -f "$stamp" ]] || return 1
    [[ "$(grep '^input ' "$stamp" || true)" == "$(compute_inputs "$(busybox_candidate)")" ]]
}

# Fast path without taking the lock.
if stamp_matches; then
    log "up to date: $OUTDIR"
    printf '%s\n' "$OUTDIR"
    exit 0
fi

LOCKFILE="$OUTDIR.lock"
exec 9>"$LOCKFILE" || die "cannot open lock file $LOCKFILE"
flock 9 || die "cannot lock $LOCKFILE"
if stamp_matches; then   # another run finished while we waited
    log "up to date: $OUTDIR"
    printf '%s\n' "$OUTDIR"
    exit 0
fi

# Refuse to replace a directory that is not one of our images.
if [[ -e "$OUTDIR" || -L "$OUTDIR" ]]; then
    if [[ -L "$OUTDIR" || ! -d "$OUTDIR" ]]; then
        die "$OUTDIR exists and is not a directory; refusing to replace it"
    fi
    if [[ ! -e "$OUTDIR/$STAMP_NAME" ]] && [[ -n "$(ls -A "$OUTDIR")" ]]; then
        die "$OUTDIR exists, is not empty and has no $STAMP_NAME stamp; refusing to replace it"
    fi
fi

TMPROOT="$OUTDIR.tmp.$$"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/runbox-image-build.XXXXXX")
cleanup() {
    local rc=$?
    rm -rf -- "$WORK"
    [[ -n "${TMPROOT:-}" && -e "$TMPROOT" ]] && rm -rf -- "$TMPROOT"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
rm -rf -- "$TMPROOT"

# ---------------------------------------------------------------- busybox ----
DL="$WORK/dl"
mkdir -p "$DL"
chmod 0755 "$WORK" "$DL"   # let apt's _apt sandbox user write here
APT_OPTS=(-q -o APT::Sandbox::User=root)
[[ $EUID -eq 0 ]] || APT_OPTS=(-q)

download_busybox() {
    (cd "$DL" && apt-get "${APT_OPTS[@]}" download busybox-static) </dev/null >&2
}
log "downloading busybox-static with apt-get download"
if ! download_busybox; then
    log "apt-get download failed; running apt-get update and retrying"
    apt-get -q update </dev/null >&2 || die "apt-get update failed (are package mirrors reachable?)"
    download_busybox || die "apt-get download busybox-static failed"
fi
shopt -s nullglob
debs=("$DL"/busybox-static_*.deb)
shopt -u nullglob
[[ ${#debs[@]} -eq 1 ]] || die "expected exactly one busybox-static .deb in $DL, found ${#debs[@]}"
DEB=${debs[0]}
BB_VERSION=$(dpkg-deb -f "$DEB" Version) || die "cannot read version of $DEB"
BB_SHA256=$(sha256sum <"$DEB" | cut -d' ' -f1)
log "busybox-static $BB_VERSION ($BB_SHA256)"

mkdir -p "$WORK/deb"
dpkg-deb -x "$DEB" "$WORK/deb" || die "dpkg-deb -x $DEB failed"
BB="$WORK/deb/bin/busybox"
[[ -f "$BB" && -x "$BB" ]] || die "busybox binary not found in $DEB (expected /bin/busybox)"

# ------------------------------------------------------------------ probe ----
# Compile from a copy named plain "probe.c" so no host path ends up in the
# binary's symbol table.
mkdir -p "$WORK/cc"
cp "$PROBE_SRC" "$WORK/cc/probe.c"
log "compiling probe.c (static)"
(cd "$WORK/cc" && gcc -static -O2 -Wall -Wextra -Werror -pthread -o probe probe.c) >&2 \
    || die "compiling probe.c failed"

# ------------------------------------------------------------------- tree ----
mkdir -p "$TMPROOT"
R="$TMPROOT"
for d in bin proc sys dev tmp etc root home usr mnt work; do
    mkdir -p "$R/$d"
done
chmod 0755 "$R" "$R"/{bin,proc,sys,dev,etc,home,usr,mnt}
chmod 0700 "$R/root"
chmod 1777 "$R/tmp"
chmod 0777 "$R/work"
ln -s bin "$R/sbin"
ln -s ../bin "$R/usr/bin"
ln -s ../bin "$R/usr/sbin"

install -m 0755 "$BB" "$R/bin/busybox"
install -m 0755 "$WORK/cc/probe" "$R/bin/probe"

applets=$("$R/bin/busybox" --list) || die "busybox --list failed"
[[ -n "$applets" ]] || die "busybox --list returned nothing"
while IFS= read -r a; do
    [[ -n "$a" && "$a" != busybox && "$a" != */* ]] || continue
    [[ -e "$R/bin/$a" || -L "$R/bin/$a" ]] && continue
    ln -s busybox "$R/bin/$a"
done <<<"$applets"
for a in sh echo cat ls ps hostname sleep true false id env mount wc head dd touch grep; do
    [[ -L "$R/bin/$a" ]] || die "busybox applet '$a' missing from busybox --list"
done

printf '%s\n' \
    'root:x:0:0:root:/root:/bin/sh' \
    'nobody:x:65534:65534:nobody:/nonexistent:/bin/sh' >"$R/etc/passwd"
printf '%s\n' 'root:x:0:' 'nogroup:x:65534:' >"$R/etc/group"
printf '%s\n' '127.0.0.1 localhost' '::1 localhost' >"$R/etc/hosts"
: >"$R/etc/resolv.conf"
printf '%s\n' 'runbox' >"$R/etc/hostname"
chmod 0644 "$R"/etc/{passwd,group,hosts,resolv.conf,hostname}

if [[ $EUID -eq 0 ]]; then
    chown -hR 0:0 "$R"
fi

{
    compute_inputs "$BB_VERSION"
    printf 'info busybox-static-deb-sha256=%s\n' "$BB_SHA256"
} >"$R/$STAMP_NAME"
chmod 0644 "$R/$STAMP_NAME"

# Fixed mtimes (after all entries exist; -depth so directories come last).
find "$R" -depth -exec touch -h -d @0 {} +

# Sanity check: the probe and busybox run.
"$R/bin/probe" true || die "built probe does not run"
[[ "$("$R/bin/busybox" echo ok)" == ok ]] || die "built busybox does not run"

# ----------------------------------------------------------------- swap in ----
if [[ -e "$OUTDIR" ]]; then
    OLD="$OUTDIR.old.$$"
    mv -T -- "$OUTDIR" "$OLD" || die "cannot move old $OUTDIR aside"
    mv -T -- "$TMPROOT" "$OUTDIR" || { mv -T -- "$OLD" "$OUTDIR"; die "cannot rename $TMPROOT to $OUTDIR"; }
    rm -rf -- "$OLD"
else
    mv -T -- "$TMPROOT" "$OUTDIR" || die "cannot rename $TMPROOT to $OUTDIR"
fi
touch -h -d @0 "$OUTDIR"
TMPROOT=

log "built $OUTDIR"
printf '%s\n' "$OUTDIR"
