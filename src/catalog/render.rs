//! The human output of the catalog commands: aligned tables and byte sizes.

use super::backups::{BackupRow, ShowReport};
use super::servers::ServerSummary;
use chrono::{DateTime, Utc};

/// Align `rows` under `header` in columns separated by two spaces.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i > 0 {
                l.push_str("  ");
            }
            l.push_str(c);
            if i + 1 < cells.len() {
                let pad = widths[i].saturating_sub(c.chars().count());
                l.push_str(&" ".repeat(pad));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
    out
}

/// Bytes in binary units for people (`1.5 GiB`).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A time for people: UTC to the second.
pub(crate) fn time(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// A duration for people, in its largest fitting unit (`90s`, `5m`, `3h`, `2d`).
pub(crate) fn describe_age(secs: i64) -> String {
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

/// `pgcellar servers` as a table.
pub fn render_servers(rows: &[ServerSummary]) -> String {
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.system_identifier.clone(),
                s.pg_major.to_string(),
                s.backups.to_string(),
                s.newest_backup.clone().unwrap_or_else(|| "-".into()),
                s.wal_files.to_string(),
                human_bytes(s.wal_stored_size),
            ]
        })
        .collect();
    table(
        &[
            "SERVER",
            "SYSTEM ID",
            "PG",
            "BACKUPS",
            "NEWEST",
            "WAL FILES",
            "WAL SIZE",
        ],
        &body,
    )
}

/// `pgcellar list` as a table.
pub fn render_list(rows: &[BackupRow]) -> String {
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|b| {
            vec![
                b.id.clone(),
                b.status.clone(),
                time(&b.start_time),
                b.stop_time.as_ref().map_or_else(|| "-".into(), time),
                b.timeline.map_or_else(|| "-".into(), |t| t.to_string()),
                b.start_lsn.clone().unwrap_or_else(|| "-".into()),
                b.stop_lsn.clone().unwrap_or_else(|| "-".into()),
                human_bytes(b.stored_size),
                human_bytes(b.added_size),
                if b.kept { "kept".into() } else { "-".into() },
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "STATUS",
            "START (UTC)",
            "STOP (UTC)",
            "TLI",
            "START LSN",
            "STOP LSN",
            "SIZE",
            "ADDED",
            "KEEP",
        ],
        &body,
    )
}

/// `pgcellar show` as aligned key/value lines (the file list only in `--json`).
pub fn render_show(r: &ShowReport) -> String {
    let m = &r.manifest;
    let b = &r.backup;
    let mut kv: Vec<(String, String)> = vec![
        ("Backup".into(), b.id.clone()),
        ("Server".into(), m.server.clone()),
        ("Status".into(), b.status.clone()),
        ("Label".into(), m.label.clone()),
        ("Kept".into(), if b.kept { "yes" } else { "no" }.into()),
        (
            "Parent".into(),
            b.parent.clone().unwrap_or_else(|| "-".into()),
        ),
        ("PostgreSQL".into(), m.pg_version_num.to_string()),
        ("System identifier".into(), m.system_identifier.clone()),
        ("Timeline".into(), m.timeline.to_string()),
        ("Start time".into(), time(&m.start_time)),
        ("Stop time".into(), time(&m.stop_time)),
        ("Start LSN".into(), m.start_lsn.clone()),
        ("Stop LSN".into(), m.stop_lsn.clone()),
        (
            "Compression".into(),
            format!("{} (level {})", m.compression, m.compression_level),
        ),
        (
            "Files".into(),
            format!(
                "{} ({} hard-linked to the parent, {} copied)",
                m.totals.files, m.totals.reused_files, m.totals.copied_files
            ),
        ),
        ("Data size".into(), human_bytes(m.totals.size)),
        ("Stored size".into(), human_bytes(m.totals.stored_size)),
        (
            "Added by this backup".into(),
            human_bytes(m.totals.copied_stored_size),
        ),
        (
            "Tablespaces".into(),
            if m.tablespaces.is_empty() {
                "-".into()
            } else {
                m.tablespaces
                    .iter()
                    .map(|t| {
                        format!(
                            "{} {} ({})",
                            t.oid,
                            t.name.as_deref().unwrap_or("?"),
                            t.location
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        ),
    ];
    let w = &r.wal_needed;
    kv.push((
        "WAL needed".into(),
        format!(
            "{} to {} ({} segment(s)): {}",
            w.first,
            w.last,
            w.segments,
            if w.complete {
                "all archived".to_string()
            } else {
                format!("MISSING {}", w.missing.join(", "))
            }
        ),
    ));
    let c = &r.wal_to_latest;
    kv.push((
        "WAL to latest".into(),
        format!(
            "{} to {} on timeline(s) {} ({} segment(s)): {}",
            c.first,
            c.last,
            c.timelines
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" -> "),
            c.segments,
            if c.complete() {
                "continuous".to_string()
            } else {
                let mut gaps: Vec<String> = c
                    .missing
                    .iter()
                    .map(|m| format!("{}..{}", m.first, m.last))
                    .collect();
                gaps.extend(c.missing_history.iter().map(|h| format!("{h} missing")));
                format!("GAPS {}", gaps.join(", "))
            }
        ),
    ));
    let width = kv.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    kv.iter()
        .map(|(k, v)| format!("{k:<width$}  {v}\n"))
        .collect()
}
