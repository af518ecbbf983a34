//! Processes named safely: pid plus start time from `/proc`, signals through verified pidfds,
//! waiting for a process that is not our child. Used by controllers and monitors alike.

use std::fs;
use std::os::fd::AsFd;
use std::time::Instant;

use nix::poll::{PollFd, PollFlags};

use crate::host::sys;

/// The most pids a sandbox may be given here: half of `kernel.pid_max`, read now (32 768,
/// the kernel's default, if it cannot be read). A launch whose `Limits::pids` is above it
/// fails with `invalid_config`; "any number of processes" (isolate's `-p`) means this.
pub fn pids_ceiling() -> u64 {
    let pid_max = fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(32_768);
    pids_ceiling_of(pid_max)
}

/// Half of `pid_max`: whatever a sandbox's pids limit, the host keeps the other half.
fn pids_ceiling_of(pid_max: u64) -> u64 {
    (pid_max / 2).max(1)
}

/// A process named by pid plus its start time: the name is pure data (in [`crate::layout`],
/// which names files after their owners); reading and checking it against `/proc` is here.
pub(crate) use crate::layout::ProcIdentity;

impl ProcIdentity {
    /// The identity of `pid` now, or `None` if it does not exist.
    pub fn of(pid: i32) -> Option<ProcIdentity> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        parse_start_time(&stat).map(|start_time| ProcIdentity { pid, start_time })
    }

    /// The identity of the calling process (read anew each time: a forked child has its own).
    pub fn own() -> std::io::Result<ProcIdentity> {
        let pid = i32::try_from(std::process::id()).map_err(std::io::Error::other)?;
        ProcIdentity::of(pid).ok_or_else(|| std::io::Error::other("cannot read own /proc entry"))
    }

    /// True if the same process (pid and start time) still exists and is not a zombie.
    pub fn is_alive(&self) -> bool {
        let Ok(stat) = fs::read_to_string(format!("/proc/{}/stat", self.pid)) else {
            return false;
        };
        parse_start_time(&stat) == Some(self.start_time) && parse_state(&stat) != Some('Z')
    }
}

/// Field 22 (starttime) of a `/proc/<pid>/stat` line; the comm field may hold spaces and `)`.
fn parse_start_time(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After ") " come fields 3.. ; starttime is field 22, so index 19 here.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Field 3 (state) of a `/proc/<pid>/stat` line.
pub(crate) fn parse_state(stat: &str) -> Option<char> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().next()?.chars().next()
}

/// True if `pid` is a zombie (or gone).
pub(crate) fn is_zombie(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .is_none_or(|stat| parse_state(&stat) == Some('Z'))
}

/// The regular files directly in `/proc` that only root may read (owned by uid 0, readable by
/// it, no read bit for others; write-only ones such as `sysrq-trigger` stay as they are, a
/// read-only bind in every sandbox: the kernel log, page maps of physical memory, slab and vmalloc details,
/// timer lists...). A sandbox's uid 0 has no capabilities, but reads those a capability does
/// not guard: every one found is masked in the sandbox. Read from this host each time a spec
/// is built (the set differs between kernels).
pub(crate) fn root_only_proc_files() -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let mut out: Vec<String> = fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .filter(|e| {
                    e.metadata()
                        .is_ok_and(|m| m.uid() == 0 && m.mode() & 0o404 == 0o400)
                })
                .map(|e| format!("/proc/{}", e.file_name().to_string_lossy()))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Signals exactly the process `who` names: through a pidfd opened first and then checked
/// against the recorded start time, so a reused pid is never signalled.
pub(crate) fn signal_verified(who: ProcIdentity, signal: i32) -> std::io::Result<()> {
    let pidfd = sys::pidfd_open(who.pid)?;
    if !who.is_alive() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("pid {} is not the recorded process any more", who.pid),
        ));
    }
    sys::pidfd_send_signal(&pidfd, signal)
}

/// Waits for a process that is not our child to exit (true), through a pidfd verified
/// against its recorded start time, or until the deadline (false).
pub(crate) fn wait_for_exit(who: ProcIdentity, deadline: Option<Instant>) -> std::io::Result<bool> {
    let Ok(pidfd) = sys::pidfd_open(who.pid) else {
        return Ok(true); // already gone
    };
    if !who.is_alive() {
        return Ok(true); // the pid now names another process, or a zombie
    }
    let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
    Ok(sys::poll_until(&mut fds, deadline)? > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pids_ceiling_is_half_of_pid_max() {
        assert_eq!(pids_ceiling_of(32_768), 16_384);
        assert_eq!(pids_ceiling_of(4_194_304), 2_097_152);
        assert!(pids_ceiling() >= 1);
    }

    #[test]
    fn start_time_survives_odd_comm() {
        let stat = "42 (a) b) c) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_start_time(stat), Some(987654));
        assert_eq!(parse_state(stat), Some('S'));
        assert_eq!(parse_start_time("garbage"), None);
    }

    #[test]
    fn own_identity_is_alive_and_a_wrong_start_time_is_not() {
        let me = ProcIdentity::own().unwrap();
        assert!(me.is_alive());
        let other = ProcIdentity {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(!other.is_alive());
        assert!(signal_verified(other, 0).is_err());
        assert_eq!(
            ProcIdentity::parse_prefix("12-34-5"),
            Some(ProcIdentity {
                pid: 12,
                start_time: 34
            })
        );
        assert_eq!(ProcIdentity::parse_prefix("12"), None);
    }
}
