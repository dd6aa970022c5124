//! The backups of one server: `list` (complete, running and aborted ones), `show` (one
//! backup and the WAL it needs) and `keep` (pins that retention honours).

use crate::archive::timeline::{self, ArchiveIndex, Continuity};
use crate::config::Settings;
use crate::error::{Error, Result};
use crate::repo::lock::Lock;
use crate::repo::manifest::{self, BackupId, Manifest};
use crate::repo::{layout, now_rfc3339, to_json, Repository};
use crate::storage::{Overwrite, Storage};
use crate::wal::Segment;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// One backup in `pgcellar list`.
#[derive(Debug, Clone, Serialize)]
pub struct BackupRow {
    /// Backup id.
    pub id: String,
    /// Status: `done` (the manifest exists, so every file and WAL segment was
    /// stored), `running` (no manifest yet, its base-backup holds the lock) or
    /// `aborted` (no manifest and no writer: never restorable, removed by cron).
    pub status: String,
    /// Label.
    pub label: String,
    /// Start time (RFC 3339).
    pub start_time: DateTime<Utc>,
    /// Stop time (RFC 3339); `None` for a backup without a manifest.
    pub stop_time: Option<DateTime<Utc>>,
    /// Timeline at start; `None` for a backup without a manifest.
    pub timeline: Option<u32>,
    /// Start LSN; `None` for a backup without a manifest.
    pub start_lsn: Option<String>,
    /// Stop LSN; `None` for a backup without a manifest.
    pub stop_lsn: Option<String>,
    /// Original size of the data files.
    pub size: u64,
    /// Bytes the backup's stored files occupy (counting hard-linked ones).
    pub stored_size: u64,
    /// Stored bytes this backup wrote itself (files not reused from the parent).
    pub added_size: u64,
    /// Number of files.
    pub files: u64,
    /// Files hard-linked to the parent.
    pub reused_files: u64,
    /// Parent backup (what reused files link into).
    pub parent: Option<String>,
    /// Pinned with `pgcellar keep`.
    pub kept: bool,
}

fn row(m: &Manifest, kept: bool) -> BackupRow {
    BackupRow {
        id: m.id.to_string(),
        status: "done".into(),
        label: m.label.clone(),
        start_time: m.start_time,
        stop_time: Some(m.stop_time),
        timeline: Some(m.timeline),
        start_lsn: Some(m.start_lsn.clone()),
        stop_lsn: Some(m.stop_lsn.clone()),
        size: m.totals.size,
        stored_size: m.totals.stored_size,
        added_size: m.totals.copied_stored_size,
        files: m.totals.files,
        reused_files: m.totals.reused_files,
        parent: m.parent.as_ref().map(ToString::to_string),
        kept,
    }
}

/// Whether backup `id` carries a keep marker.
pub fn is_kept(storage: &dyn Storage, server: &str, id: &BackupId) -> Result<bool> {
    Ok(storage
        .stat(&layout::backup_keep_marker(server, id.as_str()))?
        .is_some())
}

/// A backup directory without a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unfinished {
    /// Its id.
    pub id: BackupId,
    /// Whether its base-backup is still running (holds a live server lock taken
    /// before the backup started); otherwise it is aborted.
    pub running: bool,
}

/// The backup directories of `server` without a manifest, oldest first, each marked
/// running or aborted. A backup is running when a base-backup holds the server's
/// lock (not stale by `stale_after`) and the backup started after that lock was
/// taken; base-backup takes the lock before it picks the id.
pub fn unfinished_backups(
    storage: &dyn Storage,
    server: &str,
    stale_after: Duration,
) -> Result<Vec<Unfinished>> {
    let holder = crate::repo::lock::live_holder(storage, server, stale_after)?
        .filter(|h| h.command == "base-backup");
    let mut out = Vec::new();
    for id in manifest::list_aborted(storage, server)? {
        // Ids have whole seconds; the lock's start has sub-second precision.
        let running = holder
            .as_ref()
            .is_some_and(|h| id.time() >= h.started - chrono::Duration::seconds(1));
        out.push(Unfinished { id, running });
    }
    Ok(out)
}

fn unfinished_row(u: &Unfinished) -> BackupRow {
    BackupRow {
        id: u.id.to_string(),
        status: if u.running { "running" } else { "aborted" }.into(),
        label: String::new(),
        start_time: u.id.time(),
        stop_time: None,
        timeline: None,
        start_lsn: None,
        stop_lsn: None,
        size: 0,
        stored_size: 0,
        added_size: 0,
        files: 0,
        reused_files: 0,
        parent: None,
        kept: false,
    }
}

/// The backups of the configured server, newest first: complete ones, and those
/// without a manifest (running or aborted; never restorable).
pub fn list(settings: &Settings) -> Result<Vec<BackupRow>> {
    let (repo, server) = Repository::open_server(settings)?;
    let storage = repo.storage();
    let mut rows = Vec::new();
    for m in manifest::load_all(storage, &server.name)?.iter() {
        rows.push(row(m, is_kept(storage, &server.name, &m.id)?));
    }
    for u in unfinished_backups(storage, &server.name, settings.lock_stale_after)? {
        rows.push(unfinished_row(&u));
    }
    rows.sort_by(|a, b| b.id.cmp(&a.id));
    Ok(rows)
}

/// The WAL a backup needs to be consistent: its start to its stop segment.
#[derive(Debug, Clone, Serialize)]
pub struct WalNeeded {
    /// First segment.
    pub first: String,
    /// Last segment.
    pub last: String,
    /// Number of segments.
    pub segments: u64,
    /// Those not in the archive.
    pub missing: Vec<String>,
    /// Whether all of them are there.
    pub complete: bool,
}

/// Everything `pgcellar show` reports about one backup.
#[derive(Debug, Clone, Serialize)]
pub struct ShowReport {
    /// The summary row (as in `list`).
    pub backup: BackupRow,
    /// The WAL from start to stop.
    pub wal_needed: WalNeeded,
    /// The WAL from start on to the newest archived segment along the timeline chain.
    pub wal_to_latest: Continuity,
    /// The whole manifest (`backup.json`).
    pub manifest: Manifest,
}

/// Report on backup `spec` (an id, `latest` or `oldest`).
pub fn show(settings: &Settings, spec: &str) -> Result<ShowReport> {
    let (repo, server) = Repository::open_server(settings)?;
    let storage = repo.storage();
    let id = manifest::resolve(storage, &server.name, spec)?;
    let m = manifest::load(storage, &server.name, &id)?;
    let kept = is_kept(storage, &server.name, &id)?;
    let size = server.wal_segment_size;
    let index = ArchiveIndex::scan(storage, &server.name, size)?;
    let (tli, from) = timeline::segno_of(&m.start_wal, size)?;
    let (stop_tli, to) = timeline::segno_of(&m.stop_wal, size)?;
    if stop_tli != tli || to < from {
        return Err(Error::corrupt(format!(
            "backup {id}: start WAL {} and stop WAL {} do not make a range",
            m.start_wal, m.stop_wal
        )));
    }
    let missing: Vec<String> = (from..=to)
        .filter(|n| !index.has(tli, *n))
        .map(|n| Segment::from_number(tli, n, size).file_name())
        .collect();
    let wal_needed = WalNeeded {
        first: m.start_wal.clone(),
        last: m.stop_wal.clone(),
        segments: to - from + 1,
        complete: missing.is_empty(),
        missing,
    };
    let wal_to_latest = timeline::continuity(storage, &index, tli, from, to)?;
    Ok(ShowReport {
        backup: row(&m, kept),
        wal_needed,
        wal_to_latest,
        manifest: m,
    })
}

/// Contents of a keep marker (`<server>/backups/<id>/keep`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeepMarker {
    /// When the pin was set (RFC 3339).
    pub kept_at: String,
    /// Which program set it.
    pub kept_by: String,
}

/// What `keep` did.
#[derive(Debug, Clone, Serialize)]
pub struct KeepOutcome {
    /// Backup id.
    pub id: String,
    /// Whether the backup is pinned now.
    pub kept: bool,
    /// Whether anything changed.
    pub changed: bool,
}

/// Pin backup `spec` so that retention never removes it, or release the pin.
pub fn keep(settings: &Settings, spec: &str, release: bool) -> Result<KeepOutcome> {
    let (repo, server) = Repository::open_server(settings)?;
    let storage = repo.storage();
    // Under the writer lock, so that a concurrent expire cannot remove the backup
    // between our check and the marker.
    let lock = Lock::acquire_held(&repo, settings, &server.name, "keep")?;
    let id = manifest::resolve(storage, &server.name, spec)?;
    let path = layout::backup_keep_marker(&server.name, id.as_str());
    let was = is_kept(storage, &server.name, &id)?;
    if release {
        if was {
            storage.remove_file(&path)?;
        }
    } else if !was {
        let marker = KeepMarker {
            kept_at: now_rfc3339(),
            kept_by: format!("pgcellar {}", env!("CARGO_PKG_VERSION")),
        };
        storage.write_all(&path, &to_json(&marker)?, Overwrite::Never)?;
    }
    lock.release();
    Ok(KeepOutcome {
        id: id.to_string(),
        kept: !release,
        changed: was == release,
    })
}
