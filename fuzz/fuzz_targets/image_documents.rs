//! Fuzz target `image_documents`: arbitrary bytes through `runbox::fuzzing::image_documents`, which panics when
//! one of its oracles fails (see that function).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| runbox::fuzzing::image_documents(data));
