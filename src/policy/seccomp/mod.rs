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
//! holds [`Filters`].
//!
//! [`SeccompFilter`]: seccompiler::SeccompFilter

mod bpf;
mod error;
mod oci;
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
    //! Test helpers shared by the seccomp tests: the programs are compiled and evaluated by a
    //! small cBPF interpreter, never installed (no root, no fork).

    use seccompiler::sock_filter;

    use super::bpf::{BPF_ABS, BPF_JEQ, BPF_JGE, BPF_JMP, BPF_K, BPF_LD, BPF_RET, BPF_W};
    use super::table::{native_arch, NativeArch};
    use super::Filters;

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
    pub(super) const RET_ACTION_FULL: u32 = 0xffff_0000;

    /// A synthetic `struct seccomp_data` (instruction pointer left at zero).
    pub(super) struct Data {
        /// Syscall number.
        pub(super) nr: u32,
        /// `AUDIT_ARCH_*` value.
        pub(super) arch: u32,
        /// Syscall arguments.
        args: [u64; 6],
    }

    impl Data {
        /// A native-arch call of `nr` with the given leading arguments.
        pub(super) fn call(nr: i64, leading: &[u64]) -> Data {
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
    pub(super) fn native() -> NativeArch {
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
    pub(super) fn verdict(filters: &Filters, data: &Data) -> u32 {
        filters
            .programs
            .iter()
            .rev()
            .map(|program| run(program, data))
            .reduce(|best, ret| {
                // The kernel ranks actions as signed values (KILL_PROCESS is negative).
                let rank = |r: u32| i32::from_ne_bytes((r & RET_ACTION_FULL).to_ne_bytes());
                if rank(ret) < rank(best) {
                    ret
                } else {
                    best
                }
            })
            .unwrap()
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
