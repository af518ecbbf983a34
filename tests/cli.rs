//! The example CLI as a user runs it: exit codes, output forwarding, --json, errors.

mod common;

use std::path::PathBuf;
use std::process::{Command as Proc, Output};

use common::TestEnv;

fn cli() -> PathBuf {
    common::example("runbox")
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
