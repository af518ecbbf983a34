#!/bin/busybox sh
# The guest's initramfs /init (see tests/vm/run.sh): loads the modules for 9p over virtio,
# overlayfs and zram, mounts the host's root (read-only, 9p) under a tmpfs overlay and the
# run directory (writable), and switches to tests/vm/guest.sh of the checkout as pid 1.
# runbox_run and runbox_guest come from the kernel command line.
/bin/busybox --install -s /bin
export PATH=/bin
fail() {
    echo "vm init: $*"
    echo o > /proc/sysrq-trigger
    sleep 10
}
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /modules/order); do
    insmod "/modules/$m.ko" || fail "insmod $m"
done
opts=trans=virtio,version=9p2000.L,msize=262144
mount -t 9p -o "$opts,ro,cache=loose" hostroot /lower || fail "mount the host's root"
mount -t tmpfs -o mode=755 upper /upper || fail "mount the overlay's tmpfs"
mkdir -p /upper/data /upper/work
mount -t overlay -o lowerdir=/lower,upperdir=/upper/data,workdir=/upper/work overlay /newroot \
    || fail "mount the overlay"
mkdir -p "/newroot$runbox_run"
mount -t 9p -o "$opts" run "/newroot$runbox_run" || fail "mount the run directory"
# The new root's own kernel file systems, mounted here (its /proc, /sys and /dev are the
# host's directories seen through 9p until then).
umount /proc /sys /dev
mount -t proc proc /newroot/proc || fail "mount /proc"
mount -t sysfs sysfs /newroot/sys || fail "mount /sys"
mount -t devtmpfs devtmpfs /newroot/dev || fail "mount /dev"
exec switch_root /newroot /bin/bash "$runbox_guest"
