//! Test-only fault injection, compiled in only with the `fault-injection` cargo
//! feature (which the integration tests turn on through a dev-dependency on this
//! crate), so the shipped binaries neither read `PGCELLAR_TEST_FAULT` nor carry the
//! hooks. Without the feature every hook is an empty function.

/// Whether `PGCELLAR_TEST_FAULT` names `fault`.
#[cfg(feature = "fault-injection")]
fn armed(fault: &str) -> bool {
    std::env::var_os("PGCELLAR_TEST_FAULT").is_some_and(|v| v == fault)
}

/// `PGCELLAR_TEST_FAULT=crash-before-rename` kills the process after a temporary file
/// is written and synced, before it gets its name (local and SSH commits; on S3 once the
/// bytes are uploaded, in one buffer or as a completed temporary upload, before the
/// final key is written).
#[inline(always)]
pub(crate) fn crash_before_rename() {
    #[cfg(feature = "fault-injection")]
    if armed("crash-before-rename") {
        // abort() is as abrupt as a power cut for the repository's visible state.
        std::process::abort();
    }
}

/// `PGCELLAR_TEST_FAULT=crash-before-complete` kills the process once the parts of a
/// multipart upload are sent, before it is completed (the S3 driver), leaving an
/// unfinished upload for `pgcellar cron` to abort.
#[inline(always)]
pub(crate) fn crash_before_complete() {
    #[cfg(feature = "fault-injection")]
    if armed("crash-before-complete") {
        std::process::abort();
    }
}

/// `PGCELLAR_TEST_FAULT=pause-before-rename` makes an SSH commit announce itself on
/// stderr and wait a second after the temporary file is written and synced, before
/// it gets its name, so a test can break the connection there.
#[inline(always)]
pub(crate) fn pause_before_rename() {
    #[cfg(feature = "fault-injection")]
    if armed("pause-before-rename") {
        eprintln!("pgcellar test fault: pausing before rename");
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

/// `PGCELLAR_TEST_FAULT=pause-after-backup-start` makes base-backup announce itself on
/// stderr and wait five seconds once PostgreSQL has started the backup, so a test can
/// promote the standby it backs up.
#[inline(always)]
pub(crate) fn pause_after_backup_start() {
    #[cfg(feature = "fault-injection")]
    if armed("pause-after-backup-start") {
        eprintln!("pgcellar test fault: pausing after backup start");
        std::thread::sleep(std::time::Duration::from_secs(5));
    }
}

/// `PGCELLAR_TEST_FAULT=lookahead-abort-after-commit` kills the process right after a
/// look-ahead push is durable in the repository, before its record is written, while
/// other workers may be mid-push.
#[inline(always)]
pub(crate) fn lookahead_abort_after_commit() {
    #[cfg(feature = "fault-injection")]
    if armed("lookahead-abort-after-commit") {
        std::process::abort();
    }
}

/// `PGCELLAR_TEST_FAULT=sweep-abort-after-N` kills the process once a sweep has
/// removed N objects (N = 0: after its mark, before any removal).
#[inline(always)]
pub(crate) fn sweep_abort_after(removed: u64) {
    #[cfg(feature = "fault-injection")]
    if std::env::var("PGCELLAR_TEST_FAULT")
        .ok()
        .and_then(|v| v.strip_prefix("sweep-abort-after-")?.parse::<u64>().ok())
        == Some(removed)
    {
        std::process::abort();
    }
    #[cfg(not(feature = "fault-injection"))]
    let _ = removed;
}
