//! What is happening to a server now: a backup in progress (its status object,
//! trusted only while its lock is held), the lock's holder, wal-push's last refusal,
//! and what the running cluster's `pg_stat_archiver` says.

use super::report::{ArchiverStats, LockHolder, RunningBackup};
use crate::error::Result;
use crate::pg;
use crate::repo::lock::{live_holder, LockInfo};
use crate::repo::status::{self, BackupStatus};
use crate::storage::Storage;
use chrono::{DateTime, Utc};
use std::time::Duration;

/// The backup in progress (or what an interrupted one left) and the lock's live
/// holder, if any.
pub(super) fn backup_activity(
    storage: &dyn Storage,
    server: &str,
    stale_after: Duration,
) -> Result<(Option<RunningBackup>, Option<LockHolder>)> {
    let Some(first) = status::read(storage, server)? else {
        let holder = live_holder(storage, server, stale_after)?;
        return Ok((None, holder.map(lock_holder)));
    };
    let holder = live_holder(storage, server, stale_after)?;
    let status = match &holder {
        Some(h) if h.token == first.lock_token => first,
        // The backup may have ended (status removed) or a new one started (new
        // status and lock) between the two reads: read the status again.
        _ => match status::read(storage, server)? {
            Some(s) => s,
            None => return Ok((None, holder.map(lock_holder))),
        },
    };
    let running = holder
        .as_ref()
        .is_some_and(|h| h.token == status.lock_token);
    Ok((
        Some(running_backup(status, running)),
        holder.map(lock_holder),
    ))
}

/// The report of status object `s`; `running` says whether the lock that wrote it is
/// still held by a live holder.
pub(super) fn running_backup(s: BackupStatus, running: bool) -> RunningBackup {
    RunningBackup {
        state: if running { "running" } else { "interrupted" },
        id: s.id,
        phase: s.phase,
        phase_description: s.phase.to_string(),
        host: s.host,
        pid: s.pid,
        started: s.started,
        updated: s.updated,
        files_total: s.files_total,
        files_done: s.files_done,
        bytes_total: s.bytes_total,
        bytes_done: s.bytes_done,
        bytes_read: s.bytes_read,
        percent_done: (s.bytes_total > 0)
            .then(|| (s.bytes_done as f64 * 100.0 / s.bytes_total as f64).min(100.0)),
        waiting_for: s.waiting_for,
        archiver: s.archiver,
    }
}

fn lock_holder(h: LockInfo) -> LockHolder {
    LockHolder {
        refreshed: h.last_refresh(),
        command: h.command,
        host: h.host,
        pid: h.pid,
        started: h.started,
    }
}

/// What one read of the running cluster gave: its system identifier and its
/// `pg_stat_archiver` row, or why there is none.
pub(super) enum Cluster {
    /// No conninfo was given: nothing was asked.
    NotAsked,
    /// Connecting or querying failed.
    Failed(String),
    /// The cluster and its archiver statistics.
    Read { system_id: u64, stats: ArchiverRow },
}

/// One row of `pg_stat_archiver`.
#[derive(Debug, Clone, Default)]
pub(super) struct ArchiverRow {
    archived_count: Option<i64>,
    last_archived_wal: Option<String>,
    last_archived_time: Option<DateTime<Utc>>,
    failed_count: Option<i64>,
    last_failed_wal: Option<String>,
    last_failed_time: Option<DateTime<Utc>>,
    stats_reset: Option<DateTime<Utc>>,
}

/// Read the cluster behind `conninfo`, if one is given. Never fails: a cluster that
/// cannot be read is reported, the repository's side of `info` still is.
pub(super) fn read_cluster(conninfo: Option<&str>) -> Cluster {
    let Some(conninfo) = conninfo else {
        return Cluster::NotAsked;
    };
    let read = || -> Result<Cluster> {
        let mut client = pg::connect(Some(conninfo))?;
        let id = pg::identity(&mut client)?;
        let row = client
            .query_one(
                "SELECT archived_count, last_archived_wal, last_archived_time, failed_count, \
                 last_failed_wal, last_failed_time, stats_reset FROM pg_stat_archiver",
                &[],
            )
            .map_err(|e| pg::query_error("reading pg_stat_archiver", e))?;
        let w = "pg_stat_archiver";
        let time = |i: usize| -> Result<Option<DateTime<Utc>>> {
            Ok(pg::column::<Option<std::time::SystemTime>>(&row, i, w)?.map(DateTime::from))
        };
        let stats = ArchiverRow {
            archived_count: pg::column(&row, 0, w)?,
            last_archived_wal: pg::column(&row, 1, w)?,
            last_archived_time: time(2)?,
            failed_count: pg::column(&row, 3, w)?,
            last_failed_wal: pg::column(&row, 4, w)?,
            last_failed_time: time(5)?,
            stats_reset: time(6)?,
        };
        Ok(Cluster::Read {
            system_id: id.system_id,
            stats,
        })
    };
    read().unwrap_or_else(|e| Cluster::Failed(e.to_string()))
}

/// The archiver statistics as they concern the server registered as `system_id`.
pub(super) fn archiver_stats(cluster: &Cluster, system_id: &str) -> ArchiverStats {
    let empty = |status: &'static str, message: String| ArchiverStats {
        status,
        message: Some(message),
        ..ArchiverStats::default()
    };
    match cluster {
        Cluster::NotAsked => empty(
            "not_asked",
            "not asked (no --conninfo, PGCELLAR_CONNINFO or conninfo in the config file)".into(),
        ),
        Cluster::Failed(e) => empty("error", e.clone()),
        Cluster::Read { system_id: id, .. } if id.to_string() != system_id => empty(
            "other_cluster",
            format!(
                "the cluster behind --conninfo is database system {id}, not this server's \
                 ({system_id})"
            ),
        ),
        Cluster::Read { stats, .. } => ArchiverStats {
            status: "ok",
            message: None,
            archived_count: stats.archived_count,
            last_archived_wal: stats.last_archived_wal.clone(),
            last_archived_time: stats.last_archived_time,
            failed_count: stats.failed_count,
            last_failed_wal: stats.last_failed_wal.clone(),
            last_failed_time: stats.last_failed_time,
            stats_reset: stats.stats_reset,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::layout;
    use crate::repo::lock::Lock;
    use crate::repo::status::Phase;
    use crate::storage::LocalStorage;
    use std::path::PathBuf;

    struct Repo(PathBuf, LocalStorage);
    impl Drop for Repo {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    fn repo() -> Repo {
        let root =
            std::env::temp_dir().join(format!("pgcellar-activity-{}", crate::util::temp_name()));
        let st = LocalStorage::new(root.clone());
        st.create_dir_all(&layout::locks_dir("main")).unwrap();
        Repo(root, st)
    }

    fn status(token: &str) -> BackupStatus {
        BackupStatus {
            id: "20261203T120000Z".into(),
            lock_token: token.into(),
            host: "db1".into(),
            pid: 4242,
            phase: Phase::Copying,
            started: Utc::now(),
            updated: Utc::now(),
            files_total: 10,
            files_done: 4,
            bytes_total: 1000,
            bytes_done: 250,
            bytes_read: 200,
            waiting_for: None,
            archiver: None,
        }
    }

    const STALE: Duration = Duration::from_secs(600);

    #[test]
    fn a_status_is_running_only_under_the_lock_that_wrote_it() {
        let r = repo();
        let st = &r.1;
        assert_eq!(backup_activity(st, "main", STALE).unwrap(), (None, None));
        // Left by an attempt that no longer holds the lock: interrupted.
        status::write(st, "main", &status("gone-token")).unwrap();
        let (b, holder) = backup_activity(st, "main", STALE).unwrap();
        let b = b.unwrap();
        assert_eq!((b.state, holder), ("interrupted", None));
        assert_eq!(b.percent_done, Some(25.0));
        assert_eq!(b.phase_description, "copying files");
        // The lock held by its writer: running.
        let lock = Lock::acquire(st, "main", "base-backup", STALE).unwrap();
        let token = lock.info().token.clone();
        status::write(st, "main", &status(&token)).unwrap();
        let (b, holder) = backup_activity(st, "main", STALE).unwrap();
        assert_eq!(b.unwrap().state, "running");
        assert_eq!(holder.unwrap().command, "base-backup");
        // The lock held by someone else (an expire after a crashed backup): the
        // status is what the crashed backup left.
        status::write(st, "main", &status("old-token")).unwrap();
        let (b, holder) = backup_activity(st, "main", STALE).unwrap();
        assert_eq!(b.unwrap().state, "interrupted");
        assert!(holder.is_some());
        lock.release();
        status::remove(st, "main").unwrap();
        assert_eq!(backup_activity(st, "main", STALE).unwrap(), (None, None));
    }

    #[test]
    fn archiver_stats_belong_to_the_registered_cluster_only() {
        assert_eq!(archiver_stats(&Cluster::NotAsked, "1").status, "not_asked");
        assert_eq!(
            archiver_stats(&Cluster::Failed("refused".into()), "1")
                .message
                .as_deref(),
            Some("refused")
        );
        let read = Cluster::Read {
            system_id: 7,
            stats: ArchiverRow {
                archived_count: Some(12),
                failed_count: Some(1),
                last_failed_wal: Some("000000010000000000000003".into()),
                ..ArchiverRow::default()
            },
        };
        let other = archiver_stats(&read, "8");
        assert_eq!(other.status, "other_cluster");
        assert_eq!(other.archived_count, None);
        let ok = archiver_stats(&read, "7");
        assert_eq!(
            (ok.status, ok.archived_count, ok.failed_count),
            ("ok", Some(12), Some(1))
        );
        assert_eq!(
            ok.last_failed_wal.as_deref(),
            Some("000000010000000000000003")
        );
    }
}
