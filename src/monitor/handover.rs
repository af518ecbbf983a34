//! The moment a spare stops being one: it becomes the monitor of the sandbox it is handed,
//! or it ends, giving back its pre-built container and uid. Runs in a spare (one started
//! by its controller, or a parked one).

use std::os::fd::OwnedFd;
use std::path::Path;

use crate::host::uids::UidLease;
use crate::proto::Mode;

use super::built::{Built, Streams};
use super::process::{self, Prepared};
use super::{phases, run};

/// Tears a pre-built container down, then gives back the uid it held, and exits with `code`.
pub(super) fn end(warm: Option<(Built, Streams)>, warm_uid: Option<UidLease>, code: i32) -> ! {
    drop(warm);
    drop(warm_uid);
    std::process::exit(code)
}

/// Becomes the monitor of the sandbox in `dir` (a `Take` request), with the container
/// built ahead, if any, and the launcher's descriptors the sandbox inherits.
pub(super) fn take(
    dir: &Path,
    mode: Mode,
    prepared: &Prepared,
    warm: Option<(Built, Streams)>,
    warm_uid: Option<UidLease>,
    streams: Vec<OwnedFd>,
) -> ! {
    phases::clear();
    phases::mark("spare_taken");
    process::redirect_stderr(&dir.join("monitor.log"));
    process::exit_with(run::run(dir, mode, prepared, warm, warm_uid, Some(streams)))
}
