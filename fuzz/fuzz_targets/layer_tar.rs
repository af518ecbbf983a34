//! Fuzz target `layer_tar`: arbitrary bytes through `runbox::fuzzing::layer_tar`, which panics when
//! one of its oracles fails (see that function).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| runbox::fuzzing::layer_tar(data));
