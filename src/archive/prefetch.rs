//! Prefetching `wal-get` (DESIGN.md section 5).
//!
//! Recovery asks for one segment per `restore_command` call, serially, and replays
//! each before asking for the next. `wal-get` delivers segment N (from the spool or
//! the repository) and then, when the spool holds fewer than half of `prefetch`
//! segments beyond N, starts a **filler**: the same program with the same arguments,
//! detached, which fetches the next `prefetch` segments of the same timeline in
//! parallel over one repository connection into a spool directory outside the data
//! directory, while PostgreSQL replays N. Each lands as `<name>-<sha256>` through a
//! temporary name, only after its SHA-256 matched the repository's; a later call
//! re-hashes the spooled file and moves it into place without touching the
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
//! - The exit status is decided only by the requested file, before any filler
//!   starts: prefetch failures are logged at `-v` and otherwise ignored; a
//!   not-archived N returns without starting one.
//! - The spool is cleaned of segments older than the request (and of temporary files
//!   of dead processes) on every call, and never grows beyond `spool_max_bytes`.
//!
//! The filler is bounded, not a daemon: it fetches at most `prefetch` files, each
//! under the storage timeouts, then exits. One runs at a time: the call that starts
//! it takes `fill.lock` in the spool and hands the locked descriptor to it, so the
//! lock is held from before the call exits until the filler does. Its plan
//! (`fill-plan.json`, the names it is fetching) lets the next call wait for a
//! segment already on its way instead of fetching it twice; waiting stops when the
//! file arrives, the plan drops it, the filler exits, or the storage timeouts pass.
//! If recovery ends or the cluster is promoted meanwhile, the filler finishes at
//! most its few downloads into the spool, which can be deleted at any time.

use crate::archive::localdir;
use crate::archive::{self, StoredWal};
use crate::codec::{self, Compression};
use crate::config::Settings;
use crate::error::{Error, IoContext, Result};
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
/// Default fetch threads of the prefetcher. It runs beside replay, which is what
/// recovery waits for, so it only has to stay ahead: on 2 cores over loopback SSH, 1
/// or 2 threads recovered faster than 4 (less CPU taken from replay); 2 keeps one
/// download going when another stalls.
pub const DEFAULT_PARALLEL: u32 = 2;
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
            &settings.origin("prefetch_parallel", args.prefetch_parallel.is_some()),
        )?;
        let spool_dir = args.spool_dir.clone().or(f.spool_dir.clone());
        if let Some(d) = &spool_dir {
            if !d.is_absolute() {
                return Err(Error::config(format!(
                    "{}: {} must be an absolute path",
                    settings.origin("spool_dir", args.spool_dir.is_some()),
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
#[derive(Debug)]
pub enum Fetched {
    /// Delivered into the destination, verified.
    Delivered(Delivery),
    /// The repository was reached and does not hold the file (exit 1); the message
    /// says where it looked.
    NotArchived(String),
}

/// How `wal-get` satisfied a request.
#[derive(Debug)]
pub struct Delivery {
    /// Bytes delivered.
    pub size: u64,
    /// Whether it came from the spool (no repository access).
    pub from_spool: bool,
    /// A spool filler to start now (see [`Filler`]): the spool holds little beyond
    /// this segment and no filler is running.
    pub fill: Option<Filler>,
}

/// `wal-get` with prefetch: deliver `name` into `dest` (verified), from the spool
/// when possible (waiting for a running filler that is fetching it), else from the
/// repository.
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
        let patience = settings.ssh.connect_timeout + settings.ssh.io_timeout;
        let size = sp.take(name, dest).or_else(|| {
            sp.await_filler(name, patience)
                .then(|| sp.take(name, dest))
                .flatten()
        });
        if let Some(size) = size {
            // A whole segment was delivered, so its size is the segment size.
            let fill = sp
                .runs_low(seg, opts.count)
                .then(|| sp.ready_filler(seg, opts, size))
                .flatten();
            return Ok(Fetched::Delivered(Delivery {
                size,
                from_spool: true,
                fill,
            }));
        }
    }
    let (repo, server) = Repository::open_server(settings)?;
    let storage = repo.storage();
    let found = archive::lookup(storage, &server.name, name)?;
    if found.is_empty() {
        return Ok(not_archived(name, storage));
    }
    let stored = archive::pick_single(name, found, storage)?;
    let size = archive::fetch_verified(storage, &stored, dest)?;
    let fill = match (&spool, name.segment()) {
        (Some(sp), Some(seg)) => sp.ready_filler(seg, opts, server.wal_segment_size),
        _ => None,
    };
    Ok(Fetched::Delivered(Delivery {
        size,
        from_spool: false,
        fill,
    }))
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

/// The spool filler's whole job (see [`Filler`]): fetch up to `prefetch` segments
/// after `name` that are archived and not spooled yet, in parallel over one
/// repository connection, each verified. `env` is the value of [`FILL_ENV`]. Returns
/// how many it stored.
pub fn fill(
    settings: &Settings,
    opts: &PrefetchSettings,
    name: &WalName,
    dest: &Path,
    env: &str,
) -> Result<usize> {
    let (Some(sp), Some(seg)) = (Spool::prepare(settings, opts, name, dest), name.segment()) else {
        return Ok(0);
    };
    let bad = || Error::invalid(format!("{FILL_ENV}={env:?} is not <segment size>:<fd>"));
    let (size, fd) = env.split_once(':').ok_or_else(bad)?;
    let segment_size: u64 = size.parse().map_err(|_| bad())?;
    let fd: i32 = fd.parse().map_err(|_| bad())?;
    if !valid_segment_size(segment_size) {
        return Err(bad());
    }
    let Some(_lock) = sp.adopt_lock(fd) else {
        log_debug!("another prefetcher is filling {}", sp.dir().display());
        return Ok(0);
    };
    // Replay is one process on one core and is what recovery waits for: the filler
    // takes the CPU it leaves (decryption, decompression, hashing), never the reverse.
    // SAFETY: nice(2) only changes this process's scheduling priority.
    unsafe {
        libc::nice(10);
    }
    let ahead = sp.ahead(seg, opts, segment_size);
    if ahead.is_empty() {
        return Ok(0);
    }
    let plan = Plan::new(&sp, &ahead);
    let (repo, server) = Repository::open_server(settings)?;
    let storage = repo.storage();
    if server.wal_segment_size != segment_size {
        return Err(Error::invalid(format!(
            "the registered segment size is {}, not {segment_size}",
            server.wal_segment_size
        )));
    }
    let mut found = lookup_many(storage, &server.name, &ahead)?;
    // WAL is replayed in order: nothing after the first segment not archived yet.
    let todo: Vec<StoredWal> = ahead
        .iter()
        .map_while(|n| {
            let copies = found.remove(n)?;
            archive::pick_single(n, copies, storage)
                .map_err(|e| log_info!("not prefetching {n}: {e}"))
                .ok()
        })
        .collect();
    plan.write(todo.iter().map(|s| &s.name));
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
    std::thread::scope(|sc| {
        for _ in 0..opts.parallel.min(todo.len()) {
            sc.spawn(work);
        }
    });
    Ok(done.load(Ordering::Relaxed))
}

fn valid_segment_size(size: u64) -> bool {
    size.is_power_of_two() && (1 << 20..=1 << 30).contains(&size)
}

const PLAN_FILE: &str = "fill-plan.json";
const FILL_LOCK: &str = "fill.lock";

/// The running filler's list of segments (`fill-plan.json` in the spool), removed
/// when it is dropped.
struct Plan<'a> {
    spool: &'a Spool,
}

impl<'a> Plan<'a> {
    fn new(spool: &'a Spool, names: &[WalName]) -> Plan<'a> {
        let plan = Plan { spool };
        plan.write(names.iter());
        plan
    }

    fn write<'n>(&self, names: impl Iterator<Item = &'n WalName>) {
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
    fn ahead(&self, seg: Segment, opts: &PrefetchSettings, segment_size: u64) -> Vec<WalName> {
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
    fn ready_filler(
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
    fn adopt_lock(&self, fd: i32) -> Option<File> {
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
    fn await_filler(&self, name: &WalName, patience: std::time::Duration) -> bool {
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
    fn runs_low(&self, seg: Segment, count: usize) -> bool {
        let ahead = self
            .entries()
            .iter()
            .filter_map(|s| s.name.segment())
            .filter(|o| o.timeline == seg.timeline && (o.log, o.seg) > (seg.log, seg.seg))
            .count();
        ahead < count.div_ceil(2).max(1)
    }
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
