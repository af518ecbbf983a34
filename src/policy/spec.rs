//! Pure translation of a sandbox config into an OCI runtime `Spec` (the one libcontainer builds
//! from, or the complete one for other runtimes). Runs in the monitor and the controller.

use std::path::Path;

use libcontainer::oci_spec::runtime::{
    get_default_maskedpaths, get_default_readonly_paths, Capabilities, LinuxBuilder,
    LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder, LinuxMemoryBuilder,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder, LinuxResourcesBuilder, Mount,
    MountBuilder, PosixRlimitBuilder, PosixRlimitType, ProcessBuilder, RootBuilder, Spec,
    SpecBuilder, UserBuilder,
};

use crate::config::{RunSpec, SandboxSpec};
use crate::error::{Error, ErrorKind, Result};
use crate::policy::seccomp;

/// Ptys a sandbox may hold at once (its devpts instance's `max=`).
pub(crate) const PTY_MAX: u32 = 16;

/// Which spec: the one libcontainer builds from, or the complete one the bundle keeps.
/// libcontainer gets nothing of a run (the init receives its program at start; the monitor
/// writes the CPU quota before start, as libcontainer's own setup runs in the cgroup and
/// would be throttled) and no `linux.seccomp` (it ignores it without libseccomp; runbox
/// installs its own filter). The final spec has all of them, so runc or crun can run a
/// bundle from [`crate::Root::write_bundle`] with the same confinement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum SpecStage<'a> {
    /// For libcontainer: the sandbox spec alone (no program, no quota, no seccomp section),
    /// so a container can be built before its run is known.
    ForLibcontainer,
    /// Complete: this run's program, quota and RLIMIT_CPU, and the seccomp profile.
    Final(&'a RunSpec),
}

fn spec_error(e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::with_source(ErrorKind::InvalidConfig, "cannot build the oci spec", e)
}

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Result<Mount> {
    MountBuilder::default()
        .destination(dest)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()
        .map_err(spec_error)
}

/// Builds the spec for the sandbox `cfg` (and the run `stage` names) with `root` as the
/// container's root and `cgroups_path` as its cgroup; `masked_extra` are further paths to
/// mask (the host's root-only /proc files).
pub(crate) fn build(
    cfg: &SandboxSpec,
    root: &Path,
    readonly_root: bool,
    cgroups_path: &str,
    stage: SpecStage<'_>,
    masked_extra: &[String],
) -> Result<Spec> {
    let limits = &cfg.limits;
    let empty = Capabilities::new();
    let caps = LinuxCapabilitiesBuilder::default()
        .bounding(empty.clone())
        .effective(empty.clone())
        .inheritable(empty.clone())
        .permitted(empty.clone())
        .ambient(empty)
        .build()
        .map_err(spec_error)?;
    let rlimit = |typ, value: u64| {
        PosixRlimitBuilder::default()
            .typ(typ)
            .hard(value)
            .soft(value)
            .build()
            .map_err(spec_error)
    };
    let mut rlimits = vec![
        rlimit(PosixRlimitType::RlimitCore, limits.core_bytes)?,
        rlimit(PosixRlimitType::RlimitNofile, limits.open_files)?,
        rlimit(PosixRlimitType::RlimitFsize, limits.file_size_bytes)?,
        // Budgets the kernel keeps per uid: bounded whatever the host's defaults.
        rlimit(PosixRlimitType::RlimitSigpending, limits.pending_signals)?,
        rlimit(PosixRlimitType::RlimitMsgqueue, limits.mqueue_bytes)?,
        rlimit(PosixRlimitType::RlimitMemlock, limits.locked_memory_bytes)?,
    ];
    if cfg.uid_leased {
        // A second line behind the pids cgroup (one above it, so the cgroup, which counts
        // its hits, refuses first). It counts every process of the uid on the host, so only
        // a uid of the sandbox's own may carry it.
        rlimits.push(rlimit(
            PosixRlimitType::RlimitNproc,
            limits.pids.saturating_add(1),
        )?);
    }
    // The program is not part of the container libcontainer builds: the init receives it
    // (argv, environment, working directory, RLIMIT_CPU) at start, so a container can be
    // built before its program is known. The final spec carries the real ones.
    let (args, env, cwd) = match stage {
        SpecStage::ForLibcontainer => (vec!["runbox-init".to_string()], Vec::new(), "/".into()),
        SpecStage::Final(run) => (run.args.clone(), run.env.clone(), run.cwd.clone()),
    };
    if let SpecStage::Final(run) = stage {
        // A per-process backstop past the cgroup-wide limit the monitor enforces.
        if let Some(secs) = run.limits.cpu_rlimit_secs() {
            rlimits.push(rlimit(PosixRlimitType::RlimitCpu, secs)?);
        }
    }
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(
            UserBuilder::default()
                .uid(cfg.user.uid)
                .gid(cfg.user.gid)
                .additional_gids(Vec::<u32>::new())
                .build()
                .map_err(spec_error)?,
        )
        .args(args)
        .env(env)
        .cwd(cwd)
        .capabilities(caps)
        .no_new_privileges(true)
        .rlimits(rlimits)
        .build()
        .map_err(spec_error)?;

    let shm = format!("size={}", limits.shm_bytes);
    // Non-initial devpts instances share one host-wide budget (kernel.pty.max less
    // kernel.pty.reserve): each sandbox gets a few ptys, never the host's whole supply.
    let pty_max = format!("max={PTY_MAX}");
    let mut mounts = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=256k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                &pty_max,
            ],
        )?,
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", &shm],
        )?,
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        )?,
    ];
    // libcontainer finds the image's trees mounted already (the monitor mounts each as an
    // overlay of the sandbox's own); another runtime gets them as read-only binds.
    let trees: &[(std::path::PathBuf, String)] = match stage {
        SpecStage::ForLibcontainer => &[],
        SpecStage::Final(_) => &cfg.image_trees,
    };
    // libcontainer builds without the read-write binds (work dirs), which come with each
    // run: the monitor attaches them before start, with the same options, on mount points
    // it made in the rootfs (`host::rootfs::attach_rw_binds`); another runtime gets them
    // as binds.
    let rw_binds: &[(std::path::PathBuf, String)] = match stage {
        SpecStage::ForLibcontainer => &[],
        SpecStage::Final(_) => &cfg.rw_binds,
    };
    // Read-only binds are read-only all the way down (`rro`); work dirs are writable; none
    // carries setuid bits or devices.
    let ro: &[&str] = &["rbind", "ro", "rro", "nosuid", "rnosuid", "nodev", "rnodev"];
    let rw: &[&str] = &["rbind", "rw", "nosuid", "rnosuid", "nodev", "rnodev"];
    let all_binds =
        (trees.iter().chain(&cfg.binds).map(|b| (b, ro))).chain(rw_binds.iter().map(|b| (b, rw)));
    for ((src, dest), options) in all_binds {
        let mut options = options.to_vec();
        if cfg.noexec.contains(dest) {
            options.extend(["noexec", "rnoexec"]);
        }
        let src = src.to_str().ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidConfig,
                format!("bind source {src:?} is not utf-8"),
            )
        })?;
        mounts.push(mount(dest, "bind", src, &options)?);
    }

    let namespaces = [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Network,
        LinuxNamespaceType::Cgroup,
    ]
    .into_iter()
    .map(|typ| LinuxNamespaceBuilder::default().typ(typ).build())
    .collect::<std::result::Result<Vec<_>, _>>()
    .map_err(spec_error)?;

    let memory = i64::try_from(limits.memory_bytes).map_err(spec_error)?;
    let mut cpu = LinuxCpuBuilder::default().period(limits.cpu_period_us);
    if let SpecStage::Final(run) = stage {
        cpu = cpu.quota(run.limits.cpu_quota_us(limits.cpu_period_us));
    }
    if let Some(set) = &limits.cpuset {
        cpu = cpu.cpus(set.clone());
    }
    let resources = LinuxResourcesBuilder::default()
        .devices(vec![LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()
            .map_err(spec_error)?])
        .memory(
            LinuxMemoryBuilder::default()
                .limit(memory)
                .swap(memory)
                .build()
                .map_err(spec_error)?,
        )
        .pids(
            LinuxPidsBuilder::default()
                .limit(i64::try_from(limits.pids).map_err(spec_error)?)
                .build()
                .map_err(spec_error)?,
        )
        .cpu(cpu.build().map_err(spec_error)?)
        .build()
        .map_err(spec_error)?;

    let mut masked = get_default_maskedpaths();
    masked.push("/sys/devices/virtual/powercap".to_string());
    for extra in masked_extra {
        if !masked.contains(extra) {
            masked.push(extra.clone());
        }
    }
    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .cgroups_path(cgroups_path)
        .resources(resources)
        .masked_paths(masked)
        .readonly_paths(get_default_readonly_paths());
    if let SpecStage::Final(_) = stage {
        let profile = seccomp::oci_profile().map_err(|e| {
            Error::with_source(ErrorKind::UnsupportedHost, "build the seccomp profile", e)
        })?;
        linux = linux.seccomp(profile);
    }
    let linux = linux.build().map_err(spec_error)?;

    SpecBuilder::default()
        .version("1.0.2")
        .hostname(cfg.hostname.clone())
        .root(
            RootBuilder::default()
                .path(root)
                .readonly(readonly_root)
                .build()
                .map_err(spec_error)?,
        )
        .process(process)
        .mounts(mounts)
        .linux(linux)
        .build()
        .map_err(spec_error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{SandboxConfig, User};

    fn cfg() -> SandboxSpec {
        SandboxConfig::for_tests().sandbox
    }

    fn run() -> RunSpec {
        SandboxConfig::for_tests().run
    }

    #[test]
    fn confinement_defaults_are_in_the_spec() {
        let spec = build(
            &cfg(),
            Path::new("/r"),
            false,
            "/rb/x",
            SpecStage::Final(&run()),
            &[],
        )
        .unwrap();
        let p = spec.process().as_ref().unwrap();
        let caps = p.capabilities().as_ref().unwrap();
        for set in [
            caps.bounding(),
            caps.effective(),
            caps.permitted(),
            caps.inheritable(),
            caps.ambient(),
        ] {
            assert_eq!(
                set.as_ref().map(|s| s.len()),
                Some(0),
                "every set explicit and empty"
            );
        }
        assert_eq!(p.no_new_privileges(), Some(true));
        assert_eq!(p.user().uid(), 65534);
        let linux = spec.linux().as_ref().unwrap();
        assert_eq!(linux.namespaces().as_ref().unwrap().len(), 6);
        assert_eq!(linux.cgroups_path().as_deref(), Some(Path::new("/rb/x")));
        let res = linux.resources().as_ref().unwrap();
        let mem = res.memory().as_ref().unwrap();
        assert_eq!(mem.limit(), mem.swap(), "swap disabled: memsw == memory");
        let cpu = res.cpu().as_ref().unwrap();
        assert_eq!(cpu.period(), Some(10_000));
        assert_eq!(cpu.quota(), Some(10_000));
        let dests: Vec<_> = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| m.destination().to_str().unwrap().to_string())
            .collect();
        for d in ["/proc", "/dev", "/dev/shm", "/sys", "/usr"] {
            assert!(dests.iter().any(|x| x == d), "{d} mounted");
        }
        assert!(linux
            .masked_paths()
            .as_ref()
            .unwrap()
            .contains(&"/proc/kcore".to_string()));
    }

    /// The spec libcontainer builds from, as JSON.
    fn built(cfg: &SandboxSpec) -> String {
        let spec = build(
            cfg,
            Path::new("/r"),
            false,
            "/rb/x",
            SpecStage::ForLibcontainer,
            &[],
        );
        serde_json::to_string(&spec.unwrap()).unwrap()
    }

    #[test]
    fn the_sandbox_spec_decides_the_container_libcontainer_builds() {
        // A pre-built container serves any request of its shape: nothing of a run reaches
        // the spec libcontainer builds from (it takes a `SandboxSpec` alone), and whatever
        // of the sandbox spec reaches it is part of the shape. A leased uid is masked (any
        // one serves: the request takes the spare's, and the spare is built as it).
        let base = cfg();
        let baked: [fn(&mut SandboxSpec); 11] = [
            |c| {
                c.user = User {
                    uid: 1000,
                    gid: 1000,
                }
            },
            |c| c.image_trees.push(("/lib".into(), "/lib".into())),
            |c| c.hostname = "other".into(),
            |c| c.binds.push(("/opt".into(), "/opt".into())),
            |c| c.limits.memory_bytes /= 2,
            |c| c.limits.pids = 7,
            |c| c.limits.cpu_period_us = 100_000,
            |c| c.limits.shm_bytes *= 2,
            |c| c.limits.open_files = 7,
            |c| c.limits.file_size_bytes = 7,
            |c| c.limits.cpuset = Some("0".into()),
        ];
        for (i, change) in baked.iter().enumerate() {
            let mut c = base.clone();
            change(&mut c);
            assert!(!c.fits(&base), "build-time change {i} fits");
            if i != 1 {
                // (the image's trees are mounted before libcontainer builds)
                assert_ne!(built(&c), built(&base), "change {i} is not in the spec");
            }
        }
        // The scratch size and the image are not in the spec but make the pre-mounted rootfs.
        for change in [
            |c: &mut SandboxSpec| c.limits.scratch_bytes *= 2,
            |c: &mut SandboxSpec| c.image = Some("/other".into()),
        ] {
            let mut c = base.clone();
            change(&mut c);
            assert!(!c.fits(&base));
        }
        // (Any leased uid fits any other: config::spec's own test.)
    }

    #[test]
    fn quota_can_be_left_out() {
        let spec = build(
            &cfg(),
            Path::new("/r"),
            false,
            "/rb/x",
            SpecStage::ForLibcontainer,
            &[],
        )
        .unwrap();
        let cpu = spec
            .linux()
            .as_ref()
            .unwrap()
            .resources()
            .as_ref()
            .unwrap()
            .cpu()
            .clone()
            .unwrap();
        assert_eq!(cpu.quota(), None);
        assert!(spec.linux().as_ref().unwrap().seccomp().is_none());
        let full = build(
            &cfg(),
            Path::new("/r"),
            false,
            "/rb/x",
            SpecStage::Final(&run()),
            &[],
        )
        .unwrap();
        assert!(full.linux().as_ref().unwrap().seccomp().is_some());
    }
}
