//! The report of `pgcellar check`: one status per named check, the worst one overall,
//! and numbers for monitoring.

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
    /// WAL the server has that the repository lacks, per receive-wal's status.
    pub stream_lag_bytes: Option<u64>,
    /// Seconds the repository is behind the server, per receive-wal's status.
    pub stream_lag_seconds: Option<f64>,
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
    pub(super) fn push(&mut self, name: &'static str, status: Status, message: impl Into<String>) {
        self.checks.push(Check {
            name,
            status,
            message: message.into(),
        });
    }

    pub(super) fn finish(mut self) -> CheckReport {
        self.status = self
            .checks
            .iter()
            .map(|c| c.status)
            .max_by_key(|s| s.severity())
            .unwrap_or(Status::Unknown);
        self
    }
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
#[cfg(test)]
mod tests {
    use super::super::render::render_nagios;
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
                stream_lag_bytes: None,
                stream_lag_seconds: None,
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
}
