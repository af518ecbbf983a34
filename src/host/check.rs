//! `runbox check`: what this host offers and what runbox needs from it. Runs in the
//! controller (or the CLI); reads only.

use std::fs;
use std::path::Path;

use serde::Serialize;

use crate::host::cgroup;

/// One fact about the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct HostCheck {
    /// What was checked (`root`, `kernel`, `cgroup`, ...).
    pub name: &'static str,
    /// Whether the host has it.
    pub ok: bool,
    /// Whether runbox cannot work without it.
    pub required: bool,
    /// What was found.
    pub detail: String,
}

fn item(name: &'static str, ok: bool, required: bool, detail: impl Into<String>) -> HostCheck {
    HostCheck {
        name,
        ok,
        required,
        detail: detail.into(),
    }
}

/// Whether `count` uids from `first` (a [`crate::RootOptions::uid_range`]) hold no user,
/// group or subordinate range of the host (`/etc/passwd`, `/etc/group`, `/etc/subuid`,
/// `/etc/subgid`): required, since [`crate::RootOptions::open`] refuses such a range.
pub fn check_uid_range(first: u32, count: u32) -> HostCheck {
    let range = crate::host::uids::UidRange { first, count };
    let last = u64::from(first) + u64::from(count).saturating_sub(1);
    match range
        .validate()
        .and_then(|()| range.check_host(Path::new("/etc")))
    {
        Ok(()) => item(
            "uid range",
            true,
            true,
            format!("{first}-{last}: no host user, group or subordinate id in it"),
        ),
        Err(msg) => item("uid range", false, true, msg),
    }
}

/// Whether the state root `dir` (or, if it does not exist yet, the directory it would be
/// made in) is on a tmpfs, as `/run` usually is. Not required: on a disk file system every
/// start creates and removes a few small files there, which costs (on ext4 with churn, an
/// inode-allocation scan per file, a quarter of a monitor's CPU in one profile).
pub fn check_state_root(dir: &Path) -> HostCheck {
    let existing = dir
        .ancestors()
        .find(|d| d.exists())
        .unwrap_or(Path::new("/"));
    match nix::sys::statfs::statfs(existing) {
        Ok(fs) if fs.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC => item(
            "state-root",
            true,
            false,
            format!("{} on a tmpfs", dir.display()),
        ),
        Ok(fs) => item(
            "state-root",
            false,
            false,
            format!(
                "{} is not on a tmpfs (file system type {:#x}): state files churn on every start; a tmpfs there (as /run usually is) makes starts cheaper",
                dir.display(),
                fs.filesystem_type().0
            ),
        ),
        Err(e) => item(
            "state-root",
            false,
            false,
            format!("{}: statfs {}: {e}", dir.display(), existing.display()),
        ),
    }
}

/// What `runbox check` reads about a cgroup v2 hierarchy.
#[derive(Debug, Default)]
struct V2Facts {
    mount: std::path::PathBuf,
    read_only: bool,
    /// `cgroup.controllers` of the hierarchy's root (as this process sees it).
    controllers: String,
    /// `cgroup.subtree_control` of the root: what its children get.
    subtree_control: String,
    /// This process's cgroup (`0::PATH` of /proc/self/cgroup).
    own_cgroup: String,
    /// The root is itself a non-root cgroup (it has `cgroup.type`): a cgroup namespace's or a
    /// container's view, where the no-internal-processes rule applies to it.
    root_is_nested: bool,
    /// `cgroup.type` of the root when nested.
    root_type: String,
    /// Processes in the root's `cgroup.procs`.
    root_procs: usize,
    /// Swap is in use on the host.
    swap_active: bool,
    /// Some cgroup below the root has `memory.swap.max` (`None`: no cgroup to look at).
    swap_max_seen: Option<bool>,
}

impl V2Facts {
    fn read(mount: &Path) -> V2Facts {
        let read = |name: &str| fs::read_to_string(mount.join(name)).unwrap_or_default();
        let children: Vec<std::path::PathBuf> = fs::read_dir(mount)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.is_dir())
                    .collect()
            })
            .unwrap_or_default();
        V2Facts {
            mount: mount.to_path_buf(),
            read_only: crate::host::mounts::read()
                .unwrap_or_default()
                .iter()
                .any(|m| m.target == mount && m.has_option("ro")),
            controllers: read("cgroup.controllers").trim().to_string(),
            subtree_control: read("cgroup.subtree_control").trim().to_string(),
            own_cgroup: fs::read_to_string("/proc/self/cgroup")
                .unwrap_or_default()
                .lines()
                .find_map(|l| l.strip_prefix("0::"))
                .unwrap_or("?")
                .to_string(),
            root_is_nested: mount.join("cgroup.type").exists(),
            root_type: read("cgroup.type").trim().to_string(),
            root_procs: read("cgroup.procs").lines().count(),
            swap_active: fs::read_to_string("/proc/swaps").is_ok_and(|s| s.lines().count() > 1),
            swap_max_seen: (!children.is_empty())
                .then(|| children.iter().any(|c| c.join("memory.swap.max").exists())),
        }
    }
}

/// The v2 items of `runbox check`, from what was read (pure, for tests).
fn v2_checks(f: &V2Facts) -> Vec<HostCheck> {
    let mut out = Vec::new();
    let has = |list: &str, c: &str| list.split_whitespace().any(|x| x == c);
    let missing: Vec<&str> = ["cpu", "memory", "pids"]
        .into_iter()
        .filter(|c| !has(&f.controllers, c))
        .collect();
    out.push(item(
        "cgroup",
        missing.is_empty() && !f.read_only,
        true,
        format!(
            "v2 at {}{} with {}; enabled for its children: {}{}",
            f.mount.display(),
            if f.read_only {
                " (mounted read-only)"
            } else {
                ""
            },
            f.controllers,
            if f.subtree_control.is_empty() {
                "none yet (libcontainer enables them)"
            } else {
                &f.subtree_control
            },
            if missing.is_empty() {
                String::new()
            } else {
                format!("; missing {}", missing.join(", "))
            }
        ),
    ));
    // A container's (or cgroup namespace's) root is a real cgroup: holding processes, it
    // cannot give controllers to children (no internal processes). runbox moves them into a
    // leaf when it opens a state root; a threaded or invalid root it cannot fix.
    let broken = f.root_type.contains("threaded") || f.root_type == "domain invalid";
    out.push(item(
        "cgroup-nesting",
        !broken,
        true,
        if !f.root_is_nested {
            "the hierarchy's root is the host's: it may hold processes".to_string()
        } else if broken {
            format!(
                "this hierarchy's root is a nested cgroup of type {:?}: no domain controllers (memory, pids) can be given below it; restart the container with its cgroup root as a plain domain",
                f.root_type
            )
        } else if f.root_procs > 0 {
            format!(
                "this hierarchy's root is a nested cgroup (a container's or a cgroup namespace's) holding {} processes: the kernel gives no controllers below a cgroup with processes, so runbox moves them into {}/runbox-leaf when it opens a state root, as container engines' init scripts do",
                f.root_procs,
                f.mount.display()
            )
        } else {
            format!("nested root (type {}) without processes: children can get controllers", f.root_type)
        },
    ));
    out.push(item(
        "cgroup-placement",
        f.own_cgroup == "/",
        false,
        if f.own_cgroup == "/" {
            "this process is in the hierarchy's root; sandboxes go to /<prefix>/<id>".to_string()
        } else {
            format!(
                "this process is in {}; runbox makes its cgroups at /<prefix> of the hierarchy unless given a delegated subtree (--cgroup-base, RootOptions::cgroup_base)",
                f.own_cgroup
            )
        },
    ));
    let swap_ok = !f.swap_active || f.swap_max_seen != Some(false);
    out.push(item(
        "swap accounting",
        swap_ok,
        true,
        match (f.swap_active, f.swap_max_seen) {
            (false, _) => "no swap in use".to_string(),
            (true, Some(true)) => "swap in use; memory.swap.max present: runbox sets it to 0 per sandbox".to_string(),
            (true, None) => "swap in use; no cgroup below the root to check memory.swap.max in yet".to_string(),
            (true, Some(false)) => "swap in use but no memory.swap.max: sandboxes could swap past their memory limit (boot without swapaccount=0, a kernel with CONFIG_MEMCG_SWAP)".to_string(),
        },
    ));
    out
}

/// Inspects the host: root, kernel version, cgroup layout and controllers, swap accounting,
/// overlayfs, seccomp, namespaces, pidfd and openat2. Reads only; changes nothing.
pub fn check_host() -> Vec<HostCheck> {
    let mut out = Vec::new();
    let euid = nix::unistd::geteuid();
    out.push(item("root", euid.is_root(), true, format!("euid {euid}")));

    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let version: Vec<u32> = release
        .split(|c: char| !c.is_ascii_digit())
        .take(2)
        .filter_map(|p| p.parse().ok())
        .collect();
    let recent = version.len() == 2 && (version[0], version[1]) >= (5, 11);
    out.push(item(
        "kernel",
        recent,
        true,
        format!("{release} (5.11 or later: pidfd, close_range, openat2)"),
    ));

    match cgroup::Layout::detect() {
        Ok(cgroup::Layout::V1(ctrls)) => {
            let names: Vec<&str> = ctrls.iter().map(|(c, _)| c.as_str()).collect();
            // The hierarchies sandboxes join (cpuset too, when it is mounted); the others are
            // hidden from libcontainer in the monitor's mount namespace.
            let needed = ["cpu", "cpuacct", "memory", "pids", "devices"];
            let missing: Vec<&str> = needed
                .iter()
                .copied()
                .filter(|c| !names.contains(c))
                .collect();
            out.push(item(
                "cgroup",
                missing.is_empty(),
                true,
                format!(
                    "v1 (or hybrid) with {}{}",
                    names.join(", "),
                    if missing.is_empty() {
                        String::new()
                    } else {
                        format!("; missing {}", missing.join(", "))
                    }
                ),
            ));
            let memsw = ctrls
                .iter()
                .find(|(c, _)| c == "memory")
                .is_some_and(|(_, m)| m.join("memory.memsw.limit_in_bytes").exists());
            out.push(item(
                "swap accounting",
                memsw,
                true,
                if memsw {
                    "memory.memsw.* present: swap can be disabled per sandbox"
                } else {
                    "no memory.memsw.*: boot with swapaccount=1"
                },
            ));
        }
        Ok(cgroup::Layout::V2(mnt)) => out.extend(v2_checks(&V2Facts::read(&mnt))),
        Err(e) => out.push(item(
            "cgroup",
            false,
            true,
            format!("cannot read mounts: {e}"),
        )),
    }

    let filesystems = fs::read_to_string("/proc/filesystems").unwrap_or_default();
    let overlay = filesystems.lines().any(|l| l.ends_with("overlay"));
    out.push(item(
        "overlayfs",
        overlay,
        true,
        if overlay {
            "in /proc/filesystems"
        } else {
            "not in /proc/filesystems (modprobe overlay)"
        },
    ));

    let actions = fs::read_to_string("/proc/sys/kernel/seccomp/actions_avail").unwrap_or_default();
    let seccomp = ["errno", "kill_process", "allow"]
        .iter()
        .all(|a| actions.split_whitespace().any(|x| x == *a));
    out.push(item(
        "seccomp",
        seccomp,
        true,
        format!("filter actions: {}", actions.trim()),
    ));

    let ns: Vec<&str> = ["pid", "mnt", "ipc", "uts", "net", "cgroup"]
        .into_iter()
        .filter(|n| !Path::new("/proc/self/ns").join(n).exists())
        .collect();
    out.push(item(
        "namespaces",
        ns.is_empty(),
        true,
        if ns.is_empty() {
            "pid, mnt, ipc, uts, net, cgroup".to_string()
        } else {
            format!("missing {}", ns.join(", "))
        },
    ));

    let pidfd = crate::host::sys::pidfd_open(nix::unistd::getpid().as_raw());
    out.push(item(
        "pidfd",
        pidfd.is_ok(),
        true,
        pidfd.map_or_else(
            |e| format!("pidfd_open: {e}"),
            |_| "pidfd_open works".to_string(),
        ),
    ));

    let openat2 =
        fs::File::open("/").and_then(|root| crate::host::sys::open_in_root(&root, "proc"));
    out.push(item(
        "openat2",
        openat2.is_ok(),
        false,
        openat2.map_or_else(
            |e| format!("openat2: {e} (needed only to collect files out of sandboxes)"),
            |_| "openat2 with RESOLVE_IN_ROOT works".to_string(),
        ),
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_checks_name_what_blocks_sandboxes() {
        let ok_host = V2Facts {
            mount: "/sys/fs/cgroup".into(),
            controllers: "cpuset cpu io memory pids".into(),
            own_cgroup: "/".into(),
            ..V2Facts::default()
        };
        let all = |f: &V2Facts| v2_checks(f).iter().all(|c| c.ok || !c.required);
        assert!(all(&ok_host));
        // A container whose cgroup root holds its own processes: refused, and said why.
        let nested = V2Facts {
            root_is_nested: true,
            root_type: "domain".into(),
            root_procs: 3,
            ..V2Facts {
                ..ok_host_clone(&ok_host)
            }
        };
        let checks = v2_checks(&nested);
        let n = checks.iter().find(|c| c.name == "cgroup-nesting").unwrap();
        assert!(
            n.ok && n.detail.contains("3 processes") && n.detail.contains("runbox-leaf"),
            "{n:?}"
        );
        // A threaded root cannot be fixed by moving processes: refused, and said why.
        let threaded = V2Facts {
            root_is_nested: true,
            root_type: "domain threaded".into(),
            ..ok_host_clone(&ok_host)
        };
        assert!(!all(&threaded));
        // Swap without swap accounting is a required miss; without swap, fine.
        let swapping = V2Facts {
            swap_active: true,
            swap_max_seen: Some(false),
            ..ok_host_clone(&ok_host)
        };
        assert!(!all(&swapping));
        let unaccounted = V2Facts {
            swap_max_seen: Some(false),
            ..ok_host_clone(&ok_host)
        };
        assert!(all(&unaccounted));
        // Missing controllers, or a read-only mount.
        let no_memory = V2Facts {
            controllers: "cpu pids".into(),
            ..ok_host_clone(&ok_host)
        };
        assert!(!all(&no_memory));
        let read_only = V2Facts {
            read_only: true,
            ..ok_host_clone(&ok_host)
        };
        assert!(!all(&read_only));
        // A service's cgroup is reported, not refused.
        let service = V2Facts {
            own_cgroup: "/system.slice/grader.service".into(),
            ..ok_host_clone(&ok_host)
        };
        assert!(all(&service));
    }

    fn ok_host_clone(f: &V2Facts) -> V2Facts {
        V2Facts {
            mount: f.mount.clone(),
            controllers: f.controllers.clone(),
            own_cgroup: f.own_cgroup.clone(),
            ..V2Facts::default()
        }
    }

    #[test]
    fn the_state_root_check_tells_a_tmpfs_from_a_disk() {
        // /dev/shm is a tmpfs on any Linux host; /proc is not one.
        let shm = check_state_root(Path::new("/dev/shm/runbox-not-created/root"));
        assert!(shm.ok && !shm.required, "{shm:?}");
        let proc = check_state_root(Path::new("/proc"));
        assert!(!proc.ok && !proc.required, "{proc:?}");
        assert!(proc.detail.contains("not on a tmpfs"), "{proc:?}");
    }
}
