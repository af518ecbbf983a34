#!/usr/bin/env bash
# tests/vm/run.sh [--swap SIZE] COMMAND...
#
# Runs COMMAND (a shell command line) as root in a qemu guest whose only cgroup hierarchy is
# cgroup v2, and exits with its status. The guest shares this host's root read-only over 9p,
# under a tmpfs overlay (so it has the same binaries, toolchain, checkout and target dir, and
# nothing it writes reaches the host), with cgroup2 mounted at /sys/fs/cgroup and the cpuset,
# cpu, io, memory and pids controllers enabled at its root. --swap SIZE adds a zram swap
# device of that size. The guest has no network (only its loopback).
#
# What it needs, fetched or installed on first use (nothing else on the host changes):
# qemu-system-x86 (Debian's package), Debian's generic kernel package (fetched with
# apt-get download into target/vm/, unpacked with dpkg-deb -x, never installed), and a
# static busybox for the initramfs (rootfs/build-image.sh's, from busybox-static).
#
# Environment: RUNBOX_VM_ACCEL=kvm|tcg (default: kvm if /dev/kvm works for this kernel, else
# tcg; this machine's nested PVM hypervisor runs only PVM guests, so tcg), RUNBOX_VM_CPUS
# (default 2), RUNBOX_VM_MEMORY (default 4G), RUNBOX_VM_TIMEOUT (seconds, default 3600: the suite takes about 40 min there on a quiet 2-core host, and CI allows 90 in all).
# The command runs in the checkout with CARGO_TARGET_DIR, CI and RUNBOX_* passed through.
set -euo pipefail

log() { printf 'vm: %s\n' "$*" >&2; }
die() { printf 'vm: error: %s\n' "$*" >&2; exit 125; }

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
swap=""
if [[ "${1:-}" == "--swap" ]]; then
    swap=$2
    shift 2
fi
[[ $# -gt 0 ]] || die "usage: tests/vm/run.sh [--swap SIZE] COMMAND..."
[[ $(id -u) == 0 ]] || die "must run as root (qemu shares / with the guest as root)"

target=${CARGO_TARGET_DIR:-$repo/target}
vm=$target/vm
mkdir -p "$vm"
export DEBIAN_FRONTEND=noninteractive

# 1. qemu.
if ! command -v qemu-system-x86_64 >/dev/null 2>&1; then
    log "installing qemu-system-x86"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends qemu-system-x86 >/dev/null
fi

# 2. The kernel: Debian's generic one (the cloud kernel has no 9p), unpacked once per version.
pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
if [[ -z "$pkg" ]]; then
    apt-get update -qq
    pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
fi
[[ -n "$pkg" ]] || die "no linux-image-amd64 package found"
kver=${pkg#linux-image-}
kdir=$vm/kernel-$kver
if [[ ! -e "$kdir/.unpacked" ]]; then
    log "fetching $pkg"
    rm -rf "$kdir" "$vm"/linux-image-*.deb
    (cd "$vm" && apt-get download -qq "$pkg" 2>/dev/null)
    dpkg-deb -x "$vm"/"$pkg"_*.deb "$kdir"
    rm -f "$vm"/"$pkg"_*.deb
    touch "$kdir/.unpacked"
fi
kernel=$kdir/boot/vmlinuz-$kver
mods=$kdir/lib/modules/$kver

# 3. The initramfs: busybox, the modules for 9p over virtio, overlayfs and zram (with their
# dependencies, in load order, read from each module's own `depends=`), and /init.
busybox_image=$vm/busybox-image
bash "$repo/rootfs/build-image.sh" "$busybox_image" >/dev/null
initrd=$vm/initramfs-$kver.cpio.gz
stamp=$(sha256sum "$here/init.sh" "$busybox_image/bin/busybox" | sha256sum | cut -c1-16)
if [[ ! -e "$initrd" || "$(cat "$initrd.stamp" 2>/dev/null)" != "$stamp" ]]; then
    log "building the initramfs"
    declare -A path_of=() builtin=() loaded=()
    while IFS= read -r f; do
        path_of[$(basename "$f" .ko)]=$f
    done < <(find "$mods/kernel" -name '*.ko')
    while IFS= read -r b; do
        builtin[$(basename "$b" .ko)]=1
    done < "$mods/modules.builtin"
    order=()
    add() {
        local m=${1//-/_} d deps
        [[ -n "${loaded[$m]:-}" || -n "${builtin[$m]:-}" ]] && return 0
        local f=${path_of[$m]:-}
        [[ -n "$f" ]] || die "kernel module $m not found in $pkg"
        deps=$(grep -a -o 'depends=[^[:cntrl:]]*' "$f" | head -n1 | cut -d= -f2)
        for d in ${deps//,/ }; do add "$d"; done
        loaded[$m]=1
        order+=("$m")
    }
    for m in virtio_pci 9pnet_virtio 9p overlay zram; do add "$m"; done
    tree=$vm/initramfs-tree
    rm -rf "$tree"
    mkdir -p "$tree"/{bin,dev,proc,sys,modules,lower,upper,newroot}
    cp "$busybox_image/bin/busybox" "$tree/bin/busybox"
    for m in "${order[@]}"; do cp "${path_of[$m]}" "$tree/modules/$m.ko"; done
    printf '%s\n' "${order[@]}" > "$tree/modules/order"
    cp "$here/init.sh" "$tree/init"
    chmod 755 "$tree/init"
    (cd "$tree" && find . | "$tree/bin/busybox" cpio -o -H newc 2>/dev/null | gzip -1) > "$initrd.tmp"
    mv "$initrd.tmp" "$initrd"
    echo "$stamp" > "$initrd.stamp"
    rm -rf "$tree"
fi

# 4. The run: the command, its environment and its result live in a directory the guest
# mounts writable (the only path it can write on the host).
run=$(mktemp -d "$vm/run.XXXXXX")
trap 'rm -rf "$run"' EXIT
{
    printf 'export PATH=%q HOME=%q\n' "$PATH" "${HOME:-/root}"
    for v in CARGO_HOME RUSTUP_HOME CARGO_TARGET_DIR CI RUST_BACKTRACE RUST_TEST_THREADS; do
        [[ -n "${!v:-}" ]] && printf 'export %s=%q\n' "$v" "${!v}"
    done
    while IFS='=' read -r k v; do
        printf 'export %s=%q\n' "$k" "$v"
    done < <(env | grep -E '^RUNBOX_' || true)
    printf 'export CARGO_TARGET_DIR=%q RUNBOX_IN_GUEST=1\n' "$target"
    printf 'cd %q\n' "$(pwd)"
    printf '%s\n' "$*"
} > "$run/cmd.sh"
printf '%s\n' "$swap" > "$run/swap"

accel=${RUNBOX_VM_ACCEL:-}
if [[ -z "$accel" ]]; then
    # A nested PVM hypervisor (kvm_pvm) runs only PVM-enabled guest kernels: use TCG there.
    if [[ -w /dev/kvm && ! -e /sys/module/kvm_pvm ]]; then accel=kvm; else accel=tcg; fi
fi
case $accel in
    kvm) accel_args=(-accel kvm -cpu host) ;;
    tcg) accel_args=(-accel tcg,thread=multi -cpu max) ;;
    *) die "RUNBOX_VM_ACCEL must be kvm or tcg" ;;
esac
# A guest kernel that locks up (seen once in six full runs under TCG, in runc's processes,
# never in runbox's) panics at once (softlockup_panic) instead of hanging until the timeout;
# a guest that ends without a status is booted once more, said loudly. A command that ran
# and failed is never retried.
for attempt in 1 2; do
    log "booting $kver ($accel), attempt $attempt, running: $*"
    started=$(date +%s)
    set +e
    timeout "${RUNBOX_VM_TIMEOUT:-3600}" qemu-system-x86_64 \
        "${accel_args[@]}" -smp "${RUNBOX_VM_CPUS:-2}" -m "${RUNBOX_VM_MEMORY:-4G}" \
        -display none -no-reboot -nic none -serial stdio -monitor none \
        -kernel "$kernel" -initrd "$initrd" \
        -append "console=ttyS0 quiet panic=-1 softlockup_panic=1 cgroup_no_v1=all rdinit=/init runbox_run=$run runbox_guest=$here/guest.sh" \
        -virtfs local,path=/,mount_tag=hostroot,security_model=passthrough,readonly=on,multidevs=remap \
        -virtfs local,path="$run",mount_tag=run,security_model=passthrough \
        </dev/null
    qemu=$?
    set -e
    log "guest ended after $(( $(date +%s) - started )) s (qemu status $qemu)"
    if [[ -s "$run/status" ]]; then
        exit "$(cat "$run/status")"
    fi
    log "THE GUEST ENDED WITHOUT A STATUS (kernel panic, lockup or timeout: see its console above)"
done
die "the guest reported no status twice"
