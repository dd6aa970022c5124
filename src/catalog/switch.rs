//! Closing the current WAL segment and waiting, bounded, until it is in the repository
//! (used by `switch-wal` and by `check`).

use crate::config::{CatalogSettings, Settings};
use crate::error::{Error, ErrorKind, Result};
use crate::pg;
use crate::repo::Repository;
use crate::storage::Storage;
use crate::wal::WalName;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::time::{Duration, Instant};

/// What `switch-wal` did.
#[derive(Debug, Clone, Serialize)]
pub struct SwitchOutcome {
    /// The segment closed by the switch (or the last one, if nothing was written).
    pub segment: String,
    /// With `--wait`: it is in the repository.
    pub archived: bool,
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
