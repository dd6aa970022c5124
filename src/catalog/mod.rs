//! Catalog commands that work on the repository: `init`, `servers`, `list`, `show`,
//! `keep`, `switch-wal`, and the settings they share. Removal (`delete`, `expire`,
//! `cron`) lives in [`crate::catalog::expire`], `check` in [`crate::catalog::check`], `verify` in
//! [`crate::catalog::verify`], the retention rules in [`crate::catalog::retention`].
//!
//! Each command is one function returning a serialisable report; the `render_*`
//! functions turn reports into the human output (aligned tables). The JSON of the
//! reports is documented in `docs/cli-json.md`.
//!
//! This file declares the modules and re-exports their commands: `servers.rs` (`init`,
//! `servers`), `backups.rs` (`list`, `show`, `keep`), `switch.rs` (WAL switch and wait),
//! `render.rs` (human output); it still holds `switch-wal` and the catalog settings.

mod backups;
pub mod check;
pub mod expire;
mod render;
pub mod retention;
mod servers;
mod switch;
pub mod verify;

pub use backups::{
    is_kept, keep, list, show, unfinished_backups, BackupRow, KeepMarker, KeepOutcome, ShowReport,
    Unfinished, WalNeeded,
};
pub use render::{human_bytes, render_list, render_servers, render_show, table};
pub use servers::{init, server_names, servers, InitOutcome, ServerSummary};
pub use switch::{switch, wait_archived, SwitchOutcome};

use crate::catalog::retention::Policy;
use crate::config::Settings;
use crate::error::{Error, ErrorKind, Result};
use crate::pg;
use crate::repo::Repository;
use std::time::Duration;

// ---------------------------------------------------------------------------
// switch-wal (here, not in switch.rs, while CatalogSettings is in this file: switch.rs
// importing it from this facade, which re-exports switch.rs, would be an import cycle)

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

// ---------------------------------------------------------------------------
// Settings of the catalog commands (file keys; flags override where they exist).

/// Catalog settings resolved from the configuration file.
#[derive(Debug, Clone)]
pub struct CatalogSettings {
    /// `retention`, parsed.
    pub retention: Option<Policy>,
    /// `minimum_redundancy`.
    pub minimum_redundancy: u32,
    /// `last_backup_maximum_age`.
    pub last_backup_maximum_age: Option<chrono::Duration>,
    /// `archive_wait_timeout`.
    pub archive_wait_timeout: Duration,
    /// `aborted_backup_max_age`.
    pub aborted_backup_max_age: Duration,
}

impl CatalogSettings {
    /// Resolve the catalog keys (flag > environment > file > default); errors name
    /// where the bad value came from.
    pub fn from_settings(settings: &Settings) -> Result<CatalogSettings> {
        let f = &settings.file;
        let a = &settings.catalog_flags;
        let retention = match &f.retention {
            Some(text) => Some(
                Policy::parse(text).map_err(|e| e.context(settings.origin("retention", false)))?,
            ),
            None => None,
        };
        let age_flag = a.last_backup_maximum_age.is_some();
        let last_backup_maximum_age = match a
            .last_backup_maximum_age
            .as_ref()
            .or(f.last_backup_maximum_age.as_ref())
        {
            Some(text) => Some(
                parse_age(text)
                    .map_err(|e| e.context(settings.origin("last_backup_maximum_age", age_flag)))?,
            ),
            None => None,
        };
        let secs =
            |flag: Option<u64>, file: Option<u64>, default: u64, k: &str| -> Result<Duration> {
                match flag.or(file).unwrap_or(default) {
                    0 => Err(Error::config(format!(
                        "{}: must be at least 1 second",
                        settings.origin(k, flag.is_some())
                    ))),
                    s => Ok(Duration::from_secs(s)),
                }
            };
        Ok(CatalogSettings {
            retention,
            minimum_redundancy: a.minimum_redundancy.or(f.minimum_redundancy).unwrap_or(0),
            last_backup_maximum_age,
            archive_wait_timeout: secs(
                a.archive_wait_timeout,
                f.archive_wait_timeout,
                60,
                "archive_wait_timeout",
            )?,
            aborted_backup_max_age: secs(
                a.aborted_backup_max_age,
                f.aborted_backup_max_age,
                3600,
                "aborted_backup_max_age",
            )?,
        })
    }
}

/// Parse `n HOURS|DAYS|WEEKS` (singular accepted, case-insensitive).
pub fn parse_age(text: &str) -> Result<chrono::Duration> {
    let words: Vec<String> = text.split_whitespace().map(str::to_uppercase).collect();
    let bad = || {
        Error::config(format!(
            "{:?} is not an age: use 'n HOURS', 'n DAYS' or 'n WEEKS' (n at least 1)",
            crate::names::truncate_for_display(text)
        ))
    };
    let [n, unit] = words.as_slice() else {
        return Err(bad());
    };
    let n: i64 = match n.parse() {
        Ok(n) if (1..=100_000).contains(&n) => n,
        _ => return Err(bad()),
    };
    match unit.as_str() {
        "HOUR" | "HOURS" => Ok(chrono::Duration::hours(n)),
        "DAY" | "DAYS" => Ok(chrono::Duration::days(n)),
        "WEEK" | "WEEKS" => Ok(chrono::Duration::weeks(n)),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CommonArgs;

    fn settings(root: &std::path::Path, server: Option<&str>, config: Option<&str>) -> Settings {
        let cfg = config.map(|text| {
            let p = root.join("pgcellar.toml");
            std::fs::write(&p, text).unwrap();
            p
        });
        let args = CommonArgs {
            repo: Some(root.join("repo").display().to_string()),
            // Unit tests run as root in CI; the root guard has its own test.
            allow_root: true,
            server: server.map(str::to_string),
            config: cfg,
            ..Default::default()
        };
        Settings::resolve(&args, None).unwrap()
    }

    #[test]
    fn ages_parse() {
        assert_eq!(parse_age("36 hours").unwrap(), chrono::Duration::hours(36));
        assert_eq!(parse_age("1 DAY").unwrap(), chrono::Duration::days(1));
        assert_eq!(parse_age(" 2  Weeks ").unwrap(), chrono::Duration::weeks(2));
        for bad in [
            "",
            "1",
            "DAYS",
            "0 DAYS",
            "1 MONTH",
            "-1 DAYS",
            "1 DAYS ago",
        ] {
            assert!(parse_age(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_catalog_keys_name_the_key_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        for (text, key) in [
            ("retention = 'REDUNDANCY 0'", "retention"),
            (
                "last_backup_maximum_age = 'soon'",
                "last_backup_maximum_age",
            ),
            ("archive_wait_timeout = 0", "archive_wait_timeout"),
        ] {
            let s = settings(dir.path(), Some("main"), Some(text));
            let msg = CatalogSettings::from_settings(&s).unwrap_err().to_string();
            assert!(msg.contains(key) && msg.contains("pgcellar.toml"), "{msg}");
        }
    }
}
