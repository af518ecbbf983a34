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

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use libcontainer::oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder,
    LinuxSeccompBuilder, LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};
use libcontainer::oci_spec::OciSpecError;
use seccompiler::{
    sock_filter, BackendError, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp,
    SeccompCondition, SeccompFilter, SeccompRule, TargetArch,
};

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

/// Native architecture parameters of the profile.
#[derive(Clone, Copy, Debug)]
struct NativeArch {
    /// seccompiler's name for the architecture.
    target: TargetArch,
    /// `AUDIT_ARCH_*` value the kernel reports in `seccomp_data.arch`.
    audit_arch: u32,
    /// Whether syscall numbers with the x32 bit set must be rejected (x86_64 only).
    reject_x32: bool,
    /// libseccomp's name for the architecture, as written in an OCI profile.
    oci: Arch,
}

/// Returns the parameters of the architecture this crate was compiled for, if supported.
#[cfg(all(target_arch = "x86_64", target_pointer_width = "64"))]
fn native_arch() -> Option<NativeArch> {
    Some(NativeArch {
        target: TargetArch::x86_64,
        audit_arch: AUDIT_ARCH_X86_64,
        reject_x32: true,
        oci: Arch::ScmpArchX86_64,
    })
}

/// Returns the parameters of the architecture this crate was compiled for, if supported.
#[cfg(target_arch = "aarch64")]
fn native_arch() -> Option<NativeArch> {
    Some(NativeArch {
        target: TargetArch::aarch64,
        audit_arch: AUDIT_ARCH_AARCH64,
        reject_x32: false,
        oci: Arch::ScmpArchAarch64,
    })
}

/// Returns the parameters of the architecture this crate was compiled for, if supported.
#[cfg(not(any(
    all(target_arch = "x86_64", target_pointer_width = "64"),
    target_arch = "aarch64"
)))]
fn native_arch() -> Option<NativeArch> {
    None
}

/// `AUDIT_ARCH_X86_64` (`EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE`), see `linux/audit.h`.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;
/// `AUDIT_ARCH_AARCH64` (`EM_AARCH64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE`), see `linux/audit.h`.
#[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
const AUDIT_ARCH_AARCH64: u32 = 183 | 0x8000_0000 | 0x4000_0000;
/// `__X32_SYSCALL_BIT`: syscall numbers at or above it belong to the x32 ABI on x86_64.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// `AF_VSOCK` address family (kernel ABI value; not exported by libc for every target env).
const AF_VSOCK: u32 = 40;
/// `TIOCSTI` ioctl: fakes terminal input (lets a process inject commands into its tty).
const TIOCSTI: u32 = 0x5412;
/// `TIOCLINUX` ioctl: virtual-console subcommands (selection paste can also inject input).
const TIOCLINUX: u32 = 0x541C;
/// `CLONE_NEWTIME` (kernel ABI value; not exported by libc for every target env).
///
/// It overlaps the exit-signal byte of legacy `clone`, so the kernel only honours it through
/// `unshare`/`clone3`; the rule on `clone` is kept for completeness and only ever matches
/// calls the kernel would reject with `EINVAL` anyway.
const CLONE_NEWTIME: u32 = 0x80;

/// Namespace-creating `clone` flags that the profile refuses.
const CLONE_NAMESPACE_FLAGS: &[u32] = &[
    libc::CLONE_NEWNS as u32,
    libc::CLONE_NEWUTS as u32,
    libc::CLONE_NEWIPC as u32,
    libc::CLONE_NEWUSER as u32,
    libc::CLONE_NEWPID as u32,
    libc::CLONE_NEWNET as u32,
    libc::CLONE_NEWCGROUP as u32,
    CLONE_NEWTIME,
];

/// `personality` values Docker allows: `PER_LINUX`, `PER_LINUX32`, `UNAME26`,
/// `UNAME26 | PER_LINUX32` and the `0xffffffff` query.
const PERSONALITY_ALLOWED: &[u32] = &[0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// How the arguments of a denied syscall are matched (32-bit comparisons: every argument
/// checked here is an `int`/`unsigned int` in the kernel, or only its low 32 bits are used).
#[derive(Clone, Copy, Debug)]
enum Args {
    /// Denied whatever the arguments.
    Any,
    /// Denied unless argument `index` equals one of `allowed`.
    Unless {
        /// Argument position (0-based).
        index: u8,
        /// Values for which the syscall is allowed.
        allowed: &'static [u32],
    },
    /// Denied when argument `index` equals one of `values`.
    Equals {
        /// Argument position (0-based).
        index: u8,
        /// Values for which the syscall is denied.
        values: &'static [u32],
    },
    /// Denied when argument `index` has any of the `bits` set.
    AnyBit {
        /// Argument position (0-based).
        index: u8,
        /// Single-bit flags, any of which denies the syscall.
        bits: &'static [u32],
    },
}

/// One entry of the deny list.
#[derive(Clone, Copy, Debug)]
struct Denied {
    /// Name of the libc constant, e.g. `SYS_mount`.
    ident: &'static str,
    /// Syscall number on the native architecture.
    nr: i64,
    /// Which calls are denied.
    args: Args,
}

impl Denied {
    /// Syscall name without the `SYS_` prefix.
    fn name(&self) -> &'static str {
        self.ident.strip_prefix("SYS_").unwrap_or(self.ident)
    }
}

/// Builds a [`Denied`] entry from a `libc::SYS_*` constant (so every name resolves at compile
/// time), optionally with an argument condition.
macro_rules! sys {
    ($sys:ident) => {
        sys!($sys, Args::Any)
    };
    ($sys:ident, $args:expr) => {
        Denied {
            ident: stringify!($sys),
            nr: libc::$sys,
            args: $args,
        }
    };
}

/// The deny list for the native architecture.
#[cfg(any(
    all(target_arch = "x86_64", target_pointer_width = "64"),
    target_arch = "aarch64"
))]
const DENY_LIST: &[Denied] = &[
    // Mounts and filesystem views.
    sys!(SYS_mount),
    sys!(SYS_umount2),
    sys!(SYS_pivot_root),
    sys!(SYS_chroot),
    sys!(SYS_fsopen),
    sys!(SYS_fsmount),
    sys!(SYS_fsconfig),
    sys!(SYS_fspick),
    sys!(SYS_move_mount),
    sys!(SYS_open_tree),
    sys!(SYS_mount_setattr),
    sys!(SYS_open_by_handle_at),
    sys!(SYS_name_to_handle_at),
    // Namespaces.
    sys!(SYS_unshare),
    sys!(SYS_setns),
    sys!(
        SYS_clone,
        Args::AnyBit {
            index: 0,
            bits: CLONE_NAMESPACE_FLAGS
        }
    ),
    // Inspecting or tampering with other processes.
    sys!(SYS_ptrace),
    sys!(SYS_process_vm_readv),
    sys!(SYS_process_vm_writev),
    sys!(SYS_pidfd_getfd),
    sys!(SYS_kcmp),
    // Kernel attack surface.
    sys!(SYS_bpf),
    sys!(SYS_perf_event_open),
    sys!(SYS_userfaultfd),
    sys!(SYS_io_uring_setup),
    sys!(SYS_io_uring_enter),
    sys!(SYS_io_uring_register),
    sys!(SYS_fanotify_init),
    sys!(SYS_lookup_dcookie),
    sys!(
        SYS_personality,
        Args::Unless {
            index: 0,
            allowed: PERSONALITY_ALLOWED
        }
    ),
    sys!(
        SYS_socket,
        Args::Equals {
            index: 0,
            values: &[AF_VSOCK]
        }
    ),
    sys!(
        SYS_ioctl,
        Args::Equals {
            index: 1,
            values: &[TIOCSTI, TIOCLINUX]
        }
    ),
    // Kernel keyring (not namespaced).
    sys!(SYS_keyctl),
    sys!(SYS_add_key),
    sys!(SYS_request_key),
    // Kernel modules and kexec.
    sys!(SYS_kexec_load),
    #[cfg(target_arch = "x86_64")]
    sys!(SYS_kexec_file_load),
    // libc does not export SYS_kexec_file_load for aarch64-musl; 294 is asm-generic's number.
    #[cfg(target_arch = "aarch64")]
    Denied {
        ident: "SYS_kexec_file_load",
        nr: 294,
        args: Args::Any,
    },
    sys!(SYS_init_module),
    sys!(SYS_finit_module),
    sys!(SYS_delete_module),
    // Host administration.
    sys!(SYS_swapon),
    sys!(SYS_swapoff),
    sys!(SYS_reboot),
    sys!(SYS_acct),
    sys!(SYS_quotactl),
    sys!(SYS_syslog),
    sys!(SYS_vhangup),
    sys!(SYS_sethostname),
    sys!(SYS_setdomainname),
    // Clocks (not namespaced, except through time namespaces which are refused above).
    sys!(SYS_settimeofday),
    sys!(SYS_clock_settime),
    sys!(SYS_clock_adjtime),
    sys!(SYS_adjtimex),
    // Legacy, arch-specific ones (create_module, get_kernel_syms and query_module are not
    // exported by libc for these arches; the kernel answers ENOSYS for them anyway).
    sys!(SYS_nfsservctl),
    #[cfg(target_arch = "x86_64")]
    sys!(SYS_uselib),
    #[cfg(target_arch = "x86_64")]
    sys!(SYS_iopl),
    #[cfg(target_arch = "x86_64")]
    sys!(SYS_ioperm),
];

/// The deny list for an unsupported architecture (never compiled: `native_arch` fails first).
#[cfg(not(any(
    all(target_arch = "x86_64", target_pointer_width = "64"),
    target_arch = "aarch64"
)))]
const DENY_LIST: &[Denied] = &[];

/// The syscall program 2 answers with `ENOSYS`, so that libc falls back to `clone`, whose
/// flags the deny list can inspect (not part of [`DENY_LIST`]: its action differs).
const CLONE3: Denied = sys!(SYS_clone3);

/// Highest syscall argument index (syscalls take at most six arguments).
const MAX_ARG_INDEX: u8 = 5;

/// Comparison applied to the low 32 bits of a syscall argument, independent of the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CmpOp {
    /// The argument equals the value.
    Eq,
    /// The argument differs from the value.
    Ne,
    /// The argument, masked with the given mask, equals the value.
    MaskedEq(u32),
}

/// One argument condition of a rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Cmp {
    /// Argument position (0-based).
    index: u8,
    /// Comparison to apply.
    op: CmpOp,
    /// Value compared with.
    value: u32,
}

/// Translates one deny-list entry into backend-independent rules: the syscall is denied when
/// any rule matches, and a rule matches when all its conditions hold. An empty list means
/// "denied whatever the arguments"; no rule is ever empty.
///
/// Both the BPF compiler ([`rules_for`]) and the OCI profile ([`oci_syscalls`]) start from
/// here, so the two cannot drift apart.
fn match_rules(entry: &Denied) -> Result<Vec<Vec<Cmp>>, SeccompError> {
    let (index, values) = match entry.args {
        Args::Any => return Ok(Vec::new()),
        Args::Unless { index, allowed: v }
        | Args::Equals { index, values: v }
        | Args::AnyBit { index, bits: v } => (index, v),
    };
    // An empty rule list would deny the syscall unconditionally: refuse it.
    if values.is_empty() {
        return Err(SeccompError::EmptyArgs {
            syscall: entry.name(),
        });
    }
    if index > MAX_ARG_INDEX {
        return Err(SeccompError::Rule {
            syscall: entry.name(),
            source: BackendError::InvalidArgumentNumber,
        });
    }
    let cmp = |op, value| Cmp { index, op, value };
    Ok(match entry.args {
        Args::Any => Vec::new(),
        // One rule whose conditions are AND-ed: denied when different from every allowed value.
        Args::Unless { allowed, .. } => {
            vec![allowed.iter().map(|&value| cmp(CmpOp::Ne, value)).collect()]
        }
        // One rule per value, rules are OR-ed.
        Args::Equals { values, .. } => values
            .iter()
            .map(|&value| vec![cmp(CmpOp::Eq, value)])
            .collect(),
        // One rule per flag: (arg & flag) == flag.
        Args::AnyBit { bits, .. } => bits
            .iter()
            .map(|&bit| vec![cmp(CmpOp::MaskedEq(bit), bit)])
            .collect(),
    })
}

/// Builds a 32-bit seccompiler argument condition, attributing any error to `entry`.
fn condition(entry: &Denied, cmp: Cmp) -> Result<SeccompCondition, SeccompError> {
    let op = match cmp.op {
        CmpOp::Eq => SeccompCmpOp::Eq,
        CmpOp::Ne => SeccompCmpOp::Ne,
        CmpOp::MaskedEq(mask) => SeccompCmpOp::MaskedEq(u64::from(mask)),
    };
    SeccompCondition::new(cmp.index, SeccompCmpArgLen::Dword, op, u64::from(cmp.value)).map_err(
        |source| SeccompError::Rule {
            syscall: entry.name(),
            source,
        },
    )
}

/// Translates one deny-list entry into seccompiler rules (OR-ed; an empty list matches any call).
fn rules_for(entry: &Denied) -> Result<Vec<SeccompRule>, SeccompError> {
    match_rules(entry)?
        .into_iter()
        .map(|cmps| {
            let conditions = cmps
                .into_iter()
                .map(|cmp| condition(entry, cmp))
                .collect::<Result<Vec<_>, _>>()?;
            SeccompRule::new(conditions).map_err(|source| SeccompError::Rule {
                syscall: entry.name(),
                source,
            })
        })
        .collect()
}

/// Compiles program 1: the deny list, `Errno(EPERM)` on match, `Allow` otherwise.
fn deny_program(arch: TargetArch, list: &[Denied]) -> Result<BpfProgram, SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for entry in list {
        if rules.insert(entry.nr, rules_for(entry)?).is_some() {
            return Err(SeccompError::DuplicateSyscall {
                syscall: entry.name(),
                nr: entry.nr,
            });
        }
    }
    let syscalls = rules.len();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM.unsigned_abs()),
        arch,
    )
    .map_err(|source| SeccompError::Filter {
        arch,
        syscalls,
        source,
    })?;
    BpfProgram::try_from(filter).map_err(|source| SeccompError::Compile { arch, source })
}

/// The default policy as an OCI `linux.seccomp` section, for other runtimes (runc, crun)
/// that run a bundle runbox wrote. Native architecture only.
///
/// Rendered from the same table as the BPF programs ([`DENY_LIST`] through [`match_rules`],
/// plus [`CLONE3`]):
///
/// - `defaultAction` is `SCMP_ACT_ALLOW` and `architectures` lists the native architecture
///   only, so libseccomp gives calls made through any other ABI its "bad arch" action (kill);
/// - every rule of a denied syscall becomes one entry with action `SCMP_ACT_ERRNO` and
///   `errnoRet` 1 (`EPERM`), e.g. `clone` is one `SCMP_CMP_MASKED_EQ` entry per namespace
///   flag (libseccomp ORs the entries and ANDs the `args` of one entry);
/// - `clone3` gets `SCMP_ACT_ERRNO` with `errnoRet` 38 (`ENOSYS`).
///
/// No entry ever holds two conditions on the same argument: runc and crun do not AND those
/// (libseccomp refuses them in one rule) but add each as a rule of its own, which ORs them.
/// `personality`'s "denied unless one of these values" therefore cannot be one entry with a
/// `SCMP_CMP_NE` per allowed value (that would deny every value); it becomes one entry per
/// bit pattern of [`complement_patterns`], whose union is exactly the disallowed values.
///
/// libseccomp compares all 64 bits of an argument, where the BPF programs (and the kernel,
/// for these `int` arguments) look at the low 32 bits only, so every condition is written as
/// `SCMP_CMP_MASKED_EQ` with a mask within the low 32 bits: equality uses mask `0xffffffff`
/// rather than `SCMP_CMP_EQ`, which a caller could dodge by setting high bits (e.g. of the
/// ioctl request, the `TIOCSTI` bypass fixed in flatpak as CVE-2019-10063).
///
/// Remaining differences: on x86_64, x32 syscall numbers are killed by libseccomp's x32
/// check instead of failing with `EPERM`; and runtimes skip syscall names their libseccomp
/// does not know (runc silently, crun with a warning).
pub(crate) fn oci_profile() -> Result<LinuxSeccomp, SeccompError> {
    let native = native_arch().ok_or(SeccompError::UnsupportedArch {
        arch: std::env::consts::ARCH,
    })?;
    let syscalls = oci_syscalls(DENY_LIST)?;
    let entries = syscalls.len();
    let profile = LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActAllow)
        .architectures(vec![native.oci])
        .syscalls(syscalls)
        .build()
        .map_err(|source| SeccompError::OciProfile {
            arch: native.target,
            entries,
            source,
        })?;
    tracing::debug!(
        arch = ?native.target,
        syscalls = DENY_LIST.len() + 1,
        entries,
        "rendered default seccomp profile for OCI runtimes"
    );
    Ok(profile)
}

/// Renders `list` (then [`CLONE3`]) as OCI syscall entries, refusing duplicate names.
fn oci_syscalls(list: &[Denied]) -> Result<Vec<LinuxSyscall>, SeccompError> {
    let mut seen = BTreeSet::new();
    let mut syscalls = Vec::with_capacity(list.len() + 16);
    for entry in list.iter().chain(std::iter::once(&CLONE3)) {
        if !seen.insert(entry.name()) {
            return Err(SeccompError::DuplicateSyscall {
                syscall: entry.name(),
                nr: entry.nr,
            });
        }
    }
    for entry in list {
        let rules = match_rules(entry)?;
        if rules.is_empty() {
            syscalls.push(oci_syscall(entry, libc::EPERM, Vec::new())?);
        }
        for rule in rules {
            for oci_rule in oci_rules(entry, &rule)? {
                let args = oci_rule
                    .into_iter()
                    .map(|cmp| oci_arg(entry, cmp))
                    .collect::<Result<Vec<_>, _>>()?;
                syscalls.push(oci_syscall(entry, libc::EPERM, args)?);
            }
        }
    }
    syscalls.push(oci_syscall(&CLONE3, libc::ENOSYS, Vec::new())?);
    Ok(syscalls)
}

/// Rewrites one rule (conditions AND-ed) into rules (OR-ed) with at most one condition per
/// argument, the only shape runc and crun honour (see [`oci_profile`]).
///
/// Several conditions on one argument are supported when they all are [`CmpOp::Ne`]
/// ("argument outside a set"): they become the alternatives of [`complement_patterns`]
/// (so does a single `Ne`, to keep the 32-bit meaning).
fn oci_rules(entry: &Denied, rule: &[Cmp]) -> Result<Vec<Vec<Cmp>>, SeccompError> {
    let mut by_index: BTreeMap<u8, Vec<Cmp>> = BTreeMap::new();
    for &cmp in rule {
        by_index.entry(cmp.index).or_default().push(cmp);
    }
    // Alternatives for each argument; the rules are their cross product.
    let mut rules: Vec<Vec<Cmp>> = vec![Vec::new()];
    for (index, cmps) in by_index {
        let alternatives: Vec<Cmp> = match cmps.as_slice() {
            // Also for a single `Ne`: libseccomp's `SCMP_CMP_NE` would compare 64 bits.
            ne if ne.iter().all(|cmp| cmp.op == CmpOp::Ne) => {
                let excluded: Vec<u32> = ne.iter().map(|cmp| cmp.value).collect();
                complement_patterns(&excluded)
                    .into_iter()
                    .map(|(mask, value)| Cmp {
                        index,
                        op: CmpOp::MaskedEq(mask),
                        value,
                    })
                    .collect()
            }
            [single] => vec![*single],
            _ => {
                return Err(SeccompError::OciUnsupported {
                    syscall: entry.name(),
                    index,
                })
            }
        };
        rules = rules
            .iter()
            .flat_map(|rule| {
                alternatives.iter().map(move |&alt| {
                    let mut rule = rule.clone();
                    rule.push(alt);
                    rule
                })
            })
            .collect();
    }
    Ok(rules)
}

/// Bit patterns `(mask, value)` (a 32-bit `x` matches when `x & mask == value`) whose union
/// is exactly the 32-bit values not in `excluded`; an empty `excluded` gives the one pattern
/// `(0, 0)` matching everything.
///
/// This is the binary trie of `excluded`: every branch of the trie that no excluded value
/// takes is one pattern (the bits fixed on the way down plus the missing branch), so the
/// patterns are disjoint, each avoids every excluded value, and any other value leaves the
/// trie somewhere. Bits on which the remaining values agree are taken first (one pattern
/// each, shared by those values), then the lowest bit; for `personality`'s five allowed
/// values this gives 60 patterns (at most 32 per excluded value in general).
fn complement_patterns(excluded: &[u32]) -> Vec<(u32, u32)> {
    let mut set: Vec<u32> = excluded.to_vec();
    set.sort_unstable();
    set.dedup();
    let mut patterns = Vec::new();
    if set.is_empty() {
        patterns.push((0, 0));
    } else {
        trie_patterns(&set, u32::MAX, 0, 0, &mut patterns);
    }
    patterns
}

/// Appends the missing branches below one trie node of [`complement_patterns`]: `set` is
/// non-empty and every value in it has `value` on the bits of `mask`; `free` holds the bits
/// not decided yet.
fn trie_patterns(
    set: &[u32],
    mut free: u32,
    mut mask: u32,
    mut value: u32,
    patterns: &mut Vec<(u32, u32)>,
) {
    let first = set[0];
    while free != 0 {
        let constant = (0..32)
            .map(|shift| 1u32 << shift)
            .find(|&bit| free & bit != 0 && set.iter().all(|&x| x & bit == first & bit));
        match constant {
            // Every value agrees on `bit`: the other side is one pattern.
            Some(bit) => {
                patterns.push((mask | bit, value | (!first & bit)));
                free &= !bit;
                mask |= bit;
                value |= first & bit;
            }
            // The values disagree on every free bit: split on the lowest (both sides are
            // non-empty, so nothing is missing at this node).
            None => {
                let bit = free & free.wrapping_neg();
                for side in [0, bit] {
                    let sub: Vec<u32> = set.iter().copied().filter(|&x| x & bit == side).collect();
                    trie_patterns(&sub, free & !bit, mask | bit, value | side, patterns);
                }
                return;
            }
        }
    }
}

/// One OCI entry failing `entry` with `errno` when all `args` hold (always when empty).
fn oci_syscall(
    entry: &Denied,
    errno: libc::c_int,
    args: Vec<LinuxSeccompArg>,
) -> Result<LinuxSyscall, SeccompError> {
    let builder = LinuxSyscallBuilder::default()
        .names(vec![entry.name().to_owned()])
        .action(LinuxSeccompAction::ScmpActErrno)
        .errno_ret(errno.unsigned_abs());
    let builder = if args.is_empty() {
        builder
    } else {
        builder.args(args)
    };
    builder.build().map_err(|source| SeccompError::OciSyscall {
        syscall: entry.name(),
        source,
    })
}

/// One OCI argument condition with the 32-bit meaning of `cmp` (see [`oci_profile`]).
fn oci_arg(entry: &Denied, cmp: Cmp) -> Result<LinuxSeccompArg, SeccompError> {
    let value = u64::from(cmp.value);
    let builder = LinuxSeccompArgBuilder::default().index(usize::from(cmp.index));
    let builder = match cmp.op {
        CmpOp::Eq => builder
            .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
            .value(u64::from(u32::MAX))
            .value_two(value),
        // Not produced by `oci_rules` (64-bit comparison), mapped for completeness.
        CmpOp::Ne => builder.op(LinuxSeccompOperator::ScmpCmpNe).value(value),
        CmpOp::MaskedEq(mask) => builder
            .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
            .value(u64::from(mask))
            .value_two(value),
    };
    builder.build().map_err(|source| SeccompError::OciSyscall {
        syscall: entry.name(),
        source,
    })
}

/// BPF instruction class: load into the accumulator.
const BPF_LD: u16 = 0x00;
/// BPF instruction class: jump.
const BPF_JMP: u16 = 0x05;
/// BPF instruction class: return.
const BPF_RET: u16 = 0x06;
/// BPF load size: 32-bit word.
const BPF_W: u16 = 0x00;
/// BPF load mode: absolute offset into `struct seccomp_data`.
const BPF_ABS: u16 = 0x20;
/// BPF jump: jump if the accumulator equals the operand.
const BPF_JEQ: u16 = 0x10;
/// BPF jump: jump if the accumulator is greater than or equal to the operand (unsigned).
const BPF_JGE: u16 = 0x30;
/// BPF operand source: the immediate `k`.
const BPF_K: u16 = 0x00;

/// Offset of `nr` in `struct seccomp_data`.
const SECCOMP_DATA_NR_OFFSET: u32 = 0;
/// Offset of `arch` in `struct seccomp_data`.
const SECCOMP_DATA_ARCH_OFFSET: u32 = 4;

/// Builds a non-jump BPF instruction (same shape as seccompiler's `bpf_stmt`).
fn bpf_stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

/// Builds a conditional jump BPF instruction (same shape as seccompiler's `bpf_jump`).
fn bpf_jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// `SECCOMP_RET_ERRNO` carrying `errno`.
fn ret_errno(errno: libc::c_int) -> u32 {
    libc::SECCOMP_RET_ERRNO | (errno.unsigned_abs() & libc::SECCOMP_RET_DATA)
}

/// Hand-assembles program 2: foreign arch -> kill, x32 -> `EPERM`, `clone3` -> `ENOSYS`,
/// anything else -> allow.
fn guard_program(audit_arch: u32, reject_x32: bool) -> BpfProgram {
    // Syscall numbers are small and non-negative: the cast is lossless.
    let clone3 = CLONE3.nr as u32;
    let mut program = Vec::with_capacity(9);
    program.push(bpf_stmt(BPF_LD | BPF_W | BPF_ABS, SECCOMP_DATA_ARCH_OFFSET));
    program.push(bpf_jump(BPF_JMP | BPF_JEQ | BPF_K, audit_arch, 1, 0));
    program.push(bpf_stmt(BPF_RET | BPF_K, libc::SECCOMP_RET_KILL_PROCESS));
    program.push(bpf_stmt(BPF_LD | BPF_W | BPF_ABS, SECCOMP_DATA_NR_OFFSET));
    if reject_x32 {
        program.push(bpf_jump(BPF_JMP | BPF_JGE | BPF_K, X32_SYSCALL_BIT, 0, 1));
        program.push(bpf_stmt(BPF_RET | BPF_K, ret_errno(libc::EPERM)));
    }
    program.push(bpf_jump(BPF_JMP | BPF_JEQ | BPF_K, clone3, 0, 1));
    program.push(bpf_stmt(BPF_RET | BPF_K, ret_errno(libc::ENOSYS)));
    program.push(bpf_stmt(BPF_RET | BPF_K, libc::SECCOMP_RET_ALLOW));
    program
}

#[cfg(test)]
mod tests {
    //! Pure tests: the programs are compiled and evaluated by a small cBPF interpreter, never
    //! installed (no root, no fork).

    use super::*;
    use std::collections::HashSet;

    /// BPF ALU class (emitted by seccompiler for `MaskedEq`).
    const BPF_ALU: u16 = 0x04;
    /// BPF ALU operation: bitwise and.
    const BPF_AND: u16 = 0x50;
    /// BPF jump: unconditional.
    const BPF_JA: u16 = 0x00;
    /// BPF jump: jump if the accumulator is greater than the operand.
    const BPF_JGT: u16 = 0x20;
    /// BPF jump: jump if the accumulator has any bit of the operand.
    const BPF_JSET: u16 = 0x40;
    /// `SECCOMP_RET_ACTION_FULL`: the action part of a return value.
    const RET_ACTION_FULL: u32 = 0xffff_0000;

    /// A synthetic `struct seccomp_data` (instruction pointer left at zero).
    struct Data {
        /// Syscall number.
        nr: u32,
        /// `AUDIT_ARCH_*` value.
        arch: u32,
        /// Syscall arguments.
        args: [u64; 6],
    }

    impl Data {
        /// A native-arch call of `nr` with the given leading arguments.
        fn call(nr: i64, leading: &[u64]) -> Data {
            let mut args = [0; 6];
            args[..leading.len()].copy_from_slice(leading);
            Data {
                nr: u32::try_from(nr).unwrap(),
                arch: native().audit_arch,
                args,
            }
        }

        /// 32-bit little-endian word at byte offset `off`, as `BPF_LD|BPF_W|BPF_ABS` sees it.
        fn word(&self, off: u32) -> u32 {
            let mut bytes = Vec::with_capacity(64);
            bytes.extend_from_slice(&self.nr.to_le_bytes());
            bytes.extend_from_slice(&self.arch.to_le_bytes());
            bytes.extend_from_slice(&0u64.to_le_bytes());
            for arg in self.args {
                bytes.extend_from_slice(&arg.to_le_bytes());
            }
            let off = usize::try_from(off).unwrap();
            u32::from_le_bytes(bytes[off..off + 4].try_into().unwrap())
        }
    }

    /// The native architecture (tests only run on supported ones).
    fn native() -> NativeArch {
        native_arch().expect("tests run on x86_64 or aarch64")
    }

    /// Runs a classic BPF program over `data`, panicking on unknown opcodes or bad jumps.
    fn run(program: &[sock_filter], data: &Data) -> u32 {
        let mut acc = 0u32;
        let mut pc = 0usize;
        loop {
            let insn = &program[pc];
            pc += 1;
            let (jt, jf) = (usize::from(insn.jt), usize::from(insn.jf));
            match insn.code {
                c if c == BPF_LD | BPF_W | BPF_ABS => acc = data.word(insn.k),
                c if c == BPF_ALU | BPF_AND | BPF_K => acc &= insn.k,
                c if c == BPF_JMP | BPF_JA => pc += usize::try_from(insn.k).unwrap(),
                c if c == BPF_JMP | BPF_JEQ | BPF_K => pc += if acc == insn.k { jt } else { jf },
                c if c == BPF_JMP | BPF_JGT | BPF_K => pc += if acc > insn.k { jt } else { jf },
                c if c == BPF_JMP | BPF_JGE | BPF_K => pc += if acc >= insn.k { jt } else { jf },
                c if c == BPF_JMP | BPF_JSET | BPF_K => {
                    pc += if acc & insn.k != 0 { jt } else { jf }
                }
                c if c == BPF_RET | BPF_K => return insn.k,
                other => panic!("unexpected bpf opcode {other:#x} at {}", pc - 1),
            }
        }
    }

    /// Result of all programs combined as the kernel does: the most restrictive action wins
    /// (lowest action as a signed value), the most recently installed one on ties.
    fn verdict(filters: &Filters, data: &Data) -> u32 {
        filters
            .programs
            .iter()
            .rev()
            .map(|program| run(program, data))
            .reduce(|best, ret| {
                let rank = |r: u32| (r & RET_ACTION_FULL) as i32;
                if rank(ret) < rank(best) {
                    ret
                } else {
                    best
                }
            })
            .unwrap()
    }

    /// Compiles the default profile or fails the test.
    fn filters() -> Filters {
        Filters::compile_default().expect("default profile compiles")
    }

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

    /// Program 2 has exactly the documented layout.
    #[test]
    fn guard_program_layout() {
        let native = native();
        let program = &filters().programs[1];
        let mut expected = vec![
            sock_filter {
                code: 0x20,
                jt: 0,
                jf: 0,
                k: 4,
            },
            bpf_jump(0x15, native.audit_arch, 1, 0),
            bpf_stmt(0x06, 0x8000_0000),
            bpf_stmt(0x20, 0),
        ];
        if cfg!(target_arch = "x86_64") {
            expected.push(bpf_jump(0x35, 0x4000_0000, 0, 1));
            expected.push(bpf_stmt(0x06, 0x0005_0000 | 1));
        }
        expected.push(bpf_jump(0x15, 435, 0, 1));
        expected.push(bpf_stmt(0x06, 0x0005_0000 | 38));
        expected.push(bpf_stmt(0x06, 0x7fff_0000));
        assert_eq!(program, &expected);
        assert_eq!(libc::SYS_clone3, 435);
        assert_eq!(libc::EPERM, 1);
        assert_eq!(libc::ENOSYS, 38);
    }

    /// Program 1 starts with seccompiler's arch check and loads the syscall number.
    #[test]
    fn deny_program_prologue() {
        let program = &filters().programs[0];
        assert_eq!(program[0], bpf_stmt(0x20, 4));
        assert_eq!(program[1], bpf_jump(0x15, native().audit_arch, 1, 0));
        assert_eq!(program[2], bpf_stmt(0x06, libc::SECCOMP_RET_KILL_PROCESS));
        assert_eq!(program[3], bpf_stmt(0x20, 0));
    }

    /// The deny list holds no duplicate syscall, by name or by number.
    #[test]
    fn deny_list_has_no_duplicates() {
        let mut names = HashSet::new();
        let mut numbers = HashSet::new();
        for entry in DENY_LIST {
            assert!(names.insert(entry.name()), "duplicate {}", entry.name());
            assert!(numbers.insert(entry.nr), "duplicate nr {}", entry.nr);
        }
        assert_eq!(names.len(), DENY_LIST.len());
    }

    /// Every name is a `SYS_*` constant with a plausible native number that ends up compared
    /// against in program 1.
    #[test]
    fn every_name_resolves() {
        let program = &filters().programs[0];
        let compared: HashSet<u32> = program
            .iter()
            .skip(4)
            .filter(|insn| insn.code == BPF_JMP | BPF_JEQ | BPF_K && insn.jt == 0 && insn.jf == 1)
            .map(|insn| insn.k)
            .collect();
        for entry in DENY_LIST {
            assert!(entry.ident.starts_with("SYS_"), "{}", entry.ident);
            assert!(!entry.name().is_empty());
            assert!(
                (0..i64::from(X32_SYSCALL_BIT)).contains(&entry.nr),
                "{} has nr {}",
                entry.name(),
                entry.nr
            );
            assert!(
                compared.contains(&u32::try_from(entry.nr).unwrap()),
                "{} (nr {}) is not in the compiled program",
                entry.name(),
                entry.nr
            );
        }
        // Spot checks against the kernel tables.
        let expect: &[(&str, i64)] = if cfg!(target_arch = "x86_64") {
            &[("mount", 165), ("unshare", 272), ("kexec_file_load", 320)]
        } else {
            &[("mount", 40), ("unshare", 97), ("kexec_file_load", 294)]
        };
        for (name, nr) in expect {
            let entry = DENY_LIST.iter().find(|e| e.name() == *name).unwrap();
            assert_eq!(entry.nr, *nr, "{name}");
        }
    }

    /// A table bug (duplicate or empty condition) is reported, not silently compiled.
    #[test]
    fn table_bugs_are_errors() {
        let arch = native().target;
        let dup = [sys!(SYS_mount), sys!(SYS_mount)];
        assert!(matches!(
            deny_program(arch, &dup),
            Err(SeccompError::DuplicateSyscall {
                syscall: "mount",
                ..
            })
        ));
        let empty = [sys!(
            SYS_socket,
            Args::Equals {
                index: 0,
                values: &[]
            }
        )];
        assert!(matches!(
            deny_program(arch, &empty),
            Err(SeccompError::EmptyArgs { syscall: "socket" })
        ));
        let bad_index = [sys!(
            SYS_socket,
            Args::Equals {
                index: 6,
                values: &[1]
            }
        )];
        let err = deny_program(arch, &bad_index).unwrap_err();
        assert_eq!(err.to_string(), "invalid seccomp rule for syscall `socket`");
    }

    /// The combined verdicts match the policy for representative calls.
    #[test]
    fn policy_verdicts() {
        let filters = filters();
        let allow = libc::SECCOMP_RET_ALLOW;
        let eperm = ret_errno(libc::EPERM);
        let enosys = ret_errno(libc::ENOSYS);
        let check = |what: &str, data: Data, expected: u32| {
            assert_eq!(verdict(&filters, &data), expected, "{what}");
        };
        let sigchld = libc::SIGCHLD as u64;
        let thread_flags = (libc::CLONE_VM
            | libc::CLONE_FS
            | libc::CLONE_FILES
            | libc::CLONE_SIGHAND
            | libc::CLONE_THREAD
            | libc::CLONE_SYSVSEM
            | libc::CLONE_SETTLS
            | libc::CLONE_PARENT_SETTID
            | libc::CLONE_CHILD_CLEARTID) as u64;

        check("getpid", Data::call(libc::SYS_getpid, &[]), allow);
        check("read", Data::call(libc::SYS_read, &[0, 0, 1]), allow);
        check("mount", Data::call(libc::SYS_mount, &[]), eperm);
        check("keyctl", Data::call(libc::SYS_keyctl, &[]), eperm);
        check("unshare", Data::call(libc::SYS_unshare, &[0]), eperm);
        check("clone3", Data::call(libc::SYS_clone3, &[]), enosys);
        check(
            "fork-like clone",
            Data::call(libc::SYS_clone, &[sigchld]),
            allow,
        );
        check(
            "thread clone",
            Data::call(libc::SYS_clone, &[thread_flags]),
            allow,
        );
        for &flag in CLONE_NAMESPACE_FLAGS {
            let flags = u64::from(flag) | sigchld;
            check("clone newns", Data::call(libc::SYS_clone, &[flags]), eperm);
        }
        let af_inet = libc::AF_INET as u64;
        check(
            "socket inet",
            Data::call(libc::SYS_socket, &[af_inet]),
            allow,
        );
        check("socket vsock", Data::call(libc::SYS_socket, &[40]), eperm);
        check(
            "ioctl tcgets",
            Data::call(libc::SYS_ioctl, &[0, 0x5401]),
            allow,
        );
        check(
            "ioctl tiocsti",
            Data::call(libc::SYS_ioctl, &[0, 0x5412]),
            eperm,
        );
        check(
            "ioctl tioclinux",
            Data::call(libc::SYS_ioctl, &[0, 0x541C]),
            eperm,
        );
        // Only the low 32 bits of the ioctl request matter to the kernel.
        let high = 0xffff_ffff_0000_5412;
        check(
            "ioctl tiocsti hi",
            Data::call(libc::SYS_ioctl, &[0, high]),
            eperm,
        );
        for &persona in PERSONALITY_ALLOWED {
            let args = [u64::from(persona)];
            check(
                "personality ok",
                Data::call(libc::SYS_personality, &args),
                allow,
            );
        }
        check(
            "personality",
            Data::call(libc::SYS_personality, &[0x40000]),
            eperm,
        );

        let mut foreign = Data::call(libc::SYS_getpid, &[]);
        foreign.arch = 0x4000_0003; // AUDIT_ARCH_I386
        check("foreign arch", foreign, libc::SECCOMP_RET_KILL_PROCESS);

        if cfg!(target_arch = "x86_64") {
            let mut x32 = Data::call(libc::SYS_getpid, &[]);
            x32.nr |= X32_SYSCALL_BIT;
            check("x32 getpid", x32, eperm);
        }
    }

    /// Builds the OCI profile or fails the test.
    fn profile() -> LinuxSeccomp {
        oci_profile().expect("default OCI profile builds")
    }

    /// The profile's syscall entries.
    fn entries(profile: &LinuxSeccomp) -> &[LinuxSyscall] {
        profile.syscalls().as_deref().expect("profile has syscalls")
    }

    /// The entries naming `name`.
    fn entries_for<'a>(profile: &'a LinuxSeccomp, name: &str) -> Vec<&'a LinuxSyscall> {
        entries(profile)
            .iter()
            .filter(|e| e.names().iter().any(|n| n == name))
            .collect()
    }

    /// The argument conditions of an entry (empty when it has none).
    fn args_of(entry: &LinuxSyscall) -> &[LinuxSeccompArg] {
        entry.args().as_deref().unwrap_or(&[])
    }

    /// The profile names exactly the table's syscalls plus `clone3`, one name per entry, with
    /// one entry per rule of [`match_rules`].
    #[test]
    fn oci_profile_lists_the_table() {
        let profile = profile();
        let listed: BTreeSet<&str> = entries(&profile)
            .iter()
            .flat_map(|e| e.names().iter().map(String::as_str))
            .collect();
        let expected: BTreeSet<&str> = DENY_LIST
            .iter()
            .map(Denied::name)
            .chain(["clone3"])
            .collect();
        assert_eq!(listed, expected);
        for entry in entries(&profile) {
            assert_eq!(entry.names().len(), 1, "{:?}", entry.names());
        }
        // One entry per OCI rule, and no entry with two conditions on one argument.
        for entry in entries(&profile) {
            let indexes: BTreeSet<usize> = args_of(entry).iter().map(|a| a.index()).collect();
            assert_eq!(indexes.len(), args_of(entry).len(), "{:?}", entry.names());
        }
        for denied in DENY_LIST {
            let mut rules = 0;
            for rule in match_rules(denied).unwrap() {
                rules += oci_rules(denied, &rule).unwrap().len();
            }
            let rules = rules.max(1);
            assert_eq!(
                entries_for(&profile, denied.name()).len(),
                rules,
                "{}",
                denied.name()
            );
        }
        assert_eq!(entries_for(&profile, "clone3").len(), 1);
        // Kernel/libseccomp names, not libc identifiers.
        for name in [
            "umount2",
            "io_uring_setup",
            "kexec_file_load",
            "personality",
        ] {
            assert!(listed.contains(name), "{name}");
        }
        assert!(listed.iter().all(|n| !n.starts_with("SYS_")));
    }

    /// Allow by default, native arch only, `EPERM` for the table and `ENOSYS` for `clone3`.
    #[test]
    fn oci_profile_actions() {
        let profile = profile();
        assert_eq!(profile.default_action(), LinuxSeccompAction::ScmpActAllow);
        assert_eq!(profile.default_errno_ret(), None);
        assert_eq!(profile.architectures(), &Some(vec![native().oci]));
        let expected_arch = if cfg!(target_arch = "x86_64") {
            Arch::ScmpArchX86_64
        } else {
            Arch::ScmpArchAarch64
        };
        assert_eq!(native().oci, expected_arch);
        assert_eq!(profile.flags(), &None);
        for entry in entries(&profile) {
            assert_eq!(entry.action(), LinuxSeccompAction::ScmpActErrno);
            let errno = if entry.names()[0] == "clone3" { 38 } else { 1 };
            assert_eq!(entry.errno_ret(), Some(errno), "{:?}", entry.names());
        }
        for denied in DENY_LIST.iter().chain([&CLONE3]) {
            if matches!(denied.args, Args::Any) {
                let found = entries_for(&profile, denied.name());
                assert_eq!(found.len(), 1);
                assert_eq!(found[0].args(), &None, "{}", denied.name());
            }
        }
    }

    /// `personality` is one single-condition `SCMP_CMP_MASKED_EQ` entry per pattern of
    /// [`complement_patterns`]: never two conditions on one argument, which runc and crun
    /// would OR (denying every value).
    #[test]
    fn oci_personality_rules() {
        let profile = profile();
        let found = entries_for(&profile, "personality");
        assert_eq!(found.len(), complement_patterns(PERSONALITY_ALLOWED).len());
        assert_eq!(found.len(), 60);
        let patterns: Vec<(u64, u64)> = found
            .iter()
            .map(|entry| {
                let args = args_of(entry);
                assert_eq!(args.len(), 1);
                assert_eq!(args[0].index(), 0);
                assert_eq!(args[0].op(), LinuxSeccompOperator::ScmpCmpMaskedEq);
                assert!(args[0].value() <= u64::from(u32::MAX), "32-bit mask");
                (args[0].value(), args[0].value_two().unwrap())
            })
            .collect();
        let denied = |x: u64| patterns.iter().any(|&(m, v)| x & m == v);
        for &allowed in PERSONALITY_ALLOWED {
            assert!(!denied(u64::from(allowed)), "{allowed:#x}");
            // The kernel reads 32 bits: high bits change nothing.
            assert!(
                !denied(u64::from(allowed) | 0xdead_0000_0000),
                "{allowed:#x}"
            );
        }
        for x in [
            0x40000u64,
            0x0400000,
            0x1,
            0x9,
            0x20001,
            0xffff_fffe,
            0x7fff_ffff,
        ] {
            assert!(denied(x), "{x:#x}");
        }
    }

    /// The union of the patterns is exactly the complement of the excluded set, on edge
    /// values and pseudo-random ones.
    #[test]
    fn complement_patterns_cover_exactly() {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            // xorshift64*
            rng ^= rng >> 12;
            rng ^= rng << 25;
            rng ^= rng >> 27;
            (rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) as u32
        };
        let mut sets: Vec<Vec<u32>> = vec![
            PERSONALITY_ALLOWED.to_vec(),
            vec![0],
            vec![u32::MAX],
            vec![0, u32::MAX],
            vec![5, 5, 6],
        ];
        for len in 1..8 {
            sets.push((0..len).map(|_| next()).collect());
            sets.push((0..len).map(|_| next() & 0x0003_0f0f).collect());
        }
        for excluded in &sets {
            let patterns = complement_patterns(excluded);
            assert!(patterns.len() <= 32 * excluded.len(), "{excluded:x?}");
            let matches = |x: u32| patterns.iter().filter(|&&(m, v)| x & m == v).count();
            let mut probes: Vec<u32> = excluded.clone();
            for &e in excluded {
                for shift in 0..32 {
                    probes.push(e ^ (1 << shift));
                    probes.push(e ^ (3 << shift));
                }
            }
            for shift in 0..32 {
                probes.extend([1 << shift, !(1 << shift), 0, u32::MAX]);
            }
            probes.extend((0..20_000).map(|_| next()));
            for x in probes {
                // Disjoint patterns: a value matches at most one.
                let expected = usize::from(!excluded.contains(&x));
                assert_eq!(matches(x), expected, "{x:#x} vs {excluded:x?}");
            }
        }
        assert_eq!(complement_patterns(&[]), vec![(0, 0)]);
    }

    /// Several conditions on one argument that are not all `Ne` are refused, not mistranslated.
    #[test]
    fn oci_rules_refuse_mixed_conditions() {
        let entry = sys!(SYS_socket);
        let mixed = [
            Cmp {
                index: 0,
                op: CmpOp::Eq,
                value: 1,
            },
            Cmp {
                index: 0,
                op: CmpOp::Ne,
                value: 2,
            },
        ];
        let err = oci_rules(&entry, &mixed).unwrap_err();
        assert!(matches!(
            err,
            SeccompError::OciUnsupported {
                syscall: "socket",
                index: 0
            }
        ));
        // Conditions on distinct arguments stay AND-ed in one rule.
        let distinct = [
            Cmp {
                index: 0,
                op: CmpOp::Eq,
                value: 1,
            },
            Cmp {
                index: 2,
                op: CmpOp::MaskedEq(4),
                value: 4,
            },
        ];
        assert_eq!(
            oci_rules(&entry, &distinct).unwrap(),
            vec![distinct.to_vec()]
        );
        // Not-equal on one argument and a condition on another: cross product.
        let cross = [
            Cmp {
                index: 0,
                op: CmpOp::Ne,
                value: 7,
            },
            Cmp {
                index: 1,
                op: CmpOp::Eq,
                value: 9,
            },
        ];
        let rules = oci_rules(&entry, &cross).unwrap();
        assert_eq!(rules.len(), 32);
        for rule in rules {
            assert_eq!(rule.len(), 2);
            assert_eq!(rule[1], cross[1]);
        }
    }

    /// `clone` is one `SCMP_CMP_MASKED_EQ` entry per namespace flag.
    #[test]
    fn oci_clone_rules() {
        let profile = profile();
        let found = entries_for(&profile, "clone");
        assert_eq!(found.len(), CLONE_NAMESPACE_FLAGS.len());
        for (entry, &flag) in found.iter().zip(CLONE_NAMESPACE_FLAGS) {
            let args = args_of(entry);
            assert_eq!(args.len(), 1);
            assert_eq!(args[0].index(), 0);
            assert_eq!(args[0].op(), LinuxSeccompOperator::ScmpCmpMaskedEq);
            assert_eq!(args[0].value(), u64::from(flag));
            assert_eq!(args[0].value_two(), Some(u64::from(flag)));
        }
    }

    /// `socket(AF_VSOCK)` and `ioctl(TIOCSTI/TIOCLINUX)` compare the low 32 bits only.
    #[test]
    fn oci_equality_rules_ignore_high_bits() {
        let profile = profile();
        let check = |name: &str, index: usize, values: &[u32]| {
            let found = entries_for(&profile, name);
            assert_eq!(found.len(), values.len(), "{name}");
            for (entry, &value) in found.iter().zip(values) {
                let args = args_of(entry);
                assert_eq!(args.len(), 1, "{name}");
                assert_eq!(args[0].index(), index, "{name}");
                assert_eq!(args[0].op(), LinuxSeccompOperator::ScmpCmpMaskedEq);
                assert_eq!(args[0].value(), 0xffff_ffff, "{name}");
                assert_eq!(args[0].value_two(), Some(u64::from(value)), "{name}");
            }
        };
        check("socket", 0, &[AF_VSOCK]);
        check("ioctl", 1, &[TIOCSTI, TIOCLINUX]);
    }

    /// The JSON form is what runc/crun expect.
    #[test]
    fn oci_profile_json() {
        let profile = profile();
        let json = serde_json::to_string(&profile).unwrap();
        assert!(
            json.contains(r#""defaultAction":"SCMP_ACT_ALLOW""#),
            "{json}"
        );
        let arch = if cfg!(target_arch = "x86_64") {
            r#""architectures":["SCMP_ARCH_X86_64"]"#
        } else {
            r#""architectures":["SCMP_ARCH_AARCH64"]"#
        };
        assert!(json.contains(arch), "{json}");
        assert!(
            json.contains(r#"{"names":["keyctl"],"action":"SCMP_ACT_ERRNO","errnoRet":1}"#),
            "{json}"
        );
        assert!(
            json.contains(r#"{"names":["clone3"],"action":"SCMP_ACT_ERRNO","errnoRet":38}"#),
            "{json}"
        );
        // Only masked comparisons within the low 32 bits (see `oci_profile`).
        assert!(!json.contains(r#""op":"SCMP_CMP_NE""#), "{json}");
        assert!(!json.contains(r#""op":"SCMP_CMP_EQ""#), "{json}");
        assert!(json.contains(r#""op":"SCMP_CMP_MASKED_EQ""#), "{json}");
        assert!(json.contains(r#""valueTwo":"#), "{json}");
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["architectures"].as_array().unwrap().len(), 1);
        assert_eq!(
            value["syscalls"].as_array().unwrap().len(),
            entries(&profile).len()
        );
        let back: LinuxSeccomp = serde_json::from_str(&json).unwrap();
        assert_eq!(back, profile);
    }

    /// Table bugs are reported by the OCI renderer too.
    #[test]
    fn oci_table_bugs_are_errors() {
        assert!(matches!(
            oci_syscalls(&[sys!(SYS_mount), sys!(SYS_mount)]),
            Err(SeccompError::DuplicateSyscall {
                syscall: "mount",
                ..
            })
        ));
        assert!(matches!(
            oci_syscalls(&[sys!(SYS_clone3)]),
            Err(SeccompError::DuplicateSyscall {
                syscall: "clone3",
                ..
            })
        ));
        let empty = [sys!(
            SYS_socket,
            Args::Unless {
                index: 0,
                allowed: &[]
            }
        )];
        assert!(matches!(
            oci_syscalls(&empty),
            Err(SeccompError::EmptyArgs { syscall: "socket" })
        ));
        let bad_index = [sys!(
            SYS_ioctl,
            Args::AnyBit {
                index: 6,
                bits: &[1]
            }
        )];
        let err = oci_syscalls(&bad_index).unwrap_err();
        assert_eq!(err.to_string(), "invalid seccomp rule for syscall `ioctl`");
    }

    /// What libseccomp would answer under `profile` (64-bit comparisons, entries OR-ed,
    /// conditions AND-ed): `Some(errno)` when denied, `None` when allowed.
    fn oci_verdict(profile: &LinuxSeccomp, name: &str, args: &[u64; 6]) -> Option<u32> {
        entries_for(profile, name)
            .into_iter()
            .find(|entry| {
                args_of(entry).iter().all(|cond| {
                    let arg = args[cond.index()];
                    match cond.op() {
                        LinuxSeccompOperator::ScmpCmpEq => arg == cond.value(),
                        LinuxSeccompOperator::ScmpCmpNe => arg != cond.value(),
                        LinuxSeccompOperator::ScmpCmpMaskedEq => {
                            arg & cond.value() == cond.value_two().unwrap_or(0)
                        }
                        other => panic!("unexpected operator {other:?}"),
                    }
                })
            })
            .map(|entry| entry.errno_ret().unwrap())
    }

    /// The OCI profile (under libseccomp's 64-bit comparisons) and the BPF programs agree on
    /// every table entry for arguments built from the table's own values, with and without
    /// high bits set.
    #[test]
    fn oci_profile_matches_bpf() {
        let filters = filters();
        let profile = profile();
        let mut interesting: BTreeSet<u64> = [0, 1, 0x40000, 0x5401, libc::AF_INET as u64]
            .into_iter()
            .collect();
        for denied in DENY_LIST {
            for cmp in match_rules(denied).unwrap().into_iter().flatten() {
                interesting.insert(u64::from(cmp.value));
                interesting.insert(u64::from(cmp.value) | u64::from(libc::SIGCHLD as u32));
            }
        }
        let high = [0, 0xffff_ffff_0000_0000, 0x1_0000_0000];
        let mut compared = 0;
        for denied in DENY_LIST.iter().chain([&CLONE3]) {
            for index in 0..2 {
                for &value in &interesting {
                    for &hi in &high {
                        let mut args = [0u64; 6];
                        args[index] = value | hi;
                        let bpf = verdict(&filters, &Data::call(denied.nr, &args));
                        let bpf = match bpf {
                            r if r == libc::SECCOMP_RET_ALLOW => None,
                            r if r & RET_ACTION_FULL == libc::SECCOMP_RET_ERRNO => {
                                Some(r & libc::SECCOMP_RET_DATA)
                            }
                            r => panic!("unexpected verdict {r:#x}"),
                        };
                        let oci = oci_verdict(&profile, denied.name(), &args);
                        assert_eq!(oci, bpf, "{} {args:x?}", denied.name());
                        compared += 1;
                    }
                }
            }
        }
        assert!(compared > 1000, "{compared}");
    }
}
