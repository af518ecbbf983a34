//! Thin wrappers over syscalls, and the only module with `unsafe`. Used in every process,
//! including the container's init under seccomp (nothing here allocates after a fork).
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Instant;

use nix::poll::{PollFd, PollTimeout};

/// Forks a single-threaded process: `Some(child pid)` in the parent, `None` in the child.
/// Refuses (with an error) in a multi-threaded process, where the child could inherit a lock
/// held by another thread.
pub(crate) fn fork_single_threaded() -> io::Result<Option<i32>> {
    let threads = std::fs::read_to_string("/proc/self/status")?
        .lines()
        .find_map(|l| l.strip_prefix("Threads:").map(|v| v.trim().to_string()));
    if threads.as_deref() != Some("1") {
        return Err(io::Error::other(
            "the monitor must be single-threaded when it forks: call runbox::monitor_main() before any thread starts",
        ));
    }
    // SAFETY: checked just above that this process runs a single thread, so the child is a
    // full copy of a single-threaded process and may run any code.
    match unsafe { nix::unistd::fork() }.map_err(io::Error::from)? {
        nix::unistd::ForkResult::Parent { child } => Ok(Some(child.as_raw())),
        nix::unistd::ForkResult::Child => Ok(None),
    }
}

/// Forks; the parent exits at once with status 0 and the child returns. Used by the monitor
/// to detach from its spawner (the spawner then reaps only the short-lived parent).
///
/// Must be called while the process is single-threaded.
pub(crate) fn fork_and_detach() -> io::Result<()> {
    if fork_single_threaded()?.is_some() {
        exit_now(0);
    }
    Ok(())
}

/// `pidfd_open(pid, 0)`: a file descriptor that becomes readable when `pid` exits. It refers to
/// the process that had `pid` at the time of the call, never to a later reuse of the number.
pub(crate) fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes two integers and returns a new fd or -1; no memory is shared.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = RawFd::try_from(fd).map_err(io::Error::other)?;
    // SAFETY: the kernel returned a fresh fd that nothing else owns (it has O_CLOEXEC).
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `pidfd_send_signal(pidfd, sig)`: signals exactly the process the pidfd refers to.
pub(crate) fn pidfd_send_signal(pidfd: &OwnedFd, sig: i32) -> io::Result<()> {
    // SAFETY: the fd is valid for the duration of the call (borrowed from an OwnedFd); a null
    // siginfo pointer is allowed and means "as kill(2) would".
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Ends the process at once with `code`, running no destructors or atexit handlers (for a
/// forked copy that must not unwind into its parent's state).
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` is async-signal-safe, takes an integer and never returns.
    unsafe { libc::_exit(code) }
}

/// Takes ownership of descriptors this process inherited across a `clone` without exec,
/// by their numbers in the parent (the container's init receives the monitor's pipe and
/// socket ends so).
///
/// # Safety
/// Each number must name a descriptor that was open in the parent when this process was
/// cloned, that nothing else in this process owns or closes (no `OwnedFd`, `File` or other
/// owner of it exists here), and that appears once in `fds`. Call this once per process for
/// a given set: every returned `OwnedFd` closes its descriptor when dropped.
pub(crate) unsafe fn adopt_inherited_fds<const N: usize>(fds: [RawFd; N]) -> [OwnedFd; N] {
    // SAFETY: the caller guarantees each fd is open, unowned and listed once.
    fds.map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `struct open_how` of openat2(2).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// Opens `path` for reading beneath the directory `root` as if `root` were `/`: symlinks,
/// `..` and absolute paths cannot leave it (`openat2` with `RESOLVE_IN_ROOT`), magic links are
/// refused, a final symlink is not followed, and a FIFO does not block the open.
pub(crate) fn open_in_root(root: &std::fs::File, path: &str) -> io::Result<std::fs::File> {
    let cpath =
        std::ffi::CString::new(path).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let how = OpenHow {
        // O_NONBLOCK: a FIFO planted by the program must not block the open.
        flags: (libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK) as u64,
        mode: 0,
        resolve: libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: `root` is a valid fd for the call, `cpath` a NUL-terminated string and `how` a
    // fully initialised open_how whose size is passed; the kernel writes nothing back.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            cpath.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = RawFd::try_from(fd).map_err(io::Error::other)?;
    // SAFETY: the kernel returned a fresh fd that nothing else owns.
    Ok(std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Bytes written to the pipe behind `fd` (either end) that no reader has taken yet (FIONREAD).
pub(crate) fn pipe_unread(fd: BorrowedFd<'_>) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int through the pointer, which points at a live local.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n as *mut libc::c_int) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(n).unwrap_or(0))
}

/// `posix_spawn` of `exe` with exactly `argv` and `envp`, an empty signal mask and the default
/// action for every signal (the caller blocks and ignores some; the program must not inherit
/// that). glibc implements it with `CLONE_VM | CLONE_VFORK`, so the caller's address space is
/// not copied. Returns the child's pid.
pub(crate) fn spawn_clean(
    exe: &std::ffi::CStr,
    argv: &[std::ffi::CString],
    envp: &[std::ffi::CString],
) -> io::Result<i32> {
    let mut argv_ptrs: Vec<*mut libc::c_char> = argv
        .iter()
        .map(|a| a.as_ptr() as *mut libc::c_char)
        .collect();
    argv_ptrs.push(std::ptr::null_mut());
    let mut envp_ptrs: Vec<*mut libc::c_char> = envp
        .iter()
        .map(|e| e.as_ptr() as *mut libc::c_char)
        .collect();
    envp_ptrs.push(std::ptr::null_mut());
    let check = |rc: libc::c_int| {
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(rc))
        }
    };
    // SAFETY: `attr` and the empty sigset are initialised by their init functions before any
    // other use and `attr` is destroyed once; the full set is built as the plain bitmask a
    // Linux sigset_t is (same size, signal n at bit n-1 of the first word); the argv/envp arrays are NULL-terminated and point into CStrings
    // that outlive the call; `pid` is a valid out pointer. posix_spawn copies what it needs.
    unsafe {
        let mut attr = std::mem::MaybeUninit::<libc::posix_spawnattr_t>::uninit();
        check(libc::posix_spawnattr_init(attr.as_mut_ptr()))?;
        let mut attr = attr.assume_init();
        let result = (|| {
            let mut empty = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
            libc::sigemptyset(empty.as_mut_ptr());
            let empty = empty.assume_init();
            // Every signal 1..=64, including the two glibc keeps for itself (32, 33), which
            // sigfillset leaves out but an inherited "ignore" would otherwise carry over.
            let mut bits = [0u64; std::mem::size_of::<libc::sigset_t>() / 8];
            bits[0] = u64::MAX;
            let all: libc::sigset_t = std::mem::transmute(bits);
            check(libc::posix_spawnattr_setsigmask(&mut attr, &empty))?;
            check(libc::posix_spawnattr_setsigdefault(&mut attr, &all))?;
            let flags =
                libc::c_short::try_from(libc::POSIX_SPAWN_SETSIGMASK | libc::POSIX_SPAWN_SETSIGDEF)
                    .map_err(io::Error::other)?;
            check(libc::posix_spawnattr_setflags(&mut attr, flags))?;
            let mut pid: libc::pid_t = 0;
            check(libc::posix_spawn(
                &mut pid,
                exe.as_ptr(),
                std::ptr::null(),
                &attr,
                argv_ptrs.as_ptr(),
                envp_ptrs.as_ptr(),
            ))?;
            Ok(pid)
        })();
        libc::posix_spawnattr_destroy(&mut attr);
        result
    }
}

/// Starts `exe` as [`spawn_clean`] does, with RLIMIT_AS (soft and hard) lowered to
/// `address_space` in the child just before `execve`, as isolate does: `posix_spawn` maps the
/// child's stack in the caller first, so a caller whose own address space is larger than the
/// limit could not spawn under it. The child is a fork of this process (only for this case:
/// it copies the page tables that `posix_spawn` avoids) and calls only async-signal-safe
/// functions; an `execve` error comes back over a close-on-exec pipe as this call's error.
/// Call only from a single-threaded process (the sandbox's init).
pub(crate) fn spawn_clean_limited(
    exe: &std::ffi::CStr,
    argv: &[std::ffi::CString],
    envp: &[std::ffi::CString],
    address_space: u64,
) -> io::Result<i32> {
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let mut envp_ptrs: Vec<*const libc::c_char> = envp.iter().map(|e| e.as_ptr()).collect();
    envp_ptrs.push(std::ptr::null());
    let limit = libc::rlimit {
        rlim_cur: address_space,
        rlim_max: address_space,
    };
    let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let err_w_raw = err_w.as_raw_fd();
    // SAFETY: the caller is single-threaded (documented), so the child's copy of this address
    // space has no lock another thread holds; the child calls only async-signal-safe
    // functions on data prepared before the fork (the pointer arrays and CStrings outlive
    // the call), then execs or `_exit`s, never returning into Rust code.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: in the child, as described above.
        unsafe {
            let mut empty = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
            libc::sigemptyset(empty.as_mut_ptr());
            for sig in 1..=64 {
                if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                    libc::signal(sig, libc::SIG_DFL);
                }
            }
            libc::sigprocmask(libc::SIG_SETMASK, empty.as_ptr(), std::ptr::null_mut());
            if libc::setrlimit(libc::RLIMIT_AS, &limit) == 0 {
                libc::execve(exe.as_ptr(), argv_ptrs.as_ptr(), envp_ptrs.as_ptr());
            }
            exec_failed(err_w_raw);
        }
    }
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    drop(err_w);
    exec_outcome(pid, &err_r)
}

/// Sends `bytes` on the socket `sock` with `fds` attached (`SCM_RIGHTS`; none if empty),
/// never raising SIGPIPE; `nonblocking` adds `MSG_DONTWAIT`. Returns the bytes sent (the
/// descriptors go with the first).
pub(crate) fn send_with_fds(
    sock: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
    nonblocking: bool,
) -> io::Result<usize> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let mut flags = MsgFlags::MSG_NOSIGNAL;
    if nonblocking {
        flags |= MsgFlags::MSG_DONTWAIT;
    }
    let rights = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &rights };
    sendmsg::<()>(
        sock.as_raw_fd(),
        &[io::IoSlice::new(bytes)],
        cmsgs,
        flags,
        None,
    )
    .map_err(io::Error::from)
}

/// Most descriptors one message may carry (`SCM_RIGHTS`): a message that brought more is an
/// error, never a silent loss.
pub(crate) const MAX_FDS_PER_MESSAGE: usize = 16;

/// The kernel's own bound on the descriptors of one `sendmsg` (`SCM_MAX_FD`): the receive
/// buffer has room for this many, so the kernel never has to cut (and nix would then not
/// hand over, leaking) what arrived.
const SCM_MAX_FD: usize = 253;

/// Reads from the stream socket `fd` into `buf`, taking any descriptors sent along with
/// `SCM_RIGHTS` (close-on-exec). Returns the bytes read and the received descriptors. A read
/// that brought more than [`MAX_FDS_PER_MESSAGE`] descriptors, or that the kernel had to cut
/// (`MSG_CTRUNC`), closes what came and is an error: a pty or a namespace fd must never go
/// missing silently.
pub(crate) fn recv_with_fds(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
) -> io::Result<(usize, Vec<OwnedFd>)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut iov = [io::IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!([RawFd; SCM_MAX_FD]);
    let msg = recvmsg::<()>(
        fd.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(io::Error::from)?;
    // Only if more than SCM_MAX_FD came, which the kernel refuses to send.
    let cmsgs = msg.cmsgs().map_err(|_| {
        io::Error::other("the kernel cut the descriptors of a message (MSG_CTRUNC)")
    })?;
    let mut fds = Vec::new();
    for cmsg in cmsgs {
        if let ControlMessageOwned::ScmRights(raw) = cmsg {
            for r in raw {
                // SAFETY: the kernel just installed `r` in this process's fd table for this
                // message; nothing else refers to it, so it gets exactly one owner here.
                fds.push(unsafe { OwnedFd::from_raw_fd(r) });
            }
        }
    }
    if fds.len() > MAX_FDS_PER_MESSAGE {
        let count = fds.len();
        drop(fds);
        return Err(io::Error::other(format!(
            "a message brought {count} descriptors, more than the {MAX_FDS_PER_MESSAGE} allowed"
        )));
    }
    Ok((msg.bytes, fds))
}

/// Returns the heap's free memory to the kernel (glibc `malloc_trim(0)`): a long-lived idle
/// process (monitor, init) keeps only what it uses.
pub(crate) fn release_free_heap() {
    // SAFETY: malloc_trim only walks and trims the allocator's own free lists; it takes an
    // integer and has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// A connected pair of close-on-exec Unix stream sockets (request channels: writing to one
/// whose peer died gives `EPIPE` with `MSG_NOSIGNAL`, never SIGPIPE).
pub(crate) fn stream_socket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(io::Error::from)
}

/// `poll(2)` until an event or `deadline` (`None`: no deadline): the number of descriptors
/// with events, 0 once the deadline has passed. An interrupted call is resumed with the time
/// left; the timeout is rounded up to whole milliseconds, so the deadline has passed when 0
/// is returned.
pub(crate) fn poll_until(fds: &mut [PollFd<'_>], deadline: Option<Instant>) -> io::Result<usize> {
    loop {
        let timeout = match deadline {
            None => PollTimeout::NONE,
            Some(d) => {
                let ms = d
                    .saturating_duration_since(Instant::now())
                    .as_micros()
                    .div_ceil(1000);
                PollTimeout::try_from(i32::try_from(ms).unwrap_or(i32::MAX))
                    .unwrap_or(PollTimeout::MAX)
            }
        };
        match nix::poll::poll(fds, timeout) {
            Ok(0) if deadline.is_some_and(|d| Instant::now() < d) => continue,
            Ok(n) => return Ok(usize::try_from(n).unwrap_or(0)),
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// True if `fd` has an event (readable, hang-up, error) right now.
pub(crate) fn has_event(fd: &PollFd<'_>) -> bool {
    fd.revents().is_some_and(|r| !r.is_empty())
}

/// CLOCK_MONOTONIC (shared by all processes) in microseconds.
pub(crate) fn monotonic_us() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
        let secs = u64::try_from(t.tv_sec()).unwrap_or(0);
        let nanos = u64::try_from(t.tv_nsec()).unwrap_or(0);
        secs * 1_000_000 + nanos / 1000
    })
}

/// Starts `exe` with exactly `argv`, an empty environment, `stdin`, `stdout` and `stderr` as
/// descriptors 0-2 (close-on-exec cleared), an empty signal mask and the default action for
/// SIGPIPE, born in the cgroup v2 directory `cgroup` (`clone3` with `CLONE_INTO_CGROUP`): it is
/// never in the caller's cgroup, not even for an instant. `CLONE_VFORK` holds the caller until
/// the child has exec'd or failed to, so an exec error comes back as this call's error.
/// Returns the child's pid (reap it with [`wait_pid`]), or `Ok(Err(_))` with the error of
/// `clone3` itself (a kernel before 5.7, a cgroup gone or not a domain): nothing was started
/// and the caller may start the process another way.
///
/// No other descriptor of the caller reaches the program ([`cloexec_from_3`]).
///
/// Safe to call from a multi-threaded process: the child only calls async-signal-safe
/// functions (`sigprocmask`, `signal`, `dup2`, `fcntl`, `close_range`, `execve`, `write`,
/// `_exit`) on data prepared before the clone.
pub(crate) fn spawn_into_cgroup(
    exe: &std::ffi::CStr,
    argv: &[std::ffi::CString],
    stdio: [BorrowedFd<'_>; 3],
    cgroup: BorrowedFd<'_>,
) -> io::Result<Result<i32, io::Error>> {
    /// `struct clone_args` of clone3(2), up to `cgroup` (CLONE_ARGS_SIZE_VER2).
    #[repr(C)]
    #[derive(Default)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
        set_tid: u64,
        set_tid_size: u64,
        cgroup: u64,
    }
    const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    // A source among 0-2 other than its own target could be overwritten by an earlier dup2
    // in the child: give it a number above 2 first.
    let mut moved = Vec::new();
    let mut fds = stdio.map(|fd| fd.as_raw_fd());
    for (target, fd) in (0..).zip(fds.iter_mut()) {
        if *fd < 3 && *fd != target {
            let high = nix::fcntl::fcntl(*fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3))?;
            // SAFETY: F_DUPFD_CLOEXEC just returned this new descriptor; nothing else owns it.
            moved.push(unsafe { OwnedFd::from_raw_fd(high) });
            *fd = high;
        }
    }
    let cgroup_fd = u64::try_from(cgroup.as_raw_fd()).map_err(io::Error::other)?;
    let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let err_w_raw = err_w.as_raw_fd();
    let args = CloneArgs {
        flags: libc::CLONE_VFORK as u64 | CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cgroup_fd,
        ..CloneArgs::default()
    };
    // SAFETY: `args` is a fully initialised clone_args whose size is passed. Without CLONE_VM
    // the child runs on a copy of this address space (as after fork), and the branch below
    // that it takes calls only async-signal-safe functions on pointers and descriptors made
    // before the clone (the CStrings and fds outlive the call), then execs or `_exit`s: it
    // never returns into Rust code, allocates, or touches a lock another thread may hold.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if pid == 0 {
        // SAFETY: in the child, as described above; every call is async-signal-safe.
        unsafe {
            let mut empty = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
            libc::sigemptyset(empty.as_mut_ptr());
            libc::sigprocmask(libc::SIG_SETMASK, empty.as_ptr(), std::ptr::null_mut());
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            let mut ok = true;
            for (target, &fd) in (0..).zip(fds.iter()) {
                ok &= if fd == target {
                    libc::fcntl(fd, libc::F_SETFD, 0) == 0
                } else {
                    libc::dup2(fd, target) == target
                };
            }
            // Only 0-2 reach the program, never another of the caller's descriptors.
            cloexec_from_3();
            if ok {
                libc::execve(exe.as_ptr(), argv_ptrs.as_ptr(), envp.as_ptr());
            }
            exec_failed(err_w_raw);
        }
    }
    if pid < 0 {
        return Ok(Err(io::Error::last_os_error()));
    }
    let pid = i32::try_from(pid).map_err(io::Error::other)?;
    drop((err_w, moved));
    exec_outcome(pid, &err_r).map(Ok)
}

/// Marks every descriptor from 3 up close-on-exec, so that a program this process execs
/// next gets only 0-2: the caller's other descriptors (a grader's `flock`ed file, a
/// listening socket) must never reach a monitor, a spare or a sandbox. `close_range(3, ~0,
/// CLOSE_RANGE_CLOEXEC)` (Linux 5.11); before that, `fcntl(FD_CLOEXEC)` on every number
/// below the open-files soft limit (at most 2^20, the kernel's default `nr_open`).
///
/// Async-signal-safe (raw system calls only): for a child between its clone and `execve`.
pub(crate) fn cloexec_from_3() {
    // SAFETY: close_range and getrlimit take integers and a pointer to a live local; fcntl
    // with F_SETFD only sets a flag on the calling process's descriptor (EBADF when none).
    unsafe {
        let flags = libc::c_uint::try_from(libc::CLOSE_RANGE_CLOEXEC).unwrap_or(0);
        if libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            flags,
        ) == 0
        {
            return;
        }
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        let top = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur.min(1 << 20)
        } else {
            1 << 20
        };
        let top = libc::c_int::try_from(top).unwrap_or(1 << 20);
        for fd in 3..top {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        }
    }
}

/// Makes `cmd`'s child mark every descriptor from 3 up close-on-exec before it execs
/// ([`cloexec_from_3`]), after `std` has set up its stdin, stdout and stderr: the child gets
/// exactly those three. (It makes `std` fork instead of `posix_spawn`.)
pub(crate) fn exec_with_stdio_only(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the child between fork and execve and calls only
    // `cloexec_from_3`, which is async-signal-safe and allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            cloexec_from_3();
            Ok(())
        });
    }
}

/// Closes every descriptor from 3 up that is not close-on-exec: at the start of a process
/// exec'd by runbox (a monitor, a spare, the factory), those can only have been inherited
/// from whatever exec'd it, never opened by this process (Rust opens everything
/// close-on-exec), and none is meant for it. A defence in depth behind [`cloexec_from_3`]
/// in the spawner, for a monitor started some other way. Call before any thread starts.
pub(crate) fn close_inherited_fds() {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<RawFd> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: F_GETFD only reads the flags of a descriptor number (EBADF for the closed
        // one the listing used). A descriptor without FD_CLOEXEC was not opened by Rust code
        // of this process (std always sets it), so no owner here will close it again.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 && flags & libc::FD_CLOEXEC == 0 {
                libc::close(fd);
            }
        }
    }
}

/// In a child between its clone and `execve`, after `execve` failed: writes `errno` to the
/// close-on-exec pipe `err_w` and exits 127.
///
/// # Safety
/// Only in such a child: it calls only async-signal-safe functions and never returns.
unsafe fn exec_failed(err_w: RawFd) -> ! {
    // SAFETY: errno is this thread's; `write` and `_exit` are async-signal-safe, and the
    // pointer is to a live local of the size passed.
    unsafe {
        let errno = *libc::__errno_location();
        libc::write(
            err_w,
            (&errno as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>(),
        );
        libc::_exit(127)
    }
}

/// The parent's side of [`exec_failed`]: end of file on `err_r` (every write end closed by
/// the child's `execve`) means the child runs the new program; an errno means it failed,
/// and the child is reaped.
fn exec_outcome(pid: i32, err_r: &OwnedFd) -> io::Result<i32> {
    let mut buf = [0u8; std::mem::size_of::<libc::c_int>()];
    let n = loop {
        match nix::unistd::read(err_r.as_raw_fd(), &mut buf) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => break other.unwrap_or(0),
        }
    };
    if n == buf.len() {
        let _ = wait_pid(pid);
        return Err(io::Error::from_raw_os_error(libc::c_int::from_ne_bytes(
            buf,
        )));
    }
    Ok(pid)
}

/// What an exec'd process is started with ([`spawn_in_group`]).
pub(crate) struct GroupSpawn<'a> {
    /// Paths to try in order (a `PATH` lookup done by the caller): the first that `execve`
    /// accepts runs; if none does, the error of the first that existed (else `ENOENT`).
    pub candidates: &'a [std::ffi::CString],
    /// argv.
    pub argv: &'a [std::ffi::CString],
    /// The complete environment.
    pub envp: &'a [std::ffi::CString],
    /// The working directory, entered in the child.
    pub cwd: &'a std::ffi::CStr,
    /// Descriptors that become 0, 1 and 2 (any numbers, 0-2 included; close-on-exec or not).
    pub stdio: [RawFd; 3],
    /// Resource limits (resource, soft, hard) set in the child before `execve`:
    /// `RLIMIT_CPU`, `RLIMIT_AS`, `RLIMIT_STACK`… Lowering needs no privilege.
    pub rlimits: &'a [(u32, u64, u64)],
}

/// Why [`spawn_in_group`] started nothing: the step that failed in the child and its errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SpawnFailure {
    /// `"stdio"`, `"chdir"`, `"setrlimit"`, `"execve"` or `"fork"`.
    pub step: &'static str,
    /// The error.
    pub errno: i32,
}

/// The steps a [`spawn_in_group`] child reports, by number on its error pipe.
const SPAWN_STEPS: [&str; 5] = ["stdio", "chdir", "setrlimit", "execve", "setpgid"];

/// Runs `entry(arg)` in a child that shares this process's memory (`CLONE_VM`) on a stack of
/// `stack_bytes` of its own, and returns once the child has exec'd or exited
/// (`CLONE_VFORK`): its pid (reap it), or -1 with errno set. The child gets its own copies
/// of the signal, descriptor and fs tables; it reports its end with `SIGCHLD`.
///
/// # Safety
/// `entry` must call only async-signal-safe functions, allocate nothing, write no memory of
/// this process's but its own stack and errno, and end by `execve` or `_exit` (never by
/// returning into Rust code); whatever `arg` points at must be valid for it. The calling
/// process must be single-threaded, or its other threads must not touch what `entry` reads.
unsafe fn clone_vm_vfork(
    entry: extern "C" fn(*mut libc::c_void) -> libc::c_int,
    arg: *mut libc::c_void,
    stack_bytes: usize,
) -> libc::c_int {
    let mut stack = vec![0u8; stack_bytes];
    // The stack grows down from its (16-byte aligned) top.
    let top = (stack.as_mut_ptr() as usize + stack_bytes) & !15;
    // SAFETY: the caller upholds `entry`'s contract (above); `stack` outlives the child's use
    // of it, since CLONE_VFORK returns only after the child has exec'd or exited.
    let pid = unsafe {
        libc::clone(
            entry,
            top as *mut libc::c_void,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            arg,
        )
    };
    drop(stack);
    pid
}

/// What a [`spawn_in_group`] child reads: pointers into data the caller keeps alive (and
/// does not touch: it is suspended) until the child has exec'd or exited.
#[repr(C)]
struct GroupChild {
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    candidates: *const *const libc::c_char,
    n_candidates: usize,
    cwd: *const libc::c_char,
    stdio: [RawFd; 3],
    limits: *const (u32, libc::rlimit),
    n_limits: usize,
    err_w: RawFd,
}

/// Bytes of the stack a [`spawn_in_group`] child runs on until its `execve`: it calls a few
/// libc functions and keeps three small arrays.
const GROUP_CHILD_STACK: usize = 64 << 10;

/// The body of a [`spawn_in_group`] child: sets it up, execs, or reports the failed step and
/// its errno on the error pipe and exits 127.
///
/// # Safety
/// `arg` points at a live [`GroupChild`] whose pointers are valid; the caller is suspended
/// (`CLONE_VFORK`) while this runs on its own stack in the caller's address space
/// (`CLONE_VM`), so it calls only async-signal-safe functions, allocates nothing and writes
/// no memory of the caller's but its own stack and errno.
extern "C" fn group_child(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: as documented above; `fail` never returns.
    unsafe {
        let c = &*(arg as *const GroupChild);
        let fail = |step: libc::c_int| -> ! {
            let report = [step, *libc::__errno_location()];
            libc::write(
                c.err_w,
                report.as_ptr().cast(),
                std::mem::size_of_val(&report),
            );
            libc::_exit(127)
        };
        if libc::setpgid(0, 0) != 0 {
            fail(4);
        }
        // The signal table is this child's own (no CLONE_SIGHAND): every caught or ignored
        // signal goes back to its default before the mask is emptied.
        for sig in 1..=64 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        let mut empty = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
        libc::sigemptyset(empty.as_mut_ptr());
        libc::sigprocmask(libc::SIG_SETMASK, empty.as_ptr(), std::ptr::null_mut());
        // Copies above 2 first: a descriptor numbered 0-2 must not be overwritten before it
        // is moved, and dup2 onto itself would keep its close-on-exec flag.
        let mut high = [-1; 3];
        for (i, &fd) in c.stdio.iter().enumerate() {
            high[i] = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3);
            if high[i] < 0 {
                fail(0);
            }
        }
        for (target, &fd) in (0..3).zip(high.iter()) {
            if libc::dup2(fd, target) < 0 {
                fail(0);
            }
        }
        if libc::chdir(c.cwd) != 0 {
            fail(1);
        }
        for i in 0..c.n_limits {
            let (res, limit) = &*c.limits.add(i);
            if libc::setrlimit(*res as _, limit) != 0 {
                fail(2);
            }
        }
        let mut first_error = libc::ENOENT;
        for i in 0..c.n_candidates {
            libc::execve(*c.candidates.add(i), c.argv, c.envp);
            let e = *libc::__errno_location();
            if e != libc::ENOENT && e != libc::ENOTDIR && first_error == libc::ENOENT {
                first_error = e;
            }
        }
        *libc::__errno_location() = first_error;
        fail(3)
    }
}

/// Starts a process in a process group of its own (its pid is the group's id), with `spec`'s
/// stdio, working directory and resource limits, an empty signal mask and the default action
/// for every signal, and returns its pid. The limits are set in the child, never in the
/// caller: the sandbox's init starts execs this way and must keep its own. The child shares
/// this process's memory until its `execve` (`CLONE_VM | CLONE_VFORK`, as `posix_spawn`
/// does, so no page table is copied; the limits rule out `posix_spawn` itself), runs on a
/// stack of its own and calls only async-signal-safe functions (`setpgid`, `signal`,
/// `sigprocmask`, `fcntl`, `dup2`, `chdir`, `setrlimit`, `execve`, `write`, `_exit`) on data
/// prepared before the clone; a failure comes back over a close-on-exec pipe as this call's
/// error, the child reaped. Call only from a single-threaded process (the sandbox's init).
pub(crate) fn spawn_in_group(spec: &GroupSpawn<'_>) -> io::Result<Result<i32, SpawnFailure>> {
    let argv: Vec<*const libc::c_char> = spec
        .argv
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let envp: Vec<*const libc::c_char> = spec
        .envp
        .iter()
        .map(|e| e.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let candidates: Vec<*const libc::c_char> = spec.candidates.iter().map(|c| c.as_ptr()).collect();
    let limits: Vec<(u32, libc::rlimit)> = spec
        .rlimits
        .iter()
        .map(|&(res, soft, hard)| {
            (
                res,
                libc::rlimit {
                    rlim_cur: soft,
                    rlim_max: hard,
                },
            )
        })
        .collect();
    let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let child = GroupChild {
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        candidates: candidates.as_ptr(),
        n_candidates: candidates.len(),
        cwd: spec.cwd.as_ptr(),
        stdio: spec.stdio,
        limits: limits.as_ptr(),
        n_limits: limits.len(),
        err_w: err_w.as_raw_fd(),
    };
    // SAFETY: `group_child` honours its contract (see there) and `child`, with everything it
    // points at, lives until this call returns; this process is single-threaded (as
    // documented). The child's own signal table and descriptor table keep its changes from
    // reaching this process.
    let pid = unsafe {
        clone_vm_vfork(
            group_child,
            &child as *const GroupChild as *mut libc::c_void,
            GROUP_CHILD_STACK,
        )
    };
    if pid < 0 {
        return Ok(Err(SpawnFailure {
            step: "fork",
            errno: io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO),
        }));
    }
    drop(err_w);
    let mut buf = [0u8; 2 * std::mem::size_of::<libc::c_int>()];
    let mut have = 0;
    while have < buf.len() {
        match nix::unistd::read(err_r.as_raw_fd(), &mut buf[have..]) {
            Err(nix::errno::Errno::EINTR) => continue,
            Ok(0) => break,
            Ok(n) => have += n,
            Err(e) => {
                // The child's fate is unknown: end it rather than lose track of it.
                // SAFETY: kill takes plain integers; `pid` is this process's unreaped child.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                let _ = wait_pid(pid);
                return Err(e.into());
            }
        }
    }
    if have == 0 {
        return Ok(Ok(pid));
    }
    wait_pid(pid)?;
    let step = i32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let errno = i32::from_ne_bytes([buf[4], buf[5], buf[6], buf[7]]);
    Ok(Err(SpawnFailure {
        step: usize::try_from(step)
            .ok()
            .and_then(|s| SPAWN_STEPS.get(s))
            .copied()
            .unwrap_or("spawn"),
        errno,
    }))
}

/// A child reaped by [`reap_any`]: how it ended and the CPU time it (and the descendants it
/// waited for) used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reaped {
    /// Its pid.
    pub pid: i32,
    /// Its exit code, if it exited.
    pub exit_code: Option<i32>,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// User CPU time in microseconds.
    pub user_us: u64,
    /// System CPU time in microseconds.
    pub system_us: u64,
}

/// `wait4(-1, WNOHANG)`: reaps one ended child if there is one (`Ok(None)` if none has
/// ended yet; `ECHILD` if there are no children), with its resource usage.
pub(crate) fn reap_any() -> io::Result<Option<Reaped>> {
    let mut status: libc::c_int = 0;
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    loop {
        // SAFETY: wait4 writes one c_int and one rusage through the pointers, which point at
        // live locals of those types.
        let rc = unsafe { libc::wait4(-1, &mut status, libc::WNOHANG, usage.as_mut_ptr()) };
        if rc == 0 {
            return Ok(None);
        }
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        // SAFETY: wait4 returned a pid, so it filled `usage` (zeroed before in any case).
        let usage = unsafe { usage.assume_init() };
        let us = |t: libc::timeval| {
            u64::try_from(t.tv_sec)
                .unwrap_or(0)
                .saturating_mul(1_000_000)
                .saturating_add(u64::try_from(t.tv_usec).unwrap_or(0))
        };
        let (exit_code, signal) = if libc::WIFEXITED(status) {
            (Some(libc::WEXITSTATUS(status)), None)
        } else if libc::WIFSIGNALED(status) {
            (None, Some(libc::WTERMSIG(status)))
        } else {
            (None, None)
        };
        return Ok(Some(Reaped {
            pid: rc,
            exit_code,
            signal,
            user_us: us(usage.ru_utime),
            system_us: us(usage.ru_stime),
        }));
    }
}

/// Waits for the child `pid` to exit (retrying on `EINTR`) and returns its raw wait status.
pub(crate) fn wait_pid(pid: i32) -> io::Result<i32> {
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: waitpid writes one c_int through the pointer, which points at a live local.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        if rc == pid {
            return Ok(status);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Where this process's command line lies in its memory (`arg_start`..`arg_end` of
/// `/proc/self/stat`); also valid in a process cloned from it without exec (same layout).
#[derive(Debug, Clone, Copy)]
pub(crate) struct CmdlineArea {
    start: usize,
    end: usize,
}

impl CmdlineArea {
    /// This process's, read from `/proc/self/stat`; `None` if it cannot be read.
    pub(crate) fn own() -> Option<CmdlineArea> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command's closing parenthesis start at field 3; arg_start and
        // arg_end are fields 48 and 49.
        let rest = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let start = fields.get(48 - 3)?.parse().ok()?;
        let end = fields.get(49 - 3)?.parse().ok()?;
        (start < end).then_some(CmdlineArea { start, end })
    }

    /// Overwrites the command line in place with `name` and NUL bytes, so that
    /// `/proc/<pid>/cmdline` shows only `name` (the container's init is a clone of its
    /// monitor, whose arguments name the state root). Affects this process only: the memory
    /// is private to it since the clone. `name` is cut to fit.
    pub(crate) fn blank(self, name: &[u8]) {
        let len = self.end - self.start;
        let keep = name.len().min(len.saturating_sub(1));
        // SAFETY: `start..end` is the argument area the kernel set up at exec, read from
        // /proc/self/stat by this process or the one it was cloned from without exec (so the
        // same address range maps this process's private, writable copy of that stack area);
        // the writes stay inside it. Nothing in this process reads argv afterwards (the
        // standard library's copy of the pointers is not used by the init).
        unsafe {
            let area = std::slice::from_raw_parts_mut(self.start as *mut u8, len);
            area[..keep].copy_from_slice(&name[..keep]);
            area[keep..].fill(0);
        }
    }
}

/// Sets the extended attribute `name` of `path` to `value`, not following a symlink at
/// `path` (`lsetxattr(2)`; nix has no wrapper).
pub(crate) fn set_xattr(
    path: &std::path::Path,
    name: &std::ffi::CStr,
    value: &[u8],
) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `path` and `name` are NUL-terminated strings and `value` a buffer of
    // `value.len()` bytes, all alive for the whole call; lsetxattr keeps no pointer to them.
    let rc = unsafe {
        libc::lsetxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The value (at most 64 bytes) of the extended attribute `name` of `path`, not following
/// a symlink (`lgetxattr(2)`).
pub(crate) fn get_xattr(path: &std::path::Path, name: &std::ffi::CStr) -> io::Result<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut buf = [0u8; 64];
    // SAFETY: NUL-terminated strings and a writable buffer of `buf.len()` bytes, all alive
    // for the call; lgetxattr writes at most `buf.len()` bytes and keeps no pointer.
    let n = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
    Ok(buf.get(..n).unwrap_or(&buf).to_vec())
}

/// `open_tree(path, OPEN_TREE_CLONE | AT_RECURSIVE | OPEN_TREE_CLOEXEC)`: a detached copy of
/// the mount tree at `path` (as `mount --rbind` would make), reachable only through the
/// returned descriptor: attached nowhere, it vanishes when the last descriptor of it is
/// closed. `path` is resolved in this process's mount namespace, a final symlink not
/// followed. Needs CAP_SYS_ADMIN.
pub(crate) fn open_tree_clone(path: &std::path::Path) -> io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    let cpath = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    open_tree(
        libc::AT_FDCWD,
        &cpath,
        libc::AT_SYMLINK_NOFOLLOW as libc::c_uint,
    )
}

/// A detached copy of the detached tree `tree` (see [`open_tree_clone`]; 6.18 does so;
/// older kernels may refuse to clone a detached tree with `EINVAL`).
pub(crate) fn clone_tree(tree: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    open_tree(tree.as_raw_fd(), c"", libc::AT_EMPTY_PATH as libc::c_uint)
}

fn open_tree(dirfd: RawFd, path: &std::ffi::CStr, extra: libc::c_uint) -> io::Result<OwnedFd> {
    let flags = libc::OPEN_TREE_CLONE
        | libc::OPEN_TREE_CLOEXEC
        | libc::AT_RECURSIVE as libc::c_uint
        | extra;
    // SAFETY: `dirfd` is AT_FDCWD or a descriptor the caller borrows for the call, `path` a
    // NUL-terminated string alive for the call; the kernel returns a new fd or -1 and
    // writes nothing back.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, dirfd, path.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = RawFd::try_from(fd).map_err(io::Error::other)?;
    // SAFETY: the kernel returned a fresh fd that nothing else owns (it has O_CLOEXEC).
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `mount_setattr(tree, "", AT_EMPTY_PATH | AT_RECURSIVE, ...)`: sets the mount attributes
/// `set` (`MOUNT_ATTR_*`) on every mount of the tree `tree` (from [`open_tree_clone`]) and
/// makes each private (`MS_PRIVATE`: no mount or unmount propagates to or from it).
pub(crate) fn mount_setattr_private(tree: BorrowedFd<'_>, set: u64) -> io::Result<()> {
    let attr = libc::mount_attr {
        attr_set: set,
        attr_clr: 0,
        propagation: libc::MS_PRIVATE,
        userns_fd: 0,
    };
    // SAFETY: `tree` is a valid fd for the call, the path a static empty C string and `attr`
    // a fully initialised mount_attr whose size is passed; the kernel only reads it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            (libc::AT_EMPTY_PATH | libc::AT_RECURSIVE) as libc::c_uint,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// What an [`attach_in_mount_ns`] child reads, and the one field it writes.
#[repr(C)]
struct AttachChild {
    /// The pidfd of a process whose mount namespace the tree goes into.
    ns_pidfd: RawFd,
    /// The detached tree.
    tree: RawFd,
    /// The mount point, relative to that namespace's root.
    dest: *const libc::c_char,
    /// Written by the child: the failed step (1 setns, 2 open the mount point, 3 move_mount)
    /// and its errno; zeros if the tree was attached.
    failed: [libc::c_int; 2],
}

/// Stack of an [`attach_in_mount_ns`] child (three syscalls, no allocation).
const ATTACH_CHILD_STACK: usize = 16 << 10;

/// The body of an [`attach_in_mount_ns`] child.
///
/// # Safety
/// `arg` points at a live [`AttachChild`] whose pointers are valid; the caller is suspended
/// (`CLONE_VFORK`) while this runs on its own stack in the caller's address space
/// (`CLONE_VM`): it calls only async-signal-safe functions, allocates nothing and writes no
/// memory of the caller's but its own stack, errno and `failed`.
extern "C" fn attach_child(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: as documented above; `fail` never returns.
    unsafe {
        let c = arg as *mut AttachChild;
        // No handler of the caller's may run here, on its memory.
        let mut all = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
        libc::sigfillset(all.as_mut_ptr());
        libc::sigprocmask(libc::SIG_SETMASK, all.as_ptr(), std::ptr::null_mut());
        let fail = |step: libc::c_int| -> ! {
            let failed = std::ptr::addr_of_mut!((*c).failed);
            std::ptr::write_volatile(failed, [step, *libc::__errno_location()]);
            libc::_exit(1)
        };
        // Entering a mount namespace sets this process's root and working directory to
        // that namespace's root: the container's, after its pivot_root.
        if libc::setns((*c).ns_pidfd, libc::CLONE_NEWNS) != 0 {
            fail(1);
        }
        let how = OpenHow {
            flags: (libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC) as u64,
            mode: 0,
            // Beneath that root, and no symlink anywhere on the way (nor a magic link).
            resolve: libc::RESOLVE_IN_ROOT
                | libc::RESOLVE_NO_SYMLINKS
                | libc::RESOLVE_NO_MAGICLINKS,
        };
        let target = libc::syscall(
            libc::SYS_openat2,
            libc::AT_FDCWD,
            (*c).dest,
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        );
        let Ok(target) = libc::c_int::try_from(target) else {
            fail(2);
        };
        let flags = libc::MOVE_MOUNT_F_EMPTY_PATH | libc::MOVE_MOUNT_T_EMPTY_PATH;
        if libc::syscall(
            libc::SYS_move_mount,
            (*c).tree,
            c"".as_ptr(),
            target,
            c"".as_ptr(),
            flags,
        ) != 0
        {
            fail(3);
        }
        libc::_exit(0)
    }
}

/// Why [`attach_in_mount_ns`] attached nothing: the step and its errno.
#[derive(Debug, thiserror::Error)]
#[error("{step}")]
pub(crate) struct AttachFailure {
    /// `"setns"`, `"open the mount point"`, `"move_mount"`, `"clone"` or `"wait"`.
    pub step: &'static str,
    /// The error.
    #[source]
    pub source: io::Error,
}

/// Mounts the detached tree `tree` (from [`open_tree_clone`]) on the directory `dest` (a
/// path relative to the namespace's root, without a leading `/`) of the mount namespace of
/// the process `ns_pidfd` refers to. `dest` must resolve beneath that root without any
/// symlink (`openat2` with `RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS`), and be a directory.
/// This process stays in its own namespace: a child sharing its memory until it exits
/// (`CLONE_VM | CLONE_VFORK`) enters the other one (`setns`), opens the mount point there and
/// moves the tree onto it (`move_mount`), then exits; the caller reaps it. Call only from a
/// single-threaded process (the monitor). On failure nothing is attached; the tree stays
/// the caller's (closing it frees it).
pub(crate) fn attach_in_mount_ns(
    ns_pidfd: BorrowedFd<'_>,
    tree: BorrowedFd<'_>,
    dest: &std::ffi::CStr,
) -> Result<(), AttachFailure> {
    let mut child = AttachChild {
        ns_pidfd: ns_pidfd.as_raw_fd(),
        tree: tree.as_raw_fd(),
        dest: dest.as_ptr(),
        failed: [0, 0],
    };
    // SAFETY: `attach_child` honours its contract (see there) and `child`, with what it
    // points at, lives until this call returns; the caller is single-threaded (the monitor).
    // The child has its own signal and descriptor tables and its own fs_struct (no
    // CLONE_SIGHAND, CLONE_FILES or CLONE_FS), so its setns leaves this process's
    // namespace, root and working directory alone.
    let pid = unsafe {
        clone_vm_vfork(
            attach_child,
            std::ptr::addr_of_mut!(child) as *mut libc::c_void,
            ATTACH_CHILD_STACK,
        )
    };
    if pid < 0 {
        return Err(AttachFailure {
            step: "clone",
            source: io::Error::last_os_error(),
        });
    }
    let status = wait_pid(pid).map_err(|source| AttachFailure {
        step: "wait",
        source,
    })?;
    // SAFETY: the child has exited (reaped above); `child.failed` is plain memory it may
    // have written before then.
    let [step, errno] = unsafe { std::ptr::read_volatile(std::ptr::addr_of!(child.failed)) };
    if step == 0 && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        return Ok(());
    }
    let step = match step {
        1 => "setns",
        2 => "open the mount point",
        3 => "move_mount",
        _ => "the attaching child ended",
    };
    let source = if errno != 0 {
        io::Error::from_raw_os_error(errno)
    } else {
        io::Error::other(format!("wait status {status:#x}"))
    };
    Err(AttachFailure { step, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::poll::PollFlags;
    use std::os::fd::AsFd;
    use std::time::Duration;

    #[test]
    fn a_group_spawn_sets_stdio_cwd_limits_and_group_in_the_child_and_reports_failures() {
        use std::ffi::CString;
        use std::io::Read;
        let c = |s: &str| CString::new(s).unwrap();
        // Close-on-exec: a child of another test must not hold the write end.
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let w_raw = w.as_raw_fd();
        let null = std::fs::File::open("/dev/null").unwrap();
        let argv = [
            c("sh"),
            c("-c"),
            c("echo $(pwd) $(ulimit -t) $$ $(cut -d' ' -f5 /proc/$$/stat)"),
        ];
        let spawn = |candidates: &[CString], cwd: &str| {
            spawn_in_group(&GroupSpawn {
                candidates,
                argv: &argv,
                envp: &[c("PATH=/usr/bin:/bin")],
                cwd: &c(cwd),
                stdio: [null.as_raw_fd(), w_raw, w_raw],
                rlimits: &[(libc::RLIMIT_CPU, 7, 8)],
            })
            .unwrap()
        };
        assert_eq!(
            spawn(&[c("/bin/sh")], "/no/such/dir"),
            Err(SpawnFailure {
                step: "chdir",
                errno: libc::ENOENT
            })
        );
        assert_eq!(
            spawn(&[c("/no/such/sh")], "/tmp"),
            Err(SpawnFailure {
                step: "execve",
                errno: libc::ENOENT
            })
        );
        // A missing candidate is skipped for the next.
        let pid = spawn(&[c("/no/such/sh"), c("/bin/sh")], "/tmp").unwrap();
        assert_eq!(wait_pid(pid).unwrap(), 0);
        drop(w);
        let mut out = String::new();
        std::fs::File::from(r).read_to_string(&mut out).unwrap();
        let words: Vec<&str> = out.split_whitespace().collect();
        assert_eq!(words[..2], ["/tmp", "7"], "{out}");
        assert_eq!(words[2], words[3], "not the leader of its own group: {out}");
    }

    #[test]
    fn a_spawned_program_gets_no_descriptor_above_2_of_its_caller() {
        // A descriptor without close-on-exec, as a caller's C code or shell leaves one.
        let file = std::fs::File::open("/dev/null").unwrap();
        let fd = file.as_raw_fd();
        nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
        )
        .unwrap();
        // The shell exits 0 if it does not have the descriptor, 1 if it does.
        let probe = || {
            let mut cmd = std::process::Command::new("/bin/sh");
            cmd.arg("-c")
                .arg(format!("[ -e /proc/$$/fd/{fd} ] && exit 1 || exit 0"));
            cmd
        };
        assert_eq!(
            probe().status().unwrap().code(),
            Some(1),
            "it leaks without"
        );
        let mut cmd = probe();
        exec_with_stdio_only(&mut cmd);
        assert_eq!(cmd.status().unwrap().code(), Some(0));
        // The caller keeps its own.
        assert!(nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).is_ok());
        drop(file);
    }

    #[test]
    fn poll_until_waits_for_the_deadline_and_reports_events() {
        let (r, w) = nix::unistd::pipe().unwrap();
        let start = Instant::now();
        let deadline = start + Duration::from_millis(30);
        let mut fds = [PollFd::new(r.as_fd(), PollFlags::POLLIN)];
        assert_eq!(poll_until(&mut fds, Some(deadline)).unwrap(), 0);
        assert!(Instant::now() >= deadline);
        nix::unistd::write(&w, b"x").unwrap();
        let mut fds = [PollFd::new(r.as_fd(), PollFlags::POLLIN)];
        assert_eq!(poll_until(&mut fds, None).unwrap(), 1);
        assert!(has_event(&fds[0]));
        // A deadline already passed polls once without waiting.
        let mut fds = [PollFd::new(r.as_fd(), PollFlags::POLLIN)];
        assert_eq!(poll_until(&mut fds, Some(Instant::now())).unwrap(), 1);
    }

    /// The cgroup v2 hierarchy's mount point (`unified` on a hybrid host).
    fn cgroup2_mount() -> std::path::PathBuf {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        let line = mounts
            .lines()
            .find(|l| l.split_whitespace().nth(2) == Some("cgroup2"))
            .expect("a cgroup2 hierarchy is mounted");
        line.split_whitespace().nth(1).unwrap().into()
    }

    #[test]
    fn spawn_into_cgroup_starts_the_program_in_that_cgroup_from_birth() {
        let name = format!("runbox-unit-clone3-{}", std::process::id());
        let dir = cgroup2_mount().join(&name);
        std::fs::create_dir(&dir).unwrap();
        let cg = std::fs::File::open(&dir).unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        let null = std::fs::File::open("/dev/null").unwrap();
        let cat = std::ffi::CString::new("/bin/cat").unwrap();
        // `cat` reads its own cgroup as its first act: no later migration could hide a miss.
        let argv = [
            cat.clone(),
            std::ffi::CString::new("/proc/self/cgroup").unwrap(),
        ];
        let pid = spawn_into_cgroup(
            &cat,
            &argv,
            [null.as_fd(), w.as_fd(), null.as_fd()],
            cg.as_fd(),
        )
        .unwrap()
        .expect("clone3 with CLONE_INTO_CGROUP");
        drop(w);
        let mut out = String::new();
        std::io::Read::read_to_string(&mut std::fs::File::from(r), &mut out).unwrap();
        let status = wait_pid(pid).unwrap();
        let _ = std::fs::remove_dir(&dir);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "{status}"
        );
        assert!(out.lines().any(|l| l == format!("0::/{name}")), "{out}");

        // An exec failure comes back as this call's error, with nothing left to reap.
        std::fs::create_dir(&dir).unwrap();
        let cg = std::fs::File::open(&dir).unwrap();
        let missing = std::ffi::CString::new("/nonexistent/runbox-exe").unwrap();
        let err = spawn_into_cgroup(
            &missing,
            std::slice::from_ref(&missing),
            [null.as_fd(); 3],
            cg.as_fd(),
        )
        .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT), "{err}");
        assert!(std::fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap()
            .is_empty());
        std::fs::remove_dir(&dir).unwrap();
    }
}
