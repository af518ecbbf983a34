//! The sandbox's cgroup beyond what libcontainer does: the CPU quota written before start,
//! figures read before delete, OOM detection, killing and removing leftovers. Handles v1 (and
//! hybrid) and v2. Used by monitors (limits, figures, teardown) and controllers (gc).

use std::fs;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags};

use crate::host::mounts::{self, MountEntry};
use crate::host::{proc, sys};

/// Which cgroup layout the host uses, as libcontainer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Layout {
    /// cgroup v1 controllers (also the hybrid layout): controller name -> mount point.
    V1(Vec<(String, PathBuf)>),
    /// The unified hierarchy only, mounted here.
    V2(PathBuf),
}

const V1_CONTROLLERS: &[&str] = &[
    "cpu", "cpuacct", "cpuset", "memory", "pids", "devices", "freezer", "blkio",
];

/// The v1 controllers a sandbox joins: those that carry its limits and figures (cpu,
/// cpuacct, cpuset, memory, pids) and its device policy (devices).
const SANDBOX_V1_CONTROLLERS: &[&str] = &["cpu", "cpuacct", "cpuset", "memory", "pids", "devices"];

/// The v1 controllers a sandbox also joins for its control channel: freezer (pause) and
/// blkio (block I/O figures). Not required of a cgroup base.
const CONTROL_V1_CONTROLLERS: &[&str] = &["freezer", "blkio"];

/// From the mount table of a v1 (or hybrid) host: the mount points of the cgroup hierarchies
/// that carry nothing of a sandbox's (net_cls, perf_event, hugetlb, named ones such as
/// `name=systemd`, and a hybrid host's cgroup2; freezer and blkio carry pause and block I/O
/// figures). None on a v2 host.
pub(crate) fn limitless_hierarchies(mounts: &[MountEntry]) -> Vec<PathBuf> {
    let mut kept_v1 = false;
    let mut limitless = Vec::new();
    for m in mounts {
        match m.fstype.as_str() {
            "cgroup" if SANDBOX_V1_CONTROLLERS.iter().any(|c| m.has_option(c)) => {
                kept_v1 = true;
            }
            "cgroup" if CONTROL_V1_CONTROLLERS.iter().any(|c| m.has_option(c)) => {}
            "cgroup" | "cgroup2" => limitless.push(m.target.clone()),
            _ => {}
        }
    }
    if kept_v1 {
        limitless
    } else {
        Vec::new() // a v2 host: its one hierarchy is the sandbox's
    }
}

impl Layout {
    /// Reads the layout from `/proc/self/mounts`.
    pub fn detect() -> io::Result<Layout> {
        Ok(Layout::parse(&mounts::read()?))
    }

    fn parse(mounts: &[MountEntry]) -> Layout {
        let mut v1: Vec<(String, PathBuf)> = Vec::new();
        let mut v2 = None;
        for m in mounts {
            match m.fstype.as_str() {
                "cgroup" => {
                    for opt in &m.options {
                        if V1_CONTROLLERS.contains(&opt.as_str())
                            && !v1.iter().any(|(c, _)| c == opt)
                        {
                            v1.push((opt.clone(), m.target.clone()));
                        }
                    }
                }
                "cgroup2" if v2.is_none() => v2 = Some(m.target.clone()),
                _ => {}
            }
        }
        if v1.iter().any(|(c, _)| c == "cpu" || c == "memory") {
            Layout::V1(v1)
        } else {
            Layout::V2(v2.unwrap_or_else(|| PathBuf::from("/sys/fs/cgroup")))
        }
    }

    /// The sandbox cgroup at `cgroup_path` (as given to libcontainer, `/<prefix>/<id>`).
    pub fn cgroup(&self, cgroup_path: &str) -> Cgroup {
        let rel = cgroup_path.trim_start_matches('/');
        match self {
            Layout::V1(ctrls) => Cgroup::V1(
                ctrls
                    .iter()
                    .map(|(c, mnt)| (c.clone(), mnt.join(rel)))
                    .collect(),
            ),
            Layout::V2(mnt) => Cgroup::V2(mnt.join(rel)),
        }
    }
}

/// The leaf a delegated subtree's own processes are moved into (see [`prepare_base`]).
pub(crate) const BASE_LEAF: &str = "runbox-leaf";

/// The controllers runbox gives its sandboxes on v2.
const V2_CONTROLLERS: &[&str] = &["cpuset", "cpu", "io", "memory", "pids"];

/// Checks a cgroup base (`/`, or a path like `/system.slice/sandboxes.service`): absolute,
/// no `.`/`..`, nothing a spec or mount option could misread.
pub(crate) fn valid_base(base: &str) -> bool {
    base.starts_with('/')
        && base.split('/').skip(1).all(|part| {
            base == "/"
                || (!part.is_empty()
                    && part != "."
                    && part != ".."
                    && !part.contains([',', ':'])
                    && !part.contains(char::is_whitespace))
        })
}

/// Makes the cgroup `base` (a subtree runbox was given, e.g. a systemd unit with
/// `Delegate=yes`) able to hold runbox's cgroups, writing nothing outside it. It must exist
/// in every hierarchy runbox uses. On v2, the no-internal-processes rule: a cgroup that gives
/// controllers to children holds no processes, so the processes in `base` (the unit's own)
/// move into `base/runbox-leaf` first; then the controllers `base` has are enabled for its
/// children. The same holds for `/` inside a container (a cgroup namespace whose root is a
/// real cgroup, with the container's processes in it): they move into `/runbox-leaf`, as
/// container engines' init scripts do. The host's own root (exempt from the rule) and v1
/// need nothing moved.
pub(crate) fn prepare_base(base: &str) -> io::Result<()> {
    let rel = base.trim_start_matches('/');
    match Layout::detect()? {
        Layout::V1(_) if rel.is_empty() => Ok(()),
        Layout::V1(ctrls) => {
            for (c, mnt) in ctrls
                .iter()
                .filter(|(c, _)| SANDBOX_V1_CONTROLLERS.contains(&c.as_str()))
            {
                let dir = mnt.join(rel);
                if !dir.is_dir() {
                    return Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!(
                            "cgroup base {base} does not exist in the {c} hierarchy ({})",
                            dir.display()
                        ),
                    ));
                }
            }
            Ok(())
        }
        // The host's root: every process may stay where it is.
        Layout::V2(mnt) if rel.is_empty() && !mnt.join("cgroup.type").exists() => Ok(()),
        Layout::V2(mnt) => {
            let dir = mnt.join(rel);
            if !dir.is_dir() {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("cgroup base {base} does not exist ({})", dir.display()),
                ));
            }
            let available = read(&dir.join("cgroup.controllers"))?;
            let wanted: Vec<String> = V2_CONTROLLERS
                .iter()
                .filter(|c| available.split_whitespace().any(|a| a == **c))
                .map(|c| format!("+{c}"))
                .collect();
            let control = dir.join("cgroup.subtree_control");
            let enabled = read(&control)?;
            let procs = read(&dir.join("cgroup.procs"))?;
            if procs.trim().is_empty()
                && wanted
                    .iter()
                    .all(|w| enabled.split_whitespace().any(|e| e == &w[1..]))
            {
                return Ok(()); // prepared already (by another controller, say)
            }
            // Processes may be forked into it while we move them: retry a few times.
            let mut last = None;
            for _ in 0..10 {
                let procs = read(&dir.join("cgroup.procs"))?;
                if !procs.trim().is_empty() {
                    let leaf = dir.join(BASE_LEAF);
                    fs::create_dir_all(&leaf)?;
                    for pid in procs.lines() {
                        // A process that exited meanwhile is fine.
                        let _ = fs::write(leaf.join("cgroup.procs"), pid.trim());
                    }
                }
                match fs::write(&control, wanted.join(" ")) {
                    Ok(()) => return Ok(()),
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => last = Some(e),
                    Err(e) => {
                        return Err(io::Error::new(
                            e.kind(),
                            format!("{}: {e}", control.display()),
                        ))
                    }
                }
            }
            Err(last.map_or_else(
                || io::Error::other("cgroup base kept gaining processes"),
                |e| io::Error::new(e.kind(), format!("{}: {e}", control.display())),
            ))
        }
    }
}

/// Moves the calling process out of the cgroups it inherited (wherever it is not at a
/// hierarchy's root) into `/<prefix>/_monitors` of the same hierarchy, so that a service
/// manager stopping the controller's cgroup does not take the monitor, and with it the sandbox.
/// `_monitors` cannot clash with a sandbox id (ids start with a letter or digit).
pub(crate) fn leave_inherited_cgroups(prefix: &str) -> io::Result<()> {
    let mine = fs::read_to_string("/proc/self/cgroup")?;
    let mounts = mounts::read()?;
    for line in mine.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = match (parts.next(), parts.next(), parts.next()) {
            (Some(a), Some(b), Some(c)) => (a, b, c),
            _ => continue,
        };
        if path == "/" || path.starts_with(&format!("/{prefix}/")) {
            continue;
        }
        let wanted: Vec<&str> = controllers.split(',').filter(|c| !c.is_empty()).collect();
        let mount = mounts.iter().find_map(|m| {
            let matches = match m.fstype.as_str() {
                "cgroup2" => wanted.is_empty(),
                "cgroup" => !wanted.is_empty() && wanted.iter().all(|w| m.has_option(w)),
                _ => false,
            };
            matches.then(|| m.target.clone())
        });
        let Some(mount) = mount else { continue };
        let dir = mount.join(prefix).join(crate::layout::MONITORS_CGROUP);
        fs::create_dir_all(&dir)?;
        fs::write(dir.join("cgroup.procs"), "0")
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
    }
    Ok(())
}

/// The cgroup v2 directory `/<prefix>/_monitors`, created if needed and opened, for monitors
/// to be born in (`CLONE_INTO_CGROUP`, see [`crate::host::sys::spawn_into_cgroup`]): the
/// same place [`leave_inherited_cgroups`] moves a monitor to in the unified hierarchy, under
/// the same rule (only if the calling process is neither at the hierarchy's root nor under
/// the prefix). `None` where there is no unified hierarchy or nothing to leave; the
/// monitors then move themselves as before (and always do in v1 hierarchies).
pub(crate) fn monitors_cgroup_v2(prefix: &str) -> Option<OwnedFd> {
    let mine = fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = mine.lines().find_map(|l| l.strip_prefix("0::"))?;
    if path == "/" || path.starts_with(&format!("/{prefix}/")) {
        return None;
    }
    let mounts = mounts::read().ok()?;
    let mount = mounts.iter().find(|m| m.fstype == "cgroup2")?;
    let dir = mount
        .target
        .join(prefix)
        .join(crate::layout::MONITORS_CGROUP);
    fs::create_dir_all(&dir).ok()?;
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(&dir)
        .ok()?;
    Some(OwnedFd::from(file))
}

/// One sandbox's cgroup directories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Cgroup {
    /// controller -> directory.
    V1(Vec<(String, PathBuf)>),
    /// The directory in the unified hierarchy.
    V2(PathBuf),
}

/// CPU time of the whole tree, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CpuUsage {
    pub total_us: u64,
    pub user_us: u64,
    pub system_us: u64,
}

impl CpuUsage {
    /// The usage accrued since `earlier`.
    pub fn since(self, earlier: CpuUsage) -> CpuUsage {
        CpuUsage {
            total_us: self.total_us.saturating_sub(earlier.total_us),
            user_us: self.user_us.saturating_sub(earlier.user_us),
            system_us: self.system_us.saturating_sub(earlier.system_us),
        }
    }
}

/// What the cgroup says about a live sandbox (see [`Cgroup::live`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Live {
    pub cpu: CpuUsage,
    pub memory_bytes: u64,
    pub memory_peak_bytes: u64,
    pub pids: u64,
    pub block_read_bytes: u64,
    pub block_write_bytes: u64,
}

/// Read and written bytes from v1's `blkio.throttle.io_service_bytes_recursive`
/// (`MAJ:MIN Read N` lines per device, and a `Total` line that is left out).
fn v1_io_bytes(text: &str) -> (u64, u64) {
    let (mut r, mut w) = (0u64, 0u64);
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let (Some(_dev), Some(op), Some(n)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        let n: u64 = n.parse().unwrap_or(0);
        match op {
            "Read" => r = r.saturating_add(n),
            "Write" => w = w.saturating_add(n),
            _ => {}
        }
    }
    (r, w)
}

/// Read and written bytes from v2's `io.stat` (`MAJ:MIN rbytes=N wbytes=N …` per device).
fn v2_io_bytes(text: &str) -> (u64, u64) {
    let (mut r, mut w) = (0u64, 0u64);
    for field in text.split_whitespace() {
        let value = |key: &str| field.strip_prefix(key).and_then(|n| n.parse::<u64>().ok());
        if let Some(n) = value("rbytes=") {
            r = r.saturating_add(n);
        } else if let Some(n) = value("wbytes=") {
            w = w.saturating_add(n);
        }
    }
    (r, w)
}

/// What the cgroup says about a finished run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Figures {
    pub cpu: CpuUsage,
    pub memory_peak_bytes: u64,
    pub oom_kills: u64,
    pub periods: u64,
    pub throttled_periods: u64,
    pub pids_limit_hits: u64,
}

fn read(path: &Path) -> io::Result<String> {
    fs::read_to_string(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

fn write(path: &Path, value: &str) -> io::Result<()> {
    fs::write(path, value).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

fn read_u64(path: &Path) -> io::Result<u64> {
    read(path)?.trim().parse().map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {e}", path.display()),
        )
    })
}

/// The value of `key` in a flat-keyed file (`key value` per line).
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next() == Some(key)).then(|| it.next()?.parse().ok())?
    })
}

impl Cgroup {
    fn dir(&self, controller: &str) -> Option<&Path> {
        match self {
            Cgroup::V1(dirs) => dirs
                .iter()
                .find(|(c, _)| c == controller)
                .map(|(_, d)| d.as_path()),
            Cgroup::V2(d) => Some(d),
        }
    }

    fn file(&self, controller: &str, name: &str) -> io::Result<PathBuf> {
        self.dir(controller).map(|d| d.join(name)).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("cgroup controller {controller} is not mounted"),
            )
        })
    }

    /// Writes the CFS quota and period.
    pub fn set_cpu_quota(&self, quota_us: i64, period_us: u64) -> io::Result<()> {
        match self {
            Cgroup::V1(_) => {
                fs::write(
                    self.file("cpu", "cpu.cfs_period_us")?,
                    period_us.to_string(),
                )?;
                fs::write(self.file("cpu", "cpu.cfs_quota_us")?, quota_us.to_string())
            }
            Cgroup::V2(d) => fs::write(d.join("cpu.max"), format!("{quota_us} {period_us}")),
        }
    }

    /// Creates the cgroup's parent directories (the root's prefix) if missing. libcgroups'
    /// v2 manager creates each missing component with a plain `mkdir`, so two sandboxes built
    /// at once under a new prefix race and one fails with `EEXIST`; v1 tolerates it.
    pub fn create_parents(&self) -> io::Result<()> {
        match self {
            Cgroup::V1(_) => Ok(()),
            Cgroup::V2(d) => match d.parent() {
                Some(parent) => fs::create_dir_all(parent)
                    .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", parent.display()))),
                None => Ok(()),
            },
        }
    }

    /// Forbids swap: on v2 writes `memory.swap.max` 0, which libcgroups 0.7 skips (it turns
    /// the spec's swap limit, equal to the memory limit, into 0 and then writes nothing). On
    /// v1 libcgroups' `memory.memsw.limit_in_bytes` already does it. A v2 kernel without swap
    /// accounting has no such file: there is no swap to forbid per cgroup, and `runbox
    /// check` reports it.
    pub fn forbid_swap(&self) -> io::Result<()> {
        match self {
            Cgroup::V1(_) => Ok(()),
            Cgroup::V2(d) => {
                let file = d.join("memory.swap.max");
                match fs::write(&file, "0") {
                    Err(e) if e.kind() == io::ErrorKind::NotFound && d.is_dir() => Ok(()),
                    other => other
                        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", file.display()))),
                }
            }
        }
    }

    /// CPU time used so far by every process that ever ran in the cgroup.
    pub fn cpu_usage(&self) -> io::Result<CpuUsage> {
        match self {
            Cgroup::V1(_) => {
                let ns = |name| read_u64(&self.file("cpuacct", name)?);
                Ok(CpuUsage {
                    total_us: ns("cpuacct.usage")? / 1000,
                    user_us: ns("cpuacct.usage_user")? / 1000,
                    system_us: ns("cpuacct.usage_sys")? / 1000,
                })
            }
            Cgroup::V2(d) => {
                let stat = read(&d.join("cpu.stat"))?;
                Ok(CpuUsage {
                    total_us: keyed(&stat, "usage_usec").unwrap_or(0),
                    user_us: keyed(&stat, "user_usec").unwrap_or(0),
                    system_us: keyed(&stat, "system_usec").unwrap_or(0),
                })
            }
        }
    }

    /// The figures of a live sandbox: CPU so far, memory now and at its peak, tasks now,
    /// block I/O bytes. Block I/O is 0 where its controller is absent (v1 without blkio).
    pub fn live(&self) -> io::Result<Live> {
        let cpu = self.cpu_usage()?;
        let (memory_bytes, memory_peak_bytes, io_text) = match self {
            Cgroup::V1(_) => {
                let io = self
                    .file("blkio", "blkio.throttle.io_service_bytes_recursive")
                    .and_then(|p| read(&p))
                    .unwrap_or_default();
                (
                    read_u64(&self.file("memory", "memory.usage_in_bytes")?)?,
                    read_u64(&self.file("memory", "memory.max_usage_in_bytes")?)?,
                    io,
                )
            }
            Cgroup::V2(d) => (
                read_u64(&d.join("memory.current"))?,
                read_u64(&d.join("memory.peak")).unwrap_or(0),
                read(&d.join("io.stat")).unwrap_or_default(),
            ),
        };
        let (block_read_bytes, block_write_bytes) = match self {
            Cgroup::V1(_) => v1_io_bytes(&io_text),
            Cgroup::V2(_) => v2_io_bytes(&io_text),
        };
        Ok(Live {
            cpu,
            memory_bytes,
            memory_peak_bytes,
            pids: read_u64(&self.file("pids", "pids.current")?)?,
            block_read_bytes,
            block_write_bytes,
        })
    }

    /// Freezes every process of the cgroup and waits (at most `within`) until the kernel
    /// says all are frozen; on v1 through the freezer hierarchy, on v2 `cgroup.freeze` and
    /// `frozen 1` in `cgroup.events`. Not frozen in time: thawed again, and an error.
    pub fn freeze(&self, within: Duration) -> io::Result<()> {
        let (file, frozen): (PathBuf, fn(&str) -> bool) = match self {
            Cgroup::V1(_) => {
                let f = self.file("freezer", "freezer.state")?;
                write(&f, "FROZEN")?;
                (f, |t| t.trim() == "FROZEN")
            }
            Cgroup::V2(d) => {
                write(&d.join("cgroup.freeze"), "1")?;
                (d.join("cgroup.events"), |t| keyed(t, "frozen") == Some(1))
            }
        };
        let give_up = Instant::now() + within;
        let mut pause = Duration::from_micros(100);
        loop {
            if frozen(&read(&file)?) {
                return Ok(());
            }
            if Instant::now() >= give_up {
                let thawed = self.thaw();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "the sandbox's processes did not all freeze within {within:?}{}",
                        thawed
                            .err()
                            .map(|e| format!(" (and thawing failed: {e})"))
                            .unwrap_or_default()
                    ),
                ));
            }
            // v1 retries the stragglers on each read of FREEZING; both settle in microseconds
            // unless a task is in an uninterruptible sleep.
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(10));
        }
    }

    /// Thaws the cgroup (a no-op on one not frozen).
    pub fn thaw(&self) -> io::Result<()> {
        match self {
            Cgroup::V1(_) => write(&self.file("freezer", "freezer.state")?, "THAWED"),
            Cgroup::V2(d) => write(&d.join("cgroup.freeze"), "0"),
        }
    }

    /// What an exec's verdict needs of the cgroup, read from one or two files (not the
    /// eight of [`Cgroup::figures`]; an exec is on a latency path): the OOM kills so far, and
    /// with `peak` the memory peak (0 where unreadable).
    pub fn oom_kills_and_peak(&self, peak: bool) -> io::Result<(u64, u64)> {
        match self {
            Cgroup::V1(_) => {
                let oom = read(&self.file("memory", "memory.oom_control")?)?;
                let max = if peak {
                    read_u64(&self.file("memory", "memory.max_usage_in_bytes")?).unwrap_or(0)
                } else {
                    0
                };
                Ok((keyed(&oom, "oom_kill").unwrap_or(0), max))
            }
            Cgroup::V2(d) => {
                let events = read(&d.join("memory.events"))?;
                let max = if peak {
                    read_u64(&d.join("memory.peak")).unwrap_or(0)
                } else {
                    0
                };
                Ok((keyed(&events, "oom_kill").unwrap_or(0), max))
            }
        }
    }

    /// Everything the verdict needs, read before libcontainer deletes the cgroup.
    pub fn figures(&self) -> io::Result<Figures> {
        let cpu = self.cpu_usage()?;
        let (cpu_stat, memory_peak_bytes, oom_kills) = match self {
            Cgroup::V1(_) => {
                let oom = read(&self.file("memory", "memory.oom_control")?)?;
                (
                    read(&self.file("cpu", "cpu.stat")?)?,
                    read_u64(&self.file("memory", "memory.max_usage_in_bytes")?)?,
                    keyed(&oom, "oom_kill").unwrap_or(0),
                )
            }
            Cgroup::V2(d) => {
                let events = read(&d.join("memory.events"))?;
                (
                    read(&d.join("cpu.stat"))?,
                    read_u64(&d.join("memory.peak")).unwrap_or(0),
                    keyed(&events, "oom_kill").unwrap_or(0),
                )
            }
        };
        let pids_events = read(&self.file("pids", "pids.events")?).unwrap_or_default();
        Ok(Figures {
            pids_limit_hits: keyed(&pids_events, "max").unwrap_or(0),
            cpu,
            memory_peak_bytes,
            oom_kills,
            periods: keyed(&cpu_stat, "nr_periods").unwrap_or(0),
            throttled_periods: keyed(&cpu_stat, "nr_throttled").unwrap_or(0),
        })
    }

    /// Every directory of this cgroup that still exists.
    pub fn existing_dirs(&self) -> Vec<PathBuf> {
        let dirs: Vec<&Path> = match self {
            Cgroup::V1(dirs) => dirs.iter().map(|(_, d)| d.as_path()).collect(),
            Cgroup::V2(d) => vec![d.as_path()],
        };
        dirs.into_iter()
            .filter(|d| d.is_dir())
            .map(Path::to_path_buf)
            .collect()
    }

    /// Pids of every process in the cgroup, in any hierarchy.
    pub fn procs(&self) -> io::Result<Vec<i32>> {
        let mut pids = Vec::new();
        for d in self.existing_dirs() {
            match fs::read_to_string(d.join("cgroup.procs")) {
                Ok(text) => pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok())),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        pids.sort_unstable();
        pids.dedup();
        Ok(pids)
    }

    /// Removes the directories that remain (they must hold no process): the monitor's teardown
    /// once the init is reaped, and the cleanup after a failed launch or a crash.
    pub fn remove(&self) -> io::Result<()> {
        let mut first_err = None;
        for d in self.existing_dirs() {
            if let Err(e) = fs::remove_dir(&d) {
                if e.kind() != io::ErrorKind::NotFound && first_err.is_none() {
                    first_err = Some(io::Error::new(e.kind(), format!("{}: {e}", d.display())));
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// [`kill_cgroup`], then removes the cgroup at `cgroup_path` in every hierarchy.
pub(crate) fn kill_and_remove(cgroup_path: &str) -> io::Result<()> {
    let cg = Layout::detect()?.cgroup(cgroup_path);
    kill_cgroup(&cg, cgroup_path)?;
    cg.remove()
}

/// SIGKILLs every process in the cgroup (at `cgroup_path`) and waits (on pidfds) until they
/// are gone. On v2 the kernel does it first (`cgroup.kill`: every process of the cgroup and
/// below, atomically, no pid involved); any left are then, as on v1, pinned by a pidfd each
/// and checked to still be in that cgroup, so a pid reused by another process between the
/// read and the pidfd is never signalled.
pub(crate) fn kill_cgroup(cg: &Cgroup, cgroup_path: &str) -> io::Result<()> {
    if let Cgroup::V2(d) = cg {
        // Absent before 5.14 and on a cgroup already removed: the loop below does the work.
        let _ = fs::write(d.join("cgroup.kill"), "1");
    }
    // Dead processes stay listed until their parent (often the host's init, which may be
    // slow) reaps them; they are waited for with a bound, live ones are killed.
    let give_up = Instant::now() + Duration::from_secs(10);
    let suffix = format!(":{cgroup_path}");
    loop {
        let pids = cg.procs()?;
        if pids.is_empty() {
            return Ok(());
        }
        if Instant::now() >= give_up {
            return Err(io::Error::other(format!(
                "processes {pids:?} are still in the sandbox's cgroup (alive, or dead and not reaped)"
            )));
        }
        // A pidfd pins each pid; it must still be a live process in this very cgroup.
        let pidfds: Vec<_> = pids
            .iter()
            .filter_map(|&pid| {
                let fd = sys::pidfd_open(pid).ok()?;
                let cgroups = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
                (!proc::is_zombie(pid) && cgroups.lines().any(|l| l.ends_with(&suffix)))
                    .then_some(fd)
            })
            .collect();
        if pidfds.is_empty() {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        for fd in &pidfds {
            let _ = sys::pidfd_send_signal(fd, libc::SIGKILL);
        }
        // A paused sandbox's processes die only once thawed on v1 (v2 lets SIGKILL through);
        // a cgroup without the freezer hierarchy, or already gone, has nothing to thaw.
        if let Err(e) = cg.thaw() {
            if e.kind() != io::ErrorKind::NotFound {
                eprintln!("runbox: thaw {cgroup_path} to kill it: {e}");
            }
        }
        for fd in &pidfds {
            let step = (Instant::now() + Duration::from_secs(2)).min(give_up);
            let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
            let _ = sys::poll_until(&mut fds, Some(step));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "tmpfs /sys/fs/cgroup tmpfs rw 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/cpuacct cgroup rw,relatime,cpuacct 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,name=systemd 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
";

    #[test]
    fn hybrid_is_v1() {
        let l = Layout::parse(&mounts::parse(HYBRID));
        let Layout::V1(ctrls) = &l else {
            panic!("{l:?}")
        };
        assert_eq!(ctrls.len(), 3);
        let cg = l.cgroup("/runbox/a");
        assert_eq!(
            cg.dir("memory"),
            Some(Path::new("/sys/fs/cgroup/memory/runbox/a"))
        );
        assert!(cg.dir("pids").is_none());
    }

    #[test]
    fn limitless_hierarchies_are_named_on_v1_only() {
        let mut hybrid = HYBRID.to_string();
        hybrid.push_str("cgroup /sys/fs/cgroup/freezer cgroup rw,freezer 0 0\n");
        hybrid.push_str("cgroup /sys/fs/cgroup/perf_event cgroup rw,perf_event 0 0\n");
        hybrid.push_str("cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,cpu,cpuacct 0 0\n");
        assert_eq!(
            limitless_hierarchies(&mounts::parse(&hybrid)),
            [
                PathBuf::from("/sys/fs/cgroup/systemd"),
                PathBuf::from("/sys/fs/cgroup/unified"),
                PathBuf::from("/sys/fs/cgroup/perf_event"),
            ]
        );
        let v2 = "cgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\n";
        assert!(limitless_hierarchies(&mounts::parse(v2)).is_empty());
    }

    #[test]
    fn comounted_v1_controllers() {
        let l = Layout::parse(&mounts::parse(
            "cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,cpu,cpuacct 0 0\n",
        ));
        let cg = l.cgroup("/p/x");
        assert_eq!(
            cg.dir("cpuacct"),
            Some(Path::new("/sys/fs/cgroup/cpu,cpuacct/p/x"))
        );
    }

    #[test]
    fn unified_is_v2() {
        let l = Layout::parse(&mounts::parse(
            "cgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\n",
        ));
        assert_eq!(l, Layout::V2("/sys/fs/cgroup".into()));
        assert_eq!(l.cgroup("/p/x"), Cgroup::V2("/sys/fs/cgroup/p/x".into()));
    }

    #[test]
    fn cgroup_bases_are_absolute_paths_a_spec_can_carry() {
        for ok in [
            "/",
            "/system.slice/runbox.service",
            "/user.slice/user@0.service/app.slice",
        ] {
            assert!(valid_base(ok), "{ok}");
        }
        for bad in [
            "",
            "system.slice",
            "/a/../b",
            "/a/./b",
            "/a//b",
            "/a/",
            "/a,b",
            "/a:b",
            "/a b",
        ] {
            assert!(!valid_base(bad), "{bad}");
        }
    }

    #[test]
    fn block_io_bytes_add_up_over_devices_on_both_layouts() {
        let v1 =
            "8:0 Read 4096\n8:0 Write 512\n8:0 Sync 0\n8:16 Read 10\n8:16 Write 1\nTotal 4619\n";
        assert_eq!(v1_io_bytes(v1), (4106, 513));
        let v2 =
            "8:0 rbytes=4096 wbytes=512 rios=1 wios=1 dbytes=0 dios=0\n8:16 rbytes=10 wbytes=1\n";
        assert_eq!(v2_io_bytes(v2), (4106, 513));
        assert_eq!(v1_io_bytes(""), (0, 0));
    }

    #[test]
    fn keyed_files() {
        let t = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
        assert_eq!(keyed(t, "oom_kill"), Some(2));
        assert_eq!(keyed(t, "missing"), None);
    }
}
