//! The per-process half of a launch: what one process run in an existing sandbox brings
//! (program, arguments, environment, working directory, standard streams, its own CPU-,
//! wall-time and output limits). Today it describes an exec ([`crate::Sandbox::exec`]); the
//! sandbox's own program is still described by [`crate::Command`]. Pure data, built by the
//! caller and read by the controller.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Output, Stdin};
use crate::error::{Error, ErrorKind, Result};

/// A process to run in a running sandbox, built like [`std::process::Command`]:
///
/// ```no_run
/// # fn main() -> runbox::Result<()> {
/// # let root = runbox::Root::open("/run/runbox")?;
/// # let sandbox = root.sandbox("ide-42")?;
/// let mut ls = runbox::ProcessSpec::new("ls");
/// ls.arg("-l").current_dir("/tmp").wall_time(std::time::Duration::from_secs(5));
/// let verdict = sandbox.exec(&ls)?.wait()?;
/// println!("{}", verdict.stdout);
/// # Ok(()) }
/// ```
///
/// The process runs with the sandbox's namespaces, cgroup (its memory and pids limits are
/// shared with everything else in the sandbox), seccomp filter, rlimits and user, with no
/// capabilities, in a process group of its own that ends with it.
#[derive(Debug, Clone)]
pub struct ProcessSpec {
    pub(crate) program: String,
    pub(crate) args: Vec<String>,
    pub(crate) env: BTreeMap<String, String>,
    pub(crate) cwd: Option<String>,
    pub(crate) user: Option<u32>,
    pub(crate) stdin: Stdin,
    pub(crate) stdout: Output,
    pub(crate) stderr: Output,
    /// Descriptors given instead of the modes above (`*_fd`).
    pub(crate) fds: [Option<Arc<OwnedFd>>; 3],
    pub(crate) output_bytes: Option<u64>,
    pub(crate) cpu_time: Option<Duration>,
    pub(crate) wall_time: Option<Duration>,
}

impl ProcessSpec {
    /// Runs `program`: a path inside the sandbox, or a name looked up in its `PATH`.
    pub fn new(program: impl Into<String>) -> Self {
        ProcessSpec {
            program: program.into(),
            args: Vec::new(),
            env: BTreeMap::new(),
            cwd: None,
            user: None,
            stdin: Stdin::Null,
            stdout: Output::Capture,
            stderr: Output::Capture,
            fds: [None, None, None],
            output_bytes: None,
            cpu_time: None,
            wall_time: None,
        }
    }

    /// Adds an argument.
    pub fn arg(&mut self, arg: impl Into<String>) -> &mut Self {
        self.args.push(arg.into());
        self
    }

    /// Adds arguments.
    pub fn args<I, S>(&mut self, args: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable, laid over the sandbox's environment.
    pub fn env(&mut self, key: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.env.insert(key.into(), value.into());
        self
    }

    /// Sets the working directory inside the sandbox (absolute); the sandbox's own by default.
    pub fn current_dir(&mut self, dir: impl Into<String>) -> &mut Self {
        self.cwd = Some(dir.into());
        self
    }

    /// Runs it as `uid`. The sandbox's init has no capabilities, so only the sandbox's own
    /// user is possible: another is an `invalid_config` error.
    pub fn user(&mut self, uid: u32) -> &mut Self {
        self.user = Some(uid);
        self
    }

    /// Sets its stdin (default [`Stdin::Null`]; a [`Stdin::File`] is opened by the caller).
    pub fn stdin(&mut self, stdin: Stdin) -> &mut Self {
        self.stdin = stdin;
        self.fds[0] = None;
        self
    }

    /// Sets where its stdout goes (default [`Output::Capture`], under its output cap).
    pub fn stdout(&mut self, out: Output) -> &mut Self {
        self.stdout = out;
        self.fds[1] = None;
        self
    }

    /// Sets where its stderr goes (default [`Output::Capture`]).
    pub fn stderr(&mut self, out: Output) -> &mut Self {
        self.stderr = out;
        self.fds[2] = None;
        self
    }

    /// Gives it `fd` (a pipe or a file, never a terminal) as stdin.
    pub fn stdin_fd(&mut self, fd: OwnedFd) -> &mut Self {
        self.fds[0] = Some(Arc::new(fd));
        self
    }

    /// Gives it `fd` (a pipe or a file, never a terminal) as stdout: not captured, not capped.
    pub fn stdout_fd(&mut self, fd: OwnedFd) -> &mut Self {
        self.fds[1] = Some(Arc::new(fd));
        self
    }

    /// Gives it `fd` (a pipe or a file, never a terminal) as stderr: not captured, not capped.
    pub fn stderr_fd(&mut self, fd: OwnedFd) -> &mut Self {
        self.fds[2] = Some(Arc::new(fd));
        self
    }

    /// Caps its captured stdout and stderr together (default: the sandbox's output limit);
    /// past it, its process group is killed (`output_limit`).
    pub fn output_limit(&mut self, bytes: u64) -> &mut Self {
        self.output_bytes = Some(bytes);
        self
    }

    /// Limits its CPU time (`RLIMIT_CPU`: whole seconds, rounded up; past it the verdict is
    /// `time_limit`). Its CPU time also counts toward the sandbox's own CPU-time limit.
    pub fn cpu_time(&mut self, limit: Duration) -> &mut Self {
        self.cpu_time = Some(limit);
        self
    }

    /// Limits its wall time (paused spans do not count); past it its group is killed
    /// (`wall_time_limit`).
    pub fn wall_time(&mut self, limit: Duration) -> &mut Self {
        self.wall_time = Some(limit);
        self
    }

    /// Checks what can be checked without the sandbox.
    pub(crate) fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::new(ErrorKind::InvalidConfig, m));
        if self.program.is_empty() {
            return bad("an exec needs a program".into());
        }
        let strings = std::iter::once(&self.program)
            .chain(&self.args)
            .chain(self.env.keys())
            .chain(self.env.values())
            .chain(&self.cwd);
        if let Some(s) = strings.into_iter().find(|s| s.contains('\0')) {
            return bad(format!("a nul byte in {s:?}"));
        }
        if let Some(k) = self.env.keys().find(|k| k.is_empty() || k.contains('=')) {
            return bad(format!("{k:?} is not an environment variable's name"));
        }
        if let Some(cwd) = &self.cwd {
            if !cwd.starts_with('/') {
                return bad(format!("the working directory {cwd:?} is not absolute"));
            }
        }
        for (name, d) in [("CPU", self.cpu_time), ("wall", self.wall_time)] {
            if d.is_some_and(|d| d.is_zero()) {
                return bad(format!("a {name}-time limit of zero"));
            }
        }
        if self.output_bytes == Some(0) {
            // Zero would kill at the first byte; a caller who wants no output uses a file.
            return bad("an output limit of zero".into());
        }
        if let Stdin::File(p) = &self.stdin {
            if p.as_os_str().is_empty() {
                return bad("an empty stdin path".into());
            }
        }
        Ok(())
    }

    /// The stdin file to open, if it is one.
    pub(crate) fn stdin_path(&self) -> Option<&PathBuf> {
        match &self.stdin {
            Stdin::File(p) if self.fds[0].is_none() => Some(p),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_specs_are_invalid_config() {
        let ok = ProcessSpec::new("ls");
        ok.validate().unwrap();
        let cases: Vec<ProcessSpec> = vec![
            ProcessSpec::new(""),
            ProcessSpec::new("l\0s"),
            ProcessSpec::new("ls").current_dir("tmp").clone(),
            ProcessSpec::new("ls").env("A=B", "c").clone(),
            ProcessSpec::new("ls").cpu_time(Duration::ZERO).clone(),
            ProcessSpec::new("ls").output_limit(0).clone(),
        ];
        for spec in cases {
            let e = spec.validate().unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{spec:?}");
        }
    }
}
