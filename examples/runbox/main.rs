//! The runbox command line: `runbox run [OPTIONS] PROGRAM [ARGS...]`, and runc-style verbs
//! for sandboxes that outlive this process: create, start, state, list, wait, logs, kill,
//! pause, resume, stats, delete, gc, and check; `exec` runs a further process in a running
//! sandbox (`exec.rs`).
//!
//! As in `podman run`, everything from PROGRAM on belongs to the program, words starting with
//! `-` included; `runbox run [OPTIONS] -- PROGRAM [ARGS...]` works too. `-e K=V` adds to the
//! default environment (`PATH` only); `--env-clear` starts from an empty one.
//!
//! `runbox isolate [OPTIONS] COMMAND`, or this binary invoked as `isolate`, is isolate's
//! command line (see `isolate.rs`).
//!
//! Exit status without `--json`: the program's exit code, 128+N if it died of signal N, 125 if
//! runbox itself failed. With `--json`: 0 when a result was produced, 125 otherwise.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use runbox::Signal;

mod exec;
mod image;
mod isolate;

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
    /// cgroup subtree runbox was delegated (e.g. a systemd unit with Delegate=yes): the
    /// parent goes under it, and runbox writes nothing outside it. Default `/`.
    #[arg(long = "cgroup-base", global = true)]
    cgroup_base: Option<String>,
    /// Host uids (and gids) sandboxes get one each from, as FIRST:COUNT; a `--user` wins.
    /// Default 60000:1000. Must hold no user or group of /etc/passwd, /etc/group,
    /// /etc/subuid or /etc/subgid.
    #[arg(long = "uid-range", global = true, value_name = "FIRST:COUNT", value_parser = parse_uid_range)]
    uid_range: Option<(u32, u32)>,
    /// Pre-built sandboxes of a run's shape kept parked in the state root after it, for
    /// the next runbox process to start from (0: none).
    #[arg(long, global = true, default_value_t = 1)]
    spares: usize,
    /// How long a parked sandbox waits for a run before it goes.
    #[arg(long = "spare-idle", global = true, value_name = "SECS", value_parser = parse_secs, default_value = "60")]
    spare_idle: Duration,
    /// Image store for `--image NAME` and `runbox image` (default: $RUNBOX_IMAGE_STORE,
    /// else /var/lib/runbox).
    #[arg(long = "image-store", global = true, value_name = "DIR")]
    image_store: Option<PathBuf>,
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Subcommand)]
enum Verb {
    /// Run a program in a new sandbox and wait for it (or not, with --detach).
    Run(RunArgs),
    /// Create a sandbox whose program waits for `start`; prints its id.
    Create(SandboxArgs),
    /// Start a created sandbox.
    Start {
        /// Sandbox id.
        id: String,
    },
    /// Print a sandbox's state as JSON.
    State {
        /// Sandbox id.
        id: String,
    },
    /// List the sandboxes of the state root.
    List {
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Run a further process in a running sandbox, through its init (like `docker exec`).
    Exec(exec::ExecArgs),
    /// Wait for a sandbox (or with --exec, one of its execs) to finish; exit as `run` does.
    Wait {
        /// Sandbox id.
        id: String,
        /// Wait for this exec of the sandbox instead (the number `exec --detach` printed).
        #[arg(long, value_name = "N")]
        exec: Option<u64>,
        /// Give up after this many seconds (exit status 124).
        #[arg(long, value_parser = parse_secs)]
        timeout: Option<Duration>,
        /// Print the verdict as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Print a sandbox's captured stdout and stderr.
    Logs {
        /// Sandbox id.
        id: String,
    },
    /// Send a signal (name or number; default TERM) to a sandbox's program.
    Kill {
        /// Sandbox id.
        id: String,
        /// Signal, e.g. TERM, SIGKILL or 9.
        signal: Option<String>,
    },
    /// Freeze every process of a running sandbox (its time limits stand still meanwhile).
    Pause {
        /// Sandbox id.
        id: String,
    },
    /// Thaw a paused sandbox.
    Resume {
        /// Sandbox id.
        id: String,
    },
    /// Print a live sandbox's figures from its cgroup: CPU time, memory, tasks, block I/O.
    Stats {
        /// Sandbox id.
        id: String,
        /// Print one JSON object per line.
        #[arg(long)]
        json: bool,
        /// Print a line per interval until the sandbox ends (then exit 0).
        #[arg(long, short)]
        follow: bool,
        /// Seconds between lines with --follow.
        #[arg(long, value_parser = parse_secs, default_value = "1")]
        interval: Duration,
    },
    /// Remove a stopped sandbox (a running one with --force).
    Delete {
        /// Kill the sandbox first if it is still running.
        #[arg(long, short)]
        force: bool,
        /// Sandbox id.
        id: String,
    },
    /// Clean up what crashed monitors left behind.
    Gc {
        /// Also end every pre-built sandbox parked in the state root (see --spares).
        #[arg(long = "release-spares")]
        release_spares: bool,
    },
    /// Run jobs from a Redis stream (a grader fleet's worker; see README, "A fleet on
    /// Redis Streams"). Runs until killed; sandboxes outlive it, and a restart adopts them.
    #[cfg(feature = "worker")]
    Worker(WorkerArgs),
    /// Manage the image store: import, pull, list, inspect, rm, prune, df.
    Image {
        #[command(subcommand)]
        verb: image::ImageVerb,
    },
    /// Check what this host offers runbox (exit 1 if something required is missing).
    Check {
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
    },
}

#[cfg(feature = "worker")]
#[derive(clap::Args)]
struct WorkerArgs {
    /// The Redis server, `redis://[user:password@]host:port[/db]`.
    #[arg(long)]
    redis: String,
    /// The jobs' stream.
    #[arg(long)]
    stream: String,
    /// The consumer group (created at the stream's start if missing).
    #[arg(long)]
    group: String,
    /// This worker's consumer name; keep it across restarts (default: the host name and a
    /// hash of the state root).
    #[arg(long)]
    consumer: Option<String>,
    /// Sandboxes running at once.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// The results' stream (default `<stream>:results`).
    #[arg(long)]
    results: Option<String>,
    /// Also store each result under the key PREFIX<job id>.
    #[arg(long = "result-keys", value_name = "PREFIX")]
    result_keys: Option<String>,
    /// Seconds a worker may be silent before other workers take over its jobs.
    #[arg(long, value_parser = parse_secs, default_value = "30")]
    lease: Duration,
    /// The most memory a job may ask for (a job asking more is rejected).
    #[arg(long = "max-memory", value_name = "SIZE", value_parser = parse_size, default_value = "4G")]
    max_memory: u64,
    /// The most processes a job may ask for (default 1024; at most half of kernel.pid_max).
    #[arg(long = "max-pids", value_name = "N")]
    max_pids: Option<u64>,
    /// The longest CPU time a job may ask for, seconds (also the CPU-time limit of a job
    /// that sets none).
    #[arg(long = "max-time", value_name = "SECS", value_parser = parse_secs, default_value = "3600")]
    max_time: Duration,
    /// The longest wall time a job may ask for, seconds.
    #[arg(long = "max-wall-time", value_name = "SECS", value_parser = parse_secs, default_value = "3600")]
    max_wall_time: Duration,
    /// The most captured output a job may ask for (`output_limit`).
    #[arg(long = "max-output", value_name = "SIZE", value_parser = parse_size, default_value = "16M")]
    max_output: u64,
    /// The most bytes of collected files one result may carry.
    #[arg(long = "max-collect", value_name = "SIZE", value_parser = parse_size, default_value = "16M")]
    max_collect: u64,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Start the sandbox, print its id and return without waiting.
    #[arg(long, short)]
    detach: bool,
    /// Print the verdict as one JSON object instead of forwarding the output.
    #[arg(long)]
    json: bool,
    /// Also write the verdict to FILE in isolate's meta-file format.
    #[arg(long)]
    meta: Option<PathBuf>,
    #[command(flatten)]
    sandbox: SandboxArgs,
}

#[derive(clap::Args)]
struct SandboxArgs {
    /// Sandbox id (default: generated).
    #[arg(long)]
    name: Option<String>,
    /// The read-only root: an image directory, or an image of the image store by name or
    /// digest (see `runbox image`). Default: the host's /usr and /lib*. With a stored image
    /// PROGRAM may be left out: the image's Entrypoint and Cmd run.
    #[arg(long)]
    image: Option<String>,
    /// Replace a stored image's Entrypoint with this program ("" for none).
    #[arg(long)]
    entrypoint: Option<String>,
    /// User (and group) inside the sandbox, UID[:GID]. Default: a uid of the sandbox's own,
    /// leased from the state root's range (--uid-range, default 60000:1000) for its life,
    /// with the gid of the same number.
    #[arg(long, value_parser = parse_user)]
    user: Option<(u32, u32)>,
    /// Memory limit, e.g. 256M (K, M, G are powers of 1024).
    #[arg(long, short = 'm', value_parser = parse_size)]
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
    /// Size of the writable layer, /tmp included.
    #[arg(long, value_parser = parse_size)]
    scratch: Option<u64>,
    /// Environment variable NAME=VALUE (repeatable); added to the default environment (PATH).
    #[arg(long = "env", short = 'e')]
    env: Vec<String>,
    /// Start from an empty environment (no PATH): only the --env variables are set.
    #[arg(long = "env-clear")]
    env_clear: bool,
    /// Working directory inside the sandbox (default /work).
    #[arg(long, short = 'w', visible_alias = "workdir")]
    cwd: Option<String>,
    /// Extra CPU time before the kill; past --time is still a time limit.
    #[arg(long = "time-grace", visible_alias = "extra-time", value_parser = parse_secs)]
    time_grace: Option<Duration>,
    /// Read-only bind of a host file or directory: HOST:DEST (repeatable).
    #[arg(long, value_parser = parse_pair)]
    bind: Vec<(String, String)>,
    /// Read-write bind of a host directory (a work dir kept between runs): HOST:DEST
    /// (repeatable; nosuid, nodev).
    #[arg(long = "bind-rw", value_parser = parse_pair)]
    bind_rw: Vec<(String, String)>,
    /// Copy a host file or directory into the writable layer: HOST:DEST (repeatable).
    #[arg(long, value_parser = parse_pair)]
    copy: Vec<(String, String)>,
    /// After the run, copy a file out: INSIDE:HOST_DEST (repeatable).
    #[arg(long, value_parser = parse_pair)]
    collect: Vec<(String, String)>,
    /// Feed the program's stdin from this host file (default: /dev/null).
    #[arg(long)]
    stdin: Option<PathBuf>,
    /// The program and its arguments: everything from PROGRAM on is the program's, words
    /// starting with `-` included.
    #[arg(value_name = "PROGRAM", trailing_var_arg = true)]
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

fn parse_pair(s: &str) -> Result<(String, String), String> {
    s.split_once(':')
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .ok_or_else(|| format!("{s:?} is not FROM:TO"))
}

fn parse_user(s: &str) -> Result<(u32, u32), String> {
    let (u, g) = s.split_once(':').unwrap_or((s, s));
    match (u.parse(), g.parse()) {
        (Ok(u), Ok(g)) => Ok((u, g)),
        _ => Err(format!("{s:?} is not UID[:GID]")),
    }
}

fn build_command(a: &SandboxArgs) -> Result<runbox::Command, Failure> {
    // An existing directory is an image directory; anything else names a stored image.
    let stored = a
        .image
        .as_ref()
        .filter(|i| !std::path::Path::new(i).is_dir());
    let mut cmd = match (a.command.split_first(), stored) {
        (Some((program, args)), _) => {
            let mut cmd = runbox::Command::new(program.clone());
            cmd.args(args.iter().cloned());
            cmd
        }
        (None, Some(reference)) => runbox::Command::from_image(reference.clone()),
        (None, None) => return Err(Failure(
            "a PROGRAM is required (or --image with a stored image, whose Entrypoint and Cmd run)"
                .into(),
        )),
    };
    if let Some(n) = &a.name {
        cmd.name(n.clone());
    }
    match (&a.image, stored) {
        (_, Some(reference)) => {
            cmd.stored_image(reference.clone());
        }
        (Some(dir), None) => {
            cmd.image(dir.clone());
        }
        (None, None) => {}
    }
    if let Some(e) = &a.entrypoint {
        if stored.is_none() {
            return Err(Failure(
                "--entrypoint needs --image with a stored image".into(),
            ));
        }
        cmd.entrypoint(if e.is_empty() {
            vec![]
        } else {
            vec![e.clone()]
        });
    }
    if let Some((u, g)) = a.user {
        cmd.user(u, g);
    }
    if let Some(c) = &a.cwd {
        cmd.current_dir(c.clone());
    }
    if a.env_clear {
        cmd.env_clear();
    }
    for kv in &a.env {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| format!("--env {kv:?} is not NAME=VALUE"))?;
        cmd.env(k, v);
    }
    for (host, dest) in &a.bind {
        cmd.bind_ro(host, dest.clone());
    }
    for (host, dest) in &a.bind_rw {
        cmd.bind_rw(host, dest.clone());
    }
    for (host, dest) in &a.copy {
        cmd.copy_in(host, dest.clone());
    }
    for (inside, host) in &a.collect {
        let host = std::path::absolute(host).map_err(|e| format!("{host}: {e}"))?;
        cmd.collect(inside.clone(), host);
    }
    if let Some(f) = &a.stdin {
        cmd.stdin(runbox::Stdin::File(f.clone()));
    }
    let l = cmd.limits_mut();
    if let Some(g) = a.time_grace {
        l.cpu_time_grace = g;
    }
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
    // isolate's command line: `runbox isolate ...`, or this binary run as `isolate`.
    let argv: Vec<String> = std::env::args().collect();
    let invoked_as = argv.first().map(|a| a.rsplit('/').next().unwrap_or(a));
    if invoked_as == Some("isolate") {
        return isolate::main(&argv[1..]);
    }
    if argv.get(1).map(String::as_str) == Some("isolate") {
        return isolate::main(&argv[2..]);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Bad options are runbox's failure (125), as in docker and podman; help is not.
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 125 } else { 0 });
        }
    };
    let root_dir = cli.root.unwrap_or_else(runbox::Root::default_dir);
    let image_store = cli
        .image_store
        .clone()
        .unwrap_or_else(runbox::ImageStore::default_dir);
    let verb = match cli.verb {
        Verb::Check { json } => {
            // Reads the host only: no state root is created.
            return exit(check(json, &root_dir, cli.uid_range));
        }
        // The image store only: no state root either.
        Verb::Image { verb } => return exit(image::main(&image_store, verb)),
        verb => verb,
    };
    let spares = (cli.spares, cli.spare_idle);
    // One command per process, except a worker, which keeps a spare monitor per sandbox it
    // runs at once.
    #[cfg(feature = "worker")]
    let own_spares = match &verb {
        Verb::Worker(a) => a.concurrency,
        _ => 0,
    };
    #[cfg(not(feature = "worker"))]
    let own_spares = 0;
    let root = match open_root(
        &root_dir,
        cli.cgroup_parent,
        cli.cgroup_base,
        cli.uid_range,
        spares,
        image_store,
        own_spares,
    ) {
        Ok(root) => root,
        Err(e) => return exit(Err(e)),
    };
    let outcome = match verb {
        Verb::Run(args) => run(&root, &args),
        Verb::Create(args) => create(&root, &args),
        Verb::Start { id } => start(&root, &id),
        Verb::State { id } => state(&root, &id),
        Verb::List { json } => list(&root, json),
        Verb::Exec(args) => exec::exec(&root, args),
        Verb::Wait {
            id,
            exec: Some(n),
            timeout,
            json,
        } => exec::wait_exec(&root, &id, n, timeout, json),
        Verb::Wait {
            id,
            exec: None,
            timeout,
            json,
        } => wait(&root, &id, timeout, json),
        Verb::Logs { id } => logs(&root, &id),
        Verb::Kill { id, signal } => kill(&root, &id, signal.as_deref()),
        Verb::Pause { id } => pause(&root, &id, true),
        Verb::Resume { id } => pause(&root, &id, false),
        Verb::Stats {
            id,
            json,
            follow,
            interval,
        } => stats(&root, &id, json, follow.then_some(interval)),
        Verb::Delete { force, id } => delete(&root, &id, force),
        Verb::Gc { release_spares } => gc(&root, release_spares),
        #[cfg(feature = "worker")]
        Verb::Worker(args) => worker(&root, args),
        Verb::Check { .. } | Verb::Image { .. } => {
            unreachable!("handled before the root is opened")
        }
    };
    // This process ends here: the spares it started finish starting without it.
    root.stop_waiting_for_spares();
    exit(outcome)
}

/// A failure of runbox itself (not of the program): printed once as `runbox: MESSAGE`, exit 125.
struct Failure(String);

impl From<runbox::Error> for Failure {
    fn from(e: runbox::Error) -> Failure {
        // The kind, the message and every cause, once.
        Failure(e.chain())
    }
}

impl From<String> for Failure {
    fn from(msg: String) -> Failure {
        Failure(msg)
    }
}

/// What every verb returns: the exit status, or runbox's own failure.
type Outcome = Result<ExitCode, Failure>;

fn exit(outcome: Outcome) -> ExitCode {
    outcome.unwrap_or_else(|Failure(msg)| {
        eprintln!("runbox: {msg}");
        ExitCode::from(125)
    })
}

fn open_root(
    dir: &std::path::Path,
    cgroup_parent: Option<String>,
    cgroup_base: Option<String>,
    uid_range: Option<(u32, u32)>,
    (parked, idle): (usize, Duration),
    image_store: PathBuf,
    own_spares: usize,
) -> Result<runbox::Root, Failure> {
    let mut opts = runbox::RootOptions::new();
    opts.image_store(image_store);
    // One command per process: a spare of this process's own would only be started to exit
    // again; parked ones serve the next process.
    // A long-lived process with spares of its own parks none for others.
    let parked = if own_spares > 0 { 0 } else { parked };
    opts.spare_monitors(own_spares)
        .parked_spares(parked)
        .parked_idle(idle);
    if let Some(p) = cgroup_parent {
        opts.cgroup_prefix(p);
    }
    if let Some(b) = cgroup_base {
        opts.cgroup_base(b);
    }
    if let Some((first, count)) = uid_range {
        opts.uid_range(first, count);
    }
    Ok(opts.open(dir)?)
}

/// `FIRST:COUNT` of `--uid-range`.
fn parse_uid_range(s: &str) -> Result<(u32, u32), String> {
    let (first, count) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?} is not FIRST:COUNT"))?;
    let num = |v: &str| {
        v.parse::<u32>()
            .map_err(|e| format!("{v:?} in {s:?} is not a uid: {e}"))
    };
    Ok((num(first)?, num(count)?))
}

/// `runbox worker`: one JSON line per event on stdout. SIGTERM and SIGINT keep their default
/// action: the worker ends at once, its sandboxes (in sessions of their own) go on.
#[cfg(feature = "worker")]
fn worker(root: &runbox::Root, a: WorkerArgs) -> Outcome {
    use std::io::Write;
    let mut opts = runbox::WorkerOptions::new(&a.redis, &a.stream, &a.group, root);
    if let Some(c) = a.consumer {
        opts.consumer = c;
    }
    if let Some(r) = a.results {
        opts.results = r;
    }
    opts.concurrency = a.concurrency;
    opts.result_keys = a.result_keys;
    opts.lease = a.lease;
    opts.max_memory_bytes = a.max_memory;
    if let Some(p) = a.max_pids {
        opts.max_pids = p;
    }
    opts.max_cpu_time = a.max_time;
    opts.max_wall_time = a.max_wall_time;
    opts.max_output_bytes = a.max_output;
    opts.max_collect_bytes = a.max_collect;
    // A long-lived process: spare monitors of its own, one per sandbox at once.
    let mut w = runbox::Worker::new(root.clone(), opts)?;
    let stop = std::sync::atomic::AtomicBool::new(false);
    let stdout = std::io::stdout();
    w.run(&stop, &mut |event| {
        if let Ok(line) = serde_json::to_string(event) {
            let mut out = stdout.lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

fn run(root: &runbox::Root, args: &RunArgs) -> Outcome {
    let cmd = build_command(&args.sandbox)?;
    if args.detach {
        let sandbox = root.spawn(&cmd)?;
        println!("{}", sandbox.id());
        return Ok(ExitCode::SUCCESS);
    }
    let verdict = root.run(&cmd)?;
    if let Some(meta) = &args.meta {
        std::fs::write(meta, verdict.isolate_meta())
            .map_err(|e| format!("write {}: {e}", meta.display()))?;
    }
    report(&verdict, args.json)
}

fn create(root: &runbox::Root, args: &SandboxArgs) -> Outcome {
    let sandbox = root.create(&build_command(args)?)?;
    println!("{}", sandbox.id());
    Ok(ExitCode::SUCCESS)
}

fn start(root: &runbox::Root, id: &str) -> Outcome {
    root.sandbox(id)?.start()?;
    Ok(ExitCode::SUCCESS)
}

fn state(root: &runbox::Root, id: &str) -> Outcome {
    print_json(&root.sandbox(id)?.info()?)
}

fn list(root: &runbox::Root, json: bool) -> Outcome {
    let listing = root.list()?;
    if json {
        let items: Vec<serde_json::Value> = listing
            .iter()
            .map(|l| match &l.info {
                Ok(info) => serde_json::to_value(info).unwrap_or_default(),
                Err(e) => serde_json::json!({"id": l.id, "error": e.chain()}),
            })
            .collect();
        return print_json(&items);
    }
    println!("{:<36} {:<9} {:>8} COMMAND", "ID", "STATUS", "PID");
    for l in &listing {
        match &l.info {
            Ok(i) => println!(
                "{:<36} {:<9} {:>8} {}",
                i.id,
                format!("{:?}", i.state).to_lowercase(),
                i.init_pid.map_or("-".to_string(), |p| p.to_string()),
                i.command.join(" ")
            ),
            Err(e) => println!("{:<36} {:<9} {:>8} {}", l.id, "error", "-", e.chain()),
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn wait(root: &runbox::Root, id: &str, timeout: Option<Duration>, json: bool) -> Outcome {
    let mut sandbox = root.sandbox(id)?;
    let verdict = match timeout {
        None => sandbox.wait()?,
        Some(t) => match sandbox.wait_timeout(t)? {
            Some(v) => v,
            None => {
                eprintln!("runbox: sandbox {id} still runs after {t:?}");
                return Ok(ExitCode::from(124));
            }
        },
    };
    report(&verdict, json)
}

fn logs(root: &runbox::Root, id: &str) -> Outcome {
    use std::io::Write;
    let (out, err) = root.sandbox(id)?.logs()?;
    let _ = std::io::stdout().write_all(&out);
    let _ = std::io::stderr().write_all(&err);
    Ok(ExitCode::SUCCESS)
}

fn kill(root: &runbox::Root, id: &str, signal: Option<&str>) -> Outcome {
    let sig = parse_signal(signal.unwrap_or("TERM"))?;
    root.sandbox(id)?.kill(sig)?;
    Ok(ExitCode::SUCCESS)
}

fn pause(root: &runbox::Root, id: &str, pause: bool) -> Outcome {
    let sandbox = root.sandbox(id)?;
    if pause {
        sandbox.pause()?;
    } else {
        sandbox.resume()?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints the sandbox's figures once, or every `follow` interval until it ends.
fn stats(root: &runbox::Root, id: &str, json: bool, follow: Option<Duration>) -> Outcome {
    use std::io::Write;
    let sandbox = root.sandbox(id)?;
    loop {
        let stats = match sandbox.stats() {
            Ok(s) => s,
            // Followed to its end: done.
            Err(e)
                if follow.is_some()
                    && e.kind() == runbox::ErrorKind::InvalidState
                    && sandbox
                        .state()
                        .is_ok_and(|s| s == runbox::SandboxState::Stopped) =>
            {
                return Ok(ExitCode::SUCCESS)
            }
            Err(e) if e.kind() == runbox::ErrorKind::NotFound && follow.is_some() => {
                return Ok(ExitCode::SUCCESS); // removed on its end
            }
            Err(e) => return Err(e.into()),
        };
        let line = if json {
            let mut v = serde_json::to_value(stats).unwrap_or_default();
            v["id"] = id.into();
            v.to_string()
        } else {
            format!(
                "{id} {} cpu={:.3}s user={:.3}s system={:.3}s mem={} peak={} pids={} read={} written={}",
                if stats.paused { "paused" } else { "live" },
                stats.cpu_time_us as f64 / 1e6,
                stats.cpu_user_us as f64 / 1e6,
                stats.cpu_system_us as f64 / 1e6,
                stats.memory_bytes,
                stats.memory_peak_bytes,
                stats.pids,
                stats.block_read_bytes,
                stats.block_write_bytes,
            )
        };
        let mut out = std::io::stdout().lock();
        // A closed stdout (`| head`) ends the follow.
        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            return Ok(ExitCode::SUCCESS);
        }
        drop(out);
        match follow {
            Some(every) => std::thread::sleep(every),
            None => return Ok(ExitCode::SUCCESS),
        }
    }
}

fn delete(root: &runbox::Root, id: &str, force: bool) -> Outcome {
    root.sandbox(id)?.delete(force)?;
    Ok(ExitCode::SUCCESS)
}

fn gc(root: &runbox::Root, release_spares: bool) -> Outcome {
    if release_spares {
        root.release_spares();
    }
    let report = root.gc();
    for id in &report.removed {
        println!("removed lost sandbox {id}");
    }
    for what in &report.cleaned {
        println!("cleaned {what}");
    }
    for err in &report.errors {
        eprintln!("runbox: gc: {err}");
    }
    Ok(if report.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(125)
    })
}

fn check(json: bool, root: &std::path::Path, uid_range: Option<(u32, u32)>) -> Outcome {
    let mut checks = runbox::check_host();
    checks.push(runbox::check_state_root(root));
    let (first, count) =
        uid_range.unwrap_or((runbox::DEFAULT_FIRST_UID, runbox::DEFAULT_UID_COUNT));
    checks.push(runbox::check_uid_range(first, count));
    let ok = checks.iter().all(|c| c.ok || !c.required);
    if json {
        print_json(&checks)?;
    } else {
        for c in &checks {
            let word = match (c.ok, c.required) {
                (true, _) => "ok",
                (false, true) => "MISSING",
                (false, false) => "optional",
            };
            println!("{word:<9} {:<16} {}", c.name, c.detail);
        }
    }
    Ok(ExitCode::from(if ok { 0 } else { 1 }))
}

fn print_json(value: &impl serde::Serialize) -> Outcome {
    let text = serde_json::to_string(value).map_err(|e| e.to_string())?;
    println!("{text}");
    Ok(ExitCode::SUCCESS)
}

/// A signal by name (`TERM`, `sigterm`, `SIGTERM`) or number (`15`).
fn parse_signal(s: &str) -> Result<Signal, String> {
    s.parse::<Signal>().map_err(|e| e.to_string())
}

/// Prints a verdict as `run` does and gives its exit status.
fn report(verdict: &runbox::Verdict, json: bool) -> Outcome {
    if json {
        return print_json(verdict);
    }
    use std::io::Write;
    let _ = std::io::stdout().write_all(verdict.stdout.as_bytes());
    let _ = std::io::stderr().write_all(verdict.stderr.as_bytes());
    if let Some(msg) = verdict
        .message
        .as_ref()
        .filter(|_| verdict.limit.is_some() || verdict.status == runbox::Status::InternalError)
    {
        eprintln!("runbox: {msg}");
    }
    let status = u8::try_from(verdict.shell_status().clamp(0, 255)).unwrap_or(125);
    Ok(ExitCode::from(status))
}
