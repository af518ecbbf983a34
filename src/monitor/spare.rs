//! A spare monitor: everything that does not depend on a sandbox is done (detached, seccomp
//! compiled, own mount namespace, out of the controller's cgroups); it may pre-build a
//! container shaped like the last launch, then becomes the monitor of the sandbox it is
//! handed. Runs in a spare (exec'd, or forked by the factory), reading [`SpareRequest`]s.

use std::io;
use std::os::fd::AsFd;
use std::path::PathBuf;

use crate::host::uids::UidLease;
use crate::proto::{expect_hello, SpareRequest};

use super::built::{Built, Streams};
use super::process::{self, Prepared};
use super::{handover, parked};

/// An exec'd spare (`MONITOR_ARG ROOT spare PREFIX`).
pub(super) fn exec(root: PathBuf, prefix: &str) -> ! {
    process::detach();
    match Prepared::new(Some(prefix)) {
        Ok(prepared) => serve(root, prefix, &prepared),
        Err(_) => std::process::exit(1), // the controller falls back to a fresh monitor
    }
}

/// The request loop of a spare, after the controller's hello (another protocol version's
/// ends the spare at once):
/// - `Warm` (optional, first): builds a container of that shape in that cgroup ahead of
///   time, from the sandbox spec alone (see [`crate::config::SandboxSpec::shape`]);
/// - `Park` (only first): leaves the controller to wait in the state root for any
///   controller's claim (`parked.rs`);
/// - `Take { mode, dir }` (with the inherited streams): becomes that sandbox's monitor,
///   with the pre-built container if its record matches it, else building one.
///
/// End of file (the controller dropped its root or died), a request it does not
/// understand or out of order, or a broken frame, tears a pre-built container down and
/// ends the spare.
///
/// A `Warm` shape with a uid leased for it ([`crate::config::SandboxSpec::uid_leased`])
/// makes the spare that uid's holder: it gives the uid back once its pre-built container is
/// torn down, unless the sandbox it is handed runs as that uid (the controller gives the
/// spare's uid to a sandbox that wants one of the range), whose removal then gives it back.
pub(super) fn serve(root: PathBuf, prefix: &str, prepared: &Prepared) -> ! {
    let mut warm: Option<(Built, Streams)> = None;
    let mut warm_uid: Option<UidLease> = None;
    let stdin = io::stdin();
    let mut reader = SpareRequest::reader(stdin.as_fd());
    if expect_hello(&mut reader).is_err() {
        handover::end(warm, warm_uid, 2);
    }
    let mut first = true;
    loop {
        let Ok(got) = reader.recv::<SpareRequest>() else {
            // End of file (0), or a request this spare cannot read: it ends either way.
            handover::end(warm, warm_uid, 0);
        };
        let fds = got.fds;
        match got.msg {
            SpareRequest::Warm { cgroup_path, shape } if warm.is_none() && fds.is_empty() => {
                // The controller leased it for this container: the spare holds it now.
                warm_uid = shape
                    .uid_leased
                    .then(|| UidLease::adopt(&root, shape.user.uid));
                // A failed build leaves the spare cold: it builds when its request comes.
                warm = Built::new(&shape, &cgroup_path, &root, prepared).ok();
            }
            SpareRequest::Park(park) if first && fds.is_empty() => {
                drop(reader);
                parked::park(root, prefix, prepared, *park)
            }
            // The launcher's descriptors the sandbox inherits came with this request.
            SpareRequest::Take { mode, dir } => {
                handover::take(&dir, mode, prepared, warm, warm_uid, fds)
            }
            _ => handover::end(warm, warm_uid, 2),
        }
        first = false;
    }
}
