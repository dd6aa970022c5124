//! Prefetching `wal-get` (DESIGN.md section 5).
//!
//! Recovery asks for one segment per `restore_command` call, serially. When
//! `wal-get` must go to the repository for segment N, it also fetches the next
//! `prefetch` segments of the same timeline, in parallel, into a spool directory
//! outside the data directory. Each lands as `<name>-<sha256>` through a temporary
//! name, only after its SHA-256 matched the repository's; a later call for one of
//! them re-hashes the spooled file and moves it into place without touching the
//! repository. A spool file that fails the re-check is deleted and the segment is
//! fetched normally.
//!
//! Correctness rules:
//! - Spooled files are found by their exact WAL name, which includes the timeline,
//!   so a segment of another timeline is never served. Only segment requests use the
//!   spool; `.history`, `.partial` and `.backup` requests never read it nor prefetch.
//! - The spool remembers which repository and server filled it (`origin.json`); a
//!   different one empties it first. Archived names are immutable in a repository,
//!   so a spooled file stays the right content for its name.
//! - The exit status is decided only by the requested file: prefetch failures are
//!   logged at `-v` and otherwise ignored; a not-archived N returns before any
//!   prefetch.
//! - The spool is cleaned of segments older than the request (and of temporary files
//!   of dead processes) on every call, and never grows beyond `spool_max_bytes`.
//!
//! Why synchronous: the prefetch threads are joined before `wal-get` exits. A
//! detached prefetcher would overlap downloads with replay, but it would be a
//! daemon in all but name: it could still be writing after recovery ended, the
//! cluster was promoted or its directory removed, and the next call would have to
//! coordinate with it. Joined threads keep every call bounded (by the storage
//! timeouts) and leave nothing running; the speed-up comes from fetching K+1
//! segments in parallel over one connection (one SSH handshake and one directory
//! listing per batch instead of per segment), after which K calls cost only a
//! local hash and rename.

use crate::archive::{self, StoredWal};
use crate::codec::{self, Compression};
use crate::config::Settings;
use crate::error::{Error, IoContext, Result};
use crate::localdir;
use crate::repo::{layout, Repository};
use crate::storage::{self, Storage, TEMP_PREFIX};
use crate::wal::{Segment, WalKind, WalName};
use crate::{log_debug, log_info};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// wal-get's prefetch options (flag > env > file > default).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct PrefetchArgs {
    /// Also fetch up to N following segments into the spool (0 turns prefetch off)
    #[arg(long, env = "PGCELLAR_PREFETCH", value_name = "N")]
    pub prefetch: Option<u32>,
    /// Threads fetching in parallel
    #[arg(long, env = "PGCELLAR_PREFETCH_PARALLEL", value_name = "N")]
    pub prefetch_parallel: Option<u32>,
    /// Spool directory (default: <data dir>.pgcellar-spool beside the data directory)
    #[arg(long, env = "PGCELLAR_SPOOL_DIR", value_name = "DIR")]
    pub spool_dir: Option<PathBuf>,
    /// Upper bound of the spool's size in bytes
    #[arg(long, env = "PGCELLAR_SPOOL_MAX_BYTES", value_name = "BYTES")]
    pub spool_max_bytes: Option<u64>,
}

/// Resolved prefetch settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefetchSettings {
    /// Segments fetched ahead per repository visit; 0 = off.
    pub count: usize,
    /// Threads (including the one fetching the requested file).
    pub parallel: usize,
    /// Explicit spool directory, else derived from the data directory.
    pub spool_dir: Option<PathBuf>,
    /// Size bound of the spool.
    pub max_bytes: u64,
}

/// Default prefetch depth: 8 segments (128 MiB at the default size) per visit.
pub const DEFAULT_PREFETCH: u32 = 8;
/// Default fetch threads: downloads wait mostly on the network and decompression is
/// cheap, so more threads than cores pay off.
pub const DEFAULT_PARALLEL: u32 = 4;
/// Default spool bound: 1 GiB.
pub const DEFAULT_SPOOL_MAX: u64 = 1 << 30;

impl PrefetchSettings {
    /// Resolve flags/env over the configuration file over defaults.
    pub fn resolve(args: &PrefetchArgs, settings: &Settings) -> Result<PrefetchSettings> {
        let f = &settings.file;
        let count = args.prefetch.or(f.prefetch).unwrap_or(DEFAULT_PREFETCH) as usize;
        let parallel = localdir::positive(
            args.prefetch_parallel
                .or(f.prefetch_parallel)
                .unwrap_or(DEFAULT_PARALLEL),
            &settings.key_in_file("prefetch_parallel"),
        )?;
        let spool_dir = args.spool_dir.clone().or(f.spool_dir.clone());
        if let Some(d) = &spool_dir {
            if !d.is_absolute() {
                return Err(Error::config(format!(
                    "{}: {} must be an absolute path",
                    settings.key_in_file("spool_dir"),
                    d.display()
                )));
            }
        }
        Ok(PrefetchSettings {
            count,
            parallel,
            spool_dir,
            max_bytes: args
                .spool_max_bytes
                .or(f.spool_max_bytes)
                .unwrap_or(DEFAULT_SPOOL_MAX),
        })
    }
}

/// Who filled a spool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Origin {
    repo: String,
    server: String,
}

const ORIGIN_FILE: &str = "origin.json";

/// One finished spool file.
#[derive(Debug, Clone)]
struct Spooled {
    name: WalName,
    sha256: String,
    path: PathBuf,
    size: u64,
}

/// The spool directory of one data directory (or of a configured path).
pub struct Spool {
    dir: PathBuf,
}

impl Spool {
    /// The spool for a request of `name` into `dest`, or `None` when prefetch is off,
    /// `name` is not a segment, or no usable directory exists (logged at `-v`).
    pub fn prepare(
        settings: &Settings,
        opts: &PrefetchSettings,
        name: &WalName,
        dest: &Path,
    ) -> Option<Spool> {
        if opts.count == 0 || name.kind() != WalKind::Segment {
            return None;
        }
        let dir = match &opts.spool_dir {
            Some(d) => d.clone(),
            None => {
                let data = localdir::data_dir_of(dest).or_else(|| {
                    settings
                        .pgdata
                        .as_ref()
                        .and_then(|p| fs::canonicalize(p).ok())
                })?;
                localdir::beside(&data, "pgcellar-spool")?
            }
        };
        let origin = Origin {
            repo: settings.repo.as_ref()?.to_string(),
            server: settings.server.clone()?,
        };
        let spool = Spool { dir };
        match spool.claim(&origin) {
            Ok(()) => Some(spool),
            Err(e) => {
                log_info!("prefetch off for this call: {e}");
                None
            }
        }
    }

    /// Create the directory and make sure its files came from `origin`.
    fn claim(&self, origin: &Origin) -> Result<()> {
        localdir::create_private_dir(&self.dir)?;
        let current: Option<Origin> = fs::read(self.dir.join(ORIGIN_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        if current.as_ref() != Some(origin) {
            for s in self.entries() {
                let _ = fs::remove_file(&s.path);
            }
            let json = crate::repo::to_json(origin)?;
            localdir::write_atomic(&self.dir, ORIGIN_FILE, &json)?;
        }
        Ok(())
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn entries(&self) -> Vec<Spooled> {
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        rd.flatten()
            .filter_map(|e| {
                let file = e.file_name().into_string().ok()?;
                if localdir::is_temp(&file) {
                    return None;
                }
                let (n, sha) = file.split_once('-')?;
                if !codec::is_sha256_hex(sha) {
                    return None;
                }
                let name = WalName::parse(n).ok()?;
                let size = e.metadata().ok()?.len();
                Some(Spooled {
                    name,
                    sha256: sha.to_string(),
                    path: e.path(),
                    size,
                })
            })
            .collect()
    }

    /// Remove segments before `seg` (any timeline: recovery only moves forward) and
    /// temporary files of dead processes.
    pub fn clean_before(&self, seg: Segment) {
        for s in self.entries() {
            let older = s
                .name
                .segment()
                .map_or(true, |o| (o.log, o.seg) < (seg.log, seg.seg));
            if older {
                let _ = fs::remove_file(&s.path);
            }
        }
        localdir::remove_orphan_temps(&self.dir);
    }

    /// Bytes held by finished spool files.
    pub fn used_bytes(&self) -> u64 {
        self.entries().iter().map(|s| s.size).sum()
    }

    /// Whether `name` is spooled.
    pub fn has(&self, name: &WalName) -> bool {
        self.entries().iter().any(|s| &s.name == name)
    }

    /// Deliver a spooled `name` into `dest` after re-checking its SHA-256; `None`
    /// (and the spool file removed) when it is missing or fails the check.
    pub fn take(&self, name: &WalName, dest: &Path) -> Option<u64> {
        let found: Vec<Spooled> = self
            .entries()
            .into_iter()
            .filter(|s| &s.name == name)
            .collect();
        let [s] = found.as_slice() else {
            // Two spooled copies of one name cannot both be right: trust neither.
            for s in &found {
                let _ = fs::remove_file(&s.path);
            }
            return None;
        };
        match deliver(s, dest) {
            Ok(size) => Some(size),
            Err(e) => {
                log_info!("spooled {name} not used: {e}; fetching it from the repository");
                let _ = fs::remove_file(&s.path);
                None
            }
        }
    }

    /// Fetch one stored file into the spool (verified, temporary name, rename).
    fn fetch(&self, storage: &dyn Storage, stored: &StoredWal) -> Result<u64> {
        let dest = self.dir.join(format!("{}-{}", stored.name, stored.sha256));
        archive::fetch_verified(storage, stored, &dest)
    }
}

/// Move (same filesystem) or copy a spooled file into `dest`, verifying its hash.
fn deliver(s: &Spooled, dest: &Path) -> Result<u64> {
    let mut f = File::open(&s.path).io_context(|| format!("opening {}", s.path.display()))?;
    let (sha, size) =
        codec::hash(&[], &mut f).io_context(|| format!("reading {}", s.path.display()))?;
    if sha != s.sha256 {
        return Err(Error::corrupt(format!(
            "{} hashes to {sha}, not the {} it was fetched with",
            s.path.display(),
            s.sha256
        )));
    }
    match fs::rename(&s.path, dest) {
        Ok(()) => return Ok(size),
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {}
        Err(e) => {
            return Err(Error::io(
                format!("moving {} to {}", s.path.display(), dest.display()),
                e,
            ))
        }
    }
    // Another filesystem: copy through a temporary name, hashing what is written.
    let mut input = File::open(&s.path).io_context(|| format!("opening {}", s.path.display()))?;
    let what = format!("spooled {}", s.path.display());
    let size = archive::write_verified(&mut input, Compression::None, &s.sha256, dest, &what)?;
    let _ = fs::remove_file(&s.path);
    Ok(size)
}

/// Every stored copy of each of `names`, listing each archive directory once.
fn lookup_many(
    storage: &dyn Storage,
    server: &str,
    names: &[WalName],
) -> Result<HashMap<WalName, Vec<StoredWal>>> {
    let mut by_dir: HashMap<String, Vec<&WalName>> = HashMap::new();
    for n in names {
        by_dir
            .entry(layout::wal_dir(server, n))
            .or_default()
            .push(n);
    }
    let mut out: HashMap<WalName, Vec<StoredWal>> = HashMap::new();
    for (dir, wanted) in by_dir {
        for e in storage.list(&dir)? {
            if e.is_dir || e.name.starts_with(TEMP_PREFIX) {
                continue;
            }
            let Some((n, sha256, compression)) = archive::parse_stored_name(&e.name) else {
                continue;
            };
            if wanted.contains(&&n) {
                out.entry(n.clone()).or_default().push(StoredWal {
                    name: n,
                    sha256,
                    compression,
                    path: storage::join(&dir, &e.name),
                    stored_size: e.size,
                });
            }
        }
    }
    Ok(out)
}

/// What `wal-get` did with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// Delivered into the destination, verified.
    Delivered(Delivery),
    /// The repository was reached and does not hold the file (exit 1); the message
    /// says where it looked.
    NotArchived(String),
}

/// How `wal-get` satisfied a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// Bytes delivered.
    pub size: u64,
    /// Whether it came from the spool (no repository access).
    pub from_spool: bool,
    /// Segments newly prefetched into the spool by this call.
    pub prefetched: usize,
}

/// `wal-get` with prefetch: deliver `name` into `dest` (verified), from the spool
/// when possible, else from the repository while prefetching what follows.
///
/// Only a successful lookup that finds no copy of `name` is [`Fetched::NotArchived`];
/// every error, whatever its kind (a missing repository is a `NotFound` error too),
/// must stop recovery, so callers must not map errors to "not archived".
pub fn get_file(
    settings: &Settings,
    opts: &PrefetchSettings,
    name: &WalName,
    dest: &Path,
) -> Result<Fetched> {
    let spool = Spool::prepare(settings, opts, name, dest);
    if let (Some(sp), Some(seg)) = (&spool, name.segment()) {
        sp.clean_before(seg);
        if let Some(size) = sp.take(name, dest) {
            return Ok(Fetched::Delivered(Delivery {
                size,
                from_spool: true,
                prefetched: 0,
            }));
        }
    }
    let (repo, server) = Repository::open_server(settings)?;
    let storage = repo.storage();
    let (Some(sp), Some(seg)) = (spool, name.segment()) else {
        let found = archive::lookup(storage, &server.name, name)?;
        if found.is_empty() {
            return Ok(not_archived(name, storage));
        }
        let stored = archive::pick_single(name, found, storage)?;
        let size = archive::fetch_verified(storage, &stored, dest)?;
        return Ok(Fetched::Delivered(Delivery {
            size,
            from_spool: false,
            prefetched: 0,
        }));
    };
    let seg_size = server.wal_segment_size;
    let room = opts.max_bytes.saturating_sub(sp.used_bytes()) / seg_size.max(1);
    let spooled: Vec<WalName> = sp.entries().into_iter().map(|s| s.name).collect();
    let ahead: Vec<WalName> = (1..=opts.count as u64)
        .filter_map(|i| {
            let next = Segment::from_number(seg.timeline, seg.number(seg_size) + i, seg_size);
            WalName::parse(&next.file_name()).ok()
        })
        .filter(|n| !spooled.contains(n))
        .take(usize::try_from(room).unwrap_or(usize::MAX))
        .collect();
    let mut all = vec![name.clone()];
    all.extend(ahead.iter().cloned());
    let mut found = lookup_many(storage, &server.name, &all)?;
    // Not archived: report it before any prefetch (the normal end of recovery).
    let copies = found.remove(name).unwrap_or_default();
    if copies.is_empty() {
        return Ok(not_archived(name, storage));
    }
    let stored = archive::pick_single(name, copies, storage)?;
    let todo: Vec<StoredWal> = ahead
        .iter()
        .filter_map(|n| {
            let copies = found.remove(n)?;
            archive::pick_single(n, copies, storage)
                .map_err(|e| log_info!("not prefetching {n}: {e}"))
                .ok()
        })
        .collect();
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let work = || loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let Some(s) = todo.get(i) else { break };
        match sp.fetch(storage, s) {
            Ok(_) => {
                done.fetch_add(1, Ordering::Relaxed);
                log_debug!("prefetched {} into {}", s.name, sp.dir().display());
            }
            Err(e) => log_info!("prefetch of {} failed (ignored): {e}", s.name),
        }
    };
    let size = std::thread::scope(|sc| {
        // The requested file first on this thread, which then helps; all threads are
        // joined here, so no half-written spool file outlives the call under a final name.
        for _ in 0..opts.parallel.saturating_sub(1).min(todo.len()) {
            sc.spawn(work);
        }
        let size = archive::fetch_verified(storage, &stored, dest);
        work();
        size
    })?;
    Ok(Fetched::Delivered(Delivery {
        size,
        from_spool: false,
        prefetched: done.load(Ordering::Relaxed),
    }))
}

fn not_archived(name: &WalName, storage: &dyn Storage) -> Fetched {
    Fetched::NotArchived(format!(
        "{name} is not in the archive at {}",
        storage.location()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CommonArgs;

    #[test]
    fn settings_precedence_and_errors() {
        let s = Settings::resolve(&CommonArgs::default(), None).unwrap();
        let r = PrefetchSettings::resolve(&PrefetchArgs::default(), &s).unwrap();
        assert_eq!(r.count, DEFAULT_PREFETCH as usize);
        assert_eq!(r.parallel, DEFAULT_PARALLEL as usize);
        assert_eq!(r.max_bytes, DEFAULT_SPOOL_MAX);
        let mut s2 = s.clone();
        s2.file.prefetch = Some(2);
        s2.file.spool_max_bytes = Some(5);
        let flags = PrefetchArgs {
            prefetch: Some(7),
            ..Default::default()
        };
        let r = PrefetchSettings::resolve(&flags, &s2).unwrap();
        assert_eq!((r.count, r.max_bytes), (7, 5));
        s2.file.prefetch_parallel = Some(0);
        let msg = PrefetchSettings::resolve(&flags, &s2)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("prefetch_parallel"), "{msg}");
    }

    #[test]
    fn spool_entries_and_cleaning_follow_segment_order() {
        let d = tempfile::tempdir().unwrap();
        let sp = Spool {
            dir: d.path().to_path_buf(),
        };
        let sha = "b".repeat(64);
        for n in [
            "000000010000000000000003",
            "000000020000000000000004",
            "000000010000000100000000",
        ] {
            fs::write(d.path().join(format!("{n}-{sha}")), b"x").unwrap();
        }
        fs::write(d.path().join("junk"), b"x").unwrap();
        assert_eq!(sp.entries().len(), 3);
        assert_eq!(sp.used_bytes(), 3);
        let req = WalName::parse("000000030000000000000004").unwrap();
        sp.clean_before(req.segment().unwrap());
        let mut left: Vec<String> = sp.entries().iter().map(|s| s.name.to_string()).collect();
        left.sort();
        assert_eq!(
            left,
            vec!["000000010000000100000000", "000000020000000000000004"]
        );
        // Another timeline's file with the requested segment number is not the request.
        assert!(!sp.has(&req));
        assert!(sp.take(&req, &d.path().join("dest")).is_none());
        // A spooled file whose bytes do not match its name's hash is dropped, not served.
        let bad = WalName::parse("000000020000000000000004").unwrap();
        assert!(sp.take(&bad, &d.path().join("dest")).is_none());
        assert!(!sp.has(&bad));
        assert!(!d.path().join("dest").exists());
    }
}
