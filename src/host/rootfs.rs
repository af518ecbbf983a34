//! The sandbox's root: a size-capped tmpfs holding the overlay's upper and work dirs, the
//! overlay of the read-only image mounted at the bundle's `rootfs`, and the files copied in
//! and out. Runs in the monitor, in its own mount namespace.

use std::fs;
use std::os::unix::fs::{chown, DirBuilderExt};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::config::{SandboxConfig, SandboxSpec, User};
use crate::host::sys;
use crate::layout::Scratch;

/// One failing step of setting up or tearing down the rootfs.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RootfsError {
    /// A mount failed.
    #[error("mount {fstype} on {target}")]
    Mount {
        /// Filesystem type.
        fstype: &'static str,
        /// Mount point.
        target: PathBuf,
        /// The errno.
        #[source]
        source: nix::Error,
    },
    /// An unmount failed.
    #[error("unmount {target}")]
    Unmount {
        /// Mount point.
        target: PathBuf,
        /// The errno.
        #[source]
        source: nix::Error,
    },
    /// Creating or chowning a directory failed.
    #[error("prepare directory {path}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A destination resolves outside the rootfs.
    #[error("sandbox path {path} crosses a symlink or a non-directory in the image")]
    Escape {
        /// The path inside the sandbox.
        path: String,
    },
    /// Copying into or out of the sandbox failed.
    #[error("copy {from} to {to}")]
    Copy {
        /// Source.
        from: PathBuf,
        /// Destination.
        to: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A read-write bind could not be attached to the container at its run.
    #[error("attach {host} at {dest} in the sandbox ({step})")]
    Attach {
        /// The host directory.
        host: PathBuf,
        /// The sandbox path.
        dest: String,
        /// The step that failed.
        step: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A path cannot be passed in overlay options.
    #[error(
        "path {path} contains a character overlayfs options cannot carry (',' ':' or whitespace)"
    )]
    BadPath {
        /// The path.
        path: PathBuf,
    },
}

fn dir(path: &Path, mode: u32) -> Result<(), RootfsError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(|source| RootfsError::Dir {
            path: path.to_path_buf(),
            source,
        })
}

fn option_path(path: &Path) -> Result<&str, RootfsError> {
    match path.to_str() {
        Some(s) if !s.contains([',', ':']) && !s.contains(char::is_whitespace) => Ok(s),
        _ => Err(RootfsError::BadPath {
            path: path.to_path_buf(),
        }),
    }
}

/// Which mounts [`mount_rootfs`] made, so teardown undoes exactly those.
#[derive(Debug, Default)]
pub(crate) struct Mounted {
    scratch: Option<PathBuf>,
    rootfs: Option<PathBuf>,
}

/// Mounts the scratch tmpfs (`scratch_bytes` large) and the overlay with `lower` as the
/// read-only image, with a world-writable /tmp, and each of the image's shared host `trees`
/// (host dir, destination) as a read-only overlay of its own at its destination, and makes
/// the empty directories `mount_points` (sandbox paths: where each run's read-write binds
/// are attached, see [`attach_rw_binds`]). On error, what was mounted is unmounted.
///
/// A tree gets an overlay rather than a bind so that its files are inodes of this sandbox
/// only: an inotify watch, a `flock` or a lease taken inside sees and blocks nobody else (a
/// bind would share the host's inodes with the host and every other sandbox). Overlay
/// options name their directories as `/proc/self/fd/N`, so the sandbox's mountinfo shows no
/// host path of the state root.
pub(crate) fn mount_rootfs(
    scratch: &Scratch,
    scratch_bytes: u64,
    lowers: &[&Path],
    trees: &[(PathBuf, String)],
    mount_points: &[&str],
) -> Result<Mounted, RootfsError> {
    let mut mounted = Mounted::default();
    let result = mount_steps(scratch, scratch_bytes, lowers, trees, &mut mounted)
        .and_then(|()| make_mount_points(&scratch.rootfs(), mount_points));
    if let Err(e) = result {
        // The launch fails with `e` either way; what stays mounted lives in the monitor's
        // own mount namespace and goes with it.
        if let Err(u) = unmount(&mut mounted) {
            eprintln!("runbox monitor: unmount after a failed mount ({e}): {u}");
        }
        return Err(e);
    }
    Ok(mounted)
}

fn mount_steps(
    scratch: &Scratch,
    scratch_bytes: u64,
    lowers: &[&Path],
    trees: &[(PathBuf, String)],
    mounted: &mut Mounted,
) -> Result<(), RootfsError> {
    let rootfs = scratch.rootfs();
    let scratch = &scratch.dir;
    dir(scratch, 0o700)?;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    let size = format!("size={scratch_bytes},mode=0755");
    mount_fs("runbox-scratch", scratch, "tmpfs", flags, &size)?;
    mounted.scratch = Some(scratch.clone());
    dir(&rootfs, 0o755)?;
    let upper = scratch.join("upper");
    let work = scratch.join("work");
    dir(&upper, 0o755)?;
    dir(&work, 0o700)?;
    // Each lower dir by a descriptor of ours: short options (a stored image's 128 layers
    // fit in the one page the kernel takes) and no host path in the sandbox's mountinfo.
    let lower_fds = lowers
        .iter()
        .map(|l| path_fd(l))
        .collect::<Result<Vec<_>, _>>()?;
    let (upper_fd, work_fd) = (path_fd(&upper)?, path_fd(&work)?);
    let lowerdir: Vec<String> = lower_fds.iter().map(fd_path).collect();
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lowerdir.join(":"),
        fd_path(&upper_fd),
        fd_path(&work_fd)
    );
    mount_fs("runbox-overlay", &rootfs, "overlay", flags, &opts)?;
    mounted.rootfs = Some(rootfs.clone());
    prepare_tmp(&rootfs)?;
    if trees.is_empty() {
        return Ok(());
    }
    // overlayfs wants two lower layers when it has no upper one: the tree over an empty dir.
    let empty = scratch.join("empty");
    dir(&empty, 0o555)?;
    let empty_fd = path_fd(&empty)?;
    for (host, dest) in trees {
        let rel = dest.trim_start_matches('/');
        let target = dir_inside(&rootfs, Path::new(rel), 0o755, dest)?;
        let opts = format!("lowerdir={}:{}", option_path(host)?, fd_path(&empty_fd));
        mount_fs(
            "runbox-tree",
            &target,
            "overlay",
            flags | MsFlags::MS_RDONLY,
            &opts,
        )?;
    }
    Ok(())
}

/// Makes each of `mount_points` (sandbox paths) a directory of the rootfs, root's, mode
/// 0755, refusing any symlink on the way ([`dir_inside`]): what libcontainer would make for a
/// bind at build, made here because the read-write binds come with each run.
fn make_mount_points(rootfs: &Path, mount_points: &[&str]) -> Result<(), RootfsError> {
    for dest in mount_points {
        dir_inside(rootfs, Path::new(dest.trim_start_matches('/')), 0o755, dest)?;
    }
    Ok(())
}

/// Attaches each read-write bind of `cfg` (host directory, sandbox path) to the container
/// whose init `init` refers to, before it starts, as confined as a bind at build would be.
/// `trees` are the launcher's detached copies of the host directories' mount trees (one per
/// bind, in order: `open_tree` in the launcher's mount namespace, where it resolved the
/// paths; see [`sys::open_tree_clone`]). Each is copied again here (so a second container
/// of the same launch, after a pre-built one died, gets its own; a kernel that cannot clone
/// a detached tree moves the launcher's copy itself), made `nosuid`, `nodev` (`noexec` where `cfg` asks) on
/// every mount of it and private (nothing propagates to or from it), whatever the
/// launcher set, then moved onto its mount point inside the container's mount namespace,
/// which must resolve without a symlink ([`sys::attach_in_mount_ns`]). On failure a copy
/// not yet attached is dropped (it was attached nowhere); those attached live in the
/// container's mount namespace only and go with it (the launch tears the container down).
pub(crate) fn attach_rw_binds(
    init: std::os::fd::BorrowedFd<'_>,
    cfg: &SandboxSpec,
    trees: &[std::os::fd::OwnedFd],
) -> Result<(), RootfsError> {
    use std::os::fd::AsFd;
    if trees.len() != cfg.rw_binds.len() {
        return Err(RootfsError::Attach {
            host: PathBuf::new(),
            dest: String::new(),
            step: "count the launcher's trees",
            source: std::io::Error::other(format!(
                "{} trees came for {} read-write binds",
                trees.len(),
                cfg.rw_binds.len()
            )),
        });
    }
    for ((host, dest), tree) in cfg.rw_binds.iter().zip(trees) {
        let fail = |step, source| RootfsError::Attach {
            host: host.clone(),
            dest: dest.clone(),
            step,
            source,
        };
        let mut attrs = libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV;
        if cfg.noexec.contains(dest) {
            attrs |= libc::MOUNT_ATTR_NOEXEC;
        }
        let rel = std::ffi::CString::new(dest.trim_start_matches('/'))
            .map_err(|e| fail("name the mount point", std::io::Error::other(e)))?;
        let copy = match sys::clone_tree(tree.as_fd()) {
            Ok(copy) => Some(copy),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => None,
            Err(e) => return Err(fail("open_tree", e)),
        };
        let tree = copy.as_ref().map_or(tree.as_fd(), AsFd::as_fd);
        sys::mount_setattr_private(tree, attrs).map_err(|e| fail("mount_setattr", e))?;
        sys::attach_in_mount_ns(init, tree, &rel).map_err(|e| fail(e.step, e.source))?;
    }
    Ok(())
}

/// Mounts a new `fstype` file system named `source` on `target`.
fn mount_fs(
    source: &str,
    target: &Path,
    fstype: &'static str,
    flags: MsFlags,
    options: &str,
) -> Result<(), RootfsError> {
    mount(Some(source), target, Some(fstype), flags, Some(options)).map_err(|source| {
        RootfsError::Mount {
            fstype,
            target: target.to_path_buf(),
            source,
        }
    })
}

/// An `O_PATH` descriptor of the directory `path`, for overlay options.
fn path_fd(path: &Path) -> Result<fs::File, RootfsError> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(path)
        .map_err(|source| RootfsError::Dir {
            path: path.to_path_buf(),
            source,
        })
}

/// `/proc/self/fd/N` of `fd`: what overlayfs resolves, and what mountinfo shows.
fn fd_path(fd: &fs::File) -> String {
    use std::os::fd::AsRawFd;
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// Prepares the mounted rootfs for one run of `cfg`: its working directory and the files
/// copied in. Works before or after the container is built (not yet started): the container's
/// root is this same overlay.
pub(crate) fn prepare_run(rootfs: &Path, cfg: &SandboxConfig) -> Result<(), RootfsError> {
    let user = cfg.sandbox.user;
    prepare_cwd(rootfs, &cfg.run.cwd, user)?;
    for (host, dest) in &cfg.run.copies {
        copy_in(rootfs, host, dest, user.uid, user.gid)?;
    }
    Ok(())
}

/// Copies a host file or tree to `dest` inside the (not yet started) rootfs, owned by the
/// sandbox's user. The destination's parent must resolve inside the rootfs.
fn copy_in(rootfs: &Path, host: &Path, dest: &str, uid: u32, gid: u32) -> Result<(), RootfsError> {
    let rel = Path::new(dest.trim_start_matches('/'));
    let parent = dir_inside(rootfs, rel.parent().unwrap_or(Path::new("")), 0o755, dest)?;
    let target = parent.join(rel.file_name().unwrap_or_default());
    if fs::symlink_metadata(&target).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(RootfsError::Escape {
            path: dest.to_string(),
        });
    }
    copy_tree(host, &target, uid, gid).map_err(|source| RootfsError::Copy {
        from: host.to_path_buf(),
        to: dest.to_string(),
        source,
    })
}

/// Walks `rel` below `rootfs` one component at a time, creating missing directories, and
/// refuses any symlink on the way: a path resolved on the host (as the monitor, root) must not
/// follow an image's symlinks out of the rootfs. Returns the directory. `shown` is the
/// sandbox path as the caller wrote it, for errors.
fn dir_inside(rootfs: &Path, rel: &Path, mode: u32, shown: &str) -> Result<PathBuf, RootfsError> {
    let escape = || RootfsError::Escape {
        path: shown.to_string(),
    };
    let mut cur = rootfs.to_path_buf();
    for part in rel.components() {
        let std::path::Component::Normal(name) = part else {
            return Err(escape());
        };
        cur.push(name);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(escape()),
            Err(_) => {
                fs::DirBuilder::new()
                    .mode(mode)
                    .create(&cur)
                    .map_err(|source| RootfsError::Dir {
                        path: cur.clone(),
                        source,
                    })?;
            }
        }
    }
    Ok(cur)
}

fn copy_tree(src: &Path, dst: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::symlink_metadata(src)?;
    if meta.is_dir() {
        // An existing destination must be a real directory: the image's symlinks are resolved
        // here on the host, as root, and could point anywhere.
        fs::DirBuilder::new().mode(0o755).create(dst).or_else(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists
                && fs::symlink_metadata(dst).is_ok_and(|m| m.is_dir())
            {
                Ok(())
            } else {
                Err(e)
            }
        })?;
        for entry in fs::read_dir(src)? {
            let entry = entry?;
            copy_tree(&entry.path(), &dst.join(entry.file_name()), uid, gid)?;
        }
    } else if meta.file_type().is_symlink() {
        std::os::unix::fs::symlink(fs::read_link(src)?, dst)?;
    } else if meta.is_file() {
        if fs::symlink_metadata(dst).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(std::io::Error::other(format!(
                "{} is a symlink in the image",
                dst.display()
            )));
        }
        fs::copy(src, dst)?;
    } else {
        // A device, socket or FIFO: never recreated inside (and a silent skip would lose it).
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "{} is not a regular file, directory or symlink",
                src.display()
            ),
        ));
    }
    std::os::unix::fs::lchown(dst, Some(uid), Some(gid))?;
    // Permission bits as the source has them (after the chown, which may clear some), never
    // setuid or setgid; a directory keeps its sticky bit. Symlinks have none.
    if !meta.file_type().is_symlink() {
        use std::os::unix::fs::PermissionsExt;
        let keep = if meta.is_dir() { 0o1777 } else { 0o777 };
        fs::set_permissions(dst, fs::Permissions::from_mode(meta.mode() & keep))?;
    }
    Ok(())
}

/// What [`collect_out`] did besides copying.
#[derive(Debug, Default)]
pub(crate) struct Collected {
    /// Paths that were missing or not regular files (skipped).
    pub missing: Vec<String>,
    /// Paths left out whole: the file was larger than the per-file maximum or than what
    /// was left of the byte budget.
    pub left_out: Vec<String>,
}

impl Collected {
    /// The verdict's note about files left out, if any.
    pub fn note(&self, budget: u64, per_file: u64) -> Option<String> {
        if self.left_out.is_empty() {
            return None;
        }
        // At most MAX_COLLECTS paths of a bounded length: a bounded note.
        Some(format!(
            "collected files left out (over the collect budget of {budget} bytes, or over \
             {per_file} bytes each): {:?}",
            self.left_out
        ))
    }
}

/// After the run: copies each requested regular file out of the rootfs, resolving the path
/// inside the rootfs only (the program may have planted symlinks). Missing files are skipped.
/// What is written is bounded while copying: at most `max_file_bytes` per file and `budget`
/// in all. A file that would go past either is left out whole (a copy that finds more bytes
/// than it may write removes what it wrote). A copy that fails (a full disk) removes its
/// partial destination and ends the collection with the error.
pub(crate) fn collect_out(
    rootfs: &Path,
    collects: &[(String, PathBuf)],
    max_file_bytes: u64,
    budget: u64,
) -> Result<Collected, RootfsError> {
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mut done = Collected::default();
    if collects.is_empty() {
        return Ok(done);
    }
    let root = fs::File::open(rootfs).map_err(|source| RootfsError::Dir {
        path: rootfs.to_path_buf(),
        source,
    })?;
    let mut used = 0u64;
    for (inside, host) in collects {
        let copy_err = |source| RootfsError::Copy {
            from: PathBuf::from(inside),
            to: host.display().to_string(),
            source,
        };
        let mut file = match crate::host::sys::open_in_root(&root, inside.trim_start_matches('/')) {
            Ok(f) => f,
            Err(_) => {
                done.missing.push(inside.clone());
                continue;
            }
        };
        let meta = file.metadata().map_err(copy_err)?;
        if !meta.is_file() {
            done.missing.push(inside.clone());
            continue;
        }
        let allowed = max_file_bytes.min(budget.saturating_sub(used));
        if meta.len() > allowed {
            done.left_out.push(inside.clone());
            continue;
        }
        if let Some(parent) = host.parent() {
            fs::create_dir_all(parent).map_err(copy_err)?;
        }
        let mut out = fs::File::create(host).map_err(copy_err)?;
        let copied = std::io::copy(&mut (&mut file).take(allowed), &mut out)
            .and_then(|n| {
                // The file grew past what it may bring since its size was read: left out.
                let mut one = [0u8; 1];
                Ok((n, file.read(&mut one)? > 0))
            })
            .and_then(|(n, more)| {
                // The file's permission bits come along (a binary compiled inside stays
                // executable); never setuid, setgid or sticky, and the owner is the
                // collector's.
                out.set_permissions(fs::Permissions::from_mode(meta.mode() & 0o777))?;
                Ok((n, more))
            });
        match copied {
            Ok((n, false)) => used += n,
            Ok((_, true)) => {
                drop(out);
                // Never a partial copy left where the caller looks for the file.
                fs::remove_file(host).map_err(copy_err)?;
                done.left_out.push(inside.clone());
            }
            Err(source) => {
                // Never a half-written file (a full disk, say): remove it and stop.
                drop(out);
                if let Err(e) = fs::remove_file(host) {
                    eprintln!(
                        "runbox monitor: remove the half-written {}: {e}",
                        host.display()
                    );
                }
                return Err(copy_err(source));
            }
        }
    }
    Ok(done)
}

/// /tmp is part of the writable layer (so it shares the scratch cap and costs no extra mount):
/// make sure it exists, sticky and world-writable.
fn prepare_tmp(rootfs: &Path) -> Result<(), RootfsError> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = rootfs.join("tmp");
    let meta = fs::symlink_metadata(&tmp);
    if meta.as_ref().is_ok_and(|m| !m.is_dir()) {
        return Err(RootfsError::Escape {
            path: "/tmp".to_string(),
        });
    }
    if meta
        .as_ref()
        .is_ok_and(|m| m.is_dir() && m.permissions().mode() & 0o7777 == 0o1777)
    {
        return Ok(());
    }
    if meta.is_err() {
        dir(&tmp, 0o1777)?;
    }
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o1777)).map_err(|source| {
        RootfsError::Dir {
            path: tmp.clone(),
            source,
        }
    })
}

/// Creates the working directory `cwd` if the image lacks it and hands the default `/work`
/// (or a directory created here) to the sandbox's `user`. Lands in the upper layer only.
fn prepare_cwd(rootfs: &Path, cwd: &str, user: User) -> Result<(), RootfsError> {
    let rel = Path::new(cwd.trim_start_matches('/'));
    let existed = fs::symlink_metadata(rootfs.join(rel)).is_ok();
    let dir = dir_inside(rootfs, rel, 0o755, cwd)?;
    if !existed || cwd == "/work" {
        chown(&dir, Some(user.uid), Some(user.gid)).map_err(|source| RootfsError::Dir {
            path: dir.clone(),
            source,
        })?;
    }
    Ok(())
}

/// Unmounts what [`mount_rootfs`] mounted (lazily: the container may still pin it briefly).
pub(crate) fn unmount(mounted: &mut Mounted) -> Result<(), RootfsError> {
    let mut first = None;
    for target in [mounted.rootfs.take(), mounted.scratch.take()]
        .into_iter()
        .flatten()
    {
        if let Err(source) = umount2(&target, MntFlags::MNT_DETACH) {
            if source != nix::Error::EINVAL && source != nix::Error::ENOENT {
                first.get_or_insert(RootfsError::Unmount { target, source });
            }
        }
    }
    first.map_or(Ok(()), Err)
}
