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

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn program_needs_no_double_dash_and_keeps_its_flags() {
    let env = TestEnv::new("cli-program");
    let img = common::image().to_str().unwrap().to_string();
    // No `--`: everything from the program on is the program's.
    let out = runbox(&env, &["run", "--image", &img, "/bin/sh", "-c", "echo hi"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(stdout(&out), "hi\n");
    // Words that look like runbox's own flags reach the program, `--` after it included.
    let out = runbox(
        &env,
        &[
            "run",
            "--image",
            &img,
            "-m",
            "64M",
            "/bin/sh",
            "-c",
            "echo \"$@\"",
            "x",
            "--json",
            "-e",
            "A=1",
            "--",
            "-c",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(stdout(&out), "--json -e A=1 -- -c\n");
    // `--` before the program still works and is not passed on.
    let out = runbox(
        &env,
        &[
            "run",
            "--image",
            &img,
            "--",
            "/bin/sh",
            "-c",
            "echo \"$0 $#\"",
            "--",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(stdout(&out), "-- 0\n");
    // An unknown option before the program is still an error, not the program.
    let out = runbox(
        &env,
        &["run", "--image", &img, "--no-such-flag", "/bin/true"],
    );
    assert_eq!(out.status.code(), Some(125));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--no-such-flag"),
        "{out:?}"
    );
    // A missing program is an error too.
    let out = runbox(&env, &["run", "--image", &img]);
    assert_eq!(out.status.code(), Some(125));
    let out = runbox(&env, &["run", "--image", &img, "--"]);
    assert_eq!(out.status.code(), Some(125));
    // create takes the program the same way.
    let out = runbox(
        &env,
        &[
            "create",
            "--image",
            &img,
            "--name",
            "c1",
            "/bin/sh",
            "-c",
            "echo created",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(stdout(&out), "c1\n");
    assert_eq!(runbox(&env, &["start", "c1"]).status.code(), Some(0));
    let out = runbox(&env, &["wait", "c1"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(stdout(&out), "created\n");
    let out = runbox(&env, &["state", "c1"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["command"],
        serde_json::json!(["/bin/sh", "-c", "echo created"])
    );
    assert_eq!(runbox(&env, &["delete", "c1"]).status.code(), Some(0));
    env.finish();
}

#[test]
fn env_adds_to_path_and_aliases_match_their_long_names() {
    let env = TestEnv::new("cli-env");
    let img = common::image().to_str().unwrap().to_string();
    // -e adds to the default environment: bare `sh` and `env` are still found through PATH.
    let out = runbox(
        &env,
        &["run", "--image", &img, "-e", "A=1", "sh", "-c", "env"],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = stdout(&out);
    let mut vars: Vec<&str> = text.lines().collect();
    vars.retain(|l| l.starts_with("A=") || l.starts_with("PATH="));
    vars.sort();
    assert_eq!(vars.len(), 2, "{out:?}");
    assert_eq!(vars[0], "A=1");
    assert!(vars[1].starts_with("PATH=/"), "{vars:?}");
    let out = runbox(&env, &["run", "--image", &img, "--env", "A=1", "env"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(stdout(&out).lines().any(|l| l == "A=1"), "{out:?}");
    // --env-clear starts from nothing: exactly the -e variables.
    let out = runbox(
        &env,
        &[
            "run",
            "--image",
            &img,
            "--env-clear",
            "-e",
            "A=1",
            "/bin/env",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(stdout(&out), "A=1\n");
    // ... so a bare name is no longer found.
    let out = runbox(&env, &["run", "--image", &img, "--env-clear", "env"]);
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    // -e without a value is refused.
    let out = runbox(&env, &["run", "--image", &img, "-e", "A", "/bin/true"]);
    assert_eq!(out.status.code(), Some(125), "{out:?}");

    // -m is --memory.
    for flag in ["-m", "--memory"] {
        let out = runbox(
            &env,
            &[
                "run", "--image", &img, flag, "32M", "--json", "probe", "memhog", "100",
            ],
        );
        assert_eq!(out.status.code(), Some(0), "{flag}: {out:?}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["status"], "memory_limit", "{flag}: {v}");
    }
    // -w and --workdir are --cwd.
    for flag in ["-w", "--workdir", "--cwd"] {
        let out = runbox(&env, &["run", "--image", &img, flag, "/tmp", "pwd"]);
        assert_eq!(out.status.code(), Some(0), "{flag}: {out:?}");
        assert_eq!(stdout(&out), "/tmp\n", "{flag}");
    }
    // --extra-time is --time-grace: the spinner is killed only past --time plus the grace,
    // and still reported as a time limit.
    for flag in ["--extra-time", "--time-grace"] {
        let out = runbox(
            &env,
            &[
                "run", "--image", &img, "--time", "0.2", flag, "1", "--json", "probe", "spin", "30",
            ],
        );
        assert_eq!(out.status.code(), Some(0), "{flag}: {out:?}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["status"], "time_limit", "{flag}: {v}");
        assert!(
            v["cpu_time_us"].as_u64().unwrap() >= 1_000_000,
            "{flag}: killed before the grace: {v}"
        );
        let out = runbox(&env, &["run", "--image", &img, flag, "soon", "/bin/true"]);
        assert_eq!(out.status.code(), Some(125), "{flag}: {out:?}");
    }
    env.finish();
}

#[test]
fn a_failed_launch_prints_its_kind_once_and_the_path_as_written() {
    let env = TestEnv::new("cli-errors");
    // An image whose /bin is a symlink (as on merged-/usr hosts): a copy into it is refused
    // (the monitor, as root, never follows an image's symlinks on the host).
    let img = env.dir.join("symlinked-bin-image");
    std::fs::create_dir_all(img.join("usr/bin")).unwrap();
    std::fs::copy(
        common::image().join("bin/busybox"),
        img.join("usr/bin/true"),
    )
    .unwrap();
    std::os::unix::fs::symlink("usr/bin", img.join("bin")).unwrap();
    let out = runbox(
        &env,
        &[
            "run",
            "--image",
            img.to_str().unwrap(),
            "--copy",
            "/etc/hosts:/bin/x",
            "/usr/bin/true",
        ],
    );
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("launch_failed").count(), 1, "{err}");
    assert!(err.starts_with("runbox: launch_failed: "), "{err}");
    assert!(err.contains("sandbox path /bin/x "), "{err}");
    // A wrong-state call is its own kind.
    let out = runbox(
        &env,
        &[
            "run",
            "--image",
            img.to_str().unwrap(),
            "--name",
            "done",
            "-d",
            "/usr/bin/true",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = runbox(&env, &["wait", "done"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = runbox(&env, &["start", "done"]);
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("runbox: invalid_state: "), "{err}");
    let out = runbox(&env, &["delete", "done"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    std::fs::remove_dir_all(&img).unwrap();
    // A uid range: a bad one is refused before anything runs, a good one is used.
    let out = runbox(&env, &["--uid-range", "1:10", "run", "/bin/true"]);
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("runbox: invalid_config: uid range 1-10 "),
        "{err}"
    );
    let out = runbox(&env, &["--uid-range", "60000", "run", "/bin/true"]);
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    let out = runbox(
        &env,
        &[
            "--uid-range",
            "64000:1",
            "run",
            "--image",
            common::image().to_str().unwrap(),
            "id",
            "-u",
        ],
    );
    assert_eq!(stdout(&out), "64000\n", "{out:?}");
    env.finish();
}
