//! The catalog commands' settings (`retention`, `minimum_redundancy`,
//! `last_backup_maximum_age`, `archive_wait_timeout`, `aborted_backup_max_age`),
//! resolved when such a command runs.

use super::policy::Policy;
use super::settings::Settings;
use crate::error::{Error, Result};
use std::time::Duration;

/// Catalog settings (flag > environment > file > default).
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
        Self::resolve(settings, None)
    }

    /// The same, with `expire`'s `--retention` (`PGCELLAR_RETENTION`) over the file's.
    pub fn resolve(settings: &Settings, retention: Option<&str>) -> Result<CatalogSettings> {
        let (f, a, layers) = (&settings.file, &settings.args, settings.layers());
        // The file's policy is checked even under --retention: cron and the other
        // commands use it, so a bad one is reported wherever it is read.
        let file_retention =
            layers.parsed("retention", None, f.retention.as_deref(), Policy::parse)?;
        let flag_retention = layers.parsed("retention", retention, None, Policy::parse)?;
        Ok(CatalogSettings {
            retention: flag_retention.or(file_retention),
            minimum_redundancy: a.minimum_redundancy.or(f.minimum_redundancy).unwrap_or(0),
            last_backup_maximum_age: layers.parsed(
                "last_backup_maximum_age",
                a.last_backup_maximum_age.as_deref(),
                f.last_backup_maximum_age.as_deref(),
                parse_age,
            )?,
            archive_wait_timeout: layers.secs(
                "archive_wait_timeout",
                a.archive_wait_timeout,
                f.archive_wait_timeout,
                60,
            )?,
            aborted_backup_max_age: layers.secs(
                "aborted_backup_max_age",
                a.aborted_backup_max_age,
                f.aborted_backup_max_age,
                3600,
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
    use crate::config::args::CommonArgs;

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
