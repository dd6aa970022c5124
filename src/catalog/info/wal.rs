//! The archive of one server as `info` shows it: the range of segments of each
//! timeline with the gaps inside it, and how fast WAL has been arriving.

use super::report::{Throughput, TimelineWal, WalSummary, Window};
use crate::archive::timeline::{ArchiveIndex, MissingRange};
use crate::archive::StoredWal;
use crate::error::Result;
use crate::storage::Storage;
use crate::wal::{Segment, WalKind};
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

/// Every timeline of the archive with its first and last segment and the runs of
/// segments missing between them, plus the file counts.
pub(super) fn summary(index: &ArchiveIndex) -> WalSummary {
    let size = index.segment_size;
    let name = |t: u32, n: u64| Segment::from_number(t, n, size).file_name();
    let mut partial: BTreeMap<u32, usize> = BTreeMap::new();
    let mut backup: BTreeMap<u32, usize> = BTreeMap::new();
    for o in &index.others {
        let counts = match o.name.kind() {
            WalKind::Partial => &mut partial,
            _ => &mut backup,
        };
        *counts.entry(o.name.timeline()).or_default() += 1;
    }
    let mut timelines: Vec<u32> = index.timelines();
    timelines.extend(partial.keys().chain(backup.keys()));
    timelines.sort_unstable();
    timelines.dedup();
    let empty = BTreeMap::new();
    let rows = timelines
        .into_iter()
        .map(|t| {
            let segs = index.segments.get(&t).unwrap_or(&empty);
            let mut missing: Vec<MissingRange> = Vec::new();
            let mut prev: Option<u64> = None;
            // Walk the segments present: a jump between two of them is a gap, however
            // long, without visiting each missing number.
            for n in segs.keys().copied() {
                if let Some(p) = prev {
                    if n > p + 1 {
                        missing.push(MissingRange {
                            first: name(t, p + 1),
                            last: name(t, n - 1),
                            count: n - p - 1,
                        });
                    }
                }
                prev = Some(n);
            }
            TimelineWal {
                timeline: t,
                first: segs.keys().next().map(|n| name(t, *n)),
                last: segs.keys().next_back().map(|n| name(t, *n)),
                segments: segs.len() as u64,
                stored_size: segs.values().map(|s| s.stored_size).sum(),
                missing_segments: missing.iter().map(|m| m.count).sum(),
                missing,
                history_missing: t > 1 && !index.histories.contains_key(&t),
                partial_files: partial.get(&t).copied().unwrap_or(0),
                backup_files: backup.get(&t).copied().unwrap_or(0),
            }
        })
        .collect::<Vec<_>>();
    let all = index
        .segments
        .values()
        .flat_map(BTreeMap::values)
        .chain(index.histories.values())
        .chain(index.others.iter());
    WalSummary {
        files: index.file_count(),
        stored_size: all.map(|w| w.stored_size).sum(),
        segments: rows.iter().map(|r| r.segments).sum(),
        missing_segments: rows.iter().map(|r| r.missing_segments).sum(),
        history_files: index.histories.len(),
        partial_files: partial.values().sum(),
        backup_files: backup.values().sum(),
        timelines: rows,
    }
}

/// The windows `info` reports, in seconds: the last hour and the last day.
const WINDOWS: [u64; 2] = [3600, 86_400];

/// Segments and bytes stored in the last hour and day, from the stored times of the
/// segment files.
///
/// The storage listing gives no times, so this asks the storage for the time of a
/// few files only: segments reach the archive in the order of their names (timeline,
/// then number), so the first one inside a window is found by a binary search, about
/// 2 x log2(segments) requests. Segments pushed ahead in parallel arrive a few
/// seconds out of order, which moves a window's edge by as much. A storage that
/// keeps no times (the epoch) makes the throughput unknown.
pub(super) fn throughput(
    storage: &dyn Storage,
    index: &ArchiveIndex,
    now: DateTime<Utc>,
) -> Throughput {
    match measure(storage, index, now) {
        Ok(t) => t,
        Err(e) => Throughput::unknown(format!("the stored times could not be read: {e}")),
    }
}

fn measure(storage: &dyn Storage, index: &ArchiveIndex, now: DateTime<Utc>) -> Result<Throughput> {
    let segs: Vec<&StoredWal> = index.segments.values().flat_map(BTreeMap::values).collect();
    let Some(newest) = segs.last() else {
        let zero = |seconds| Window::of(seconds, 0, 0, index.segment_size);
        return Ok(Throughput {
            known: true,
            note: Some("no segment is archived".into()),
            newest_segment: None,
            newest_stored_at: None,
            last_hour: Some(zero(WINDOWS[0])),
            last_day: Some(zero(WINDOWS[1])),
        });
    };
    let mut times: HashMap<usize, SystemTime> = HashMap::new();
    let mut time_of = |i: usize| -> Result<SystemTime> {
        if let Some(t) = times.get(&i) {
            return Ok(*t);
        }
        // A segment removed meanwhile (expire) was among the oldest.
        let t = match segs.get(i) {
            Some(s) => storage
                .stat(&s.path)?
                .map_or(SystemTime::UNIX_EPOCH, |f| f.mtime),
            None => SystemTime::UNIX_EPOCH,
        };
        times.insert(i, t);
        Ok(t)
    };
    let last = segs.len() - 1;
    let newest_at = time_of(last)?;
    if newest_at <= SystemTime::UNIX_EPOCH {
        return Ok(Throughput::unknown(format!(
            "{} keeps no modification times",
            storage.location()
        )));
    }
    let mut windows = Vec::new();
    for seconds in WINDOWS {
        let cutoff = SystemTime::from(now - chrono::Duration::seconds(seconds as i64));
        // The first segment stored at or after the cutoff (times rise with the index).
        let (mut lo, mut hi) = (0, segs.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if time_of(mid)? < cutoff {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let inside = segs.get(lo..).unwrap_or_default();
        windows.push(Window::of(
            seconds,
            inside.len() as u64,
            inside.iter().map(|s| s.stored_size).sum(),
            index.segment_size,
        ));
    }
    let mut windows = windows.into_iter();
    Ok(Throughput {
        known: true,
        note: None,
        newest_segment: Some(newest.name.to_string()),
        newest_stored_at: Some(DateTime::<Utc>::from(newest_at)),
        last_hour: windows.next(),
        last_day: windows.next(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Compression;
    use crate::repo::layout;
    use crate::storage::{LocalStorage, Overwrite};
    use crate::wal::WalName;
    use std::path::PathBuf;

    const MIB: u64 = 1 << 20;

    fn stored(name: &str, stored_size: u64) -> StoredWal {
        let name = WalName::parse(name).unwrap();
        let sha = "0".repeat(64);
        StoredWal {
            path: format!(
                "{}/{}",
                layout::wal_dir("main", &name),
                crate::archive::stored_name(&name, &sha, Compression::Zstd)
            ),
            name,
            sha256: sha,
            compression: Compression::Zstd,
            stored_size,
        }
    }

    fn index(names: &[&str]) -> ArchiveIndex {
        let mut idx = ArchiveIndex {
            segment_size: MIB,
            ..Default::default()
        };
        for n in names {
            let s = stored(n, 100);
            match s.name.kind() {
                WalKind::Segment => {
                    let seg = s.name.segment().unwrap();
                    idx.segments
                        .entry(seg.timeline)
                        .or_default()
                        .insert(seg.number(MIB), s);
                }
                WalKind::History => {
                    idx.histories.insert(s.name.timeline(), s);
                }
                _ => idx.others.push(s),
            }
        }
        idx
    }

    #[test]
    fn each_timeline_has_its_range_and_its_gaps() {
        let idx = index(&[
            "000000010000000000000001",
            "000000010000000000000002",
            // 03 and 04 are missing
            "000000010000000000000005",
            // 06 is missing
            "000000010000000000000007",
            "000000010000000000000007.partial",
            "000000010000000000000002.00000028.backup",
            "000000020000000000000007",
            "000000020000000000000008",
            "00000002.history",
            // Timeline 3 has segments but lost its history file.
            "000000030000000000000009",
        ]);
        let w = summary(&idx);
        assert_eq!(w.files, 10);
        assert_eq!(w.segments, 7);
        assert_eq!(w.missing_segments, 3);
        assert_eq!(
            (w.history_files, w.partial_files, w.backup_files),
            (1, 1, 1)
        );
        assert_eq!(w.stored_size, 1000);
        let t1 = &w.timelines[0];
        assert_eq!(t1.timeline, 1);
        assert_eq!(t1.first.as_deref(), Some("000000010000000000000001"));
        assert_eq!(t1.last.as_deref(), Some("000000010000000000000007"));
        assert_eq!(t1.segments, 4);
        assert_eq!(
            t1.missing,
            vec![
                MissingRange {
                    first: "000000010000000000000003".into(),
                    last: "000000010000000000000004".into(),
                    count: 2
                },
                MissingRange {
                    first: "000000010000000000000006".into(),
                    last: "000000010000000000000006".into(),
                    count: 1
                }
            ]
        );
        assert_eq!((t1.partial_files, t1.backup_files), (1, 1));
        assert!(!t1.history_missing);
        let t2 = &w.timelines[1];
        assert!(t2.missing.is_empty() && !t2.history_missing && t2.segments == 2);
        assert!(w.timelines[2].history_missing);
    }

    #[test]
    fn a_timeline_with_only_a_history_file_has_no_range() {
        let w = summary(&index(&["00000002.history"]));
        assert_eq!(w.timelines.len(), 1);
        assert_eq!(w.timelines[0].first, None);
        assert_eq!(w.timelines[0].segments, 0);
    }

    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Store each segment of `names` with its mtime `ages` seconds before `now`.
    fn archive(names: &[&str], ages: &[u64], now: SystemTime) -> (Dir, LocalStorage, ArchiveIndex) {
        let root = std::env::temp_dir().join(format!("pgcellar-info-{}", crate::util::temp_name()));
        let st = LocalStorage::new(root.clone());
        let idx = index(names);
        for (s, age) in idx.segments.values().flat_map(BTreeMap::values).zip(ages) {
            let dir = layout::wal_dir("main", &s.name);
            st.create_dir_all(&dir).unwrap();
            st.write_all(&s.path, &[0; 100], Overwrite::Never).unwrap();
            let f = std::fs::File::options()
                .write(true)
                .open(root.join(&s.path))
                .unwrap();
            f.set_modified(now - std::time::Duration::from_secs(*age))
                .unwrap();
        }
        (Dir(root), st, idx)
    }

    #[test]
    fn throughput_counts_the_segments_stored_in_each_window() {
        let now = SystemTime::now();
        let names = [
            "000000010000000000000001",
            "000000010000000000000002",
            "000000010000000000000003",
            "000000010000000000000004",
            "000000020000000000000004",
            "000000020000000000000005",
        ];
        // Two days ago, 5 h ago, 2 h ago, then three within the hour.
        let ages = [2 * 86_400, 5 * 3600, 2 * 3600, 1800, 600, 5];
        let (_dir, st, idx) = archive(&names, &ages, now);
        let t = throughput(&st, &idx, DateTime::<Utc>::from(now));
        assert!(t.known, "{t:?}");
        assert_eq!(
            t.newest_segment.as_deref(),
            Some("000000020000000000000005")
        );
        let hour = t.last_hour.unwrap();
        assert_eq!(
            (hour.segments, hour.stored_bytes, hour.wal_bytes),
            (3, 300, 3 * MIB)
        );
        let day = t.last_day.unwrap();
        assert_eq!(day.segments, 5);
        assert!((day.segments_per_hour - 5.0 / 24.0).abs() < 1e-9);
        let stored_at = t.newest_stored_at.unwrap();
        assert!((DateTime::<Utc>::from(now) - stored_at).num_seconds().abs() <= 6);
    }

    #[test]
    fn throughput_is_unknown_without_stored_times_and_zero_without_segments() {
        let now = SystemTime::now();
        let (_dir, st, idx) = archive(&["000000010000000000000001"], &[0], now);
        // Times at the epoch: what a storage that keeps none reports.
        let f = std::fs::File::options()
            .write(true)
            .open(_dir.0.join(&idx.segments[&1][&1].path))
            .unwrap();
        f.set_modified(SystemTime::UNIX_EPOCH).unwrap();
        let t = throughput(&st, &idx, Utc::now());
        assert!(!t.known && t.last_hour.is_none(), "{t:?}");
        assert!(t.note.unwrap().contains("no modification times"));
        let empty = throughput(&st, &index(&[]), Utc::now());
        assert!(empty.known);
        assert_eq!(empty.last_day.unwrap().segments, 0);
    }
}
