//! A minimal grader-style controller built on the runbox library: it starts several sandboxes
//! and leaves them running (or waits for them). The lifecycle tests use it as a controller that
//! dies, or is replaced, while its sandboxes run.
//!
//! `controller --root DIR --cgroup-parent P --image DIR --count N [--sleep S] [--tag T] [--name-prefix X] [--hold] [--wait]`
//!
//! Sandbox `i` runs `sh -c 'sleep S; echo T-i; exit i'`. The controller prints each id, then
//! `ready`; with `--hold` it then sleeps until killed, with `--wait` it waits for every sandbox.

use std::time::Duration;

use clap::Parser;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    root: std::path::PathBuf,
    #[arg(long = "cgroup-parent")]
    cgroup_parent: String,
    #[arg(long)]
    image: std::path::PathBuf,
    #[arg(long)]
    count: u32,
    #[arg(long, default_value = "0")]
    sleep: f64,
    #[arg(long, default_value = "out")]
    tag: String,
    #[arg(long = "name-prefix")]
    name_prefix: Option<String>,
    #[arg(long)]
    hold: bool,
    #[arg(long)]
    wait: bool,
}

fn main() -> anyhow::Result<()> {
    runbox::monitor_main();
    let args = Args::parse();
    let root = runbox::RootOptions::new()
        .cgroup_prefix(args.cgroup_parent.clone())
        .open(&args.root)?;
    let mut sandboxes = Vec::new();
    for i in 0..args.count {
        let mut cmd = runbox::Command::new("/bin/sh");
        cmd.args([
            "-c",
            &format!("sleep {}; echo {}-{i}; exit {i}", args.sleep, args.tag),
        ])
        .image(&args.image);
        cmd.limits_mut().memory_bytes = 64 << 20;
        cmd.limits_mut().scratch_bytes = 8 << 20;
        if let Some(p) = &args.name_prefix {
            cmd.name(format!("{p}{i}"));
        }
        let sandbox = root.spawn(&cmd)?;
        println!("{}", sandbox.id());
        sandboxes.push(sandbox);
    }
    println!("ready");
    if args.hold {
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    if args.wait {
        for mut s in sandboxes {
            let v = s.wait()?;
            println!("{} {:?} {:?}", s.id(), v.status, v.exit_code);
        }
    }
    Ok(())
}
