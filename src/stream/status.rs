//! The status object of `pgcellar receive-wal`: `<server>/locks/receive-wal-status.json`.
//!
//! The receiver rewrites it every few seconds and at each change of state, so that
//! `check` and `info` (on any host) can say whether the stream runs, how far behind
//! the repository is, and why it last failed. Like the backup status it sits beside
//! the locks and stays in clear in an encrypted repository: positions, host, process
//! and libpq's connection messages, nothing of the data.

use crate::error::{ErrorKind, Result};
use crate::repo::json::{parse_json, read_small, to_json};
use crate::repo::layout::receiver_status_file as status_file;
use crate::storage::{Overwrite, Storage};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// What the receiver is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReceiverState {
    /// pg_receivewal is connected and streaming.
    Streaming,
    /// The connection failed or ended; waiting before the next attempt.
    Reconnecting,
    /// The receiver was stopped (SIGTERM/SIGINT) and stored what it had.
    Stopped,
}

impl std::fmt::Display for ReceiverState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ReceiverState::Streaming => "streaming",
            ReceiverState::Reconnecting => "reconnecting",
            ReceiverState::Stopped => "stopped",
        })
    }
}

/// Contents of the status object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReceiverStatus {
    /// Host of the receiver.
    pub host: String,
    /// Its process id.
    pub pid: u32,
    /// Replication slot streamed from.
    pub slot: String,
    /// Whether flushes are reported to the server as they happen (synchronous mode).
    pub synchronous: bool,
    /// The local spool pg_receivewal writes into.
    pub spool: String,
    /// Seconds between refreshes of the partial segment in the repository.
    pub interval_seconds: u64,
    /// Current state.
    pub state: ReceiverState,
    /// When the receiver started.
    pub started: DateTime<Utc>,
    /// When this status was written.
    pub updated: DateTime<Utc>,
    /// Newest complete segment the stream stored (or found stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_segment: Option<String>,
    /// The partial segment in the repository now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial: Option<String>,
    /// End of the WAL the repository holds from the stream (LSN, to a page or so).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_lsn: Option<String>,
    /// The server's WAL position when this status was written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_lsn: Option<String>,
    /// Bytes of WAL the server has that the repository does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_bytes: Option<u64>,
    /// Seconds since the repository last held all the server's WAL (0 when caught up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_seconds: Option<f64>,
    /// Whether the slot exists on the server (as last seen).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot_present: Option<bool>,
    /// The last error, in one line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When it happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error_at: Option<DateTime<Utc>>,
}

impl ReceiverStatus {
    /// How old the status is at `now`, in seconds.
    pub fn age_seconds(&self, now: DateTime<Utc>) -> i64 {
        (now - self.updated).num_seconds().max(0)
    }

    /// A receiver that says it is running but has not written for this long is
    /// dead or hung: three refreshes, and never under 30 seconds.
    pub fn stale_after_seconds(&self) -> i64 {
        (3 * STATUS_EVERY_SECONDS.max(self.interval_seconds) as i64).max(30)
    }

    /// Whether the receiver is alive at `now`: not stopped, and refreshed recently.
    pub fn running(&self, now: DateTime<Utc>) -> bool {
        self.state != ReceiverState::Stopped && self.age_seconds(now) <= self.stale_after_seconds()
    }
}

/// Seconds between rewrites of the status object while streaming.
pub const STATUS_EVERY_SECONDS: u64 = 5;

/// Write (replace) the status object.
pub fn write(storage: &dyn Storage, server: &str, status: &ReceiverStatus) -> Result<()> {
    storage.write_all(&status_file(server), &to_json(status)?, Overwrite::Replace)?;
    Ok(())
}

/// Read the status object; `None` if no receiver ever ran for `server`.
pub fn read(storage: &dyn Storage, server: &str) -> Result<Option<ReceiverStatus>> {
    let path = status_file(server);
    match read_small(storage, &path) {
        Ok(bytes) => parse_json(&bytes, &path).map(Some),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}
