//! Default seccomp policy: compiled with seccompiler once, installed right before execve.
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

use std::collections::BTreeMap;
use std::sync::Arc;

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

    /// Installs every program in this thread (requires no_new_privs already set). Called in the container
    /// init just before execve; must allocate nothing (no Vec building here, just apply the precompiled programs).
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
}

/// Returns the parameters of the architecture this crate was compiled for, if supported.
#[cfg(all(target_arch = "x86_64", target_pointer_width = "64"))]
fn native_arch() -> Option<NativeArch> {
    Some(NativeArch {
        target: TargetArch::x86_64,
        audit_arch: AUDIT_ARCH_X86_64,
        reject_x32: true,
    })
}

/// Returns the parameters of the architecture this crate was compiled for, if supported.
#[cfg(target_arch = "aarch64")]
fn native_arch() -> Option<NativeArch> {
    Some(NativeArch {
        target: TargetArch::aarch64,
        audit_arch: AUDIT_ARCH_AARCH64,
        reject_x32: false,
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

/// Builds a 32-bit argument condition, attributing any error to `entry`.
fn condition(
    entry: &Denied,
    index: u8,
    op: SeccompCmpOp,
    value: u32,
) -> Result<SeccompCondition, SeccompError> {
    SeccompCondition::new(index, SeccompCmpArgLen::Dword, op, u64::from(value)).map_err(|source| {
        SeccompError::Rule {
            syscall: entry.name(),
            source,
        }
    })
}

/// Builds a rule from its conditions, attributing any error to `entry`.
fn rule(entry: &Denied, conditions: Vec<SeccompCondition>) -> Result<SeccompRule, SeccompError> {
    SeccompRule::new(conditions).map_err(|source| SeccompError::Rule {
        syscall: entry.name(),
        source,
    })
}

/// Translates one deny-list entry into seccompiler rules (OR-ed; an empty list matches any call).
fn rules_for(entry: &Denied) -> Result<Vec<SeccompRule>, SeccompError> {
    let values = match entry.args {
        Args::Any => return Ok(Vec::new()),
        Args::Unless { allowed: v, .. }
        | Args::Equals { values: v, .. }
        | Args::AnyBit { bits: v, .. } => v,
    };
    // An empty rule list would deny the syscall unconditionally: refuse it.
    if values.is_empty() {
        return Err(SeccompError::EmptyArgs {
            syscall: entry.name(),
        });
    }
    match entry.args {
        Args::Any => Ok(Vec::new()),
        // One rule whose conditions are AND-ed: denied when different from every allowed value.
        Args::Unless { index, allowed } => {
            let conditions = allowed
                .iter()
                .map(|&value| condition(entry, index, SeccompCmpOp::Ne, value))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(vec![rule(entry, conditions)?])
        }
        // One rule per value, rules are OR-ed.
        Args::Equals { index, values } => values
            .iter()
            .map(|&value| {
                rule(
                    entry,
                    vec![condition(entry, index, SeccompCmpOp::Eq, value)?],
                )
            })
            .collect(),
        // One rule per flag: (arg & flag) == flag.
        Args::AnyBit { index, bits } => bits
            .iter()
            .map(|&bit| {
                let op = SeccompCmpOp::MaskedEq(u64::from(bit));
                rule(entry, vec![condition(entry, index, op, bit)?])
            })
            .collect(),
    }
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
    let clone3 = libc::SYS_clone3 as u32;
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
}
