//! The runbox command line: `runbox run [OPTIONS] -- PROGRAM [ARGS...]`.
//!
//! Exit status without `--json`: the program's exit code, 128+N if it died of signal N, 125 if
//! runbox itself failed. With `--json`: 0 when a result was produced, 125 otherwise.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "runbox",
    version,
    about = "Run untrusted programs in confined, daemonless Linux sandboxes"
)]
struct Cli {
    /// State root (default: $RUNBOX_ROOT, else /run/runbox).
    #[arg(long, global = true)]
    root: Option<PathBuf>,
    /// cgroup parent of every sandbox (`/<PARENT>/<id>` in each hierarchy). Default `runbox`.
    #[arg(long = "cgroup-parent", global = true)]
    cgroup_parent: Option<String>,
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Subcommand)]
enum Verb {
    /// Run a program in a new sandbox and wait for it.
    Run(RunArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Sandbox id (default: generated).
    #[arg(long)]
    name: Option<String>,
    /// Image directory used as the read-only root (default: the host's /usr and /lib*).
    #[arg(long)]
    image: Option<PathBuf>,
    /// User (and group) inside the sandbox, UID[:GID]. Default 65534:65534.
    #[arg(long, value_parser = parse_user)]
    user: Option<(u32, u32)>,
    /// Memory limit, e.g. 256M (K, M, G are powers of 1024).
    #[arg(long, value_parser = parse_size)]
    memory: Option<u64>,
    /// Maximum number of processes and threads.
    #[arg(long)]
    pids: Option<u64>,
    /// CPU bandwidth in CPUs, e.g. 0.5.
    #[arg(long)]
    cpus: Option<f64>,
    /// CPU-time limit in seconds (whole process tree).
    #[arg(long, value_parser = parse_secs)]
    time: Option<Duration>,
    /// Wall-clock limit in seconds (default 60).
    #[arg(long = "wall-time", value_parser = parse_secs)]
    wall_time: Option<Duration>,
    /// Limit on captured stdout plus stderr.
    #[arg(long = "output-limit", value_parser = parse_size)]
    output_limit: Option<u64>,
    /// Size of the writable layer and of /tmp.
    #[arg(long, value_parser = parse_size)]
    scratch: Option<u64>,
    /// Environment variable NAME=VALUE (repeatable); replaces the default environment.
    #[arg(long = "env", short = 'e')]
    env: Vec<String>,
    /// Working directory inside the sandbox.
    #[arg(long)]
    cwd: Option<String>,
    /// Print the verdict as one JSON object instead of forwarding the output.
    #[arg(long)]
    json: bool,
    /// The program and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let (num, mult) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 1 << 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("{s:?} is not a size like 64M"))
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    s.parse::<f64>()
        .ok()
        .and_then(|f| Duration::try_from_secs_f64(f).ok())
        .ok_or_else(|| format!("{s:?} is not a number of seconds"))
}

fn parse_user(s: &str) -> Result<(u32, u32), String> {
    let (u, g) = s.split_once(':').unwrap_or((s, s));
    match (u.parse(), g.parse()) {
        (Ok(u), Ok(g)) => Ok((u, g)),
        _ => Err(format!("{s:?} is not UID[:GID]")),
    }
}

fn build_command(a: &RunArgs) -> Result<runbox::Command, String> {
    let mut cmd = runbox::Command::new(a.command[0].clone());
    cmd.args(a.command[1..].iter().cloned());
    if let Some(n) = &a.name {
        cmd.name(n.clone());
    }
    if let Some(i) = &a.image {
        cmd.image(i.clone());
    }
    if let Some((u, g)) = a.user {
        cmd.user(u, g);
    }
    if let Some(c) = &a.cwd {
        cmd.current_dir(c.clone());
    }
    if !a.env.is_empty() {
        cmd.env_clear();
        for kv in &a.env {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| format!("--env {kv:?} is not NAME=VALUE"))?;
            cmd.env(k, v);
        }
    }
    let l = cmd.limits_mut();
    if let Some(m) = a.memory {
        l.memory_bytes = m;
        // Keep the scratch default below a small memory limit.
        if a.scratch.is_none() && l.scratch_bytes >= m {
            l.scratch_bytes = (m / 4).max(1 << 20);
        }
    }
    if let Some(p) = a.pids {
        l.pids = p;
    }
    if let Some(c) = a.cpus {
        l.cpus = c;
    }
    if a.time.is_some() {
        l.cpu_time = a.time;
    }
    if a.wall_time.is_some() {
        l.wall_time = a.wall_time;
    }
    if let Some(o) = a.output_limit {
        l.output_bytes = o;
    }
    if let Some(s) = a.scratch {
        l.scratch_bytes = s;
    }
    Ok(cmd)
}

fn main() -> ExitCode {
    runbox::monitor_main();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Bad options are runbox's failure (125), as in docker and podman; help is not.
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 125 } else { 0 });
        }
    };
    let root_dir = cli.root.clone().unwrap_or_else(runbox::Root::default_dir);
    let mut opts = runbox::RootOptions::new();
    if let Some(p) = &cli.cgroup_parent {
        opts.cgroup_prefix(p.clone());
    }
    let root = match opts.open(&root_dir) {
        Ok(r) => r,
        Err(e) => return fail(e.chain()),
    };
    match cli.verb {
        Verb::Run(args) => run(&root, &args),
    }
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("runbox: {msg}");
    ExitCode::from(125)
}

fn run(root: &runbox::Root, args: &RunArgs) -> ExitCode {
    let cmd = match build_command(args) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let verdict = match root.run(&cmd) {
        Ok(v) => v,
        Err(e) => return fail(e.chain()),
    };
    if args.json {
        match serde_json::to_string(&verdict) {
            Ok(s) => println!("{s}"),
            Err(e) => return fail(e),
        }
        return ExitCode::SUCCESS;
    }
    use std::io::Write;
    let _ = std::io::stdout().write_all(verdict.stdout.as_bytes());
    let _ = std::io::stderr().write_all(verdict.stderr.as_bytes());
    if let Some(msg) = verdict.message.as_ref().filter(|_| verdict.limit.is_some()) {
        eprintln!("runbox: {msg}");
    }
    ExitCode::from(verdict.shell_status().clamp(0, 255) as u8)
}
