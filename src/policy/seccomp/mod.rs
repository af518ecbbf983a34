//! The default seccomp policy's compiled filters: compiled in the monitor, installed by the
//! container's init before it waits for start (so the program inherits it).
//!
//! Default seccomp policy: compiled with seccompiler once per monitor, installed by the
//! container's init before it waits for start (so the program inherits it).
//!
//! The policy follows the spirit of Docker's default profile, inverted into a deny list: every
//! syscall is allowed except the ones below, which fail with `EPERM`.
//!
//! Two BPF programs are produced:
//!
//! 1. a [`SeccompFilter`] compiled by seccompiler (mismatch action `Allow`, match action
//!    `Errno(EPERM)`) holding the deny list, some entries conditioned on their arguments;
//! 2. a small hand-assembled "guard" program that kills the process on a foreign architecture,
//!    rejects the x32 ABI on x86_64 (seccompiler's arch check lets those syscall numbers
//!    through) and makes `clone3` fail with `ENOSYS`, so that libc falls back to `clone`, whose
//!    flags program 1 can inspect (`clone3` passes them in memory, out of the filter's reach).
//!
//! The kernel runs every installed program and keeps the most restrictive result, so the two
//! programs compose.
//!
//! The same table is also rendered as an OCI `linux.seccomp` section ([`oci_profile`]) for
//! other runtimes (runc, crun) that run a bundle runbox wrote; see that function for where
//! libseccomp's semantics differ slightly from the BPF programs above.
//!
//! Layout: `table` holds the policy as data (the deny list), `bpf` compiles it into the two
//! programs, `oci` renders it as an OCI profile, `error` names each failing step; this file
//! holds [`Filters`]. For tests and fuzzing only, `interp` runs the compiled programs (a cBPF
//! interpreter) and `reference` computes the policy's intended decision directly from the
//! table, the oracle both compilers are held to.
//!
//! [`SeccompFilter`]: seccompiler::SeccompFilter

mod bpf;
mod error;
#[cfg(any(test, feature = "fuzzing"))]
mod interp;
mod oci;
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) mod reference;
mod table;

use std::sync::Arc;

use seccompiler::BpfProgram;

pub(crate) use error::SeccompError;

use bpf::{deny_program, guard_program};
use table::{native_arch, DENY_LIST};

pub(crate) use oci::oci_profile;

/// Compiled BPF programs, cheap to clone (the libcontainer Executor that installs them must be Clone).
#[derive(Clone, Debug)]
pub(crate) struct Filters {
    /// Programs in installation order: the seccompiler deny list, then the hand-assembled guard.
    programs: Arc<[BpfProgram]>,
}

impl Filters {
    /// Compiles the default profile for the native architecture (x86_64 or aarch64; other arches -> error).
    pub(crate) fn compile_default() -> Result<Filters, SeccompError> {
        let native = native_arch().ok_or(SeccompError::UnsupportedArch {
            arch: std::env::consts::ARCH,
        })?;
        let deny = deny_program(native.target, DENY_LIST)?;
        let guard = guard_program(native.audit_arch, native.reject_x32);
        let filters = Filters {
            programs: Arc::from(vec![deny, guard]),
        };
        tracing::debug!(
            arch = ?native.target,
            syscalls = DENY_LIST.len(),
            programs = filters.programs.len(),
            instructions = filters.len(),
            "compiled default seccomp profile"
        );
        Ok(filters)
    }

    /// Installs every program in this thread (requires no_new_privs already set). Called in the
    /// container's init before it waits for start (the executor's `validate` step); the
    /// program inherits the filters. Must allocate nothing (it only applies the precompiled
    /// programs).
    ///
    /// `seccompiler::apply_filter` also sets `PR_SET_NO_NEW_PRIVS` itself before each program
    /// (idempotent). Nothing is allocated on the success path nor on the error path (the OS
    /// error is stored inline).
    pub(crate) fn install(&self) -> Result<(), SeccompError> {
        let count = self.programs.len();
        for (index, program) in self.programs.iter().enumerate() {
            seccompiler::apply_filter(program).map_err(|source| SeccompError::Install {
                index,
                count,
                instructions: program.len(),
                source,
            })?;
        }
        Ok(())
    }

    /// Number of BPF instructions in total (for logging/benchmarks).
    pub(crate) fn len(&self) -> usize {
        self.programs.iter().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod testutil {
    //! Test helpers shared by the seccomp tests: the programs are compiled and evaluated by
    //! the cBPF interpreter of `interp`, never installed (no root, no fork).

    pub(super) use super::interp::{verdict, Data, RET_ACTION_FULL};
    use super::table::{native_arch, NativeArch};
    use super::Filters;

    /// The native architecture (tests only run on supported ones).
    pub(super) fn native() -> NativeArch {
        native_arch().expect("tests run on x86_64 or aarch64")
    }

    /// Compiles the default profile or fails the test.
    pub(super) fn filters() -> Filters {
        Filters::compile_default().expect("default profile compiles")
    }
}

#[cfg(test)]
mod tests {
    //! Pure tests of [`Filters`](super::Filters) (compiled, never installed).

    use super::testutil::filters;
    use super::*;

    /// The default profile compiles into two non-empty programs within the kernel limit.
    #[test]
    fn compile_default_succeeds() {
        let filters = filters();
        assert_eq!(filters.programs.len(), 2);
        assert!(filters.len() > 0);
        assert_eq!(
            filters.len(),
            filters.programs[0].len() + filters.programs[1].len()
        );
        for program in filters.programs.iter() {
            assert!(!program.is_empty());
            assert!(program.len() < 4096, "bpf programs are limited to 4096");
        }
        // Cloning shares the programs.
        let clone = filters.clone();
        assert!(Arc::ptr_eq(&clone.programs, &filters.programs));
    }
}
