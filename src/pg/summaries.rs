//! WAL summaries of PostgreSQL 17+ (`summarize_wal = on`): which blocks of which
//! relation the WAL between two LSNs touched, so that a backup can reuse what they
//! prove untouched without reading it.
//!
//! The rules are those of PostgreSQL's own incremental backup: summaries count only
//! when they cover the whole LSN range on the timeline without a gap, after the
//! summarizer has reached the end of the range. A relation's limit block means it was
//! created, dropped or truncated to that length within the range, so blocks from the
//! limit on may differ even though no summary lists them (a block modified and then
//! truncated away is not listed). An entry with relfilenode 0 marks a database created
//! (CREATE DATABASE ... STRATEGY FILE_COPY, ALTER DATABASE ... SET TABLESPACE) or
//! dropped within the range: its files were copied without block references, so none
//! of them is proven untouched.

use super::client::{column, query_error};
use crate::error::{Error, ErrorKind, Result};
use postgres::types::PgLsn;
use postgres::Client;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// Tablespace OID of `base/` (pg_default).
const DEFAULT_TABLESPACE: u32 = 1663;
/// Tablespace OID of `global/` (pg_global).
const GLOBAL_TABLESPACE: u32 = 1664;

/// Main-fork relation identity as in `pg_wal_summary_contents`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RelKey {
    /// Tablespace OID (1663 for `base/`, 1664 for `global/`).
    pub tablespace: u32,
    /// Database OID (0 for shared relations in `global/`).
    pub database: u32,
    /// Relfilenode: the file's name, which is not the relation's OID.
    pub relfilenode: u32,
}

/// What the WAL in a range did to one relation's main fork.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelChanges {
    /// Modified blocks, numbered across the relation (not per segment file).
    pub modified: BTreeSet<u32>,
    /// The smallest limit block: the relation was created or dropped (0) or truncated
    /// to this many blocks within the range; `None` when neither happened.
    pub limit: Option<u32>,
}

impl RelChanges {
    /// Whether blocks `first..end` are provably the same at both ends of the range:
    /// none modified, and no limit block at or below `end`.
    fn range_untouched(&self, first: u64, end: u64) -> bool {
        // A limit exactly at `end` leaves the range whole, but one rule with no
        // boundary case is worth the rare extra read.
        if self.limit.is_some_and(|l| u64::from(l) <= end) {
            return false;
        }
        let Ok(first) = u32::try_from(first) else {
            return true;
        };
        self.modified
            .range(first..)
            .next()
            .is_none_or(|&b| u64::from(b) >= end)
    }
}

/// Block-level changes over an LSN range, from the WAL summaries that cover it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockChanges {
    relations: BTreeMap<RelKey, RelChanges>,
    /// (tablespace, database) pairs created or dropped within the range.
    databases: BTreeSet<(u32, u32)>,
}

impl BlockChanges {
    /// What the range did to `key`'s main fork; `None` when no WAL record named it
    /// (see [`BlockChanges::database_changed`] too).
    pub fn relation(&self, key: &RelKey) -> Option<&RelChanges> {
        self.relations.get(key)
    }

    /// Whether database `database` in `tablespace` was created or dropped within the
    /// range, so that none of its files is proven untouched.
    pub fn database_changed(&self, tablespace: u32, database: u32) -> bool {
        self.databases.contains(&(tablespace, database))
    }

    /// Whether block `block` of `key`'s main fork is provably unchanged over the range.
    pub fn block_untouched(&self, key: &RelKey, block: u32) -> bool {
        self.range_untouched(key, u64::from(block), u64::from(block) + 1)
    }

    /// Whether a main-fork segment file (segment number `segno`, `blocks_per_segment`
    /// from pg_control) can be reused unread: no modified block in its block range
    /// and no limit block at or below its end, in a database not created or dropped
    /// within the range.
    pub fn segment_untouched(&self, key: &RelKey, segno: u32, blocks_per_segment: u32) -> bool {
        let first = u64::from(segno) * u64::from(blocks_per_segment);
        self.range_untouched(key, first, first + u64::from(blocks_per_segment))
    }

    fn range_untouched(&self, key: &RelKey, first: u64, end: u64) -> bool {
        !self.database_changed(key.tablespace, key.database)
            && self
                .relations
                .get(key)
                .is_none_or(|r| r.range_untouched(first, end))
    }
}

/// WAL summary changes over `[from, to)` on `timeline`, or `None` (with the reason
/// logged at info) when summarize_wal is off, the server is older than 17, the
/// summaries do not cover the range contiguously on that timeline, or the summarizer
/// has not reached `to` within `wait`. Errors are failed queries, unreadable LSNs and
/// a range that ends before it starts.
pub fn summarized_changes(
    client: &mut Client,
    timeline: u32,
    from: &str,
    to: &str,
    wait: Duration,
) -> Result<Option<BlockChanges>> {
    let (start, end) = (lsn(from)?, lsn(to)?);
    let unused = |why: String| {
        crate::log_info!("WAL summaries not used for {from}..{to} on timeline {timeline}: {why}");
        Ok(None)
    };
    let what = "the WAL summarizer settings";
    let row = client
        .query_one(
            "SELECT current_setting('server_version_num')::int4, \
             current_setting('summarize_wal', true)",
            &[],
        )
        .map_err(|e| query_error(&format!("reading {what}"), e))?;
    let version: i32 = column(&row, 0, what)?;
    let summarize: Option<String> = column(&row, 1, what)?;
    if version < 170000 {
        return unused(format!(
            "the server is PostgreSQL {}, summaries need 17 or later",
            version / 10000
        ));
    }
    if summarize.as_deref() != Some("on") {
        return unused("summarize_wal is off".into());
    }
    if end < start {
        return Err(Error::invalid(format!(
            "WAL summary range {from}..{to} ends before it starts"
        )));
    }
    if let Some(reached) = wait_for_summarizer(client, timeline, end, wait)? {
        return unused(format!(
            "the WAL summarizer had reached only {reached} after {wait:?}"
        ));
    }
    let summaries = covering_summaries(client, timeline, start, end)?;
    if let Some(gap) = first_gap(&summaries, start, end) {
        return unused(format!("no summary covers {gap}"));
    }
    read_contents(client, timeline, &summaries).map(Some)
}

/// `blocks_per_segment` from `pg_control_init()`: blocks in one relation segment file.
pub fn blocks_per_segment(client: &mut Client) -> Result<u32> {
    let what = "blocks_per_segment from pg_control_init()";
    let row = client
        .query_one("SELECT blocks_per_segment FROM pg_control_init()", &[])
        .map_err(|e| query_error(&format!("reading {what}"), e))?;
    let n: i32 = column(&row, 0, what)?;
    u32::try_from(n).ok().filter(|&n| n > 0).ok_or_else(|| {
        Error::new(
            ErrorKind::Postgres,
            format!("the server reports an impossible blocks_per_segment {n}"),
        )
    })
}

/// Map a manifest path to (RelKey, segment number) for main-fork relation files:
/// `data/base/<db>/<rfn>[.<seg>]` (tablespace 1663), `data/global/<rfn>[.<seg>]`
/// (1664, database 0), `tablespaces/<ts>/PG_*/<db>/<rfn>[.<seg>]`. `None` for other
/// forks (`_fsm`, `_vm`, `_init`), temporary relations (`t<n>_...`) and anything else.
pub fn relation_file(path: &str) -> Option<(RelKey, u32)> {
    let parts: Vec<&str> = path.split('/').collect();
    let (tablespace, database, name) = match parts.as_slice() {
        ["data", "base", db, name] => (DEFAULT_TABLESPACE, oid(db)?, *name),
        ["data", "global", name] => (GLOBAL_TABLESPACE, 0, *name),
        ["tablespaces", ts, version, db, name] if version.starts_with("PG_") => {
            (oid(ts)?, oid(db)?, *name)
        }
        _ => return None,
    };
    let (relfilenode, segno) = match name.split_once('.') {
        Some((rfn, seg)) => (oid(rfn)?, oid(seg)?),
        None => (oid(name)?, 0),
    };
    let key = RelKey {
        tablespace,
        database,
        relfilenode,
    };
    Some((key, segno))
}

/// A positive number as PostgreSQL writes it in file names: digits, no leading zero.
fn oid(s: &str) -> Option<u32> {
    let digits = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && !s.starts_with('0');
    digits.then(|| s.parse().ok()).flatten()
}

fn lsn(text: &str) -> Result<PgLsn> {
    text.trim()
        .parse()
        .map_err(|_| Error::invalid(format!("{text:?} is not an LSN (expected X/X in hex)")))
}

/// Poll `pg_get_wal_summarizer_state()` until the summarizer has written summaries up
/// to `end` on `timeline` (or moved on to a later timeline). `None` once it has;
/// otherwise where it stood when `wait` ran out.
fn wait_for_summarizer(
    client: &mut Client,
    timeline: u32,
    end: PgLsn,
    wait: Duration,
) -> Result<Option<String>> {
    let what = "pg_get_wal_summarizer_state()";
    let started = Instant::now();
    let mut pause = Duration::from_millis(50);
    loop {
        let row = client
            .query_one(
                "SELECT summarized_tli, summarized_lsn FROM pg_get_wal_summarizer_state()",
                &[],
            )
            .map_err(|e| query_error(&format!("reading {what}"), e))?;
        let tli: i64 = column(&row, 0, what)?;
        let reached: PgLsn = column(&row, 1, what)?;
        if tli > i64::from(timeline) || (tli == i64::from(timeline) && reached >= end) {
            return Ok(None);
        }
        let left = wait.saturating_sub(started.elapsed());
        if left.is_zero() {
            return Ok(Some(format!("{reached} on timeline {tli}")));
        }
        std::thread::sleep(pause.min(left));
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

/// Summaries on `timeline` that overlap `[start, end)`, as (start, end) LSNs sorted.
fn covering_summaries(
    client: &mut Client,
    timeline: u32,
    start: PgLsn,
    end: PgLsn,
) -> Result<Vec<(PgLsn, PgLsn)>> {
    let what = "pg_available_wal_summaries()";
    let rows = client
        .query(
            "SELECT start_lsn, end_lsn FROM pg_available_wal_summaries() \
             WHERE tli = $1 AND end_lsn > $2 AND start_lsn < $3 ORDER BY start_lsn, end_lsn",
            &[&i64::from(timeline), &start, &end],
        )
        .map_err(|e| query_error(&format!("reading {what}"), e))?;
    rows.iter()
        .map(|r| Ok((column(r, 0, what)?, column(r, 1, what)?)))
        .collect()
}

/// The first LSN of `[start, end)` that no summary covers, or `None` when `summaries`
/// (sorted by start) cover all of it.
fn first_gap(summaries: &[(PgLsn, PgLsn)], start: PgLsn, end: PgLsn) -> Option<PgLsn> {
    let mut covered = start;
    for &(s, e) in summaries {
        if covered >= end {
            break;
        }
        if s > covered {
            return Some(covered);
        }
        covered = covered.max(e);
    }
    (covered < end).then_some(covered)
}

/// Main-fork block references of exactly these summaries, merged per relation.
fn read_contents(
    client: &mut Client,
    timeline: u32,
    summaries: &[(PgLsn, PgLsn)],
) -> Result<BlockChanges> {
    let what = "pg_wal_summary_contents()";
    let (starts, ends): (Vec<PgLsn>, Vec<PgLsn>) = summaries.iter().copied().unzip();
    // The summaries checked for coverage, by name: any one removed since is an error
    // from the server, never a silently smaller set of changes.
    let rows = client
        .query(
            "SELECT c.reltablespace, c.reldatabase, c.relfilenode, \
                    array_agg(DISTINCT c.relblocknumber) FILTER (WHERE NOT c.is_limit_block), \
                    min(c.relblocknumber) FILTER (WHERE c.is_limit_block) \
             FROM unnest($2::pg_lsn[], $3::pg_lsn[]) AS s(start_lsn, end_lsn) \
             CROSS JOIN LATERAL pg_wal_summary_contents($1, s.start_lsn, s.end_lsn) AS c \
             WHERE c.relforknumber = 0 \
             GROUP BY 1, 2, 3",
            &[&i64::from(timeline), &starts, &ends],
        )
        .map_err(|e| query_error(&format!("reading {what}"), e))?;
    let block = |n: i64| {
        u32::try_from(n).map_err(|_| {
            Error::new(
                ErrorKind::Postgres,
                format!("{what} reports an impossible block number {n}"),
            )
        })
    };
    let mut changes = BlockChanges::default();
    for row in &rows {
        let key = RelKey {
            tablespace: column(row, 0, what)?,
            database: column(row, 1, what)?,
            relfilenode: column(row, 2, what)?,
        };
        let modified: Option<Vec<i64>> = column(row, 3, what)?;
        let limit: Option<i64> = column(row, 4, what)?;
        if key.relfilenode == 0 {
            changes.databases.insert((key.tablespace, key.database));
            continue;
        }
        let rel = RelChanges {
            modified: modified
                .unwrap_or_default()
                .into_iter()
                .map(block)
                .collect::<Result<_>>()?,
            limit: limit.map(block).transpose()?,
        };
        changes.relations.insert(key, rel);
    }
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(tablespace: u32, database: u32, relfilenode: u32) -> RelKey {
        RelKey {
            tablespace,
            database,
            relfilenode,
        }
    }

    #[test]
    fn relation_files_are_recognised() {
        let cases = [
            ("data/base/5/16384", Some((key(1663, 5, 16384), 0))),
            ("data/base/5/16384.3", Some((key(1663, 5, 16384), 3))),
            ("data/global/1262", Some((key(1664, 0, 1262), 0))),
            ("data/global/1262.1", Some((key(1664, 0, 1262), 1))),
            (
                "tablespaces/16400/PG_17_202406281/5/300.2",
                Some((key(16400, 5, 300), 2)),
            ),
            (
                "tablespaces/16400/PG_17_202406281/5/300",
                Some((key(16400, 5, 300), 0)),
            ),
        ];
        for (path, want) in cases {
            assert_eq!(relation_file(path), want, "{path}");
        }
    }

    #[test]
    fn other_files_are_not_relation_files() {
        for path in [
            "data/base/5/16384_fsm",
            "data/base/5/16384_vm",
            "data/base/5/16384_init",
            "data/base/5/16384_vm.1",
            "data/base/5/t3_16384",
            "data/base/5/t3_16384.1",
            "data/base/5/PG_VERSION",
            "data/base/5/pg_filenode.map",
            "data/base/5/pg_internal.init",
            "data/global/pg_control",
            "data/global/pg_filenode.map",
            "data/base/5/016384",
            "data/base/5/16384.0",
            "data/base/5/16384.",
            "data/base/5/16384.1.2",
            "data/base/5/+16384",
            "data/base/5/99999999999",
            "data/base/x/16384",
            "data/base/5/sub/16384",
            "data/base/16384",
            "data/pg_xact/0000",
            "data/pg_multixact/offsets/0000",
            "data/16384",
            "tablespaces/16400/PG_17_202406281/5/300_fsm",
            "tablespaces/16400/other/5/300",
            "tablespaces/16400/PG_17_202406281/300",
            "tablespaces/x/PG_17_202406281/5/300",
            "base/5/16384",
            "",
        ] {
            assert_eq!(relation_file(path), None, "{path}");
        }
    }

    fn changes(rels: &[(RelKey, &[u32], Option<u32>)], dbs: &[(u32, u32)]) -> BlockChanges {
        BlockChanges {
            relations: rels
                .iter()
                .map(|(k, m, l)| {
                    let c = RelChanges {
                        modified: m.iter().copied().collect(),
                        limit: *l,
                    };
                    (*k, c)
                })
                .collect(),
            databases: dbs.iter().copied().collect(),
        }
    }

    #[test]
    fn segments_are_untouched_only_without_modified_or_limit_blocks() {
        let (a, b, c, d) = (
            key(1663, 5, 1),
            key(1663, 5, 2),
            key(1663, 5, 3),
            key(1663, 5, 4),
        );
        let ch = changes(
            &[
                (a, &[3, 250], None),
                (b, &[], Some(0)),
                (c, &[], Some(300)),
                (d, &[], Some(200)),
            ],
            &[],
        );
        // a: blocks 3 and 250 with 100 blocks per segment touch segments 0 and 2.
        assert!(!ch.segment_untouched(&a, 0, 100));
        assert!(ch.segment_untouched(&a, 1, 100));
        assert!(!ch.segment_untouched(&a, 2, 100));
        assert!(ch.segment_untouched(&a, 3, 100));
        assert!(!ch.block_untouched(&a, 3));
        assert!(ch.block_untouched(&a, 4));
        // b: created or dropped in the range: nothing of it is untouched.
        assert!(!ch.segment_untouched(&b, 0, 100));
        assert!(!ch.segment_untouched(&b, 7, 100));
        assert!(!ch.block_untouched(&b, 0));
        // c: truncated to 300 blocks: segments ending before it are untouched.
        assert!(ch.segment_untouched(&c, 0, 100));
        assert!(ch.segment_untouched(&c, 1, 100));
        assert!(!ch.segment_untouched(&c, 2, 100));
        assert!(!ch.segment_untouched(&c, 3, 100));
        assert!(ch.block_untouched(&c, 298));
        assert!(!ch.block_untouched(&c, 299));
        assert!(!ch.block_untouched(&c, 300));
        // d: a limit at a segment's end counts as touching it (one rule, no edge).
        assert!(!ch.segment_untouched(&d, 1, 100));
        assert!(ch.segment_untouched(&d, 0, 100));
        // Not named by any summary: untouched, up to the largest segment numbers.
        let e = key(1663, 5, 9);
        assert!(ch.segment_untouched(&e, 0, 131072));
        assert!(ch.segment_untouched(&e, u32::MAX, u32::MAX));
        assert!(ch.relation(&e).is_none());
        assert_eq!(ch.relation(&c).and_then(|r| r.limit), Some(300));
    }

    #[test]
    fn a_database_created_in_the_range_touches_all_its_files() {
        let ch = changes(&[], &[(1663, 7)]);
        assert!(ch.database_changed(1663, 7));
        assert!(!ch.segment_untouched(&key(1663, 7, 16384), 0, 131072));
        assert!(!ch.block_untouched(&key(1663, 7, 16384), 5));
        // The same database OID in another tablespace, and other databases, are not.
        assert!(ch.segment_untouched(&key(16400, 7, 16384), 0, 131072));
        assert!(ch.segment_untouched(&key(1663, 5, 16384), 0, 131072));
    }

    #[test]
    fn coverage_needs_contiguous_summaries_over_the_whole_range() {
        let l = PgLsn::from;
        let s = [(l(10), l(20)), (l(20), l(30)), (l(35), l(50))];
        assert_eq!(first_gap(&s, l(10), l(30)), None);
        assert_eq!(first_gap(&s, l(12), l(25)), None);
        assert_eq!(first_gap(&s, l(5), l(25)), Some(l(5)));
        assert_eq!(first_gap(&s, l(15), l(40)), Some(l(30)));
        assert_eq!(first_gap(&s, l(36), l(50)), None);
        assert_eq!(first_gap(&s, l(36), l(51)), Some(l(50)));
        assert_eq!(first_gap(&[], l(10), l(10)), None);
        assert_eq!(first_gap(&[], l(10), l(11)), Some(l(10)));
        // Overlapping summaries still count as one stretch.
        let o = [(l(10), l(30)), (l(15), l(20)), (l(25), l(40))];
        assert_eq!(first_gap(&o, l(10), l(40)), None);
    }

    #[test]
    fn lsns_are_parsed_with_context() {
        assert_eq!(lsn("0/16B3748").map(u64::from).ok(), Some(0x16B3748));
        assert_eq!(lsn("1/0").map(u64::from).ok(), Some(1 << 32));
        let e = lsn("0x16").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("\"0x16\" is not an LSN"), "{e}");
    }
}
