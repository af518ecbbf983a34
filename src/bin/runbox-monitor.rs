//! The standalone runbox monitor, found next to the executable of programs that link runbox
//! without dispatching the monitor themselves (tests, benchmarks).

fn main() {
    runbox::monitor_main();
    eprintln!("runbox-monitor is started by the runbox library; it is not run by hand");
    std::process::exit(2);
}
