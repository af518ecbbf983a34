//! What is shared and what is not: the validated [`SandboxConfig`] a sandbox is made from,
//! split into the [`SandboxSpec`] fixed when its container is built (what a pre-built spare
//! shares with the request it serves) and the [`RunSpec`] each run brings; the flat layout
//! of older state records, still read. Pure.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Limits, Output, Redirects, Stdin, User};

/// The limits fixed when the container is built: its cgroup's memory, pids, cpuset and CFS
/// period, the rlimits libcontainer sets on its init (inherited by everything in it), and
/// the sizes of the pre-mounted scratch and `/dev/shm`. Fields as in [`Limits`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SandboxLimits {
    pub memory_bytes: u64,
    pub pids: u64,
    pub cpu_period_us: u64,
    pub cpuset: Option<String>,
    pub scratch_bytes: u64,
    pub shm_bytes: u64,
    /// RLIMIT_NOFILE.
    pub open_files: u64,
    /// RLIMIT_FSIZE.
    pub file_size_bytes: u64,
    /// RLIMIT_SIGPENDING.
    pub pending_signals: u64,
    /// RLIMIT_MSGQUEUE.
    pub mqueue_bytes: u64,
    /// RLIMIT_MEMLOCK.
    pub locked_memory_bytes: u64,
    /// RLIMIT_CORE.
    pub core_bytes: u64,
}

/// The limits each run brings, applied when it starts: the CFS quota (written by the monitor
/// before start), the CPU-time, wall-time, output and collect limits the monitor enforces,
/// and the rlimits the init sets in the program's process (RLIMIT_CPU, RLIMIT_AS,
/// RLIMIT_STACK). Fields as in [`Limits`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RunLimits {
    pub cpus: f64,
    pub cpu_time: Option<Duration>,
    pub cpu_time_grace: Duration,
    pub wall_time: Option<Duration>,
    pub output_bytes: u64,
    pub collect_bytes: u64,
    /// RLIMIT_AS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address_space_bytes: Option<u64>,
    /// RLIMIT_STACK.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack_bytes: Option<u64>,
}

impl RunLimits {
    /// RLIMIT_CPU in seconds for [`RunLimits::cpu_time`]: a per-process backstop 2 s past the
    /// cgroup-wide limit the monitor enforces.
    pub fn cpu_rlimit_secs(&self) -> Option<u64> {
        self.cpu_time.map(|c| c.as_secs() + 2)
    }

    /// The CFS quota in microseconds for [`RunLimits::cpus`] in periods of `period_us`.
    pub fn cpu_quota_us(&self, period_us: u64) -> i64 {
        super::cpu_quota_us(self.cpus, period_us)
    }
}

impl Limits {
    /// The limits fixed at build and those each run brings (every field lands in one).
    pub(crate) fn split(&self) -> (SandboxLimits, RunLimits) {
        let l = self.clone();
        (
            SandboxLimits {
                memory_bytes: l.memory_bytes,
                pids: l.pids,
                cpu_period_us: l.cpu_period_us,
                cpuset: l.cpuset,
                scratch_bytes: l.scratch_bytes,
                shm_bytes: l.shm_bytes,
                open_files: l.open_files,
                file_size_bytes: l.file_size_bytes,
                pending_signals: l.pending_signals,
                mqueue_bytes: l.mqueue_bytes,
                locked_memory_bytes: l.locked_memory_bytes,
                core_bytes: l.core_bytes,
            },
            RunLimits {
                cpus: l.cpus,
                cpu_time: l.cpu_time,
                cpu_time_grace: l.cpu_time_grace,
                wall_time: l.wall_time,
                output_bytes: l.output_bytes,
                collect_bytes: l.collect_bytes,
                address_space_bytes: l.address_space_bytes,
                stack_bytes: l.stack_bytes,
            },
        )
    }

    /// The flat view of a split pair: the inverse of [`Limits::split`] (which the test
    /// checks: no field is lost).
    #[cfg(test)]
    pub(crate) fn join(sandbox: &SandboxLimits, run: &RunLimits) -> Limits {
        let (s, r) = (sandbox.clone(), run.clone());
        Limits {
            memory_bytes: s.memory_bytes,
            pids: s.pids,
            cpus: r.cpus,
            cpu_period_us: s.cpu_period_us,
            cpu_time: r.cpu_time,
            cpu_time_grace: r.cpu_time_grace,
            wall_time: r.wall_time,
            scratch_bytes: s.scratch_bytes,
            shm_bytes: s.shm_bytes,
            output_bytes: r.output_bytes,
            open_files: s.open_files,
            file_size_bytes: s.file_size_bytes,
            cpuset: s.cpuset,
            pending_signals: s.pending_signals,
            mqueue_bytes: s.mqueue_bytes,
            locked_memory_bytes: s.locked_memory_bytes,
            address_space_bytes: r.address_space_bytes,
            stack_bytes: r.stack_bytes,
            core_bytes: s.core_bytes,
            collect_bytes: r.collect_bytes,
        }
    }
}

/// What is fixed when a sandbox's container is built: the user, the image, the mounts, the
/// hostname and the [`SandboxLimits`]. A container built ahead of its request (a spare's)
/// serves a request whose sandbox spec has the same [`SandboxSpec::shape`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SandboxSpec {
    pub user: User,
    /// `user` is a uid leased from the root's range for this sandbox alone (released when
    /// the sandbox is removed), not one the caller named.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub uid_leased: bool,
    /// `None`: the host-based default image.
    pub image: Option<PathBuf>,
    /// A stored image's lower layers beneath `image` (its top layer), top first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_layers: Vec<PathBuf>,
    /// The image's shared host trees (host dir, sandbox destination): each a read-only
    /// overlay of the sandbox's own (the host-based image's /usr and /lib*).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_trees: Vec<(PathBuf, String)>,
    pub hostname: String,
    /// The caller's read-only bind mounts (host source, sandbox destination), on top of the
    /// image.
    pub binds: Vec<(PathBuf, String)>,
    /// The caller's read-write bind mounts of host directories (work dirs), after `binds`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rw_binds: Vec<(PathBuf, String)>,
    /// Sandbox paths of binds mounted `noexec`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub noexec: Vec<String>,
    pub limits: SandboxLimits,
}

impl SandboxSpec {
    /// What a pre-built container must match: the spec itself, with two normalisations:
    /// any uid leased from the range serves a request for a leased one (the request takes
    /// the spare's), so a leased uid is masked; and the host directories of the read-write
    /// binds are masked (their destinations and `noexec` stay): they are attached when each
    /// run starts, not built in, so a container pre-built for one work dir serves another.
    pub fn shape(&self) -> SandboxSpec {
        let mut shape = self.clone();
        if shape.uid_leased {
            shape.user = User::default();
        }
        for (host, _) in &mut shape.rw_binds {
            *host = PathBuf::new();
        }
        shape
    }

    /// True if a container built for `self` can serve a sandbox of spec `wanted`.
    pub fn fits(&self, wanted: &SandboxSpec) -> bool {
        self.shape() == wanted.shape()
    }

    /// A short stable name of the spec's [`SandboxSpec::shape`] (FNV-1a of its JSON, 16 hex
    /// digits): parked spares of one shape share a directory of that name. Equal shapes have
    /// equal keys; a claimer compares the whole shape all the same.
    pub fn shape_key(&self) -> String {
        let json = serde_json::to_vec(&self.shape()).unwrap_or_default();
        let h = crate::layout::fnv1a(&json);
        format!("{h:016x}")
    }
}

/// What one run brings to a sandbox: the program, its environment, working directory and
/// streams, the files copied in and out, and the [`RunLimits`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RunSpec {
    /// `args[0]` is the program as the caller named it.
    pub args: Vec<String>,
    /// The program resolved to an absolute path inside the sandbox.
    pub exe: String,
    pub env: Vec<String>,
    pub cwd: String,
    pub stdin: Stdin,
    /// Where stdout goes (the launcher's descriptor arrives with the launch).
    #[serde(default, skip_serializing_if = "Output::is_capture")]
    pub stdout: Output,
    /// Where stderr goes.
    #[serde(default, skip_serializing_if = "Output::is_capture")]
    pub stderr: Output,
    /// Standard streams opened inside the sandbox.
    #[serde(default, skip_serializing_if = "Redirects::is_empty")]
    pub redirects: Redirects,
    /// Host files or directories copied into the writable layer before start.
    pub copies: Vec<(PathBuf, String)>,
    /// Files copied out of the sandbox after the run: (path inside, host destination).
    pub collects: Vec<(String, PathBuf)>,
    pub limits: RunLimits,
}

impl RunSpec {
    /// Which of the launcher's descriptors 0, 1, 2 the run takes, in that order: they
    /// travel with the launch (see [`crate::proto::StreamFds`]).
    pub fn inherited_streams(&self) -> Vec<i32> {
        let mut fds = Vec::new();
        if self.stdin == Stdin::Inherit {
            fds.push(0);
        }
        if self.stdout == Output::Inherit {
            fds.push(1);
        }
        if self.stderr == Output::Inherit {
            fds.push(2);
        }
        fds
    }
}

/// Everything a sandbox is made from, as stored in its state directory (`sandbox.json`
/// from format 3 on): what its container is built from and what its run brings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SandboxConfig {
    pub sandbox: SandboxSpec,
    pub run: RunSpec,
}

impl SandboxConfig {
    /// A small valid config (for unit tests of the layers that consume it).
    #[cfg(test)]
    pub(crate) fn for_tests() -> SandboxConfig {
        let (sandbox_limits, run_limits) = Limits::default().split();
        SandboxConfig {
            sandbox: SandboxSpec {
                user: User::default(),
                uid_leased: false,
                image: None,
                image_layers: Vec::new(),
                image_trees: vec![("/usr".into(), "/usr".into())],
                hostname: "runbox".into(),
                binds: Vec::new(),
                rw_binds: Vec::new(),
                noexec: Vec::new(),
                limits: sandbox_limits,
            },
            run: RunSpec {
                args: vec!["/bin/true".into()],
                exe: "/bin/true".into(),
                env: vec!["PATH=/bin".into()],
                cwd: "/work".into(),
                stdin: Stdin::Null,
                stdout: Output::Capture,
                stderr: Output::Capture,
                redirects: Redirects::default(),
                copies: Vec::new(),
                collects: Vec::new(),
                limits: run_limits,
            },
        }
    }
}

/// The flat config of state records of formats 1 and 2 (one struct for both halves), read
/// from an older runbox's sandbox directory and turned into a [`SandboxConfig`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FlatConfig {
    args: Vec<String>,
    exe: String,
    env: Vec<String>,
    cwd: String,
    user: User,
    /// Format 2 on.
    #[serde(default)]
    uid_leased: bool,
    image: Option<PathBuf>,
    #[serde(default)]
    image_layers: Vec<PathBuf>,
    limits: Limits,
    stdin: Stdin,
    hostname: String,
    /// Format 2 on (format 1 had the image's trees among `binds`).
    #[serde(default)]
    image_trees: Vec<(PathBuf, String)>,
    binds: Vec<(PathBuf, String)>,
    #[serde(default)]
    rw_binds: Vec<(PathBuf, String)>,
    copies: Vec<(PathBuf, String)>,
    collects: Vec<(String, PathBuf)>,
    #[serde(default)]
    redirects: Redirects,
    #[serde(default)]
    noexec: Vec<String>,
    #[serde(default)]
    stdout: Output,
    #[serde(default)]
    stderr: Output,
}

impl From<FlatConfig> for SandboxConfig {
    fn from(f: FlatConfig) -> SandboxConfig {
        let (sandbox_limits, run_limits) = f.limits.split();
        SandboxConfig {
            sandbox: SandboxSpec {
                user: f.user,
                uid_leased: f.uid_leased,
                image: f.image,
                image_layers: f.image_layers,
                image_trees: f.image_trees,
                hostname: f.hostname,
                binds: f.binds,
                rw_binds: f.rw_binds,
                noexec: f.noexec,
                limits: sandbox_limits,
            },
            run: RunSpec {
                args: f.args,
                exe: f.exe,
                env: f.env,
                cwd: f.cwd,
                stdin: f.stdin,
                stdout: f.stdout,
                stderr: f.stderr,
                redirects: f.redirects,
                copies: f.copies,
                collects: f.collects,
                limits: run_limits,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_split_and_join_back_whole() {
        let l = Limits {
            memory_bytes: 100 << 20,
            pids: 9,
            cpus: 0.5,
            cpu_period_us: 20_000,
            cpu_time: Some(Duration::from_millis(1500)),
            cpu_time_grace: Duration::from_millis(100),
            wall_time: None,
            scratch_bytes: 8 << 20,
            shm_bytes: 2 << 20,
            output_bytes: 77,
            open_files: 99,
            file_size_bytes: 1234,
            cpuset: Some("0".into()),
            pending_signals: 5,
            mqueue_bytes: 6,
            locked_memory_bytes: 7,
            address_space_bytes: Some(1 << 30),
            stack_bytes: Some(1 << 23),
            core_bytes: 3,
            collect_bytes: 11,
        };
        let (s, r) = l.split();
        assert_eq!(Limits::join(&s, &r), l);
        assert_eq!(r.cpu_quota_us(s.cpu_period_us), 10_000);
        assert_eq!(r.cpu_rlimit_secs(), Some(3));
    }

    #[test]
    fn a_spec_fits_its_own_shape_and_any_leased_uid() {
        let base = SandboxConfig::for_tests().sandbox;
        assert!(base.fits(&base));
        let mut leased = base.clone();
        leased.uid_leased = true;
        leased.user = User {
            uid: 60_001,
            gid: 60_001,
        };
        let mut other_lease = leased.clone();
        other_lease.user = User {
            uid: 60_002,
            gid: 60_002,
        };
        assert!(
            leased.fits(&other_lease),
            "any leased uid serves a leased one"
        );
        assert_eq!(leased.shape_key(), other_lease.shape_key());
        assert!(!leased.fits(&base), "a leased uid is not a named one");
        // A named uid is part of the shape.
        let mut named = base.clone();
        named.user = User {
            uid: 1000,
            gid: 1000,
        };
        assert!(!named.fits(&base));
        assert_ne!(named.shape_key(), base.shape_key());
        let mut smaller = base.clone();
        smaller.limits.memory_bytes /= 2;
        assert!(!smaller.fits(&base));
        assert_ne!(smaller.shape_key(), base.shape_key());
    }

    #[test]
    fn a_work_dir_is_not_part_of_the_shape_but_its_place_and_noexec_are() {
        let mut box7 = SandboxConfig::for_tests().sandbox;
        box7.rw_binds = vec![("/srv/boxes/7/disk/w1".into(), "/box".into())];
        let mut box8 = box7.clone();
        box8.rw_binds = vec![("/srv/boxes/8/disk/w2".into(), "/box".into())];
        assert!(box7.fits(&box8), "another work dir at the same place fits");
        assert_eq!(box7.shape_key(), box8.shape_key());
        let mut elsewhere = box8.clone();
        elsewhere.rw_binds[0].1 = "/work".into();
        assert!(
            !elsewhere.fits(&box7),
            "a work dir at another place does not"
        );
        assert_ne!(elsewhere.shape_key(), box7.shape_key());
        let mut none = box8.clone();
        none.rw_binds.clear();
        assert!(!none.fits(&box7), "no work dir is another shape");
        let mut noexec = box8.clone();
        noexec.noexec.push("/box".into());
        assert!(!noexec.fits(&box7), "a noexec work dir is another shape");
        let mut ro = box8.clone();
        ro.binds
            .push(("/srv/boxes/8/disk/w2".into(), "/box".into()));
        ro.rw_binds.clear();
        assert!(!ro.fits(&box7), "a read-only bind stays in the shape");
        // The record keeps the real source: only the shape masks it.
        assert_eq!(box8.rw_binds[0].0, PathBuf::from("/srv/boxes/8/disk/w2"));
    }
}
