//! Helpers shared by the benches that run other tools next to runbox (exec.rs): finding and
//! installing Debian's packages, the busybox test image, percentiles, the load average, and
//! the leak checks (cgroups, mounts, processes). Runs in the bench process only.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command as Proc, Stdio};
use std::time::{Duration, Instant};

/// Where Debian puts the binaries we look for, besides `PATH`.
pub const SYSTEM_DIRS: &[&str] = &[
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

/// The path of `name` in `PATH` or the usual system directories.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(SYSTEM_DIRS.iter().map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

/// Whether `p` is an executable regular file.
pub fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Runs apt-get with no stdin and its output on our stderr; true on success.
pub fn apt_get(args: &[&str]) -> bool {
    eprintln!("bench: apt-get {}", args.join(" "));
    Proc::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .stdout(Stdio::from(std::io::stderr()))
        .status()
        .is_ok_and(|s| s.success())
}

/// Installs, from Debian's packages, each `(binary, package)` whose binary is missing.
/// Returns the packages installed and, for each package that could not be, why.
pub fn ensure_packages(
    wanted: &[(&str, &'static str)],
) -> (Vec<&'static str>, Vec<(&'static str, String)>) {
    let missing: Vec<(&str, &'static str)> = wanted
        .iter()
        .filter(|(bin, _)| find_tool(bin).is_none())
        .copied()
        .collect();
    if missing.is_empty() {
        return (Vec::new(), Vec::new());
    }
    let pkgs: Vec<&'static str> = missing.iter().map(|&(_, p)| p).collect();
    eprintln!(
        "bench: installing from Debian's packages: {}",
        pkgs.join(", ")
    );
    let mut install = vec!["install", "-y", "-q"];
    install.extend(&pkgs);
    if !apt_get(&install) {
        // A stale package list is the usual reason; one update, then each package alone, so
        // that one that cannot be installed does not take the others with it.
        if !apt_get(&["update", "-q"]) {
            eprintln!("bench: apt-get update failed");
        }
        for p in &pkgs {
            apt_get(&["install", "-y", "-q", p]);
        }
    }
    let mut installed = Vec::new();
    let mut failed = Vec::new();
    for (bin, pkg) in missing {
        if find_tool(bin).is_some() {
            installed.push(pkg);
        } else {
            failed.push((
                pkg,
                format!("apt-get install {pkg} did not provide `{bin}`"),
            ));
        }
    }
    (installed, failed)
}

/// Builds (or finds up to date) the busybox test image (rootfs/build-image.sh) in
/// `target/bench-image`.
pub fn image() -> PathBuf {
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-image");
    let status = Proc::new("bash")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/rootfs/build-image.sh"
        ))
        .arg(&out)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .expect("run rootfs/build-image.sh");
    assert!(status.success(), "rootfs/build-image.sh failed");
    out
}

/// Builds the CLI example in release mode (`cargo build --release --example runbox`) and
/// returns its path.
pub fn build_cli() -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Proc::new(cargo)
        .args(["build", "--release", "--quiet", "--example", "runbox"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("run cargo build --example runbox");
    assert!(
        status.success(),
        "cargo build --release --example runbox failed"
    );
    let exe = std::env::current_exe().expect("the bench's own path");
    let release = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/release/deps/<bench>-…");
    release.join("examples/runbox")
}

/// First line of a command's stdout, or what went wrong.
pub fn first_line(program: &Path, args: &[&str]) -> String {
    match Proc::new(program).args(args).stdin(Stdio::null()).output() {
        Ok(o) => String::from_utf8_lossy(&o.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_string(),
        Err(e) => format!("({} failed: {e})", program.display()),
    }
}

/// The 1-minute load average.
pub fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// The value at fraction `p` of a sorted, non-empty slice (nearest rank).
#[expect(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "p is in [0, 1]: the rank is an index within the slice"
)]
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Milliseconds with two decimals.
pub fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

/// The value after option `name` on a bench's command line; panics if there is none.
pub fn option_value(args: &mut impl Iterator<Item = String>, name: &str) -> String {
    args.next()
        .unwrap_or_else(|| panic!("{name} needs a value"))
}

/// The number after option `name` on a bench's command line; panics if it is missing or
/// not a number.
pub fn option_number<T: std::str::FromStr>(
    args: &mut impl Iterator<Item = String>,
    name: &str,
) -> T {
    let v = option_value(args, name);
    v.parse()
        .unwrap_or_else(|_| panic!("{name} wants a number, got {v:?}"))
}

/// Polls `done` every 200 µs until it holds or `limit` passes; true if it held. Only used
/// outside the timed windows.
pub fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while !done() {
        if t.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    true
}

/// The cgroup directories `<hierarchy>/<prefix>` that exist, in every mounted hierarchy.
pub fn prefix_cgroups(prefix: &str) -> Vec<PathBuf> {
    let Ok(rd) = fs::read_dir("/sys/fs/cgroup") else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path().join(prefix))
        .filter(|p| p.is_dir())
        .collect();
    if Path::new("/sys/fs/cgroup").join(prefix).is_dir() {
        dirs.push(Path::new("/sys/fs/cgroup").join(prefix));
    }
    dirs
}

/// Sub-directories of a directory.
pub fn subdirs(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default()
}

/// Checks and removes a bench's cgroups under `prefix` in every hierarchy: monitors leave
/// their controller's cgroups for `<prefix>/_monitors` and exit, so that one must empty and
/// go, then every sandbox cgroup below must go (waiting up to 10 s for each); panics naming
/// what is left.
pub fn remove_prefix_cgroups(prefix: &str) {
    for dir in prefix_cgroups(prefix) {
        let monitors = dir.join("_monitors");
        if monitors.is_dir() {
            let ok = wait_until(Duration::from_secs(10), || {
                fs::read_to_string(monitors.join("cgroup.procs")).is_ok_and(|p| p.trim().is_empty())
            });
            assert!(ok, "monitors left in {}", monitors.display());
            fs::remove_dir(&monitors)
                .unwrap_or_else(|e| panic!("rmdir {}: {e}", monitors.display()));
        }
        let ok = wait_until(Duration::from_secs(10), || subdirs(&dir).is_empty());
        assert!(
            ok,
            "cgroups left under {}: {:?}",
            dir.display(),
            subdirs(&dir)
        );
        fs::remove_dir(&dir).unwrap_or_else(|e| panic!("rmdir {}: {e}", dir.display()));
    }
    let left = prefix_cgroups(prefix);
    assert!(left.is_empty(), "cgroups left: {left:?}");
}

/// The cgroups at or below `dir` that still hold a process.
pub fn populated_cgroups(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if fs::read_to_string(dir.join("cgroup.procs")).is_ok_and(|p| !p.trim().is_empty()) {
        out.push(dir.to_path_buf());
    }
    for sub in subdirs(dir) {
        out.extend(populated_cgroups(&sub));
    }
    out
}

/// Removes a cgroup directory and the (empty) cgroups below it, deepest first. Returns the
/// directories that could not be removed, with why.
pub fn remove_cgroup_tree(dir: &Path) -> Vec<String> {
    let mut errors = Vec::new();
    for sub in subdirs(dir) {
        errors.extend(remove_cgroup_tree(&sub));
    }
    if let Err(e) = fs::remove_dir(dir) {
        errors.push(format!("rmdir {}: {e}", dir.display()));
    }
    errors
}

/// Pids (other than ours) whose command line mentions a path under `path`.
pub fn processes_naming(path: &Path) -> Vec<u32> {
    // With the slash, `/run/x-1` does not match `/run/x-12`.
    let mut needle = path.as_os_str().as_encoded_bytes().to_vec();
    needle.push(b'/');
    let me = std::process::id();
    fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter(|&pid| pid != me)
                .filter(|pid| {
                    fs::read(format!("/proc/{pid}/cmdline"))
                        .is_ok_and(|c| c.windows(needle.len()).any(|w| w == needle))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Mount points (in our mount namespace) strictly below `path`, deepest first.
pub fn mounts_below(path: &Path) -> Vec<PathBuf> {
    let mut needle = path.as_os_str().as_encoded_bytes().to_vec();
    needle.push(b'/');
    let mut out: Vec<PathBuf> = fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|m| m.as_bytes().starts_with(&needle))
        .map(PathBuf::from)
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out.dedup();
    out
}

/// Whether `path` is a mount point of a tmpfs whose source is `source`.
pub fn is_our_tmpfs(path: &Path, source: &str) -> bool {
    fs::read_to_string("/proc/self/mountinfo").is_ok_and(|m| {
        m.lines().any(|l| {
            l.split_whitespace().nth(4) == path.to_str()
                && l.contains(&format!(" - tmpfs {source} "))
        })
    })
}

/// Puts `dir` on a tmpfs of its own (source name `source`) if it is not on one already, as
/// the runtimes' state roots (`/run/runc`, `/run/docker`, `/run/containers`) are on a host
/// whose /run is a tmpfs; this machine's /run is ext4. Returns a line for the report.
pub fn state_on_tmpfs(dir: &Path, source: &str) -> String {
    let on_tmpfs = nix::sys::statfs::statfs(dir)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC);
    if on_tmpfs {
        return format!("{} is on a tmpfs already", dir.display());
    }
    nix::mount::mount(
        Some(source),
        dir,
        Some("tmpfs"),
        nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
        Some("size=2g,mode=0700"),
    )
    .unwrap_or_else(|e| panic!("mount a tmpfs on {}: {e}", dir.display()));
    format!(
        "{} is a tmpfs mounted by the harness (the host's /run is not a tmpfs)",
        dir.display()
    )
}

/// Unmounts what [`state_on_tmpfs`] mounted (nothing if it mounted nothing).
pub fn unmount_state_tmpfs(dir: &Path, source: &str) {
    if is_our_tmpfs(dir, source) {
        if let Err(e) = nix::mount::umount2(dir, nix::mount::MntFlags::MNT_DETACH) {
            eprintln!("bench: umount {}: {e}", dir.display());
        }
    }
}
