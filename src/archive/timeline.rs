//! The archive as a whole: an index of every stored WAL file, timeline history files,
//! and the continuity of the WAL a recovery would replay.
//!
//! Recovery from a backup on timeline `b` to the newest point replays, segment by
//! segment, the file of the newest timeline on the chain from `b` to the latest
//! timeline whose start is at or before that segment (PostgreSQL's
//! `XLogFileReadAnyTLI`), including the segment where that timeline begins.
//! [`needed_segments`] encodes that rule; the index answers presence.

use crate::archive::stored::{parse_stored_name, StoredWal};
use crate::codec;
use crate::error::{Error, Result};
use crate::repo::layout;
use crate::storage::{self, Storage, TEMP_PREFIX};
use crate::wal::{self, Segment, WalKind, WalName};
use serde::Serialize;
use std::collections::BTreeMap;

/// Every stored WAL file of a server, by kind.
#[derive(Debug, Clone, Default)]
pub struct ArchiveIndex {
    /// Segments: timeline -> absolute segment number -> stored copy.
    pub segments: BTreeMap<u32, BTreeMap<u64, StoredWal>>,
    /// Timeline history files by timeline.
    pub histories: BTreeMap<u32, StoredWal>,
    /// `.partial` and `.backup` files.
    pub others: Vec<StoredWal>,
    /// The segment size the numbers were computed with.
    pub segment_size: u64,
}

impl ArchiveIndex {
    /// List the whole archive of `server` (one listing per `wal/` subdirectory).
    pub fn scan(storage: &dyn Storage, server: &str, segment_size: u64) -> Result<ArchiveIndex> {
        let mut idx = ArchiveIndex {
            segment_size,
            ..Default::default()
        };
        let root = layout::wal_root(server);
        for e in storage.list(&root)? {
            if e.name.starts_with(TEMP_PREFIX) {
                continue;
            }
            if e.is_dir {
                let dir = storage::join(&root, &e.name);
                for f in storage.list(&dir)? {
                    if !f.is_dir && !f.name.starts_with(TEMP_PREFIX) {
                        idx.add(&dir, &f.name, f.size);
                    }
                }
            } else {
                idx.add(&root, &e.name, e.size);
            }
        }
        Ok(idx)
    }

    fn add(&mut self, dir: &str, file: &str, stored_size: u64) {
        // Files that do not parse are not ours (or damaged names): ignore them here;
        // nothing in pgcellar writes such names.
        let Some((name, sha256, compression)) = parse_stored_name(file) else {
            return;
        };
        let stored = StoredWal {
            name: name.clone(),
            sha256,
            compression,
            path: storage::join(dir, file),
            stored_size,
        };
        match name.kind() {
            WalKind::Segment => {
                if let Some(seg) = name.segment() {
                    self.segments
                        .entry(seg.timeline)
                        .or_default()
                        .entry(seg.number(self.segment_size))
                        .or_insert(stored);
                }
            }
            WalKind::History => {
                self.histories.entry(name.timeline()).or_insert(stored);
            }
            WalKind::Partial | WalKind::Backup => self.others.push(stored),
        }
    }

    /// Whether segment `segno` of `timeline` is archived.
    pub fn has(&self, timeline: u32, segno: u64) -> bool {
        self.segments
            .get(&timeline)
            .is_some_and(|m| m.contains_key(&segno))
    }

    /// Every timeline that has segments or a history file.
    pub fn timelines(&self) -> Vec<u32> {
        let mut t: Vec<u32> = self
            .segments
            .keys()
            .chain(self.histories.keys())
            .copied()
            .collect();
        t.sort_unstable();
        t.dedup();
        t
    }

    /// Number of stored files of every kind.
    pub fn file_count(&self) -> usize {
        self.segments.values().map(BTreeMap::len).sum::<usize>()
            + self.histories.len()
            + self.others.len()
    }

    /// The newest segment on any timeline (highest timeline, then number).
    pub fn newest_segment(&self) -> Option<(u32, u64)> {
        self.segments
            .iter()
            .filter_map(|(t, m)| m.keys().next_back().map(|n| (*t, *n)))
            .max()
    }
}

/// One line of a timeline history file: `parent` ended at `switch_lsn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryEntry {
    /// The ancestor timeline.
    pub timeline: u32,
    /// Where it ended (the next timeline starts here).
    pub switch_lsn: u64,
}

/// Parse the text of a `TTTTTTTT.history` file (PostgreSQL's format: one
/// `parentTLI<TAB>switchpoint<TAB>reason` line per ancestor, `#` comments).
pub fn parse_history(text: &str) -> Result<Vec<HistoryEntry>> {
    let mut out: Vec<HistoryEntry> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.split_whitespace();
        let bad = || {
            Error::corrupt(format!(
                "history file line {}: {line:?} is not valid",
                i + 1
            ))
        };
        let tli: u32 = parts.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
        let lsn = wal::parse_lsn(parts.next().ok_or_else(bad)?).map_err(|_| bad())?;
        if out
            .last()
            .is_some_and(|p| p.timeline >= tli || p.switch_lsn > lsn)
        {
            return Err(bad());
        }
        out.push(HistoryEntry {
            timeline: tli,
            switch_lsn: lsn,
        });
    }
    Ok(out)
}

/// One timeline of a recovery path: segments from `begin` (inclusive) on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ChainLink {
    /// Timeline.
    pub timeline: u32,
    /// First segment number that belongs to it (0 for the oldest).
    pub begin: u64,
    /// First segment number that belongs to the next timeline, if any.
    pub end: Option<u64>,
}

/// The path from the oldest ancestor to `target`, built from `target`'s history.
pub fn chain_from_history(
    target: u32,
    history: &[HistoryEntry],
    segment_size: u64,
) -> Vec<ChainLink> {
    let mut links = Vec::new();
    let mut begin = 0;
    for h in history {
        let end = h.switch_lsn / segment_size;
        links.push(ChainLink {
            timeline: h.timeline,
            begin,
            end: Some(end),
        });
        begin = end;
    }
    links.push(ChainLink {
        timeline: target,
        begin,
        end: None,
    });
    links
}

/// Read and parse the history file of `timeline` (timeline 1 has none).
pub fn read_history(
    storage: &dyn Storage,
    index: &ArchiveIndex,
    timeline: u32,
) -> Result<Option<Vec<HistoryEntry>>> {
    if timeline == 1 {
        return Ok(Some(Vec::new()));
    }
    let Some(stored) = index.histories.get(&timeline) else {
        return Ok(None);
    };
    let mut input = storage.open_read(&stored.path)?;
    let mut bytes = Vec::new();
    let stats = codec::decode(
        &storage.content_hash(),
        &mut input,
        &mut bytes,
        stored.compression,
    )
    .map_err(|e| {
        Error::corrupt(format!(
            "{} in {} cannot be decompressed: {e}",
            stored.path,
            storage.location()
        ))
    })?;
    if stats.sha256 != stored.sha256 {
        return Err(Error::corrupt(format!(
            "{} in {} does not match its checksum",
            stored.path,
            storage.location()
        )));
    }
    let text = String::from_utf8_lossy(&bytes);
    parse_history(&text)
        .map(Some)
        .map_err(|e| e.context(&stored.path))
}

/// The recovery path a backup on `from_timeline` follows to the newest timeline that
/// descends from it (what `recovery_target_timeline = latest` picks).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Path {
    /// Timelines in order, oldest first, starting with the backup's.
    pub links: Vec<ChainLink>,
    /// History files that should exist but do not (their timelines are skipped).
    pub missing_history: Vec<String>,
}

/// Find the newest timeline whose history includes `from_timeline` at segment
/// `from_segno` (a timeline that branched off before that point is another history,
/// which recovery from there cannot follow) and return the path to it, trimmed to
/// start at `from_timeline`.
pub fn path_from(
    storage: &dyn Storage,
    index: &ArchiveIndex,
    from_timeline: u32,
    from_segno: u64,
) -> Result<Path> {
    let mut missing_history = Vec::new();
    let mut best: Option<Vec<ChainLink>> = None;
    for t in index.timelines().into_iter().rev() {
        if t < from_timeline {
            break;
        }
        let history = match read_history(storage, index, t)? {
            Some(h) => h,
            None => {
                missing_history.push(format!("{t:08X}.history"));
                continue;
            }
        };
        let chain = chain_from_history(t, &history, index.segment_size);
        let descends = |l: &ChainLink| {
            l.timeline == from_timeline && l.end.is_none_or(|end| end >= from_segno)
        };
        if let Some(pos) = chain.iter().position(descends) {
            best = Some(chain[pos..].to_vec());
            break;
        }
    }
    let links = best.unwrap_or_else(|| {
        vec![ChainLink {
            timeline: from_timeline,
            begin: 0,
            end: None,
        }]
    });
    Ok(Path {
        links,
        missing_history,
    })
}

/// For each segment number in `[from, to]`, the timelines whose copy would serve
/// (preferred first), following `links`.
pub fn needed_segments(links: &[ChainLink], from: u64, to: u64) -> Vec<(u64, Vec<u32>)> {
    let mut out = Vec::new();
    for n in from..=to {
        // The newest link that has begun by segment n.
        let Some(pos) = links.iter().rposition(|l| l.begin <= n) else {
            continue;
        };
        // Even in the segment where a timeline begins, recovery reads the new
        // timeline's copy (it holds the parent's WAL up to the switch point and the
        // new timeline's after it); the parent's copy cannot replace it.
        out.push((n, vec![links[pos].timeline]));
    }
    out
}

/// The newest segment number reachable along `links` (ignoring segments a timeline
/// kept writing after its child branched off: they are another history).
pub fn newest_on_path(index: &ArchiveIndex, links: &[ChainLink]) -> Option<u64> {
    links
        .iter()
        .filter_map(|l| {
            let m = index.segments.get(&l.timeline)?;
            let upper = l.end.unwrap_or(u64::MAX);
            m.range(l.begin..upper).next_back().map(|(n, _)| *n)
        })
        .max()
}

/// A run of missing segments, by file name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MissingRange {
    /// First missing file.
    pub first: String,
    /// Last missing file.
    pub last: String,
    /// How many.
    pub count: u64,
}

impl std::fmt::Display for MissingRange {
    /// `NAME` for one file, `FIRST..LAST (COUNT)` for a run.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.count == 1 {
            f.write_str(&self.first)
        } else {
            write!(f, "{}..{} ({})", self.first, self.last, self.count)
        }
    }
}

/// What a WAL continuity check found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Continuity {
    /// First segment checked (file name).
    pub first: String,
    /// Last segment checked (file name).
    pub last: String,
    /// Segments checked.
    pub segments: u64,
    /// Timelines followed, oldest first.
    pub timelines: Vec<u32>,
    /// Gaps.
    pub missing: Vec<MissingRange>,
    /// History files that a timeline of the archive lacks.
    pub missing_history: Vec<String>,
}

impl Continuity {
    /// Whether nothing is missing.
    pub fn complete(&self) -> bool {
        self.missing.is_empty() && self.missing_history.is_empty()
    }
}

/// Check that every segment from `(timeline, from)` up to `to` (default: the newest
/// reachable segment, but at least `min_to`) is archived along the recovery path.
pub fn continuity(
    storage: &dyn Storage,
    index: &ArchiveIndex,
    timeline: u32,
    from: u64,
    min_to: u64,
) -> Result<Continuity> {
    let path = path_from(storage, index, timeline, from)?;
    let to = newest_on_path(index, &path.links)
        .unwrap_or(min_to)
        .max(min_to);
    let size = index.segment_size;
    let name = |n: u64, t: u32| Segment::from_number(t, n, size).file_name();
    let mut missing: Vec<MissingRange> = Vec::new();
    let mut last_missing: Option<u64> = None;
    let needed = needed_segments(&path.links, from, to);
    for (n, tls) in &needed {
        if tls.iter().any(|t| index.has(*t, *n)) {
            continue;
        }
        let fname = name(*n, tls[0]);
        match (last_missing, missing.last_mut()) {
            (Some(prev), Some(range)) if prev + 1 == *n => {
                range.last = fname;
                range.count += 1;
            }
            _ => missing.push(MissingRange {
                first: fname.clone(),
                last: fname,
                count: 1,
            }),
        }
        last_missing = Some(*n);
    }
    let first_tl = |n: u64| {
        needed
            .iter()
            .find(|(m, _)| *m == n)
            .map_or(timeline, |(_, t)| t[0])
    };
    Ok(Continuity {
        first: name(from, first_tl(from)),
        last: name(to, first_tl(to)),
        segments: needed.len() as u64,
        timelines: path.links.iter().map(|l| l.timeline).collect(),
        missing,
        missing_history: path.missing_history,
    })
}

/// Absolute segment number of a 24-hex segment file name.
pub fn segno_of(file: &str, segment_size: u64) -> Result<(u32, u64)> {
    let seg = WalName::parse(file)?
        .segment()
        .ok_or_else(|| Error::invalid(format!("{file} is not a WAL segment name")))?;
    Ok((seg.timeline, seg.number(segment_size)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{Codec, Compression};
    use crate::storage::{LocalStorage, Overwrite};

    const MB: u64 = 1 << 20;

    fn put(s: &LocalStorage, name: &str, content: &[u8]) {
        let n = WalName::parse(name).unwrap();
        let dir = layout::wal_dir("main", &n);
        s.create_dir_all(&dir).unwrap();
        let mut out = Vec::new();
        let stats = codec::encode(
            &codec::ContentHash::Sha256,
            &[],
            &mut &content[..],
            &mut out,
            Codec::default(),
        )
        .unwrap();
        let file = crate::archive::stored_name(&n, &stats.sha256, Compression::Zstd);
        s.write_all(&storage::join(&dir, &file), &out, Overwrite::Never)
            .unwrap();
    }

    fn seg(t: u32, n: u64) -> String {
        Segment::from_number(t, n, MB).file_name()
    }

    #[test]
    fn history_files_parse() {
        let h = parse_history("1\t0/300000\tno recovery target specified\n\n# c\n2\t0/5000A0\tat restore point \"x\"\n").unwrap();
        assert_eq!(
            h,
            [
                HistoryEntry {
                    timeline: 1,
                    switch_lsn: 0x300000
                },
                HistoryEntry {
                    timeline: 2,
                    switch_lsn: 0x5000A0
                }
            ]
        );
        assert!(parse_history("x\t0/1\n").is_err());
        assert!(parse_history("1\tnope\n").is_err());
        assert!(parse_history("2\t0/5\n1\t0/6\n").is_err());
        let chain = chain_from_history(3, &h, MB);
        assert_eq!(
            chain,
            [
                ChainLink {
                    timeline: 1,
                    begin: 0,
                    end: Some(3)
                },
                ChainLink {
                    timeline: 2,
                    begin: 3,
                    end: Some(5)
                },
                ChainLink {
                    timeline: 3,
                    begin: 5,
                    end: None
                }
            ]
        );
        let need = needed_segments(&chain, 2, 6);
        assert_eq!(
            need,
            [
                (2, vec![1]),
                (3, vec![2]),
                (4, vec![2]),
                (5, vec![3]),
                (6, vec![3])
            ]
        );
    }

    #[test]
    fn continuity_follows_timelines_and_reports_gaps() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStorage::new(dir.path().join("repo"));
        // Timeline 1: 1..=4, promoted inside segment 4 to timeline 2, which has 4..=6.
        // Timeline 1 also went on to 5 and 6 (an old primary): another history.
        for n in 1..=6 {
            put(&s, &seg(1, n), b"x");
        }
        put(&s, "00000002.history", b"1\t0/400100\tpromoted\n");
        for n in 4..=6 {
            put(&s, &seg(2, n), b"y");
        }
        let idx = ArchiveIndex::scan(&s, "main", MB).unwrap();
        assert_eq!(idx.timelines(), [1, 2]);
        assert_eq!(idx.file_count(), 10);
        let c = continuity(&s, &idx, 1, 2, 2).unwrap();
        assert!(c.complete(), "{c:?}");
        assert_eq!(c.timelines, [1, 2]);
        assert_eq!(c.first, seg(1, 2));
        assert_eq!(c.last, seg(2, 6));
        assert_eq!(c.segments, 5);

        // Remove timeline 2's segment 5: a gap, even though timeline 1 has a segment 5.
        let five = idx.segments[&2][&5].path.clone();
        s.remove_file(&five).unwrap();
        let idx = ArchiveIndex::scan(&s, "main", MB).unwrap();
        let c = continuity(&s, &idx, 1, 2, 2).unwrap();
        assert_eq!(
            c.missing,
            [MissingRange {
                first: seg(2, 5),
                last: seg(2, 5),
                count: 1
            }]
        );
        // From a point on timeline 1 after timeline 2 branched off (segment 5 of the
        // old primary), recovery cannot follow timeline 2: the path stays on 1.
        let c = continuity(&s, &idx, 1, 5, 5).unwrap();
        assert_eq!(c.timelines, [1]);
        assert!(c.complete(), "{c:?}");
        assert_eq!(c.last, seg(1, 6));
        // A missing history file is reported, and the path stays on timeline 1.
        let h = idx.histories[&2].path.clone();
        s.remove_file(&h).unwrap();
        let idx = ArchiveIndex::scan(&s, "main", MB).unwrap();
        let c = continuity(&s, &idx, 1, 2, 2).unwrap();
        assert_eq!(c.missing_history, ["00000002.history"]);
        assert_eq!(c.timelines, [1]);
        assert_eq!(c.last, seg(1, 6));
    }
}
