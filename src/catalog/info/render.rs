//! `pgcellar info` for people: one screen per server, then the repository's totals.

use super::report::{
    ArchiverStats, InfoReport, RunningBackup, ServerReport, StreamInfo, Throughput, Window,
};
use crate::catalog::render::{describe_age, human_bytes, table, time};
use crate::stream::ReceiverState;
use chrono::{DateTime, Utc};

/// Gaps listed per timeline on screen; the JSON lists them all.
const GAPS_SHOWN: usize = 3;

/// The whole report as text.
pub fn render_info(r: &InfoReport) -> String {
    let mut out = String::new();
    for s in &r.servers {
        out.push_str(&server_screen(s, r.time));
        out.push('\n');
    }
    let t = &r.totals;
    out.push_str(&format!(
        "Repository {}: {} server(s), {} backup(s); {} of backups + {} of WAL = {} stored\n",
        r.repository,
        t.servers,
        t.backups,
        human_bytes(t.backup_stored_size),
        human_bytes(t.wal_stored_size),
        human_bytes(t.stored_size)
    ));
    out
}

fn ago(t: &DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (now - *t).num_seconds();
    if secs < 0 {
        format!("{} in the future", describe_age(-secs))
    } else {
        format!("{} ago", describe_age(secs))
    }
}

fn server_screen(s: &ServerReport, now: DateTime<Utc>) -> String {
    let mut out = format!(
        "Server {} (database system {}, PostgreSQL {}, WAL segments of {})\n\n",
        s.name,
        s.system_identifier,
        s.pg_major,
        human_bytes(s.wal_segment_size)
    );

    out.push_str(&format!(
        "Backups: {} complete, {} of objects stored\n",
        s.backups.len(),
        human_bytes(s.totals.backup_stored_size)
    ));
    if !s.backups.is_empty() {
        let rows: Vec<Vec<String>> = s
            .backups
            .iter()
            .map(|b| {
                vec![
                    b.id.clone(),
                    time(&b.stop_time),
                    b.timeline.to_string(),
                    human_bytes(b.size),
                    human_bytes(b.objects_stored_size),
                    human_bytes(b.shared_size),
                    human_bytes(b.unique_size),
                    if b.kept { "kept".into() } else { "-".into() },
                ]
            })
            .collect();
        out.push_str(&indent(&table(
            &[
                "ID",
                "STOP (UTC)",
                "TLI",
                "SIZE",
                "STORED",
                "SHARED",
                "ONLY HERE",
                "KEEP",
            ],
            &rows,
        )));
        out.push_str(
            "  (STORED: its objects, each once; SHARED: those other backups use too; ONLY HERE:\n   \
             what deleting it frees)\n",
        );
    }
    if !s.unfinished_backups.is_empty() {
        let list: Vec<String> = s
            .unfinished_backups
            .iter()
            .map(|u| format!("{} ({})", u.id, u.status))
            .collect();
        out.push_str(&format!(
            "Without a manifest (never restorable): {}\n",
            list.join(", ")
        ));
    }
    out.push('\n');

    out.push_str(&match &s.running_backup {
        Some(b) => running(b, now),
        None => "Backup in progress: none\n".into(),
    });
    if let Some(l) = &s.lock {
        out.push_str(&format!(
            "Writer lock: held by {} (pid {} on {}, since {}, refreshed {})\n",
            l.command,
            l.pid,
            l.host,
            time(&l.started),
            ago(&l.refreshed, now)
        ));
    }
    out.push('\n');

    let w = &s.wal;
    out.push_str(&format!(
        "WAL: {} file(s), {} stored: {} segment(s), {} .history, {} .partial, {} .backup\n",
        w.files,
        human_bytes(w.stored_size),
        w.segments,
        w.history_files,
        w.partial_files,
        w.backup_files
    ));
    if !w.timelines.is_empty() {
        let rows: Vec<Vec<String>> = w
            .timelines
            .iter()
            .map(|t| {
                let mut gaps: Vec<String> = t
                    .missing
                    .iter()
                    .take(GAPS_SHOWN)
                    .map(ToString::to_string)
                    .collect();
                if t.missing.len() > GAPS_SHOWN {
                    gaps.push(format!("{} more", t.missing.len() - GAPS_SHOWN));
                }
                if t.history_missing {
                    gaps.push(format!("{:08X}.history", t.timeline));
                }
                vec![
                    t.timeline.to_string(),
                    t.first.clone().unwrap_or_else(|| "-".into()),
                    t.last.clone().unwrap_or_else(|| "-".into()),
                    t.segments.to_string(),
                    human_bytes(t.stored_size),
                    t.partial_files.to_string(),
                    if gaps.is_empty() {
                        "none".into()
                    } else {
                        format!("MISSING {}", gaps.join(", "))
                    },
                ]
            })
            .collect();
        out.push_str(&indent(&table(
            &[
                "TLI", "FIRST", "LAST", "SEGMENTS", "STORED", "PARTIAL", "GAPS",
            ],
            &rows,
        )));
    }
    out.push('\n');

    out.push_str("Archiving:\n");
    out.push_str(&throughput(&s.archiving.throughput, now));
    out.push_str(&match &s.archiving.last_refusal {
        Some(r) => format!(
            "  last refusal by wal-push: {} at {} ({}; {}, pid {} on {})\n    {}\n",
            r.wal,
            time(&r.time),
            ago(&r.time, now),
            r.reason.replace('_', " "),
            r.pid,
            r.host,
            r.message
                .as_deref()
                .unwrap_or("(message not kept: encrypted repository)")
        ),
        None => "  last refusal by wal-push: none recorded\n".into(),
    });
    out.push_str(&archiver(&s.archiving.pg_stat_archiver));
    out.push('\n');
    out.push_str(&stream(s.stream.as_ref(), now));

    for n in &s.notes {
        out.push_str(&format!("Note: {n}\n"));
    }
    let t = &s.totals;
    out.push_str(&format!(
        "Total for {}: {} backup(s); {} of backups + {} of WAL = {} stored\n",
        s.name,
        t.backups,
        human_bytes(t.backup_stored_size),
        human_bytes(t.wal_stored_size),
        human_bytes(t.stored_size)
    ));
    out
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

fn running(b: &RunningBackup, now: DateTime<Utc>) -> String {
    let what = match b.state {
        "running" => "Backup in progress",
        _ => "Interrupted backup (its base-backup no longer holds the lock)",
    };
    let mut s = format!("{what}: {}, {}", b.id, b.phase_description);
    // Before the walk of the data directory there is nothing to count.
    if b.files_total > 0 {
        s.push_str(&format!(
            ": {} of {} file(s), {} of {}",
            b.files_done,
            b.files_total,
            human_bytes(b.bytes_done),
            human_bytes(b.bytes_total)
        ));
        if let Some(p) = b.percent_done {
            s.push_str(&format!(" ({p:.0}%)"));
        }
    }
    s.push_str(&format!(
        "; pid {} on {}, started {}, status written {}\n",
        b.pid,
        b.host,
        time(&b.started),
        ago(&b.updated, now)
    ));
    if let Some(w) = &b.waiting_for {
        s.push_str(&format!("  waiting for WAL segment {w}"));
        if let Some(a) = &b.archiver {
            s.push_str(&format!(" (pg_stat_archiver: {a})"));
        }
        s.push('\n');
    }
    s
}

/// The stream section: what receive-wal last said, and whether it is alive.
fn stream(st: Option<&StreamInfo>, now: DateTime<Utc>) -> String {
    let Some(st) = st else {
        return "Stream: none (no receive-wal has run for this server)\n\n".into();
    };
    let s = &st.status;
    let state = if st.running {
        s.state.to_string()
    } else if s.state == ReceiverState::Stopped {
        "stopped".to_string()
    } else {
        format!("NOT RUNNING (last said {})", s.state)
    };
    let mut out = format!(
        "Stream: {state}, {} over slot {}, pid {} on {}, status {}\n",
        if s.synchronous {
            "synchronous"
        } else {
            "asynchronous"
        },
        s.slot,
        s.pid,
        s.host,
        ago(&s.updated, now)
    );
    out.push_str(&format!(
        "  in the repository up to {} (partial {}, last complete segment {})\n",
        s.stored_lsn.as_deref().unwrap_or("-"),
        s.partial.as_deref().unwrap_or("none"),
        s.last_segment.as_deref().unwrap_or("none")
    ));
    if let (Some(b), Some(t)) = (s.lag_bytes, s.lag_seconds) {
        out.push_str(&format!(
            "  behind the server (at {}): {} bytes, {t:.1}s; slot {}\n",
            s.server_lsn.as_deref().unwrap_or("-"),
            b,
            match s.slot_present {
                Some(true) => "present",
                Some(false) => "MISSING",
                None => "not seen",
            }
        ));
    }
    if let Some(e) = &s.last_error {
        let when = s
            .last_error_at
            .as_ref()
            .map(|t| ago(t, now))
            .unwrap_or_default();
        out.push_str(&format!("  last error {when}: {e}\n"));
    }
    out.push('\n');
    out
}

fn window(label: &str, w: &Window) -> String {
    let mut s = format!(
        "  {label}: {} segment(s), {} of WAL ({} stored)",
        w.segments,
        human_bytes(w.wal_bytes),
        human_bytes(w.stored_bytes)
    );
    if w.seconds > 3600 {
        s.push_str(&format!(
            ", {:.1} segment(s) and {} per hour",
            w.segments_per_hour,
            human_bytes(w.wal_bytes_per_hour as u64)
        ));
    }
    s.push('\n');
    s
}

fn throughput(t: &Throughput, now: DateTime<Utc>) -> String {
    if !t.known {
        return format!(
            "  throughput: unknown ({})\n",
            t.note.as_deref().unwrap_or("no stored times")
        );
    }
    let mut s = String::new();
    if let Some(h) = &t.last_hour {
        s.push_str(&window("last hour", h));
    }
    if let Some(d) = &t.last_day {
        s.push_str(&window("last 24 h", d));
    }
    match (&t.newest_segment, &t.newest_stored_at) {
        (Some(n), Some(at)) => s.push_str(&format!(
            "  newest segment: {n}, stored {} ({})\n",
            time(at),
            ago(at, now)
        )),
        _ => s.push_str(&format!(
            "  newest segment: none{}\n",
            t.note
                .as_deref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default()
        )),
    }
    s
}

fn archiver(a: &ArchiverStats) -> String {
    if a.status != "ok" {
        return format!(
            "  pg_stat_archiver: {}\n",
            a.message.as_deref().unwrap_or(a.status)
        );
    }
    let at = |w: &Option<String>, t: &Option<DateTime<Utc>>| match (w, t) {
        (Some(w), Some(t)) => format!("{w} at {}", time(t)),
        (Some(w), None) => w.clone(),
        _ => "none".into(),
    };
    format!(
        "  pg_stat_archiver: {} archived (last {}), {} failed (last {}){}\n",
        a.archived_count.unwrap_or(0),
        at(&a.last_archived_wal, &a.last_archived_time),
        a.failed_count.unwrap_or(0),
        at(&a.last_failed_wal, &a.last_failed_time),
        a.stats_reset
            .map(|t| format!("; counted since {}", time(&t)))
            .unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::status::Phase;

    fn backup(state: &'static str, files_total: u64, now: DateTime<Utc>) -> RunningBackup {
        RunningBackup {
            state,
            id: "20261203T120000Z".into(),
            phase: Phase::WaitingForWal,
            phase_description: Phase::WaitingForWal.to_string(),
            host: "db1".into(),
            pid: 42,
            started: now,
            updated: now - chrono::Duration::seconds(30),
            files_total,
            files_done: files_total,
            bytes_total: 4 << 20,
            bytes_done: 3 << 20,
            bytes_read: 1 << 20,
            percent_done: Some(75.0),
            waiting_for: Some("00000001000000000000000C".into()),
            archiver: Some("3 failures, the last for 00000001000000000000000C".into()),
        }
    }

    #[test]
    fn a_running_backup_shows_its_phase_progress_and_wait() {
        let now = Utc::now();
        let text = running(&backup("running", 965, now), now);
        assert!(
            text.starts_with(
                "Backup in progress: 20261203T120000Z, waiting for WAL: 965 of 965 file(s), \
                 3.0 MiB of 4.0 MiB (75%); pid 42 on db1"
            ),
            "{text}"
        );
        assert!(text.contains("status written 30s ago"), "{text}");
        assert!(
            text.contains(
                "  waiting for WAL segment 00000001000000000000000C (pg_stat_archiver: 3 failures"
            ),
            "{text}"
        );
        // Before the walk nothing is counted; an attempt without its lock is named so.
        let text = running(&backup("interrupted", 0, now), now);
        assert!(
            text.starts_with("Interrupted backup (its base-backup no longer holds the lock): 20261203T120000Z, waiting for WAL; pid"),
            "{text}"
        );
    }
}
