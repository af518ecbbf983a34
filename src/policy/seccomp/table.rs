//! The deny list: the policy as pure data (no syscalls), shared by the BPF and OCI backends.

use libcontainer::oci_spec::runtime::Arch;
use seccompiler::{BackendError, TargetArch};

use super::error::SeccompError;

/// Native architecture parameters of the profile.
#[derive(Clone, Copy, Debug)]
pub(super) struct NativeArch {
    /// seccompiler's name for the architecture.
    pub(super) target: TargetArch,
    /// `AUDIT_ARCH_*` value the kernel reports in `seccomp_data.arch`.
    pub(super) audit_arch: u32,
    /// Whether syscall numbers with the x32 bit set must be rejected (x86_64 only).
    pub(super) reject_x32: bool,
    /// libseccomp's name for the architecture, as written in an OCI profile.
    pub(super) oci: Arch,
}

/// Returns the parameters of the architecture this crate was compiled for, if supported.
#[cfg(all(target_arch = "x86_64", target_pointer_width = "64"))]
pub(super) fn native_arch() -> Option<NativeArch> {
    Some(NativeArch {
        target: TargetArch::x86_64,
        audit_arch: AUDIT_ARCH_X86_64,
        reject_x32: true,
        oci: Arch::ScmpArchX86_64,
    })
}

/// Returns the parameters of the architecture this crate was compiled for, if supported.
#[cfg(target_arch = "aarch64")]
pub(super) fn native_arch() -> Option<NativeArch> {
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
pub(super) fn native_arch() -> Option<NativeArch> {
    None
}

/// `AUDIT_ARCH_X86_64` (`EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE`), see `linux/audit.h`.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;
/// `AUDIT_ARCH_AARCH64` (`EM_AARCH64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE`), see `linux/audit.h`.
#[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
const AUDIT_ARCH_AARCH64: u32 = 183 | 0x8000_0000 | 0x4000_0000;
/// `__X32_SYSCALL_BIT`: syscall numbers at or above it belong to the x32 ABI on x86_64.
pub(super) const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// `AF_VSOCK` address family (kernel ABI value; not exported by libc for every target env).
pub(super) const AF_VSOCK: u32 = 40;
/// `TIOCSTI` ioctl: fakes terminal input (lets a process inject commands into its tty).
/// `AF_NETLINK`.
pub(super) const AF_NETLINK: u32 = 16;
/// `NETLINK_KOBJECT_UEVENT`: the kernel's device events.
pub(super) const NETLINK_KOBJECT_UEVENT: u32 = 15;
/// fcntl commands denied: `F_SETLK`, `F_SETLKW`, `F_OFD_SETLK`, `F_OFD_SETLKW`, `F_SETLEASE`.
pub(super) const FCNTL_DENIED: &[u32] = &[6, 7, 37, 38, 1024];
pub(super) const TIOCSTI: u32 = 0x5412;
/// `TIOCLINUX` ioctl: virtual-console subcommands (selection paste can also inject input).
pub(super) const TIOCLINUX: u32 = 0x541C;
/// `CLONE_NEWTIME` (kernel ABI value; not exported by libc for every target env).
///
/// It overlaps the exit-signal byte of legacy `clone`, so the kernel only honours it through
/// `unshare`/`clone3`; the rule on `clone` is kept for completeness and only ever matches
/// calls the kernel would reject with `EINVAL` anyway.
const CLONE_NEWTIME: u32 = 0x80;

/// Namespace-creating `clone` flags that the profile refuses.
pub(super) const CLONE_NAMESPACE_FLAGS: &[u32] = &[
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
pub(super) const PERSONALITY_ALLOWED: &[u32] = &[0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// How the arguments of a denied syscall are matched (32-bit comparisons: every argument
/// checked here is an `int`/`unsigned int` in the kernel, or only its low 32 bits are used).
#[derive(Clone, Copy, Debug)]
pub(super) enum Args {
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
    /// Denied when, for one of the `alternatives`, every `(index, value)` pair holds
    /// (argument `index` equals `value`).
    Matches {
        /// OR-ed alternatives, each a list of AND-ed argument equalities.
        alternatives: &'static [&'static [(u8, u32)]],
    },
}

/// One entry of the deny list.
#[derive(Clone, Copy, Debug)]
pub(super) struct Denied {
    /// Name of the libc constant, e.g. `SYS_mount`.
    pub(super) ident: &'static str,
    /// Syscall number on the native architecture.
    pub(super) nr: i64,
    /// Which calls are denied.
    pub(super) args: Args,
}

impl Denied {
    /// Syscall name without the `SYS_` prefix.
    pub(super) fn name(&self) -> &'static str {
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
#[cfg(test)]
pub(super) use sys;

/// The deny list for the native architecture.
#[cfg(any(
    all(target_arch = "x86_64", target_pointer_width = "64"),
    target_arch = "aarch64"
))]
pub(super) const DENY_LIST: &[Denied] = &[
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
    // vsock reaches the hypervisor; a kobject-uevent netlink socket hears the host's device
    // events (a network namespace owned by the initial user namespace receives them all).
    sys!(
        SYS_socket,
        Args::Matches {
            alternatives: &[
                &[(0, AF_VSOCK)],
                &[(0, AF_NETLINK), (2, NETLINK_KOBJECT_UEVENT)]
            ]
        }
    ),
    // Byte-range and open-file-description locks: the kernel does not charge them to the
    // memory cgroup and bounds neither their number nor their memory (RLIMIT_LOCKS is not
    // enforced), so one sandbox could pin gigabytes of kernel memory. flock(2) stays allowed
    // (one lock per open file, bounded by RLIMIT_NOFILE and pids). Leases let a holder stall
    // writers of a file it shares with others.
    sys!(
        SYS_fcntl,
        Args::Equals {
            index: 1,
            values: FCNTL_DENIED
        }
    ),
    // Linux AIO contexts come from one host-wide table (fs.aio-max-nr) that one sandbox
    // could drain for everyone; io_uring is denied above for its own reasons.
    sys!(SYS_io_setup),
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
pub(super) const DENY_LIST: &[Denied] = &[];

/// The syscall program 2 answers with `ENOSYS`, so that libc falls back to `clone`, whose
/// flags the deny list can inspect (not part of [`DENY_LIST`]: its action differs).
pub(super) const CLONE3: Denied = sys!(SYS_clone3);

/// Highest syscall argument index (syscalls take at most six arguments).
const MAX_ARG_INDEX: u8 = 5;

/// Comparison applied to the low 32 bits of a syscall argument, independent of the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum CmpOp {
    /// The argument equals the value.
    Eq,
    /// The argument differs from the value.
    Ne,
    /// The argument, masked with the given mask, equals the value.
    MaskedEq(u32),
}

/// One argument condition of a rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Cmp {
    /// Argument position (0-based).
    pub(super) index: u8,
    /// Comparison to apply.
    pub(super) op: CmpOp,
    /// Value compared with.
    pub(super) value: u32,
}

/// Translates one deny-list entry into backend-independent rules: the syscall is denied when
/// any rule matches, and a rule matches when all its conditions hold. An empty list means
/// "denied whatever the arguments"; no rule is ever empty.
///
/// Both the BPF compiler (`bpf::rules_for`) and the OCI profile (`oci::oci_syscalls`) start
/// from here, so the two cannot drift apart.
pub(super) fn match_rules(entry: &Denied) -> Result<Vec<Vec<Cmp>>, SeccompError> {
    let (index, values) = match entry.args {
        Args::Any => return Ok(Vec::new()),
        Args::Matches { alternatives } => return match_all_of(entry, alternatives),
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
        Args::Any | Args::Matches { .. } => Vec::new(),
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

/// The rules of an [`Args::Matches`] entry: one rule per alternative.
fn match_all_of(
    entry: &Denied,
    alternatives: &[&[(u8, u32)]],
) -> Result<Vec<Vec<Cmp>>, SeccompError> {
    if alternatives.is_empty() || alternatives.iter().any(|a| a.is_empty()) {
        return Err(SeccompError::EmptyArgs {
            syscall: entry.name(),
        });
    }
    alternatives
        .iter()
        .map(|pairs| {
            pairs
                .iter()
                .map(|&(index, value)| {
                    if index > MAX_ARG_INDEX {
                        return Err(SeccompError::Rule {
                            syscall: entry.name(),
                            source: BackendError::InvalidArgumentNumber,
                        });
                    }
                    Ok(Cmp {
                        index,
                        op: CmpOp::Eq,
                        value,
                    })
                })
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    //! Pure tests of the table (the compiled program is inspected, never installed).

    use std::collections::HashSet;

    use super::super::bpf::{BPF_JEQ, BPF_JMP, BPF_K};
    use super::super::testutil::filters;
    use super::*;

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
}
