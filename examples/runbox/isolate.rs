//! `runbox isolate ...`, or the runbox binary invoked as `isolate`: isolate 2.x's command line
//! (`isolate.1` of ioi/isolate) over runbox's boxes, for graders that drive isolate (Judge0,
//! CMS) and should not change a line.
//!
//! Options are parsed as GNU getopt_long does (`-b1`, `-b 1`, `--box-id=1`, `--box-id 1`,
//! unique prefixes of long names, `-p` and `--processes` with an attached value only), except
//! that parsing stops at the first word that is not an option, so a program's own options are
//! never taken for isolate's. Exit status: 0 when the program finished correctly, 1 when it did
//! not (RE, SG, TO), 2 when the sandbox itself failed or the command line is wrong.
//!
//! Settings isolate keeps in its configuration file come from the environment: `RUNBOX_ROOT`
//! (state root; boxes live in `<root>/.boxes/<id>`), `RUNBOX_UID_RANGE` (`FIRST:COUNT`, box
//! `N` runs as `FIRST + N`) and `RUNBOX_CGROUP_PARENT` (as `runbox --cgroup-parent`).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// isolate's default open-files limit (`-n`).
const DEFAULT_OPEN_FILES: u64 = 64;
/// What `-n 0` (unlimited open files) becomes: the kernel's default `nr_open`.
const UNLIMITED_OPEN_FILES: u64 = 1 << 20;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Arg {
    No,
    Required,
    Optional,
}

/// isolate's options: (short, long, argument). Every one is parsed; those runbox cannot
/// honour are refused after parsing, by name.
const OPTIONS: &[(Option<char>, &str, Arg)] = &[
    (None, "as-uid", Arg::Required),
    (None, "as-gid", Arg::Required),
    (Some('b'), "box-id", Arg::Required),
    (Some('c'), "chdir", Arg::Required),
    (None, "cg", Arg::No),
    (None, "cg-mem", Arg::Required),
    (None, "cg-timing", Arg::No),
    (None, "no-cg-timing", Arg::No),
    (None, "check-config", Arg::No),
    (None, "cleanup", Arg::No),
    (None, "core", Arg::Required),
    (Some('d'), "dir", Arg::Required),
    (Some('D'), "no-default-dirs", Arg::No),
    (Some('f'), "fsize", Arg::Required),
    (Some('E'), "env", Arg::Required),
    (Some('x'), "extra-time", Arg::Required),
    (Some('e'), "full-env", Arg::No),
    (None, "inherit-fds", Arg::No),
    (None, "init", Arg::No),
    (Some('m'), "mem", Arg::Required),
    (Some('M'), "meta", Arg::Required),
    (Some('p'), "processes", Arg::Optional),
    (Some('q'), "quota", Arg::Required),
    (None, "run", Arg::No),
    (None, "share-net", Arg::No),
    (Some('s'), "silent", Arg::No),
    (Some('k'), "stack", Arg::Required),
    (Some('n'), "open-files", Arg::Required),
    (None, "print-cg-root", Arg::No),
    (None, "special-files", Arg::No),
    (Some('r'), "stderr", Arg::Required),
    (None, "stderr-to-stdout", Arg::No),
    (Some('i'), "stdin", Arg::Required),
    (Some('o'), "stdout", Arg::Required),
    (None, "syscalls", Arg::Required),
    (Some('t'), "time", Arg::Required),
    (None, "tty-hack", Arg::No),
    (Some('v'), "verbose", Arg::No),
    (None, "version", Arg::No),
    (None, "wait", Arg::No),
    (Some('w'), "wall-time", Arg::Required),
];

/// Why runbox refuses an isolate option it parsed.
fn refusal(long: &str) -> Option<&'static str> {
    Some(match long {
        "share-net" => {
            "runbox sandboxes have no network yet; --share-net would give them the host's"
        }
        "inherit-fds" => "runbox passes a sandbox no descriptor but its three streams",
        "tty-hack" => "runbox never gives a sandbox the caller's terminal",
        "special-files" => {
            "runbox removes what is not a regular file or a directory from a box after each run"
        }
        "as-uid" | "as-gid" => "boxes belong to the user who initialized them",
        _ => return None,
    })
}

/// A command-line error: printed, exit status 2 (isolate's `usage`).
pub(crate) struct Usage(pub(crate) String);

/// Options in the order given: (long name, value).
pub(crate) type Opts = Vec<(&'static str, Option<String>)>;

/// The parsed command line: options in order, then the program words.
pub(crate) fn parse(args: &[String]) -> Result<(Opts, Vec<String>), Usage> {
    let mut opts = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let word = &args[i];
        i += 1;
        if word == "--" {
            break;
        }
        if let Some(body) = word.strip_prefix("--") {
            let (name, attached) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (body, None),
            };
            let exact = OPTIONS.iter().find(|o| o.1 == name);
            let found = match exact {
                Some(o) => *o,
                None => {
                    let prefixed: Vec<_> =
                        OPTIONS.iter().filter(|o| o.1.starts_with(name)).collect();
                    match prefixed.as_slice() {
                        [one] => **one,
                        [] => return Err(Usage(format!("unrecognized option '--{name}'"))),
                        _ => return Err(Usage(format!("option '--{name}' is ambiguous"))),
                    }
                }
            };
            let value = match (found.2, attached) {
                (Arg::No, Some(_)) => {
                    return Err(Usage(format!(
                        "option '--{}' doesn't allow an argument",
                        found.1
                    )))
                }
                (Arg::Required, None) => {
                    let v = args.get(i).cloned().ok_or_else(|| {
                        Usage(format!("option '--{}' requires an argument", found.1))
                    })?;
                    i += 1;
                    Some(v)
                }
                (_, v) => v,
            };
            opts.push((found.1, value));
            continue;
        }
        if word.len() > 1 && word.starts_with('-') {
            let chars: Vec<char> = word[1..].chars().collect();
            let mut j = 0;
            while j < chars.len() {
                let c = chars[j];
                j += 1;
                let found = OPTIONS
                    .iter()
                    .find(|o| o.0 == Some(c))
                    .ok_or_else(|| Usage(format!("invalid option -- '{c}'")))?;
                let rest: String = chars[j..].iter().collect();
                let value = match found.2 {
                    Arg::No => None,
                    Arg::Optional => {
                        j = chars.len();
                        (!rest.is_empty()).then_some(rest)
                    }
                    Arg::Required => {
                        j = chars.len();
                        if rest.is_empty() {
                            let v = args.get(i).cloned().ok_or_else(|| {
                                Usage(format!("option requires an argument -- '{c}'"))
                            })?;
                            i += 1;
                            Some(v)
                        } else {
                            Some(rest)
                        }
                    }
                };
                opts.push((found.1, value));
            }
            continue;
        }
        // The first word that is no option ends them (the program, without `--`).
        i -= 1;
        break;
    }
    Ok((opts, args[i..].to_vec()))
}

/// What the command line asks for.
#[derive(Default)]
pub(crate) struct Request {
    mode: Option<&'static str>,
    box_id: u32,
    cg: bool,
    wants_cg: Vec<&'static str>,
    meta: Option<PathBuf>,
    stdin: Option<String>,
    stdout: Option<String>,
    stderr: Option<String>,
    stderr_to_stdout: bool,
    chdir: Option<String>,
    silent: bool,
    verbose: u32,
    wait: bool,
    mem_kb: Option<u64>,
    cg_mem_kb: Option<u64>,
    time: Option<f64>,
    wall_time: Option<f64>,
    extra_time: Option<f64>,
    stack_kb: Option<u64>,
    open_files: Option<u64>,
    fsize_kb: Option<u64>,
    core_kb: Option<u64>,
    /// The sandbox's pids limit, its init included: 2 for isolate's default of one process;
    /// `-p` alone or `-p0` (any number) is the host's ceiling, [`runbox::pids_ceiling`].
    pids: Option<u64>,
    /// `-q BLOCKS,INODES`, applied by `--init` (as in isolate): bytes, inodes.
    quota: Option<(u64, u64)>,
    full_env: bool,
    env_rules: Vec<String>,
    dir_rules: Vec<String>,
    no_default_dirs: bool,
}

fn number(name: &str, v: &str) -> Result<u64, Usage> {
    v.parse::<u64>()
        .ok()
        .filter(|n| *n <= i32::MAX as u64)
        .ok_or_else(|| Usage(format!("Invalid numeric parameter for --{name}: {v}")))
}

fn seconds(name: &str, v: &str) -> Result<f64, Usage> {
    v.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .ok_or_else(|| Usage(format!("Invalid time for --{name}: {v}")))
}

impl Request {
    pub(crate) fn from_args(opts: Opts) -> Result<Request, Usage> {
        let mut r = Request::default();
        for (name, value) in opts {
            if let Some(why) = refusal(name) {
                return Err(Usage(format!("--{name} is not supported: {why}")));
            }
            let v = value.clone().unwrap_or_default();
            match name {
                "init" | "run" | "cleanup" | "version" | "print-cg-root" | "check-config" => {
                    if r.mode.is_some_and(|m| m != name) {
                        return Err(Usage("Only one command is allowed.".into()));
                    }
                    r.mode = Some(name);
                }
                "box-id" => {
                    r.box_id = u32::try_from(number(name, &v)?).map_err(|e| Usage(e.to_string()))?
                }
                "cg" => r.cg = true,
                // runbox always times the whole control group (the program and every
                // process it starts); isolate without it times the program's process tree.
                "cg-timing" | "no-cg-timing" => {}
                "cg-mem" => {
                    r.cg_mem_kb = Some(number(name, &v)?);
                    r.wants_cg.push(name);
                }
                "meta" => r.meta = Some(PathBuf::from(v)),
                "stdin" => r.stdin = Some(v),
                "stdout" => r.stdout = Some(v),
                "stderr" => {
                    r.stderr = Some(v);
                    r.stderr_to_stdout = false;
                }
                "stderr-to-stdout" => {
                    r.stderr = None;
                    r.stderr_to_stdout = true;
                }
                "chdir" => r.chdir = Some(v),
                "silent" => r.silent = true,
                "verbose" => r.verbose += 1,
                "wait" => r.wait = true,
                "mem" => r.mem_kb = Some(number(name, &v)?),
                "time" => r.time = Some(seconds(name, &v)?),
                "wall-time" => r.wall_time = Some(seconds(name, &v)?),
                "extra-time" => r.extra_time = Some(seconds(name, &v)?),
                "stack" => r.stack_kb = Some(number(name, &v)?),
                "open-files" => r.open_files = Some(number(name, &v)?),
                "fsize" => r.fsize_kb = Some(number(name, &v)?),
                "core" => r.core_kb = Some(number(name, &v)?),
                "processes" => {
                    // The sandbox's init is one of the control group's processes.
                    let ceiling = runbox::pids_ceiling();
                    r.pids = Some(match value.as_deref().map(|v| number(name, v)).transpose()? {
                        None | Some(0) => ceiling,
                        Some(n) if n < ceiling => n + 1,
                        Some(n) => {
                            return Err(Usage(format!(
                                "Invalid numeric parameter for --{name}: {n} is above this host's ceiling of {} processes (half of kernel.pid_max, less the sandbox's init)",
                                ceiling - 1
                            )))
                        }
                    })
                }
                "quota" => {
                    let parsed = v
                        .split_once(',')
                        .and_then(|(b, i)| Some((number(name, b).ok()?, number(name, i).ok()?)));
                    let (blocks, inodes) = parsed.ok_or_else(|| {
                        Usage(format!("Invalid quota: {v} (expected BLOCKS,INODES)"))
                    })?;
                    r.quota = Some((blocks * 1024, inodes));
                }
                // isolate's `syscall_flags`: each set bit forbids more. runbox's filter
                // already forbids keyrings (1), vsock (2), io_uring (8) and other
                // architectures (16) whatever the value, and is never loosened; flag 4
                // would also forbid flock(2), which runbox allows.
                "syscalls" => {
                    let flags = number(name, &v)?;
                    if flags & 4 != 0 {
                        return Err(Usage(
                            "--syscalls with flag 4 is not supported: runbox denies byte-range and OFD locks and leases but allows flock(2)".into(),
                        ));
                    }
                }
                "full-env" => r.full_env = true,
                "env" => r.env_rules.push(v),
                "dir" => r.dir_rules.push(v),
                "no-default-dirs" => r.no_default_dirs = true,
                other => return Err(Usage(format!("--{other} is not supported"))),
            }
        }
        if !r.wants_cg.is_empty() && !r.cg {
            return Err(Usage(
                "Options related to control groups require --cg to be set.".into(),
            ));
        }
        Ok(r)
    }
}

/// The front end's entry: `args` are the words after `isolate` (or after the name it was
/// invoked as).
pub fn main(args: &[String]) -> ExitCode {
    let request =
        parse(args).and_then(|(opts, program)| Request::from_args(opts).map(|r| (r, program)));
    let (req, program) = match request {
        Ok(r) => r,
        Err(Usage(msg)) => {
            eprintln!("{msg}");
            eprintln!("Usage: isolate [<options>] <command>; see runbox's README, \"switching from isolate\"");
            return ExitCode::from(2);
        }
    };
    let outcome = match req.mode {
        None => Err(Fatal(
            "Please specify an isolate command (e.g. --init, --run).".into(),
        )),
        Some("version") => {
            println!(
                "runbox {}: the isolate 2.x command line over runbox sandboxes",
                env!("CARGO_PKG_VERSION")
            );
            Ok(ExitCode::SUCCESS)
        }
        Some(mode) => {
            let arity = match mode {
                "run" if program.is_empty() => Some("--run mode requires a command to run"),
                "run" => None,
                _ if !program.is_empty() => Some("this mode takes no parameters"),
                _ => None,
            };
            match arity {
                Some(msg) => Err(Fatal(msg.into())),
                None => open_root().and_then(|root| {
                    let outcome = match mode {
                        "init" => init(&root, &req),
                        "cleanup" => cleanup(&root, &req),
                        "print-cg-root" => print_cg_root(&root),
                        // The settings came from the environment and the root opened: valid.
                        "check-config" => Ok(ExitCode::SUCCESS),
                        _ => run(&root, &req, &program),
                    };
                    // This process ends here: the spares it started finish starting alone.
                    root.stop_waiting_for_spares();
                    outcome
                }),
            }
        }
    };
    outcome.unwrap_or_else(|Fatal(msg)| {
        if let Some(meta) = &req.meta {
            let _ = std::fs::write(
                meta,
                format!("status:XX\nmessage:{}\n", msg.replace('\n', " ")),
            );
        }
        eprintln!("{msg}");
        ExitCode::from(2)
    })
}

/// A failure of the sandbox itself: printed even under `-s`, exit status 2, `status:XX`.
struct Fatal(String);

impl From<runbox::Error> for Fatal {
    fn from(e: runbox::Error) -> Fatal {
        Fatal(e.chain())
    }
}

fn open_root() -> Result<runbox::Root, Fatal> {
    let mut opts = runbox::RootOptions::new();
    // One run per process: one pre-built sandbox of the run's shape stays parked in the
    // state root for the next call (RUNBOX_SPARES=0: none).
    let parked = match std::env::var("RUNBOX_SPARES") {
        Ok(n) => n
            .parse::<usize>()
            .map_err(|_| Fatal(format!("RUNBOX_SPARES={n:?} is not a number")))?,
        Err(_) => 1,
    };
    opts.spare_monitors(0).parked_spares(parked);
    if let Some(range) = std::env::var_os("RUNBOX_UID_RANGE") {
        let range = range.to_string_lossy();
        let parsed = range
            .split_once(':')
            .and_then(|(f, c)| Some((f.parse::<u32>().ok()?, c.parse::<u32>().ok()?)));
        let (first, count) = parsed
            .ok_or_else(|| Fatal(format!("RUNBOX_UID_RANGE={range:?} is not FIRST:COUNT")))?;
        opts.uid_range(first, count);
    }
    if let Some(parent) = std::env::var_os("RUNBOX_CGROUP_PARENT") {
        opts.cgroup_prefix(parent.to_string_lossy().into_owned());
    }
    Ok(opts.open(runbox::Root::default_dir())?)
}

fn init(root: &runbox::Root, req: &Request) -> Result<ExitCode, Fatal> {
    let (uid, gid) = (
        nix::unistd::getuid().as_raw(),
        nix::unistd::getgid().as_raw(),
    );
    // isolate's quota applies at --init; without one the box gets runbox's default cap.
    let quota = req
        .quota
        .map_or_else(runbox::BoxQuota::default, |(bytes, inodes)| {
            runbox::BoxQuota::new(bytes, inodes)
        });
    let b = root.init_box_with_quota(req.box_id, uid, gid, quota)?;
    if req.verbose > 0 {
        eprintln!("Preparing sandbox {} (uid {})", req.box_id, b.user().0);
    }
    println!("{}", b.dir().display());
    Ok(ExitCode::SUCCESS)
}

fn cleanup(root: &runbox::Root, req: &Request) -> Result<ExitCode, Fatal> {
    root.cleanup_box(req.box_id)?;
    if req.verbose > 0 {
        eprintln!("Deleting sandbox {}", req.box_id);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_cg_root(root: &runbox::Root) -> Result<ExitCode, Fatal> {
    let unified = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let base = if unified {
        "/sys/fs/cgroup"
    } else {
        "/sys/fs/cgroup/memory"
    };
    println!("{base}/{}", root.cgroup_prefix());
    Ok(ExitCode::SUCCESS)
}

/// A path the program sees: absolute as given, else relative to `/box` (isolate resolves
/// redirections and `--chdir` from the box, where the program starts).
fn inside(p: &str) -> String {
    if p.starts_with('/') {
        p.to_string()
    } else {
        format!("/box/{}", p.trim_start_matches("./"))
    }
}

/// The environment isolate builds: `LIBC_FATAL_STDERR_=1`, the caller's with `-e`, then each
/// `-E` rule in order (`VAR` inherits, `VAR=VALUE` sets, `VAR=` removes).
fn environment(req: &Request) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    if req.full_env {
        env.extend(std::env::vars());
    }
    env.insert("LIBC_FATAL_STDERR_".to_string(), "1".to_string());
    for rule in &req.env_rules {
        match rule.split_once('=') {
            Some((k, "")) => {
                env.remove(k);
            }
            Some((k, v)) => {
                env.insert(k.to_string(), v.to_string());
            }
            None => match std::env::var(rule) {
                Ok(v) => {
                    env.insert(rule.clone(), v);
                }
                Err(_) => {
                    env.remove(rule);
                }
            },
        }
    }
    env
}

/// The default rules isolate starts from, which runbox's host image already provides.
const DEFAULT_DIRS: &[&str] = &["/bin", "/dev", "/lib", "/lib64", "/usr", "/box", "/proc"];

/// Applies `--dir` rules to `cmd`. Relative sources are relative to the box directory, as in
/// isolate (which applies them from there).
fn apply_dirs(cmd: &mut runbox::Command, req: &Request, box_dir: &Path) -> Result<(), Fatal> {
    // Later rules for the same inside path replace earlier ones; `IN=` removes.
    // (inside path, (outside path, options) or none to remove the rule)
    type Rule = (String, Option<(PathBuf, Vec<String>)>);
    let mut rules: Vec<Rule> = Vec::new();
    for rule in &req.dir_rules {
        let (spec, options) = match rule.split_once(':') {
            Some((s, o)) => (s, o.split(',').map(str::to_string).collect()),
            None => (rule.as_str(), Vec::new()),
        };
        let (inside_path, outside) = match spec.split_once('=') {
            Some((i, "")) => (i, None),
            Some((i, o)) => (i, Some(PathBuf::from(o))),
            None => (
                spec,
                Some(PathBuf::from(format!("/{}", spec.trim_start_matches('/')))),
            ),
        };
        let inside_path = format!("/{}", inside_path.trim_matches('/'));
        rules.retain(|(i, _)| *i != inside_path);
        rules.push((inside_path, outside.map(|o| (o, options))));
    }
    for (dest, rule) in rules {
        let Some((src, options)) = rule else {
            if DEFAULT_DIRS.contains(&dest.as_str()) {
                return Err(Fatal(format!(
                    "--dir={dest}= cannot remove a default directory: runbox's image provides it"
                )));
            }
            continue;
        };
        let src = if src.is_absolute() {
            src
        } else {
            box_dir.join(src)
        };
        let mut rw = false;
        let mut noexec = false;
        let mut maybe = false;
        let mut tmp = false;
        for o in &options {
            match o.as_str() {
                "rw" => rw = true,
                "noexec" => noexec = true,
                "maybe" => maybe = true,
                // A fresh temporary directory: runbox gives each run its own /tmp and
                // /dev/shm (size-capped tmpfs) already.
                "tmp" if dest == "/tmp" || dest == "/dev/shm" => tmp = true,
                "fs" if dest == "/proc" => {}
                "dev" if dest == "/dev" => {}
                "tmp" => {
                    return Err(Fatal(format!(
                        "--dir={dest}:tmp is not supported: only /tmp and /dev/shm are temporary directories (each run's own)"
                    )))
                }
                "fs" => {
                    return Err(Fatal(format!(
                        "--dir={dest}:fs is not supported: runbox mounts /proc, /sys, /dev, /dev/shm and /tmp itself"
                    )))
                }
                "dev" => {
                    return Err(Fatal(format!(
                        "--dir={dest}:dev is not supported: runbox binds every directory nodev and gives each sandbox its own minimal /dev"
                    )))
                }
                "norec" => {
                    return Err(Fatal(format!(
                        "--dir={dest}:norec is not supported: runbox binds recursively, read-only all the way down"
                    )))
                }
                other => return Err(Fatal(format!("Unknown option {other} in --dir={dest}"))),
            }
        }
        // runbox's own /proc and /dev, and a private /tmp or /dev/shm asked for as one.
        if tmp || dest == "/proc" || dest == "/dev" {
            continue;
        }
        let is_default_tree = matches!(dest.as_str(), "/bin" | "/lib" | "/lib64" | "/usr")
            && src == Path::new(&dest)
            && !rw
            && !noexec;
        if is_default_tree {
            continue;
        }
        if dest == "/box" {
            return Err(Fatal(
                "--dir=/box is the box's work dir already; bind other directories elsewhere".into(),
            ));
        }
        if !src.exists() {
            if maybe {
                continue;
            }
            return Err(Fatal(format!(
                "Cannot bind {} on {dest}: no such directory",
                src.display()
            )));
        }
        if rw {
            cmd.bind_rw(&src, dest.clone());
        } else {
            cmd.bind_ro(&src, dest.clone());
        }
        if noexec {
            cmd.noexec(dest);
        }
    }
    Ok(())
}

fn run(root: &runbox::Root, req: &Request, program: &[String]) -> Result<ExitCode, Fatal> {
    if req.no_default_dirs {
        return Err(Fatal(
            "--no-default-dirs is not supported: the host image (/usr, /lib*, /bin) is always there, read-only".into(),
        ));
    }
    let b = match root.open_box(req.box_id, req.wait) {
        Ok(b) => b,
        Err(e) if e.kind() == runbox::ErrorKind::NotFound => {
            let name = if req.cg { "isolate --cg" } else { "isolate" };
            return Err(Fatal(format!(
                "Box not found, did you run `{name} --init'?"
            )));
        }
        Err(e) if e.kind() == runbox::ErrorKind::AlreadyExists => {
            return Err(Fatal(
                "This box is currently in use by another process".into(),
            ))
        }
        Err(e) => return Err(e.into()),
    };
    let cwd = req
        .chdir
        .as_deref()
        .map_or_else(|| "/box".to_string(), inside);
    // isolate execs argv[0] as given: a bare name or relative path is the working directory's.
    let exe = if program[0].starts_with('/') {
        program[0].clone()
    } else {
        format!(
            "{}/{}",
            cwd.trim_end_matches('/'),
            program[0].trim_start_matches("./")
        )
    };
    let mut cmd = b.command(exe);
    cmd.args(program[1..].iter().cloned()).current_dir(cwd);
    cmd.env_clear();
    for (k, v) in environment(req) {
        cmd.env(k, v);
    }
    // Streams not redirected are the caller's, as in isolate, except a terminal: the
    // program then reads nothing and its output is printed when it ends.
    let terminal = |fd: i32| nix::unistd::isatty(fd).unwrap_or(true);
    match &req.stdin {
        Some(p) => {
            cmd.stdin_inside(inside(p));
        }
        None if !terminal(0) => {
            cmd.stdin(runbox::Stdin::Inherit);
        }
        None => {}
    }
    match &req.stdout {
        Some(p) => {
            cmd.stdout_inside(inside(p));
        }
        None if !terminal(1) => {
            cmd.stdout(runbox::Output::Inherit);
        }
        None => {}
    }
    match &req.stderr {
        Some(p) => {
            cmd.stderr_inside(inside(p));
        }
        None if !req.stderr_to_stdout && !terminal(2) => {
            cmd.stderr(runbox::Output::Inherit);
        }
        None => {}
    }
    if req.stderr_to_stdout {
        cmd.stderr_to_stdout();
    }
    apply_dirs(&mut cmd, req, b.dir())?;
    let secs = |s: f64| Duration::try_from_secs_f64(s).ok().filter(|d| !d.is_zero());
    let l = cmd.limits_mut();
    l.cpu_time = req.time.and_then(secs);
    l.wall_time = req.wall_time.and_then(secs);
    l.cpu_time_grace = req.extra_time.and_then(secs).unwrap_or_default();
    if let Some(kb) = req.cg_mem_kb {
        l.memory_bytes = kb.saturating_mul(1024);
        if l.scratch_bytes >= l.memory_bytes {
            l.scratch_bytes = (l.memory_bytes / 4).max(1 << 20);
        }
    }
    l.address_space_bytes = req.mem_kb.filter(|kb| *kb > 0).map(|kb| kb * 1024);
    // Without --cg-mem the control group keeps runbox's default limit, raised to -m's if
    // that is larger (a per-process limit the group's must not undercut).
    if let (None, Some(bytes)) = (req.cg_mem_kb, l.address_space_bytes) {
        l.memory_bytes = l.memory_bytes.max(bytes);
    }
    // isolate: the stack is unlimited unless --stack says otherwise.
    l.stack_bytes = Some(
        req.stack_kb
            .filter(|kb| *kb > 0)
            .map_or(u64::MAX, |kb| kb * 1024),
    );
    l.open_files = match req.open_files.unwrap_or(DEFAULT_OPEN_FILES) {
        0 => UNLIMITED_OPEN_FILES,
        n => n,
    };
    l.file_size_bytes = req
        .fsize_kb
        .filter(|kb| *kb > 0)
        .map_or(u64::MAX, |kb| kb * 1024);
    l.core_bytes = req.core_kb.unwrap_or(0).saturating_mul(1024);
    // One process (isolate's default) and the sandbox's init.
    l.pids = req.pids.unwrap_or(2);
    if req.verbose > 0 {
        eprintln!(
            "Running in box {} as uid {}: {}",
            b.id(),
            b.user().0,
            program.join(" ")
        );
    }
    let verdict = b.run(&cmd)?;
    if verdict.status == runbox::Status::InternalError {
        return Err(Fatal(
            verdict
                .message
                .clone()
                .unwrap_or_else(|| "internal error".into()),
        ));
    }
    let _ = std::io::stdout().write_all(verdict.stdout.as_bytes());
    let _ = std::io::stderr().write_all(verdict.stderr.as_bytes());
    let meta = verdict.isolate_meta();
    if let Some(path) = &req.meta {
        std::fs::write(path, &meta)
            .map_err(|e| Fatal(format!("Cannot write {}: {e}", path.display())))?;
    }
    // isolate: 0 when the program finished correctly (the meta file has no status), else 1.
    let field = |key: &str| {
        meta.lines()
            .find_map(|l| l.strip_prefix(key).map(str::to_string))
    };
    let ok = field("status:").is_none();
    if !req.silent {
        let secs = |us: u64| format!("{}.{:03}", us / 1_000_000, us % 1_000_000 / 1000);
        let line = match field("message:") {
            Some(msg) if !ok => msg,
            _ => format!(
                "OK ({} sec real, {} sec wall)",
                secs(verdict.cpu_time_us),
                secs(verdict.wall_time_us)
            ),
        };
        eprintln!("{line}");
    }
    Ok(ExitCode::from(if ok { 0 } else { 1 }))
}
