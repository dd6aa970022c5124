//! `pgcellar check`: is this server's backup chain healthy right now?
//!
//! Every check yields a status; the worst one is the result. The order is fixed and
//! the names are stable (scripts and `--json` consumers match on them). A check
//! that cannot run because an earlier one failed is `unknown`, never `ok`.

use crate::archive::timeline::ArchiveIndex;
use crate::catalog;
use crate::config::{CatalogSettings, Settings};
use crate::error::Result;
use crate::pg;
use crate::repo::manifest;
use crate::repo::{layout, Repository, ServerInfo};
use crate::storage::Overwrite;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::fmt;

/// Result of one check, ordered from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Fine.
    Ok,
    /// Needs attention soon.
    Warning,
    /// Backups or recovery are at risk now.
    Critical,
    /// Could not be determined.
    Unknown,
}

impl Status {
    /// Nagios plugin exit code (0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN).
    pub fn nagios_code(self) -> i32 {
        match self {
            Status::Ok => 0,
            Status::Warning => 1,
            Status::Critical => 2,
            Status::Unknown => 3,
        }
    }

    /// Severity for choosing the overall status: UNKNOWN ranks below CRITICAL, as
    /// Nagios plugins do, so a critical finding is never hidden by an unknown one.
    fn severity(self) -> u8 {
        match self {
            Status::Ok => 0,
            Status::Warning => 1,
            Status::Unknown => 2,
            Status::Critical => 3,
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Ok => "OK",
            Status::Warning => "WARNING",
            Status::Critical => "CRITICAL",
            Status::Unknown => "UNKNOWN",
        })
    }
}

/// One check.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// Stable name (see `docs/cli-json.md`).
    pub name: &'static str,
    /// Outcome.
    pub status: Status,
    /// What was found.
    pub message: String,
}

/// Numbers for monitoring graphs (Nagios perfdata).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Metrics {
    /// Complete backups.
    pub backups: Option<u64>,
    /// Seconds since the newest backup stopped.
    pub newest_backup_age_seconds: Option<i64>,
    /// Stored WAL files.
    pub wal_files: Option<u64>,
    /// `pg_stat_archiver.failed_count`.
    pub archiver_failed_count: Option<i64>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// Server checked.
    pub server: String,
    /// Worst status of all checks.
    pub status: Status,
    /// Every check, in a fixed order.
    pub checks: Vec<Check>,
    /// Numbers.
    pub metrics: Metrics,
}

impl CheckReport {
    fn push(&mut self, name: &'static str, status: Status, message: impl Into<String>) {
        self.checks.push(Check {
            name,
            status,
            message: message.into(),
        });
    }

    fn finish(mut self) -> CheckReport {
        self.status = self
            .checks
            .iter()
            .map(|c| c.status)
            .max_by_key(|s| s.severity())
            .unwrap_or(Status::Unknown);
        self
    }
}

/// Run every check for the configured server. Fails only on bad settings; problems
/// with the repository or the server are findings in the report. Checks that need
/// only the running cluster (connection, archive_mode, archive_command,
/// pg_stat_archiver) run even when the repository is unavailable.
pub fn run(settings: &Settings) -> Result<CheckReport> {
    let cat = CatalogSettings::from_settings(settings)?;
    let name = settings.server_name()?.to_string();
    let repo_url = settings.repo_url()?.clone();
    let mut r = CheckReport {
        server: name.clone(),
        status: Status::Unknown,
        checks: Vec::new(),
        metrics: Metrics::default(),
    };

    // 1. The repository: reachable and writable.
    let repo = match Repository::open(settings) {
        Ok(repo) => Some(repo),
        Err(e) => {
            r.push("repository", Status::Critical, e.to_string());
            None
        }
    };
    // 2. The registration.
    let server = match &repo {
        Some(repo) => {
            let storage = repo.storage();
            let server = repo.server(&name);
            match &server {
                Ok(_) => {
                    let probe = layout::check_probe(&name, &format!("{}", std::process::id()));
                    match storage
                        .write_all(&probe, b"pgcellar check\n", Overwrite::Replace)
                        .and_then(|_| storage.remove_file(&probe))
                    {
                        Ok(()) => r.push(
                            "repository",
                            Status::Ok,
                            format!("{} is reachable and writable", storage.location()),
                        ),
                        Err(e) => {
                            r.push("repository", Status::Critical, format!("not writable: {e}"))
                        }
                    }
                }
                // Without a registration there is no server directory to probe in;
                // reading the root file already proved the repository is reachable.
                Err(_) => r.push(
                    "repository",
                    Status::Ok,
                    format!("{} is reachable", storage.location()),
                ),
            }
            match server {
                Ok(s) => {
                    r.push(
                        "server_registered",
                        Status::Ok,
                        format!(
                            "server {name} is database system {} (PostgreSQL {})",
                            s.system_identifier, s.pg_major
                        ),
                    );
                    Some(s)
                }
                Err(e) => {
                    r.push("server_registered", Status::Critical, e.to_string());
                    None
                }
            }
        }
        None => {
            r.push(
                "server_registered",
                Status::Unknown,
                "not checked: the repository is unavailable",
            );
            None
        }
    };

    // 3-8. The running cluster.
    let mut client = match pg::connect(settings.conninfo.as_deref()) {
        Ok(c) => {
            r.push("postgres_connection", Status::Ok, "connected");
            Some(c)
        }
        Err(e) => {
            r.push("postgres_connection", Status::Critical, e.to_string());
            None
        }
    };
    match &mut client {
        Some(c) => {
            let target = Target {
                repo_url: &repo_url,
                server_name: &name,
                repo: repo.as_ref(),
                server: server.as_ref(),
            };
            check_cluster(&mut r, c, &target, &cat)
        }
        None => {
            for n in [
                "system_identifier",
                "archive_mode",
                "archive_command",
                "archiving",
                "archiver_failures",
            ] {
                r.push(
                    n,
                    Status::Unknown,
                    "not checked: no connection to PostgreSQL",
                );
            }
        }
    }

    // 9-11. The catalog.
    match (&repo, &server) {
        (Some(repo), Some(s)) => {
            check_catalog(&mut r, repo, s, &cat);
            check_unfinished(&mut r, repo, s, settings.lock_stale_after);
        }
        (repo, _) => {
            let why = if repo.is_none() {
                "not checked: the repository is unavailable"
            } else {
                "not checked: the server is not registered"
            };
            for n in [
                "backup_age",
                "minimum_redundancy",
                "wal_continuity",
                "aborted_backups",
            ] {
                r.push(n, Status::Unknown, why);
            }
        }
    }
    Ok(r.finish())
}

/// The report of a check that could not run at all (bad settings): one `settings`
/// check, UNKNOWN, so that `check --json` always prints a document.
pub fn failed_report(server: Option<&str>, error: &str) -> CheckReport {
    let mut r = CheckReport {
        server: server.unwrap_or_default().to_string(),
        status: Status::Unknown,
        checks: Vec::new(),
        metrics: Metrics::default(),
    };
    r.push("settings", Status::Unknown, error);
    r.finish()
}

/// What is being checked.
struct Target<'a> {
    repo_url: &'a crate::storage::RepoUrl,
    server_name: &'a str,
    /// `None`: the repository could not be opened.
    repo: Option<&'a Repository>,
    /// `None`: not registered, or the repository could not be opened.
    server: Option<&'a ServerInfo>,
}

fn check_cluster(
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
    let mode_ok = match setting(client, "archive_mode") {
        Ok(m) if m == "on" || m == "always" => {
            r.push("archive_mode", Status::Ok, format!("archive_mode = {m}"));
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
        (Some(repo), Some(s)) if sysid_ok && mode_ok && command_ok => {
            // Write a commit record first, so that the switch always closes a new
            // segment even on an idle server (otherwise it would name one that was
            // archived long ago and prove nothing).
            let result = client
                .batch_execute("SELECT txid_current()")
                .map_err(|e| pg::query_error("writing a transaction before the switch", e))
                .and_then(|()| catalog::switch(client, false))
                .and_then(|seg| {
                    catalog::wait_archived(
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
                (Some(f), a) if a.map_or(true, |a| f > a) => r.push(
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

fn check_catalog(r: &mut CheckReport, repo: &Repository, s: &ServerInfo, cat: &CatalogSettings) {
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
            let mut gaps: Vec<String> = c
                .missing
                .iter()
                .map(|m| {
                    if m.count == 1 {
                        m.first.clone()
                    } else {
                        format!("{}..{} ({})", m.first, m.last, m.count)
                    }
                })
                .collect();
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

/// Where a `wal-push` command line sends WAL, as far as the line itself tells.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushTarget {
    /// The repository (`--repo`, `PGCELLAR_REPO=` before the command, or the config file).
    pub repo: Option<String>,
    /// The server name, likewise.
    pub server: Option<String>,
    /// The `--config` file (or `PGCELLAR_CONFIG=`), if any.
    pub config: Option<String>,
}

/// Split a shell command line into words (quotes and backslashes as `sh` reads
/// them), with `;`, `&`, `|` as words of their own.
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                for q in chars.by_ref() {
                    if q == '\'' {
                        break;
                    }
                    cur.push(q);
                }
            }
            '"' => {
                in_word = true;
                while let Some(q) = chars.next() {
                    match q {
                        '"' => break,
                        '\\' => {
                            if let Some(n) = chars.next() {
                                cur.push(n);
                            }
                        }
                        _ => cur.push(q),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            ';' | '&' | '|' | '(' | ')' => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
                words.push(c.to_string());
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}

/// Find the `wal-push` call in `archive_command` and the repository, server and
/// config file its own words name; `None` if it does not call `wal-push`.
pub fn parse_push_command(command: &str) -> Option<PushTarget> {
    let words = shell_words(command);
    let is_sep = |w: &str| matches!(w, ";" | "&" | "|" | "(" | ")");
    let at = words.iter().position(|w| {
        !is_sep(w)
            && std::path::Path::new(w)
                .file_name()
                .is_some_and(|n| n == "wal-push")
    })?;
    let mut t = PushTarget::default();
    // Environment assignments of the same simple command (`PGCELLAR_SERVER=x wal-push`,
    // `env PGCELLAR_REPO=y wal-push`).
    let cmd_start = words[..at]
        .iter()
        .rposition(|w| is_sep(w))
        .map_or(0, |p| p + 1);
    for w in &words[cmd_start..at] {
        if let Some((k, v)) = w.split_once('=') {
            match k {
                "PGCELLAR_REPO" => t.repo = Some(v.to_string()),
                "PGCELLAR_SERVER" => t.server = Some(v.to_string()),
                "PGCELLAR_CONFIG" => t.config = Some(v.to_string()),
                _ => {}
            }
        }
    }
    let args: Vec<&String> = words[at + 1..].iter().take_while(|w| !is_sep(w)).collect();
    let mut k = 0;
    while k < args.len() {
        let a = args[k].as_str();
        let mut take = |flag: &str, slot: &mut Option<String>| -> bool {
            if a == flag {
                if let Some(v) = args.get(k + 1) {
                    *slot = Some((*v).clone());
                    k += 1;
                }
                true
            } else if let Some(v) = a.strip_prefix(flag).and_then(|r| r.strip_prefix('=')) {
                *slot = Some(v.to_string());
                true
            } else {
                false
            }
        };
        let _ = take("--repo", &mut t.repo)
            || take("--server", &mut t.server)
            || take("--config", &mut t.config);
        k += 1;
    }
    Some(t)
}

/// Whether two repository locations are the same place.
fn same_repo(a: &str, b: &crate::storage::RepoUrl) -> bool {
    use crate::storage::RepoUrl;
    match (RepoUrl::parse(a), b) {
        (Ok(RepoUrl::Local(x)), RepoUrl::Local(y)) => {
            let canon = |p: &std::path::Path| std::fs::canonicalize(p).unwrap_or(p.to_path_buf());
            canon(&x) == canon(y)
        }
        (Ok(x), y) => x == *y,
        (Err(_), _) => false,
    }
}

/// The `archive_command` row: does the command push to the repository and server
/// being checked?
fn archive_command_check(
    command: &str,
    repo: Option<&crate::storage::RepoUrl>,
    server: &str,
) -> (Status, String) {
    let Some(mut t) = parse_push_command(command) else {
        return (
            Status::Critical,
            format!("archive_command = {command:?} does not call wal-push"),
        );
    };
    let mut notes = Vec::new();
    if let Some(cfg) = &t.config {
        match crate::config::repo_and_server(std::path::Path::new(cfg)) {
            Ok((repo, server)) => {
                t.repo = t.repo.or(repo);
                t.server = t.server.or(server);
            }
            Err(e) => notes.push(format!("cannot read its configuration file: {e}")),
        }
    }
    let mut problems = Vec::new();
    match (&t.server, server) {
        (Some(theirs), ours) if theirs != ours => problems.push(format!(
            "it pushes to server {theirs}, but this check is for server {ours}"
        )),
        _ => {}
    }
    match (&t.repo, repo) {
        (Some(theirs), Some(ours)) if !same_repo(theirs, ours) => problems.push(format!(
            "it pushes to repository {theirs}, but this check is for repository {ours}"
        )),
        _ => {}
    }
    if !problems.is_empty() {
        return (
            Status::Critical,
            format!(
                "archive_command = {command:?}: {}; WAL does not reach the repository checked",
                problems.join("; ")
            ),
        );
    }
    let mut unseen = Vec::new();
    if t.repo.is_none() {
        unseen.push("repository");
    }
    if t.server.is_none() {
        unseen.push("server");
    }
    if !unseen.is_empty() {
        notes.push(format!(
            "cannot see which {} it uses (not on its command line{}): PostgreSQL's \
             environment (PGCELLAR_REPO, PGCELLAR_SERVER, PGCELLAR_CONFIG) may set it; \
             name them with --repo/--server or --config in archive_command",
            unseen.join(" and "),
            if t.config.is_some() {
                " or in its --config file"
            } else {
                ""
            }
        ));
    }
    if notes.is_empty() {
        (
            Status::Ok,
            format!("archive_command = {command} (server {server})"),
        )
    } else {
        (
            Status::Warning,
            format!("archive_command = {command:?}: {}", notes.join("; ")),
        )
    }
}

/// Backup directories without a manifest whose writer is gone: never restorable,
/// they take space until cron removes them, and they mean a backup failed.
fn check_unfinished(
    r: &mut CheckReport,
    repo: &Repository,
    s: &ServerInfo,
    stale_after: std::time::Duration,
) {
    match catalog::unfinished_backups(repo.storage(), &s.name, stale_after) {
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
                        "{} aborted backup(s) (no manifest, writer gone; not restorable): {};                          see why in base-backup's log; cron removes them after                          aborted_backup_max_age",
                        aborted.len(),
                        aborted.join(", ")
                    ),
                );
            }
        }
        Err(e) => r.push("aborted_backups", Status::Unknown, e.to_string()),
    }
}

fn describe_age(secs: i64) -> String {
    if secs < 120 {
        format!("{secs}s")
    } else if secs < 7200 {
        format!("{}m", secs / 60)
    } else if secs < 172_800 {
        format!("{}h", secs / 3600)
    } else {
        format!("{}d", secs / 86400)
    }
}

/// The one-line Nagios plugin output.
pub fn render_nagios(r: &CheckReport) -> String {
    let bad: Vec<String> = r
        .checks
        .iter()
        .filter(|c| c.status != Status::Ok)
        .map(|c| format!("{}: {}", c.name, c.message.replace(['|', '\n'], " ")))
        .collect();
    let summary = if bad.is_empty() {
        let mut s = format!("server {}: {} checks ok", r.server, r.checks.len());
        if let Some(age) = r.metrics.newest_backup_age_seconds {
            s.push_str(&format!(", newest backup {} old", describe_age(age)));
        }
        s
    } else {
        format!("server {}: {}", r.server, bad.join("; "))
    };
    let mut perf = vec![
        format!("checks={}", r.checks.len()),
        format!(
            "failed_checks={}",
            r.checks.iter().filter(|c| c.status != Status::Ok).count()
        ),
    ];
    if let Some(b) = r.metrics.backups {
        perf.push(format!("backups={b}"));
    }
    if let Some(a) = r.metrics.newest_backup_age_seconds {
        perf.push(format!("newest_backup_age={a}s"));
    }
    if let Some(w) = r.metrics.wal_files {
        perf.push(format!("wal_files={w}"));
    }
    if let Some(f) = r.metrics.archiver_failed_count {
        perf.push(format!("archiver_failed={f}c"));
    }
    format!("PGCELLAR {} - {} | {}", r.status, summary, perf.join(" "))
}

/// The report as an aligned table with a summary line.
pub fn render(r: &CheckReport) -> String {
    let rows: Vec<Vec<String>> = r
        .checks
        .iter()
        .map(|c| vec![c.name.to_string(), c.status.to_string(), c.message.clone()])
        .collect();
    let mut out = catalog::table(&["CHECK", "STATUS", "DETAIL"], &rows);
    out.push_str(&format!("server {}: {}\n", r.server, r.status));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(statuses: &[Status]) -> CheckReport {
        let mut r = CheckReport {
            server: "main".into(),
            status: Status::Unknown,
            checks: Vec::new(),
            metrics: Metrics {
                backups: Some(2),
                newest_backup_age_seconds: Some(3600),
                wal_files: Some(10),
                archiver_failed_count: Some(0),
            },
        };
        for (i, s) in statuses.iter().enumerate() {
            r.push(["a", "b", "c"][i], *s, format!("m|{i}"));
        }
        r.finish()
    }

    #[test]
    fn worst_status_wins_and_critical_beats_unknown() {
        assert_eq!(report(&[Status::Ok, Status::Ok]).status, Status::Ok);
        assert_eq!(
            report(&[Status::Ok, Status::Warning]).status,
            Status::Warning
        );
        assert_eq!(
            report(&[Status::Unknown, Status::Critical]).status,
            Status::Critical
        );
        assert_eq!(
            report(&[Status::Warning, Status::Unknown]).status,
            Status::Unknown
        );
        assert_eq!(Status::Unknown.nagios_code(), 3);
    }

    #[test]
    fn nagios_line_has_status_summary_and_perfdata() {
        let ok = render_nagios(&report(&[Status::Ok, Status::Ok]));
        assert_eq!(
            ok,
            "PGCELLAR OK - server main: 2 checks ok, newest backup 60m old | checks=2 \
             failed_checks=0 backups=2 newest_backup_age=3600s wal_files=10 archiver_failed=0c"
        );
        let bad = render_nagios(&report(&[Status::Ok, Status::Critical]));
        // A '|' inside a message would start the perfdata: it is replaced.
        assert!(
            bad.starts_with("PGCELLAR CRITICAL - server main: b: m 1 | checks=2 failed_checks=1"),
            "{bad}"
        );
        assert_eq!(bad.matches('|').count(), 1);
        assert!(!bad.contains('\n'));
    }

    #[test]
    fn the_push_target_is_read_from_the_command_line() {
        let t = parse_push_command("/usr/local/bin/wal-push -v --repo /srv/r --server main %p")
            .unwrap();
        assert_eq!(t.repo.as_deref(), Some("/srv/r"));
        assert_eq!(t.server.as_deref(), Some("main"));
        let t = parse_push_command(
            "PGCELLAR_SERVER=db2 env 'wal-push' --repo='ssh://b@h/srv r' --config \"/etc/p c.toml\" \"%p\"",
        )
        .unwrap();
        assert_eq!(t.server.as_deref(), Some("db2"));
        assert_eq!(t.repo.as_deref(), Some("ssh://b@h/srv r"));
        assert_eq!(t.config.as_deref(), Some("/etc/p c.toml"));
        // Only the wal-push command's own words count.
        let t = parse_push_command("test -f /x; wal-push %p && echo --server=no").unwrap();
        assert_eq!(t, PushTarget::default());
        assert!(parse_push_command("cp %p /mnt/wal-push-dir/%f").is_none());
        assert!(parse_push_command("/bin/true").is_none());
    }

    #[test]
    fn a_command_for_another_server_or_repository_is_critical() {
        let ours = crate::storage::RepoUrl::parse("/srv/r").unwrap();
        let (s, m) = archive_command_check(
            "wal-push --repo /srv/r --server main %p",
            Some(&ours),
            "main",
        );
        assert_eq!(s, Status::Ok, "{m}");
        let (s, m) = archive_command_check(
            "wal-push --repo /srv/r --server other %p",
            Some(&ours),
            "main",
        );
        assert_eq!(s, Status::Critical);
        assert!(
            m.contains("server other") && m.contains("server main"),
            "{m}"
        );
        let (s, m) = archive_command_check(
            "wal-push --repo /srv/x --server main %p",
            Some(&ours),
            "main",
        );
        assert_eq!(s, Status::Critical);
        assert!(m.contains("/srv/x") && m.contains("/srv/r"), "{m}");
        let (s, m) = archive_command_check("wal-push %p", Some(&ours), "main");
        assert_eq!(s, Status::Warning);
        assert!(m.contains("PGCELLAR_REPO"), "{m}");
        let (s, m) = archive_command_check(
            "wal-push --config /nonexistent/p.toml %p",
            Some(&ours),
            "main",
        );
        assert_eq!(s, Status::Warning);
        assert!(m.contains("/nonexistent/p.toml"), "{m}");
    }
}
