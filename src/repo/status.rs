//! The status object of a running `base-backup`: `<server>/locks/backup-status.json`.
//!
//! The backup rewrites it every few seconds (and at each change of phase) so that
//! `pgcellar info` in another terminal, or on another host, sees its phase and
//! progress. It sits beside the lock and, like the lock, stays in clear in an
//! encrypted repository: it holds counts and a WAL name, nothing of the data. A
//! status is only trusted while the server lock is held by a live `base-backup`
//! with the same token; otherwise it is what the last attempt left behind.

use super::json::{parse_json, read_small, to_json};
use super::layout::backup_status_file as status_file;
use crate::error::{ErrorKind, Result};
use crate::storage::{Overwrite, Storage};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// What a running backup is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// pg_backup_start and the walk of the data directory.
    Starting,
    /// Reading and storing files.
    Copying,
    /// pg_backup_stop done; waiting for the stop segment to reach the repository.
    WaitingForWal,
    /// Storing the WAL the backup needs, pg_control and the manifest.
    Finishing,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::Starting => "starting",
            Phase::Copying => "copying files",
            Phase::WaitingForWal => "waiting for WAL",
            Phase::Finishing => "finishing",
        })
    }
}

/// Contents of the status object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackupStatus {
    /// The id the backup will have.
    pub id: String,
    /// Token of the server lock the backup holds (see `repo::lock`).
    pub lock_token: String,
    /// Host and process of the backup.
    pub host: String,
    /// Process id on that host.
    pub pid: u32,
    /// Current phase.
    pub phase: Phase,
    /// When the backup started.
    pub started: DateTime<Utc>,
    /// When this status was written.
    pub updated: DateTime<Utc>,
    /// Files to store, and files dealt with so far (stored or reused).
    pub files_total: u64,
    /// Files dealt with so far.
    pub files_done: u64,
    /// Bytes of all files to store (their sizes in the data directory).
    pub bytes_total: u64,
    /// Bytes of the files dealt with so far, read or reused.
    pub bytes_done: u64,
    /// Bytes actually read from the data directory so far (reused files are not read).
    pub bytes_read: u64,
    /// While waiting for WAL: the segment waited for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
    /// While waiting for WAL: what pg_stat_archiver last said, in one line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archiver: Option<String>,
}

/// Write (replace) the status object.
pub fn write(storage: &dyn Storage, server: &str, status: &BackupStatus) -> Result<()> {
    storage.write_all(&status_file(server), &to_json(status)?, Overwrite::Replace)?;
    Ok(())
}

/// Read the status object; `None` if there is none.
pub fn read(storage: &dyn Storage, server: &str) -> Result<Option<BackupStatus>> {
    let path = status_file(server);
    match read_small(storage, &path) {
        Ok(bytes) => parse_json(&bytes, &path).map(Some),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Remove the status object (the backup ended); a missing one is fine.
pub fn remove(storage: &dyn Storage, server: &str) -> Result<()> {
    match storage.remove_file(&status_file(server)) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
