//! The example CLI as a user runs it: exit codes, output forwarding, --json, errors.

mod common;

use std::path::PathBuf;
use std::process::{Command as Proc, Output};

use common::TestEnv;

/// `target/debug/examples/runbox`, built up to date (a filtered `cargo test` does not build examples).
fn cli() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let status = Proc::new(cargo)
                .args(["build", "--quiet", "--example", "runbox"])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .status()
                .expect("run cargo build --example runbox");
            assert!(status.success(), "cargo build --example runbox failed");
            let exe = std::env::current_exe().unwrap();
            exe.parent()
                .unwrap()
                .parent()
                .unwrap()
                .join("examples/runbox")
        })
        .clone()
}

fn runbox(env: &TestEnv, args: &[&str]) -> Output {
    Proc::new(cli())
        .arg("--root")
        .arg(&env.dir)
        .args(["--cgroup-parent", &env.prefix])
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn run_forwards_output_and_exit_status() {
    let env = TestEnv::new("cli");
    let img = common::image().to_str().unwrap().to_string();
    let out = runbox(
        &env,
        &[
            "run",
            "--image",
            &img,
            "--",
            "/bin/sh",
            "-c",
            "echo out; echo err >&2; exit 7",
        ],
    );
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");

    let out = runbox(
        &env,
        &["run", "--image", &img, "--", "probe", "signal", "9"],
    );
    assert_eq!(out.status.code(), Some(128 + 9));

    let out = runbox(
        &env,
        &[
            "run", "--image", &img, "--memory", "32M", "--pids", "8", "--cpus", "0.5", "--json",
            "--", "probe", "memhog", "100",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["schema_version"], 1);
    assert_eq!(v["status"], "memory_limit");
    assert_eq!(v["oom_killed"], true);

    // runbox's own failures exit 125, with or without --json.
    let out = runbox(&env, &["run", "--image", &img, "--", "/no/such/program"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not found"),
        "{out:?}"
    );
    let out = runbox(
        &env,
        &[
            "run",
            "--json",
            "--image",
            "/no/such/image",
            "--",
            "/bin/true",
        ],
    );
    assert_eq!(out.status.code(), Some(125));
    let out = runbox(&env, &["run", "--memory", "lots", "--", "/bin/true"]);
    assert_eq!(out.status.code(), Some(125));
    env.finish();
}
