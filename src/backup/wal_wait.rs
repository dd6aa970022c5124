//! The bounded wait until every WAL segment a backup needs is in the repository,
//! cut short when `pg_stat_archiver` shows archiving is broken.

use super::progress::Reporter;
use crate::archive;
use crate::error::{Error, ErrorKind, Result};
use crate::pg;
use crate::repo::{layout, ServerInfo};
use crate::storage::Storage;
use crate::wal::{Segment, WalName};
use chrono::{DateTime, Utc};
use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// The segments from `start` to `stop` (inclusive) on one timeline.
pub fn segments_between(start: &str, stop: &str, segment_size: u64) -> Result<Vec<Segment>> {
    let a = WalName::parse(start)?
        .segment()
        .ok_or_else(|| Error::invalid(format!("{start} is not a segment")))?;
    let b = WalName::parse(stop)?
        .segment()
        .ok_or_else(|| Error::invalid(format!("{stop} is not a segment")))?;
    if a.timeline != b.timeline {
        return Err(Error::new(
            ErrorKind::Postgres,
            format!("the timeline changed during the backup ({start} to {stop}); take it again"),
        ));
    }
    let (na, nb) = (a.number(segment_size), b.number(segment_size));
    if nb < na {
        return Err(Error::invalid(format!(
            "stop WAL {stop} precedes start WAL {start}"
        )));
    }
    Ok((na..=nb)
        .map(|n| Segment::from_number(a.timeline, n, segment_size))
        .collect())
}

/// What `pg_stat_archiver` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ArchiverStatus {
    failed_count: i64,
    last_failed_wal: Option<String>,
    last_failed_time: Option<DateTime<Utc>>,
    last_archived_time: Option<DateTime<Utc>>,
    last_archived_wal: Option<String>,
}

impl ArchiverStatus {
    /// One line for a person: the failures first (they are why a wait lasts), then
    /// what was archived last.
    fn summary(&self) -> String {
        let at = |t: &Option<DateTime<Utc>>| {
            t.map_or_else(
                || "?".to_string(),
                |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            )
        };
        let failed = match &self.last_failed_wal {
            Some(w) => format!(
                "{} failures, the last for {w} at {}; ",
                self.failed_count,
                at(&self.last_failed_time)
            ),
            None => String::new(),
        };
        match &self.last_archived_wal {
            Some(w) => format!(
                "{failed}last archived {w} at {}",
                at(&self.last_archived_time)
            ),
            None => format!("{failed}nothing archived since the statistics were reset"),
        }
    }
}

/// Read `pg_stat_archiver`; `None` (and a debug line) if it cannot be read, since the
/// bounded wait still catches a broken archive_command, only later.
pub(super) fn archiver_status(client: &mut postgres::Client) -> Option<ArchiverStatus> {
    let read = |client: &mut postgres::Client| -> Result<ArchiverStatus> {
        let row = client
            .query_one(
                "SELECT failed_count, last_failed_wal, last_failed_time, last_archived_time, \
                 last_archived_wal FROM pg_stat_archiver",
                &[],
            )
            .map_err(|e| pg::query_error("reading pg_stat_archiver", e))?;
        let what = "pg_stat_archiver";
        let time = |t: Option<std::time::SystemTime>| t.map(DateTime::<Utc>::from);
        Ok(ArchiverStatus {
            failed_count: pg::column(&row, 0, what)?,
            last_failed_wal: pg::column(&row, 1, what)?,
            last_failed_time: time(pg::column(&row, 2, what)?),
            last_archived_time: time(pg::column(&row, 3, what)?),
            last_archived_wal: pg::column(&row, 4, what)?,
        })
    };
    match read(client) {
        Ok(s) => Some(s),
        Err(e) => {
            crate::log_debug!("{e}");
            None
        }
    }
}

/// PostgreSQL's archiver tries a file this many times (one second apart) before it
/// sleeps for up to a minute; so many failures in a row mean the command is broken,
/// not that one attempt hit a passing hiccup.
const ARCHIVER_RETRIES: i64 = 3;

/// Whether the archiver keeps failing on a file that blocks the segments in
/// `missing` (sorted, same timeline): one of them, an older segment of that timeline
/// (the archiver goes in order, so ours wait behind it), or a history file (archived
/// first). Returns the failing file's name.
fn archiver_stuck<'s>(
    before: &ArchiverStatus,
    now: &'s ArchiverStatus,
    missing: &[String],
) -> Option<&'s str> {
    let wal = now.last_failed_wal.as_deref()?;
    let failed_at = now.last_failed_time?;
    if now.failed_count - before.failed_count < ARCHIVER_RETRIES {
        return None;
    }
    // Something was archived after that failure: archiving works (again).
    if now.last_archived_time.is_some_and(|a| a >= failed_at) {
        return None;
    }
    let last = missing.last()?;
    let blocks = if wal.ends_with(".history") {
        true
    } else {
        match (wal.get(..24), wal.get(..8), last.get(..8)) {
            (Some(seg), Some(tli), Some(our_tli)) => tli == our_tli && seg <= last.as_str(),
            _ => false,
        }
    };
    blocks.then_some(wal)
}

/// Wait until every segment from `start` to `stop` is archived, up to `timeout`, but
/// fail within seconds when `pg_stat_archiver` shows the archiver failing again and
/// again on a file these segments wait for (compared with `before`, read just
/// before the backup stopped).
#[allow(clippy::too_many_arguments)]
pub(super) fn wait_for_wal(
    storage: &dyn Storage,
    server: &ServerInfo,
    start: &str,
    stop: &str,
    timeout: Duration,
    client: &mut postgres::Client,
    before: Option<ArchiverStatus>,
    report: &Reporter<'_>,
    from_standby: bool,
) -> Result<()> {
    let needed = segments_between(start, stop, server.wal_segment_size)?;
    let deadline = Instant::now() + timeout;
    let mut announced: Option<String> = None;
    // Short polls first: the stop segment is usually archived within a second.
    let mut pause = Duration::from_millis(50);
    let result = loop {
        let missing = missing_segments(storage, &server.name, &needed)?;
        let Some(first) = missing.first() else {
            break Ok(());
        };
        let now = archiver_status(client);
        let line = format!(
            "waiting for WAL segment {first} to be archived ({} of {} still missing)",
            missing.len(),
            needed.len()
        );
        if announced.as_deref() != Some(first.as_str()) {
            let mut logged = line.clone();
            if from_standby {
                // A standby cannot switch segments; only the primary completes this one.
                logged.push_str(
                    "; a standby cannot switch WAL segments, so it arrives when the primary \
                     fills or switches it (archive_timeout on the primary bounds the wait)",
                );
            }
            crate::log_info!("{logged}");
            announced = Some(first.clone());
        }
        report.waiting(first, &line, now.as_ref().map(ArchiverStatus::summary));
        if let (Some(before), Some(now)) = (&before, &now) {
            if let Some(wal) = archiver_stuck(before, now, &missing) {
                let at = now.last_failed_time.map_or_else(
                    || "?".to_string(),
                    |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                );
                break Err(Error::new(
                    ErrorKind::Io,
                    format!(
                        "WAL segment {first} that this backup needs cannot be archived: \
                         pg_stat_archiver reports {} failures since the backup stopped \
                         (failed_count {}), the last for {wal} at {at}, and nothing archived \
                         since; fix archive_command (see the PostgreSQL server log for its \
                         error) and take the backup again",
                        now.failed_count - before.failed_count,
                        now.failed_count
                    ),
                ));
            }
        }
        if Instant::now() >= deadline {
            break Err(Error::new(
                ErrorKind::Transient,
                format!(
                    "{} of the {} WAL segments this backup needs ({start} to {stop}) did not \
                     reach {} within {}s, first {first}; check archive_command and \
                     pg_stat_archiver{} (backup_wal_timeout raises the bound)",
                    missing.len(),
                    needed.len(),
                    storage.location(),
                    timeout.as_secs(),
                    if from_standby {
                        ", and on the primary archive_timeout or SELECT pg_switch_wal()"
                    } else {
                        ""
                    },
                ),
            ));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_secs(1));
    };
    result
}

/// Names of the segments of `needed` not in the archive (one listing per directory).
pub fn missing_segments(
    storage: &dyn Storage,
    server: &str,
    needed: &[Segment],
) -> Result<Vec<String>> {
    let mut by_dir: HashMap<String, BTreeSet<String>> = HashMap::new();
    let mut missing = Vec::new();
    for seg in needed {
        let name = WalName::parse(&seg.file_name())?;
        let dir = layout::wal_dir(server, &name);
        if !by_dir.contains_key(&dir) {
            let present = storage
                .list(&dir)?
                .into_iter()
                .filter_map(|e| archive::parse_stored_name(&e.name))
                .map(|(n, _, _)| n.to_string())
                .collect();
            by_dir.insert(dir.clone(), present);
        }
        if !by_dir.get(&dir).is_some_and(|p| p.contains(name.as_str())) {
            missing.push(name.to_string());
        }
    }
    Ok(missing)
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_repeated_failures_on_a_file_we_wait_for_stop_the_wait() {
        let t = |s: i64| Some(Utc::now() - chrono::Duration::seconds(s));
        let before = ArchiverStatus {
            failed_count: 5,
            last_failed_wal: Some("000000010000000000000001".into()),
            last_failed_time: t(3600),
            last_archived_time: t(60),
            last_archived_wal: None,
        };
        let missing = vec![
            "000000010000000000000004".to_string(),
            "000000010000000000000005".to_string(),
        ];
        let failing = |count: i64, wal: &str, archived: Option<DateTime<Utc>>| ArchiverStatus {
            failed_count: count,
            last_failed_wal: Some(wal.into()),
            last_failed_time: t(1),
            last_archived_time: archived,
            last_archived_wal: None,
        };
        let ours = "000000010000000000000004";
        // Three failures in a row on a segment we need: stuck.
        assert_eq!(
            archiver_stuck(&before, &failing(8, ours, t(60)), &missing),
            Some(ours)
        );
        // An older segment blocks ours too (the archiver goes in order); so does a
        // history file.
        let older = "000000010000000000000003";
        assert!(archiver_stuck(&before, &failing(8, older, t(60)), &missing).is_some());
        assert!(archiver_stuck(&before, &failing(8, "00000002.history", None), &missing).is_some());
        // A single (or double) failure is a passing hiccup.
        assert_eq!(
            archiver_stuck(&before, &failing(6, ours, t(60)), &missing),
            None
        );
        assert_eq!(
            archiver_stuck(&before, &failing(7, ours, t(60)), &missing),
            None
        );
        // Archived since the last failure: archiving works again.
        assert_eq!(
            archiver_stuck(&before, &failing(9, ours, t(0)), &missing),
            None
        );
        // A later segment or another timeline is not what we wait for.
        let later = "000000010000000000000009";
        assert_eq!(
            archiver_stuck(&before, &failing(9, later, t(60)), &missing),
            None
        );
        let other = "000000020000000000000004";
        assert_eq!(
            archiver_stuck(&before, &failing(9, other, t(60)), &missing),
            None
        );
        assert_eq!(archiver_stuck(&before, &before, &missing), None);
    }

    #[test]
    fn segment_ranges() {
        let s = segments_between(
            "0000000100000000000000FE",
            "000000010000000100000001",
            1 << 24,
        )
        .unwrap();
        let names: Vec<String> = s.iter().map(|s| s.file_name()).collect();
        assert_eq!(
            names,
            [
                "0000000100000000000000FE",
                "0000000100000000000000FF",
                "000000010000000100000000",
                "000000010000000100000001"
            ]
        );
        assert!(segments_between(
            "000000010000000000000002",
            "000000020000000000000003",
            1 << 24
        )
        .is_err());
    }
}
