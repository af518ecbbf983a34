//! The default policy's intended decision for one system call, computed directly from its
//! description (the deny list's meaning in `table`, the guard's rules in this module's
//! parent), independently of both compilers; and the differential check that holds the
//! compiled BPF programs (run by `interp`) and the OCI profile (read with libseccomp's
//! semantics) to it. Tests and the fuzzing entry points only. Pure.

use std::sync::OnceLock;

use libcontainer::oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, LinuxSeccompOperator};

use super::interp::{verdict, Data, RET_ACTION_FULL};
use super::table::{native_arch, Args, Denied, CLONE3, DENY_LIST, X32_SYSCALL_BIT};
use super::{oci_profile, Filters};

/// What happens to one system call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// It runs.
    Allow,
    /// It fails with this errno.
    Errno(u32),
    /// The process is killed.
    Kill,
}

/// The low 32 bits of an argument: every argument the policy looks at is an `int` or
/// `unsigned int` in the kernel (the table's rule).
fn low(arg: u64) -> u32 {
    u32::try_from(arg & 0xffff_ffff).unwrap_or(u32::MAX)
}

/// Whether the deny-list entry `entry` denies a call with these arguments, by the meaning
/// `table::Args` documents.
fn denies(entry: &Denied, args: &[u64; 6]) -> bool {
    let arg = |index: u8| low(args[usize::from(index)]);
    match entry.args {
        Args::Any => true,
        Args::Unless { index, allowed } => !allowed.contains(&arg(index)),
        Args::Equals { index, values } => values.contains(&arg(index)),
        Args::AnyBit { index, bits } => bits.iter().any(|bit| arg(index) & bit != 0),
        Args::Matches { alternatives } => alternatives
            .iter()
            .any(|all| all.iter().all(|&(index, value)| arg(index) == value)),
    }
}

/// The policy's decision for a call of `nr` through the ABI `arch` with `args`: another
/// architecture is killed; on x86_64 an x32 number fails with `EPERM`; `clone3` fails with
/// `ENOSYS` (so libc falls back to `clone`); a call the deny list matches fails with `EPERM`;
/// anything else runs.
pub(crate) fn intended(nr: u32, arch: u32, args: &[u64; 6]) -> Decision {
    let Some(native) = native_arch() else {
        return Decision::Kill;
    };
    if arch != native.audit_arch {
        return Decision::Kill;
    }
    let eperm = libc::EPERM.unsigned_abs();
    if native.reject_x32 && nr >= X32_SYSCALL_BIT {
        return Decision::Errno(eperm);
    }
    if i64::from(nr) == CLONE3.nr {
        return Decision::Errno(libc::ENOSYS.unsigned_abs());
    }
    match DENY_LIST.iter().find(|e| e.nr == i64::from(nr)) {
        Some(entry) if denies(entry, args) => Decision::Errno(eperm),
        _ => Decision::Allow,
    }
}

/// A seccomp return value as a [`Decision`]; `None` for an action the policy never uses.
fn decision_of(ret: u32) -> Option<Decision> {
    match ret & RET_ACTION_FULL {
        libc::SECCOMP_RET_ALLOW => Some(Decision::Allow),
        libc::SECCOMP_RET_KILL_PROCESS => Some(Decision::Kill),
        libc::SECCOMP_RET_ERRNO => Some(Decision::Errno(ret & libc::SECCOMP_RET_DATA)),
        _ => None,
    }
}

/// The decision of an OCI profile for the call, with libseccomp's semantics: a call
/// through an architecture the profile does not list is killed (its default "bad arch"
/// action); otherwise the first entry naming the syscall whose conditions all hold (64-bit
/// comparisons) decides, and the default action when none does. Names map to numbers
/// through the table (the profile names only syscalls the table has).
fn oci_decision(profile: &LinuxSeccomp, nr: u32, arch: u32, args: &[u64; 6]) -> Decision {
    let Some(native) = native_arch() else {
        return Decision::Kill;
    };
    let listed = profile
        .architectures()
        .as_deref()
        .is_some_and(|a| a.contains(&native.oci));
    if arch != native.audit_arch || !listed {
        return Decision::Kill;
    }
    // libseccomp's x86_64 filter sends x32 numbers to its "bad arch" action too.
    if native.reject_x32 && nr >= X32_SYSCALL_BIT {
        return Decision::Kill;
    }
    let number = |name: &str| {
        DENY_LIST
            .iter()
            .chain(std::iter::once(&CLONE3))
            .find(|e| e.name() == name)
            .map(|e| e.nr)
    };
    let action = |action: LinuxSeccompAction, errno: Option<u32>| match action {
        LinuxSeccompAction::ScmpActAllow => Decision::Allow,
        LinuxSeccompAction::ScmpActErrno => {
            Decision::Errno(errno.unwrap_or(libc::EPERM.unsigned_abs()))
        }
        LinuxSeccompAction::ScmpActKill
        | LinuxSeccompAction::ScmpActKillProcess
        | LinuxSeccompAction::ScmpActKillThread => Decision::Kill,
        other => panic!("the profile uses action {other:?}, which the policy never does"),
    };
    for entry in profile.syscalls().as_deref().unwrap_or_default() {
        if !entry
            .names()
            .iter()
            .any(|n| number(n) == Some(i64::from(nr)))
        {
            continue;
        }
        let holds = entry.args().as_deref().unwrap_or_default().iter().all(|a| {
            let x = args[a.index()];
            let v = a.value();
            match a.op() {
                LinuxSeccompOperator::ScmpCmpNe => x != v,
                LinuxSeccompOperator::ScmpCmpLt => x < v,
                LinuxSeccompOperator::ScmpCmpLe => x <= v,
                LinuxSeccompOperator::ScmpCmpEq => x == v,
                LinuxSeccompOperator::ScmpCmpGe => x >= v,
                LinuxSeccompOperator::ScmpCmpGt => x > v,
                LinuxSeccompOperator::ScmpCmpMaskedEq => x & v == a.value_two().unwrap_or(0),
            }
        });
        if holds {
            return action(entry.action(), entry.errno_ret());
        }
    }
    action(profile.default_action(), profile.default_errno_ret())
}

/// The compiled filters and the OCI profile, built once.
fn compiled() -> &'static (Filters, LinuxSeccomp) {
    static COMPILED: OnceLock<(Filters, LinuxSeccomp)> = OnceLock::new();
    COMPILED.get_or_init(|| {
        (
            Filters::compile_default().expect("the default profile compiles"),
            oci_profile().expect("the default OCI profile renders"),
        )
    })
}

/// Reads a call from fuzz bytes, steered towards what the policy distinguishes: the first
/// byte picks the syscall (a deny-list entry, `clone3`, or a raw number), the second the
/// architecture (native, or raw), the rest gives the arguments (each either raw or one of
/// the values its entry names, with raw high bits).
fn call_of(bytes: &[u8]) -> Option<(u32, u32, [u64; 6])> {
    let native = native_arch()?;
    let mut bytes = bytes.iter().copied();
    let mut word = |n: usize| -> u64 {
        (0..n).fold(0u64, |w, _| (w << 8) | u64::from(bytes.next().unwrap_or(0)))
    };
    let pick = usize::try_from(word(1)).unwrap_or(0);
    let raw_nr = low(word(4));
    let entry = DENY_LIST.get(pick % (DENY_LIST.len() + 2));
    let nr = match entry {
        Some(e) => u32::try_from(e.nr).unwrap_or(raw_nr),
        None if pick % (DENY_LIST.len() + 2) == DENY_LIST.len() => {
            u32::try_from(CLONE3.nr).unwrap_or(raw_nr)
        }
        None => raw_nr,
    };
    let raw_arch = low(word(4));
    let arch = if word(1) % 8 == 0 {
        raw_arch
    } else {
        native.audit_arch
    };
    let values: Vec<u32> = match entry.map(|e| e.args) {
        Some(Args::Unless { allowed: v, .. })
        | Some(Args::Equals { values: v, .. })
        | Some(Args::AnyBit { bits: v, .. }) => v.to_vec(),
        Some(Args::Matches { alternatives }) => alternatives
            .iter()
            .flat_map(|a| a.iter().map(|p| p.1))
            .collect(),
        _ => Vec::new(),
    };
    let mut args = [0u64; 6];
    for arg in &mut args {
        let how = word(1);
        let raw = word(8);
        *arg = match values.get(usize::try_from(how).unwrap_or(0) % (values.len() + 1)) {
            // One of the entry's values, maybe with other low bits or high bits set.
            Some(&v) if how & 0x80 == 0 => (raw & !0xffff_ffff) | u64::from(v),
            Some(&v) => raw | u64::from(v),
            None => raw,
        };
    }
    Some((nr, arch, args))
}

/// The differential check: for the call `bytes` describe, the compiled BPF programs (run by
/// the interpreter, combined as the kernel does) decide what [`intended`] says, and so does
/// the OCI profile, except on x86_64's x32 numbers, which libseccomp kills (documented in
/// `oci_profile`). Panics on a difference.
pub(crate) fn check(bytes: &[u8]) {
    let Some((nr, arch, args)) = call_of(bytes) else {
        return;
    };
    let (filters, profile) = compiled();
    let want = intended(nr, arch, &args);
    let data = Data { nr, arch, args };
    let ret = verdict(filters, &data);
    let got = decision_of(ret).unwrap_or_else(|| panic!("unexpected seccomp return {ret:#x}"));
    assert_eq!(
        got, want,
        "BPF decides {got:?} for nr {nr} arch {arch:#x} args {args:#x?}, the policy {want:?}"
    );
    let want_oci = match native_arch() {
        Some(n) if n.reject_x32 && arch == n.audit_arch && nr >= X32_SYSCALL_BIT => Decision::Kill,
        _ => want,
    };
    let oci = oci_decision(profile, nr, arch, &args);
    assert_eq!(
        oci, want_oci,
        "the OCI profile decides {oci:?} for nr {nr} arch {arch:#x} args {args:#x?}, the policy {want_oci:?}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference says what the policy's description says, on calls named by hand.
    #[test]
    fn the_reference_follows_the_description() {
        let native = native_arch().unwrap();
        let a = native.audit_arch;
        let nr = |n: i64| u32::try_from(n).unwrap();
        let eperm = Decision::Errno(1);
        assert_eq!(intended(nr(libc::SYS_mount), a, &[0; 6]), eperm);
        assert_eq!(intended(nr(libc::SYS_read), a, &[0; 6]), Decision::Allow);
        assert_eq!(intended(nr(libc::SYS_read), a ^ 1, &[0; 6]), Decision::Kill);
        assert_eq!(
            intended(nr(libc::SYS_clone3), a, &[0; 6]),
            Decision::Errno(38)
        );
        let ioctl = |req: u64| intended(nr(libc::SYS_ioctl), a, &[0, req, 0, 0, 0, 0]);
        assert_eq!(ioctl(0x5412), eperm);
        assert_eq!(ioctl(0xdead_0000_5412), eperm, "high bits do not dodge");
        assert_eq!(ioctl(0x5413), Decision::Allow);
        let clone = |flags: u64| intended(nr(libc::SYS_clone), a, &[flags, 0, 0, 0, 0, 0]);
        assert_eq!(clone(libc::CLONE_NEWUSER as u64 | 0x11), eperm);
        assert_eq!(clone(0x11), Decision::Allow);
    }

    /// Every deny-list entry, with and without its values, through the differential check.
    #[test]
    fn the_compilers_agree_with_the_reference_on_every_entry() {
        for pick in 0..=u8::try_from(DENY_LIST.len() + 2).unwrap() {
            for how in [0u8, 1, 2, 3, 0x81, 0x82] {
                let mut bytes = vec![pick, 0, 0, 0, 0, 0, 0, 0, 0, 1];
                for i in 0..6u8 {
                    bytes.push(how.wrapping_add(i));
                    bytes.extend_from_slice(&[0xde, 0xad, 0, 0, 0, 0, 0, i]);
                }
                check(&bytes);
            }
        }
    }
}
