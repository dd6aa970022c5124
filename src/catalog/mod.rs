//! Catalog commands that work on the repository: `init`, `servers`, `list`, `show`,
//! `keep`, `switch-wal`, and the settings they share. Removal (`delete`, `expire`,
//! `cron`) lives in [`crate::catalog::expire`], `check` in [`crate::catalog::check`], `verify` in
//! [`crate::catalog::verify`], the retention rules in [`crate::catalog::retention`].
//!
//! Each command is one function returning a serialisable report; the `render_*`
//! functions turn reports into the human output (aligned tables). The JSON of the
//! reports is documented in `docs/cli-json.md`.

pub mod check;
pub mod expire;
pub mod retention;
pub mod verify;

use crate::archive::timeline::{self, ArchiveIndex, Continuity};
use crate::archive::StoredWal;
use crate::config::{CatalogSettings, Settings};
use crate::error::{Error, ErrorKind, Result};
use crate::pg;
use crate::repo::lock::Lock;
use crate::repo::manifest::{self, BackupId, Manifest};
use crate::repo::{layout, now_rfc3339, to_json, Repository, ServerInfo};
use crate::storage::{Overwrite, Storage, TEMP_PREFIX};
use crate::wal::{Segment, WalName};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// What `init` found and did.
#[derive(Debug, Clone)]
pub struct InitOutcome {
    /// Whether the repository root was created now.
    pub created_repo: bool,
    /// Whether the server was registered now (false: it already was, same cluster).
    pub registered: bool,
    /// The registration.
    pub server: ServerInfo,
}

/// Create the repository if needed and register the server from the running cluster.
pub fn init(settings: &Settings) -> Result<InitOutcome> {
    let name = settings.server_name()?.to_string();
    // Connect first: a typo in --conninfo should not leave an empty repository behind.
    let mut client = pg::connect(settings.conninfo.as_deref())?;
    let id = pg::identity(&mut client)?;
    let (repo, created_repo) = Repository::open_or_create(settings)?;
    let info = ServerInfo {
        name,
        system_identifier: id.system_id.to_string(),
        pg_version_num: id.version_num,
        pg_major: id.major(),
        wal_segment_size: id.wal_segment_size,
        block_size: id.block_size,
        registered: now_rfc3339(),
    };
    let registered = repo.register_server(&info)?;
    let server = repo.server(&info.name)?;
    Ok(InitOutcome {
        created_repo,
        registered,
        server,
    })
}

// ---------------------------------------------------------------------------
// servers

/// One server of a repository (`pgcellar servers`).
#[derive(Debug, Clone, Serialize)]
pub struct ServerSummary {
    /// Server name.
    pub name: String,
    /// System identifier (decimal string).
    pub system_identifier: String,
    /// PostgreSQL major version.
    pub pg_major: u32,
    /// WAL segment size in bytes.
    pub wal_segment_size: u64,
    /// Number of complete backups.
    pub backups: usize,
    /// Id of the newest complete backup.
    pub newest_backup: Option<String>,
    /// Number of stored WAL files (segments, history, partial and backup files).
    pub wal_files: usize,
    /// Bytes of stored WAL files.
    pub wal_stored_size: u64,
}

/// Names of the servers registered in the repository, sorted.
pub fn server_names(repo: &Repository) -> Result<Vec<String>> {
    let storage = repo.storage();
    let mut names = Vec::new();
    for e in storage.list("")? {
        if !e.is_dir || e.name.starts_with(TEMP_PREFIX) {
            continue;
        }
        if crate::names::check_server_name(&e.name).is_err() {
            continue;
        }
        if storage.stat(&layout::server_file(&e.name))?.is_some() {
            names.push(e.name);
        }
    }
    names.sort();
    Ok(names)
}

/// Every server in the repository with its backup and WAL counts.
pub fn servers(settings: &Settings) -> Result<Vec<ServerSummary>> {
    let repo = Repository::open(settings)?;
    let storage = repo.storage();
    let mut out = Vec::new();
    for name in server_names(&repo)? {
        let info = repo.server(&name)?;
        let ids = manifest::list_ids(storage, &name)?;
        let index = ArchiveIndex::scan(storage, &name, info.wal_segment_size)?;
        out.push(ServerSummary {
            name,
            system_identifier: info.system_identifier,
            pg_major: info.pg_major,
            wal_segment_size: info.wal_segment_size,
            backups: ids.len(),
            newest_backup: ids.last().map(ToString::to_string),
            wal_files: index.file_count(),
            wal_stored_size: all_wal(&index).map(|w| w.stored_size).sum(),
        });
    }
    Ok(out)
}

fn all_wal(index: &ArchiveIndex) -> impl Iterator<Item = &StoredWal> {
    index
        .segments
        .values()
        .flat_map(|m| m.values())
        .chain(index.histories.values())
        .chain(index.others.iter())
}

// ---------------------------------------------------------------------------
// list / show

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

// ---------------------------------------------------------------------------
// keep

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

// ---------------------------------------------------------------------------
// switch-wal

/// What `switch-wal` did.
#[derive(Debug, Clone, Serialize)]
pub struct SwitchOutcome {
    /// The segment closed by the switch (or the last one, if nothing was written).
    pub segment: String,
    /// With `--wait`: it is in the repository.
    pub archived: bool,
}

/// Force a WAL switch (after a checkpoint with `checkpoint`, which guarantees there is
/// something to switch); with `wait`, wait until the segment is in the repository.
pub fn switch_wal(settings: &Settings, checkpoint: bool, wait: bool) -> Result<SwitchOutcome> {
    let cat = CatalogSettings::from_settings(settings)?;
    // Open the repository first when we will wait on it: fail before touching the server.
    let target = if wait {
        let (repo, server) = Repository::open_server(settings)?;
        Some((repo, server))
    } else {
        None
    };
    let mut client = pg::connect(settings.conninfo.as_deref())?;
    if let Some((_, server)) = &target {
        let id = pg::identity(&mut client)?;
        if id.system_id.to_string() != server.system_identifier {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!(
                    "the cluster at --conninfo is database system {}, but server {} is \
                     registered as {}",
                    id.system_id, server.name, server.system_identifier
                ),
            ));
        }
    }
    let segment = switch(&mut client, checkpoint)?;
    let archived = match &target {
        Some((repo, server)) => {
            wait_archived(
                repo.storage(),
                &server.name,
                &segment,
                cat.archive_wait_timeout,
                &mut client,
            )?;
            true
        }
        None => false,
    };
    Ok(SwitchOutcome { segment, archived })
}

/// Switch WAL and return the name of the segment it closed.
pub fn switch(client: &mut postgres::Client, checkpoint: bool) -> Result<String> {
    if checkpoint {
        client
            .batch_execute("CHECKPOINT")
            .map_err(|e| pg::query_error("running CHECKPOINT", e))?;
    }
    let row = client
        .query_one("SELECT pg_walfile_name(pg_switch_wal())", &[])
        .map_err(|e| pg::query_error("switching WAL (pg_switch_wal)", e))?;
    pg::column(&row, 0, "pg_switch_wal")
}

/// Wait until `segment` is in the repository, failing early when `pg_stat_archiver`
/// reports that archiving it failed since we started waiting.
pub fn wait_archived(
    storage: &dyn Storage,
    server: &str,
    segment: &str,
    timeout: Duration,
    client: &mut postgres::Client,
) -> Result<()> {
    let name = WalName::parse(segment)?;
    let started = Instant::now();
    let since = Utc::now() - chrono::Duration::seconds(1);
    loop {
        if !crate::archive::lookup(storage, server, &name)?.is_empty() {
            return Ok(());
        }
        let row = client
            .query_one(
                "SELECT coalesce(last_failed_wal, ''), last_failed_time FROM pg_stat_archiver",
                &[],
            )
            .map_err(|e| pg::query_error("reading pg_stat_archiver", e))?;
        let failed_wal: String = pg::column(&row, 0, "pg_stat_archiver")?;
        let failed_at: Option<std::time::SystemTime> = pg::column(&row, 1, "pg_stat_archiver")?;
        let failed_now = failed_at.is_some_and(|t| DateTime::<Utc>::from(t) >= since);
        if failed_now && failed_wal.as_str() <= segment {
            return Err(Error::new(
                ErrorKind::Io,
                format!(
                    "archive_command failed for {failed_wal} (pg_stat_archiver); {segment} \
                     is not in {}; see the PostgreSQL log",
                    storage.location()
                ),
            ));
        }
        if started.elapsed() >= timeout {
            return Err(Error::new(
                ErrorKind::Transient,
                format!(
                    "{segment} did not reach {} within {}s (archive_wait_timeout); check \
                     archive_command and pg_stat_archiver",
                    storage.location(),
                    timeout.as_secs()
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

// ---------------------------------------------------------------------------
// human output

/// Align `rows` under `header` in columns separated by two spaces.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i > 0 {
                l.push_str("  ");
            }
            l.push_str(c);
            if i + 1 < cells.len() {
                let pad = widths[i].saturating_sub(c.chars().count());
                l.push_str(&" ".repeat(pad));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
    out
}

/// Bytes in binary units for people (`1.5 GiB`).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn time(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// `pgcellar servers` as a table.
pub fn render_servers(rows: &[ServerSummary]) -> String {
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.system_identifier.clone(),
                s.pg_major.to_string(),
                s.backups.to_string(),
                s.newest_backup.clone().unwrap_or_else(|| "-".into()),
                s.wal_files.to_string(),
                human_bytes(s.wal_stored_size),
            ]
        })
        .collect();
    table(
        &[
            "SERVER",
            "SYSTEM ID",
            "PG",
            "BACKUPS",
            "NEWEST",
            "WAL FILES",
            "WAL SIZE",
        ],
        &body,
    )
}

/// `pgcellar list` as a table.
pub fn render_list(rows: &[BackupRow]) -> String {
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|b| {
            vec![
                b.id.clone(),
                b.status.clone(),
                time(&b.start_time),
                b.stop_time.as_ref().map_or_else(|| "-".into(), time),
                b.timeline.map_or_else(|| "-".into(), |t| t.to_string()),
                b.start_lsn.clone().unwrap_or_else(|| "-".into()),
                b.stop_lsn.clone().unwrap_or_else(|| "-".into()),
                human_bytes(b.stored_size),
                human_bytes(b.added_size),
                if b.kept { "kept".into() } else { "-".into() },
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "STATUS",
            "START (UTC)",
            "STOP (UTC)",
            "TLI",
            "START LSN",
            "STOP LSN",
            "SIZE",
            "ADDED",
            "KEEP",
        ],
        &body,
    )
}

/// `pgcellar show` as aligned key/value lines (the file list only in `--json`).
pub fn render_show(r: &ShowReport) -> String {
    let m = &r.manifest;
    let b = &r.backup;
    let mut kv: Vec<(String, String)> = vec![
        ("Backup".into(), b.id.clone()),
        ("Server".into(), m.server.clone()),
        ("Status".into(), b.status.clone()),
        ("Label".into(), m.label.clone()),
        ("Kept".into(), if b.kept { "yes" } else { "no" }.into()),
        (
            "Parent".into(),
            b.parent.clone().unwrap_or_else(|| "-".into()),
        ),
        ("PostgreSQL".into(), m.pg_version_num.to_string()),
        ("System identifier".into(), m.system_identifier.clone()),
        ("Timeline".into(), m.timeline.to_string()),
        ("Start time".into(), time(&m.start_time)),
        ("Stop time".into(), time(&m.stop_time)),
        ("Start LSN".into(), m.start_lsn.clone()),
        ("Stop LSN".into(), m.stop_lsn.clone()),
        (
            "Compression".into(),
            format!("{} (level {})", m.compression, m.compression_level),
        ),
        (
            "Files".into(),
            format!(
                "{} ({} hard-linked to the parent, {} copied)",
                m.totals.files, m.totals.reused_files, m.totals.copied_files
            ),
        ),
        ("Data size".into(), human_bytes(m.totals.size)),
        ("Stored size".into(), human_bytes(m.totals.stored_size)),
        (
            "Added by this backup".into(),
            human_bytes(m.totals.copied_stored_size),
        ),
        (
            "Tablespaces".into(),
            if m.tablespaces.is_empty() {
                "-".into()
            } else {
                m.tablespaces
                    .iter()
                    .map(|t| {
                        format!(
                            "{} {} ({})",
                            t.oid,
                            t.name.as_deref().unwrap_or("?"),
                            t.location
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        ),
    ];
    let w = &r.wal_needed;
    kv.push((
        "WAL needed".into(),
        format!(
            "{} to {} ({} segment(s)): {}",
            w.first,
            w.last,
            w.segments,
            if w.complete {
                "all archived".to_string()
            } else {
                format!("MISSING {}", w.missing.join(", "))
            }
        ),
    ));
    let c = &r.wal_to_latest;
    kv.push((
        "WAL to latest".into(),
        format!(
            "{} to {} on timeline(s) {} ({} segment(s)): {}",
            c.first,
            c.last,
            c.timelines
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" -> "),
            c.segments,
            if c.complete() {
                "continuous".to_string()
            } else {
                let mut gaps: Vec<String> = c
                    .missing
                    .iter()
                    .map(|m| format!("{}..{}", m.first, m.last))
                    .collect();
                gaps.extend(c.missing_history.iter().map(|h| format!("{h} missing")));
                format!("GAPS {}", gaps.join(", "))
            }
        ),
    ));
    let width = kv.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    kv.iter()
        .map(|(k, v)| format!("{k:<width$}  {v}\n"))
        .collect()
}
