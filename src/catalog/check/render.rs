//! The report as text: an aligned table, or the one Nagios plugin line with perfdata.

use super::report::{CheckReport, Status};
pub(super) use crate::catalog::render::describe_age;
use crate::catalog::render::table;

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
    if let Some(b) = r.metrics.stream_lag_bytes {
        perf.push(format!("stream_lag={b}B"));
    }
    if let Some(s) = r.metrics.stream_lag_seconds {
        perf.push(format!("stream_lag_time={s:.1}s"));
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
    let mut out = table(&["CHECK", "STATUS", "DETAIL"], &rows);
    out.push_str(&format!("server {}: {}\n", r.server, r.status));
    out
}
