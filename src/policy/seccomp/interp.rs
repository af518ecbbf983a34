//! A small classic-BPF interpreter for the compiled programs (tests and the fuzzing entry
//! points only): runs them over a synthetic `struct seccomp_data` and combines their results
//! as the kernel does, so the filters are checked without ever being installed. Pure.

use seccompiler::sock_filter;

use super::bpf::{BPF_ABS, BPF_JEQ, BPF_JGE, BPF_JMP, BPF_K, BPF_LD, BPF_RET, BPF_W};
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
#[derive(Debug, Clone, Copy)]
pub(super) struct Data {
    /// Syscall number.
    pub(super) nr: u32,
    /// `AUDIT_ARCH_*` value.
    pub(super) arch: u32,
    /// Syscall arguments.
    pub(super) args: [u64; 6],
}

impl Data {
    /// A native-arch call of `nr` with the given leading arguments (tests).
    #[cfg(test)]
    pub(super) fn call(nr: i64, leading: &[u64]) -> Data {
        let mut args = [0; 6];
        args[..leading.len()].copy_from_slice(leading);
        Data {
            nr: u32::try_from(nr).unwrap(),
            arch: super::table::native_arch()
                .expect("tests run on x86_64 or aarch64")
                .audit_arch,
            args,
        }
    }

    /// 32-bit little-endian word at byte offset `off`, as `BPF_LD|BPF_W|BPF_ABS` sees it.
    /// Panics on an offset outside the structure (a program the kernel would refuse).
    fn word(&self, off: u32) -> u32 {
        let mut bytes = Vec::with_capacity(64);
        bytes.extend_from_slice(&self.nr.to_le_bytes());
        bytes.extend_from_slice(&self.arch.to_le_bytes());
        bytes.extend_from_slice(&0u64.to_le_bytes());
        for arg in self.args {
            bytes.extend_from_slice(&arg.to_le_bytes());
        }
        let off = usize::try_from(off).expect("offset fits usize");
        let word = bytes
            .get(off..off + 4)
            .expect("load within struct seccomp_data");
        u32::from_le_bytes(word.try_into().expect("four bytes"))
    }
}

/// Runs a classic BPF program over `data`, panicking on unknown opcodes or bad jumps.
pub(super) fn run(program: &[sock_filter], data: &Data) -> u32 {
    let mut acc = 0u32;
    let mut pc = 0usize;
    loop {
        let insn = program
            .get(pc)
            .unwrap_or_else(|| panic!("bpf program runs off its end at {pc}"));
        pc += 1;
        let (jt, jf) = (usize::from(insn.jt), usize::from(insn.jf));
        match insn.code {
            c if c == BPF_LD | BPF_W | BPF_ABS => acc = data.word(insn.k),
            c if c == BPF_ALU | BPF_AND | BPF_K => acc &= insn.k,
            c if c == BPF_JMP | BPF_JA => pc += usize::try_from(insn.k).expect("jump fits"),
            c if c == BPF_JMP | BPF_JEQ | BPF_K => pc += if acc == insn.k { jt } else { jf },
            c if c == BPF_JMP | BPF_JGT | BPF_K => pc += if acc > insn.k { jt } else { jf },
            c if c == BPF_JMP | BPF_JGE | BPF_K => pc += if acc >= insn.k { jt } else { jf },
            c if c == BPF_JMP | BPF_JSET | BPF_K => pc += if acc & insn.k != 0 { jt } else { jf },
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
        .expect("at least one program")
}
