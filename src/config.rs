//! What a caller asks for: the `Command` builder, its limits and the checks that need no
//! file system; `spec.rs` holds the validated `SandboxConfig` stored in a sandbox's state,
//! split into what a sandbox's container is built from and what each run brings. Pure.

mod spec;

pub(crate) use spec::{FlatConfig, RunLimits, RunSpec, SandboxConfig, SandboxSpec};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};

/// `PATH` given to the program unless the caller replaces or clears the environment.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

const MIB: u64 = 1024 * 1024;

/// Resource limits of one sandbox. Every field has a bounded default (see [`Limits::default`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Limits {
    /// Memory limit in bytes (cgroup; swap is disabled). Default 512 MiB.
    pub memory_bytes: u64,
    /// Maximum number of processes and threads (cgroup pids). Default 256. At most the
    /// host's ceiling, [`crate::pids_ceiling`] (half of `kernel.pid_max`): a launch asking
    /// for more fails with [`ErrorKind::InvalidConfig`], so even "any number" leaves the host
    /// half of its pids.
    pub pids: u64,
    /// CPU bandwidth in CPUs (0.5 = half a CPU), enforced with a CFS quota. Default 1.0.
    pub cpus: f64,
    /// CFS period in microseconds. Default 10 000 (10 ms): limits bite sooner than the usual 100 ms.
    pub cpu_period_us: u64,
    /// CPU-time limit of the whole process tree; `None` for none. Default none.
    pub cpu_time: Option<Duration>,
    /// Extra CPU time before the kill: a run is killed at `cpu_time + cpu_time_grace` and
    /// reported as `time_limit` if it used more than `cpu_time` (isolate's `--extra-time`).
    pub cpu_time_grace: Duration,
    /// Wall-clock limit from start to exit; `None` for none. Default 60 s.
    pub wall_time: Option<Duration>,
    /// Size of the writable layer, `/tmp` included (a size-capped tmpfs). Default 64 MiB.
    pub scratch_bytes: u64,
    /// Size of `/dev/shm`. Default 16 MiB.
    pub shm_bytes: u64,
    /// Captured stdout plus stderr, in bytes; more kills the run. Default 16 MiB.
    pub output_bytes: u64,
    /// Open files per process (RLIMIT_NOFILE). Default 256.
    pub open_files: u64,
    /// Largest file a process may write (RLIMIT_FSIZE). Default 64 MiB.
    pub file_size_bytes: u64,
    /// CPUs the sandbox may run on (`cpuset.cpus` syntax, e.g. `"0-1"`); `None` for all.
    pub cpuset: Option<String>,
    /// Signals queued to the sandbox's user at once (RLIMIT_SIGPENDING, a per-uid budget).
    /// Default 1024.
    #[serde(default = "default_pending_signals")]
    pub pending_signals: u64,
    /// Bytes of POSIX message queues the sandbox's user may hold (RLIMIT_MSGQUEUE, per uid).
    /// Default 819 200 (the kernel's own default, whatever the host raised it to).
    #[serde(default = "default_mqueue_bytes")]
    pub mqueue_bytes: u64,
    /// Memory a process may lock (RLIMIT_MEMLOCK). Default 64 KiB.
    #[serde(default = "default_locked_memory_bytes")]
    pub locked_memory_bytes: u64,
    /// Address space of each process (RLIMIT_AS); `None` for none (the cgroup's memory limit
    /// still holds). Default none (isolate's `--mem`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address_space_bytes: Option<u64>,
    /// Stack of each process (RLIMIT_STACK); `None` for the host's default. Default none
    /// (isolate's `--stack`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack_bytes: Option<u64>,
    /// Largest core dump (RLIMIT_CORE). Default 0: no core files.
    #[serde(default)]
    pub core_bytes: u64,
    /// Bytes the monitor copies out for [`Command::collect`], all files together. Counted
    /// while copying: a file that would take the total past it is left out whole (never
    /// written in part) and named in the verdict's `message`. Default 64 MiB.
    #[serde(default = "default_collect_bytes")]
    pub collect_bytes: u64,
}

/// Most [`Command::collect`] entries a command may have (a launch with more is refused
/// with `InvalidConfig`).
pub const MAX_COLLECTS: usize = 64;

/// Most read-write binds ([`Command::bind_rw`]) a command may have: each travels to the
/// sandbox's monitor as a descriptor (a detached copy of the host directory's mount tree)
/// with the launch, in one message with the inherited streams and the report pipe.
pub const MAX_RW_BINDS: usize = 12;

fn default_collect_bytes() -> u64 {
    64 * MIB
}

fn default_pending_signals() -> u64 {
    1024
}

fn default_mqueue_bytes() -> u64 {
    819_200
}

fn default_locked_memory_bytes() -> u64 {
    64 * 1024
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 512 * MIB,
            pids: 256,
            cpus: 1.0,
            cpu_period_us: 10_000,
            cpu_time: None,
            cpu_time_grace: Duration::ZERO,
            wall_time: Some(Duration::from_secs(60)),
            scratch_bytes: 64 * MIB,
            shm_bytes: 16 * MIB,
            output_bytes: 16 * MIB,
            open_files: 256,
            file_size_bytes: 64 * MIB,
            cpuset: None,
            pending_signals: default_pending_signals(),
            mqueue_bytes: default_mqueue_bytes(),
            locked_memory_bytes: default_locked_memory_bytes(),
            address_space_bytes: None,
            stack_bytes: None,
            core_bytes: 0,
            collect_bytes: default_collect_bytes(),
        }
    }
}

/// The CFS quota in microseconds for `cpus` CPUs in periods of `period_us`, at least the
/// kernel's 1 ms minimum.
#[expect(
    clippy::cast_possible_truncation,
    reason = "validated: cpus <= 1024 and the period <= 1 s, so the quota fits an i64"
)]
fn cpu_quota_us(cpus: f64, period_us: u64) -> i64 {
    ((cpus * period_us as f64).round() as i64).max(1000)
}

impl Limits {
    /// The CFS quota in microseconds for [`Limits::cpus`].
    pub(crate) fn cpu_quota_us(&self) -> i64 {
        cpu_quota_us(self.cpus, self.cpu_period_us)
    }

    /// Checks the pids limit against the host's ceiling ([`crate::pids_ceiling`], half of
    /// `kernel.pid_max`, read by the caller): above it is an error, never a clamp.
    pub(crate) fn validate_pids(&self, ceiling: u64) -> Result<()> {
        if self.pids > ceiling {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!(
                    "pids limit {} is above this host's ceiling of {ceiling} (half of kernel.pid_max: the host keeps the other half)",
                    self.pids
                ),
            ));
        }
        Ok(())
    }

    /// Checks every limit against its bounds.
    pub(crate) fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::new(ErrorKind::InvalidConfig, msg));
        if self.memory_bytes < 4 * MIB {
            return bad(format!("memory limit {} is below 4 MiB", self.memory_bytes));
        }
        if self.pids == 0 {
            return bad("pids limit must be at least 1".into());
        }
        if !(self.cpus.is_finite() && self.cpus > 0.0 && self.cpus <= 1024.0) {
            return bad(format!("cpus {} must be in (0, 1024]", self.cpus));
        }
        if !(1000..=1_000_000).contains(&self.cpu_period_us) {
            return bad(format!(
                "cpu period {} us must be within 1000..=1000000",
                self.cpu_period_us
            ));
        }
        if self.cpu_quota_us() < 1000 || (self.cpus * self.cpu_period_us as f64) < 1000.0 {
            return bad(format!(
                "cpus {} with a {} us period gives a quota below the kernel's 1 ms minimum",
                self.cpus, self.cpu_period_us
            ));
        }
        for (name, d) in [("cpu time", self.cpu_time), ("wall time", self.wall_time)] {
            if d == Some(Duration::ZERO) {
                return bad(format!("{name} limit must be positive"));
            }
        }
        if self.scratch_bytes < MIB || self.shm_bytes < MIB {
            return bad("scratch and shm sizes must be at least 1 MiB".into());
        }
        if self.scratch_bytes >= self.memory_bytes {
            return bad(format!(
                "scratch size {} must be below the memory limit {} (tmpfs pages are charged to the sandbox)",
                self.scratch_bytes, self.memory_bytes
            ));
        }
        if self.open_files < 8 {
            return bad(format!("open files {} must be at least 8", self.open_files));
        }
        if self.address_space_bytes.is_some_and(|b| b < 64 * 1024) {
            return bad("address space limit must be at least 64 KiB".into());
        }
        if self.stack_bytes.is_some_and(|b| b < 64 * 1024) {
            return bad("stack limit must be at least 64 KiB".into());
        }
        if self.file_size_bytes == 0 || self.output_bytes == 0 {
            return bad("file size and output limits must be positive".into());
        }
        if let Some(set) = &self.cpuset {
            let ok = !set.is_empty()
                && set
                    .chars()
                    .all(|c| c.is_ascii_digit() || c == ',' || c == '-');
            if !ok {
                return bad(format!("cpuset {set:?} is not a list like 0-1,3"));
            }
        }
        Ok(())
    }
}

/// Where the program's standard input comes from. Never the caller's terminal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Stdin {
    /// `/dev/null` (the default).
    #[default]
    Null,
    /// These bytes, then end of file.
    Bytes(Vec<u8>),
    /// The contents of this host file, copied into the sandbox's state when it is created.
    File(PathBuf),
    /// The launching process's own standard input (fd 0) at launch, handed to the program
    /// as it is: a file or a pipe, never a terminal (a terminal fails the launch). The
    /// program reads the caller's file itself, as isolate's programs do; it can reopen it
    /// through `/proc/self/fd/0` with whatever access its uid has to that file.
    Inherit,
}

/// Where the program's stdout or stderr goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Output {
    /// Captured by the monitor into the verdict, bounded by [`Limits::output_bytes`] (the
    /// default).
    #[default]
    Capture,
    /// The launching process's own descriptor (fd 1 or 2) at launch, handed to the program:
    /// a file or a pipe, never a terminal (a terminal fails the launch). Not captured and not
    /// counted against the output limit; a file is bounded by [`Limits::file_size_bytes`].
    Inherit,
}

impl Output {
    fn is_capture(&self) -> bool {
        *self == Output::Capture
    }
}

/// Standard streams opened inside the sandbox (isolate's `--stdin`, `--stdout`, `--stderr`):
/// paths the sandbox sees, opened by the program's user in the sandbox's init just before the
/// program starts, so a symlink a program left there can lead nowhere the sandbox cannot go.
/// A path that cannot be opened fails the launch. Unset streams keep [`Stdin`] and capture.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Redirects {
    /// Read as stdin (instead of [`Stdin`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    /// Created or truncated (mode 0644) as stdout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout: Option<String>,
    /// Created or truncated (mode 0644) as stderr.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
    /// stderr goes wherever stdout goes (after stdout's redirect).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stderr_to_stdout: bool,
}

impl Redirects {
    /// Whether no stream is redirected.
    pub fn is_empty(&self) -> bool {
        *self == Redirects::default()
    }
}

/// The user the program runs as. It never has capabilities, whatever the uid. By default each
/// sandbox gets a host uid and gid of its own from its root's range
/// ([`crate::RootOptions::uid_range`]); [`Command::user`] names one instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct User {
    /// User id inside the sandbox (the same on the host: there is no user namespace).
    pub uid: u32,
    /// Group id inside the sandbox.
    pub gid: u32,
}

impl Default for User {
    fn default() -> Self {
        User {
            uid: 65534,
            gid: 65534,
        }
    }
}

/// A program to run in a sandbox, built like [`std::process::Command`].
///
/// A built `Command` is reusable: each [`Command::spawn`](crate::Root::spawn) makes a new
/// sandbox from it.
#[derive(Debug, Clone)]
pub struct Command {
    pub(crate) program: String,
    pub(crate) args: Vec<String>,
    pub(crate) env: BTreeMap<String, String>,
    pub(crate) cwd: Option<String>,
    pub(crate) user: Option<User>,
    pub(crate) image: Option<PathBuf>,
    /// An image of the root's image store, by name or digest.
    pub(crate) stored_image: Option<String>,
    /// Replaces the stored image's `Entrypoint` (empty: none).
    pub(crate) entrypoint: Option<Vec<String>>,
    /// The program and arguments are the stored image's (`Entrypoint` + `Cmd`, the
    /// arguments given replacing `Cmd`).
    pub(crate) program_from_image: bool,
    /// `PATH` is still the default [`Command::new`] set (a stored image's own `PATH` wins).
    pub(crate) path_defaulted: bool,
    /// [`Command::env_clear`] was called: a stored image's `Env` is not applied either.
    pub(crate) env_cleared: bool,
    pub(crate) limits: Limits,
    pub(crate) stdin: Stdin,
    pub(crate) name: Option<String>,
    pub(crate) hostname: String,
    pub(crate) binds: Vec<(PathBuf, String)>,
    pub(crate) rw_binds: Vec<(PathBuf, String)>,
    pub(crate) copies: Vec<(PathBuf, String)>,
    pub(crate) collects: Vec<(String, PathBuf)>,
    pub(crate) redirects: Redirects,
    pub(crate) noexec: Vec<String>,
    pub(crate) stdout: Output,
    pub(crate) stderr: Output,
}

impl Command {
    /// A command running `program` (a path inside the sandbox, or a name looked up in `PATH`).
    ///
    /// Defaults: the host-based image, a uid/gid of the sandbox's own, `PATH` only in the environment,
    /// working directory `/work` (writable by the user), stdin from `/dev/null`,
    /// [`Limits::default`].
    pub fn new(program: impl Into<String>) -> Self {
        let mut env = BTreeMap::new();
        env.insert("PATH".to_string(), DEFAULT_PATH.to_string());
        Command {
            program: program.into(),
            args: Vec::new(),
            env,
            cwd: None,
            user: None,
            image: None,
            stored_image: None,
            entrypoint: None,
            program_from_image: false,
            path_defaulted: true,
            env_cleared: false,
            limits: Limits::default(),
            stdin: Stdin::Null,
            name: None,
            hostname: "runbox".to_string(),
            binds: Vec::new(),
            rw_binds: Vec::new(),
            copies: Vec::new(),
            collects: Vec::new(),
            redirects: Redirects::default(),
            noexec: Vec::new(),
            stdout: Output::Capture,
            stderr: Output::Capture,
        }
    }

    /// Adds one argument.
    pub fn arg(&mut self, arg: impl Into<String>) -> &mut Self {
        self.args.push(arg.into());
        self
    }

    /// Adds several arguments.
    pub fn args<I, S>(&mut self, args: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets one environment variable.
    pub fn env(&mut self, key: impl Into<String>, value: impl Into<String>) -> &mut Self {
        let key = key.into();
        if key == "PATH" {
            self.path_defaulted = false;
        }
        self.env.insert(key, value.into());
        self
    }

    /// Removes every environment variable, including the default `PATH` (and a stored
    /// image's `Env`).
    pub fn env_clear(&mut self) -> &mut Self {
        self.env.clear();
        self.path_defaulted = false;
        self.env_cleared = true;
        self
    }

    /// Sets the working directory inside the sandbox (absolute). Default `/work`.
    pub fn current_dir(&mut self, dir: impl Into<String>) -> &mut Self {
        self.cwd = Some(dir.into());
        self
    }

    /// Sets the user and group ids the program runs as, instead of a uid and gid of the
    /// sandbox's own from the root's range (the default). Sandboxes given the same uid share
    /// the kernel's per-uid budgets (pending signals, message queues, inotify, pipes).
    pub fn user(&mut self, uid: u32, gid: u32) -> &mut Self {
        self.user = Some(User { uid, gid });
        self
    }

    /// Uses `dir` as the read-only image (the overlay's lower layer) instead of the host-based default.
    pub fn image(&mut self, dir: impl Into<PathBuf>) -> &mut Self {
        self.image = Some(dir.into());
        self.stored_image = None;
        self
    }

    /// Uses an image of the root's image store ([`RootOptions::image_store`]), by name or
    /// digest (`sha256:…`, or a unique prefix of 12 or more hex digits). Its layers are the
    /// overlay's lower layers; its config's `Env`, `WorkingDir` and `Entrypoint` are defaults
    /// the command's own settings override: `PATH` and other variables set here win over
    /// the image's, [`Command::current_dir`] over `WorkingDir`, and the program with its
    /// arguments run under the image's `Entrypoint` if it has one (as `docker run IMAGE
    /// PROGRAM ARGS` does; [`Command::entrypoint`] replaces it). The image's `User` is not
    /// taken: the program runs as the sandbox's own uid unless [`Command::user`] names one.
    ///
    /// [`RootOptions::image_store`]: crate::RootOptions::image_store
    pub fn stored_image(&mut self, reference: impl Into<String>) -> &mut Self {
        self.stored_image = Some(reference.into());
        self.image = None;
        self
    }

    /// A command that runs a stored image's own `Entrypoint` and `Cmd` (see
    /// [`Command::stored_image`]); arguments added with [`Command::arg`] replace `Cmd`.
    pub fn from_image(reference: impl Into<String>) -> Self {
        let mut cmd = Command::new(String::new());
        cmd.stored_image(reference);
        cmd.program_from_image = true;
        cmd
    }

    /// Replaces a stored image's `Entrypoint` (an empty list: run the program directly).
    pub fn entrypoint<I, S>(&mut self, argv: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.entrypoint = Some(argv.into_iter().map(Into::into).collect());
        self
    }

    /// Replaces all limits.
    pub fn limits(&mut self, limits: Limits) -> &mut Self {
        self.limits = limits;
        self
    }

    /// Mutable access to the limits, to change one of them.
    pub fn limits_mut(&mut self) -> &mut Limits {
        &mut self.limits
    }

    /// Sets the program's standard input.
    pub fn stdin(&mut self, stdin: Stdin) -> &mut Self {
        self.stdin = stdin;
        self
    }

    /// Sets where the program's stdout goes (default [`Output::Capture`]).
    pub fn stdout(&mut self, out: Output) -> &mut Self {
        self.stdout = out;
        self
    }

    /// Sets where the program's stderr goes (default [`Output::Capture`]).
    pub fn stderr(&mut self, out: Output) -> &mut Self {
        self.stderr = out;
        self
    }

    /// Names the sandbox (`[A-Za-z0-9][A-Za-z0-9_.-]{0,63}`); by default a unique id is generated.
    pub fn name(&mut self, id: impl Into<String>) -> &mut Self {
        self.name = Some(id.into());
        self
    }

    /// Makes the host file or directory `host` visible read-only at `dest` inside the sandbox
    /// (a bind mount: nothing is copied).
    pub fn bind_ro(&mut self, host: impl Into<PathBuf>, dest: impl Into<String>) -> &mut Self {
        self.binds.push((host.into(), dest.into()));
        self
    }

    /// Makes the host directory `host` visible read-write at `dest` inside the sandbox (a
    /// bind mount, `nosuid` and `nodev`): a work dir whose files stay for the next sandbox
    /// and for the caller to read, as an isolate box's. The program writes there as its uid,
    /// so give the directory to that uid (name it with [`Command::user`] for a work dir
    /// used by several runs) and read what a hostile program wrote with care: symlinks and
    /// hard links in it are the program's. Its writes count against no scratch size.
    pub fn bind_rw(&mut self, host: impl Into<PathBuf>, dest: impl Into<String>) -> &mut Self {
        self.rw_binds.push((host.into(), dest.into()));
        self
    }

    /// Copies the host file or directory `host` to `dest` in the sandbox's writable layer before
    /// the program starts, owned by the sandbox's user. It counts against the scratch size.
    pub fn copy_in(&mut self, host: impl Into<PathBuf>, dest: impl Into<String>) -> &mut Self {
        self.copies.push((host.into(), dest.into()));
        self
    }

    /// After the run, copies the regular file `inside` (in the writable layer, e.g. under
    /// `/work` or `/tmp`; not `/dev/shm`) to the host path `host_dest`. Symlinks are
    /// resolved inside the sandbox, never on the host; a missing file is skipped. All
    /// collected files together are bounded by [`Limits::collect_bytes`]; a command has at
    /// most 64 entries, and an entry given twice counts once.
    pub fn collect(
        &mut self,
        inside: impl Into<String>,
        host_dest: impl Into<PathBuf>,
    ) -> &mut Self {
        let entry = (inside.into(), host_dest.into());
        if !self.collects.contains(&entry) {
            self.collects.push(entry);
        }
        self
    }

    /// Mounts the bind at sandbox path `dest` (given with [`Command::bind_ro`] or
    /// [`Command::bind_rw`]) `noexec`: nothing in it can be executed.
    pub fn noexec(&mut self, dest: impl Into<String>) -> &mut Self {
        self.noexec.push(dest.into());
        self
    }

    /// Reads stdin from `inside`, a file the sandbox sees (e.g. in a work dir), opened by the
    /// program's user just before it starts (isolate's `--stdin`). Replaces [`Command::stdin`].
    pub fn stdin_inside(&mut self, inside: impl Into<String>) -> &mut Self {
        self.redirects.stdin = Some(inside.into());
        self
    }

    /// Writes stdout to `inside`, a file the sandbox sees, created or truncated (mode 0644) by
    /// the program's user; not captured, not counted against the output limit, bounded by
    /// [`Limits::file_size_bytes`] (isolate's `--stdout`).
    pub fn stdout_inside(&mut self, inside: impl Into<String>) -> &mut Self {
        self.redirects.stdout = Some(inside.into());
        self
    }

    /// Writes stderr to `inside`, as [`Command::stdout_inside`] does (isolate's `--stderr`).
    pub fn stderr_inside(&mut self, inside: impl Into<String>) -> &mut Self {
        self.redirects.stderr = Some(inside.into());
        self.redirects.stderr_to_stdout = false;
        self
    }

    /// Sends stderr wherever stdout goes: into the same capture, or the same file (isolate's
    /// `--stderr-to-stdout`).
    pub fn stderr_to_stdout(&mut self) -> &mut Self {
        self.redirects.stderr = None;
        self.redirects.stderr_to_stdout = true;
        self
    }

    /// Sets the sandbox's hostname. Default `runbox`.
    pub fn hostname(&mut self, name: impl Into<String>) -> &mut Self {
        self.hostname = name.into();
        self
    }
}

/// Checks a sandbox id against `[A-Za-z0-9][A-Za-z0-9_.-]{0,63}`.
pub(crate) fn validate_id(id: &str) -> Result<()> {
    let mut chars = id.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if first_ok && rest_ok && id.len() <= 64 {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::InvalidConfig,
            format!("sandbox id {id:?} must match [A-Za-z0-9][A-Za-z0-9_.-]{{0,63}}"),
        ))
    }
}

/// Checks a command's collect list: at most [`MAX_COLLECTS`] entries, each host
/// destination named once (two entries writing one host file would overwrite each other).
pub(crate) fn check_collects(collects: &[(String, PathBuf)]) -> Result<()> {
    if collects.len() > MAX_COLLECTS {
        return Err(Error::new(
            ErrorKind::InvalidConfig,
            format!(
                "{} files to collect, more than the {MAX_COLLECTS} a sandbox may have",
                collects.len()
            ),
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (_, host) in collects {
        if !seen.insert(host) {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!("collect destination {} given twice", host.display()),
            ));
        }
    }
    Ok(())
}

/// Returns true if `path` is absolute and has no `..` component.
pub(crate) fn is_clean_absolute(path: &Path) -> bool {
    path.is_absolute()
        && !path
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        for ok in ["a", "A0", "x_y.z-1", &"a".repeat(64)] {
            assert!(validate_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", ".a", "a/b", "a b", &"a".repeat(65), "é"] {
            assert_eq!(
                validate_id(bad).unwrap_err().kind(),
                ErrorKind::InvalidConfig,
                "{bad}"
            );
        }
    }

    #[test]
    fn default_limits_are_valid_and_bounded() {
        let l = Limits::default();
        l.validate().unwrap();
        assert!(l.wall_time.is_some());
        assert!(l.scratch_bytes < l.memory_bytes);
        assert_eq!(l.cpu_quota_us(), 10_000);
    }

    #[test]
    fn invalid_limits_are_rejected() {
        let cases: [fn(&mut Limits); 10] = [
            |l| l.memory_bytes = 0,
            |l| l.pids = 0,
            |l| l.cpus = 0.0,
            |l| l.cpus = f64::NAN,
            |l| l.cpus = 0.05,
            |l| l.cpu_period_us = 10,
            |l| l.wall_time = Some(Duration::ZERO),
            |l| l.scratch_bytes = l.memory_bytes,
            |l| l.open_files = 0,
            |l| l.cpuset = Some("0;1".into()),
        ];
        for (i, change) in cases.iter().enumerate() {
            let mut l = Limits::default();
            change(&mut l);
            assert!(l.validate().is_err(), "case {i} accepted: {l:?}");
        }
    }

    #[test]
    fn collect_lists_are_bounded_and_deduplicated() {
        let mut c = Command::new("x");
        for _ in 0..3 {
            c.collect("/work/a", "/tmp/a");
        }
        assert_eq!(c.collects.len(), 1);
        check_collects(&c.collects).unwrap();
        c.collect("/work/b", "/tmp/a");
        assert!(check_collects(&c.collects).is_err());
        let many: Vec<(String, PathBuf)> = (0..=MAX_COLLECTS)
            .map(|i| (format!("/work/{i}"), PathBuf::from(format!("/tmp/{i}"))))
            .collect();
        let e = check_collects(&many).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidConfig);
        check_collects(&many[..MAX_COLLECTS]).unwrap();
    }

    #[test]
    fn pids_above_the_ceiling_are_refused_not_clamped() {
        let mut l = Limits {
            pids: 16_384,
            ..Limits::default()
        };
        l.validate_pids(16_384).unwrap();
        l.pids = 16_385;
        let e = l.validate_pids(16_384).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidConfig);
        assert!(e.to_string().contains("16385"), "{e}");
        assert_eq!(l.pids, 16_385, "never clamped");
    }

    #[test]
    fn half_cpu_quota() {
        let l = Limits {
            cpus: 0.5,
            ..Limits::default()
        };
        assert_eq!(l.cpu_quota_us(), 5000);
    }
}
