//! What `base-backup` asks PostgreSQL on its one session: that the data directory and
//! archiving are right, `pg_backup_start`/`pg_backup_stop`, and the tablespace names.

use crate::error::{Error, ErrorKind, Result};
use crate::pg;
use crate::wal::{Segment, WalName};
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

/// Refuse to back up a directory that is not the connected server's data directory.
pub(super) fn check_data_directory(client: &mut postgres::Client, pgdata: &Path) -> Result<()> {
    // Needs superuser or pg_read_all_settings; without it, PG_VERSION is the only check.
    if let Ok(row) = client.query_one("SELECT current_setting('data_directory')", &[]) {
        let theirs: String = pg::column(&row, 0, "data_directory")?;
        let theirs = fs::canonicalize(&theirs).unwrap_or_else(|_| PathBuf::from(&theirs));
        if theirs != pgdata {
            return Err(Error::config(format!(
                "--pgdata {} is not the data directory of the connected server ({})",
                pgdata.display(),
                theirs.display()
            )));
        }
    }
    if !pgdata.join("PG_VERSION").is_file() {
        return Err(Error::config(format!(
            "{} is not a PostgreSQL data directory (no PG_VERSION)",
            pgdata.display()
        )));
    }
    Ok(())
}

/// Without archiving the backup's WAL never reaches the repository: say so now
/// rather than after `backup_wal_timeout`. A standby is exempt: its WAL may come from
/// the primary's archive_command, which this session cannot see.
pub(super) fn check_archiving(client: &mut postgres::Client) -> Result<()> {
    let row = match client.query_one(
        "SELECT current_setting('archive_mode'), current_setting('archive_command'), \
         pg_is_in_recovery()",
        &[],
    ) {
        Ok(row) => row,
        // Not readable by this role: the bounded WAL wait still catches it.
        Err(_) => return Ok(()),
    };
    let mode: String = pg::column(&row, 0, "archive_mode")?;
    let command: String = pg::column(&row, 1, "archive_command")?;
    let standby: bool = pg::column(&row, 2, "pg_is_in_recovery")?;
    if standby {
        if mode == "always" && !command.trim().is_empty() {
            crate::log_info!(
                "backing up a standby that archives its own WAL (archive_mode = always)"
            );
        } else {
            crate::log_info!(
                "backing up a standby that does not archive (archive_mode = {mode}): the \
                 backup's WAL must reach the repository from the primary's archive_command"
            );
        }
        return Ok(());
    }
    if mode == "off" || command.trim().is_empty() {
        // WAL may come by a stream instead (pgcellar receive-wal): an active physical
        // slot says one runs; the bounded WAL wait still proves the segments arrive.
        let streamed: Option<String> = client
            .query_opt(
                "SELECT slot_name::text FROM pg_replication_slots \
                 WHERE slot_type = 'physical' AND active LIMIT 1",
                &[],
            )
            .ok()
            .flatten()
            .and_then(|r| r.try_get(0).ok());
        if let Some(slot) = streamed {
            crate::log_info!(
                "archiving is off (archive_mode = {mode}); the backup's WAL must come from \
                 the stream on replication slot {slot} (pgcellar receive-wal)"
            );
            return Ok(());
        }
        return Err(Error::config(format!(
            "archiving is not set up (archive_mode = {mode}, archive_command = {command:?}): \
             a backup needs its WAL in the repository; set archive_command to wal-push, or \
             stream it with pgcellar receive-wal"
        )));
    }
    Ok(())
}

pub(super) struct Started {
    pub(super) lsn: String,
    pub(super) wal: String,
    /// The server was a hot standby when the backup started.
    pub(super) from_standby: bool,
}

pub(super) struct Stopped {
    pub(super) lsn: String,
    pub(super) wal: String,
    pub(super) label_file: Option<String>,
    pub(super) spcmap_file: Option<String>,
}

/// The timeline of the newest checkpoint (on a standby: restartpoint), which is the one
/// `pg_backup_start` has just made; a standby cannot run `pg_walfile_name`, so WAL file
/// names are computed here, the same way on both.
const CHECKPOINT_TIMELINE: &str = "(SELECT timeline_id FROM pg_control_checkpoint())::int8";

/// The timeline of the standby's minimum recovery point, where `pg_backup_stop` on a
/// standby puts the backup's end; on a primary, the current checkpoint's.
const STOP_TIMELINE: &str = "CASE WHEN pg_is_in_recovery() \
     THEN (SELECT min_recovery_end_timeline FROM pg_control_recovery())::int8 \
     ELSE (SELECT timeline_id FROM pg_control_checkpoint())::int8 END";

/// The name of the WAL file holding the byte before `lsn`, as `pg_walfile_name` does: a
/// backup that stops exactly at a segment boundary needs nothing of the next segment.
fn walfile_name(timeline: i64, lsn: &str, segment_size: u64) -> Result<String> {
    let timeline = u32::try_from(timeline)
        .ok()
        .filter(|t| *t > 0)
        .ok_or_else(|| {
            Error::new(
                ErrorKind::Postgres,
                format!("the server reports an impossible timeline {timeline}"),
            )
        })?;
    let lsn = crate::wal::parse_lsn(lsn)?;
    Ok(Segment::containing(timeline, lsn.saturating_sub(1), segment_size).file_name())
}

pub(super) fn start_backup(
    client: &mut postgres::Client,
    major: u32,
    segment_size: u64,
    label: &str,
) -> Result<Started> {
    // The session must survive however long the copy takes.
    let mut setup = "SET statement_timeout = 0; SET lock_timeout = 0;".to_string();
    if major >= 14 {
        setup.push_str(" SET idle_session_timeout = 0;");
    }
    client
        .batch_execute(&setup)
        .map_err(|e| pg::query_error("preparing the backup session", e))?;
    let call = if major >= 15 {
        "pg_backup_start($1, true)"
    } else {
        "pg_start_backup($1, true, false)"
    };
    let sql =
        format!("SELECT l::text, {CHECKPOINT_TIMELINE}, pg_is_in_recovery() FROM {call} AS l");
    let row = client
        .query_one(sql.as_str(), &[&label])
        .map_err(|e| pg::query_error("starting the backup (pg_backup_start)", e))?;
    let what = "pg_backup_start";
    let lsn: String = pg::column(&row, 0, what)?;
    let wal = walfile_name(pg::column(&row, 1, what)?, &lsn, segment_size)?;
    Ok(Started {
        lsn,
        wal,
        from_standby: pg::column(&row, 2, what)?,
    })
}

pub(super) fn stop_backup(
    client: &mut postgres::Client,
    major: u32,
    segment_size: u64,
    started: &Started,
) -> Result<Stopped> {
    // wait_for_archive => false: PostgreSQL's own wait has no bound; we wait (bounded)
    // for the WAL to appear in *our* repository instead, which is the stronger check.
    let call = if major >= 15 {
        "pg_backup_stop(false)"
    } else {
        "pg_stop_backup(false, false)"
    };
    let sql = format!("SELECT lsn::text, labelfile, spcmapfile, {STOP_TIMELINE} FROM {call}");
    let row = client.query_one(sql.as_str(), &[]).map_err(|e| {
        let promoted = started.from_standby
            && e.as_db_error()
                .is_some_and(|d| d.message().contains("promoted"));
        if promoted {
            Error::new(
                ErrorKind::Postgres,
                "the standby was promoted while the backup ran, so the copy is not consistent \
                 and was discarded; take a new backup (from the new primary, or from a standby)",
            )
        } else {
            pg::query_error("stopping the backup (pg_backup_stop)", e)
        }
    })?;
    let what = "pg_backup_stop";
    let lsn: String = pg::column(&row, 0, what)?;
    let label_file: Option<String> = pg::column(&row, 1, what)?;
    let wal = walfile_name(pg::column(&row, 3, what)?, &lsn, segment_size)?;
    // The label PostgreSQL wrote names the start file itself: if the timeline we read
    // beside pg_backup_start disagrees, the server switched timelines meanwhile.
    if let Some(label_start) = label_file.as_deref().and_then(label_start_wal) {
        if label_start != started.wal {
            return Err(Error::new(
                ErrorKind::Postgres,
                format!(
                    "the backup label starts at WAL file {label_start}, not {}: the timeline \
                     changed while the backup started; take it again",
                    started.wal
                ),
            ));
        }
    }
    Ok(Stopped {
        lsn,
        wal,
        label_file,
        spcmap_file: pg::column(&row, 2, what)?,
    })
}

/// The file named on the label's `START WAL LOCATION: 0/2000028 (file 0000...)` line.
fn label_start_wal(label: &str) -> Option<&str> {
    let line = label
        .lines()
        .find_map(|l| l.strip_prefix("START WAL LOCATION:"))?;
    let file = line.split("(file ").nth(1)?.strip_suffix(')')?;
    WalName::parse(file).ok().map(|_| file)
}

pub(super) fn tablespace_names(client: &mut postgres::Client) -> Result<HashMap<u32, String>> {
    let rows = client
        .query("SELECT oid::int8, spcname::text FROM pg_tablespace", &[])
        .map_err(|e| pg::query_error("listing tablespaces", e))?;
    let mut names = HashMap::new();
    for r in &rows {
        let oid: i64 = pg::column(r, 0, "pg_tablespace")?;
        let name: String = pg::column(r, 1, "pg_tablespace")?;
        if let Ok(oid) = u32::try_from(oid) {
            names.insert(oid, name);
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wal_file_names_match_pg_walfile_name() {
        let seg = 1u64 << 24;
        assert_eq!(
            walfile_name(1, "0/2000028", seg).unwrap(),
            "000000010000000000000002"
        );
        // Exactly at a boundary: the byte before it is in the previous segment.
        assert_eq!(
            walfile_name(3, "1/0", seg).unwrap(),
            "0000000300000000000000FF"
        );
        assert!(walfile_name(0, "0/2000028", seg).is_err());
        assert!(walfile_name(1, "nonsense", seg).is_err());
    }

    #[test]
    fn the_label_names_its_start_file() {
        let label = "START WAL LOCATION: 0/9000028 (file 000000020000000000000009)\n\
                     CHECKPOINT LOCATION: 0/9000060\nBACKUP METHOD: streamed\n\
                     BACKUP FROM: standby\n";
        assert_eq!(label_start_wal(label), Some("000000020000000000000009"));
        assert_eq!(label_start_wal("LABEL: x\n"), None);
        assert_eq!(
            label_start_wal("START WAL LOCATION: 0/1 (file ../../x)\n"),
            None
        );
    }
}
