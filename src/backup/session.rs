//! What `base-backup` asks PostgreSQL on its one session: that the data directory and
//! archiving are right, `pg_backup_start`/`pg_backup_stop`, and the tablespace names.

use crate::error::{Error, Result};
use crate::pg;
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
/// rather than after `backup_wal_timeout`.
pub(super) fn check_archiving(client: &mut postgres::Client) -> Result<()> {
    let row = match client.query_one(
        "SELECT current_setting('archive_mode'), current_setting('archive_command')",
        &[],
    ) {
        Ok(row) => row,
        // Not readable by this role: the bounded WAL wait still catches it.
        Err(_) => return Ok(()),
    };
    let mode: String = pg::column(&row, 0, "archive_mode")?;
    let command: String = pg::column(&row, 1, "archive_command")?;
    if mode == "off" || command.trim().is_empty() {
        return Err(Error::config(format!(
            "archiving is not set up (archive_mode = {mode}, archive_command = {command:?}): \
             a backup needs its WAL in the repository; set archive_command to wal-push"
        )));
    }
    Ok(())
}

pub(super) struct Started {
    pub(super) lsn: String,
    pub(super) wal: String,
}

pub(super) struct Stopped {
    pub(super) lsn: String,
    pub(super) wal: String,
    pub(super) label_file: Option<String>,
    pub(super) spcmap_file: Option<String>,
}

pub(super) fn start_backup(
    client: &mut postgres::Client,
    major: u32,
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
    let sql = if major >= 15 {
        "SELECT l::text, pg_walfile_name(l) FROM pg_backup_start($1, true) AS l"
    } else {
        "SELECT l::text, pg_walfile_name(l) FROM pg_start_backup($1, true, false) AS l"
    };
    let row = client
        .query_one(sql, &[&label])
        .map_err(|e| pg::query_error("starting the backup (pg_backup_start)", e))?;
    let what = "pg_backup_start";
    Ok(Started {
        lsn: pg::column(&row, 0, what)?,
        wal: pg::column(&row, 1, what)?,
    })
}

pub(super) fn stop_backup(client: &mut postgres::Client, major: u32) -> Result<Stopped> {
    // wait_for_archive => false: PostgreSQL's own wait has no bound; we wait (bounded)
    // for the WAL to appear in *our* repository instead, which is the stronger check.
    let sql = if major >= 15 {
        "SELECT lsn::text, pg_walfile_name(lsn), labelfile, spcmapfile FROM pg_backup_stop(false)"
    } else {
        "SELECT lsn::text, pg_walfile_name(lsn), labelfile, spcmapfile FROM pg_stop_backup(false, false)"
    };
    let row = client
        .query_one(sql, &[])
        .map_err(|e| pg::query_error("stopping the backup (pg_backup_stop)", e))?;
    let what = "pg_backup_stop";
    Ok(Stopped {
        lsn: pg::column(&row, 0, what)?,
        wal: pg::column(&row, 1, what)?,
        label_file: pg::column(&row, 2, what)?,
        spcmap_file: pg::column(&row, 3, what)?,
    })
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
