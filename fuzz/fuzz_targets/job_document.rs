//! Fuzz target `job_document`: arbitrary bytes through `runbox::fuzzing::job_document`, which panics when
//! one of its oracles fails (see that function).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| runbox::fuzzing::job_document(data));
