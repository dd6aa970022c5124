//! `pgcellar verify`: re-read every stored file of a backup (size and SHA-256 of the
//! decompressed bytes, streaming) and check that the WAL from the backup's start to
//! the newest archived segment has no gap along its timeline chain.

use crate::archive::timeline::{self, ArchiveIndex, Continuity};
use crate::codec;
use crate::config::Settings;
use crate::error::{ErrorKind, Result};
use crate::repo::manifest::{self, BackupId, FileEntry, Manifest};
use crate::repo::Repository;
use crate::storage::Storage;
use serde::Serialize;
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
    let index = ArchiveIndex::scan(storage, &server.name, server.wal_segment_size)?;
    let mut out = Vec::new();
    for id in ids {
        out.push(verify_one(
            storage,
            &server.name,
            &id,
            &index,
            settings.backup.jobs,
        )?);
    }
    Ok(out)
}

/// Verify one backup against an archive index.
pub fn verify_one(
    storage: &dyn Storage,
    server: &str,
    id: &BackupId,
    index: &ArchiveIndex,
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
    let m = match manifest::load(storage, server, id) {
        Ok(m) => m,
        // A damaged manifest is a finding about this backup, not a reason to stop.
        Err(e) if matches!(e.kind(), ErrorKind::Corrupt | ErrorKind::UnsupportedFormat) => {
            report.problems.push(Problem {
                kind: "manifest_invalid",
                subject: id.to_string(),
                message: e.to_string(),
            });
            return Ok(report);
        }
        Err(e) => return Err(e),
    };
    let (checked, bytes, mut problems) = verify_files(storage, server, &m, jobs)?;
    report.files_checked = checked;
    report.bytes_checked = bytes;
    report.problems.append(&mut problems);
    let wal = backup_wal(storage, index, &m)?;
    for r in &wal.missing {
        report.problems.push(Problem {
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

/// Re-read every file of `m` with `jobs` workers; returns (files, bytes, problems).
fn verify_files(
    storage: &dyn Storage,
    server: &str,
    m: &Manifest,
    jobs: usize,
) -> Result<(u64, u64, Vec<Problem>)> {
    let found: Mutex<Vec<(usize, Problem)>> = Mutex::new(Vec::new());
    let totals: Mutex<(u64, u64)> = Mutex::new((0, 0));
    // Problems are collected, not returned, so every file gets checked.
    crate::util::workers::try_for_each(jobs, &m.files, |i, entry| {
        let (size, problem) = verify_file(storage, server, m, entry);
        if let Ok(mut t) = totals.lock() {
            t.0 += 1;
            t.1 += size;
        }
        if let Some(p) = problem {
            if let Ok(mut f) = found.lock() {
                f.push((i, p));
            }
        }
        Ok(())
    })?;
    let (files, bytes) = totals.into_inner().unwrap_or_default();
    let mut problems = found.into_inner().unwrap_or_default();
    // Manifest order, whatever order the workers finished in.
    problems.sort_by_key(|(i, _)| *i);
    Ok((files, bytes, problems.into_iter().map(|(_, p)| p).collect()))
}

/// Check one file; returns the bytes hashed and the problem, if any.
fn verify_file(
    storage: &dyn Storage,
    server: &str,
    m: &Manifest,
    entry: &FileEntry,
) -> (u64, Option<Problem>) {
    let path = m.stored_path(server, entry);
    let problem = |kind, message: String| Problem {
        kind,
        subject: entry.path.clone(),
        message,
    };
    let mut input = match storage.open_read(&path) {
        Ok(r) => r,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return (
                0,
                Some(problem(
                    "file_missing",
                    format!("{} (stored as {path}) is missing", entry.path),
                )),
            )
        }
        Err(e) => return (0, Some(problem("file_unreadable", e.to_string()))),
    };
    let stats = match codec::decode(&mut input, &mut io::sink(), m.compression) {
        Ok(s) => s,
        Err(e) => {
            return (
                0,
                Some(problem(
                    "file_unreadable",
                    format!(
                        "{} (stored as {path}) cannot be decompressed: {e}",
                        entry.path
                    ),
                )),
            )
        }
    };
    if stats.size != entry.size {
        return (
            stats.size,
            Some(problem(
                "size_mismatch",
                format!(
                    "{} has {} bytes, the manifest says {}",
                    entry.path, stats.size, entry.size
                ),
            )),
        );
    }
    if stats.sha256 != entry.sha256 {
        return (
            stats.size,
            Some(problem(
                "checksum_mismatch",
                format!(
                    "{} hashes to {}, the manifest says {}",
                    entry.path,
                    &stats.sha256[..12],
                    &entry.sha256[..entry.sha256.len().min(12)]
                ),
            )),
        );
    }
    (stats.size, None)
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
