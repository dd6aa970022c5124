//! Look-ahead `wal-push` (DESIGN.md section 5).
//!
//! PostgreSQL archives one segment per `archive_command` call, serially. When
//! `wal-push` is called for segment N from the data directory (`%p` is
//! `pg_wal/NAME`), the other segments already marked `pg_wal/archive_status/*.ready`
//! are complete and waiting for their own call. We push up to `push_lookahead` of
//! them (oldest first, which is the archiver's order), in parallel, once N itself is
//! stored (their failures never reach N's exit status), and after
//! each one's repository commit is durable we write a *record* (name, size, mtime,
//! SHA-256, repository, server) into a local status directory. When PostgreSQL later
//! calls us for such a segment, we re-hash the file it hands over; only when name,
//! size, mtime and SHA-256 all match the record, for the same repository and
//! server, do we return success without touching the repository.
//!
//! Safety argument:
//! - A record is written only after `push_source` returned, i.e. after the stored
//!   file and its directory entry were fsynced; so a trusted record implies the
//!   bytes PostgreSQL hands over are durably archived (same SHA-256).
//! - Anything else (no record, unreadable record, any field differing) falls back
//!   to the normal push, which itself refuses to overwrite different content.
//! - `archive_status` is only read, never written: PostgreSQL owns it.
//! - The exit status is decided by the file we were called for; failures of the
//!   look-ahead batch are logged at `-v` and left for the later, real call.
//! - Everything runs inside the one process and is joined before it exits: no daemon.
//!
//! Known limit: a record is trusted without contacting the repository (that is the
//! point: no SSH handshake). If the repository is deleted or replaced under the same
//! URL while records exist for segments still `.ready`, those few segments (at most
//! `push_lookahead`) would be acknowledged without being in the new repository.
//! Delete the status directory whenever the repository is re-created.

use crate::archive::localdir;
use crate::archive::push::{push_overlapped, push_source, PushOutcome, WalSource};
use crate::codec::{self, Codec};
use crate::config::{LookaheadSettings, Settings};
use crate::error::{IoContext, Result};
use crate::repo::{Repository, ServerInfo};
use crate::storage::{self, Storage};
use crate::wal::{WalKind, WalName};
use crate::{log_debug, log_info};
use serde::{Deserialize, Serialize};
use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// What a look-ahead record holds: enough to recognise the exact file again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushRecord {
    /// WAL file name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, seconds since the epoch.
    pub mtime_sec: i64,
    /// Nanoseconds part of the modification time.
    pub mtime_nsec: i64,
    /// SHA-256 of the whole file.
    pub sha256: String,
    /// Repository it was pushed to (its URL as shown in messages).
    pub repo: String,
    /// Server name in that repository.
    pub server: String,
    /// When it was pushed (RFC 3339).
    pub pushed: String,
}

/// Size and mtime of a file, as recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    size: u64,
    mtime_sec: i64,
    mtime_nsec: i64,
}

fn stamp(path: &Path) -> Result<Stamp> {
    let m = fs::metadata(path).io_context(|| format!("stat {}", path.display()))?;
    Ok(Stamp {
        size: m.len(),
        mtime_sec: m.mtime(),
        mtime_nsec: m.mtime_nsec(),
    })
}

/// Look-ahead state for one call: the `pg_wal` directory and the status directory.
pub struct Lookahead {
    pg_wal: PathBuf,
    status: PathBuf,
    repo: String,
    server: String,
    count: usize,
    parallel: usize,
}

/// What happened to the file `wal-push` was called for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileOutcome {
    /// Pushed now (or found identical in the repository).
    Pushed(PushOutcome),
    /// Pushed earlier by a look-ahead batch; its record matched the file.
    Recorded {
        /// SHA-256 of the file (equal to the record's).
        sha256: String,
    },
}

/// Counts of one look-ahead batch, for the log.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchReport {
    /// Segments compressed and stored.
    pub stored: usize,
    /// Segments found already archived with identical content.
    pub already: usize,
    /// Segments that failed (left for their own call).
    pub failed: usize,
}

impl Lookahead {
    /// Look-ahead for a call on `wal_path`, or `None` when it is off, the path is not
    /// `pg_wal/NAME` next to an `archive_status` directory, or the status directory
    /// cannot be created (then the plain push runs; the reason is logged at `-v`).
    pub fn prepare(
        wal_path: &Path,
        settings: &Settings,
        opts: &LookaheadSettings,
    ) -> Option<Lookahead> {
        if opts.count == 0 {
            return None;
        }
        let pg_wal = wal_path.parent()?.to_path_buf();
        let data_dir = localdir::data_dir_of(wal_path)?;
        if !pg_wal.join("archive_status").is_dir() {
            return None;
        }
        let repo = settings.repo.as_ref()?.to_string();
        let server = settings.server.clone()?;
        let base = match &opts.status_dir {
            Some(d) => d.clone(),
            None => localdir::beside(&data_dir, "pgcellar-status")?,
        };
        // One subdirectory per server, so a shared configured directory stays unambiguous.
        let status = base.join(&server);
        if let Err(e) = localdir::create_private_dir(&status) {
            log_info!("look-ahead off for this call: {e}");
            return None;
        }
        Some(Lookahead {
            pg_wal,
            status,
            repo,
            server,
            count: opts.count,
            parallel: opts.parallel,
        })
    }

    /// The status directory in use.
    pub fn status_dir(&self) -> &Path {
        &self.status
    }

    fn record_file(&self, name: &str) -> PathBuf {
        self.status.join(format!("{name}.json"))
    }

    fn read_record(&self, name: &str) -> Option<PushRecord> {
        let bytes = fs::read(self.record_file(name)).ok()?;
        let rec: PushRecord = serde_json::from_slice(&bytes).ok()?;
        (rec.name == name && rec.repo == self.repo && rec.server == self.server).then_some(rec)
    }

    fn forget(&self, name: &str) {
        let _ = fs::remove_file(self.record_file(name));
    }

    /// If a record vouches for exactly this file, its SHA-256. The file is re-hashed:
    /// a record is a claim about bytes, and only the bytes can confirm it.
    pub fn trusted(&self, name: &WalName, path: &Path) -> Option<String> {
        let rec = self.read_record(name.as_str())?;
        let verdict = (|| -> Result<Option<String>> {
            let st = stamp(path)?;
            if st.size != rec.size
                || st.mtime_sec != rec.mtime_sec
                || st.mtime_nsec != rec.mtime_nsec
            {
                return Ok(None);
            }
            let mut f = File::open(path).io_context(|| format!("opening {}", path.display()))?;
            let (sha, size) = codec::hash(&codec::ContentHash::Sha256, &[], &mut f)
                .io_context(|| format!("reading {}", path.display()))?;
            Ok((size == rec.size && sha == rec.sha256).then_some(sha))
        })();
        match verdict {
            Ok(Some(sha)) => Some(sha),
            Ok(None) => {
                log_info!(
                    "look-ahead record of {name} does not match the file; pushing it normally"
                );
                self.forget(name.as_str());
                None
            }
            Err(e) => {
                log_info!("cannot check look-ahead record of {name}: {e}; pushing it normally");
                None
            }
        }
    }

    /// Segments marked `.ready`, in archiver order (by name), other than `current`.
    fn ready_segments(&self, current: &WalName) -> Vec<WalName> {
        let dir = self.pg_wal.join("archive_status");
        let Ok(rd) = fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut out: Vec<WalName> = rd
            .flatten()
            .filter_map(|e| {
                let n = e.file_name();
                let stem = n.to_str()?.strip_suffix(".ready")?;
                let name = WalName::parse(stem).ok()?;
                // Only whole segments: history/partial/backup files are rare and small.
                (name.kind() == WalKind::Segment && &name != current).then_some(name)
            })
            .collect();
        out.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        out
    }

    /// Up to `count` ready segments that have no record matching their current
    /// size and mtime yet (a full check happens at their own call).
    pub fn candidates(&self, current: &WalName) -> Vec<WalName> {
        let mut out = Vec::new();
        for name in self.ready_segments(current) {
            if out.len() >= self.count {
                break;
            }
            let path = self.pg_wal.join(name.as_str());
            let Ok(st) = stamp(&path) else { continue };
            match self.read_record(name.as_str()) {
                Some(r)
                    if r.size == st.size
                        && r.mtime_sec == st.mtime_sec
                        && r.mtime_nsec == st.mtime_nsec => {}
                _ => out.push(name),
            }
        }
        out
    }

    /// Remove records of segments that are no longer `.ready` (archived, or gone).
    pub fn prune(&self) {
        let Ok(rd) = fs::read_dir(&self.status) else {
            return;
        };
        let status = self.pg_wal.join("archive_status");
        for e in rd.flatten() {
            let n = e.file_name();
            let Some(n) = n.to_str() else { continue };
            // Temporary names belong to a writer that may still be alive; they are
            // left to remove_orphan_temps, which checks the owner's pid.
            if n.starts_with(storage::TEMP_PREFIX) {
                continue;
            }
            if let Some(stem) = n.strip_suffix(".json") {
                if !status.join(format!("{stem}.ready")).exists() {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        localdir::remove_orphan_temps(&self.status);
    }

    /// Push one segment ahead of its call and record it once durable.
    fn push_ahead(
        &self,
        storage: &dyn Storage,
        server: &ServerInfo,
        name: &WalName,
        codec: Codec,
    ) -> Result<PushOutcome> {
        let path = self.pg_wal.join(name.as_str());
        // Stat before reading: if the file changed later, the record cannot match.
        let st = stamp(&path)?;
        let mut src = WalSource::open(&path, server)?;
        let outcome = push_source(storage, server, &mut src, codec)?;
        crate::util::fault::lookahead_abort_after_commit();
        // The record is checked later without the repository (or its key): plain SHA-256.
        let sha256 = match &outcome {
            PushOutcome::Stored { content_sha256, .. }
            | PushOutcome::AlreadyArchived { content_sha256, .. } => content_sha256.clone(),
        };
        let rec = PushRecord {
            name: name.to_string(),
            size: st.size,
            mtime_sec: st.mtime_sec,
            mtime_nsec: st.mtime_nsec,
            sha256,
            repo: self.repo.clone(),
            server: self.server.clone(),
            pushed: crate::repo::now_rfc3339(),
        };
        let json = crate::repo::to_json(&rec)?;
        localdir::write_atomic(&self.status, &format!("{name}.json"), &json)?;
        Ok(outcome)
    }

    /// Push `names` with `workers` threads; failures are logged and counted only.
    pub fn push_batch(
        &self,
        storage: &dyn Storage,
        server: &ServerInfo,
        codec: Codec,
        names: &[WalName],
        workers: usize,
    ) -> BatchReport {
        let batch = Batch::new(names);
        std::thread::scope(|s| {
            for _ in 0..workers.clamp(1, names.len().max(1)) {
                s.spawn(|| batch.work(self, storage, server, codec));
            }
        });
        batch.report()
    }
}

/// A shared queue of segments to push ahead; any thread may take the next one.
struct Batch<'a> {
    names: &'a [WalName],
    next: AtomicUsize,
    report: Mutex<BatchReport>,
}

impl<'a> Batch<'a> {
    fn new(names: &'a [WalName]) -> Self {
        Batch {
            names,
            next: AtomicUsize::new(0),
            report: Mutex::new(BatchReport::default()),
        }
    }

    /// Take and push segments until none are left.
    fn work(&self, la: &Lookahead, storage: &dyn Storage, server: &ServerInfo, codec: Codec) {
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            let Some(name) = self.names.get(i) else { break };
            let r = la.push_ahead(storage, server, name, codec);
            let mut rep = self.report.lock().unwrap_or_else(|p| p.into_inner());
            match r {
                Ok(PushOutcome::Stored { .. }) => {
                    rep.stored += 1;
                    log_debug!("look-ahead stored {name}");
                }
                Ok(PushOutcome::AlreadyArchived { .. }) => rep.already += 1,
                Err(e) => {
                    rep.failed += 1;
                    log_info!("look-ahead push of {name} failed (its own call will retry): {e}");
                }
            }
        }
    }

    fn report(&self) -> BatchReport {
        *self.report.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// `wal-push` with look-ahead: archive `wal_path` (whose result alone decides the
/// exit status) and, when possible, other ready segments alongside it.
pub fn push_file(
    settings: &Settings,
    opts: &LookaheadSettings,
    wal_path: &Path,
) -> Result<(FileOutcome, BatchReport)> {
    let la = Lookahead::prepare(wal_path, settings, opts);
    let name = wal_path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| WalName::parse(n).ok());
    if let (Some(la), Some(name)) = (&la, &name) {
        if let Some(sha256) = la.trusted(name, wal_path) {
            // Decided: the file is archived. Push ahead only when a batch shares one
            // repository connection between several segments; a single one would cost
            // its own call's handshake now plus a re-hash later.
            la.forget(name.as_str());
            let pending = la.candidates(name);
            let mut report = BatchReport::default();
            if pending.len() >= la.parallel.max(2) {
                match Repository::open_server(settings) {
                    Ok((repo, server)) => {
                        report = la.push_batch(
                            repo.storage(),
                            &server,
                            settings.codec,
                            &pending,
                            la.parallel,
                        );
                    }
                    Err(e) => log_info!("look-ahead skipped: {e}"),
                }
            }
            la.prune();
            return Ok((FileOutcome::Recorded { sha256 }, report));
        }
    }
    // The repository opens (an SSH handshake) while the file is already compressed.
    let pushed = push_overlapped(wal_path, settings.codec, || {
        Repository::open_server(settings)
    });
    let (Some(la), Some(name)) = (la, name) else {
        let (outcome, _, _) = pushed?;
        return Ok((FileOutcome::Pushed(outcome), BatchReport::default()));
    };
    // A stale record of this very file must not outlive a normal push's verdict.
    la.forget(name.as_str());
    let (outcome, repo, server) = pushed?;
    // The batch runs once the requested file is safe; its results never change the
    // exit status.
    let pending = la.candidates(&name);
    let report = la.push_batch(
        repo.storage(),
        &server,
        settings.codec,
        &pending,
        la.parallel,
    );
    la.prune();
    Ok((FileOutcome::Pushed(outcome), report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_reject_unknown_fields() {
        let rec = PushRecord {
            name: "000000010000000000000001".into(),
            size: 16 << 20,
            mtime_sec: 1,
            mtime_nsec: 2,
            sha256: "a".repeat(64),
            repo: "/r".into(),
            server: "main".into(),
            pushed: "2026-11-23T00:00:00Z".into(),
        };
        let json = crate::repo::to_json(&rec).unwrap();
        assert_eq!(serde_json::from_slice::<PushRecord>(&json).unwrap(), rec);
        let mut v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        v["extra"] = serde_json::Value::Bool(true);
        assert!(serde_json::from_value::<PushRecord>(v).is_err());
    }
}
