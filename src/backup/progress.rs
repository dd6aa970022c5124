//! What a running backup tells the two people who may watch it: the one at its
//! terminal (a [`Meter`] line) and the one running `pgcellar info` elsewhere (the
//! status object, `repo::status`). Neither can fail the backup: a status that cannot
//! be written is noted once with -v and the backup goes on.

use crate::repo::lock::hostname;
use crate::repo::status::{self, BackupStatus, Phase};
use crate::storage::Storage;
use crate::util::progress::Meter;
use chrono::Utc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often the status object is rewritten while files are copied (one small write:
/// a PUT on S3, an fsync on a disk).
const STATUS_EVERY: Duration = Duration::from_secs(5);

/// The backup's reporter.
pub(super) struct Reporter<'a> {
    storage: &'a dyn Storage,
    server: &'a str,
    meter: Meter,
    status: Mutex<BackupStatus>,
    last_write: Mutex<Instant>,
    write_failed: AtomicBool,
}

impl<'a> Reporter<'a> {
    /// Start reporting backup `id`, taken under the lock with `lock_token`;
    /// `terminal` when a progress line is wanted (it is drawn only on a terminal).
    pub(super) fn new(
        storage: &'a dyn Storage,
        server: &'a str,
        id: &str,
        lock_token: &str,
        terminal: bool,
    ) -> Reporter<'a> {
        let now = Utc::now();
        let r = Reporter {
            storage,
            server,
            meter: Meter::new(terminal, "read"),
            status: Mutex::new(BackupStatus {
                id: id.to_string(),
                lock_token: lock_token.to_string(),
                host: hostname(),
                pid: std::process::id(),
                phase: Phase::Starting,
                started: now,
                updated: now,
                files_total: 0,
                files_done: 0,
                bytes_total: 0,
                bytes_done: 0,
                bytes_read: 0,
                waiting_for: None,
                archiver: None,
            }),
            last_write: Mutex::new(Instant::now()),
            write_failed: AtomicBool::new(false),
        };
        r.meter.say(format!("starting backup {id}"));
        r.write(true);
        r
    }

    /// The copy of `files` files, `bytes` bytes, begins.
    pub(super) fn copying(&self, files: u64, bytes: u64) {
        if let Ok(mut s) = self.status.lock() {
            s.phase = Phase::Copying;
            s.files_total = files;
            s.bytes_total = bytes;
        }
        self.meter.start_copy(files, bytes);
        self.write(true);
    }

    /// One file stored: `size` bytes, `read` whether it was read (not reused unread).
    pub(super) fn file_done(&self, size: u64, read: bool) {
        self.meter.file_done(size, if read { size } else { 0 });
        self.write(false);
    }

    /// Waiting for `segment` to reach the repository; `archiver` is what
    /// pg_stat_archiver says, in one line.
    pub(super) fn waiting(&self, segment: &str, line: &str, archiver: Option<String>) {
        let changed = match self.status.lock() {
            Ok(mut s) => {
                let changed = s.phase != Phase::WaitingForWal
                    || s.waiting_for.as_deref() != Some(segment)
                    || s.archiver != archiver;
                s.phase = Phase::WaitingForWal;
                s.waiting_for = Some(segment.to_string());
                s.archiver.clone_from(&archiver);
                changed
            }
            Err(_) => false,
        };
        let text = match &archiver {
            Some(a) => format!("{line}; pg_stat_archiver: {a}"),
            None => line.to_string(),
        };
        self.meter.say(text);
        self.write(changed);
    }

    /// The WAL is there; storing the manifest.
    pub(super) fn finishing(&self) {
        if let Ok(mut s) = self.status.lock() {
            s.phase = Phase::Finishing;
            s.waiting_for = None;
            s.archiver = None;
        }
        self.meter.say("storing the manifest".to_string());
        self.write(true);
    }

    /// The backup ended (either way): the line goes, and so does the status object.
    pub(super) fn end(&self) {
        self.meter.finish();
        if let Err(e) = status::remove(self.storage, self.server) {
            crate::log_info!("could not remove the backup's status object: {e}");
        }
    }

    /// Rewrite the status object now (`force`) or when it is due.
    fn write(&self, force: bool) {
        let due = match self.last_write.try_lock() {
            Ok(mut last) if force || last.elapsed() >= STATUS_EVERY => {
                *last = Instant::now();
                true
            }
            _ => false,
        };
        if !due {
            return;
        }
        let snapshot = match self.status.lock() {
            Ok(mut s) => {
                let c = self.meter.counts();
                s.files_done = c.files_done;
                s.bytes_done = c.bytes_done;
                s.bytes_read = c.bytes_moved;
                s.updated = Utc::now();
                s.clone()
            }
            Err(_) => return,
        };
        if let Err(e) = status::write(self.storage, self.server, &snapshot) {
            if !self.write_failed.swap(true, Ordering::Relaxed) {
                crate::log_info!("could not write the backup's status object (pgcellar info will not show its progress): {e}");
            }
        }
    }
}
