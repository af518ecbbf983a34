//! A host uid (and the gid of the same number) per sandbox, from a configured range
//! (isolate's `first_uid + box_id` model): leases are files `<root>/.uids/<uid>` created with
//! `O_EXCL`, so controllers sharing a state root never hand out one uid twice. A lease file
//! holds the name of what took it, an owned name (`.new-<pid>-<start>-<n>` for a launch,
//! `_warm-…` for a spare's pre-built container) naming the controller process; once the
//! sandbox is claimed its record carries the uid. The one home of the lease: a [`UidLease`]
//! guard acquires it, hands it over (to a sandbox, a box or a spare) or gives it back when
//! dropped, so a failed launch unwinds through the guard; [`stale`] collects what a dead
//! holder left. Used by the controller (lease, hand over, gc), by spares and monitors (a
//! pre-built container's lease) and by whoever removes a sandbox directory (release).
//!
//! Why: the kernel keeps several budgets per uid (pending signals, POSIX message queue bytes,
//! inotify instances and watches, in-flight `SCM_RIGHTS` descriptors, pipe buffer pages,
//! processes), so sandboxes sharing one uid share them, and one could drain them for all.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::layout::{self, BOXES_DIR, BOX_LEASE_PREFIX, NEW_PREFIX, WARM_PREFIX};

/// Directory under the state root holding one lease file per uid in use.
pub(crate) const UIDS_DIR: &str = ".uids";

/// Default first uid of the range (isolate's default `first_uid`).
pub const DEFAULT_FIRST: u32 = 60_000;
/// Default number of uids in the range (isolate's default `num_boxes`).
pub const DEFAULT_COUNT: u32 = 1_000;

/// A range of host uids (and the gids of the same numbers) handed to sandboxes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct UidRange {
    /// First uid.
    pub first: u32,
    /// How many.
    pub count: u32,
}

impl Default for UidRange {
    fn default() -> Self {
        UidRange {
            first: DEFAULT_FIRST,
            count: DEFAULT_COUNT,
        }
    }
}

impl UidRange {
    /// The last uid of the range.
    fn last(&self) -> u32 {
        self.first + (self.count - 1)
    }

    /// Whether `id` is a uid of the range.
    pub fn contains(&self, id: u64) -> bool {
        (u64::from(self.first)..=u64::from(self.last())).contains(&id)
    }

    /// Checks the range itself: not empty, no uid 0, below 2^31, and neither 65534 (nobody)
    /// nor 65535 (the 16-bit "no uid").
    pub fn validate(&self) -> Result<(), String> {
        if self.count == 0 || self.first == 0 {
            return Err(format!(
                "uid range {}+{} must be non-empty and start above 0",
                self.first, self.count
            ));
        }
        let end = u64::from(self.first) + u64::from(self.count);
        if end > 1 << 31 {
            return Err(format!(
                "uid range {}+{} must end below 2^31",
                self.first, self.count
            ));
        }
        if self.contains(65534) || self.contains(65535) {
            return Err(format!(
                "uid range {}+{} must not contain 65534 (nobody) or 65535",
                self.first, self.count
            ));
        }
        Ok(())
    }

    /// Checks that no real user or group of the host falls in the range: no uid in
    /// `/etc/passwd`, no gid in `/etc/group`, and no subordinate range in `/etc/subuid` or
    /// `/etc/subgid` overlapping it (a sandbox must never own a user's files). Missing files
    /// are fine.
    pub fn check_host(&self, etc: &Path) -> Result<(), String> {
        for (file, field) in [("passwd", 2), ("group", 2)] {
            let Ok(text) = fs::read_to_string(etc.join(file)) else {
                continue;
            };
            for line in text.lines().filter(|l| !l.starts_with('#')) {
                let parts: Vec<&str> = line.split(':').collect();
                let id = parts.get(field).and_then(|v| v.parse::<u64>().ok());
                if let Some(id) = id.filter(|&id| self.contains(id)) {
                    return Err(format!(
                        "uid range {}-{} holds {} of {:?} in {}: choose another range",
                        self.first,
                        self.last(),
                        id,
                        parts[0],
                        etc.join(file).display()
                    ));
                }
            }
        }
        for file in ["subuid", "subgid"] {
            let Ok(text) = fs::read_to_string(etc.join(file)) else {
                continue;
            };
            for line in text.lines().filter(|l| !l.starts_with('#')) {
                let parts: Vec<&str> = line.split(':').collect();
                let (Some(start), Some(n)) = (
                    parts.get(1).and_then(|v| v.parse::<u64>().ok()),
                    parts.get(2).and_then(|v| v.parse::<u64>().ok()),
                ) else {
                    continue;
                };
                let overlaps =
                    n > 0 && start <= u64::from(self.last()) && start + n > u64::from(self.first);
                if overlaps {
                    return Err(format!(
                        "uid range {}-{} overlaps {}'s subordinate ids {}-{} in {}: choose another range",
                        self.first,
                        self.last(),
                        parts[0],
                        start,
                        start + n - 1,
                        etc.join(file).display()
                    ));
                }
            }
        }
        Ok(())
    }

    /// Leases a free uid of the range for `owner` (an owned name). Probing starts at a place
    /// that differs per call, so concurrent controllers rarely contend. `Ok(None)` when every
    /// uid of the range is leased.
    pub fn lease(&self, root: &Path, owner: &str) -> io::Result<Option<UidLease>> {
        Ok(self
            .lease_file(root, owner)?
            .map(|uid| UidLease::adopt(root, uid)))
    }

    /// [`UidRange::lease`]: the uid whose lease file this call created.
    fn lease_file(&self, root: &Path, owner: &str) -> io::Result<Option<u32>> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = root.join(UIDS_DIR);
        let start = NEXT
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_add(std::process::id().wrapping_mul(7919));
        for i in 0..self.count {
            let uid = self.first + start.wrapping_add(i) % self.count;
            let path = dir.join(uid.to_string());
            let created = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path);
            let mut file = match created {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound && i == 0 => {
                    fs::create_dir_all(&dir)?;
                    return self.lease_file(root, owner);
                }
                Err(e) => return Err(e),
            };
            if let Err(e) = file.write_all(owner.as_bytes()) {
                // A lease without its owner is collected by gc as a dead launch's.
                super::cleanup::remove_file(&path, "a uid lease whose owner could not be written");
                return Err(e);
            }
            return Ok(Some(uid));
        }
        Ok(None)
    }
}

/// A uid lease this process holds: given back ([`release`]) when dropped, unless handed over
/// first ([`UidLease::transfer`] to a sandbox, [`UidLease::keep`] for a holder that gives it
/// back itself: a box, a spare, a sandbox's record). Drop it only once nothing runs as the
/// uid any more (a pre-built container that ran as it is torn down first).
#[derive(Debug)]
#[must_use = "dropping a lease gives the uid back at once"]
pub(crate) struct UidLease {
    root: PathBuf,
    uid: u32,
}

impl UidLease {
    /// Takes charge of the lease of `uid` under `root`, whose file exists (made by this
    /// process, or handed to it: a controller's lease for a spare's pre-built container).
    pub fn adopt(root: &Path, uid: u32) -> UidLease {
        UidLease {
            root: root.to_path_buf(),
            uid,
        }
    }

    /// Leases exactly `uid` for `owner` (a box's): `Ok(Some)` when it is now `owner`'s, or
    /// was already; `Ok(None)` when another owner holds it.
    pub fn exact(root: &Path, uid: u32, owner: &str) -> io::Result<Option<UidLease>> {
        Ok(lease_exact(root, uid, owner)?.then(|| UidLease::adopt(root, uid)))
    }

    /// The leased uid.
    pub fn uid(&self) -> u32 {
        self.uid
    }

    /// Hands the lease to the sandbox `id`, whose directory is claimed (see [`transfer`]):
    /// its removal gives the uid back.
    pub fn transfer(self, id: &str) {
        transfer(&self.root, self.uid, id);
        self.keep();
    }

    /// Lets the lease go without giving the uid back: its holder (the record that names it,
    /// a spare, a box) does that. Returns the uid.
    pub fn keep(self) -> u32 {
        let uid = self.uid;
        std::mem::forget(self);
        uid
    }
}

impl Drop for UidLease {
    fn drop(&mut self) {
        release(&self.root, self.uid);
    }
}

/// Leases exactly `uid` for `owner`: `Ok(true)` when it is now `owner`'s, or was already;
/// `Ok(false)` when another owner holds it.
fn lease_exact(root: &Path, uid: u32, owner: &str) -> io::Result<bool> {
    let path = lease_path(root, uid);
    fs::create_dir_all(root.join(UIDS_DIR))?;
    match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
    {
        Ok(mut file) => {
            if let Err(e) = file.write_all(owner.as_bytes()) {
                // A lease without its owner is collected by gc as a dead launch's.
                super::cleanup::remove_file(&path, "a uid lease whose owner could not be written");
                return Err(e);
            }
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            Ok(fs::read_to_string(&path).is_ok_and(|o| o == owner))
        }
        Err(e) => Err(e),
    }
}

/// The lease file of `uid` under `root`.
fn lease_path(root: &Path, uid: u32) -> PathBuf {
    root.join(UIDS_DIR).join(uid.to_string())
}

/// Every lease under `root` with its owner's name, in no particular order (a lease being
/// written may show an empty owner).
pub(crate) fn holders(root: &Path) -> Vec<(u32, String)> {
    let Ok(entries) = fs::read_dir(root.join(UIDS_DIR)) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let uid = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((uid, fs::read_to_string(e.path()).unwrap_or_default()))
        })
        .collect()
}

/// Makes the sandbox `id` the owner of the lease of `uid` (once its directory is claimed),
/// so that the lease outlives the controller that took it and [`stale`] can tell when the
/// sandbox went without giving it back. Atomic: the file is replaced by a rename. A failure
/// leaves the launch's owner, which the sandbox record still covers.
pub(crate) fn transfer(root: &Path, uid: u32, id: &str) {
    let path = lease_path(root, uid);
    let tmp = root.join(UIDS_DIR).join(format!(".{uid}.{id}"));
    if let Err(e) = fs::write(&tmp, id).and_then(|()| fs::rename(&tmp, &path)) {
        tracing::warn!("transfer the lease of uid {uid} to {id}: {e}");
        super::cleanup::remove_file(&tmp, "a lease transfer's temp file");
    }
}

/// Gives `uid` back (nothing if it was not leased).
pub(crate) fn release(root: &Path, uid: u32) {
    // One that cannot be removed stays leased until gc finds its owner gone.
    super::cleanup::remove_file(&lease_path(root, uid), "a uid lease");
}

/// Gives `uid` back if its lease still names `owner` (a holder that died: nobody else can
/// hold a lease under that name). True if it did.
pub(crate) fn release_if_held_by(root: &Path, uid: u32, owner: &str) -> bool {
    let held = fs::read_to_string(lease_path(root, uid)).is_ok_and(|o| o == owner);
    if held {
        release(root, uid);
    }
    held
}

/// Leases whose owner is gone (a launch's or spare's controller process that died, or a
/// sandbox whose directory is no more) and whose uid is not in `in_use` (the uids that
/// sandbox records name, read *after* this listing, so that a launch that claimed its
/// sandbox and then exited is seen). Returns the uids; the caller releases them.
pub(crate) fn stale(root: &Path, in_use: impl FnOnce() -> Vec<u32>) -> Vec<u32> {
    let Ok(entries) = fs::read_dir(root.join(UIDS_DIR)) else {
        return Vec::new();
    };
    let mut orphaned = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(uid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            // A transfer's temp file (`.<uid>.<id>`) its writer died before renaming.
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age.as_secs() > 60));
            if name.to_str().is_some_and(|n| n.starts_with('.')) && old {
                super::cleanup::remove_file(&e.path(), "a dead lease transfer's temp file");
            }
            continue;
        };
        let owner = fs::read_to_string(e.path()).unwrap_or_default();
        let process =
            layout::owner_of(&owner, NEW_PREFIX).or_else(|| layout::owner_of(&owner, WARM_PREFIX));
        let alive = match (process, owner.strip_prefix(BOX_LEASE_PREFIX)) {
            (Some(process), _) => process.is_alive(),
            // A box holds its uid from init to cleanup.
            (None, Some(n)) => {
                n.parse::<u32>().is_ok() && root.join(BOXES_DIR).join(n).join("box.json").exists()
            }
            (None, None) => {
                crate::config::validate_id(&owner).is_ok() && root.join(&owner).exists()
            }
        };
        if !alive {
            orphaned.push(uid);
        }
    }
    if orphaned.is_empty() {
        return orphaned;
    }
    let in_use = in_use();
    orphaned.retain(|uid| !in_use.contains(uid));
    orphaned
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_checked_against_the_hosts_users_and_subordinate_ids() {
        let etc = std::env::temp_dir().join(format!("runbox-uids-etc-{}", std::process::id()));
        fs::create_dir_all(&etc).unwrap();
        fs::write(
            etc.join("passwd"),
            "root:x:0:0::/root:/bin/sh\nalice:x:60010:100::/home/a:/bin/sh\n",
        )
        .unwrap();
        fs::write(etc.join("group"), "root:x:0:\nbots:x:61500:\n").unwrap();
        fs::write(etc.join("subuid"), "alice:100000:65536\n").unwrap();
        let r = |first, count| UidRange { first, count };
        let err = r(60_000, 1000).check_host(&etc).unwrap_err();
        assert!(err.contains("60010") && err.contains("alice"), "{err}");
        let err = r(61_000, 1000).check_host(&etc).unwrap_err();
        assert!(err.contains("61500") && err.contains("group"), "{err}");
        let err = r(165_000, 10).check_host(&etc).unwrap_err();
        assert!(err.contains("subordinate"), "{err}");
        r(70_000, 1000).check_host(&etc).unwrap();
        r(165_536, 10).check_host(&etc).unwrap();
        fs::remove_dir_all(&etc).unwrap();

        assert!(r(0, 10).validate().is_err());
        assert!(r(10, 0).validate().is_err());
        assert!(r(65_000, 1000).validate().is_err());
        assert!(r(u32::MAX - 5, 3).validate().is_err());
        r(60_000, 1000).validate().unwrap();
    }

    #[test]
    fn leases_are_exclusive_until_released_and_run_out() {
        let root = std::env::temp_dir().join(format!("runbox-uids-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).unwrap();
        let range = UidRange {
            first: 70_000,
            count: 3,
        };
        let lease = |owner: &str| range.lease(&root, owner).unwrap().map(UidLease::keep);
        let mut got: Vec<u32> = (0..3).map(|_| lease(".new-1-1-0").unwrap()).collect();
        got.sort_unstable();
        assert_eq!(got, vec![70_000, 70_001, 70_002]);
        assert_eq!(lease("x"), None);
        release(&root, 70_001);
        assert_eq!(lease("y"), Some(70_001));
        assert!(!release_if_held_by(&root, 70_001, "x"), "not x's");
        assert!(release_if_held_by(&root, 70_001, "y"));
        assert_eq!(lease("y"), Some(70_001));
        // Owners that are no process: every lease is stale unless a record names its uid,
        // or it was handed to a sandbox whose directory exists.
        transfer(&root, 70_000, "box1");
        fs::create_dir(root.join("box1")).unwrap();
        let mut stale_uids = stale(&root, || vec![70_002]);
        stale_uids.sort_unstable();
        assert_eq!(stale_uids, vec![70_001]);
        assert_eq!(
            fs::read_to_string(lease_path(&root, 70_000)).unwrap(),
            "box1"
        );
        fs::remove_dir(root.join("box1")).unwrap();
        assert_eq!(stale(&root, Vec::new).len(), 3);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_lease_guard_gives_the_uid_back_unless_handed_over() {
        let root = std::env::temp_dir().join(format!("runbox-uid-guard-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).unwrap();
        let range = UidRange {
            first: 71_000,
            count: 1,
        };
        let held = || holders(&root);
        // Dropped (a launch that failed before its sandbox was claimed): given back.
        let lease = range.lease(&root, ".new-1-1-0").unwrap().unwrap();
        assert_eq!(held(), vec![(71_000, ".new-1-1-0".to_string())]);
        assert!(range.lease(&root, "other").unwrap().is_none(), "exclusive");
        drop(lease);
        assert!(held().is_empty());
        // Handed to a sandbox: kept, now its.
        range
            .lease(&root, ".new-1-1-1")
            .unwrap()
            .unwrap()
            .transfer("sb");
        assert_eq!(held(), vec![(71_000, "sb".to_string())]);
        // Kept by its holder (a box's, a spare's): not given back by the guard.
        release(&root, 71_000);
        let uid = UidLease::exact(&root, 71_000, "box:1")
            .unwrap()
            .unwrap()
            .keep();
        assert_eq!(uid, 71_000);
        assert!(UidLease::exact(&root, 71_000, "box:2").unwrap().is_none());
        let again = UidLease::exact(&root, 71_000, "box:1").unwrap().unwrap();
        drop(again);
        assert!(
            held().is_empty(),
            "a guard of an exact lease gives it back too"
        );
        fs::remove_dir_all(&root).unwrap();
    }
}
