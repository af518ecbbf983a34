//! Shared test harness: a private state root and cgroup prefix per test, the busybox test
//! image, and a leak check (sandbox dirs, cgroups, mounts, processes) at the end of each test.
#![allow(dead_code)]

pub mod images;
#[cfg(feature = "worker")]
pub mod redis;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command as Proc;
use std::sync::OnceLock;

use runbox::{Root, RootOptions};

/// Fails (never skips) when the host lacks what the tests need.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "runbox tests run real sandboxes and must run as root (see README: ./test.sh)"
    );
}

/// The busybox + probe image built by rootfs/build-image.sh (once per test binary; the
/// script is idempotent and locks against concurrent builds).
pub fn image() -> &'static Path {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("test-image");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("rootfs/build-image.sh");
        let status = Proc::new("bash")
            .arg(&script)
            .arg(&out)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .status()
            .expect("run rootfs/build-image.sh");
        assert!(status.success(), "rootfs/build-image.sh failed: {status}");
        out
    })
}

/// One test's private state root and cgroup prefix.
pub struct TestEnv {
    pub root: Root,
    pub dir: PathBuf,
    pub prefix: String,
    finished: bool,
}

impl Drop for TestEnv {
    /// A test that failed before `finish` still removes its own sandboxes, cgroups and root, so
    /// that one failure does not leave processes or cgroups on the machine.
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        self.root.release_spares();
        if let Ok(listing) = self.root.list() {
            for l in listing {
                if let Ok(s) = self.root.sandbox(&l.id) {
                    let _ = s.delete(true);
                }
            }
        }
        // Monitors and spares finish their own cleanup after the deletes return: wait for
        // them, or the prefix (still holding their cgroups) could not be removed.
        self.wait_for_monitors();
        let _ = self.root.gc();
        for d in cgroup_prefix_dirs(&self.prefix) {
            let _ = remove_prefix_dir(&d);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl TestEnv {
    /// A fresh state root `<tmp>/roots/<name>-<pid>` and cgroup prefix `runbox-test-<pid>-<name>`.
    pub fn new(name: &str) -> TestEnv {
        Self::with_options(name, RootOptions::new())
    }

    /// [`TestEnv::new`] with the image store at `store`.
    pub fn with_image_store(name: &str, store: &Path) -> TestEnv {
        let mut opts = RootOptions::new();
        opts.image_store(store);
        Self::with_options(name, opts)
    }

    /// [`TestEnv::new`] with these root options (the cgroup prefix is the test's).
    pub fn with_options(name: &str, mut opts: RootOptions) -> TestEnv {
        require_root();
        let pid = std::process::id();
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("roots")
            .join(format!("{name}-{pid}"));
        let _ = fs::remove_dir_all(&dir);
        let prefix = format!("runbox-test-{pid}-{name}");
        let root = opts
            .cgroup_prefix(prefix.clone())
            .open(&dir)
            .expect("open state root");
        TestEnv {
            root,
            dir,
            prefix,
            finished: false,
        }
    }

    /// A command on the test image.
    pub fn cmd(&self, program: &str, args: &[&str]) -> runbox::Command {
        let mut c = runbox::Command::new(program);
        c.args(args.iter().copied()).image(image());
        c
    }

    /// Waits (at most 20 s) until no process names this test's root, no monitor is left in
    /// `_monitors` (exited monitors stay there until the host's init reaps them) and no
    /// sandbox cgroup is left under the prefix.
    pub fn wait_for_monitors(&self) {
        wait_until_quiet(&self.dir, &self.prefix, 20);
    }

    /// Asserts nothing is left of this test's sandboxes, then removes the root and prefix.
    pub fn finish(mut self) {
        // Spare monitors exit once released. One-shot runs return their verdict before their
        // monitor has cleaned up: give the monitors time to finish, then check nothing is left.
        self.root.release_spares();
        self.wait_for_monitors();
        assert_no_leaks(&self.dir, &self.prefix);
        for d in cgroup_prefix_dirs(&self.prefix) {
            remove_prefix_dir(&d)
                .unwrap_or_else(|e| panic!("remove cgroup prefix {}: {e}", d.display()));
        }
        fs::remove_dir_all(&self.dir).expect("remove state root");
        self.finished = true;
    }
}

/// Removes a prefix directory and the monitors' cgroup in it (monitors leave their
/// controller's cgroups for `<prefix>/_monitors`).
fn remove_prefix_dir(d: &Path) -> std::io::Result<()> {
    let monitors = d.join("_monitors");
    if monitors.is_dir() {
        fs::remove_dir(&monitors)?;
    }
    fs::remove_dir(d)
}

/// The prefix's directory in every mounted cgroup hierarchy that has one.
pub fn cgroup_prefix_dirs(prefix: &str) -> Vec<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && (f[2] == "cgroup" || f[2] == "cgroup2"))
                .then(|| PathBuf::from(f[1]).join(prefix))
        })
        .filter(|p| p.is_dir())
        .collect()
}

/// Asserts: no sandbox directory in `state_root` (shared images aside), no child cgroup under
/// `prefix`, no mount under the state root, no process mentioning the state root.
pub fn assert_no_leaks(state_root: &Path, prefix: &str) {
    let dirs: Vec<_> = fs::read_dir(state_root)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                // The shared image and the monitors' scratch mount point stay by design.
                // The uid leases' directory stays; its leases must not.
                .filter(|n| n != ".images" && n != ".scratch" && n != ".uids")
                // The boxes' and parked spares' directories stay; what was in them must not.
                .filter(|n| n != ".boxes" && n != ".spares" && n != ".jobs")
                .collect()
        })
        .unwrap_or_default();
    // A worker's job directories: none may be left once its results are published.
    let jobs: Vec<_> = fs::read_dir(state_root.join(".jobs"))
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        jobs.is_empty(),
        "job directories left in {}: {jobs:?}",
        state_root.display()
    );
    let boxes: Vec<_> = fs::read_dir(state_root.join(".boxes"))
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        boxes.is_empty(),
        "boxes left in {}: {boxes:?}",
        state_root.display()
    );
    // Parked spares: none, nor a claim or removal in progress. The release generation and
    // a shape's directory holding only its launch marker are state kept on purpose.
    let spares = state_root.join(".spares");
    for e in fs::read_dir(&spares).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name == ".generation" {
            continue;
        }
        let inside: Vec<_> = fs::read_dir(e.path())
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n != ".seen")
                    .collect()
            })
            .unwrap_or_else(|_| vec![String::from("(not a directory)")]);
        assert!(
            !name.starts_with('.') && inside.is_empty(),
            "parked spares left in {}: {name} {inside:?}",
            spares.display()
        );
    }
    assert!(
        dirs.is_empty(),
        "sandbox dirs left in {}: {dirs:?}",
        state_root.display()
    );
    let leases: Vec<_> = fs::read_dir(state_root.join(".uids"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        leases.is_empty(),
        "uid leases left in {}: {leases:?}",
        state_root.display()
    );
    for d in cgroup_prefix_dirs(prefix) {
        let children: Vec<_> = fs::read_dir(&d)
            .unwrap()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()) && e.file_name() != "_monitors")
            .map(|e| e.path())
            .collect();
        assert!(children.is_empty(), "cgroups left: {children:?}");
        let monitors = d.join("_monitors/cgroup.procs");
        if monitors.exists() {
            let procs = fs::read_to_string(&monitors).unwrap();
            assert!(
                procs.trim().is_empty(),
                "monitors left in {}: {procs}",
                monitors.display()
            );
        }
    }
    let root_str = state_root.to_string_lossy().into_owned();
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let leaked: Vec<&str> = mounts.lines().filter(|l| l.contains(&root_str)).collect();
    assert!(leaked.is_empty(), "mounts left: {leaked:?}");
    let procs = processes_mentioning(&root_str);
    assert!(
        procs.is_empty(),
        "processes left: {:?}",
        procs.iter().map(describe_process).collect::<Vec<_>>()
    );
}

/// Waits (at most `secs`) until no process names the state root `dir` and no sandbox
/// cgroup or monitor is left under the cgroup prefix `prefix`: verdicts come before their
/// monitors' cleanup (a container's init shows `runbox-init` as its command line, naming no
/// root, so the sandboxes' own cgroups are watched too).
pub fn wait_until_quiet(dir: &Path, prefix: &str, secs: u64) {
    let root_str = dir.to_string_lossy().into_owned();
    let monitors_busy = || {
        cgroup_prefix_dirs(prefix).iter().any(|d| {
            let sandbox_cgroups = fs::read_dir(d).is_ok_and(|rd| {
                rd.flatten().any(|e| {
                    e.file_type().is_ok_and(|t| t.is_dir()) && e.file_name() != "_monitors"
                })
            });
            sandbox_cgroups
                || fs::read_to_string(d.join("_monitors/cgroup.procs"))
                    .is_ok_and(|p| !p.trim().is_empty())
        })
    };
    // Quiet must hold for a while, not at one instant: a controller that parked a spare
    // and exited resumed from its vfork-style spawn when the spare's first process dropped
    // the controller's memory, before the exec had set up the new command line, so for a
    // moment that process names no root (its /proc cmdline reads empty) and may not be in
    // any cgroup the check reads yet. It shows again within microseconds here, within
    // milliseconds in the emulated guest (tests/vm).
    let settle =
        std::time::Duration::from_millis(if std::env::var_os("RUNBOX_IN_GUEST").is_some() {
            1000
        } else {
            200
        });
    let t = std::time::Instant::now();
    let mut quiet_since: Option<std::time::Instant> = None;
    while t.elapsed() < std::time::Duration::from_secs(secs) {
        if processes_mentioning(&root_str).is_empty() && !monitors_busy() {
            let since = *quiet_since.get_or_insert_with(std::time::Instant::now);
            if since.elapsed() >= settle {
                return;
            }
        } else {
            quiet_since = None;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// A leftover process as a leak report shows it: pid, state, parent, age and command line.
fn describe_process((pid, cmd): &(i32, String)) -> String {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start with the state.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Start times count clock ticks (USER_HZ).
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100.0, |t| t as f64);
    let uptime: f64 = fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|u| u.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    let age = fields
        .get(19)
        .and_then(|s| s.parse::<f64>().ok())
        .map_or(String::from("?"), |start| {
            format!("{:.2}s", uptime - start / ticks)
        });
    format!(
        "pid {pid} state {} ppid {} age {age}: {cmd}",
        fields.first().unwrap_or(&"?"),
        fields.get(1).unwrap_or(&"?"),
    )
}

/// (pid, cmdline) of every process whose command line mentions `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(cmd) = fs::read(format!("/proc/{pid}/cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(needle) {
                out.push((pid, cmd));
            }
        }
    }
    out
}

/// `cargo build` from inside a test or bench process, without the variables cargo set for
/// that process (`CARGO_MANIFEST_DIR`, `CARGO_PKG_*`…): ring's build script declares them,
/// so inheriting them would rebuild ring here and again in the next plain `cargo` call.
pub fn cargo_build() -> Proc {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Proc::new(cargo);
    cmd.arg("build").current_dir(env!("CARGO_MANIFEST_DIR"));
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        let set_by_cargo = [
            "CARGO_PKG_",
            "CARGO_MANIFEST_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
        ]
        .iter()
        .any(|p| k.starts_with(p))
            || ["CARGO_TARGET_TMPDIR", "CARGO_PRIMARY_PACKAGE", "OUT_DIR"].contains(&&*k);
        if set_by_cargo {
            cmd.env_remove(&*k);
        }
    }
    cmd
}

/// `target/debug/examples/NAME`, built up to date (a filtered `cargo test` builds no examples).
pub fn example(name: &str) -> PathBuf {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap();
    let status = cargo_build()
        .args(["--quiet", "--example", name])
        .status()
        .expect("run cargo build --example");
    assert!(status.success(), "cargo build --example {name} failed");
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join(name)
}

/// Polls `cond` every 10 ms; fails the test after 30 s, naming `what`.
pub fn wait_until(what: &str, cond: impl FnMut() -> bool) {
    wait_until_for(what, 30, cond);
}

/// [`wait_until`] with a limit of `secs` seconds, for what runs in the background at the
/// emulated guest's pace (a spare monitor's start and build there take seconds).
pub fn wait_until_for(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let t = std::time::Instant::now();
    while !cond() {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Removes the boxes of a test that fails midway (their disks are mounts, which removing
/// the state root cannot take away); nothing if the test gets to its end.
pub struct BoxesGuard(pub runbox::Root, pub Vec<u32>);

impl Drop for BoxesGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for id in &self.1 {
                let _ = self.0.cleanup_box(*id);
            }
        }
    }
}
