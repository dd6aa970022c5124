//! Restoring the files: each rebuilt under a temporary name, verified against the
//! manifest's size and SHA-256, and only then renamed into place.

use super::dest::PathMapper;
use super::options::RestoreOptions;
use super::owner::Owner;
use crate::codec;
use crate::error::{Error, IoContext, Result};
use crate::repo::manifest::{FileEntry, Manifest};
use crate::repo::objects::{check_rebuilt, rebuild, ObjectStore};
use crate::storage::Storage;
use crate::util::sync_dir;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
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
    let progress = crate::util::progress::progress_bar(total, opts.progress && files.len() > 1);
    let written = AtomicUsize::new(0);
    let kept = AtomicUsize::new(0);
    let restored = crate::util::workers::try_for_each(jobs, &files, |_, entry| {
        let counter = if restore_one(src, entry, opts.delta)? {
            &written
        } else {
            &kept
        };
        counter.fetch_add(1, Ordering::Relaxed);
        progress.inc(entry.size);
        Ok(())
    });
    progress.finish_and_clear();
    restored?;
    Ok((written.into_inner() as u64, kept.into_inner() as u64))
}

/// Restore one file; `false` when `--delta` found it already identical.
fn restore_one(src: Source<'_>, entry: &FileEntry, delta: bool) -> Result<bool> {
    let Source { mapper, .. } = src;
    let local = mapper.local(&entry.path)?;
    if delta {
        if let Ok(meta) = fs::symlink_metadata(&local) {
            if meta.is_file() && meta.len() == entry.size {
                let mut f =
                    File::open(&local).io_context(|| format!("opening {}", local.display()))?;
                let (sha, _) = codec::hash(&[], &mut f)
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
    let not_started =
        |e: Error| Error::new(e.kind(), format!("{e}; the restore is incomplete and will not start"));
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
