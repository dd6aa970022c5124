//! Storing the walked files as content-addressed objects, reusing the parent backup's
//! objects for whatever is provably unchanged (`docs/repository-format.md`, "Change
//! detection"): a whole file by size and mtime, or page by page by page hash.

use super::options::BackupOptions;
use super::progress::Reporter;
use super::walk::{mode_of, Job};
use crate::codec::{self, Codec, HashWriter, BUF_SIZE};
use crate::error::{Error, IoContext, Result};
use crate::repo::manifest::{self, FileEntry, Manifest, ObjectRef, MAX_DELTAS, MAX_DELTA_SHARE};
use crate::repo::objects::{page_hash, DeltaWriter, ObjectStore, PageHashes, Stored, PAGE};
use crate::repo::ServerInfo;
use crate::storage::Storage;
use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::sync::Mutex;

/// A file is trusted unchanged by size and mtime only when its mtime is at least this
/// many seconds before the parent backup started (covers 1 s timestamp granularity).
pub const SAFE_HORIZON_SECS: i64 = 2;

/// Main-fork relation files at least this large are compared page by page; smaller
/// ones cost less to store whole than to track.
pub const PAGE_LEVEL_MIN_SIZE: u64 = 256 * 1024;

/// Proof from outside the file (WAL summaries) that a path is unchanged since the
/// parent started: `true` means its parent version may be reused unread.
pub(super) type Untouched<'a> = &'a (dyn Fn(&str) -> bool + Sync);

/// The most recent complete backup of the same cluster, to compare with; `None` with a
/// warning when it cannot be read (every file is then stored whole).
pub(super) fn find_parent(storage: &dyn Storage, server: &ServerInfo) -> Option<Manifest> {
    let ids = match manifest::list_ids(storage, &server.name) {
        Ok(ids) => ids,
        Err(e) => {
            crate::log_warn!("cannot list backups ({e}); storing every file whole");
            return None;
        }
    };
    let id = ids.last()?;
    match manifest::load(storage, &server.name, id) {
        Ok(m) if m.system_identifier != server.system_identifier => None,
        Ok(m) => Some(m),
        Err(e) => {
            crate::log_warn!("cannot read backup {id} ({e}); storing every file whole");
            None
        }
    }
}

/// Shared state of the storing workers.
pub(super) struct StoreCtx<'a> {
    pub(super) objects: ObjectStore<'a>,
    pub(super) codec: Codec,
    pub(super) parent: Option<&'a Manifest>,
    pub(super) parent_files: HashMap<&'a str, &'a FileEntry>,
    pub(super) checksum: bool,
    pub(super) untouched: Option<Untouched<'a>>,
    pub(super) report: &'a Reporter<'a>,
}

impl<'a> StoreCtx<'a> {
    /// The context for storing `server`'s files, compared with `parent`.
    pub(super) fn new(
        storage: &'a dyn Storage,
        server: &str,
        codec: Codec,
        parent: Option<&'a Manifest>,
        opts: &BackupOptions,
        report: &'a Reporter<'a>,
    ) -> StoreCtx<'a> {
        StoreCtx {
            objects: ObjectStore::new(storage, server),
            codec,
            parent,
            parent_files: parent
                .map(|p| p.files.iter().map(|f| (f.path.as_str(), f)).collect())
                .unwrap_or_default(),
            checksum: opts.checksum,
            untouched: None,
            report,
        }
    }
}

/// Store every file with `jobs` workers; entries sorted by path.
pub(super) fn store_files(
    ctx: &StoreCtx<'_>,
    jobs: usize,
    mut files: Vec<Job>,
) -> Result<Vec<FileEntry>> {
    // Largest first, so that the last worker does not start a huge file alone.
    files.sort_by(|a, b| b.size.cmp(&a.size).then_with(|| a.path.cmp(&b.path)));
    // pg_control goes last, after every other file is read, as pg_basebackup sends it:
    // recovery of a backup taken on a standby ends at the minimum recovery point of
    // this copy of it, which must cover every page copied before.
    let (control, files): (Vec<Job>, Vec<Job>) =
        files.into_iter().partition(|j| j.path == CONTROL_FILE);
    let results: Mutex<Vec<FileEntry>> = Mutex::new(Vec::with_capacity(files.len() + 1));
    ctx.report.copying(
        files.len() as u64 + control.len() as u64,
        files.iter().chain(&control).map(|j| j.size).sum(),
    );
    let store = |job: &Job| -> Result<()> {
        let (entry, read) = store_one(ctx, job)?;
        if let Some(entry) = entry {
            if let Ok(mut r) = results.lock() {
                r.push(entry);
            }
        }
        ctx.report.file_done(job.size, read);
        Ok(())
    };
    let stored = crate::util::workers::try_for_each(jobs, &files, |_, job| store(job))
        .and_then(|()| control.iter().try_for_each(store));
    stored?;
    // One flush for every object instead of an fsync each (about 15 ms apiece on
    // ordinary disks); still well before the manifest makes the backup count.
    ctx.objects.storage().sync_deferred()?;
    let mut out = results.into_inner().unwrap_or_default();
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// The manifest path of the control file.
const CONTROL_FILE: &str = "data/global/pg_control";

/// Whether `path` is a main-fork relation file: only those have 8 KiB pages that
/// PostgreSQL rewrites in place; `_fsm`, `_vm` and `_init` forks are stored whole.
pub fn is_main_fork(path: &str) -> bool {
    crate::pg::relation_file(path).is_some()
}

/// What storing one file found, before it becomes a manifest entry.
struct Version {
    sha256: String,
    size: u64,
    objects: Vec<Stored>,
    reused: Vec<ObjectRef>,
    pages: Option<Stored>,
}

/// Store one file; `None` when it vanished meanwhile. The flag says whether it was
/// read: a file proven unchanged without reading it is reused unread.
fn store_one(ctx: &StoreCtx<'_>, job: &Job) -> Result<(Option<FileEntry>, bool)> {
    if let Some(entry) = reuse_unread(ctx, job)? {
        return Ok((Some(entry), false));
    }
    Ok((store_read(ctx, job)?, true))
}

/// The parent's entry for a file proven unchanged without reading it: same size and
/// mtime, old enough; or untouched according to the WAL summaries.
fn reuse_unread(ctx: &StoreCtx<'_>, job: &Job) -> Result<Option<FileEntry>> {
    if ctx.checksum {
        return Ok(None);
    }
    let (Some(parent), Some(prev)) = (ctx.parent, ctx.parent_files.get(job.path.as_str())) else {
        return Ok(None);
    };
    let meta = match fs::metadata(&job.src) {
        Ok(m) => m,
        // Vanished or unreadable: store_read says which.
        Err(_) => return Ok(None),
    };
    let (size, mtime) = (meta.len(), meta.mtime());
    if prev.size != size {
        return Ok(None);
    }
    let old_enough = mtime + SAFE_HORIZON_SECS <= parent.start_time.timestamp();
    let proven = (prev.mtime == mtime && old_enough)
        || (is_main_fork(&job.path) && ctx.untouched.is_some_and(|f| f(&job.path)));
    Ok(proven.then(|| FileEntry {
        path: job.path.clone(),
        size,
        mtime,
        mode: mode_of(&meta),
        added_size: 0,
        ..(*prev).clone()
    }))
}

/// Store one file that must be read (hashed, compared page by page, or stored).
fn store_read(ctx: &StoreCtx<'_>, job: &Job) -> Result<Option<FileEntry>> {
    let meta = match fs::metadata(&job.src) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("stat {}", job.src.display()), e)),
    };
    let size = meta.len();
    let mtime = meta.mtime();
    let mode = mode_of(&meta);
    let entry = |v: Version| -> FileEntry {
        let mut objects: Vec<ObjectRef> = v.reused;
        let mut added = 0;
        for s in &v.objects {
            if s.created {
                added += s.object.stored_size;
            }
            objects.push(s.object.clone());
        }
        if let Some(p) = &v.pages {
            if p.created {
                added += p.object.stored_size;
            }
        }
        let pages = v.pages.map(|p| p.object);
        let stored_size = objects
            .iter()
            .chain(pages.iter())
            .map(|o| o.stored_size)
            .sum();
        FileEntry {
            path: job.path.clone(),
            size: v.size,
            mtime,
            mode,
            sha256: v.sha256,
            objects,
            pages,
            stored_size,
            added_size: added,
        }
    };
    let reuse = |prev: &FileEntry| FileEntry {
        path: job.path.clone(),
        size,
        mtime,
        mode,
        added_size: 0,
        ..prev.clone()
    };
    let page_level =
        is_main_fork(&job.path) && size >= PAGE_LEVEL_MIN_SIZE && size % PAGE as u64 == 0;
    let prev = match (ctx.parent, ctx.parent_files.get(job.path.as_str())) {
        (Some(_), Some(prev)) if prev.size == size => Some(*prev),
        _ => None,
    };
    if let Some(prev) = prev {
        if prev.mtime == mtime && !page_level {
            // Same size and mtime but not provably old (or --checksum): most likely
            // unchanged, so hashing first usually saves the compression.
            let Some(mut f) = open(job)? else {
                return Ok(None);
            };
            let (sha, _) = codec::hash(&ctx.objects.storage().content_hash(), &[], &mut f)
                .io_context(|| format!("reading {}", job.src.display()))?;
            if sha == prev.sha256 {
                return Ok(Some(reuse(prev)));
            }
        }
    }
    let any_prev = ctx.parent_files.get(job.path.as_str()).copied();
    if page_level {
        if let Some(prev) = any_prev.filter(|p| p.pages.is_some() && p.objects.len() <= MAX_DELTAS)
        {
            match store_delta(ctx, job, prev, size)? {
                Delta::Vanished => return Ok(None),
                Delta::Same(sha) if sha == prev.sha256 && size == prev.size => {
                    return Ok(Some(reuse(prev)))
                }
                Delta::Stored(v) => return Ok(Some(entry(v))),
                // Unchanged pages but another hash (cannot happen short of a collision),
                // a rebase or a file that changed size while read: store it whole.
                Delta::Same(_) | Delta::Whole => {}
            }
        }
    }
    match store_whole(ctx, job, page_level)? {
        Some(v) => Ok(Some(entry(v))),
        None => Ok(None),
    }
}

fn open(job: &Job) -> Result<Option<File>> {
    match File::open(&job.src) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("opening {}", job.src.display()), e)),
    }
}

fn storing_error(ctx: &StoreCtx<'_>, job: &Job, e: io::Error) -> Error {
    Error::io(
        format!(
            "storing {} into {}",
            job.src.display(),
            ctx.objects.storage().location()
        ),
        e,
    )
}

/// Store the file as one whole-file object, with its page hashes when `page_level`
/// (and the bytes read were whole pages). A file that changes while read is fine: WAL
/// replay from the backup's start rewrites every block changed after it.
fn store_whole(ctx: &StoreCtx<'_>, job: &Job, page_level: bool) -> Result<Option<Version>> {
    let Some(mut file) = open(job)? else {
        return Ok(None);
    };
    let mut w = ctx.objects.writer(ctx.codec)?;
    let mut hashes = Vec::new();
    let mut buf = vec![0u8; BUF_SIZE];
    let mut whole_pages = true;
    loop {
        let n = crate::util::read_full(&mut file, &mut buf)
            .io_context(|| format!("reading {}", job.src.display()))?;
        if n == 0 {
            break;
        }
        let chunk = buf.get(..n).unwrap_or_default();
        if page_level {
            whole_pages &= n % PAGE == 0;
            hashes.extend(chunk.chunks(PAGE).map(page_hash));
        }
        w.write_all(chunk).map_err(|e| storing_error(ctx, job, e))?;
    }
    let stored = w.finish()?;
    let pages = if page_level && whole_pages {
        Some(ctx.objects.put(&PageHashes(hashes).encode(), ctx.codec)?)
    } else {
        None
    };
    Ok(Some(Version {
        sha256: stored.content.sha256.clone(),
        size: stored.content.size,
        objects: vec![stored],
        reused: Vec::new(),
        pages,
    }))
}

enum Delta {
    /// Stored as the parent's objects plus one delta.
    Stored(Version),
    /// No page differs; the file's SHA-256.
    Same(String),
    /// Store it whole instead (bound reached, or the file changed size while read).
    Whole,
    /// The file is gone.
    Vanished,
}

/// Compare the file page by page with `prev`'s page hashes and store the changed
/// pages as one delta object over `prev`'s objects.
fn store_delta(ctx: &StoreCtx<'_>, job: &Job, prev: &FileEntry, size: u64) -> Result<Delta> {
    let Some(pages_ref) = &prev.pages else {
        return Ok(Delta::Whole);
    };
    let old = match ctx
        .objects
        .read_verified(pages_ref)
        .and_then(|b| PageHashes::decode(&b, &pages_ref.id))
    {
        Ok(h) => h,
        Err(e) => {
            crate::log_warn!(
                "{}: cannot use the parent's page hashes ({e}); storing it whole",
                job.path
            );
            return Ok(Delta::Whole);
        }
    };
    if old.file_size() != prev.size {
        crate::log_warn!(
            "{}: the parent's page hashes describe another size; storing it whole",
            job.path
        );
        return Ok(Delta::Whole);
    }
    let Some(file) = open(job)? else {
        return Ok(Delta::Vanished);
    };
    // What was stat'ed is what the delta says; bytes appended meanwhile are WAL's.
    let mut file = file.take(size);
    let mut whole = HashWriter::new(io::sink(), &ctx.objects.storage().content_hash());
    let mut delta = DeltaWriter::new(ctx.objects.writer(ctx.codec)?, size)
        .map_err(|e| storing_error(ctx, job, e))?;
    let mut hashes = Vec::with_capacity((size / PAGE as u64) as usize);
    let mut buf = vec![0u8; BUF_SIZE];
    let mut block: u64 = 0;
    // Stop early when the delta is sure to pass its share bound: changed pages are
    // estimated to compress like the base did (twice the bound, to leave the exact
    // decision to the end), so a rebase does not first store a delta nobody uses.
    let budget_pages = match prev.objects.split_first() {
        Some((base, deltas)) if prev.size > 0 => {
            let ratio = base.stored_size as f64 / prev.size as f64;
            let left = MAX_DELTA_SHARE * base.stored_size as f64
                - deltas.iter().map(|d| d.stored_size as f64).sum::<f64>();
            2.0 * left.max(0.0) / (ratio.max(1e-6) * PAGE as f64)
        }
        _ => f64::INFINITY,
    };
    loop {
        let n = crate::util::read_full(&mut file, &mut buf)
            .io_context(|| format!("reading {}", job.src.display()))?;
        if n == 0 {
            break;
        }
        if n % PAGE != 0 {
            return Ok(Delta::Whole); // shrank while read
        }
        let chunk = buf.get(..n).unwrap_or_default();
        whole
            .write_all(chunk)
            .map_err(|e| storing_error(ctx, job, e))?;
        for page in chunk.chunks(PAGE) {
            let h = page_hash(page);
            if old.get(block) != Some(&h) {
                let b = u32::try_from(block).map_err(|_| {
                    Error::invalid(format!("{} has more than 2^32 pages", job.src.display()))
                })?;
                delta
                    .page(b, page)
                    .map_err(|e| storing_error(ctx, job, e))?;
            }
            hashes.push(h);
            block += 1;
        }
        if delta.pages() as f64 > budget_pages {
            // Dropping the unfinished object removes its temporary file.
            return Ok(Delta::Whole);
        }
    }
    let (_, content) = whole.finish();
    if content.size != size {
        return Ok(Delta::Whole);
    }
    if delta.pages() == 0 && size == old.file_size() {
        // Dropping the unfinished object removes its temporary file.
        return Ok(Delta::Same(content.sha256));
    }
    let Some((base, deltas)) = prev.objects.split_first() else {
        return Ok(Delta::Whole);
    };
    let earlier: u64 = deltas.iter().map(|d| d.stored_size).sum();
    // Rebase past the share bound: a restore must not read more than a few deltas'
    // worth over the base. Decided before the commit, so the refused delta leaves
    // nothing behind.
    let within =
        |stored: u64| (earlier + stored) as f64 <= MAX_DELTA_SHARE * base.stored_size as f64;
    let Some(stored) = delta
        .finish()
        .map_err(|e| storing_error(ctx, job, e))?
        .finish_if(within)?
    else {
        return Ok(Delta::Whole);
    };
    let pages = ctx.objects.put(&PageHashes(hashes).encode(), ctx.codec)?;
    Ok(Delta::Stored(Version {
        sha256: content.sha256,
        size,
        objects: vec![stored],
        reused: prev.objects.clone(),
        pages: Some(pages),
    }))
}

#[cfg(test)]
mod tests;
