//! Faults injected on purpose: a state root that fills up while a sandbox runs (the verdict
//! must still be the real one), a launch into a full state root (a typed error, nothing
//! left), and SIGKILL of every process role at many points of the start path (the documented
//! outcome per role: ARCHITECTURE.md, "Faults: what each kill leaves").

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use runbox::{ErrorKind, Root, RootOptions, SandboxState, Status};

/// A small tmpfs the test mounts under its own temp dir (the state root lives in it, one
/// level down, so the mount itself is not "a mount under the state root"); unmounted when
/// dropped.
struct SmallFs {
    mnt: PathBuf,
}

impl SmallFs {
    fn mount(name: &str, size: &str) -> SmallFs {
        common::require_root();
        let mnt = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("faults-{name}-{}", std::process::id()));
        let _ = nix::mount::umount2(&mnt, nix::mount::MntFlags::MNT_DETACH);
        let _ = fs::remove_dir_all(&mnt);
        fs::create_dir_all(&mnt).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            &mnt,
            Some("tmpfs"),
            nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
            Some(format!("size={size},mode=0755").as_str()),
        )
        .expect("mount a tmpfs for the test");
        SmallFs { mnt }
    }

    /// A directory on the tmpfs any sandbox user may fill (a read-write bind source).
    fn fill_dir(&self) -> PathBuf {
        let d = self.mnt.join("fill");
        fs::create_dir_all(&d).unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&d, fs::Permissions::from_mode(0o777)).unwrap();
        d
    }

    /// Frees what the sandboxes wrote into the fill directory.
    fn free(&self) {
        for e in fs::read_dir(self.mnt.join("fill")).unwrap().flatten() {
            fs::remove_file(e.path()).unwrap();
        }
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.mnt, nix::mount::MntFlags::MNT_DETACH);
        let _ = fs::remove_dir_all(&self.mnt);
    }
}

/// A state root and cgroup prefix of this test's own, at `dir`.
fn open_root(dir: &Path, name: &str) -> (Root, String) {
    let prefix = format!("runbox-test-{}-{name}", std::process::id());
    let root = RootOptions::new()
        .cgroup_prefix(prefix.clone())
        .open(dir)
        .expect("open state root");
    (root, prefix)
}

/// Waits (at most 30 s) until no process names the state root and no sandbox cgroup or
/// monitor is left under the prefix.
fn wait_for_monitors(dir: &Path, prefix: &str) {
    common::wait_until_quiet(dir, prefix, 30);
}

/// Releases the spares, waits for the monitors, asserts nothing leaked, removes the prefix
/// and the state root.
fn finish(root: &Root, dir: &Path, prefix: &str) {
    root.release_spares();
    wait_for_monitors(dir, prefix);
    common::assert_no_leaks(dir, prefix);
    for d in common::cgroup_prefix_dirs(prefix) {
        let monitors = d.join("_monitors");
        if monitors.is_dir() {
            fs::remove_dir(&monitors).unwrap();
        }
        fs::remove_dir(&d).unwrap();
    }
    fs::remove_dir_all(dir).unwrap();
}

/// Removes what a failed test left (best effort), so one failure leaves nothing running.
struct Cleanup<'a> {
    root: &'a Root,
    dir: &'a Path,
    prefix: &'a str,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        self.root.release_spares();
        for l in self.root.list().unwrap_or_default() {
            if let Ok(s) = self.root.sandbox(&l.id) {
                let _ = s.delete(true);
            }
        }
        wait_for_monitors(self.dir, self.prefix);
        let _ = self.root.gc();
        for d in common::cgroup_prefix_dirs(self.prefix) {
            let _ = fs::remove_dir(d.join("_monitors"));
            let _ = fs::remove_dir(&d);
        }
    }
}

fn cmd(fill: &Path, script: &str) -> runbox::Command {
    let mut c = runbox::Command::new("/bin/sh");
    c.args(["-c", script])
        .image(common::image())
        .bind_rw(fill, "/fill");
    c
}

#[test]
fn a_verdict_survives_a_full_state_root_and_a_launch_into_it_fails_cleanly() {
    let small = SmallFs::mount("full", "24m");
    let fill = small.fill_dir();
    let dir = small.mnt.join("root");
    let (root, prefix) = open_root(&dir, "full");
    let _cleanup = Cleanup {
        root: &root,
        dir: &dir,
        prefix: &prefix,
    };

    // A one-shot run fills the state root's file system, then writes: its output is lost
    // (the captured file takes no more), its verdict is not.
    let v = root
        .run(&cmd(
            &fill,
            "cat /dev/zero > /fill/a 2>/dev/null; echo after; exit 3",
        ))
        .unwrap();
    assert_eq!(
        (v.status, v.exit_code),
        (Status::RuntimeError, Some(3)),
        "{v:?}"
    );
    assert_eq!(v.stdout, "", "{v:?}");
    assert!(v.stdout_truncated, "{v:?}");
    let msg = v.message.clone().unwrap_or_default();
    assert!(
        msg.contains("output lost") && msg.contains("No space left"),
        "{v:?}"
    );
    small.free();

    // A sandbox that prints more than `exit.json`'s reserved space holds, fills the file
    // system and runs into its wall-time limit: `wait` (the launcher's and anyone's),
    // `state` and `list` give the real verdict; the output in it is cut to fit, and says so.
    let mut c = cmd(
        &fill,
        "head -c 200000 /dev/zero | tr '\\0' a; cat /dev/zero > /fill/b 2>/dev/null; sleep 60",
    );
    c.limits_mut().wall_time = Some(Duration::from_secs(3));
    let mut s = root.spawn(&c).unwrap();
    let v = s.wait().unwrap();
    assert_eq!(
        v.status,
        Status::WallTimeLimit,
        "{}",
        v.message.unwrap_or_default()
    );
    assert_eq!(v.limit, Some(runbox::LimitKind::WallTime));
    assert!(v.stdout_truncated, "{:?}", v.message);
    assert!(
        !v.stdout.is_empty() && v.stdout.len() < 16 * 1024 && v.stdout.bytes().all(|b| b == b'a'),
        "{} bytes of stdout",
        v.stdout.len()
    );
    assert!(
        v.message
            .as_deref()
            .unwrap_or_default()
            .contains("cut to fit"),
        "{:?}",
        v.message
    );
    assert_eq!(s.state().unwrap(), SandboxState::Stopped);
    let listed = root.list().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        listed[0].info.as_ref().unwrap().state,
        SandboxState::Stopped
    );
    let again = root.sandbox(s.id()).unwrap().wait().unwrap();
    assert_eq!(again, v, "a second reader gets the same verdict");
    let (out, _) = s.logs().unwrap();
    assert!(out.len() > v.stdout.len(), "the stdout file keeps more");

    // While the file system is still full, a launch cannot create its state: a typed error
    // with the cause, and nothing of it is left.
    let e = root
        .run(&cmd(&fill, "echo never"))
        .expect_err("a launch into a full state root");
    assert!(
        matches!(e.kind(), ErrorKind::Io | ErrorKind::LaunchFailed),
        "{e:?}"
    );
    assert!(e.chain().contains("No space left"), "{}", e.chain());
    let names: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert_eq!(names, vec![s.id().to_string()], "only the stopped sandbox");
    assert!(
        !fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(".new-")),
        "a staging directory was left"
    );

    // Space returns: the stopped sandbox goes, launches and gc work again.
    small.free();
    s.delete(false).unwrap();
    let v = root.run(&cmd(&fill, "echo back")).unwrap();
    assert_eq!(
        (v.status, v.stdout.as_str()),
        (Status::Ok, "back\n"),
        "{v:?}"
    );
    let report = root.gc();
    assert!(report.errors.is_empty(), "{report:?}");
    finish(&root, &dir, &prefix);
}

#[test]
fn a_created_sandbox_started_on_a_full_state_root_is_seen_running_and_gives_its_verdict() {
    let small = SmallFs::mount("created", "8m");
    let fill = small.fill_dir();
    let dir = small.mnt.join("root");
    let (root, prefix) = open_root(&dir, "created");
    let _cleanup = Cleanup {
        root: &root,
        dir: &dir,
        prefix: &prefix,
    };
    let mut s = root.create(&cmd(&fill, "sleep 2; exit 5")).unwrap();
    assert_eq!(s.state().unwrap(), SandboxState::Created);
    // The file system fills up between create and start: the monitor's rewrite of
    // monitor.json (phase running) must still land, or `state` and `kill` would see a
    // sandbox that never started, and the verdict would be an internal error.
    fill_leaving(&fill, 0);
    s.start().unwrap();
    common::wait_until("the sandbox to be seen running", || {
        s.state().is_ok_and(|st| st == SandboxState::Running)
    });
    let v = s.wait().unwrap();
    assert_eq!(
        (v.status, v.exit_code),
        (Status::RuntimeError, Some(5)),
        "{v:?}"
    );
    small.free();
    s.delete(false).unwrap();
    finish(&root, &dir, &prefix);
}

/// Finding 7's run: a box's program fills its work dir, which lives in the state root. Its
/// verdict is its own (not "sandbox lost"), whether the root filled up or a size cap of the
/// box stopped it first; once the box is cleaned up, other boxes and runs work.
#[test]
fn a_box_run_that_fills_the_state_root_gets_its_own_verdict() {
    let small = SmallFs::mount("box", "24m");
    let dir = small.mnt.join("root");
    let (root, prefix) = open_root(&dir, "box");
    let _cleanup = Cleanup {
        root: &root,
        dir: &dir,
        prefix: &prefix,
    };
    let b = root.init_box(1, 0, 0).unwrap();
    let mut c = b.command("/bin/sh");
    c.args(["-c", "cat /dev/zero > big 2>/dev/null; echo done; exit 4"])
        .image(common::image());
    let v = b.run(&c).unwrap();
    assert_eq!(
        (v.status, v.exit_code),
        (Status::RuntimeError, Some(4)),
        "{v:?}"
    );
    assert!(
        v.stdout == "done\n" || (v.stdout.is_empty() && v.stdout_truncated),
        "{v:?}"
    );
    drop(b);
    root.cleanup_box(1).unwrap();
    let other = root.init_box(2, 0, 0).unwrap();
    let mut c = other.command("/bin/echo");
    c.arg("fine").image(common::image());
    let v = other.run(&c).unwrap();
    assert_eq!(
        (v.status, v.stdout.as_str()),
        (Status::Ok, "fine\n"),
        "{v:?}"
    );
    drop(other);
    root.cleanup_box(2).unwrap();
    finish(&root, &dir, &prefix);
}

/// Fills the file system of `fill` completely, then frees `pages` pages of it.
fn fill_leaving(fill: &Path, pages: u64) {
    let path = fill.join("filler");
    let mut f = fs::File::create(&path).unwrap();
    let chunk = vec![1u8; 1 << 16];
    loop {
        use std::io::Write;
        match f.write(&chunk) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("fill: {e}"),
        }
    }
    // Page by page: a partial last chunk may have been written.
    loop {
        use std::io::Write;
        if f.write(&[1u8]).is_err() {
            break;
        }
    }
    let len = f.metadata().unwrap().len();
    f.set_len(len.saturating_sub(pages * 4096) / 4096 * 4096)
        .unwrap();
}

#[test]
fn a_launch_into_a_nearly_full_state_root_runs_right_or_fails_cleanly() {
    let small = SmallFs::mount("nearly", "8m");
    let fill = small.fill_dir();
    let dir = small.mnt.join("root");
    let prefix = format!("runbox-test-{}-nearly", std::process::id());
    // No spares: each launch is the same sequence of writes, so the free pages sweep over
    // every point of it (the staging directory, the uid lease, sandbox.json, monitor.json,
    // the reserves, the output).
    let root = RootOptions::new()
        .cgroup_prefix(prefix.clone())
        .spare_monitors(0)
        .prebuild(false)
        .open(&dir)
        .unwrap();
    let _cleanup = Cleanup {
        root: &root,
        dir: &dir,
        prefix: &prefix,
    };
    let mut failed = 0;
    let mut ran = 0;
    for pages in [0, 1, 2, 3, 4, 6, 12, 18, 19, 20, 21, 22, 24, 32] {
        fill_leaving(&fill, pages);
        match root.run(&cmd(&fill, "echo hi")) {
            Ok(v) => {
                ran += 1;
                assert_eq!(v.status, Status::Ok, "{pages} pages free: {v:?}");
                assert!(
                    v.stdout == "hi\n"
                        || (v.stdout.is_empty()
                            && v.stdout_truncated
                            && v.message.as_deref().unwrap_or("").contains("output lost")),
                    "{pages} pages free: {v:?}"
                );
            }
            Err(e) => {
                failed += 1;
                assert!(
                    matches!(e.kind(), ErrorKind::Io | ErrorKind::LaunchFailed),
                    "{pages} pages free: {e:?}"
                );
                assert!(e.chain().contains("No space left"), "{}", e.chain());
            }
        }
        // Whichever way it went, nothing of it stays (the monitor of a one-shot run
        // removes its directory after the verdict).
        wait_for_monitors(&dir, &prefix);
        assert!(root.list().unwrap().is_empty(), "{pages} pages free");
        common::assert_no_leaks(&dir, &prefix);
        small.free();
    }
    assert!(failed > 0 && ran > 0, "{failed} failed, {ran} ran");
    let report = root.gc();
    assert!(report.errors.is_empty(), "{report:?}");
    assert_eq!(root.run(&cmd(&fill, "echo back")).unwrap().stdout, "back\n");
    finish(&root, &dir, &prefix);
}

// ---------------------------------------------------------------------------------------
// The kill harness: SIGKILL of each process role at many points of the start path.
// ---------------------------------------------------------------------------------------

/// In the emulated guest (tests/vm sets `RUNBOX_IN_GUEST`) everything is 10-50x slower:
/// fewer iterations, delays stretched.
fn in_guest() -> bool {
    std::env::var_os("RUNBOX_IN_GUEST").is_some()
}

fn iterations() -> u32 {
    if in_guest() {
        4
    } else {
        12
    }
}

/// How long a killer may look for its target once its delay has passed (a spare's start
/// takes seconds in the guest).
fn patience() -> Duration {
    Duration::from_secs(if in_guest() { 20 } else { 2 })
}

/// Delay of iteration `i` of `n`, spread evenly over `0..max_ms` (stretched in the guest).
fn spread(i: u32, n: u32, max_ms: u64) -> Duration {
    let scale = if in_guest() { 20 } else { 1 };
    Duration::from_micros(max_ms * 1000 * u64::from(i) / u64::from(n.max(1)) * scale)
}

/// The memory limit of the harness's sandboxes: a process of theirs found anywhere must
/// be in a cgroup of the test's prefix that has exactly this limit.
const MEMORY: u64 = 96 << 20;

/// `sh -c SCRIPT MARK`: the shell's command line carries `MARK` (its `$0`), so every
/// sandbox shell of a test is found by its marker.
fn marked(mark: &str, script: &str) -> runbox::Command {
    let mut c = runbox::Command::new("/bin/sh");
    c.args(["-c", script, mark]).image(common::image());
    c.limits_mut().memory_bytes = MEMORY;
    c
}

/// The script of the harness's runs and what it must give when nothing was killed.
const SCRIPT: &str = "echo hi; exit 7";

fn is_right(v: &runbox::Verdict) -> bool {
    v.status == Status::RuntimeError && v.exit_code == Some(7) && v.stdout == "hi\n"
}

fn is_lost(v: &runbox::Verdict) -> bool {
    v.status == Status::InternalError
}

fn cmdline(pid: i32) -> Option<String> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(String::from_utf8_lossy(&raw).replace('\0', " "))
}

/// Field 22 of `/proc/<pid>/stat`: with the pid, a process's identity.
fn start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    // `rest` starts at field 3 (state); field 22 is the 20th from there.
    let mut fields = rest.split_whitespace();
    if fields.next()? == "Z" {
        return None; // a zombie is dead already
    }
    fields.nth(18)?.parse().ok()
}

fn pids() -> Vec<i32> {
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

fn mount_ns(pid: i32) -> Option<PathBuf> {
    fs::read_link(format!("/proc/{pid}/ns/mnt")).ok()
}

/// The memory cgroup of `pid` (v1 memory hierarchy, or v2).
fn memory_cgroup(pid: i32) -> Option<String> {
    let cg = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let v1 = cg.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, ctrls, path) = (f.next()?, f.next()?, f.next()?);
        ctrls
            .split(',')
            .any(|c| c == "memory")
            .then(|| path.to_string())
    });
    v1.or_else(|| {
        cg.lines()
            .find_map(|l| l.strip_prefix("0::").map(str::to_string))
    })
}

/// The memory limit of the cgroup `path` (v1 or v2), if it has one.
fn memory_limit(path: &str) -> Option<u64> {
    let mounts = fs::read_to_string("/proc/self/mounts").ok()?;
    for l in mounts.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 4 {
            continue;
        }
        let file = match f[2] {
            "cgroup2" => format!("{}{path}/memory.max", f[1]),
            "cgroup" if f[3].split(',').any(|o| o == "memory") => {
                format!("{}{path}/memory.limit_in_bytes", f[1])
            }
            _ => continue,
        };
        if let Ok(v) = fs::read_to_string(file) {
            return v.trim().parse().ok();
        }
    }
    None
}

/// `target/<profile>`: where the test, the CLI and the monitor executables are.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

/// True if `pid` is the pid 1 of a pid namespace below ours (a container's init).
fn is_container_init(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .is_some_and(|ns| {
                let ids: Vec<&str> = ns.split_whitespace().collect();
                ids.len() > 1 && ids.last() == Some(&"1")
            })
    })
}

/// Never a sandbox running without its limits: every process of the test's sandboxes
/// (its shell, found by `mark`; and every container init in the prefix's cgroups) is in a
/// cgroup of the test's prefix, not the monitors', with the sandbox's memory limit.
fn assert_confined(mark: &str, prefix: &str) {
    for pid in pids() {
        let Some(cg) = memory_cgroup(pid) else {
            continue;
        };
        let in_prefix = cg.starts_with(&format!("/{prefix}/"));
        // A controller's or monitor's process is no sandbox's, even with the marker in its
        // arguments (a killed `runbox run`'s child between its fork and its exec).
        let ours =
            fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| e.starts_with(target_dir()));
        let marked = !ours && cmdline(pid).is_some_and(|c| c.contains(mark));
        let init = in_prefix && is_container_init(pid);
        if !(marked || init) || start_time(pid).is_none() {
            continue;
        }
        assert!(
            in_prefix && !cg.ends_with("/_monitors"),
            "process {pid} ({:?}) of a sandbox runs in {cg}",
            cmdline(pid)
        );
        // Gone meanwhile: its cgroup may be gone too.
        if let Some(limit) = memory_limit(&cg) {
            assert_eq!(limit, MEMORY, "process {pid} in {cg}");
        }
    }
}

/// Waits (at most 30 s) until no process carries `mark` any more.
fn wait_marked_gone(mark: &str) {
    let t = Instant::now();
    let alive = || {
        pids()
            .into_iter()
            .any(|p| cmdline(p).is_some_and(|c| c.contains(mark)) && start_time(p).is_some())
    };
    while alive() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "a sandbox process of {mark} outlived its sandbox"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Kills, once `delay` has passed, every process `find` names (pid and start time, checked
/// again right before the signal, so a reused pid is never signalled), polling until one
/// was found and killed, or `stop` is set. Returns how many were killed.
/// Waits for a [`killer`] started with `delay` (at most `delay` and the guest's patience),
/// stops it and says whether it killed something: `killed` or `missed`.
fn stop_killer(
    k: std::thread::JoinHandle<usize>,
    stop: &std::sync::atomic::AtomicBool,
    delay: Duration,
) -> &'static str {
    let t = Instant::now();
    while !k.is_finished() && t.elapsed() < delay + patience() {
        std::thread::sleep(Duration::from_millis(1));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    if k.join().unwrap() > 0 {
        "killed"
    } else {
        "missed"
    }
}

fn killer(
    delay: Duration,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    find: impl Fn() -> Vec<i32> + Send + 'static,
) -> std::thread::JoinHandle<usize> {
    use std::sync::atomic::Ordering;
    std::thread::spawn(move || {
        let t = Instant::now();
        while t.elapsed() < delay && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_micros(200));
        }
        loop {
            let mut killed = 0;
            for pid in find() {
                let Some(start) = start_time(pid) else {
                    continue;
                };
                // Verified again right before the signal: still a process of the role, and
                // the same process (start time).
                let verified = find().contains(&pid) && start_time(pid) == Some(start);
                let sig = nix::sys::signal::Signal::SIGKILL;
                if verified && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).is_ok()
                {
                    killed += 1;
                }
            }
            if killed > 0 || stop.load(Ordering::Relaxed) {
                return killed;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    })
}

/// Processes of the monitor executable working for the state root `root` whose arguments
/// after the root are `words` (`factory`, `spare`, `run`...), in our mount namespace
/// (`same_ns`) or in one of their own.
fn monitor_processes(root: &Path, word: &str, same_ns: Option<bool>) -> Vec<i32> {
    let root = root.to_string_lossy().into_owned();
    let ours = mount_ns(std::process::id().try_into().unwrap());
    pids()
        .into_iter()
        .filter(|&p| {
            cmdline(p).is_some_and(|c| {
                let mut words = c
                    .split_whitespace()
                    .skip_while(|w| !w.starts_with("--runbox-monitor-v"));
                words.next().is_some()
                    && words
                        .next()
                        .is_some_and(|r| r == root || r.starts_with(&format!("{root}/")))
                    && words.next() == Some(word)
            })
        })
        .filter(|&p| same_ns.is_none_or(|same| (mount_ns(p) == ours) == same))
        .collect()
}

/// The container inits (pid 1 of their namespace) in the cgroups of `prefix`.
fn inits(prefix: &str) -> Vec<i32> {
    pids()
        .into_iter()
        .filter(|&p| {
            memory_cgroup(p).is_some_and(|cg| cg.starts_with(&format!("/{prefix}/")))
                && is_container_init(p)
        })
        .collect()
}

/// Outcomes seen, for the test's output.
#[derive(Default, Debug)]
struct Seen(std::collections::BTreeMap<&'static str, u32>);

impl Seen {
    fn add(&mut self, what: &'static str) {
        *self.0.entry(what).or_default() += 1;
    }
}

/// One role's harness: a state root and prefix of its own, the marker of its sandboxes.
struct Harness {
    dir: PathBuf,
    prefix: String,
    mark: String,
}

impl Harness {
    fn new(role: &str) -> Harness {
        common::require_root();
        let pid = std::process::id();
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("roots")
            .join(format!("kill-{role}-{pid}"));
        let _ = fs::remove_dir_all(&dir);
        Harness {
            dir,
            prefix: format!("runbox-test-{pid}-kill-{role}"),
            mark: format!("faults-mark-{pid}-{role}"),
        }
    }

    fn root(&self, edit: impl FnOnce(&mut RootOptions)) -> Root {
        let mut opts = RootOptions::new();
        opts.cgroup_prefix(self.prefix.clone());
        edit(&mut opts);
        opts.open(&self.dir).unwrap()
    }

    fn cmd(&self) -> runbox::Command {
        marked(&self.mark, SCRIPT)
    }

    /// After each iteration: nothing of a sandbox runs outside its limits; once the
    /// sandboxes' processes are gone, gc collects the rest without errors.
    fn settle(&self, root: &Root) {
        assert_confined(&self.mark, &self.prefix);
        wait_marked_gone(&self.mark);
        wait_for_monitors_except_spares(&self.dir, &self.prefix);
        // A one-shot run's monitor removes its sandbox after the verdict; gc takes what a
        // killed one left. Either way nothing stays.
        let t = Instant::now();
        loop {
            let report = root.gc();
            assert!(report.errors.is_empty(), "{report:?}");
            let left = root.list().unwrap();
            if left.is_empty() {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(30), "left: {left:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn finish(self, root: &Root, seen: &Seen, role: &str) {
        eprintln!("kill {role}: {:?}", seen.0);
        root.release_spares();
        wait_for_monitors(&self.dir, &self.prefix);
        let report = root.gc();
        assert!(report.errors.is_empty(), "{report:?}");
        finish(root, &self.dir, &self.prefix);
    }
}

impl Drop for Harness {
    /// A failed iteration still removes the test's sandboxes, spares, cgroups and root.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        if let Ok(root) = RootOptions::new()
            .cgroup_prefix(self.prefix.clone())
            .open(&self.dir)
        {
            let _cleanup = Cleanup {
                root: &root,
                dir: &self.dir,
                prefix: &self.prefix,
            };
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Waits (at most 30 s) until the sandboxes' cgroups are gone (monitors finish cleaning up
/// after a one-shot verdict); spares may stay.
fn wait_for_monitors_except_spares(dir: &Path, prefix: &str) {
    let t = Instant::now();
    let busy = || {
        common::cgroup_prefix_dirs(prefix).iter().any(|d| {
            fs::read_dir(d).is_ok_and(|rd| {
                rd.flatten().any(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    e.file_type().is_ok_and(|t| t.is_dir())
                        && n != "_monitors"
                        && !n.starts_with("_warm-")
                        && !dir.join(&n).exists()
                })
            })
        })
    };
    while busy() && t.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The monitor of a sandbox killed at points of its start and run (an exec'd monitor: no
/// spares). The caller gets the verdict if the kill came after it was sent, an
/// `internal_error` ("lost") verdict if the program had started, a `launch_failed`/`io`
/// error before; the init dies with its monitor (lifeline, parent-death signal), and gc
/// collects the rest.
#[test]
fn kill_the_monitor_at_points_of_the_start_path() {
    use std::sync::{atomic::AtomicBool, Arc};
    let h = Harness::new("monitor");
    // Exec'd monitors; and, every other iteration, spares taken as monitors (with them,
    // every spare of the root is a target: it may be the one being taken).
    let exec_root = h.root(|o| {
        o.spare_monitors(0).prebuild(false);
    });
    let spare_root = h.root(|_| {});
    let n = iterations();
    let mut seen = Seen::default();
    for i in 0..n {
        let root = if i % 2 == 0 { &exec_root } else { &spare_root };
        let stop = Arc::new(AtomicBool::new(false));
        let dir = h.dir.clone();
        let k = killer(spread(i, n, 100), stop.clone(), move || {
            let mut p = monitor_processes(&dir, "run", None);
            p.extend(monitor_processes(&dir, "factory", Some(false)));
            p.extend(monitor_processes(&dir, "spare", None));
            p
        });
        let got = root.run(&marked(&h.mark, "echo hi; usleep 50000; exit 7"));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let killed = k.join().unwrap();
        match &got {
            Ok(v) if is_right(v) => seen.add("verdict"),
            Ok(v) if is_lost(v) && killed > 0 => seen.add("lost"),
            Err(e) if killed > 0 && matches!(e.kind(), ErrorKind::LaunchFailed | ErrorKind::Io) => {
                seen.add("launch error")
            }
            other => panic!("iteration {i}, {killed} killed: {other:?}"),
        }
        h.settle(root);
    }
    spare_root.release_spares();
    h.finish(&exec_root, &seen, "monitor");
}

/// The container's init killed at points of the start path and of the run (exec'd
/// monitors, no spares). The caller gets the verdict (the kill came too late), a
/// `signaled` one (SIGKILL: the program's pid namespace went with its init), an
/// `internal_error`, or a `launch_failed` error (killed before the program was handed over).
#[test]
fn kill_the_init_at_points_of_the_start_path() {
    use std::sync::{atomic::AtomicBool, Arc};
    let h = Harness::new("init");
    let root = h.root(|o| {
        o.spare_monitors(0).prebuild(false);
    });
    let n = iterations();
    let mut seen = Seen::default();
    for i in 0..n {
        let stop = Arc::new(AtomicBool::new(false));
        let prefix = h.prefix.clone();
        let k = killer(spread(i, n, 120), stop.clone(), move || inits(&prefix));
        let got = root.run(&marked(&h.mark, "echo hi; usleep 100000; exit 7"));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let killed = k.join().unwrap();
        match &got {
            Ok(v) if is_right(v) => seen.add("verdict"),
            Ok(v) if killed > 0 && v.status == Status::Signaled && v.signal == Some(9) => {
                seen.add("signaled")
            }
            Ok(v) if killed > 0 && is_lost(v) => seen.add("internal error"),
            Err(e) if killed > 0 && matches!(e.kind(), ErrorKind::LaunchFailed | ErrorKind::Io) => {
                seen.add("launch error")
            }
            other => panic!("iteration {i}, {killed} killed: {other:?}"),
        }
        h.settle(&root);
    }
    h.finish(&root, &seen, "init");
}

/// A pre-built container's init killed while its spare waits (being built, built): the
/// launch that takes the spare builds afresh and gives the verdict (a spare is a cache).
#[test]
fn kill_a_prebuilt_init_while_its_spare_waits() {
    use std::sync::{atomic::AtomicBool, Arc};
    let h = Harness::new("warminit");
    let root = h.root(|_| {});
    let n = iterations();
    let mut seen = Seen::default();
    let v = root.run(&h.cmd()).unwrap();
    assert!(is_right(&v), "{v:?}");
    for i in 0..n {
        // The last launch asked for a spare of its shape: kill its init as it is built.
        let stop = Arc::new(AtomicBool::new(false));
        let prefix = h.prefix.clone();
        let k = killer(spread(i, n, 40), stop.clone(), move || {
            inits(&prefix)
                .into_iter()
                .filter(|&p| memory_cgroup(p).is_some_and(|cg| cg.contains("/_warm-")))
                .collect()
        });
        seen.add(stop_killer(k, &stop, spread(i, n, 40)));
        let v = root.run(&h.cmd());
        assert!(v.as_ref().is_ok_and(is_right), "iteration {i}: {v:?}");
        h.settle(&root);
    }
    h.finish(&root, &seen, "pre-built init");
}

/// The spare factory killed at points of its start and of the spares it forks: no launch
/// depends on it (a dead factory's spares are exec'd instead), so every run gives its
/// verdict; gc collects what the spares it was forking left.
#[test]
fn kill_the_factory_at_points_of_the_start_path() {
    use std::sync::{atomic::AtomicBool, Arc};
    let h = Harness::new("factory");
    let n = iterations();
    let mut seen = Seen::default();
    let mut last = None;
    for i in 0..n {
        // A new root each time: a root starts its factory with its first spare.
        let root = h.root(|_| {});
        let stop = Arc::new(AtomicBool::new(false));
        let dir = h.dir.clone();
        let k = killer(spread(i, n, 30), stop.clone(), move || {
            monitor_processes(&dir, "factory", Some(true))
        });
        for _ in 0..2 {
            let v = root.run(&h.cmd()).unwrap();
            assert!(is_right(&v), "iteration {i}: {v:?}");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        seen.add(if k.join().unwrap() > 0 {
            "killed"
        } else {
            "missed"
        });
        h.settle(&root);
        root.release_spares();
        last = Some(root);
    }
    let root = last.unwrap();
    h.finish(&root, &seen, "factory");
}

/// A root's own spare killed at points of its start (forked, detached, building its
/// container, built and idle): the next launch finds it dead and starts a fresh monitor,
/// with its verdict; the dead spare's pre-built container goes with that launch or gc.
#[test]
fn kill_a_spare_at_points_of_its_start() {
    use std::sync::{atomic::AtomicBool, Arc};
    let h = Harness::new("spare");
    let n = iterations();
    let mut seen = Seen::default();
    let mut last = None;
    for i in 0..n {
        let root = h.root(|_| {});
        let v = root.run(&h.cmd()).unwrap();
        assert!(is_right(&v), "iteration {i}: {v:?}");
        // That launch asked for a spare: kill it at a point of its start.
        let stop = Arc::new(AtomicBool::new(false));
        let dir = h.dir.clone();
        let k = killer(spread(i, n, 40), stop.clone(), move || {
            let mut p = monitor_processes(&dir, "factory", Some(false));
            p.extend(monitor_processes(&dir, "spare", None));
            p
        });
        // Give the killer its delay (and at most a second more to find a spare).
        seen.add(stop_killer(k, &stop, spread(i, n, 40)));
        for _ in 0..2 {
            let v = root.run(&h.cmd()).unwrap();
            assert!(is_right(&v), "iteration {i}: {v:?}");
        }
        h.settle(&root);
        root.release_spares();
        last = Some(root);
    }
    let root = last.unwrap();
    h.finish(&root, &seen, "spare");
}

/// A parked spare killed at points of its start (exec'd, detached, parked, leasing its uid,
/// building, built and waiting): the next controller's launch runs (a dead spare is never
/// claimed, or its claim fails and the launch starts a monitor), and gc collects its
/// directory, its container's cgroup and its uid lease.
#[test]
fn kill_a_parked_spare_at_points_of_its_start() {
    use std::sync::{atomic::AtomicBool, Arc};
    let h = Harness::new("parked");
    let n = iterations();
    let mut seen = Seen::default();
    let parking = |o: &mut RootOptions| {
        o.spare_monitors(0).parked_spares(1);
    };
    let mut last = None;
    for i in 0..n {
        let root = h.root(parking);
        // The shape's second launch parks a spare, after its verdict.
        for _ in 0..2 {
            let v = root.run(&h.cmd()).unwrap();
            assert!(is_right(&v), "iteration {i}: {v:?}");
        }
        let stop = Arc::new(AtomicBool::new(false));
        let dir = h.dir.clone();
        let k = killer(spread(i, n, 40), stop.clone(), move || {
            monitor_processes(&dir, "spare", None)
        });
        seen.add(stop_killer(k, &stop, spread(i, n, 40)));
        root.stop_waiting_for_spares();
        drop(root);
        // Another controller.
        let other = h.root(parking);
        let v = other.run(&h.cmd()).unwrap();
        assert!(is_right(&v), "iteration {i}: {v:?}");
        h.settle(&other);
        other.release_spares();
        last = Some(other);
    }
    let root = last.unwrap();
    h.finish(&root, &seen, "parked spare");
}

/// The controller (a `runbox run` process) killed at points of its launch: the sandbox
/// either was never claimed (gc collects the staging directory and uid lease), or is lost
/// (its monitor had not recorded itself: gc collects it), or runs on and a later process
/// waits for its real verdict.
#[test]
fn kill_the_controller_at_points_of_the_start_path() {
    let h = Harness::new("controller");
    let root = h.root(|_| {});
    let cli = common::example("runbox");
    let n = iterations();
    let mut seen = Seen::default();
    for i in 0..n {
        let name = format!("c{i}");
        let mut child = std::process::Command::new(&cli)
            .arg("--root")
            .arg(&h.dir)
            .args(["--cgroup-parent", &h.prefix])
            // Every other run parks a spare after its verdict (the CLI's default), which
            // the next one claims: kills land while parking and in claimed spares too.
            .args(["run", "--spares", if i % 2 == 0 { "0" } else { "1" }])
            .args(["-m", "96M", "--name", &name, "--image"])
            .arg(common::image())
            .args([
                "--",
                "/bin/sh",
                "-c",
                "echo hi; usleep 300000; exit 7",
                &h.mark,
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(spread(i, n, 80));
        let _ = child.kill();
        let _ = child.wait();
        assert_confined(&h.mark, &h.prefix);
        match root.sandbox(&name) {
            Err(e) if e.kind() == ErrorKind::NotFound => seen.add("never claimed"),
            Err(e) => panic!("iteration {i}: {e:?}"),
            Ok(mut s) => {
                let v = s.wait().unwrap();
                if is_right(&v) {
                    seen.add("verdict from a later process");
                } else if is_lost(&v) {
                    seen.add("lost");
                } else {
                    panic!("iteration {i}: {v:?}");
                }
            }
        }
        h.settle(&root);
    }
    h.finish(&root, &seen, "controller");
}

/// A monitor exec'd with the command line of another protocol version (a controller of an
/// older or newer runbox running this binary) refuses to run, and says which versions met.
#[test]
fn a_monitor_given_another_versions_command_line_refuses_it() {
    let out = std::process::Command::new(common::example("runbox"))
        .args(["--runbox-monitor-v1", "/nonexistent/sandbox", "run"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to run") && err.contains("version 1, this binary 2"),
        "{err}"
    );
    assert!(out.stdout.is_empty(), "{out:?}");
}
