//! Restoring the files: each rebuilt under a temporary name, verified against the
//! manifest's size and SHA-256, and only then renamed into place.

use super::dest::PathMapper;
use super::options::RestoreOptions;
use super::owner::Owner;
use crate::codec;
use crate::error::{Error, IoContext, Result};
use crate::repo::manifest::{FileEntry, Manifest};
use crate::repo::objects::{check_rebuilt, rebuild, ObjectStore, PAGE};
use crate::storage::Storage;
use crate::util::sync_dir;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, UNIX_EPOCH};

/// Where restored files come from and go: the same for every file of one restore.
#[derive(Clone, Copy)]
pub(super) struct Source<'a> {
    /// The repository's storage.
    pub storage: &'a dyn Storage,
    /// The server the backup belongs to.
    pub server: &'a str,
    /// The backup's manifest.
    pub m: &'a Manifest,
    /// Manifest paths to local paths (data directory, tablespaces).
    pub mapper: &'a PathMapper,
    /// Who the restored files belong to.
    pub owner: &'a Owner,
}

/// The control file, written last.
pub(super) const PG_CONTROL: &str = "data/global/pg_control";

pub(super) fn restore_files(
    src: Source<'_>,
    mut files: Vec<&FileEntry>,
    jobs: usize,
    opts: &RestoreOptions,
) -> Result<(u64, u64)> {
    files.sort_by(|a, b| b.size.cmp(&a.size).then_with(|| a.path.cmp(&b.path)));
    let total: u64 = files.iter().map(|f| f.size).sum();
    let progress = crate::util::progress::Meter::new(opts.progress && files.len() > 1, "written");
    progress.start_copy(files.len() as u64, total);
    let written = AtomicUsize::new(0);
    let kept = AtomicUsize::new(0);
    let restored = crate::util::workers::try_for_each(jobs, &files, |_, entry| {
        let wrote = restore_one(src, entry, opts.delta)?;
        let counter = if wrote { &written } else { &kept };
        counter.fetch_add(1, Ordering::Relaxed);
        progress.file_done(entry.size, if wrote { entry.size } else { 0 });
        Ok(())
    });
    progress.finish();
    restored?;
    Ok((written.into_inner() as u64, kept.into_inner() as u64))
}

/// Restore one file; `false` when `--delta` found it already identical.
fn restore_one(src: Source<'_>, entry: &FileEntry, delta: bool) -> Result<bool> {
    let Source { mapper, .. } = src;
    let local = mapper.local(&entry.path)?;
    if delta {
        if let Ok(meta) = fs::symlink_metadata(&local) {
            if meta.is_file() && entry.pages.is_some() {
                return patch_in_place(src, entry, &local);
            }
            if meta.is_file() && meta.len() == entry.size {
                let mut f =
                    File::open(&local).io_context(|| format!("opening {}", local.display()))?;
                let (sha, _) = codec::hash(&src.storage.content_hash(), &[], &mut f)
                    .io_context(|| format!("reading {}", local.display()))?;
                if sha == entry.sha256 {
                    fs::set_permissions(&local, fs::Permissions::from_mode(entry.mode & 0o7777))
                        .io_context(|| format!("chmod {}", local.display()))?;
                    return Ok(false);
                }
            }
        }
    }
    // Durable later, with everything else (one syncfs before pg_control).
    restore_to_temp(src, entry)?.commit(false)?;
    Ok(true)
}

/// `--delta` for a page-level file: rebuild it over the existing file, writing only
/// the 8 KiB pages that differ; `false` when none did. Not atomic, unlike a whole
/// restore: a failure leaves the file half-patched, which is safe only because
/// `pg_control` is gone until the whole restore succeeds (and a rerun patches on).
fn patch_in_place(src: Source<'_>, entry: &FileEntry, local: &Path) -> Result<bool> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(local)
        .io_context(|| format!("opening {}", local.display()))?;
    let mut patch = PagePatch {
        file: &file,
        offset: 0,
        pending: Vec::with_capacity(PAGE),
        old: vec![0u8; PAGE],
        written: 0,
    };
    let objects = ObjectStore::new(src.storage, src.server);
    let got = rebuild(&objects, entry, &mut patch)?;
    patch
        .flush_page()
        .io_context(|| format!("patching {}", local.display()))?;
    let changed = patch.written > 0 || file.metadata().map(|m| m.len()).unwrap_or(0) != entry.size;
    file.set_len(entry.size)
        .io_context(|| format!("truncating {}", local.display()))?;
    check_rebuilt(entry, &got, src.m.id.as_str()).map_err(|e| {
        Error::new(
            e.kind(),
            format!(
                "{e}; {} is half-patched and the restore will not start",
                local.display()
            ),
        )
    })?;
    file.set_permissions(fs::Permissions::from_mode(entry.mode & 0o7777))
        .io_context(|| format!("chmod {}", local.display()))?;
    file.set_modified(UNIX_EPOCH + Duration::from_secs(entry.mtime.max(0) as u64))
        .io_context(|| format!("setting the mtime of {}", local.display()))?;
    src.owner.apply(local)?;
    Ok(changed)
}

/// A writer that compares each page with the file's and writes only those that differ.
struct PagePatch<'f> {
    file: &'f File,
    offset: u64,
    pending: Vec<u8>,
    old: Vec<u8>,
    written: u64,
}

impl PagePatch<'_> {
    fn flush_page(&mut self) -> std::io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let n = self.pending.len();
        let old = &mut self.old[..n];
        // Past the end of the file reads short: whatever is missing differs.
        let mut got = 0;
        while got < n {
            match self
                .file
                .read_at(&mut old[got..], self.offset + got as u64)?
            {
                0 => break,
                k => got += k,
            }
        }
        if got < n || old[..] != self.pending[..] {
            self.file.write_all_at(&self.pending, self.offset)?;
            self.written += 1;
        }
        self.offset += n as u64;
        self.pending.clear();
        Ok(())
    }
}

impl Write for PagePatch<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let room = PAGE - self.pending.len();
        let take = room.min(buf.len());
        self.pending.extend_from_slice(&buf[..take]);
        if self.pending.len() == PAGE {
            self.flush_page()?;
        }
        Ok(take)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Suffix of a file being restored: it gets its final name only once verified, so a
/// failed or killed restore never leaves wrong bytes under a name PostgreSQL reads
/// (`--delta` removes leftovers, since no manifest lists them).
const TEMP_SUFFIX: &str = ".pgcellar-restore-tmp";

/// A restored, verified file under its temporary name; removed on drop unless
/// [`Pending::commit`] gave it its final name.
pub(super) struct Pending {
    tmp: PathBuf,
    dest: PathBuf,
    committed: bool,
}

impl Pending {
    /// Rename into place; `durable` also fsyncs the directory.
    pub(super) fn commit(mut self, durable: bool) -> Result<()> {
        fs::rename(&self.tmp, &self.dest)
            .io_context(|| format!("renaming {} to {}", self.tmp.display(), self.dest.display()))?;
        self.committed = true;
        if durable {
            if let Some(dir) = self.dest.parent() {
                sync_dir(dir).io_context(|| format!("fsync {}", dir.display()))?;
            }
        }
        Ok(())
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Rebuild `entry` under a temporary name next to its final one and verify its size
/// and SHA-256 against the manifest.
pub(super) fn restore_to_temp(src: Source<'_>, entry: &FileEntry) -> Result<Pending> {
    let Source {
        storage,
        server,
        m,
        mapper,
        owner,
    } = src;
    let objects = ObjectStore::new(storage, server);
    let local = mapper.local(&entry.path)?;
    let mut tmp_name = local
        .file_name()
        .ok_or_else(|| Error::corrupt(format!("bad manifest path {:?}", entry.path)))?
        .to_os_string();
    tmp_name.push(TEMP_SUFFIX);
    let tmp = local.with_file_name(tmp_name);
    let mtime = UNIX_EPOCH + Duration::from_secs(entry.mtime.max(0) as u64);
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .io_context(|| format!("creating {}", tmp.display()))?;
    let pending = Pending {
        tmp,
        dest: local,
        committed: false,
    };
    let tmp = &pending.tmp;
    let mut file = file;
    let not_started = |e: Error| {
        Error::new(
            e.kind(),
            format!("{e}; the restore is incomplete and will not start"),
        )
    };
    let got = rebuild(&objects, entry, &mut file).map_err(not_started)?;
    check_rebuilt(entry, &got, m.id.as_str()).map_err(not_started)?;
    file.set_permissions(fs::Permissions::from_mode(entry.mode & 0o7777))
        .io_context(|| format!("chmod {}", tmp.display()))?;
    file.set_modified(mtime)
        .io_context(|| format!("setting the mtime of {}", tmp.display()))?;
    if entry.path == PG_CONTROL {
        file.sync_all()
            .io_context(|| format!("fsync {}", tmp.display()))?;
    }
    owner.apply(tmp)?;
    Ok(pending)
}
