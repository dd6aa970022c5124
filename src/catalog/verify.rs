//! `pgcellar verify`: re-read every object a backup needs (presence, stored size,
//! SHA-256 of the decompressed bytes against its name, streaming), rebuild every file
//! made of page deltas against its whole-file SHA-256, and check that the WAL from the backup's start to
//! the newest archived segment has no gap along its timeline chain. A missing or
//! corrupt object is reported with every complete backup that references it (all
//! manifests are read once for that), since objects are shared.

use crate::archive::timeline::{self, ArchiveIndex, Continuity};
use crate::config::Settings;
use crate::error::{ErrorKind, Result};
use crate::repo::manifest::{self, BackupId, FileEntry, Manifest, ObjectRef};
use crate::repo::objects::{check_rebuilt, rebuild, ObjectStore};
use crate::repo::Repository;
use crate::storage::Storage;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::Mutex;

/// One problem found by `verify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// Machine-readable kind: `file_missing`, `file_unreadable`, `size_mismatch`,
    /// `checksum_mismatch`, `wal_missing`, `history_missing`, `manifest_invalid`.
    pub kind: &'static str,
    /// The manifest path, WAL file or backup concerned.
    pub subject: String,
    /// Human explanation.
    pub message: String,
    /// Complete backups this problem breaks, oldest first: for a missing or damaged
    /// object every backup whose manifest references it; otherwise the backup verified.
    pub breaks: Vec<String>,
}

/// For each object (its name below `objects/`), the complete backups that reference
/// it, oldest first.
#[derive(Debug, Clone, Default)]
pub struct References(HashMap<String, Vec<String>>);

impl References {
    /// The references of the manifests `ms` (oldest first).
    pub fn of<'m>(ms: impl IntoIterator<Item = &'m Manifest>) -> References {
        let mut map: HashMap<String, Vec<String>> = HashMap::new();
        for m in ms {
            for o in m.files.iter().flat_map(FileEntry::all_objects) {
                let ids = map.entry(o.name()).or_default();
                if ids.last().map(String::as_str) != Some(m.id.as_str()) {
                    ids.push(m.id.to_string());
                }
            }
        }
        References(map)
    }

    /// The backups that reference `object`.
    pub fn of_object(&self, object: &ObjectRef) -> &[String] {
        self.0.get(&object.name()).map_or(&[], Vec::as_slice)
    }
}

/// What `verify` found for one backup.
#[derive(Debug, Clone, Serialize)]
pub struct BackupVerification {
    /// Backup id.
    pub id: String,
    /// Files re-read.
    pub files_checked: u64,
    /// Original bytes re-read and hashed.
    pub bytes_checked: u64,
    /// WAL continuity from the backup's start onward (absent if the manifest is unreadable).
    pub wal: Option<Continuity>,
    /// Every problem, files first.
    pub problems: Vec<Problem>,
    /// Whether there is no problem.
    pub ok: bool,
}

impl BackupVerification {
    /// Whether the backup passed.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Which backups to verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// One backup (an id, `latest` or `oldest`).
    One(String),
    /// Every complete backup.
    All,
}

/// Verify the selected backups of the configured server.
pub fn run(settings: &Settings, which: &Selection) -> Result<Vec<BackupVerification>> {
    let (repo, server) = Repository::open_server(settings)?;
    let storage = repo.storage();
    let ids = match which {
        Selection::One(spec) => vec![manifest::resolve(storage, &server.name, spec)?],
        Selection::All => manifest::list_ids(storage, &server.name)?,
    };
    // Every manifest once: whichever backup is verified, a bad object is reported
    // with all the backups it breaks. One that cannot be read is a finding (of its
    // own verify, with --all) and references nothing here.
    let mut manifests = Vec::new();
    for id in manifest::list_ids(storage, &server.name)? {
        manifests.push((id.clone(), load_for_verify(storage, &server.name, &id)?));
    }
    let refs = References::of(manifests.iter().filter_map(|(_, m)| m.as_ref().ok()));
    let mut index = ArchiveIndex::scan(storage, &server.name, server.wal_segment_size)?;
    // verify waits for in-flight pushes at most once per run (see settle_head_gaps).
    let mut waited = false;
    let mut out = Vec::new();
    for id in ids {
        let loaded = match manifests.iter().position(|(m_id, _)| *m_id == id) {
            Some(i) => manifests.swap_remove(i).1,
            // Completed after the listing above.
            None => load_for_verify(storage, &server.name, &id)?,
        };
        out.push(verify_loaded(
            storage,
            &server.name,
            &id,
            loaded,
            &refs,
            (&mut index, &mut waited),
            settings.backup.jobs,
        )?);
    }
    Ok(out)
}

/// A manifest, or the problem that it cannot be read (other errors stop `verify`).
fn load_for_verify(
    storage: &dyn Storage,
    server: &str,
    id: &BackupId,
) -> Result<std::result::Result<Manifest, Problem>> {
    match manifest::load(storage, server, id) {
        Ok(m) => Ok(Ok(m)),
        // A damaged manifest is a finding about this backup, not a reason to stop.
        Err(e) if matches!(e.kind(), ErrorKind::Corrupt | ErrorKind::UnsupportedFormat) => {
            Ok(Err(Problem {
                kind: "manifest_invalid",
                subject: id.to_string(),
                message: e.to_string(),
                breaks: vec![id.to_string()],
            }))
        }
        Err(e) => Err(e),
    }
}

/// Verify one backup, whose manifest was loaded (or found unreadable), against an
/// archive index (and whether this run already waited for pushes in flight, see
/// [`settle_head_gaps`]); `refs` names the backups each object belongs to.
fn verify_loaded(
    storage: &dyn Storage,
    server: &str,
    id: &BackupId,
    loaded: std::result::Result<Manifest, Problem>,
    refs: &References,
    (index, waited): (&mut ArchiveIndex, &mut bool),
    jobs: usize,
) -> Result<BackupVerification> {
    let mut report = BackupVerification {
        id: id.to_string(),
        files_checked: 0,
        bytes_checked: 0,
        wal: None,
        problems: Vec::new(),
        ok: false,
    };
    let m = match loaded {
        Ok(m) => m,
        Err(p) => {
            report.problems.push(p);
            return Ok(report);
        }
    };
    let (checked, bytes, mut problems) = verify_files(storage, server, &m, refs, jobs)?;
    report.files_checked = checked;
    report.bytes_checked = bytes;
    report.problems.append(&mut problems);
    let first = backup_wal(storage, index, &m)?;
    let wal = settle_head_gaps(storage, server, (index, waited), &m, first)?;
    let this = vec![id.to_string()];
    for r in &wal.missing {
        report.problems.push(Problem {
            breaks: this.clone(),
            kind: "wal_missing",
            subject: r.first.clone(),
            message: if r.count == 1 {
                format!("WAL segment {} is not in the archive", r.first)
            } else {
                format!(
                    "{} WAL segments {} to {} are not in the archive",
                    r.count, r.first, r.last
                )
            },
        });
    }
    for h in &wal.missing_history {
        report.problems.push(Problem {
            breaks: this.clone(),
            kind: "history_missing",
            subject: h.clone(),
            message: format!("timeline history file {h} is not in the archive"),
        });
    }
    report.wal = Some(wal);
    report.ok = report.ok();
    Ok(report)
}

/// WAL continuity for backup `m`: from its start WAL to its stop WAL at least, and on
/// to the newest segment along its timeline chain.
pub fn backup_wal(storage: &dyn Storage, index: &ArchiveIndex, m: &Manifest) -> Result<Continuity> {
    let (tli, from) = timeline::segno_of(&m.start_wal, index.segment_size)?;
    let (_, to) = timeline::segno_of(&m.stop_wal, index.segment_size)?;
    timeline::continuity(storage, index, tli, from, to)
}

/// How far below the newest archived segment a gap may be a push still in flight:
/// look-ahead stores later segments while the archiver's own call is running.
const HEAD_WINDOW: u64 = 64;

/// How long verify waits for such a gap to fill before reporting it.
const IN_FLIGHT_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

/// A gap after the backup's stop WAL and close to the newest segment may be
/// look-ahead pushes that are running right now, not a hole: look again for up to
/// [`IN_FLIGHT_WAIT`] before reporting it. Only the segments up to the horizon of the
/// first look are judged, so a busy archive's new head cannot keep verify waiting. It
/// waits once per run: the index it re-read serves the backups verified after it.
fn settle_head_gaps(
    storage: &dyn Storage,
    server: &str,
    (index, waited): (&mut ArchiveIndex, &mut bool),
    m: &Manifest,
    wal: Continuity,
) -> Result<Continuity> {
    let size = index.segment_size;
    let (_, stop) = timeline::segno_of(&m.stop_wal, size)?;
    let (_, horizon) = timeline::segno_of(&wal.last, size)?;
    let near_head = |c: &Continuity| -> Result<bool> {
        for r in &c.missing {
            let (_, first) = timeline::segno_of(&r.first, size)?;
            if first <= stop || first + HEAD_WINDOW < horizon {
                return Ok(false);
            }
        }
        Ok(!c.missing.is_empty() && c.missing_history.is_empty())
    };
    if *waited || !near_head(&wal)? {
        return Ok(wal);
    }
    *waited = true;
    crate::log_info!(
        "backup {}: WAL {} is not in the archive yet, close to its newest segment; \
         waiting up to {}s in case it is being pushed",
        m.id,
        wal.missing.first().map_or("", |r| r.first.as_str()),
        IN_FLIGHT_WAIT.as_secs()
    );
    let deadline = std::time::Instant::now() + IN_FLIGHT_WAIT;
    let mut current = wal;
    while std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_secs(1));
        *index = ArchiveIndex::scan(storage, server, size)?;
        let mut again = backup_wal(storage, index, m)?;
        // Gaps past the first look's horizon are the archive moving on, not ours.
        let mut within = Vec::new();
        for r in again.missing.drain(..) {
            if timeline::segno_of(&r.first, size)?.1 <= horizon {
                within.push(r);
            }
        }
        again.missing = within;
        let done = again.complete();
        current = again;
        if done || !near_head(&current)? {
            break;
        }
    }
    Ok(current)
}

/// Re-read every object of `m` (each once, with `jobs` workers) and rebuild every
/// file made of a base and deltas; returns (files, bytes, problems).
fn verify_files(
    storage: &dyn Storage,
    server: &str,
    m: &Manifest,
    refs: &References,
    jobs: usize,
) -> Result<(u64, u64, Vec<Problem>)> {
    let store = ObjectStore::new(storage, server);
    let mut unique: Vec<&ObjectRef> = Vec::new();
    let mut seen = HashSet::new();
    for o in m.files.iter().flat_map(FileEntry::all_objects) {
        if seen.insert(o.name()) {
            unique.push(o);
        }
    }
    let bad: Mutex<HashMap<String, Problem>> = Mutex::new(HashMap::new());
    let bytes = Mutex::new(0u64);
    crate::util::workers::try_for_each(jobs, &unique, |_, o| {
        let (n, problem) = verify_object(&store, o, m, refs);
        if let Ok(mut b) = bytes.lock() {
            *b += n;
        }
        if let (Some(p), Ok(mut b)) = (problem, bad.lock()) {
            b.insert(o.name(), p);
        }
        Ok(())
    })?;
    let bad = bad.into_inner().unwrap_or_default();
    let found: Mutex<Vec<(usize, Problem)>> = Mutex::new(Vec::new());
    // Problems are collected, not returned, so every file gets checked.
    crate::util::workers::try_for_each(jobs, &m.files, |i, entry| {
        let problem = match entry.all_objects().find_map(|o| bad.get(&o.name())) {
            Some(p) => Some(Problem {
                subject: entry.path.clone(),
                message: format!("{}: {}", entry.path, p.message),
                ..p.clone()
            }),
            None => verify_file(&store, m, entry),
        };
        if let (Some(p), Ok(mut f)) = (problem, found.lock()) {
            f.push((i, p));
        }
        Ok(())
    })?;
    let mut problems = found.into_inner().unwrap_or_default();
    // Manifest order, whatever order the workers finished in.
    problems.sort_by_key(|(i, _)| *i);
    let bytes = bytes.into_inner().unwrap_or_default();
    Ok((
        m.files.len() as u64,
        bytes,
        problems.into_iter().map(|(_, p)| p).collect(),
    ))
}

/// Check one object of backup `m`: present, of its recorded stored size, and hashing
/// to its id. Returns the bytes hashed and the problem, if any, naming every backup
/// that references the object.
fn verify_object(
    store: &ObjectStore<'_>,
    o: &ObjectRef,
    m: &Manifest,
    refs: &References,
) -> (u64, Option<Problem>) {
    let path = o.path(store.server());
    let mut breaks = refs.of_object(o).to_vec();
    if !breaks.iter().any(|b| b == m.id.as_str()) {
        // Completed after the references were gathered.
        breaks.push(m.id.to_string());
        breaks.sort();
    }
    let problem = |kind, message: String| Problem {
        kind,
        subject: path.clone(),
        message: format!("{message}; it breaks backup(s) {}", breaks.join(", ")),
        breaks: breaks.clone(),
    };
    match store.storage().stat(&path) {
        Ok(Some(info)) if info.size != o.stored_size => {
            return (
                0,
                Some(problem(
                    "size_mismatch",
                    format!(
                        "object {path} has {} stored bytes, the manifest says {}",
                        info.size, o.stored_size
                    ),
                )),
            )
        }
        Ok(Some(_)) => {}
        Ok(None) => {
            return (
                0,
                Some(problem("file_missing", format!("object {path} is missing"))),
            )
        }
        Err(e) => return (0, Some(problem("file_unreadable", e.to_string()))),
    }
    let mut input = match store.open(o) {
        Ok(r) => r,
        Err(e) => return (0, Some(problem("file_unreadable", e.to_string()))),
    };
    if let Err(e) = io::copy(&mut input, &mut io::sink()) {
        return (
            0,
            Some(problem(
                "file_unreadable",
                format!("object {path} cannot be decompressed: {e}"),
            )),
        );
    }
    let (_, hashed) = input.finish();
    if hashed.sha256 != o.id {
        return (
            hashed.size,
            Some(problem(
                "checksum_mismatch",
                format!(
                    "object {path} hashes to {}, not to its name",
                    hashed.sha256.get(..12).unwrap_or("")
                ),
            )),
        );
    }
    (hashed.size, None)
}

/// Check that one file's (sound) objects make the file its manifest entry describes.
fn verify_file(store: &ObjectStore<'_>, m: &Manifest, entry: &FileEntry) -> Option<Problem> {
    let problem = |kind, message: String| Problem {
        kind,
        subject: entry.path.clone(),
        message,
        breaks: vec![m.id.to_string()],
    };
    if let [base] = entry.objects.as_slice() {
        // A whole-file object is named by the file's SHA-256, already checked above.
        return (base.id != entry.sha256).then(|| {
            problem(
                "checksum_mismatch",
                format!("{}: its object is not named by its SHA-256", entry.path),
            )
        });
    }
    let got = match rebuild(store, entry, &mut io::sink()) {
        Ok(h) => h,
        Err(e) => return Some(problem("file_unreadable", e.to_string())),
    };
    if got.size != entry.size {
        return Some(problem(
            "size_mismatch",
            format!(
                "{} rebuilds to {} bytes, the manifest says {}",
                entry.path, got.size, entry.size
            ),
        ));
    }
    check_rebuilt(entry, &got, m.id.as_str())
        .err()
        .map(|e| problem("checksum_mismatch", e.to_string()))
}

/// The reports for people: one block per backup, one line per problem.
pub fn render(reports: &[BackupVerification]) -> String {
    let mut out = String::new();
    for r in reports {
        let wal = match &r.wal {
            Some(c) => format!(
                "WAL {} to {} ({} segment(s), timeline(s) {})",
                c.first,
                c.last,
                c.segments,
                c.timelines
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(" -> ")
            ),
            None => "WAL not checked".to_string(),
        };
        out.push_str(&format!(
            "backup {}: {}: {} file(s), {} byte(s) re-read; {}\n",
            r.id,
            if r.ok() { "OK" } else { "FAILED" },
            r.files_checked,
            r.bytes_checked,
            wal
        ));
        for p in &r.problems {
            out.push_str(&format!("  {}: {}\n", p.kind, p.message));
        }
    }
    if reports.is_empty() {
        out.push_str("no backup to verify\n");
    }
    out
}
