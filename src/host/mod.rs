//! Host helpers shared by every process role: syscalls (`sys`, the only `unsafe`), process
//! identities, the mount table, cgroups, the sandbox's rootfs, images, on-disk state, uid leases and the
//! host check. None of them starts a process of its own or knows which role calls it.

pub(crate) mod cgroup;
pub(crate) mod check;
pub(crate) mod cleanup;
pub(crate) mod image;
pub(crate) mod mounts;
pub(crate) mod proc;
pub(crate) mod rootfs;
pub(crate) mod state;
pub(crate) mod sys;
pub(crate) mod uids;
