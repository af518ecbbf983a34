//! Collecting what crashes left in a state root: lost sandboxes, unfinished temp dirs, stray
//! mounts, orphan cgroups and abandoned pre-built containers. Idempotent; never touches a
//! live sandbox. Runs in the controller.

use std::fs;
use std::path::Path;

use crate::error::ErrorKind;
use crate::host::state::{self, SandboxRecord};
use crate::host::{cgroup, uids};
use crate::layout::{
    self, Layout, CLAIMED_PREFIX, GONE_PREFIX, NEW_PREFIX, SEEN_MARKER, SPARES_DIR, WARM_PREFIX,
};

use super::sandbox::{Sandbox, SandboxState};

/// What [`crate::Root::gc`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GcReport {
    /// Ids of lost sandboxes whose processes, cgroups, mounts and state were removed.
    pub removed: Vec<String>,
    /// Other leftovers removed (stray mounts, empty orphan cgroups, unfinished temp dirs).
    pub cleaned: Vec<String>,
    /// What could not be cleaned, with the reason.
    pub errors: Vec<String>,
}

/// The state root being collected: its directory and cgroup prefix.
struct StateRoot<'a> {
    dir: &'a Path,
    prefix: &'a str,
}

/// [`crate::Root::gc`] of the state root `dir` with cgroup prefix `prefix`.
pub(super) fn collect(dir: &Path, prefix: &str) -> GcReport {
    let root = &StateRoot { dir, prefix };
    let mut report = GcReport::default();
    match state::sandbox_ids(dir) {
        Ok(ids) => {
            for id in ids {
                match Sandbox::open(dir, &id).and_then(|s| s.collect_if_lost()) {
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
    collect_parked_spares(root, &mut report);
    collect_uid_leases(root, &mut report);
    collect_stray_mounts(root, &mut report);
    collect_orphan_cgroups(root, &mut report);
    report
}

/// Removes `.new-<pid>-<start>-<n>` directories whose creator died before claiming an id, and
/// `.gone-<pid>-<start>-<n>` ones whose remover died while removing them.
fn collect_temp_dirs(root: &StateRoot<'_>, report: &mut GcReport) {
    let Ok(entries) = fs::read_dir(root.dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let owner =
            layout::owner_of(&name, NEW_PREFIX).or_else(|| layout::owner_of(&name, GONE_PREFIX));
        if owner.is_none_or(|owner| owner.is_alive()) {
            continue;
        }
        match fs::remove_dir_all(e.path()) {
            Ok(()) => report.cleaned.push(format!("temp dir {name}")),
            Err(err) => report.errors.push(format!("remove {name}: {err}")),
        }
    }
}

/// Removes the directories of parked spares that died (`.spares/<shape>/_warm-…`; their
/// cgroups and uids go as every dead spare's do), and claims or removals whose process died
/// midway (`.spares/.claimed-…`, `.spares/.gone-…`).
fn collect_parked_spares(root: &StateRoot<'_>, report: &mut GcReport) {
    let spares = root.dir.join(SPARES_DIR);
    let Ok(groups) = fs::read_dir(&spares) else {
        return;
    };
    let mut dead = Vec::new();
    let mut groups_seen = Vec::new();
    for e in groups.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let owner = layout::owner_of(&name, CLAIMED_PREFIX)
            .or_else(|| layout::owner_of(&name, GONE_PREFIX));
        if let Some(owner) = owner {
            if !owner.is_alive() {
                dead.push((e.path(), format!("spare {name}")));
            }
            continue;
        }
        let Ok(parked) = fs::read_dir(e.path()) else {
            continue;
        };
        for p in parked.flatten() {
            let spare = p.file_name().to_string_lossy().into_owned();
            if layout::owner_of(&spare, WARM_PREFIX).is_some_and(|s| !s.is_alive()) {
                dead.push((p.path(), format!("parked spare {spare}")));
            }
        }
        groups_seen.push(e.path());
    }
    for (path, what) in dead {
        match fs::remove_dir_all(&path) {
            Ok(()) => report.cleaned.push(what),
            Err(err) => report.errors.push(format!("remove {what}: {err}")),
        }
    }
    // Shapes' directories with no spare left, and their launch marker (a spare that parks
    // there makes it again; the shape's next launch counts as its first).
    for group in groups_seen {
        let spares = fs::read_dir(&group).map_or(0, |rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(WARM_PREFIX))
                .count()
        });
        if spares == 0 {
            let marker = group.join(SEEN_MARKER);
            match fs::remove_file(&marker) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => report
                    .errors
                    .push(format!("remove {}: {e}", marker.display())),
                _ => {}
            }
            match fs::remove_dir(&group) {
                // Gone, or a spare parked there meanwhile: nothing to report.
                Err(e)
                    if e.kind() != std::io::ErrorKind::NotFound
                        && e.raw_os_error() != Some(libc::ENOTEMPTY) =>
                {
                    report
                        .errors
                        .push(format!("remove {}: {e}", group.display()));
                }
                _ => {}
            }
        }
    }
}

/// Gives back uids leased by controllers that died before a sandbox record named them (or
/// whose sandbox directory went without releasing them).
fn collect_uid_leases(root: &StateRoot<'_>, report: &mut GcReport) {
    let in_use = || {
        state::sandbox_ids(root.dir)
            .unwrap_or_default()
            .iter()
            .filter_map(|id| {
                state::read_json::<SandboxRecord>(&Layout::new(root.dir, id).record()).ok()
            })
            .filter(|r| r.config.sandbox.uid_leased)
            .map(|r| r.config.sandbox.user.uid)
            .collect()
    };
    for uid in uids::stale(root.dir, in_use) {
        uids::release(root.dir, uid);
        report.cleaned.push(format!("uid lease {uid}"));
    }
}

/// Unmounts mounts under the state root that belong to no live sandbox.
fn collect_stray_mounts(root: &StateRoot<'_>, report: &mut GcReport) {
    for m in crate::host::mounts::under(root.dir) {
        let id = m
            .strip_prefix(root.dir)
            .ok()
            .and_then(|r| r.components().next())
            .map(|c| c.as_os_str().to_string_lossy().into_owned());
        // A mount on the state root itself (a tmpfs the operator put there) is not runbox's.
        let Some(id) = id else {
            continue;
        };
        let live = Sandbox::open(root.dir, &id)
            .and_then(|s| s.state())
            .is_ok_and(|s| !matches!(s, SandboxState::Stopped | SandboxState::Lost));
        if live || id.starts_with('.') {
            continue;
        }
        match nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) => report.cleaned.push(format!("mount {}", m.display())),
            Err(e) => report.errors.push(format!("unmount {}: {e}", m.display())),
        }
    }
}

/// A spare's pre-built container whose controller died (so the spare is gone or going) and
/// that no sandbox took: its init still waits for a start that never comes. Kill and remove.
fn collect_warm_cgroup(root: &StateRoot<'_>, name: &str, report: &mut GcReport) {
    if layout::owner_of(name, WARM_PREFIX).is_none_or(|c| c.is_alive()) {
        return;
    }
    let path = format!("/{}/{name}", root.prefix);
    let taken = state::sandbox_ids(root.dir)
        .unwrap_or_default()
        .iter()
        .any(|id| {
            state::read_json::<SandboxRecord>(&Layout::new(root.dir, id).record())
                .is_ok_and(|r| r.cgroup_path == path)
        });
    if taken {
        return;
    }
    match cgroup::kill_and_remove(&path) {
        Ok(()) => report
            .cleaned
            .push(format!("pre-built container cgroup {path}")),
        Err(e) => report.errors.push(format!("{path}: {e}")),
    }
}

/// Removes empty cgroups `/<prefix>/<id>` whose sandbox directory no longer exists, and
/// abandoned pre-built containers' cgroups.
fn collect_orphan_cgroups(root: &StateRoot<'_>, report: &mut GcReport) {
    let Ok(hierarchies) = cgroup::Layout::detect() else {
        return;
    };
    let mut warm_seen = std::collections::HashSet::new();
    for base in hierarchies
        .cgroup(&format!("/{}", root.prefix))
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
            if crate::config::validate_id(&name).is_err() || root.dir.join(&name).exists() {
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
