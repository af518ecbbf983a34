#!/bin/bash
# pid 1 of the cgroup-v2 guest (see tests/vm/run.sh): mounts the usual file systems, cgroup2
# as the only hierarchy with its controllers enabled, optional zram swap, runs the run
# directory's cmd.sh with its output on the console and in the run directory, records its
# exit status and powers off. As pid 1 it also reaps orphans (exited monitors) as they come.
set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
run=${runbox_run:?}
# /proc, /sys and /dev were mounted by the initramfs.
mkdir -p /dev/pts /dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts
mount -t tmpfs -o mode=1777 shm /dev/shm
mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup
# /tmp and /run stay the overlay's (writable, private to the guest): a tmpfs over them would
# hide a checkout or run directory that lives there.
echo 1 > /proc/sys/kernel/sysrq
# Critical kernel messages (panics, soft lockups) reach the console; OOM kills do not.
dmesg -n 3
hostname runbox-guest
ip link set lo up
echo "+cpuset +cpu +io +memory +pids" > /sys/fs/cgroup/cgroup.subtree_control
swap=$(cat "$run/swap")
if [[ -n "$swap" ]]; then
    echo "$swap" > /sys/block/zram0/disksize
    mkswap /dev/zram0 >/dev/null && swapon /dev/zram0
fi
echo "vm guest: $(uname -r), cgroup2 controllers: $(cat /sys/fs/cgroup/cgroup.subtree_control)," \
    "swap: $(awk '/SwapTotal/ {print $2 " kB"}' /proc/meminfo)"
bash "$run/cmd.sh" 2>&1 | tee "$run/log"
echo "${PIPESTATUS[0]}" > "$run/status"
sync
echo o > /proc/sysrq-trigger
sleep 60
