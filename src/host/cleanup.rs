//! Best-effort removals, for cleanups whose failure has no caller to go to (after another
//! error, in a drop, when a resource is given back): a failure other than "already gone" is
//! logged with what the path was, and what is left is collected later (`gc`, `prune`, the
//! worker's next reconcile). Used by every process; the log goes wherever the process's
//! `tracing` subscriber sends it (nowhere without one).

use std::io;
use std::path::Path;

/// Removes the file `path`; `what` names it for the log.
pub(crate) fn remove_file(path: &Path, what: &str) {
    log(std::fs::remove_file(path), "remove", path, what);
}

/// Removes the directory tree `path`; `what` names it for the log.
pub(crate) fn remove_tree(path: &Path, what: &str) {
    log(std::fs::remove_dir_all(path), "remove", path, what);
}

/// Removes the directory `path` if it is empty (one that is not stays, silently: it is in
/// use); `what` names it for the log.
pub(crate) fn remove_empty_dir(path: &Path, what: &str) {
    match std::fs::remove_dir(path) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => {}
        r => log(r, "remove", path, what),
    }
}

/// Logs `result`'s failure to `verb` `path` (`what`), unless the path was already gone.
pub(crate) fn log(result: io::Result<()>, verb: &str, path: &Path, what: &str) {
    match result {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!("could not {verb} {what} {}: {e}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removals_remove_and_tolerate_what_is_gone_or_in_use() {
        let d = std::env::temp_dir().join(format!("runbox-cleanup-{}", std::process::id()));
        std::fs::create_dir_all(d.join("a/b")).unwrap();
        std::fs::write(d.join("a/b/f"), b"x").unwrap();
        remove_empty_dir(&d.join("a"), "a non-empty dir");
        assert!(d.join("a/b/f").exists());
        remove_file(&d.join("a/b/f"), "a file");
        assert!(!d.join("a/b/f").exists());
        remove_file(&d.join("a/b/f"), "a file already gone");
        remove_empty_dir(&d.join("a/b"), "an empty dir");
        assert!(!d.join("a/b").exists());
        remove_tree(&d, "a tree");
        assert!(!d.exists());
        remove_tree(&d, "a tree already gone");
    }
}
