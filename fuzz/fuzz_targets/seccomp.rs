//! Fuzz target `seccomp`: arbitrary bytes through `runbox::fuzzing::seccomp`, which panics when
//! one of its oracles fails (see that function).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| runbox::fuzzing::seccomp(data));
