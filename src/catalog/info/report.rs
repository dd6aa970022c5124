//! The types of the `pgcellar info` report (serialized as documented in
//! `docs/cli-json.md`).

use crate::archive::timeline::MissingRange;
use crate::archive::PushRefusal;
use crate::repo::status::Phase;
use crate::stream::ReceiverStatus;
use chrono::{DateTime, Utc};
use serde::Serialize;

/// Everything `pgcellar info` reports.
#[derive(Debug, Clone, Serialize)]
pub struct InfoReport {
    /// The repository (its location, without secrets).
    pub repository: String,
    /// When the report was made; the throughput windows end here.
    pub time: DateTime<Utc>,
    /// One report per server, sorted by name.
    pub servers: Vec<ServerReport>,
    /// Sums over the servers reported.
    pub totals: RepositoryTotals,
}

/// The screen of one server.
#[derive(Debug, Clone, Serialize)]
pub struct ServerReport {
    /// Server name.
    pub name: String,
    /// System identifier (decimal string).
    pub system_identifier: String,
    /// PostgreSQL major version.
    pub pg_major: u32,
    /// WAL segment size in bytes.
    pub wal_segment_size: u64,
    /// Complete backups, oldest first, with what they share.
    pub backups: Vec<BackupShare>,
    /// Backup directories without a manifest (running or aborted), oldest first.
    pub unfinished_backups: Vec<UnfinishedBackup>,
    /// The backup in progress, or what an interrupted one left behind.
    pub running_backup: Option<RunningBackup>,
    /// The live holder of the server's writer lock.
    pub lock: Option<LockHolder>,
    /// The archived WAL.
    pub wal: WalSummary,
    /// How archiving goes.
    pub archiving: Archiving,
    /// What `receive-wal` last reported; `None` if none ever ran for the server.
    pub stream: Option<StreamInfo>,
    /// Sums for this server.
    pub totals: ServerTotals,
    /// What could not be read (the report is complete otherwise).
    pub notes: Vec<String>,
}

/// The stream of `pgcellar receive-wal`, as its status object says.
#[derive(Debug, Clone, Serialize)]
pub struct StreamInfo {
    /// The status as written by the receiver.
    #[serde(flatten)]
    pub status: ReceiverStatus,
    /// Whether it is alive: streaming or reconnecting, and refreshed recently.
    pub running: bool,
    /// Seconds since it last wrote its status.
    pub status_age_seconds: i64,
}

/// One complete backup and the bytes it shares with the others.
#[derive(Debug, Clone, Serialize)]
pub struct BackupShare {
    /// Backup id.
    pub id: String,
    /// Label.
    pub label: String,
    /// Start time.
    pub start_time: DateTime<Utc>,
    /// Stop time.
    pub stop_time: DateTime<Utc>,
    /// Timeline at start.
    pub timeline: u32,
    /// The backup change detection compared with.
    pub parent: Option<String>,
    /// Pinned with `pgcellar keep`.
    pub kept: bool,
    /// Number of files.
    pub files: u64,
    /// Sum of the original file sizes.
    pub size: u64,
    /// Stored bytes of every object its files reference (as in `list`).
    pub stored_size: u64,
    /// Stored bytes of the objects this backup created when it was taken.
    pub added_size: u64,
    /// Distinct objects it references.
    pub objects: u64,
    /// Their stored bytes, each object once (`shared_size` + `unique_size`; below
    /// `stored_size` when several files are one object).
    pub objects_stored_size: u64,
    /// Stored bytes of its objects that another complete backup references too.
    pub shared_size: u64,
    /// Stored bytes of its objects no other complete backup references: what
    /// deleting it would free.
    pub unique_size: u64,
}

/// A backup directory without a manifest.
#[derive(Debug, Clone, Serialize)]
pub struct UnfinishedBackup {
    /// Its id.
    pub id: String,
    /// `running` (its base-backup holds the lock) or `aborted`.
    pub status: &'static str,
}

/// A base-backup in progress, from its status object (`repo::status`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunningBackup {
    /// `running`: the lock that wrote the status is held by a live holder;
    /// `interrupted`: it is not, and this is what the attempt left behind.
    pub state: &'static str,
    /// The id the backup will have.
    pub id: String,
    /// Its phase.
    pub phase: Phase,
    /// The phase for people.
    pub phase_description: String,
    /// Host of the backup.
    pub host: String,
    /// Its process id there.
    pub pid: u32,
    /// When it started.
    pub started: DateTime<Utc>,
    /// When it last wrote its status.
    pub updated: DateTime<Utc>,
    /// Files to store.
    pub files_total: u64,
    /// Files dealt with so far.
    pub files_done: u64,
    /// Bytes of all files to store.
    pub bytes_total: u64,
    /// Bytes of the files dealt with so far.
    pub bytes_done: u64,
    /// Bytes read from the data directory so far.
    pub bytes_read: u64,
    /// `bytes_done` as a percentage of `bytes_total` (`None` before the walk).
    pub percent_done: Option<f64>,
    /// While waiting for WAL: the segment waited for.
    pub waiting_for: Option<String>,
    /// While waiting for WAL: what pg_stat_archiver last said.
    pub archiver: Option<String>,
}

/// Who holds a server's writer lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LockHolder {
    /// The command (`base-backup`, `expire`, `delete`, `keep`, `cron`).
    pub command: String,
    /// Its host.
    pub host: String,
    /// Its process id.
    pub pid: u32,
    /// When it took the lock.
    pub started: DateTime<Utc>,
    /// When it last refreshed the lock.
    pub refreshed: DateTime<Utc>,
}

/// The archived WAL of a server.
#[derive(Debug, Clone, Serialize)]
pub struct WalSummary {
    /// Stored WAL files of every kind.
    pub files: usize,
    /// Their stored bytes.
    pub stored_size: u64,
    /// Segments.
    pub segments: u64,
    /// Segments missing inside the timelines' ranges.
    pub missing_segments: u64,
    /// `.history` files.
    pub history_files: usize,
    /// `.partial` files.
    pub partial_files: usize,
    /// `.backup` files.
    pub backup_files: usize,
    /// Each timeline, oldest first.
    pub timelines: Vec<TimelineWal>,
}

/// The segments of one timeline.
#[derive(Debug, Clone, Serialize)]
pub struct TimelineWal {
    /// Timeline.
    pub timeline: u32,
    /// Its first archived segment.
    pub first: Option<String>,
    /// Its last archived segment.
    pub last: Option<String>,
    /// Segments archived.
    pub segments: u64,
    /// Their stored bytes.
    pub stored_size: u64,
    /// Runs of segments missing between `first` and `last`.
    pub missing: Vec<MissingRange>,
    /// Segments in those runs.
    pub missing_segments: u64,
    /// Whether the timeline (above 1) lacks its `.history` file.
    pub history_missing: bool,
    /// Its `.partial` files.
    pub partial_files: usize,
    /// Its `.backup` files.
    pub backup_files: usize,
}

/// How archiving goes.
#[derive(Debug, Clone, Serialize)]
pub struct Archiving {
    /// Segments stored recently.
    pub throughput: Throughput,
    /// The last file wal-push refused, as it recorded it in the repository.
    pub last_refusal: Option<PushRefusal>,
    /// The running cluster's archiver statistics.
    pub pg_stat_archiver: ArchiverStats,
}

/// Segments stored recently, from the stored files' times.
#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    /// Whether the storage gave the times needed; otherwise the windows are `None`.
    pub known: bool,
    /// Why it is unknown, or a remark.
    pub note: Option<String>,
    /// The newest segment (highest timeline, then number).
    pub newest_segment: Option<String>,
    /// When it was stored.
    pub newest_stored_at: Option<DateTime<Utc>>,
    /// The last hour.
    pub last_hour: Option<Window>,
    /// The last 24 hours.
    pub last_day: Option<Window>,
}

impl Throughput {
    pub(super) fn unknown(note: String) -> Throughput {
        Throughput {
            known: false,
            note: Some(note),
            newest_segment: None,
            newest_stored_at: None,
            last_hour: None,
            last_day: None,
        }
    }
}

/// Segments stored in the last `seconds`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Window {
    /// Length of the window.
    pub seconds: u64,
    /// Segments stored in it.
    pub segments: u64,
    /// Their original bytes (segments times the segment size).
    pub wal_bytes: u64,
    /// Their stored bytes.
    pub stored_bytes: u64,
    /// Segments per hour over the window.
    pub segments_per_hour: f64,
    /// Original bytes per hour over the window.
    pub wal_bytes_per_hour: f64,
}

impl Window {
    pub(super) fn of(seconds: u64, segments: u64, stored_bytes: u64, segment_size: u64) -> Window {
        let hours = seconds as f64 / 3600.0;
        let wal_bytes = segments.saturating_mul(segment_size);
        Window {
            seconds,
            segments,
            wal_bytes,
            stored_bytes,
            segments_per_hour: segments as f64 / hours,
            wal_bytes_per_hour: wal_bytes as f64 / hours,
        }
    }
}

/// `pg_stat_archiver` of the cluster behind the conninfo.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ArchiverStats {
    /// `ok` (read), `not_asked` (no conninfo given), `error` (no connection or query
    /// failed) or `other_cluster` (the cluster is not this server's).
    pub status: &'static str,
    /// Why there are no numbers.
    pub message: Option<String>,
    /// `archived_count`.
    pub archived_count: Option<i64>,
    /// `last_archived_wal`.
    pub last_archived_wal: Option<String>,
    /// `last_archived_time`.
    pub last_archived_time: Option<DateTime<Utc>>,
    /// `failed_count`.
    pub failed_count: Option<i64>,
    /// `last_failed_wal`.
    pub last_failed_wal: Option<String>,
    /// `last_failed_time`.
    pub last_failed_time: Option<DateTime<Utc>>,
    /// `stats_reset`: the counts start here.
    pub stats_reset: Option<DateTime<Utc>>,
}

/// Sums for one server.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerTotals {
    /// Complete backups.
    pub backups: usize,
    /// Stored bytes of the distinct objects the complete backups reference.
    pub backup_stored_size: u64,
    /// Stored bytes of the WAL files.
    pub wal_stored_size: u64,
    /// The two together.
    pub stored_size: u64,
}

/// Sums over the servers reported.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RepositoryTotals {
    /// Servers reported.
    pub servers: usize,
    /// Complete backups.
    pub backups: usize,
    /// Stored bytes of the backups' objects.
    pub backup_stored_size: u64,
    /// Stored bytes of WAL.
    pub wal_stored_size: u64,
    /// The two together.
    pub stored_size: u64,
}
