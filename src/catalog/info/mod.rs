//! `pgcellar info`: one screen per server of the repository (or only the configured
//! one): its backups with what they share, its WAL per timeline with the gaps, how
//! fast WAL arrives and the last archiving failure, a backup in progress, totals.
//!
//! The report is built from the repository alone, plus `pg_stat_archiver` when a
//! conninfo is given. Files: `shares.rs` (what each backup shares with others),
//! `wal.rs` (timeline ranges, gaps, throughput), `activity.rs` (a running backup, the
//! lock, the running cluster), `render.rs` (the screen). The JSON is documented in
//! `docs/cli-json.md`.

mod activity;
mod render;
mod shares;
mod wal;

pub use render::render_info;

use super::backups::{is_kept, unfinished_backups};
use crate::archive::timeline::{ArchiveIndex, MissingRange};
use crate::archive::{last_refusal, PushRefusal};
use crate::config::Settings;
use crate::error::Result;
use crate::repo::manifest;
use crate::repo::status::Phase;
use crate::repo::{Repository, ServerInfo};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::time::Duration;

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
    /// Sums for this server.
    pub totals: ServerTotals,
    /// What could not be read (the report is complete otherwise).
    pub notes: Vec<String>,
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
    fn unknown(note: String) -> Throughput {
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
    fn of(seconds: u64, segments: u64, stored_bytes: u64, segment_size: u64) -> Window {
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

/// The report for every server of the repository, or only the configured one.
pub fn info(settings: &Settings) -> Result<InfoReport> {
    let repo = Repository::open(settings)?;
    let names = match &settings.server {
        Some(s) => vec![s.clone()],
        None => repo.server_names()?,
    };
    let cluster = activity::read_cluster(settings.conninfo.as_deref());
    let now = Utc::now();
    let mut servers = Vec::new();
    for name in names {
        let server = repo.server(&name)?;
        let report = server_report(&repo, &server, settings.lock_stale_after, &cluster, now)
            .map_err(|e| e.context(format!("server {name}")))?;
        servers.push(report);
    }
    let mut totals = RepositoryTotals {
        servers: servers.len(),
        ..RepositoryTotals::default()
    };
    for s in &servers {
        totals.backups += s.totals.backups;
        totals.backup_stored_size += s.totals.backup_stored_size;
        totals.wal_stored_size += s.totals.wal_stored_size;
    }
    totals.stored_size = totals.backup_stored_size + totals.wal_stored_size;
    Ok(InfoReport {
        repository: repo.storage().location(),
        time: now,
        servers,
        totals,
    })
}

fn server_report(
    repo: &Repository,
    server: &ServerInfo,
    stale_after: Duration,
    cluster: &activity::Cluster,
    now: DateTime<Utc>,
) -> Result<ServerReport> {
    let storage = repo.storage();
    let name = &server.name;
    let mut notes = Vec::new();
    let manifests = manifest::load_all(storage, name)?;
    let (shares, backup_stored_size) = shares::shares(&manifests);
    let mut backups = Vec::new();
    for (m, s) in manifests.iter().zip(shares) {
        backups.push(BackupShare {
            id: m.id.to_string(),
            label: m.label.clone(),
            start_time: m.start_time,
            stop_time: m.stop_time,
            timeline: m.timeline,
            parent: m.parent.as_ref().map(ToString::to_string),
            kept: is_kept(storage, name, &m.id)?,
            files: m.totals.files,
            size: m.totals.size,
            stored_size: m.totals.stored_size,
            added_size: m.totals.copied_stored_size,
            objects: s.objects,
            objects_stored_size: s.shared_size + s.unique_size,
            shared_size: s.shared_size,
            unique_size: s.unique_size,
        });
    }
    let unfinished_backups = unfinished_backups(storage, name, stale_after)?
        .into_iter()
        .map(|u| UnfinishedBackup {
            id: u.id.to_string(),
            status: if u.running { "running" } else { "aborted" },
        })
        .collect();
    let (running_backup, lock) = match activity::backup_activity(storage, name, stale_after) {
        Ok(found) => found,
        Err(e) => {
            notes.push(format!("the backup status could not be read: {e}"));
            (None, None)
        }
    };
    let index = ArchiveIndex::scan(storage, name, server.wal_segment_size)?;
    let wal = wal::summary(&index);
    let last_refusal = last_refusal(storage, name).unwrap_or_else(|e| {
        notes.push(format!("wal-push's last refusal could not be read: {e}"));
        None
    });
    let archiving = Archiving {
        throughput: wal::throughput(storage, &index, now),
        last_refusal,
        pg_stat_archiver: activity::archiver_stats(cluster, &server.system_identifier),
    };
    let totals = ServerTotals {
        backups: backups.len(),
        backup_stored_size,
        wal_stored_size: wal.stored_size,
        stored_size: backup_stored_size + wal.stored_size,
    };
    Ok(ServerReport {
        name: name.clone(),
        system_identifier: server.system_identifier.clone(),
        pg_major: server.pg_major,
        wal_segment_size: server.wal_segment_size,
        backups,
        unfinished_backups,
        running_backup,
        lock,
        wal,
        archiving,
        totals,
        notes,
    })
}
