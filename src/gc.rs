//! Crash recovery: per-sandbox locks, cleaning up a sandbox whose monitor died, and collecting
//! what crashes left in a state root.

use std::fs::{self, File};
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::cgroup::{self, Cgroup};
use crate::error::{Error, ErrorKind, Result};
use crate::root::{GcReport, Root, NEW_PREFIX, WARM_PREFIX};
use crate::state::{Layout, ProcIdentity, SandboxRecord, GONE_PREFIX};

/// Takes the sandbox directory's exclusive lock (blocking, or `None` if `block` is false and
/// another process holds it). Delete and gc take it; readers need none (files are replaced
/// atomically).
pub(crate) fn lock(dir: &Path, block: bool) -> Result<Option<Flock<File>>> {
    let f = File::open(dir).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::new(
                ErrorKind::NotFound,
                format!("no sandbox at {}", dir.display()),
            )
        } else {
            Error::io("open", dir, e)
        }
    })?;
    let arg = if block {
        FlockArg::LockExclusive
    } else {
        FlockArg::LockExclusiveNonblock
    };
    match Flock::lock(f, arg) {
        Ok(l) => Ok(Some(l)),
        Err((_, nix::Error::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(Error::with_source(
            ErrorKind::Io,
            format!("lock {}", dir.display()),
            e,
        )),
    }
}

/// Cleans up after a sandbox whose monitor died: kills every process left in its cgroup,
/// removes the cgroup, libcontainer's state and any mount under its directory. The caller
/// holds the sandbox's lock and removes the directory afterwards.
pub(crate) fn clean_lost(layout: &Layout, record: &SandboxRecord) -> Result<()> {
    kill_and_remove_cgroup(&record.cgroup_path)?;
    // Mounts live in the dead monitor's mount namespace; any under the directory on the
    // host's side (an older layout) go too.
    unmount_under(&layout.dir)
}

/// [`kill_cgroup`], then removes the cgroup at `cgroup_path` in every hierarchy.
pub(crate) fn kill_and_remove_cgroup(cgroup_path: &str) -> Result<()> {
    let cg = cgroup::Layout::detect()
        .map_err(|e| Error::with_source(ErrorKind::Io, "read cgroup mounts", e))?
        .cgroup(cgroup_path);
    kill_cgroup(&cg, cgroup_path)?;
    cg.remove()
        .map_err(|e| Error::with_source(ErrorKind::Io, "remove cgroup", e))
}

/// SIGKILLs every process in the cgroup (at `cgroup_path`) and waits (on pidfds) until they
/// are gone. Each pid is pinned by a pidfd and then checked to still be in that cgroup, so a
/// pid reused by another process between the read and the pidfd is never signalled.
pub(crate) fn kill_cgroup(cg: &Cgroup, cgroup_path: &str) -> Result<()> {
    // Dead processes stay listed until their parent (often the host's init, which may be
    // slow) reaps them; they are waited for with a bound, live ones are killed.
    let give_up = Instant::now() + Duration::from_secs(10);
    let suffix = format!(":{cgroup_path}");
    loop {
        let pids = cg
            .procs()
            .map_err(|e| Error::with_source(ErrorKind::Io, "read cgroup.procs", e))?;
        if pids.is_empty() {
            return Ok(());
        }
        if Instant::now() >= give_up {
            return Err(Error::new(
                ErrorKind::Io,
                format!(
                    "processes {pids:?} are still in the sandbox's cgroup (alive, or dead and not reaped)"
                ),
            ));
        }
        // A pidfd pins each pid; it must still be a live process in this very cgroup.
        let pidfds: Vec<_> = pids
            .iter()
            .filter_map(|&pid| {
                let fd = crate::sys::pidfd_open(pid).ok()?;
                let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
                let zombie = crate::state::parse_state(&stat) == Some('Z');
                let cgroups = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
                (!zombie && cgroups.lines().any(|l| l.ends_with(&suffix))).then_some(fd)
            })
            .collect();
        if pidfds.is_empty() {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        for fd in &pidfds {
            let _ = crate::sys::pidfd_send_signal(fd, libc::SIGKILL);
        }
        for fd in &pidfds {
            let left = give_up.saturating_duration_since(Instant::now());
            let ms = PollTimeout::try_from(left.as_millis().min(2000) as i32)
                .unwrap_or(PollTimeout::ZERO);
            let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
            let _ = poll(&mut fds, ms);
        }
    }
}

/// Lazily unmounts every mount at or below `dir` (deepest first).
fn unmount_under(dir: &Path) -> Result<()> {
    let mut targets = mounts_under(dir);
    targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
    for t in targets {
        nix::mount::umount2(t.as_str(), nix::mount::MntFlags::MNT_DETACH)
            .map_err(|e| Error::with_source(ErrorKind::Io, format!("unmount {t}"), e))?;
    }
    Ok(())
}

/// Mount points at or below `dir` in this process's mount namespace.
fn mounts_under(dir: &Path) -> Vec<String> {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let prefix = dir.to_string_lossy().into_owned();
    info.lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .map(|m| m.replace("\\040", " "))
        .filter(|m| m == &prefix || m.starts_with(&format!("{prefix}/")))
        .collect()
}

/// [`Root::gc`].
pub(crate) fn collect(root: &Root) -> GcReport {
    let mut report = GcReport::default();
    match root.ids() {
        Ok(ids) => {
            for id in ids {
                match root.sandbox(&id).and_then(|s| s.collect_if_lost()) {
                    Ok(true) => report.removed.push(id),
                    Ok(false) => {}
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(e) => report.errors.push(format!("{id}: {}", e.chain())),
                }
            }
        }
        Err(e) => report.errors.push(e.chain()),
    }
    collect_temp_dirs(root, &mut report);
    collect_stray_mounts(root, &mut report);
    collect_orphan_cgroups(root, &mut report);
    report
}

/// Removes `.new-<pid>-<start>-<n>` directories whose creator died before claiming an id, and
/// `.gone-<pid>-<start>-<n>` ones whose remover died while removing them.
fn collect_temp_dirs(root: &Root, report: &mut GcReport) {
    let Ok(entries) = fs::read_dir(root.dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name
            .strip_prefix(NEW_PREFIX)
            .or_else(|| name.strip_prefix(GONE_PREFIX))
        else {
            continue;
        };
        if ProcIdentity::parse_prefix(rest).is_none_or(|owner| owner.is_alive()) {
            continue;
        }
        match fs::remove_dir_all(e.path()) {
            Ok(()) => report.cleaned.push(format!("temp dir {name}")),
            Err(err) => report.errors.push(format!("remove {name}: {err}")),
        }
    }
}

/// Unmounts mounts under the state root that belong to no live sandbox.
fn collect_stray_mounts(root: &Root, report: &mut GcReport) {
    let root_dir = root.dir();
    for m in mounts_under(root_dir) {
        let rel = Path::new(&m)
            .strip_prefix(root_dir)
            .ok()
            .map(Path::to_path_buf);
        let id = rel
            .as_ref()
            .and_then(|r| r.components().next())
            .map(|c| c.as_os_str().to_string_lossy().into_owned());
        let live = id.as_deref().is_some_and(|id| {
            root.sandbox(id).and_then(|s| s.status()).is_ok_and(|s| {
                !matches!(
                    s,
                    crate::SandboxStatus::Stopped | crate::SandboxStatus::Lost
                )
            })
        });
        if live || id.as_deref().is_some_and(|i| i.starts_with('.')) {
            continue;
        }
        match nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) => report.cleaned.push(format!("mount {m}")),
            Err(e) => report.errors.push(format!("unmount {m}: {e}")),
        }
    }
}

/// A spare's pre-built container whose controller died (so the spare is gone or going) and
/// that no sandbox took: its init still waits for a start that never comes. Kill and remove.
fn collect_warm_cgroup(root: &Root, name: &str, report: &mut GcReport) {
    if ProcIdentity::parse_prefix(&name[WARM_PREFIX.len()..]).is_none_or(|c| c.is_alive()) {
        return;
    }
    let path = format!("/{}/{name}", root.cgroup_prefix());
    let taken = root.ids().unwrap_or_default().iter().any(|id| {
        crate::state::read_json::<SandboxRecord>(&Layout::new(root.dir(), id).record())
            .is_ok_and(|r| r.cgroup_path == path)
    });
    if taken {
        return;
    }
    match kill_and_remove_cgroup(&path) {
        Ok(()) => report
            .cleaned
            .push(format!("pre-built container cgroup {path}")),
        Err(e) => report.errors.push(format!("{path}: {}", e.chain())),
    }
}

/// Removes empty cgroups `/<prefix>/<id>` whose sandbox directory no longer exists, and
/// abandoned pre-built containers' cgroups.
fn collect_orphan_cgroups(root: &Root, report: &mut GcReport) {
    let Ok(layout) = cgroup::Layout::detect() else {
        return;
    };
    let mut warm_seen = std::collections::HashSet::new();
    for base in layout
        .cgroup(&format!("/{}", root.cgroup_prefix()))
        .existing_dirs()
    {
        let Ok(entries) = fs::read_dir(&base) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if name.starts_with(WARM_PREFIX) {
                // Seen once per hierarchy; handled (in all of them) once.
                if warm_seen.insert(name.clone()) {
                    collect_warm_cgroup(root, &name, report);
                }
                continue;
            }
            if crate::config::validate_id(&name).is_err() || root.dir().join(&name).exists() {
                continue;
            }
            // rmdir fails on a cgroup that still has processes: such a one is left alone.
            if fs::remove_dir(e.path()).is_ok() {
                report
                    .cleaned
                    .push(format!("cgroup {}", e.path().display()));
            }
        }
    }
}
