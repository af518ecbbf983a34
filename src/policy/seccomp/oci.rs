//! Rendering the deny list as an OCI `linux.seccomp` profile for other runtimes (runc, crun).

use std::collections::{BTreeMap, BTreeSet};

use libcontainer::oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder, LinuxSeccompBuilder,
    LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};

use super::error::SeccompError;
use super::table::{match_rules, native_arch, Cmp, CmpOp, Denied, CLONE3, DENY_LIST};

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

#[cfg(test)]
mod tests {
    //! Pure tests of the OCI profile; the BPF programs it is compared with are evaluated by a
    //! small cBPF interpreter, never installed (no root, no fork).

    use libcontainer::oci_spec::runtime::Arch;

    use super::super::table::{
        sys, Args, AF_NETLINK, AF_VSOCK, CLONE_NAMESPACE_FLAGS, FCNTL_DENIED,
        NETLINK_KOBJECT_UEVENT, PERSONALITY_ALLOWED, TIOCLINUX, TIOCSTI,
    };
    use super::super::testutil::{filters, native, verdict, Data, RET_ACTION_FULL};
    use super::*;

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
        check("ioctl", 1, &[TIOCSTI, TIOCLINUX]);
        check("fcntl", 1, FCNTL_DENIED);
        // socket: (AF_VSOCK) or (AF_NETLINK and NETLINK_KOBJECT_UEVENT), both masked.
        let found = entries_for(&profile, "socket");
        let shapes: Vec<Vec<(usize, u64)>> = found
            .iter()
            .map(|e| {
                args_of(e)
                    .iter()
                    .map(|a| {
                        assert_eq!(a.op(), LinuxSeccompOperator::ScmpCmpMaskedEq);
                        assert_eq!(a.value(), 0xffff_ffff);
                        (a.index(), a.value_two().unwrap())
                    })
                    .collect()
            })
            .collect();
        assert_eq!(
            shapes,
            vec![
                vec![(0, u64::from(AF_VSOCK))],
                vec![
                    (0, u64::from(AF_NETLINK)),
                    (2, u64::from(NETLINK_KOBJECT_UEVENT))
                ]
            ]
        );
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
