//! The checks of what the repository holds for the server: backup age, redundancy,
//! WAL continuity since the oldest backup, aborted backups.

use super::render::describe_age;
use super::report::{CheckReport, Status};
use crate::archive::timeline::ArchiveIndex;
use crate::catalog::backups::unfinished_backups;
use crate::config::CatalogSettings;
use crate::repo::manifest;
use crate::repo::{Repository, ServerInfo};
use chrono::Utc;

pub(super) fn check_catalog(
    r: &mut CheckReport,
    repo: &Repository,
    s: &ServerInfo,
    cat: &CatalogSettings,
) {
    let storage = repo.storage();
    let manifests = match manifest::load_all(storage, &s.name) {
        Ok(m) => m,
        Err(e) => {
            for n in ["backup_age", "minimum_redundancy", "wal_continuity"] {
                r.push(n, Status::Unknown, format!("cannot read the backups: {e}"));
            }
            return;
        }
    };
    r.metrics.backups = Some(manifests.len() as u64);
    let newest = manifests.iter().max_by_key(|m| m.stop_time);
    match (newest, cat.last_backup_maximum_age) {
        (None, Some(_)) => r.push("backup_age", Status::Critical, "there is no backup"),
        (None, None) => r.push(
            "backup_age",
            Status::Ok,
            "there is no backup (no maximum age set)",
        ),
        (Some(m), max) => {
            let age = Utc::now() - m.stop_time;
            r.metrics.newest_backup_age_seconds = Some(age.num_seconds());
            let text = format!(
                "newest backup {} stopped {} ago",
                m.id,
                describe_age(age.num_seconds())
            );
            match max {
                Some(max) if age > max => r.push(
                    "backup_age",
                    Status::Critical,
                    format!(
                        "{text}, more than last_backup_maximum_age {}",
                        describe_age(max.num_seconds())
                    ),
                ),
                _ => r.push("backup_age", Status::Ok, text),
            }
        }
    }
    let n = manifests.len();
    if n >= cat.minimum_redundancy as usize {
        r.push(
            "minimum_redundancy",
            Status::Ok,
            format!(
                "{n} backup(s), minimum_redundancy {}",
                cat.minimum_redundancy
            ),
        );
    } else {
        r.push(
            "minimum_redundancy",
            Status::Critical,
            format!(
                "only {n} backup(s), minimum_redundancy is {}",
                cat.minimum_redundancy
            ),
        );
    }
    let index = match ArchiveIndex::scan(storage, &s.name, s.wal_segment_size) {
        Ok(i) => i,
        Err(e) => {
            r.push("wal_continuity", Status::Unknown, e.to_string());
            return;
        }
    };
    r.metrics.wal_files = Some(index.file_count() as u64);
    let Some(oldest) = manifests.first() else {
        r.push(
            "wal_continuity",
            Status::Ok,
            "no backup yet: nothing to check",
        );
        return;
    };
    match crate::catalog::verify::backup_wal(storage, &index, oldest) {
        Ok(c) if c.complete() => r.push(
            "wal_continuity",
            Status::Ok,
            format!(
                "{} segment(s) from {} to {} on timeline(s) {:?} are all archived",
                c.segments, c.first, c.last, c.timelines
            ),
        ),
        Ok(c) => {
            let mut gaps: Vec<String> = c.missing.iter().map(ToString::to_string).collect();
            gaps.extend(c.missing_history.iter().cloned());
            r.push(
                "wal_continuity",
                Status::Critical,
                format!(
                    "WAL since the oldest backup {} has gaps: {}",
                    oldest.id,
                    gaps.join(", ")
                ),
            );
        }
        Err(e) => r.push("wal_continuity", Status::Unknown, e.to_string()),
    }
}

/// Backup directories without a manifest whose writer is gone: never restorable,
/// they take space until cron removes them, and they mean a backup failed.
pub(super) fn check_unfinished(
    r: &mut CheckReport,
    repo: &Repository,
    s: &ServerInfo,
    stale_after: std::time::Duration,
) {
    match unfinished_backups(repo.storage(), &s.name, stale_after) {
        Ok(list) => {
            let aborted: Vec<String> = list
                .iter()
                .filter(|u| !u.running)
                .map(|u| u.id.to_string())
                .collect();
            let running = list.len() - aborted.len();
            if aborted.is_empty() {
                r.push(
                    "aborted_backups",
                    Status::Ok,
                    if running > 0 {
                        "no aborted backup (one is running)".to_string()
                    } else {
                        "no aborted backup".to_string()
                    },
                );
            } else {
                r.push(
                    "aborted_backups",
                    Status::Warning,
                    format!(
                        "{} aborted backup(s) (no manifest, writer gone; not restorable): {}; \
                         see why in base-backup's log; cron removes them after \
                         aborted_backup_max_age",
                        aborted.len(),
                        aborted.join(", ")
                    ),
                );
            }
        }
        Err(e) => r.push("aborted_backups", Status::Unknown, e.to_string()),
    }
}
