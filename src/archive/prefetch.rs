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

use crate::archive::spool::{valid_segment_size, Plan, Spool};
use crate::archive::{self, StoredWal};
use crate::config::{PrefetchSettings, Settings};
use crate::error::{Error, Result};
use crate::repo::{layout, Repository};
use crate::storage::{self, Storage, TEMP_PREFIX};
use crate::wal::WalName;
use crate::{log_debug, log_info};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

pub use crate::archive::spool::{Filler, FILL_ENV};

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
    let (size, _) = archive::fetch_verified(storage, &stored, dest)?;
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

fn not_archived(name: &WalName, storage: &dyn Storage) -> Fetched {
    Fetched::NotArchived(format!(
        "{name} is not in the archive at {}",
        storage.location()
    ))
}
