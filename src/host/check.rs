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
        Ok(cgroup::Layout::V2(mnt)) => {
            let ctrls = fs::read_to_string(mnt.join("cgroup.controllers")).unwrap_or_default();
            let needed = ["cpu", "memory", "pids"];
            let missing: Vec<&str> = needed
                .iter()
                .copied()
                .filter(|c| !ctrls.split_whitespace().any(|x| x == *c))
                .collect();
            out.push(item(
                "cgroup",
                missing.is_empty(),
                true,
                format!("v2 at {} with {}", mnt.display(), ctrls.trim()),
            ));
        }
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
    fn the_state_root_check_tells_a_tmpfs_from_a_disk() {
        // /dev/shm is a tmpfs on any Linux host; /proc is not one.
        let shm = check_state_root(Path::new("/dev/shm/runbox-not-created/root"));
        assert!(shm.ok && !shm.required, "{shm:?}");
        let proc = check_state_root(Path::new("/proc"));
        assert!(!proc.ok && !proc.required, "{proc:?}");
        assert!(proc.detail.contains("not on a tmpfs"), "{proc:?}");
    }
}
