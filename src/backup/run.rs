//! The order of a backup: checks, the writer lock, start, walk, store, stop, the WAL
//! wait and, last, the manifest.

use super::options::BackupOptions;
use super::progress::Reporter;
use super::session::{
    check_archiving, check_data_directory, start_backup, stop_backup, tablespace_names,
};
use super::store::{find_parent, store_files, StoreCtx};
use super::wal_wait::{archiver_status, wait_for_wal};
use super::walk::walk_cluster;
use crate::config::Settings;
use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::pg;
use crate::repo::lock::Lock;
use crate::repo::manifest::{BackupId, BackupStatus, Manifest, MANIFEST_FORMAT};
use crate::repo::{layout, to_json, Repository, ServerInfo};
use crate::storage::{Overwrite, Storage};
use crate::wal::WalName;
use chrono::{DateTime, Utc};
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

/// Take a backup of the cluster behind `settings`; returns its manifest.
pub fn run(settings: &Settings, opts: &BackupOptions) -> Result<Manifest> {
    if let Some(label) = &opts.label {
        // It becomes a line of backup_label: one line, within PostgreSQL's limit.
        if label.len() > 1000 || label.chars().any(char::is_control) {
            return Err(Error::invalid(
                "--label must be at most 1000 bytes without control characters",
            ));
        }
    }
    let pgdata = settings.pgdata.clone().ok_or_else(|| {
        Error::config(
            "no data directory given: use --pgdata, PGDATA or 'pgdata' in the config file",
        )
    })?;
    let pgdata =
        fs::canonicalize(&pgdata).io_context(|| format!("data directory {}", pgdata.display()))?;
    let repo = Repository::open(settings)?;
    let server_name = settings.server_name()?;
    let server = repo.server(server_name)?;

    let mut client = pg::connect(settings.conninfo.as_deref())?;
    let identity = pg::identity(&mut client)?;
    if identity.system_id != server.system_id()? {
        return Err(Error::new(
            ErrorKind::Conflict,
            format!(
                "the cluster at --conninfo is database system {}, but server {server_name} is \
                 registered as {}; check --conninfo and --server",
                identity.system_id, server.system_identifier
            ),
        ));
    }
    check_data_directory(&mut client, &pgdata)?;
    check_archiving(&mut client)?;
    let lock = Lock::acquire_held_patiently(
        &repo,
        settings,
        server_name,
        "base-backup",
        MAINTENANCE_PATIENCE,
    )?;
    let result = backup_locked(settings, opts, &repo, &server, &mut client, &pgdata, &lock);
    lock.release();
    result
}

fn new_backup_id(storage: &dyn Storage, server: &str) -> Result<(BackupId, DateTime<Utc>)> {
    for _ in 0..3 {
        let now = Utc::now();
        let id = BackupId::from_time(now);
        if storage
            .stat(&layout::backup_dir(server, id.as_str()))?
            .is_none()
        {
            return Ok((id, now));
        }
        // Ids have one-second resolution: wait for the next one.
        std::thread::sleep(Duration::from_millis(
            1000 - now.timestamp_subsec_millis() as u64,
        ));
    }
    Err(Error::new(
        ErrorKind::Conflict,
        format!("could not find a free backup id for server {server}"),
    ))
}

/// How long a backup waits for a maintenance command (cron's sweep, an expire) to
/// release the lock before it fails as locked.
const MAINTENANCE_PATIENCE: Duration = Duration::from_secs(120);

/// How long a backup waits for the WAL summarizer to reach its start LSN before it
/// compares pages instead.
const SUMMARIZER_WAIT: Duration = Duration::from_secs(10);

/// The WAL summaries from `parent`'s start to `start_lsn` (PostgreSQL 17+ with
/// `summarize_wal = on`, same timeline), with the blocks per relation segment; `None`
/// when they cannot prove anything, and every changed file is then compared page by
/// page.
fn wal_summaries(
    client: &mut postgres::Client,
    server: &ServerInfo,
    parent: &Manifest,
    timeline: u32,
    start_lsn: &str,
) -> Option<(pg::BlockChanges, u32)> {
    if server.pg_major < 17 || parent.timeline != timeline {
        return None;
    }
    let found = pg::summarized_changes(
        client,
        timeline,
        &parent.start_lsn,
        start_lsn,
        SUMMARIZER_WAIT,
    )
    .map(|c| c.map(|c| (c, pg::blocks_per_segment(client))));
    match found {
        Ok(Some((changes, Ok(per_segment)))) => {
            crate::log_info!(
                "WAL summaries cover {} to {start_lsn}: untouched relation files are not read",
                parent.start_lsn
            );
            Some((changes, per_segment))
        }
        Ok(None) => None,
        Ok(Some((_, Err(e)))) | Err(e) => {
            crate::log_warn!("cannot use the WAL summaries ({e}); comparing pages instead");
            None
        }
    }
}

fn backup_locked(
    settings: &Settings,
    opts: &BackupOptions,
    repo: &Repository,
    server: &ServerInfo,
    client: &mut postgres::Client,
    pgdata: &Path,
    lock: &Lock<'_>,
) -> Result<Manifest> {
    let storage = repo.storage();
    let codec = settings.codec;
    let parent = if opts.full {
        None
    } else {
        find_parent(storage, server)
    };
    let (id, start_time) = new_backup_id(storage, &server.name)?;
    let dir = layout::backup_dir(&server.name, id.as_str());
    storage.create_dir_all(&dir)?;
    let report = Reporter::new(
        storage,
        &server.name,
        id.as_str(),
        &lock.info().token,
        opts.progress,
    );
    let t0 = Instant::now();
    let secs = || t0.elapsed().as_secs_f64();
    let result = (|| {
        let label = opts
            .label
            .clone()
            .unwrap_or_else(|| format!("pgcellar {id}"));
        let started = start_backup(client, server.pg_major, server.wal_segment_size, &label)?;
        crate::log_info!(
            "backup {id} started at {} ({}){} after {:.2}s, parent {}",
            started.lsn,
            started.wal,
            if started.from_standby {
                " on a standby"
            } else {
                ""
            },
            secs(),
            parent
                .as_ref()
                .map_or("none (full)".to_string(), |p| p.id.to_string())
        );
        crate::util::fault::pause_after_backup_start();
        let tablespace_names = tablespace_names(client)?;
        let walk = walk_cluster(pgdata, server.pg_major, &tablespace_names)?;
        let jobs = settings.backup.workers(opts.jobs);
        let mut ctx = StoreCtx::new(storage, &server.name, codec, parent.as_ref(), opts, &report);
        let start_name = WalName::parse(&started.wal)?;
        let summaries = match &parent {
            Some(p) if !opts.checksum => {
                wal_summaries(client, server, p, start_name.timeline(), &started.lsn)
            }
            _ => None,
        };
        let untouched = summaries.as_ref().map(|(changes, per_segment)| {
            move |path: &str| {
                pg::relation_file(path)
                    .is_some_and(|(rel, seg)| changes.segment_untouched(&rel, seg, *per_segment))
            }
        });
        if let Some(f) = &untouched {
            ctx.untouched = Some(f);
        }
        let files = store_files(&ctx, jobs, walk.files)?;
        crate::log_info!(
            "stored {} files ({} unchanged, {} with new objects) at {:.2}s",
            files.len(),
            files.iter().filter(|f| f.added_size == 0).count(),
            files.iter().filter(|f| f.added_size > 0).count(),
            secs()
        );
        // Before the stop: its WAL switch wakes the archiver, whose failures from then
        // on tell the wait below that archiving is broken.
        let archiver_before = archiver_status(client);
        let stopped = stop_backup(client, server.pg_major, server.wal_segment_size, &started)?;
        let stop_time = Utc::now();
        crate::log_info!(
            "backup {id} stopped at {} ({}) at {:.2}s",
            stopped.lsn,
            stopped.wal,
            secs()
        );
        wait_for_wal(
            storage,
            server,
            &started.wal,
            &stopped.wal,
            settings.backup.backup_wal_timeout,
            client,
            archiver_before,
            &report,
            started.from_standby,
        )?;
        report.finishing();
        crate::log_info!(
            "WAL {} to {} confirmed at {:.2}s",
            started.wal,
            stopped.wal,
            secs()
        );
        let mut m = Manifest {
            format: MANIFEST_FORMAT,
            id: id.clone(),
            label,
            status: BackupStatus::Done,
            parent: parent.as_ref().map(|p| p.id.clone()),
            server: server.name.clone(),
            pg_version_num: server.pg_version_num,
            system_identifier: server.system_identifier.clone(),
            wal_segment_size: server.wal_segment_size,
            timeline: start_name.timeline(),
            start_lsn: started.lsn,
            stop_lsn: stopped.lsn,
            start_wal: started.wal,
            stop_wal: stopped.wal,
            start_time,
            stop_time,
            backup_label: stopped.label_file.unwrap_or_default(),
            tablespace_map: stopped.spcmap_file.unwrap_or_default(),
            tablespaces: walk.tablespaces,
            compression: codec.compression,
            compression_level: codec.level,
            totals: Default::default(),
            directories: walk.dirs,
            files,
            created_by: format!("pgcellar {}", env!("CARGO_PKG_VERSION")),
        };
        m.compute_totals();
        let json = to_json(&m)?;
        // Never commit under a lock that another writer broke meanwhile.
        lock.ensure_held()?;
        // Last, atomically: the backup exists from this moment on.
        storage.write_all(
            &layout::backup_manifest(&server.name, id.as_str()),
            &json,
            Overwrite::Never,
        )?;
        Ok(m)
    })();
    report.end();
    if let Err(e) = &result {
        // An aborted backup is invisible anyway; removing it only saves space.
        crate::log_info!("backup {id} failed ({e}); removing its directory");
        if let Err(e2) = storage.remove_dir_all(&dir) {
            crate::log_warn!("could not remove aborted backup {dir}: {e2}");
        }
    }
    result
}
