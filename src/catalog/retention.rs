//! Retention: which backups `expire` removes and which WAL it may delete.
//!
//! Everything here is a pure function of a synthetic catalog (backup summaries), the
//! current time and the policy, so the rules are tested without a repository. The
//! effectful side (taking the lock, deleting) lives in [`crate::catalog`].
//!
//! Rules (see `docs/catalog.md`):
//! - Pinned (`keep`) backups never expire and do not count towards `REDUNDANCY n`.
//! - `REDUNDANCY n` keeps the newest `n` unpinned backups.
//! - `RECOVERY WINDOW OF n UNITS` keeps every unpinned backup that stopped inside the
//!   window, plus the newest one that stopped before it (the one a recovery to the
//!   window's start would use).
//! - `minimum_redundancy` wins over both: if fewer backups (pinned included) would
//!   remain, the newest candidates are kept instead.
//! - The newest backup is never removed by a policy.
//! - WAL: on timeline `t`, segments below the smallest start segment of the backups
//!   that stay (pinned ones included) whose timeline is `<= t` may go: every such
//!   backup needs its WAL from its start onward, along any later timeline, to be
//!   recoverable to any point after it. So a pinned backup keeps all WAL since its
//!   start (Barman's `keep:full`); release old pins to let WAL go. History files
//!   never go.

use crate::repo::manifest::BackupId;
use chrono::{DateTime, Duration, Months, Utc};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

pub use crate::config::{Policy, WindowUnit};

impl Policy {
    /// The start of the recovery window at `now` (`None` for redundancy policies).
    pub fn window_start(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match *self {
            Policy::Redundancy { .. } => None,
            Policy::RecoveryWindow { n, unit } => Some(subtract(now, n, unit)),
        }
    }
}

/// `now` minus `n` units; saturates at the earliest representable time.
pub fn subtract(now: DateTime<Utc>, n: u32, unit: WindowUnit) -> DateTime<Utc> {
    let earliest = DateTime::<Utc>::MIN_UTC;
    match unit {
        WindowUnit::Days => now
            .checked_sub_signed(Duration::days(i64::from(n)))
            .unwrap_or(earliest),
        WindowUnit::Weeks => now
            .checked_sub_signed(Duration::weeks(i64::from(n)))
            .unwrap_or(earliest),
        // chrono clamps to the last day of a shorter month.
        WindowUnit::Months => now.checked_sub_months(Months::new(n)).unwrap_or(earliest),
    }
}

/// What retention needs to know about one backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupSummary {
    /// Id (sorts by start time).
    pub id: BackupId,
    /// When the backup finished.
    pub stop_time: DateTime<Utc>,
    /// Pinned with `pgcellar keep`.
    pub kept: bool,
    /// Timeline at backup start.
    pub timeline: u32,
    /// Absolute segment number of its start WAL.
    pub start_segno: u64,
    /// Absolute segment number of its stop WAL.
    pub stop_segno: u64,
}

/// Why a backup stays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeepReason {
    /// Pinned with `pgcellar keep`.
    Pinned,
    /// Among the newest `n` (REDUNDANCY).
    Redundancy,
    /// Stopped inside the recovery window.
    InWindow,
    /// The newest backup before the window: recovery to the window's start uses it.
    WindowBase,
    /// Would have expired, but `minimum_redundancy` needs it.
    MinimumRedundancy,
}

/// The outcome of applying a policy.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// Backups to remove, oldest first.
    pub delete: Vec<BackupId>,
    /// Backups that stay and why, oldest first.
    pub keep: Vec<(BackupId, KeepReason)>,
    /// WAL boundaries: on timeline `t`, the segments numbered below the boundary of the
    /// greatest listed timeline `<= t` may be removed. Empty: remove no WAL.
    pub wal_boundary: BTreeMap<u32, u64>,
}

impl Plan {
    /// Segments below this number on `timeline` may be removed (`None`: keep all).
    pub fn boundary(&self, timeline: u32) -> Option<u64> {
        self.wal_boundary
            .range(..=timeline)
            .next_back()
            .map(|(_, &b)| b)
    }

    /// Whether the segment `segno` of `timeline` may be removed.
    pub fn may_remove_segment(&self, timeline: u32, segno: u64) -> bool {
        self.boundary(timeline).is_some_and(|b| segno < b)
    }
}

/// Apply `policy` at `now` to `backups` (any order), never leaving fewer than
/// `minimum_redundancy` backups.
pub fn plan(
    backups: &[BackupSummary],
    now: DateTime<Utc>,
    policy: Policy,
    minimum_redundancy: u32,
) -> Plan {
    let mut sorted: Vec<&BackupSummary> = backups.iter().collect();
    // Newest first by stop time, then by id, so ties are deterministic.
    sorted.sort_by(|a, b| (b.stop_time, &b.id).cmp(&(a.stop_time, &a.id)));

    let mut reason: BTreeMap<BackupId, KeepReason> = BTreeMap::new();
    let unpinned: Vec<&BackupSummary> = sorted.iter().copied().filter(|b| !b.kept).collect();
    for b in sorted.iter().filter(|b| b.kept) {
        reason.insert(b.id.clone(), KeepReason::Pinned);
    }
    match policy {
        Policy::Redundancy { n } => {
            for b in unpinned.iter().take(n as usize) {
                reason.insert(b.id.clone(), KeepReason::Redundancy);
            }
        }
        Policy::RecoveryWindow { .. } => {
            let start = policy.window_start(now).unwrap_or(now);
            let mut base_found = false;
            for b in &unpinned {
                if b.stop_time >= start {
                    reason.insert(b.id.clone(), KeepReason::InWindow);
                } else if !base_found {
                    base_found = true;
                    reason.insert(b.id.clone(), KeepReason::WindowBase);
                }
            }
        }
    }
    // The newest backup always stays, even if it is inside no window (cannot happen
    // with n >= 1, but a policy must never leave a server without its newest backup).
    if let Some(newest) = sorted.first() {
        reason
            .entry(newest.id.clone())
            .or_insert(KeepReason::Redundancy);
    }
    let mut remaining = reason.len();
    for b in &sorted {
        if remaining >= minimum_redundancy as usize {
            break;
        }
        if !reason.contains_key(&b.id) {
            reason.insert(b.id.clone(), KeepReason::MinimumRedundancy);
            remaining += 1;
        }
    }

    let mut delete: Vec<BackupId> = sorted
        .iter()
        .filter(|b| !reason.contains_key(&b.id))
        .map(|b| b.id.clone())
        .collect();
    delete.sort();

    // WAL: every backup that stays needs its WAL from its start on.
    let mut wal_boundary: BTreeMap<u32, u64> = BTreeMap::new();
    let full: Vec<&BackupSummary> = sorted
        .iter()
        .copied()
        .filter(|b| reason.contains_key(&b.id))
        .collect();
    let timelines: BTreeSet<u32> = full.iter().map(|b| b.timeline).collect();
    for &t in &timelines {
        // Boundary for timeline t (and later ones until the next listed timeline): the
        // oldest start among backups on timelines <= t.
        if let Some(min) = full
            .iter()
            .filter(|b| b.timeline <= t)
            .map(|b| b.start_segno)
            .min()
        {
            wal_boundary.insert(t, min);
        }
    }
    // Timelines older than every fully retained backup's: keep what the oldest of them
    // does not need, i.e. the same boundary as the oldest listed timeline. Recording it
    // at timeline 1 makes `boundary()` answer for every timeline.
    if let Some((_, &first)) = wal_boundary.iter().next() {
        wal_boundary.entry(1).or_insert(first);
    }

    // A BTreeMap iterates in id order, i.e. oldest first.
    let keep: Vec<(BackupId, KeepReason)> = reason.into_iter().collect();
    Plan {
        delete,
        keep,
        wal_boundary,
    }
}

/// Whether deleting `id` by hand would leave fewer than `minimum_redundancy` backups.
pub fn delete_breaks_minimum(total: usize, minimum_redundancy: u32) -> bool {
    total.saturating_sub(1) < minimum_redundancy as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(y: i32, m: u32, d: u32, h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, h, 0, 0).unwrap()
    }

    /// A backup that started an hour before `stop` on `timeline` at segment `seg`.
    fn b(stop: DateTime<Utc>, timeline: u32, seg: u64) -> BackupSummary {
        BackupSummary {
            id: BackupId::from_time(stop - Duration::hours(1)),
            stop_time: stop,
            kept: false,
            timeline,
            start_segno: seg,
            stop_segno: seg + 1,
        }
    }

    fn ids(v: &[BackupId]) -> Vec<&str> {
        v.iter().map(BackupId::as_str).collect()
    }

    #[test]
    fn policies_parse_and_print() {
        assert_eq!(
            Policy::parse("REDUNDANCY 3").unwrap(),
            Policy::Redundancy { n: 3 }
        );
        assert_eq!(
            Policy::parse("  recovery  window of 2 Months ").unwrap(),
            Policy::RecoveryWindow {
                n: 2,
                unit: WindowUnit::Months
            }
        );
        assert_eq!(
            Policy::parse("RECOVERY WINDOW OF 1 WEEK")
                .unwrap()
                .to_string(),
            "RECOVERY WINDOW OF 1 WEEKS"
        );
        for bad in [
            "",
            "REDUNDANCY",
            "REDUNDANCY 0",
            "REDUNDANCY -1",
            "REDUNDANCY 2 3",
            "RECOVERY WINDOW 3 DAYS",
            "RECOVERY WINDOW OF 3 YEARS",
            "RECOVERY WINDOW OF x DAYS",
        ] {
            let e = Policy::parse(bad).unwrap_err();
            assert!(e.to_string().contains("retention policy"), "{bad}: {e}");
        }
    }

    #[test]
    fn month_windows_clamp_at_month_ends() {
        let w = |now, n| subtract(now, n, WindowUnit::Months);
        assert_eq!(w(t(2026, 3, 31, 12), 1), t(2026, 2, 28, 12));
        assert_eq!(w(t(2028, 3, 31, 12), 1), t(2028, 2, 29, 12));
        assert_eq!(w(t(2026, 1, 31, 0), 2), t(2025, 11, 30, 0));
        assert_eq!(w(t(2026, 12, 1, 0), 12), t(2025, 12, 1, 0));
        assert_eq!(
            subtract(t(2026, 3, 1, 0), 1, WindowUnit::Days),
            t(2026, 2, 28, 0)
        );
        assert_eq!(
            subtract(t(2026, 3, 3, 0), 1, WindowUnit::Weeks),
            t(2026, 2, 24, 0)
        );
    }

    #[test]
    fn redundancy_keeps_the_newest_n() {
        let bs: Vec<_> = (1..=5)
            .map(|d| b(t(2026, 11, d, 12), 1, d as u64 * 10))
            .collect();
        let p = plan(&bs, t(2026, 11, 30, 0), Policy::Redundancy { n: 2 }, 0);
        assert_eq!(
            ids(&p.delete),
            ["20261101T110000Z", "20261102T110000Z", "20261103T110000Z"]
        );
        assert_eq!(p.keep.len(), 2);
        assert!(p.keep.iter().all(|(_, r)| *r == KeepReason::Redundancy));
        // WAL below the start of the oldest retained backup (segment 40) may go.
        assert_eq!(p.boundary(1), Some(40));
        assert!(p.may_remove_segment(1, 39));
        assert!(!p.may_remove_segment(1, 40));
    }

    #[test]
    fn window_across_a_month_end_keeps_the_base_before_it() {
        // Window of 1 month at 31 March = from 28 February.
        let now = t(2026, 3, 31, 12);
        let bs = vec![
            b(t(2026, 1, 31, 12), 1, 10),
            b(t(2026, 2, 27, 12), 1, 20), // newest before the window: base
            b(t(2026, 2, 28, 13), 1, 30), // inside (window starts 28 Feb 12:00)
            b(t(2026, 3, 30, 12), 1, 40),
        ];
        let policy = Policy::parse("RECOVERY WINDOW OF 1 MONTHS").unwrap();
        assert_eq!(policy.window_start(now), Some(t(2026, 2, 28, 12)));
        let p = plan(&bs, now, policy, 0);
        assert_eq!(ids(&p.delete), ["20260131T110000Z"]);
        let reasons: Vec<KeepReason> = p.keep.iter().map(|(_, r)| *r).collect();
        assert_eq!(
            reasons,
            [
                KeepReason::WindowBase,
                KeepReason::InWindow,
                KeepReason::InWindow
            ]
        );
        assert_eq!(p.boundary(1), Some(20));
        // Weeks and days windows across the February end of a leap year.
        let now = t(2028, 3, 2, 0);
        let bs = vec![
            b(t(2028, 2, 20, 0), 1, 1),
            b(t(2028, 2, 23, 0), 1, 2),
            b(t(2028, 2, 29, 0), 1, 3),
        ];
        let p = plan(
            &bs,
            now,
            Policy::parse("RECOVERY WINDOW OF 1 WEEKS").unwrap(),
            0,
        );
        // Window from 24 Feb: 29 Feb inside, 23 Feb is the base, 20 Feb goes.
        assert_eq!(ids(&p.delete), ["20280219T230000Z"]);
        let p = plan(
            &bs,
            now,
            Policy::parse("RECOVERY WINDOW OF 2 DAYS").unwrap(),
            0,
        );
        // Window from 29 Feb 00:00 (the leap day): the backup that stopped exactly at
        // the start is inside, 23 Feb becomes the base.
        assert_eq!(ids(&p.delete), ["20280219T230000Z"]);
        assert_eq!(
            p.keep.iter().map(|(_, r)| *r).collect::<Vec<_>>(),
            [KeepReason::WindowBase, KeepReason::InWindow]
        );
    }

    #[test]
    fn window_with_every_backup_old_keeps_only_the_newest() {
        let bs = vec![b(t(2026, 1, 1, 0), 1, 1), b(t(2026, 1, 2, 0), 1, 2)];
        let p = plan(
            &bs,
            t(2026, 6, 1, 0),
            Policy::parse("RECOVERY WINDOW OF 7 DAYS").unwrap(),
            0,
        );
        assert_eq!(ids(&p.delete), ["20251231T230000Z"]);
        assert_eq!(p.keep[0].1, KeepReason::WindowBase);
    }

    #[test]
    fn minimum_redundancy_wins_over_the_policy() {
        let bs: Vec<_> = (1..=4).map(|d| b(t(2026, 1, d, 0), 1, d as u64)).collect();
        let now = t(2026, 6, 1, 0);
        let p = plan(&bs, now, Policy::Redundancy { n: 1 }, 3);
        assert_eq!(ids(&p.delete), ["20251231T230000Z"]);
        let mins = p
            .keep
            .iter()
            .filter(|(_, r)| *r == KeepReason::MinimumRedundancy)
            .count();
        assert_eq!(mins, 2);
        // Minimum above the number of backups: nothing goes.
        let p = plan(&bs, now, Policy::Redundancy { n: 1 }, 10);
        assert!(p.delete.is_empty());
        assert_eq!(p.boundary(1), Some(1));
        assert!(delete_breaks_minimum(2, 2));
        assert!(!delete_breaks_minimum(3, 2));
        assert!(!delete_breaks_minimum(1, 0));
    }

    #[test]
    fn pinned_backups_never_expire_and_keep_their_wal() {
        let mut bs: Vec<_> = (1..=4)
            .map(|d| b(t(2026, 1, d, 0), 1, d as u64 * 10))
            .collect();
        bs[0].kept = true; // the oldest, segments 10..11
        let p = plan(&bs, t(2026, 6, 1, 0), Policy::Redundancy { n: 1 }, 0);
        // Pins do not count towards REDUNDANCY: the newest unpinned stays too.
        assert_eq!(ids(&p.delete), ["20260101T230000Z", "20260102T230000Z"]);
        assert_eq!(
            p.keep
                .iter()
                .map(|(i, r)| (i.as_str(), *r))
                .collect::<Vec<_>>(),
            [
                ("20251231T230000Z", KeepReason::Pinned),
                ("20260103T230000Z", KeepReason::Redundancy)
            ]
        );
        // The pinned backup counts for minimum_redundancy.
        let p2 = plan(&bs, t(2026, 6, 1, 0), Policy::Redundancy { n: 1 }, 2);
        assert_eq!(p2.delete.len(), 2);
        // WAL: the pinned backup keeps everything from its start (10) on.
        assert_eq!(p.boundary(1), Some(10));
        assert!(p.may_remove_segment(1, 9));
        assert!(!p.may_remove_segment(1, 10));
        assert!(!p.may_remove_segment(1, 39));
        // A pinned newest backup does not count towards REDUNDANCY: the newest
        // unpinned one stays too, and the WAL boundary is its start.
        let mut bs2 = bs.clone();
        bs2[3].kept = true;
        bs2[0].kept = false;
        let p = plan(&bs2, t(2026, 6, 1, 0), Policy::Redundancy { n: 1 }, 0);
        assert_eq!(ids(&p.delete), ["20251231T230000Z", "20260101T230000Z"]);
        assert_eq!(p.boundary(1), Some(30));
    }

    #[test]
    fn several_timelines() {
        // Timeline 1 backups at 10 and 20; promotion to timeline 2 at segment 25;
        // backups on timeline 2 at 30 and 40; timeline 3 started from 2 at 45.
        let bs = vec![
            b(t(2026, 1, 1, 0), 1, 10),
            b(t(2026, 1, 2, 0), 1, 20),
            b(t(2026, 1, 3, 0), 2, 30),
            b(t(2026, 1, 4, 0), 2, 40),
        ];
        let now = t(2026, 1, 5, 0);
        let p = plan(&bs, now, Policy::Redundancy { n: 3 }, 0);
        assert_eq!(ids(&p.delete), ["20251231T230000Z"]);
        // The timeline-1 backup at 20 needs timeline 1 from 20 and timeline 2 (and 3)
        // from 20 on as well, through the switch.
        assert_eq!(p.boundary(1), Some(20));
        assert_eq!(p.boundary(2), Some(20));
        assert_eq!(p.boundary(3), Some(20));
        assert!(p.may_remove_segment(1, 19));
        assert!(!p.may_remove_segment(2, 25));
        // With only timeline-2 backups retained, timeline 1 is cut at the oldest start.
        let p = plan(&bs, now, Policy::Redundancy { n: 2 }, 0);
        assert_eq!(p.boundary(2), Some(30));
        assert_eq!(p.boundary(1), Some(30));
        assert_eq!(p.boundary(3), Some(30));
        assert!(p.may_remove_segment(1, 24));
        assert!(p.may_remove_segment(2, 29));
        assert!(!p.may_remove_segment(2, 30));
        // A pinned timeline-1 backup keeps its WAL on timeline 1 and the later ones.
        let mut pinned = bs.clone();
        pinned[0].kept = true;
        let p = plan(&pinned, now, Policy::Redundancy { n: 1 }, 0);
        assert_eq!(ids(&p.delete), ["20260101T230000Z", "20260102T230000Z"]);
        assert!(!p.may_remove_segment(1, 10));
        assert!(!p.may_remove_segment(2, 10));
        assert!(p.may_remove_segment(1, 9));
        assert!(p.may_remove_segment(3, 9));
    }

    #[test]
    fn empty_catalog_removes_nothing() {
        let p = plan(&[], t(2026, 1, 1, 0), Policy::Redundancy { n: 1 }, 0);
        assert!(p.delete.is_empty() && p.keep.is_empty());
        assert_eq!(p.boundary(1), None);
        assert!(!p.may_remove_segment(1, 0));
    }
}
