//! Fuzz target `proto_frames`: arbitrary bytes through `runbox::fuzzing::proto_frames`, which panics when
//! one of its oracles fails (see that function).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| runbox::fuzzing::proto_frames(data));
