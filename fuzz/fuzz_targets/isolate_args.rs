//! Fuzz target `isolate_args`: isolate's command line as `runbox isolate` parses it
//! (`examples/runbox/isolate.rs`, compiled in as it is), on arbitrary argv (the bytes split on
//! NUL): the parser and the request it builds answer or refuse with a usage error, never
//! panic, and the program words are the command line's tail, untouched.
#![no_main]

#[allow(dead_code)]
#[path = "../../examples/runbox/isolate.rs"]
mod isolate;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let args: Vec<String> = data
        .split(|&b| b == 0)
        .map(|w| String::from_utf8_lossy(w).into_owned())
        .collect();
    if let Ok((opts, program)) = isolate::parse(&args) {
        assert!(
            args.ends_with(&program),
            "{args:?} gave the program {program:?}"
        );
        let _ = isolate::Request::from_args(opts);
    }
});
