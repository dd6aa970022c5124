//! The checks of the running cluster: its identity, archive_mode, archive_command,
//! a WAL switch that must reach the repository, and `pg_stat_archiver`.

use super::archive_command::archive_command_check;
use super::report::{CheckReport, Status};
use super::stream::StreamFinding;
use crate::catalog::switch::{switch, wait_archived};
use crate::config::CatalogSettings;
use crate::pg;
use crate::repo::{Repository, ServerInfo};
use chrono::{DateTime, Utc};

/// What is being checked.
pub(super) struct Target<'a> {
    pub(super) repo_url: &'a crate::storage::RepoUrl,
    pub(super) server_name: &'a str,
    /// `None`: the repository could not be opened.
    pub(super) repo: Option<&'a Repository>,
    /// `None`: not registered, or the repository could not be opened.
    pub(super) server: Option<&'a ServerInfo>,
    /// What the stream check found: a receiver's slot is a WAL route of its own.
    pub(super) stream: &'a StreamFinding,
}

pub(super) fn check_cluster(
    r: &mut CheckReport,
    client: &mut postgres::Client,
    t: &Target<'_>,
    cat: &CatalogSettings,
) {
    let unavailable = if t.repo.is_none() {
        "not checked: the repository is unavailable"
    } else {
        "not checked: the server is not registered"
    };
    let sysid_ok = match (pg::identity(client), t.server) {
        (Ok(id), Some(s)) if id.system_id.to_string() == s.system_identifier => {
            r.push(
                "system_identifier",
                Status::Ok,
                format!("the cluster is database system {}", id.system_id),
            );
            true
        }
        (Ok(id), Some(s)) => {
            r.push(
                "system_identifier",
                Status::Critical,
                format!(
                    "the cluster is database system {}, but server {} is registered as {}",
                    id.system_id, s.name, s.system_identifier
                ),
            );
            false
        }
        (Ok(_), None) => {
            r.push("system_identifier", Status::Unknown, unavailable);
            false
        }
        (Err(e), _) => {
            r.push("system_identifier", Status::Unknown, e.to_string());
            false
        }
    };
    let setting = |c: &mut postgres::Client, n: &str| -> std::result::Result<String, String> {
        c.query_one("SELECT current_setting($1)", &[&n])
            .map_err(|e| pg::describe(&e))
            .and_then(|row| pg::column::<String>(&row, 0, n).map_err(|e| e.to_string()))
    };
    let mode = setting(client, "archive_mode");
    // archive_mode off with a receiver's slot: the stream is the only WAL route.
    let streaming_only = t.stream.route && matches!(mode.as_deref(), Ok("off"));
    let mode_ok = match mode {
        Ok(m) if m == "on" || m == "always" => {
            r.push("archive_mode", Status::Ok, format!("archive_mode = {m}"));
            true
        }
        Ok(m) if t.stream.route => {
            r.push(
                "archive_mode",
                Status::Ok,
                format!(
                    "archive_mode = {m}: WAL comes by the stream on slot {} (see the stream row)",
                    t.stream.slot.as_deref().unwrap_or("?")
                ),
            );
            true
        }
        Ok(m) => {
            r.push(
                "archive_mode",
                Status::Critical,
                format!("archive_mode = {m}: WAL is not archived (set it to on and restart)"),
            );
            false
        }
        Err(e) => {
            r.push("archive_mode", Status::Unknown, e);
            false
        }
    };
    let command_ok = match setting(client, "archive_command") {
        Ok(_) if streaming_only => {
            r.push(
                "archive_command",
                Status::Ok,
                "not used (archive_mode = off): WAL comes by the stream",
            );
            true
        }
        Ok(c) => {
            let (status, message) = archive_command_check(&c, Some(t.repo_url), t.server_name);
            r.push("archive_command", status, message);
            status != Status::Critical
        }
        Err(e) => {
            r.push("archive_command", Status::Unknown, e);
            false
        }
    };
    // End to end: switch and wait for the segment, bounded.
    match (t.repo, t.server) {
        // The slot keeps the WAL until the receiver is back; waiting would only time
        // out, and the stream row already says why.
        (Some(_), Some(_)) if streaming_only && !t.stream.running => r.push(
            "archiving",
            Status::Warning,
            format!(
                "not attempted: receive-wal is not streaming; the server keeps the WAL in slot {}",
                t.stream.slot.as_deref().unwrap_or("?")
            ),
        ),
        (Some(repo), Some(s)) if sysid_ok && mode_ok && command_ok => {
            // Write a commit record first, so that the switch always closes a new
            // segment even on an idle server (otherwise it would name one that was
            // archived long ago and prove nothing).
            let result = client
                .batch_execute("SELECT txid_current()")
                .map_err(|e| pg::query_error("writing a transaction before the switch", e))
                .and_then(|()| switch(client, false))
                .and_then(|seg| {
                    wait_archived(
                        repo.storage(),
                        &s.name,
                        &seg,
                        cat.archive_wait_timeout,
                        client,
                    )
                    .map(|()| seg)
                });
            match result {
                Ok(seg) => r.push(
                    "archiving",
                    Status::Ok,
                    format!("switched WAL; {seg} reached the repository"),
                ),
                Err(e) => r.push("archiving", Status::Critical, e.to_string()),
            }
        }
        (None, _) => r.push(
            "archiving",
            Status::Unknown,
            "not attempted: the repository is unavailable",
        ),
        _ => r.push(
            "archiving",
            Status::Unknown,
            "not attempted: an earlier check of the server failed",
        ),
    }
    let archiver = client
        .query_one(
            "SELECT failed_count, coalesce(last_failed_wal, ''), last_failed_time, \
             last_archived_time FROM pg_stat_archiver",
            &[],
        )
        .map_err(|e| pg::query_error("reading pg_stat_archiver", e))
        .and_then(|row| {
            let w = "pg_stat_archiver";
            let failed: i64 = pg::column(&row, 0, w)?;
            let wal: String = pg::column(&row, 1, w)?;
            let failed_at: Option<std::time::SystemTime> = pg::column(&row, 2, w)?;
            let archived_at: Option<std::time::SystemTime> = pg::column(&row, 3, w)?;
            Ok((failed, wal, failed_at, archived_at))
        });
    match archiver {
        Ok((failed, wal, failed_at, archived_at)) => {
            r.metrics.archiver_failed_count = Some(failed);
            let failed_at = failed_at.map(DateTime::<Utc>::from);
            let archived_at = archived_at.map(DateTime::<Utc>::from);
            let recent = failed_at.is_some_and(|f| Utc::now() - f < chrono::Duration::hours(1));
            match (failed_at, archived_at) {
                (Some(f), a) if a.is_none_or(|a| f > a) => r.push(
                    "archiver_failures",
                    Status::Critical,
                    format!(
                        "archiving is failing: {wal} failed at {} and nothing was archived since",
                        f.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    ),
                ),
                (Some(f), _) if recent => r.push(
                    "archiver_failures",
                    Status::Warning,
                    format!(
                        "{wal} failed to archive at {} (archiving has worked since)",
                        f.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    ),
                ),
                _ => r.push(
                    "archiver_failures",
                    Status::Ok,
                    format!("no failure in the last hour ({failed} since statistics reset)"),
                ),
            }
        }
        Err(e) => r.push("archiver_failures", Status::Unknown, e.to_string()),
    }
}
