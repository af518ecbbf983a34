//! Turns a [`Command`] into the validated [`SandboxConfig`] a sandbox is made from: every
//! check before the first side effect, the image opened, the program looked up in it, bind
//! sources canonicalized. Runs in the controller.

use std::fs;
use std::path::Path;

use crate::config::{self, Command, RunSpec, SandboxConfig, SandboxSpec, Stdin};
use crate::error::{Error, ErrorKind, Result};
use crate::host::image::Image;
use crate::images::ResolvedImage;

/// The host trees no bind or copy may take from, whatever the path says after symlinks: the
/// whole host (its secrets), and the kernel's views of every process, device and setting.
const FORBIDDEN_SOURCES: &[&str] = &["/proc", "/sys", "/dev"];

/// Refuses a bind or copy source that is the host's `/`, or `/proc`, `/sys`, `/dev` or
/// anything below them (after resolving symlinks): binding `/proc` would show the sandbox
/// every host process's environment and memory maps.
fn host_source_allowed(host: &Path) -> Result<()> {
    let resolved = fs::canonicalize(host).map_err(|e| {
        Error::with_source(
            ErrorKind::InvalidConfig,
            format!("host path {}", host.display()),
            e,
        )
    })?;
    let forbidden =
        resolved == Path::new("/") || FORBIDDEN_SOURCES.iter().any(|f| resolved.starts_with(f));
    if forbidden {
        return Err(Error::new(
            ErrorKind::InvalidConfig,
            format!(
                "host path {} ({}) cannot be bound or copied into a sandbox: the host's /, /proc, /sys and /dev and what is below them are refused",
                host.display(),
                resolved.display()
            ),
        ));
    }
    Ok(())
}

/// Checks everything about `cmd` that can be checked without side effects and resolves the
/// program inside the image: the config a sandbox is made from. `host_image` gives the
/// default image, asked for only when needed.
pub(super) fn resolve<'a>(
    cmd: &Command,
    stored: Option<&ResolvedImage>,
    host_image: impl FnOnce() -> Result<&'a Image>,
) -> Result<SandboxConfig> {
    let invalid = |msg: String| Error::new(ErrorKind::InvalidConfig, msg);
    let with_image;
    let cmd = match stored {
        Some(img) => {
            with_image = apply_image(cmd, img)?;
            &with_image
        }
        None if cmd.stored_image.is_some() => {
            return Err(invalid("a stored image was not resolved".into()))
        }
        None => cmd,
    };
    if let Some(id) = &cmd.name {
        config::validate_id(id)?;
    }
    cmd.limits.validate()?;
    cmd.limits
        .validate_pids(crate::host::proc::pids_ceiling())?;
    if cmd.program.is_empty() || cmd.program.contains('\0') {
        return Err(invalid(
            "program must be a non-empty string without NUL".into(),
        ));
    }
    let all_strings = cmd
        .args
        .iter()
        .chain(cmd.env.keys())
        .chain(cmd.env.values());
    if all_strings.clone().any(|s| s.contains('\0')) {
        return Err(invalid(
            "arguments and environment must not contain NUL".into(),
        ));
    }
    if cmd.env.keys().any(|k| k.is_empty() || k.contains('=')) {
        return Err(invalid(
            "environment names must be non-empty and without '='".into(),
        ));
    }
    let cwd = cmd.cwd.clone().unwrap_or_else(|| "/work".to_string());
    if !cwd.starts_with('/') {
        return Err(invalid(format!(
            "working directory {cwd:?} must be absolute"
        )));
    }
    let hostname_ok = !cmd.hostname.is_empty()
        && cmd.hostname.len() <= 64
        && cmd
            .hostname
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if !hostname_ok {
        return Err(invalid(format!("hostname {:?} is not valid", cmd.hostname)));
    }
    let owned_image;
    let image = match (&cmd.image, stored) {
        (_, Some(img)) => {
            owned_image = Image::from_layers(&img.layers)?;
            &owned_image
        }
        (Some(dir), None) => {
            owned_image = Image::from_dir(dir)?;
            &owned_image
        }
        (None, None) => host_image()?,
    };
    if let Stdin::File(path) = &cmd.stdin {
        if !path.is_file() {
            return Err(invalid(format!(
                "stdin file {} does not exist or is not a file",
                path.display()
            )));
        }
    }
    if cmd.rw_binds.len() > config::MAX_RW_BINDS {
        return Err(invalid(format!(
            "{} read-write binds, at most {}",
            cmd.rw_binds.len(),
            config::MAX_RW_BINDS
        )));
    }
    let inside_ok =
        |p: &str| p.starts_with('/') && config::is_clean_absolute(Path::new(p)) && p != "/";
    for (host, dest) in cmd.binds.iter().chain(&cmd.rw_binds).chain(&cmd.copies) {
        if !inside_ok(dest) {
            return Err(invalid(format!(
                "sandbox path {dest:?} must be absolute, not / and without '..'"
            )));
        }
        if fs::symlink_metadata(host).is_err() {
            return Err(invalid(format!(
                "host path {} does not exist",
                host.display()
            )));
        }
        host_source_allowed(host)?;
    }
    for (host, _) in &cmd.copies {
        let regular_or_dir = fs::metadata(host).is_ok_and(|m| m.is_file() || m.is_dir());
        if !regular_or_dir {
            return Err(invalid(format!(
                "copy source {} is neither a regular file nor a directory",
                host.display()
            )));
        }
    }
    config::check_collects(&cmd.collects)?;
    for (inside, host) in &cmd.collects {
        if !inside_ok(inside) {
            return Err(invalid(format!(
                "sandbox path {inside:?} must be absolute, not / and without '..'"
            )));
        }
        if !host.is_absolute() {
            return Err(invalid(format!(
                "collect destination {} must be absolute",
                host.display()
            )));
        }
    }
    let r = &cmd.redirects;
    for path in [&r.stdin, &r.stdout, &r.stderr].into_iter().flatten() {
        if !inside_ok(path) {
            return Err(invalid(format!(
                "redirected stream {path:?} must be an absolute sandbox path without '..'"
            )));
        }
    }
    for dest in &cmd.noexec {
        if !cmd
            .binds
            .iter()
            .chain(&cmd.rw_binds)
            .any(|(_, d)| d == dest)
        {
            return Err(invalid(format!(
                "noexec {dest:?} names no bind of the command"
            )));
        }
    }
    let canonical = |list: &[(std::path::PathBuf, String)]| -> Result<Vec<_>> {
        list.iter()
            .map(|(host, dest)| {
                let host = fs::canonicalize(host).map_err(|e| {
                    Error::with_source(
                        ErrorKind::InvalidConfig,
                        format!("bind source {}", host.display()),
                        e,
                    )
                })?;
                Ok((host, dest.clone()))
            })
            .collect()
    };
    let binds = canonical(&cmd.binds)?;
    let rw_binds = canonical(&cmd.rw_binds)?;
    if let Some((host, _)) = rw_binds.iter().find(|(host, _)| !host.is_dir()) {
        return Err(invalid(format!(
            "read-write bind source {} is not a directory",
            host.display()
        )));
    }
    // Absolute: the monitor copies from its own working directory, `/`.
    let copies = cmd
        .copies
        .iter()
        .map(|(host, dest)| {
            std::path::absolute(host)
                .map(|host| (host, dest.clone()))
                .map_err(|e| {
                    Error::with_source(
                        ErrorKind::InvalidConfig,
                        format!("copy source {}", host.display()),
                        e,
                    )
                })
        })
        .collect::<Result<Vec<_>>>()?;
    // The program is looked up in what the sandbox will see: the image, then the binds,
    // then the files copied in (which land on top of both).
    let mut view = image.clone();
    view.binds
        .extend(binds.iter().chain(&rw_binds).chain(&copies).cloned());
    let path_var = cmd.env.get("PATH").map(String::as_str).unwrap_or("");
    // A program named by its path in a read-write bind (a work dir, whose files change
    // between runs: a compiler's output) is looked up when it starts; one that is missing
    // then exits 127 with the `execve` error on its stderr, as in a shell.
    let in_work_dir = cmd.program.starts_with('/')
        && !cmd.program.split('/').any(|c| c == "..")
        && rw_binds
            .iter()
            .any(|(_, dest)| Path::new(&cmd.program).starts_with(dest));
    let exe = if in_work_dir {
        cmd.program.clone()
    } else {
        view.resolve_program(&cmd.program, path_var)?
    };
    let mut args = Vec::with_capacity(cmd.args.len() + 1);
    args.push(cmd.program.clone());
    args.extend(cmd.args.iter().cloned());
    let (sandbox_limits, run_limits) = cmd.limits.split();
    Ok(SandboxConfig {
        sandbox: SandboxSpec {
            user: cmd.user.unwrap_or_default(),
            uid_leased: cmd.user.is_none(),
            image: (cmd.image.is_some() || stored.is_some()).then(|| image.lower.clone()),
            image_layers: image.below.clone(),
            image_trees: image.binds.clone(),
            hostname: cmd.hostname.clone(),
            binds,
            rw_binds,
            noexec: cmd.noexec.clone(),
            limits: sandbox_limits,
        },
        run: RunSpec {
            args,
            exe,
            env: cmd.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            cwd,
            stdin: cmd.stdin.clone(),
            stdout: cmd.stdout,
            stderr: cmd.stderr,
            redirects: cmd.redirects.clone(),
            copies,
            collects: cmd.collects.clone(),
            limits: run_limits,
        },
    })
}

/// `cmd` with a stored image's config applied as defaults: the program under the image's
/// `Entrypoint` (or the command's own), `Cmd` when the command takes the image's program,
/// the image's `Env` under the command's variables, its `WorkingDir` unless one was set.
fn apply_image(cmd: &Command, img: &ResolvedImage) -> Result<Command> {
    let mut out = cmd.clone();
    let entry = cmd
        .entrypoint
        .clone()
        .unwrap_or_else(|| img.entrypoint.clone());
    let mut argv = entry;
    if cmd.program_from_image {
        if cmd.args.is_empty() {
            argv.extend(img.cmd.iter().cloned());
        } else {
            argv.extend(cmd.args.iter().cloned());
        }
    } else {
        argv.push(cmd.program.clone());
        argv.extend(cmd.args.iter().cloned());
    }
    let mut argv = argv.into_iter();
    out.program = argv.next().unwrap_or_default();
    if out.program.is_empty() {
        return Err(Error::new(
            ErrorKind::InvalidConfig,
            format!(
                "image {} has no Entrypoint or Cmd: give a program",
                img.digest
            ),
        ));
    }
    out.args = argv.collect();
    if !cmd.env_cleared {
        let mut env = std::collections::BTreeMap::new();
        for kv in &img.env {
            if let Some((k, v)) = kv.split_once('=') {
                if !k.is_empty() {
                    env.insert(k.to_string(), v.to_string());
                }
            }
        }
        for (k, v) in &cmd.env {
            if k == "PATH" && cmd.path_defaulted && env.contains_key("PATH") {
                continue;
            }
            env.insert(k.clone(), v.clone());
        }
        out.env = env;
    }
    if out.cwd.is_none() {
        out.cwd = img.working_dir.clone();
    }
    out.stored_image = None;
    Ok(out)
}
