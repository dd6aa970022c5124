//! Building the `pgcellar info` report from the repository (and `pg_stat_archiver`).

use crate::archive::last_refusal;
use crate::archive::timeline::ArchiveIndex;
use crate::catalog::backups::{is_kept, unfinished_backups};
use crate::config::Settings;
use crate::error::Result;
use crate::repo::manifest;
use crate::repo::{Repository, ServerInfo};
use chrono::{DateTime, Utc};
use std::time::Duration;

use super::activity;
use super::report::*;
use super::shares;
use super::wal;

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
    let stream = match crate::stream::status::read(storage, name) {
        Ok(found) => found.map(|status| StreamInfo {
            running: status.running(now),
            status_age_seconds: status.age_seconds(now),
            status,
        }),
        Err(e) => {
            notes.push(format!("the receive-wal status could not be read: {e}"));
            None
        }
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
        stream,
        totals,
        notes,
    })
}
