//! The data directory's free disk, watched: a gauge (`flashstock_disk_free_bytes`) and a
//! readiness check (`disk`) that fails below `disk_free_min_bytes`.
//!
//! Why: the log is the one thing that grows with traffic, and a full disk fails its next
//! append or sync, after which the server acknowledges nothing more and stops (fail-stop,
//! nothing acknowledged is lost). Operators and load balancers should see the disk filling
//! before that, not learn of it from the stop. The check only reports: the server keeps
//! serving while the disk still takes writes.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

/// The default of `disk_free_min_bytes`: 1 GiB, about 20 s of the log at 500k reserves/s
/// (~100 bytes a record with its framing), time for an alert to be seen.
pub const DISK_FREE_MIN_BYTES_DEFAULT: u64 = 1 << 30;

/// Watches the free disk of one directory's file system.
#[derive(Debug)]
pub struct DiskWatch {
    dir: PathBuf,
    free_min_bytes: u64,
    /// Whether the last look found it under the minimum (to log the crossing once).
    low: AtomicBool,
}

impl DiskWatch {
    /// Watches `dir`'s file system; `free_min_bytes` 0 never fails the check.
    pub fn new(dir: PathBuf, free_min_bytes: u64) -> DiskWatch {
        DiskWatch { dir, free_min_bytes, low: AtomicBool::new(false) }
    }

    /// Reads the free space (what an unprivileged writer may still use), sets the gauge, logs
    /// a crossing of the minimum either way, and says whether it is at or over the minimum.
    pub fn check(&self) -> Result<(), String> {
        let free_bytes = match fs2::available_space(&self.dir) {
            Ok(free_bytes) => free_bytes,
            Err(err) => return Err(format!("free disk of {} unknown: {err}", self.dir.display())),
        };
        metrics::gauge!(crate::metrics::DISK_FREE_BYTES).set(free_bytes as f64);
        let verdict = verdict(free_bytes, self.free_min_bytes);
        let low = verdict.is_err();
        if self.low.swap(low, Ordering::Relaxed) != low {
            let (dir, min) = (self.dir.display(), self.free_min_bytes);
            if low {
                tracing::warn!(%dir, free_bytes, min, "free disk under disk_free_min_bytes");
            } else {
                tracing::info!(%dir, free_bytes, min, "free disk back over disk_free_min_bytes");
            }
        }
        verdict
    }
}

/// The check's answer for `free_bytes` against `free_min_bytes`.
fn verdict(free_bytes: u64, free_min_bytes: u64) -> Result<(), String> {
    if free_bytes >= free_min_bytes {
        return Ok(());
    }
    Err(format!(
        "{} MiB free for the log, under disk_free_min_bytes ({} MiB)",
        free_bytes >> 20,
        free_min_bytes >> 20
    ))
}

#[cfg(test)]
mod tests {
    use super::{verdict, DiskWatch};

    #[test]
    fn the_check_fails_under_the_minimum_and_names_both() {
        assert_eq!(verdict(2 << 20, 2 << 20), Ok(()));
        assert_eq!(verdict(0, 0), Ok(()), "0 turns the check off");
        let low = verdict((2 << 20) - 1, 2 << 20).unwrap_err();
        assert_eq!(low, "1 MiB free for the log, under disk_free_min_bytes (2 MiB)");
    }

    #[test]
    fn a_directory_that_is_gone_fails_the_check_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let watch = DiskWatch::new(dir.path().join("gone"), 0);
        let err = watch.check().unwrap_err();
        assert!(err.starts_with("free disk of ") && err.contains("gone"), "{err}");
        let watch = DiskWatch::new(dir.path().to_path_buf(), 0);
        assert_eq!(watch.check(), Ok(()));
        let watch = DiskWatch::new(dir.path().to_path_buf(), u64::MAX);
        assert!(watch.check().unwrap_err().contains("under disk_free_min_bytes"));
    }
}
