//! Fuzz target `state_records`: arbitrary bytes through `runbox::fuzzing::state_records`, which panics when
//! one of its oracles fails (see that function).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| runbox::fuzzing::state_records(data));
