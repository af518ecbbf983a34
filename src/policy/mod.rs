//! Confinement policy as data: the OCI spec a sandbox is built from and the seccomp filters.
//! Pure (no file system, no processes); compiled in the monitor, installed by the init.

pub(crate) mod seccomp;
pub(crate) mod spec;
