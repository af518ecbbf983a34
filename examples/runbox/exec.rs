//! `runbox exec [-i] [-d] [-e K=V]... [-w DIR] [--user U] [--time S] [--wall-time S] [--json]
//! ID PROGRAM ARGS...`: runs a further process in a running sandbox through its init.
//!
//! Without `--json` its stdout and stderr are this process's own (relayed through pipes: a
//! sandbox never gets the caller's terminal) and the exit status is the process's (128+N for
//! signal N; runbox's own failures 125). `-i` relays this process's stdin, else it reads
//! `/dev/null`. With `--json` its output is captured and the verdict printed (exit 0 when a
//! verdict was produced). `-d` prints the exec's number and returns at once; `runbox wait
//! --exec N ID` waits for it from any later process.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::process::ExitCode;
use std::time::Duration;

use super::{parse_secs, print_json, report, Failure, Outcome};

/// `runbox exec`'s arguments.
#[derive(clap::Args)]
#[command(trailing_var_arg = true)]
pub(crate) struct ExecArgs {
    /// Relay this process's stdin to the process (else it reads /dev/null).
    #[arg(short, long)]
    interactive: bool,
    /// Print the exec's number and return at once (`runbox wait --exec N ID` waits).
    #[arg(short, long, conflicts_with = "interactive")]
    detach: bool,
    /// Set an environment variable (over the sandbox's own), K=V; repeatable.
    #[arg(short = 'e', long = "env", value_name = "K=V")]
    env: Vec<String>,
    /// Working directory inside the sandbox (default: the sandbox's).
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    workdir: Option<String>,
    /// User (uid) to run as: only the sandbox's own is possible (its init has no
    /// capabilities to change user).
    #[arg(long, value_name = "UID")]
    user: Option<u32>,
    /// CPU-time limit in seconds (whole seconds, rounded up).
    #[arg(long, value_parser = parse_secs, value_name = "S")]
    time: Option<Duration>,
    /// Wall-time limit in seconds.
    #[arg(long = "wall-time", value_parser = parse_secs, value_name = "S")]
    wall_time: Option<Duration>,
    /// Capture the output and print the verdict as one JSON object.
    #[arg(long)]
    json: bool,
    /// Sandbox id.
    id: String,
    /// The program (a path inside the sandbox, or a name in its PATH) and its arguments.
    #[arg(required = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

/// Runs `runbox exec`.
pub(crate) fn exec(root: &runbox::Root, a: ExecArgs) -> Outcome {
    let sandbox = root.sandbox(&a.id)?;
    let (program, args) = a
        .command
        .split_first()
        .ok_or_else(|| Failure("exec needs a program".to_string()))?;
    let mut spec = runbox::ProcessSpec::new(program.clone());
    spec.args(args.iter().cloned());
    for kv in &a.env {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| Failure(format!("-e {kv:?}: not K=V")))?;
        spec.env(k, v);
    }
    if let Some(dir) = &a.workdir {
        spec.current_dir(dir.clone());
    }
    if let Some(uid) = a.user {
        spec.user(uid);
    }
    if let Some(t) = a.time {
        spec.cpu_time(t);
    }
    if let Some(t) = a.wall_time {
        spec.wall_time(t);
    }
    if a.json || a.detach {
        let exec = sandbox.exec(&spec)?;
        if a.detach {
            println!("{}", exec.id());
            return Ok(ExitCode::SUCCESS);
        }
        return print_json(&exec.wait()?);
    }
    // Streamed: pipes whose far ends the process gets, relayed here.
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    spec.stdout_fd(out_w).stderr_fd(err_w);
    let stdin_w = if a.interactive {
        let (r, w) = pipe()?;
        spec.stdin_fd(r);
        Some(w)
    } else {
        None
    };
    let exec = sandbox.exec(&spec)?;
    // Only the sandbox holds the write ends now: end of file comes with the process's end.
    drop(spec);
    if let Some(w) = stdin_w {
        // Detached: it ends with this process, or when stdin ends (EOF reaches the process).
        std::thread::spawn(move || relay(std::io::stdin().lock(), std::fs::File::from(w)));
    }
    let out = std::thread::spawn(move || relay(std::fs::File::from(out_r), std::io::stdout()));
    let err = std::thread::spawn(move || relay(std::fs::File::from(err_r), std::io::stderr()));
    let verdict = exec.wait()?;
    // The group is gone with its first process: the pipes are at their end.
    let _ = out.join();
    let _ = err.join();
    report(&verdict, false)
}

/// `runbox wait --exec N ID`.
pub(crate) fn wait_exec(
    root: &runbox::Root,
    id: &str,
    n: u64,
    timeout: Option<Duration>,
    json: bool,
) -> Outcome {
    let exec = root.sandbox(id)?.exec_handle(n)?;
    let verdict = match timeout {
        None => exec.wait()?,
        Some(t) => match exec.wait_timeout(t)? {
            Some(v) => v,
            None => {
                eprintln!("runbox: exec {n} of sandbox {id} still runs after {t:?}");
                return Ok(ExitCode::from(124));
            }
        },
    };
    report(&verdict, json)
}

fn pipe() -> Result<(OwnedFd, OwnedFd), Failure> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| Failure(format!("create a pipe: {e}")))
}

/// Copies `from` to `to` until the end of `from` (or a write fails: the reader went away).
fn relay(mut from: impl Read, mut to: impl Write) {
    let mut buf = [0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if to.write_all(&buf[..n]).and_then(|()| to.flush()).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}
