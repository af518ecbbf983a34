//! Each failing step of compiling, installing or rendering the seccomp policy. Pure.

use libcontainer::oci_spec::OciSpecError;
use seccompiler::{BackendError, TargetArch};

/// Errors raised while compiling or installing the default seccomp profile.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SeccompError {
    /// The crate only ships a profile for x86_64 and aarch64.
    #[error(
        "no seccomp profile for architecture `{arch}` (only x86_64 and aarch64 are supported)"
    )]
    UnsupportedArch {
        /// Architecture the crate was compiled for.
        arch: &'static str,
    },
    /// The deny list names the same syscall twice (a bug in the table).
    #[error("syscall `{syscall}` (nr {nr}) appears twice in the seccomp deny list")]
    DuplicateSyscall {
        /// Name of the syscall, without the `SYS_` prefix.
        syscall: &'static str,
        /// Syscall number on the native architecture.
        nr: i64,
    },
    /// An argument-conditioned entry has no values to compare with, which would deny the
    /// syscall unconditionally (a bug in the table).
    #[error("argument condition for syscall `{syscall}` lists no values")]
    EmptyArgs {
        /// Name of the syscall, without the `SYS_` prefix.
        syscall: &'static str,
    },
    /// seccompiler rejected an argument condition or a rule.
    #[error("invalid seccomp rule for syscall `{syscall}`")]
    Rule {
        /// Name of the syscall, without the `SYS_` prefix.
        syscall: &'static str,
        /// Error reported by seccompiler.
        source: BackendError,
    },
    /// seccompiler rejected the filter as a whole.
    #[error("invalid seccomp filter for {arch:?} ({syscalls} syscalls)")]
    Filter {
        /// Target architecture of the filter.
        arch: TargetArch,
        /// Number of syscalls in the filter.
        syscalls: usize,
        /// Error reported by seccompiler.
        source: BackendError,
    },
    /// seccompiler failed to translate the filter into BPF.
    #[error("failed to compile the seccomp filter for {arch:?} into bpf")]
    Compile {
        /// Target architecture of the filter.
        arch: TargetArch,
        /// Error reported by seccompiler.
        source: BackendError,
    },
    /// The kernel refused one of the programs (or `PR_SET_NO_NEW_PRIVS` failed).
    #[error("failed to install seccomp program {index} of {count} ({instructions} instructions)")]
    Install {
        /// Position of the failing program (0-based).
        index: usize,
        /// Number of programs that should have been installed.
        count: usize,
        /// Number of BPF instructions in the failing program.
        instructions: usize,
        /// Error reported by seccompiler (wraps the OS error).
        source: seccompiler::Error,
    },
    /// oci-spec refused to build the OCI entry (or one of its argument conditions) of a syscall.
    #[error("failed to build the OCI seccomp entry for syscall `{syscall}`")]
    OciSyscall {
        /// Name of the syscall, without the `SYS_` prefix.
        syscall: &'static str,
        /// Error reported by oci-spec.
        source: OciSpecError,
    },
    /// An entry's conditions cannot be written as OCI rules with at most one condition per
    /// argument (only "not equal to any of these" is supported for several conditions).
    #[error(
        "the conditions on argument {index} of syscall `{syscall}` cannot be expressed in an OCI \
         seccomp profile"
    )]
    OciUnsupported {
        /// Name of the syscall, without the `SYS_` prefix.
        syscall: &'static str,
        /// Argument position (0-based).
        index: u8,
    },
    /// oci-spec refused to build the OCI `linux.seccomp` section as a whole.
    #[error("failed to build the OCI seccomp profile for {arch:?} ({entries} syscall entries)")]
    OciProfile {
        /// Target architecture of the profile.
        arch: TargetArch,
        /// Number of syscall entries in the profile.
        entries: usize,
        /// Error reported by oci-spec.
        source: OciSpecError,
    },
}
