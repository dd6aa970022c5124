//! Removing things: `pgcellar delete`, `expire` and `cron`.
//!
//! Which backups and WAL go is decided by the pure rules of [`crate::catalog::retention`];
//! this module gathers the catalog, takes the server's writer lock and removes. A
//! backup is removed manifest first, so an interruption leaves an aborted backup,
//! never a damaged complete one; then the objects no remaining backup references are
//! swept ([`crate::repo::objects::sweep`]).

use crate::archive::timeline::{self, ArchiveIndex};
use crate::archive::StoredWal;
use crate::catalog::backups::is_kept;
use crate::catalog::retention::{self, BackupSummary, KeepReason, Plan, Policy};
use crate::catalog::servers::server_names;
use crate::config::{CatalogSettings, Settings};
use crate::error::{Error, ErrorKind, Result};
use crate::repo::lock::Lock;
use crate::repo::manifest::{self, BackupId};
use crate::repo::objects::{sweep, Sweep};
use crate::repo::{layout, Repository, ServerInfo};
use crate::storage::layer::DryRun;
use crate::storage::Storage;
use crate::wal::Segment;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::time::Duration;

// ---------------------------------------------------------------------------
// delete

/// What `delete` did.
#[derive(Debug, Clone, Serialize)]
pub struct DeleteOutcome {
    /// The backup removed.
    pub id: String,
    /// Backups left.
    pub remaining: usize,
    /// The objects swept afterwards.
    pub objects: Sweep,
}

/// Remove backup `spec`; refuses a pinned backup, and going below
/// `minimum_redundancy` unless `force`.
pub fn delete(settings: &Settings, spec: &str, force: bool) -> Result<DeleteOutcome> {
    let cat = CatalogSettings::from_settings(settings)?;
    let (repo, server) = Repository::open_server(settings)?;
    let storage = repo.storage();
    let lock = Lock::acquire_held(&repo, settings, &server.name, "delete")?;
    let id = manifest::resolve(storage, &server.name, spec)?;
    if is_kept(storage, &server.name, &id)? {
        return Err(Error::new(
            ErrorKind::Conflict,
            format!(
                "backup {id} of server {} is pinned; release it first with \
                 'pgcellar keep {id} --release'",
                server.name
            ),
        ));
    }
    let total = manifest::list_ids(storage, &server.name)?.len();
    if retention::delete_breaks_minimum(total, cat.minimum_redundancy) && !force {
        return Err(Error::new(
            ErrorKind::Conflict,
            format!(
                "deleting backup {id} would leave {} backup(s) of server {}, below \
                 minimum_redundancy {}; use --force to delete anyway",
                total - 1,
                server.name,
                cat.minimum_redundancy
            ),
        ));
    }
    remove_backup(storage, &server.name, &id)?;
    let objects = sweep(storage, &server.name, &[])?;
    lock.release();
    Ok(DeleteOutcome {
        id: id.to_string(),
        remaining: total - 1,
        objects,
    })
}

/// Remove one backup directory: the manifest first, so that a crash half-way leaves
/// an aborted backup (invisible, cleaned up later), never a damaged complete one.
/// Other backups stay intact: they name their objects themselves.
fn remove_backup(storage: &dyn Storage, server: &str, id: &BackupId) -> Result<()> {
    storage.remove_file(&layout::backup_manifest(server, id.as_str()))?;
    storage.remove_dir_all(&layout::backup_dir(server, id.as_str()))
}

// ---------------------------------------------------------------------------
// expire

/// A backup in an expire plan.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedBackup {
    /// Backup id.
    pub id: String,
    /// Why it stays (absent for backups that go).
    pub reason: Option<KeepReason>,
}

/// WAL removal of one timeline.
#[derive(Debug, Clone, Serialize)]
pub struct WalRemoval {
    /// Timeline.
    pub timeline: u32,
    /// Segments numbered below this segment's go (file name of the first kept one).
    pub keep_from: String,
    /// Files removed (or, with `--dry-run`, to remove).
    pub files: u64,
    /// Their stored bytes.
    pub stored_size: u64,
    /// First file removed.
    pub first: Option<String>,
    /// Last file removed.
    pub last: Option<String>,
}

/// What `expire` did (or, with `dry_run`, would do).
#[derive(Debug, Clone, Serialize)]
pub struct ExpireReport {
    /// Server.
    pub server: String,
    /// The policy applied.
    pub policy: String,
    /// `minimum_redundancy` applied.
    pub minimum_redundancy: u32,
    /// Whether nothing was changed.
    pub dry_run: bool,
    /// Backups removed.
    pub deleted: Vec<String>,
    /// Backups kept and why.
    pub kept: Vec<PlannedBackup>,
    /// Aborted backup directories removed.
    pub aborted_removed: Vec<String>,
    /// WAL removal per timeline (only timelines that lose files).
    pub wal: Vec<WalRemoval>,
    /// The sweep of unreferenced objects.
    pub objects: Sweep,
}

impl ExpireReport {
    /// Whether anything was (or would be) removed.
    pub fn changed_anything(&self) -> bool {
        !self.deleted.is_empty()
            || !self.aborted_removed.is_empty()
            || self.wal.iter().any(|w| w.files > 0)
            || self.objects.removed > 0
    }
}

/// Apply the retention policy (`policy_override`, else `retention` from the config).
pub fn expire(
    settings: &Settings,
    policy_override: Option<&str>,
    dry_run: bool,
) -> Result<ExpireReport> {
    let cat = CatalogSettings::resolve(settings, policy_override)?;
    let policy = cat.retention.ok_or_else(|| {
        Error::config("no retention policy: set 'retention' in the config file or pass --retention")
    })?;
    let (repo, server) = Repository::open_server(settings)?;
    expire_server(&repo, &server, settings, &cat, policy, dry_run, Utc::now())
}

fn expire_server(
    repo: &Repository,
    server: &ServerInfo,
    settings: &Settings,
    cat: &CatalogSettings,
    policy: Policy,
    dry_run: bool,
    now: DateTime<Utc>,
) -> Result<ExpireReport> {
    let storage = repo.storage();
    // A dry run changes nothing, not even the lock file.
    let lock = if dry_run {
        None
    } else {
        Some(Lock::acquire_held(repo, settings, &server.name, "expire")?)
    };
    let manifests = manifest::load_all(storage, &server.name)?;
    let mut summaries = Vec::new();
    for m in &manifests {
        let (tli, start) = timeline::segno_of(&m.start_wal, server.wal_segment_size)?;
        let (_, stop) = timeline::segno_of(&m.stop_wal, server.wal_segment_size)?;
        summaries.push(BackupSummary {
            id: m.id.clone(),
            stop_time: m.stop_time,
            kept: is_kept(storage, &server.name, &m.id)?,
            timeline: tli,
            start_segno: start,
            stop_segno: stop,
        });
    }
    let plan = retention::plan(&summaries, now, policy, cat.minimum_redundancy);
    let aborted = aborted_backups(storage, &server.name, now, cat.aborted_backup_max_age)?;
    // A dry run takes every step against a layer that removes nothing.
    let removals = DryRun::when(storage, dry_run);
    for id in &plan.delete {
        remove_backup(&removals, &server.name, id)?;
    }
    for id in &aborted {
        removals.remove_dir_all(&layout::backup_dir(&server.name, id))?;
    }
    let index = ArchiveIndex::scan(storage, &server.name, server.wal_segment_size)?;
    let wal = remove_wal(&removals, &server.name, &index, &plan)?;
    // On the dry-run layer nothing above was removed: the sweep must not count them.
    let mut gone = plan.delete.clone();
    gone.extend(aborted.iter().filter_map(|a| BackupId::parse(a).ok()));
    let objects = sweep(&removals, &server.name, &gone)?;
    if let Some(lock) = lock {
        lock.release();
    }
    Ok(ExpireReport {
        server: server.name.clone(),
        policy: policy.to_string(),
        minimum_redundancy: cat.minimum_redundancy,
        dry_run,
        deleted: plan.delete.iter().map(ToString::to_string).collect(),
        kept: plan
            .keep
            .iter()
            .map(|(id, r)| PlannedBackup {
                id: id.to_string(),
                reason: Some(*r),
            })
            .collect(),
        aborted_removed: aborted,
        wal,
        objects,
    })
}

/// Backup directories without a manifest whose id (start time) is older than `max_age`.
pub fn aborted_backups(
    storage: &dyn Storage,
    server: &str,
    now: DateTime<Utc>,
    max_age: Duration,
) -> Result<Vec<String>> {
    let max_age = chrono::Duration::from_std(max_age).unwrap_or(chrono::Duration::MAX);
    let mut out = Vec::new();
    for e in storage.list(&layout::backups_dir(server))? {
        if !e.is_dir {
            continue;
        }
        let Ok(id) = BackupId::parse(&e.name) else {
            continue; // not ours: leave it alone
        };
        if storage
            .stat(&layout::backup_manifest(server, id.as_str()))?
            .is_some()
        {
            continue;
        }
        if now.signed_duration_since(id.time()) > max_age {
            out.push(id.to_string());
        }
    }
    out.sort();
    Ok(out)
}

/// Remove the WAL files the plan allows: segments, `.partial` and `.backup` files
/// below their timeline's boundary and outside pinned ranges; never history files.
fn remove_wal(
    storage: &dyn Storage,
    server: &str,
    index: &ArchiveIndex,
    plan: &Plan,
) -> Result<Vec<WalRemoval>> {
    let size = index.segment_size;
    let mut doomed: Vec<&StoredWal> = Vec::new();
    for (tli, segs) in &index.segments {
        for (n, s) in segs {
            if plan.may_remove_segment(*tli, *n) {
                doomed.push(s);
            }
        }
    }
    for s in &index.others {
        if let Some(seg) = s.name.segment() {
            if plan.may_remove_segment(seg.timeline, seg.number(size)) {
                doomed.push(s);
            }
        }
    }
    doomed.sort_by(|a, b| a.name.as_str().cmp(b.name.as_str()));
    let mut by_tl: std::collections::BTreeMap<u32, WalRemoval> = Default::default();
    for s in &doomed {
        let tli = s.name.timeline();
        let boundary = plan.boundary(tli).unwrap_or(0);
        let r = by_tl.entry(tli).or_insert_with(|| WalRemoval {
            timeline: tli,
            keep_from: Segment::from_number(tli, boundary, size).file_name(),
            files: 0,
            stored_size: 0,
            first: None,
            last: None,
        });
        r.files += 1;
        r.stored_size += s.stored_size;
        if r.first.is_none() {
            r.first = Some(s.name.to_string());
        }
        r.last = Some(s.name.to_string());
        storage.remove_file(&s.path)?;
    }
    remove_empty_wal_dirs(storage, server, index, plan)?;
    Ok(by_tl.into_values().collect())
}

/// Remove `wal/<16 hex>` directories that are empty and entirely below their
/// timeline's boundary, so no future push can want them.
fn remove_empty_wal_dirs(
    storage: &dyn Storage,
    server: &str,
    index: &ArchiveIndex,
    plan: &Plan,
) -> Result<()> {
    let per_log = Segment::per_log(index.segment_size);
    let root = layout::wal_root(server);
    for e in storage.list(&root)? {
        // A name from the listing may hold anything (even multi-byte characters at
        // byte 8): only 16 hex digits can be a `wal/<timeline><log>` directory.
        if !e.is_dir || e.name.len() != 16 || !e.name.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        let (Some(Ok(tli)), Some(Ok(log))) = (
            e.name.get(..8).map(|t| u32::from_str_radix(t, 16)),
            e.name.get(8..).map(|l| u64::from_str_radix(l, 16)),
        ) else {
            continue;
        };
        let past = plan
            .boundary(tli)
            .is_some_and(|b| (log + 1).saturating_mul(per_log) <= b);
        let dir = crate::storage::join(&root, &e.name);
        if past && storage.list(&dir)?.is_empty() {
            storage.remove_dir_all(&dir)?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// cron

/// Run the periodic maintenance of every server (or the configured one): retention
/// when a policy is configured, and removal of aborted backups. Returns one line per
/// action; no lines means nothing needed doing.
pub fn cron(settings: &Settings) -> Result<Vec<String>> {
    let cat = CatalogSettings::from_settings(settings)?;
    let repo = Repository::open(settings)?;
    let names = match &settings.server {
        Some(s) => vec![s.clone()],
        None => server_names(&repo)?,
    };
    let mut lines = Vec::new();
    for name in names {
        let server = repo.server(&name)?;
        let now = Utc::now();
        let report = match cat.retention {
            Some(policy) => expire_server(&repo, &server, settings, &cat, policy, false, now),
            None => remove_aborted_only(&repo, &server, settings, &cat, now),
        };
        let report = match report {
            Ok(r) => r,
            // A running base-backup holds the lock: that is normal, try next time.
            Err(e) if e.kind() == ErrorKind::Locked => {
                crate::log_info!("server {name}: skipped, {e}");
                continue;
            }
            Err(e) => return Err(e.context(format!("server {name}"))),
        };
        lines.extend(action_lines(&report));
    }
    // Uploads a crashed writer left unfinished: invisible to listings, but stored
    // (and billed) until aborted. As old as an aborted backup, none can be running.
    let age = cat.aborted_backup_max_age;
    let aborted = repo.storage().clean_incomplete_uploads(age)?;
    if aborted > 0 {
        lines.push(format!(
            "aborted {aborted} unfinished upload(s) older than {}s",
            age.as_secs()
        ));
    }
    Ok(lines)
}

fn remove_aborted_only(
    repo: &Repository,
    server: &ServerInfo,
    settings: &Settings,
    cat: &CatalogSettings,
    now: DateTime<Utc>,
) -> Result<ExpireReport> {
    let storage = repo.storage();
    let aborted = aborted_backups(storage, &server.name, now, cat.aborted_backup_max_age)?;
    // A base-backup that starts meanwhile waits for this lock (a short one).
    let lock = Lock::acquire_held(repo, settings, &server.name, "cron")?;
    for id in &aborted {
        storage.remove_dir_all(&layout::backup_dir(&server.name, id))?;
    }
    // Their objects, and what interrupted sweeps or rebased deltas left behind.
    let objects = sweep(storage, &server.name, &[])?;
    lock.release();
    Ok(ExpireReport {
        server: server.name.clone(),
        policy: "none".into(),
        minimum_redundancy: cat.minimum_redundancy,
        dry_run: false,
        deleted: Vec::new(),
        kept: Vec::new(),
        aborted_removed: aborted,
        wal: Vec::new(),
        objects,
    })
}

/// One line per action of an expire report ("would" lines for a dry run).
pub fn action_lines(r: &ExpireReport) -> Vec<String> {
    let verb = |done: &str, would: &str| {
        if r.dry_run {
            would.to_string()
        } else {
            done.to_string()
        }
    };
    let mut lines = Vec::new();
    for id in &r.deleted {
        lines.push(format!(
            "server {}: {} backup {id} ({})",
            r.server,
            verb("expired", "would expire"),
            r.policy
        ));
    }
    for id in &r.aborted_removed {
        lines.push(format!(
            "server {}: {} aborted backup directory {id}",
            r.server,
            verb("removed", "would remove")
        ));
    }
    for w in r.wal.iter().filter(|w| w.files > 0) {
        lines.push(format!(
            "server {}: {} {} WAL file(s) of timeline {} ({} to {}, {} stored bytes); WAL from {} on stays",
            r.server,
            verb("removed", "would remove"),
            w.files,
            w.timeline,
            w.first.as_deref().unwrap_or("-"),
            w.last.as_deref().unwrap_or("-"),
            w.stored_size,
            w.keep_from
        ));
    }
    if r.objects.removed > 0 {
        lines.push(format!(
            "server {}: {} {} unreferenced object(s) ({} stored bytes)",
            r.server,
            verb("removed", "would remove"),
            r.objects.removed,
            r.objects.removed_size
        ));
    }
    lines
}

/// An expire report for people: the plan, then the actions.
pub fn render_expire(r: &ExpireReport) -> String {
    let mut out = format!(
        "server {}: policy {}, minimum_redundancy {}{}\n",
        r.server,
        r.policy,
        r.minimum_redundancy,
        if r.dry_run {
            " (dry run: nothing changed)"
        } else {
            ""
        }
    );
    for k in &r.kept {
        let reason = match k.reason {
            Some(KeepReason::Pinned) => "pinned (keep)",
            Some(KeepReason::Redundancy) => "within redundancy",
            Some(KeepReason::InWindow) => "inside the recovery window",
            Some(KeepReason::WindowBase) => "base of the recovery window",
            Some(KeepReason::MinimumRedundancy) => "needed for minimum_redundancy",
            None => "-",
        };
        out.push_str(&format!("keep    {}  {reason}\n", k.id));
    }
    let lines = action_lines(r);
    if lines.is_empty() {
        out.push_str("nothing to remove\n");
    }
    for l in lines {
        out.push_str(&l);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Compression;
    use crate::config::CommonArgs;
    use crate::repo::now_rfc3339;
    use crate::storage::{self, LocalStorage, Overwrite};
    use crate::wal::WalName;

    const MB: u64 = 1 << 20;

    fn settings(root: &std::path::Path) -> Settings {
        let args = CommonArgs {
            repo: Some(root.join("repo").display().to_string()),
            // Unit tests run as root in CI; the root guard has its own test.
            allow_root: true,
            ..Default::default()
        };
        Settings::resolve(&args, None).unwrap()
    }

    fn register(repo: &Repository, name: &str) {
        repo.register_server(&ServerInfo {
            name: name.into(),
            system_identifier: "7300000000000000042".into(),
            pg_version_num: 150010,
            pg_major: 15,
            wal_segment_size: MB,
            block_size: 8192,
            registered: now_rfc3339(),
        })
        .unwrap();
    }

    #[test]
    fn cron_visits_every_server_removes_old_aborted_backups_and_is_then_silent() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path());
        let (repo, _) = Repository::open_or_create(&s, crate::repo::Creation::plain()).unwrap();
        register(&repo, "a");
        register(&repo, "b");
        let st = repo.storage();
        // Old and aborted (no manifest), recent and aborted (maybe still running
        // elsewhere), and a directory that is not a backup id at all.
        for d in ["a/backups/20200101T000000Z/data", "b/backups/not-a-backup"] {
            st.create_dir_all(d).unwrap();
        }
        let recent = BackupId::from_time(Utc::now());
        st.create_dir_all(&layout::backup_dir("b", recent.as_str()))
            .unwrap();
        let lines = cron(&s).unwrap();
        assert_eq!(
            lines,
            ["server a: removed aborted backup directory 20200101T000000Z"]
        );
        assert!(st.stat("a/backups/20200101T000000Z").unwrap().is_none());
        assert!(st.stat("b/backups/not-a-backup").unwrap().is_some());
        assert!(st
            .stat(&layout::backup_dir("b", recent.as_str()))
            .unwrap()
            .is_some());
        assert!(cron(&s).unwrap().is_empty());
        assert_eq!(
            server_names(&repo).unwrap(),
            ["a".to_string(), "b".to_string()]
        );
    }

    #[test]
    fn wal_removal_keeps_history_and_drops_only_dirs_below_the_boundary() {
        let dir = tempfile::tempdir().unwrap();
        let st = LocalStorage::new(dir.path().join("repo"));
        let sha = "0".repeat(64);
        let put = |name: &str| {
            let n = WalName::parse(name).unwrap();
            let d = layout::wal_dir("main", &n);
            st.create_dir_all(&d).unwrap();
            let f = crate::archive::stored_name(&n, &sha, Compression::Zstd);
            st.write_all(&storage::join(&d, &f), b"x", Overwrite::Never)
                .unwrap();
        };
        // Log 0 fully below the boundary (4096 segments of 1 MiB per log), log 1 not.
        let per_log = Segment::per_log(MB);
        for n in [per_log - 2, per_log - 1, per_log, per_log + 5] {
            put(&Segment::from_number(1, n, MB).file_name());
        }
        put("000000010000000000000FF0.00000028.backup");
        put("00000002.history");
        let idx = ArchiveIndex::scan(&st, "main", MB).unwrap();
        let plan = Plan {
            wal_boundary: [(1, per_log + 5)].into(),
            ..Default::default()
        };
        let dry = remove_wal(&DryRun::when(&st, true), "main", &idx, &plan).unwrap();
        assert_eq!(dry[0].files, 4);
        assert_eq!(ArchiveIndex::scan(&st, "main", MB).unwrap().file_count(), 6);
        let done = remove_wal(&st, "main", &idx, &plan).unwrap();
        assert_eq!(done[0].files, 4);
        assert_eq!(done[0].keep_from, "000000010000000100000005");
        let left = ArchiveIndex::scan(&st, "main", MB).unwrap();
        assert_eq!(left.file_count(), 2);
        assert_eq!(left.histories.len(), 1);
        assert!(st.stat("main/wal/0000000100000000").unwrap().is_none());
        assert!(st.stat("main/wal/0000000100000001").unwrap().is_some());
    }
}
