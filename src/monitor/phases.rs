//! When each step of this monitor ended, for the benchmarks' phase breakdown (the `bench`
//! feature; without it every call is a no-op). Runs in the monitor, a single-threaded process.

#[cfg(feature = "bench")]
static PHASES: std::sync::Mutex<Vec<(&'static str, u64)>> = std::sync::Mutex::new(Vec::new());

/// Records that `phase` ended now.
pub(super) fn mark(phase: &'static str) {
    #[cfg(feature = "bench")]
    if let Ok(mut p) = PHASES.lock() {
        p.push((phase, crate::host::sys::monotonic_us()));
    }
    #[cfg(not(feature = "bench"))]
    let _ = phase;
}

/// Records a step the init reported at `us` (each label once).
pub(super) fn mark_at(label: &str, us: u64) {
    #[cfg(feature = "bench")]
    {
        let label = match label {
            "spawned" => "init_spawned",
            "reaped" => "init_reaped",
            _ => return,
        };
        if let Ok(mut p) = PHASES.lock() {
            if !p.iter().any(|(n, _)| *n == label) {
                p.push((label, us));
            }
        }
    }
    #[cfg(not(feature = "bench"))]
    let _ = (label, us);
}

/// Forgets the marks so far (a spare starts counting when it is taken).
pub(super) fn clear() {
    #[cfg(feature = "bench")]
    if let Ok(mut p) = PHASES.lock() {
        p.clear();
    }
}

/// The marks so far, for the exit record.
#[cfg(feature = "bench")]
pub(super) fn taken() -> Vec<(String, u64)> {
    PHASES
        .lock()
        .map(|p| p.iter().map(|(n, t)| (n.to_string(), *t)).collect())
        .unwrap_or_default()
}
