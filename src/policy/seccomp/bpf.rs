//! Compiling the deny list into BPF: seccompiler's deny program and the hand-assembled guard.

use std::collections::BTreeMap;

use seccompiler::{
    sock_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

use super::error::SeccompError;
use super::table::{match_rules, Cmp, CmpOp, Denied, CLONE3, X32_SYSCALL_BIT};

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
pub(super) fn deny_program(arch: TargetArch, list: &[Denied]) -> Result<BpfProgram, SeccompError> {
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
pub(super) const BPF_LD: u16 = 0x00;
/// BPF instruction class: jump.
pub(super) const BPF_JMP: u16 = 0x05;
/// BPF instruction class: return.
pub(super) const BPF_RET: u16 = 0x06;
/// BPF load size: 32-bit word.
pub(super) const BPF_W: u16 = 0x00;
/// BPF load mode: absolute offset into `struct seccomp_data`.
pub(super) const BPF_ABS: u16 = 0x20;
/// BPF jump: jump if the accumulator equals the operand.
pub(super) const BPF_JEQ: u16 = 0x10;
/// BPF jump: jump if the accumulator is greater than or equal to the operand (unsigned).
pub(super) const BPF_JGE: u16 = 0x30;
/// BPF operand source: the immediate `k`.
pub(super) const BPF_K: u16 = 0x00;

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
pub(super) fn guard_program(audit_arch: u32, reject_x32: bool) -> BpfProgram {
    // Syscall numbers are small and non-negative: the conversion cannot fail.
    let clone3 = u32::try_from(CLONE3.nr).unwrap_or(u32::MAX);
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

    use super::super::table::{sys, Args, CLONE_NAMESPACE_FLAGS, PERSONALITY_ALLOWED};
    use super::super::testutil::{filters, native, verdict, Data};
    use super::*;

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
        // Netlink: route sockets (getifaddrs) work, the host's device events do not.
        let netlink = libc::AF_NETLINK as u64;
        let raw = libc::SOCK_RAW as u64;
        check(
            "socket netlink route",
            Data::call(libc::SYS_socket, &[netlink, raw, 0]),
            allow,
        );
        check(
            "socket netlink uevent",
            Data::call(libc::SYS_socket, &[netlink, raw, 15]),
            eperm,
        );
        check(
            "socket inet proto 15",
            Data::call(libc::SYS_socket, &[af_inet, raw, 15]),
            allow,
        );
        for (cmd, expected) in [
            (libc::F_GETLK, allow),
            (libc::F_SETFD, allow),
            (libc::F_SETFL, allow),
            (libc::F_OFD_GETLK, allow),
            (libc::F_SETLK, eperm),
            (libc::F_SETLKW, eperm),
            (libc::F_OFD_SETLK, eperm),
            (libc::F_OFD_SETLKW, eperm),
            (libc::F_SETLEASE, eperm),
        ] {
            let cmd = u64::try_from(cmd).unwrap();
            check("fcntl", Data::call(libc::SYS_fcntl, &[0, cmd]), expected);
        }
        check("io_setup", Data::call(libc::SYS_io_setup, &[]), eperm);
        check("flock", Data::call(libc::SYS_flock, &[0, 2]), allow);
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
