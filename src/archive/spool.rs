//! The spool of prefetched segments (see `prefetch`): a private directory beside
//! the data directory, the origin it was filled from, verified delivery out of it,
//! and the lock and plan that let one detached filler run at a time.

use crate::archive::localdir;
use crate::archive::{self, StoredWal};
use crate::codec::{self, Compression, ContentHash};
use crate::config::{PrefetchSettings, Settings};
use crate::error::{Error, IoContext, Result};
use crate::log_info;
use crate::storage::Storage;
use crate::wal::{Segment, WalKind, WalName};
use serde::{Deserialize, Serialize};
use std::fs::{self, File};
use std::path::{Path, PathBuf};

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
                .is_none_or(|o| (o.log, o.seg) < (seg.log, seg.seg));
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
    /// Spooled files are named by their plain SHA-256, which a later wal-get checks
    /// without opening the repository (or, encrypted, its key).
    pub(super) fn fetch(&self, storage: &dyn Storage, stored: &StoredWal) -> Result<u64> {
        let dest = self.dir.join(format!("{}-{}", stored.name, stored.sha256));
        let (size, sha) = archive::fetch_verified(storage, stored, &dest)?;
        if sha != stored.sha256 {
            let named = self.dir.join(format!("{}-{sha}", stored.name));
            fs::rename(&dest, &named)
                .io_context(|| format!("renaming {} to {}", dest.display(), named.display()))?;
        }
        Ok(size)
    }
}

/// Move (same filesystem) or copy a spooled file into `dest`, verifying its hash.
fn deliver(s: &Spooled, dest: &Path) -> Result<u64> {
    let mut f = File::open(&s.path).io_context(|| format!("opening {}", s.path.display()))?;
    let (sha, size) = codec::hash(&ContentHash::Sha256, &[], &mut f)
        .io_context(|| format!("reading {}", s.path.display()))?;
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
    let (size, _) = archive::write_verified(
        &ContentHash::Sha256,
        &mut input,
        Compression::None,
        &s.sha256,
        dest,
        &what,
    )?;
    let _ = fs::remove_file(&s.path);
    Ok(size)
}

/// Environment variable that makes a `wal-get` process the spool filler for the
/// segments after its WAL_NAME: `<segment size>:<fd of the spool's locked fill.lock>`.
pub const FILL_ENV: &str = "PGCELLAR_PREFETCH_FILL";

/// A spool filler about to start: the spool's fill lock is held and its plan written.
///
/// Why a process and not threads: a filler that outlives this call lets PostgreSQL
/// replay the segment just delivered while the next ones download. It is bounded:
/// it fetches at most `prefetch` segments (each under the storage timeouts) and
/// exits; it only ever writes verified files into the spool under temporary names;
/// one runs at a time, because the lock taken here passes to it and is released
/// only when it exits; and the exit status of the call that starts it is decided
/// before it starts. Its output goes to stderr only with `-v`.
#[derive(Debug)]
pub struct Filler {
    lock: File,
    plan: PathBuf,
    segment_size: u64,
}

impl Filler {
    /// Start this same program with the same arguments as the filler, detached.
    pub fn start(self) -> Result<()> {
        use std::os::unix::io::AsRawFd;
        use std::os::unix::process::CommandExt;
        use std::process::{Command, Stdio};
        let fd = self.lock.as_raw_fd();
        let result = std::env::current_exe()
            .map_err(|e| Error::io("finding this program to start the prefetcher", e))
            .and_then(|exe| {
                let mut cmd = Command::new(exe);
                cmd.args(std::env::args_os().skip(1))
                    .env(FILL_ENV, format!("{}:{fd}", self.segment_size))
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(if crate::util::log::enabled(1) {
                        Stdio::inherit()
                    } else {
                        Stdio::null()
                    })
                    // Its own process group: signals meant for recovery's shell are not
                    // for it.
                    .process_group(0);
                // SAFETY: between fork and exec only fcntl runs, which is
                // async-signal-safe; it lets the child inherit the locked descriptor.
                unsafe {
                    cmd.pre_exec(move || {
                        if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                            return Err(std::io::Error::last_os_error());
                        }
                        Ok(())
                    });
                }
                cmd.spawn()
                    .map_err(|e| Error::io("starting the prefetcher", e))
            });
        if result.is_err() {
            let _ = fs::remove_file(&self.plan);
        }
        // Our copy of the descriptor closes here; the child's keeps the lock.
        result.map(drop)
    }
}

pub(super) fn valid_segment_size(size: u64) -> bool {
    size.is_power_of_two() && (1 << 20..=1 << 30).contains(&size)
}

const PLAN_FILE: &str = "fill-plan.json";
const FILL_LOCK: &str = "fill.lock";

/// The running filler's list of segments (`fill-plan.json` in the spool), removed
/// when it is dropped.
pub(super) struct Plan<'a> {
    spool: &'a Spool,
}

impl<'a> Plan<'a> {
    pub(super) fn new(spool: &'a Spool, names: &[WalName]) -> Plan<'a> {
        let plan = Plan { spool };
        plan.write(names.iter());
        plan
    }

    pub(super) fn write<'n>(&self, names: impl Iterator<Item = &'n WalName>) {
        write_plan(&self.spool.dir, names);
    }
}

impl Drop for Plan<'_> {
    fn drop(&mut self) {
        let _ = fs::remove_file(self.spool.dir.join(PLAN_FILE));
    }
}

fn write_plan<'n>(dir: &Path, names: impl Iterator<Item = &'n WalName>) {
    let names: Vec<&str> = names.map(|n| n.as_str()).collect();
    // A plan only saves a duplicate fetch: if it cannot be written, callers fetch.
    if let Ok(json) = serde_json::to_vec(&names) {
        let _ = localdir::write_atomic(dir, PLAN_FILE, &json);
    }
}

impl Spool {
    /// Segments after `seg` (same timeline) that a filler should fetch: up to
    /// `count`, not spooled yet, within the spool's size bound.
    pub(super) fn ahead(
        &self,
        seg: Segment,
        opts: &PrefetchSettings,
        segment_size: u64,
    ) -> Vec<WalName> {
        let spooled: Vec<WalName> = self.entries().into_iter().map(|s| s.name).collect();
        let room = opts.max_bytes.saturating_sub(self.used_bytes()) / segment_size.max(1);
        (1..=opts.count as u64)
            .filter_map(|i| {
                let next =
                    Segment::from_number(seg.timeline, seg.number(segment_size) + i, segment_size);
                WalName::parse(&next.file_name()).ok()
            })
            .filter(|n| !spooled.contains(n))
            .take(usize::try_from(room).unwrap_or(usize::MAX))
            .collect()
    }

    /// A filler for the segments after `seg`, unless one runs or nothing is to fetch.
    pub(super) fn ready_filler(
        &self,
        seg: Segment,
        opts: &PrefetchSettings,
        segment_size: u64,
    ) -> Option<Filler> {
        use fs2::FileExt;
        if !valid_segment_size(segment_size) {
            return None;
        }
        let path = self.dir.join(FILL_LOCK);
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| log_info!("no prefetch: opening {}: {e}", path.display()))
            .ok()?;
        // fs2's, not std's newer inherent method (the crate's MSRV predates it).
        FileExt::try_lock_exclusive(&lock).ok()?;
        let ahead = self.ahead(seg, opts, segment_size);
        if ahead.is_empty() {
            return None;
        }
        // Announced now, so that the next call waits for these instead of fetching
        // them a second time while the filler connects.
        write_plan(&self.dir, ahead.iter());
        Some(Filler {
            lock,
            plan: self.dir.join(PLAN_FILE),
            segment_size,
        })
    }

    /// The fill lock inherited as descriptor `fd` from the call that started this
    /// filler, or (if `fd` is not that lock) taken now; `None` when another holds it.
    pub(super) fn adopt_lock(&self, fd: i32) -> Option<File> {
        use fs2::FileExt;
        use std::os::unix::fs::MetadataExt;
        use std::os::unix::io::FromRawFd;
        let path = self.dir.join(FILL_LOCK);
        let want = fs::metadata(&path).ok()?;
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat only writes into `st`; an invalid fd makes it fail.
        let same = unsafe { libc::fstat(fd, &mut st) } == 0
            && st.st_dev == want.dev()
            && st.st_ino == want.ino();
        if same {
            // SAFETY: `fd` is open, is the lock file, and was handed to this process
            // for exactly this use; nothing else in the process owns it.
            return Some(unsafe { File::from_raw_fd(fd) });
        }
        let f = fs::OpenOptions::new().write(true).open(&path).ok()?;
        FileExt::try_lock_exclusive(&f).ok()?;
        Some(f)
    }

    /// Whether a filler is running (it holds the lock for its whole life).
    fn filler_alive(&self) -> bool {
        use fs2::FileExt;
        let Ok(f) = File::open(self.dir.join(FILL_LOCK)) else {
            return false;
        };
        // fs2's, not std's newer inherent methods (the crate's MSRV predates them).
        match FileExt::try_lock_shared(&f) {
            Ok(()) => {
                let _ = FileExt::unlock(&f);
                false
            }
            Err(_) => true,
        }
    }

    /// Whether the running filler plans to fetch `name`.
    fn planned(&self, name: &WalName) -> bool {
        fs::read(self.dir.join(PLAN_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice::<Vec<String>>(&b).ok())
            .is_some_and(|names| names.iter().any(|n| n == name.as_str()))
    }

    /// Wait (at most `patience`) while a running filler is fetching `name`; whether
    /// it is spooled now.
    pub(super) fn await_filler(&self, name: &WalName, patience: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + patience;
        loop {
            if self.has(name) {
                return true;
            }
            if !self.planned(name) || !self.filler_alive() {
                return self.has(name);
            }
            if std::time::Instant::now() >= deadline {
                log_info!("gave up waiting for the prefetcher to bring {name}");
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }

    /// Whether fewer than half of `count` segments after `seg` (same timeline) are
    /// spooled.
    pub(super) fn runs_low(&self, seg: Segment, count: usize) -> bool {
        let ahead = self
            .entries()
            .iter()
            .filter_map(|s| s.name.segment())
            .filter(|o| o.timeline == seg.timeline && (o.log, o.seg) > (seg.log, seg.seg))
            .count();
        ahead < count.div_ceil(2).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
