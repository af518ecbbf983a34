//! The monitor of one sandbox, top to bottom: [`open`] its records, [`leave_controller_cgroups`],
//! [`launch`] (take the pre-built container or build one, bind the run, wait for start in
//! create mode, start, hand the init its program), then supervise and finish. Runs in the
//! sandbox's monitor: an exec'd monitor, or a spare that was taken. Privileged steps come
//! first; nothing here runs in another thread.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::Instant;

use nix::poll::{PollFd, PollFlags};

use crate::config::Stdin;
use crate::error::{Error, ErrorKind, Result};
use crate::host::cgroup::CpuUsage;
use crate::host::proc::ProcIdentity;
use crate::host::state::{self, MonitorPhase, MonitorRecord, SandboxRecord};
use crate::host::uids::UidLease;
use crate::host::{rootfs, sys};
use crate::layout::Layout;
use crate::proto::control::{ControlRequest, ControlResponse};
use crate::proto::{InitRequest, Mode, ProgramRequest, Report, StreamFds};

use super::built::{launch as launch_error, Built, Streams};
use super::control::{self, Handler, Server};
use super::execs::Execs;
use super::finish::finish;
use super::phases;
use super::process::{self, Prepared};
use super::supervise::{self, Outcome};

/// Runs the sandbox in `dir` to completion and leaves its result in `exit.json`. `warm` is
/// a container a spare built ahead: used if the record asks for exactly it, else torn down.
/// `inherited` are the launcher's descriptors the sandbox takes, if they came with the
/// request (a spare's); an exec'd monitor reads them from its stdin when the record says so.
pub(super) fn run(
    dir: &Path,
    mode: Mode,
    prepared: &Prepared,
    warm: Option<(Built, Streams)>,
    warm_uid: Option<UidLease>,
    inherited: Option<Vec<OwnedFd>>,
) -> Result<()> {
    let opened = open(dir).and_then(|mut opened| {
        let mut fds = inherited_streams(&opened.record.config, inherited)?;
        opened.trees = fds.split_off(opened.record.config.run.inherited_streams().len());
        opened.inherited = fds;
        Ok(opened)
    });
    let mut opened = match opened {
        Ok(opened) => opened,
        Err(e) => {
            drop(warm); // torn down before its uid is given back
            drop(warm_uid);
            return Err(e);
        }
    };
    leave_controller_cgroups(&opened.record, prepared);
    let cfg = &opened.record.config;
    // The uid a spare held for its pre-built container: the sandbox's record holds it if
    // the sandbox runs as it; else it is given back once that container is torn down (the
    // launch below does so).
    let unused_uid = match warm_uid {
        Some(lease) if cfg.sandbox.uid_leased && cfg.sandbox.user.uid == lease.uid() => {
            lease.keep();
            None
        }
        other => other,
    };
    let launched = launch(&mut opened, mode, prepared, warm);
    drop(unused_uid);
    let launched = launched?;
    let control = opened.control.take();
    let Opened {
        layout,
        record,
        mut status,
        ..
    } = opened;
    match launched {
        Launched::NeverStarted { built, outcome } => {
            // Nobody is answered any more: the socket goes before the teardown.
            drop(control);
            finish(&layout, &record, built, CpuUsage::default(), outcome)
        }
        Launched::Running {
            mut built,
            streams,
            started,
            cpu_baseline,
            recorded,
        } => {
            // The monitor may idle for as long as the program runs: keep only what it uses.
            sys::release_free_heap();
            let mut execs = Execs::new(&layout, &record.id, &record.config);
            let mut record_phase = |phase| {
                status.phase = phase;
                save_status(&layout, &status)
            };
            let mut outcome = supervise::supervise(
                &built.init,
                &built.cgroup,
                cpu_baseline,
                &record.config.run.limits,
                &layout,
                streams,
                started,
                supervise::Control {
                    server: control,
                    record_phase: &mut record_phase,
                    execs: &mut execs,
                },
            );
            if !outcome.init_unreaped {
                built.init_reaped(); // supervision waited for it
            }
            if let Err(e) = recorded {
                outcome.facts.internal_error.get_or_insert(e.chain());
            }
            finish(&layout, &record, built, cpu_baseline, outcome)
        }
    }
}

/// A sandbox whose monitor has read its record and announced itself.
struct Opened {
    layout: Layout,
    record: SandboxRecord,
    /// What `monitor.json` says now.
    status: MonitorRecord,
    /// The launcher's descriptors the program takes (stdin, stdout, stderr, those of them
    /// the record inherits, in that order).
    inherited: Vec<OwnedFd>,
    /// The launcher's detached copies of the read-write binds' host directories, one per
    /// bind in order (attached to the container before start).
    trees: Vec<OwnedFd>,
    /// The control server, once the container is built (bound after the build, so that the
    /// container's init, cloned from the monitor, never holds the listening socket).
    control: Option<Server>,
}

/// The launcher's descriptors `cfg` takes: the streams it inherits, then one detached mount
/// tree per read-write bind; `received` with a spare's request, else read from this exec'd
/// monitor's stdin (a socket the launcher sends them on).
fn inherited_streams(
    cfg: &crate::config::SandboxConfig,
    received: Option<Vec<OwnedFd>>,
) -> Result<Vec<OwnedFd>> {
    let wanted = cfg.run.inherited_streams().len() + cfg.sandbox.rw_binds.len();
    let fds = match received {
        Some(fds) => fds,
        None if wanted == 0 => Vec::new(),
        None => {
            let stdin = std::io::stdin();
            StreamFds::receive(stdin.as_fd(), wanted).map_err(|e| {
                Error::with_source(
                    ErrorKind::LaunchFailed,
                    "receive the launcher's descriptors",
                    e,
                )
            })?
        }
    };
    if fds.len() != wanted {
        return Err(Error::new(
            ErrorKind::LaunchFailed,
            format!(
                "the launch came with {} of the launcher's descriptors, not {wanted}",
                fds.len()
            ),
        ));
    }
    Ok(fds)
}

impl Opened {
    /// Rewrites `monitor.json` with the current status: in the space reserved for it (see
    /// [`open`]), exchanged with the old file, whose space becomes the next reserve; so a
    /// state root that filled up since the sandbox was opened does not fail the update (a
    /// phase left behind would keep `kill` and `state` from seeing the program run).
    fn save(&self) -> Result<()> {
        save_status(&self.layout, &self.status)
    }
}

/// Rewrites `monitor.json` with `status` (see [`Opened::save`]).
fn save_status(layout: &Layout, status: &MonitorRecord) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(status)
        .map_err(|e| Error::with_source(ErrorKind::Io, "encode monitor.json", e))?;
    let (reserve, path) = (layout.monitor_reserve(), layout.monitor());
    if state::write_reserved(&reserve, &path, &bytes, state::Reserved::Exchange).unwrap_or(false) {
        return Ok(());
    }
    state::write_atomic(&path, &bytes)
}

/// Reads the sandbox's record, writes `monitor.json` (phase `creating`, this monitor's
/// identity), which tells every controller who owns the sandbox now, and reserves the space
/// whatever the monitor writes later needs: `exit.json` and the rewrites of `monitor.json`
/// (reserved files), and the empty output files. A state root that fills up while the
/// program runs (a read-write bind on it, another sandbox's output) then still gets the
/// verdict; one that is full already fails the launch here, before anything is built.
fn open(dir: &Path) -> Result<Opened> {
    let layout = Layout {
        dir: dir.to_path_buf(),
    };
    let record: SandboxRecord = state::read_json(&layout.record())?;
    state::check_format(record.format_version, &layout.record())?;
    let me = ProcIdentity::own()
        .map_err(|e| Error::with_source(ErrorKind::LaunchFailed, "identify the monitor", e))?;
    let opened = Opened {
        layout,
        record,
        status: MonitorRecord {
            format_version: state::FORMAT_VERSION,
            monitor: me,
            init: None,
            phase: MonitorPhase::Creating,
            prebuilt: false,
        },
        inherited: Vec::new(),
        trees: Vec::new(),
        control: None,
    };
    let layout = &opened.layout;
    state::write_json_atomic(&layout.monitor(), &opened.status)?;
    state::reserve(&layout.exit_reserve(), state::EXIT_RESERVE_BYTES)?;
    state::reserve(&layout.monitor_reserve(), state::MONITOR_RESERVE_BYTES)?;
    for path in [layout.stdout(), layout.stderr()] {
        File::create(&path).map_err(|e| Error::io("create", path, e))?;
    }
    phases::mark("records");
    Ok(opened)
}

/// Leaves the controller's cgroups, unless the monitor did as a spare (best effort).
fn leave_controller_cgroups(record: &SandboxRecord, prepared: &Prepared) {
    if prepared.left_cgroups {
        return;
    }
    let prefix = Path::new(&record.cgroup_path)
        .parent()
        .and_then(|p| p.to_str())
        .map(|p| p.trim_start_matches('/'))
        .unwrap_or_default();
    if !prefix.is_empty() {
        process::leave_cgroups(prefix);
    }
}

/// How the launch ended.
enum Launched {
    /// The program runs.
    Running {
        built: Built,
        streams: Streams,
        started: Instant,
        /// The cgroup's CPU usage just before start (libcontainer's setup), not the program's.
        cpu_baseline: CpuUsage,
        /// Whether `monitor.json` was updated to `running`.
        recorded: Result<()>,
    },
    /// A created sandbox was killed or deleted before it started.
    NeverStarted { built: Built, outcome: Outcome },
}

/// Takes or builds the container, binds this run to it, waits for start in create mode,
/// starts it and hands the init its program. Reports `created`/`started` to the controller;
/// on failure everything is rolled back.
fn launch(
    o: &mut Opened,
    mode: Mode,
    prepared: &Prepared,
    warm: Option<(Built, Streams)>,
) -> Result<Launched> {
    let (built, streams, prebuilt) = take_or_build(o, prepared, warm)?;
    match start_in(o, mode, built, streams, prebuilt) {
        Ok(launched) => Ok(launched),
        // A pre-built init that died while its spare waited, its exit still under way when
        // the spare was taken (so it looked alive): a spare is a cache, the sandbox is
        // built afresh, once.
        Err(StartFailed {
            error,
            init_died: true,
        }) if prebuilt => {
            eprintln!(
                "runbox monitor: the pre-built container's init died ({}): building afresh",
                error.chain()
            );
            // The new init must not inherit the first attempt's listening socket.
            o.control = None;
            let (built, streams, _) = take_or_build(o, prepared, None)?;
            start_in(o, mode, built, streams, false).map_err(|f| f.error)
        }
        Err(f) => Err(f.error),
    }
}

/// A launch that failed once the container was there (rolled back).
struct StartFailed {
    error: Error,
    /// The container's init had died (before the program was handed over, in run mode):
    /// another container may serve.
    init_died: bool,
}

/// Binds the run to the container, waits for start in create mode, starts it and hands the
/// init its program; on failure rolls the container back.
fn start_in(
    o: &mut Opened,
    mode: Mode,
    mut built: Built,
    mut streams: Streams,
    prebuilt: bool,
) -> std::result::Result<Launched, StartFailed> {
    let fail = |built: &mut Built, error: Error, init_may_have_died: bool| {
        let init_died = init_may_have_died
            && mode == Mode::Run
            && built.init_ended_within(std::time::Duration::from_millis(500));
        StartFailed {
            error: built.rollback(error),
            init_died,
        }
    };
    o.status.prebuilt = prebuilt;
    let stdin = match bind(&mut built, o) {
        Ok(stdin) => stdin,
        Err(e) => return Err(fail(&mut built, e, false)),
    };
    o.status.init = ProcIdentity::of(built.init.pid);
    if o.control.is_none() {
        match Server::bind(&o.layout) {
            Ok(mut server) => {
                server.set_max_frame(crate::proto::control::MAX_EXEC_FRAME);
                o.control = Some(server);
            }
            Err(e) => return Err(fail(&mut built, e, false)),
        }
    }
    if mode == Mode::Create {
        o.status.phase = MonitorPhase::Created;
        if let Err(e) = o.save() {
            return Err(fail(&mut built, e, false));
        }
        let _ = process::report(&Report::Created {
            monitor: o.status.monitor,
        });
        let start = match o.control.as_mut() {
            Some(server) => wait_for_start(server, &built),
            None => false,
        };
        if !start {
            // Killed or deleted before it started (or the wait failed: end it then).
            let _ = sys::pidfd_send_signal(&built.init.pidfd, libc::SIGKILL);
            let mut outcome = Outcome::default();
            supervise::collect_unstarted(&built.init, &mut streams, &mut outcome.facts);
            built.init_reaped();
            return Ok(Launched::NeverStarted { built, outcome });
        }
    }
    let cpu_baseline = built.cgroup.cpu_usage().unwrap_or_default();
    if let Err(e) = built.start() {
        return Err(fail(&mut built, e, true));
    }
    let request = InitRequest::Program(ProgramRequest::for_run(&o.record.config.run));
    // stdin (the launcher's, or the one `bind` opened), then inherited stdout and stderr.
    let mut fds: Vec<BorrowedFd<'_>> = vec![stdin.as_fd()];
    let skip = usize::from(o.record.config.run.stdin == Stdin::Inherit);
    fds.extend(o.inherited.iter().skip(skip).map(AsFd::as_fd));
    let sent = request.send(streams.request.as_fd(), &fds);
    drop(fds);
    drop(stdin);
    if let Err(e) = sent {
        return Err(fail(
            &mut built,
            launch_error("send the program to the init", e),
            true,
        ));
    }
    if let Err(e) = streams.wait_ready() {
        // An `error` line is the request's fault, not the container's.
        let refused = streams.refused;
        return Err(fail(&mut built, e, !refused));
    }
    // The program has the launcher's descriptors now, the container its work dirs; the
    // monitor keeps none.
    o.inherited.clear();
    o.trees.clear();
    let started = Instant::now();
    phases::mark("started");
    o.status.phase = MonitorPhase::Running;
    let recorded = o.save();
    let _ = process::report(&Report::Started {
        monitor: o.status.monitor,
    });
    Ok(Launched::Running {
        built,
        streams,
        started,
        cpu_baseline,
        recorded,
    })
}

/// The spare's pre-built container if it serves this record, else a fresh build (after
/// tearing down a pre-built container of another shape, which may hold this cgroup).
/// Tells whether the container was pre-built.
fn take_or_build(
    o: &Opened,
    prepared: &Prepared,
    warm: Option<(Built, Streams)>,
) -> Result<(Built, Streams, bool)> {
    let cfg = &o.record.config;
    match warm {
        // A pre-built container whose init died (killed while the spare waited) is torn
        // down below like one of another shape, and the sandbox built afresh.
        Some((built, streams))
            if built.serves(&cfg.sandbox, &o.record.cgroup_path) && built.init_alive() =>
        {
            phases::mark("prebuilt_taken");
            Ok((built, streams, true))
        }
        other => {
            if let Some((mut built, streams)) = other {
                // Its channels go too, before the new container's init is cloned from here.
                drop(streams);
                let _ = built.teardown();
            }
            let root = o
                .layout
                .dir
                .parent()
                .ok_or_else(|| Error::new(ErrorKind::Io, "sandbox dir has no parent"))?;
            let (built, streams) = Built::new(&cfg.sandbox, &o.record.cgroup_path, root, prepared)?;
            Ok((built, streams, false))
        }
    }
}

/// Prepares the built container for this run: working directory and copies in the rootfs,
/// CPU quota, the read-write binds attached (they are not part of the build). Returns the program's stdin. (The bundle keeps the spec libcontainer built
/// from: it lives in this monitor's mount namespace only, and libcontainer reads its own
/// saved copy at start; the controller's `Root::oci_spec` gives the complete one.)
fn bind(built: &mut Built, o: &Opened) -> Result<OwnedFd> {
    let cfg = &o.record.config;
    rootfs::prepare_run(&built.scratch.rootfs(), cfg)
        .map_err(|e| launch_error("prepare the sandbox rootfs", e))?;
    let period_us = cfg.sandbox.limits.cpu_period_us;
    built
        .cgroup
        .set_cpu_quota(cfg.run.limits.cpu_quota_us(period_us), period_us)
        .map_err(|e| launch_error("write the cpu quota", e))?;
    rootfs::attach_rw_binds(built.init.pidfd.as_fd(), &cfg.sandbox, &o.trees)
        .map_err(|e| launch_error("attach the read-write binds", e))?;
    phases::mark("bound");
    let stdin = match &cfg.run.stdin {
        Stdin::Inherit => match o.inherited.first() {
            Some(fd) => fd.try_clone(),
            None => Err(std::io::Error::other("the launcher's stdin did not come")),
        },
        Stdin::Bytes(_) | Stdin::File(_) => File::open(o.layout.stdin()).map(OwnedFd::from),
        // Null, and whatever a later variant means here.
        _ => File::open("/dev/null").map(OwnedFd::from),
    }
    .map_err(|e| launch_error("open stdin", e))?;
    Ok(stdin)
}

/// The created phase's answers: `start` starts, `kill` ends the sandbox before it started,
/// `stats` reads the cgroup; pause and resume wait for a running program.
struct CreatedPhase<'a> {
    built: &'a Built,
    start: bool,
}

impl Handler for CreatedPhase<'_> {
    fn handle(&mut self, request: ControlRequest, _fds: Vec<OwnedFd>) -> ControlResponse {
        match request {
            ControlRequest::Start => {
                self.start = true;
                ControlResponse::Done
            }
            // Any signal ends a sandbox that has not started (as before, through the pid).
            ControlRequest::Kill { .. } => {
                match sys::pidfd_send_signal(&self.built.init.pidfd, libc::SIGKILL) {
                    Ok(()) => ControlResponse::Done,
                    Err(e) => control::failed(
                        ErrorKind::InvalidState,
                        format!("signal the sandbox's init: {e}"),
                    ),
                }
            }
            ControlRequest::Pause | ControlRequest::Resume => {
                control::invalid_state("the sandbox is created, not running: start it first")
            }
            ControlRequest::Stats => control::stats(&self.built.cgroup, CpuUsage::default(), false),
            ControlRequest::Exec { .. }
            | ControlRequest::ExecKill { .. }
            | ControlRequest::ExecWait { .. } => {
                control::invalid_state("the sandbox is created, not running: start it first")
            }
        }
    }
}

/// Serves the control socket in the created state until a controller starts the sandbox
/// (true) or the init dies (false: killed or deleted before start, or the wait failed).
fn wait_for_start(server: &mut Server, built: &Built) -> bool {
    let mut phase = CreatedPhase {
        built,
        start: false,
    };
    loop {
        let mut fds = vec![PollFd::new(built.init.pidfd.as_fd(), PollFlags::POLLIN)];
        let range = server.poll_fds(&mut fds);
        if sys::poll_until(&mut fds, server.deadline()).is_err() || sys::has_event(&fds[0]) {
            return false;
        }
        let ready: Vec<bool> = fds[range].iter().map(sys::has_event).collect();
        drop(fds);
        server.handle(&ready, &mut phase);
        server.tick(Instant::now());
        if phase.start {
            return true;
        }
    }
}
