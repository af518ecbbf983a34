//! The bundle runbox writes is a valid OCI runtime bundle: runc runs it.

mod common;

use std::process::Command as Proc;

use common::TestEnv;

#[test]
fn runc_runs_a_bundle_runbox_wrote() {
    let env = TestEnv::new("bundle");
    let runc =
        which("runc").expect("runc is needed for this test: apt-get install runc (./test.sh does)");
    let mut cmd = env.cmd("probe", &["status"]);
    cmd.name("runc-bundle");
    let bundle = env.dir.join("bundle-for-runc");
    std::fs::create_dir_all(&bundle).unwrap();
    env.root.write_bundle(&cmd, &bundle).unwrap();
    let runc_root = env.dir.join("runc-state");
    let out = Proc::new(runc)
        .arg("--root")
        .arg(&runc_root)
        .args(["run", "--bundle"])
        .arg(&bundle)
        .arg("runbox-bundle-test")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "runc failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    // runc applied the same confinement from the bundle: no capabilities, no_new_privs, uid 65534.
    assert!(stdout.contains("CapEff:\t0000000000000000"), "{stdout}");
    assert!(stdout.contains("CapBnd:\t0000000000000000"), "{stdout}");
    assert!(stdout.contains("NoNewPrivs:\t1"), "{stdout}");
    assert!(stdout.contains("Uid:\t65534"), "{stdout}");
    // The bundle carries runbox's seccomp policy as an OCI profile, and runc installed it.
    assert!(stdout.contains("Seccomp:\t2"), "{stdout}");
    std::fs::remove_dir_all(&bundle).unwrap();
    std::fs::remove_dir_all(&runc_root).unwrap();
    env.finish();
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}
