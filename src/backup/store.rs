//! Storing the walked files: each compressed into the backup, or hard-linked to the
//! parent backup's copy when it is provably unchanged.

use super::options::BackupOptions;
use super::walk::{mode_of, Job};
use crate::codec::{self, Codec};
use crate::error::{Error, IoContext, Result};
use crate::repo::manifest::{self, BackupId, FileEntry, Manifest};
use crate::repo::ServerInfo;
use crate::storage::{self, Overwrite, Storage};
use crate::util::progress::progress_bar;
use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::sync::Mutex;

/// A file is trusted unchanged by size and mtime only when its mtime is at least this
/// many seconds before the parent backup started (covers 1 s timestamp granularity).
pub const SAFE_HORIZON_SECS: i64 = 2;

/// The most recent complete backup, to hard-link unchanged files to; `None` with a
/// warning when it cannot be read (the backup is then a full one).
pub(super) fn find_parent(
    storage: &dyn Storage,
    server: &ServerInfo,
    codec: Codec,
) -> Option<Manifest> {
    let ids = match manifest::list_ids(storage, &server.name) {
        Ok(ids) => ids,
        Err(e) => {
            crate::log_warn!("cannot list backups ({e}); taking a full backup");
            return None;
        }
    };
    let id = ids.last()?;
    match manifest::load(storage, &server.name, id) {
        Ok(m) if m.system_identifier != server.system_identifier => None,
        // Reused files are links to the parent's stored bytes, so they must be
        // compressed the same way as this backup's.
        Ok(m) if m.compression != codec.compression => {
            crate::log_info!(
                "backup {id} uses {} compression, not {}: copying every file",
                m.compression,
                codec.compression
            );
            None
        }
        Ok(m) => Some(m),
        Err(e) => {
            crate::log_warn!("cannot read backup {id} ({e}); taking a full backup");
            None
        }
    }
}

/// Shared state of the storing workers.
struct StoreCtx<'a> {
    storage: &'a dyn Storage,
    server: &'a str,
    id: &'a BackupId,
    codec: Codec,
    parent: Option<&'a Manifest>,
    parent_files: HashMap<&'a str, &'a FileEntry>,
    checksum: bool,
    links: Mutex<Vec<(String, String)>>,
    progress: indicatif::ProgressBar,
}

#[allow(clippy::too_many_arguments)]
pub(super) fn store_files(
    storage: &dyn Storage,
    server: &ServerInfo,
    id: &BackupId,
    codec: Codec,
    parent: Option<&Manifest>,
    opts: &BackupOptions,
    jobs: usize,
    mut files: Vec<Job>,
) -> Result<Vec<FileEntry>> {
    // Largest first, so that the last worker does not start a huge file alone.
    files.sort_by(|a, b| b.size.cmp(&a.size).then_with(|| a.path.cmp(&b.path)));
    let total: u64 = files.iter().map(|f| f.size).sum();
    let ctx = StoreCtx {
        storage,
        server: &server.name,
        id,
        codec,
        parent,
        parent_files: parent
            .map(|p| p.files.iter().map(|f| (f.path.as_str(), f)).collect())
            .unwrap_or_default(),
        checksum: opts.checksum,
        links: Mutex::new(Vec::new()),
        progress: progress_bar(total, opts.progress),
    };
    let results: Mutex<Vec<FileEntry>> = Mutex::new(Vec::with_capacity(files.len()));
    let stored = crate::util::workers::try_for_each(jobs, &files, |_, job| {
        if let Some(entry) = store_one(&ctx, job)? {
            if let Ok(mut r) = results.lock() {
                r.push(entry);
            }
        }
        ctx.progress.inc(job.size);
        Ok(())
    });
    ctx.progress.finish_and_clear();
    stored?;
    let links = ctx.links.into_inner().unwrap_or_default();
    for chunk in links.chunks(1000) {
        storage.link_or_copy_all(chunk)?;
    }
    // One flush for every file instead of an fsync each (about 15 ms apiece on
    // ordinary disks); still well before the manifest makes the backup count.
    storage.sync_deferred()?;
    let mut out = results.into_inner().unwrap_or_default();
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// Store one file; `None` when it vanished meanwhile.
fn store_one(ctx: &StoreCtx<'_>, job: &Job) -> Result<Option<FileEntry>> {
    let meta = match fs::metadata(&job.src) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("stat {}", job.src.display()), e)),
    };
    let size = meta.len();
    let mtime = meta.mtime();
    let mode = mode_of(&meta);
    let parent_entry = match (ctx.parent, ctx.parent_files.get(job.path.as_str())) {
        (Some(parent), Some(prev)) if prev.size == size => Some((parent, *prev)),
        _ => None,
    };
    let link = |parent: &Manifest, prev: &FileEntry| -> FileEntry {
        let from = manifest::stored_path(ctx.server, &parent.id, &prev.path, parent.compression);
        let to = manifest::stored_path(ctx.server, ctx.id, &job.path, ctx.codec.compression);
        if let Ok(mut l) = ctx.links.lock() {
            l.push((from, to));
        }
        FileEntry {
            path: job.path.clone(),
            size,
            mtime,
            mode,
            sha256: prev.sha256.clone(),
            stored_size: prev.stored_size,
            reused: true,
        }
    };
    if let Some((parent, prev)) = parent_entry {
        if prev.mtime == mtime {
            let trusted =
                !ctx.checksum && mtime + SAFE_HORIZON_SECS <= parent.start_time.timestamp();
            // Same size and mtime but not provably old (or --checksum): most likely
            // unchanged, so hashing first usually saves the compression.
            let same = trusted
                || match File::open(&job.src) {
                    Ok(mut f) => {
                        let (sha, _) = codec::hash(&[], &mut f)
                            .io_context(|| format!("reading {}", job.src.display()))?;
                        sha == prev.sha256
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(Error::io(format!("opening {}", job.src.display()), e)),
                };
            if same {
                return Ok(Some(link(parent, prev)));
            }
        }
    }
    let mut file = match File::open(&job.src) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("opening {}", job.src.display()), e)),
    };
    let target = manifest::stored_path(ctx.server, ctx.id, &job.path, ctx.codec.compression);
    let (dir, name) = storage::split_path(&target)?;
    // Synced all at once by `sync_deferred` before the manifest is written.
    let mut out = ctx.storage.create_deferred(dir)?;
    // A file that changes while read is fine: WAL replay from the backup's start
    // rewrites every block changed after it.
    let stats = codec::encode(&[], &mut file, &mut out, ctx.codec).map_err(|e| {
        Error::io(
            format!(
                "storing {} into {}",
                job.src.display(),
                ctx.storage.location()
            ),
            e,
        )
    })?;
    if let Some((parent, prev)) = parent_entry {
        // A newer mtime usually means new content, so the file was copied in one pass;
        // if its SHA-256 shows it is the same after all, link it instead (dropping the
        // uncommitted copy removes it).
        if stats.sha256 == prev.sha256 && stats.size == prev.size {
            drop(out);
            return Ok(Some(link(parent, prev)));
        }
    }
    out.commit(name, Overwrite::Replace)?;
    Ok(Some(FileEntry {
        path: job.path.clone(),
        size: stats.size,
        mtime,
        mode,
        sha256: stats.sha256,
        stored_size: stats.stored_size,
        reused: false,
    }))
}
#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};
    use std::time::Duration;

    fn parent_with(entry: FileEntry, start: DateTime<Utc>) -> Manifest {
        use crate::repo::manifest::Totals;
        let v = serde_json::json!({
            "format": 1, "id": "20261122T000000Z", "label": "", "status": "done",
            "parent": null, "server": "main", "pg_version_num": 150010,
            "system_identifier": "1", "wal_segment_size": 1048576, "timeline": 1,
            "start_lsn": "0/1", "stop_lsn": "0/2", "start_wal": "000000010000000000000001",
            "stop_wal": "000000010000000000000001", "start_time": start, "stop_time": start,
            "backup_label": "", "tablespace_map": "", "tablespaces": [],
            "compression": "zstd", "compression_level": 3, "totals": Totals::default(),
            "directories": [], "files": [entry], "created_by": "test"
        });
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn reuse_follows_the_safe_horizon() {
        use crate::storage::LocalStorage;
        let d = tempfile::tempdir().unwrap();
        let s = LocalStorage::new(d.path().join("repo"));
        let id = BackupId::parse("20261123T000000Z").unwrap();
        s.create_dir_all("main/backups/20261123T000000Z/data")
            .unwrap();
        let src = d.path().join("f");
        fs::write(&src, b"hello").unwrap();
        let old = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        File::options()
            .write(true)
            .open(&src)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let job = Job {
            src: src.clone(),
            path: "data/f".into(),
            size: 5,
        };
        let hello = FileEntry {
            path: "data/f".into(),
            size: 5,
            mtime: 1_700_000_000,
            mode: 0o600,
            sha256: codec::hash(b"hello", &mut io::empty()).unwrap().0,
            stored_size: 14,
            reused: false,
        };
        let other = FileEntry {
            sha256: "0".repeat(64),
            ..hello.clone()
        };
        let decide = |parent: Option<&Manifest>, checksum: bool| {
            let ctx = StoreCtx {
                storage: &s,
                server: "main",
                id: &id,
                codec: Codec::default(),
                parent,
                parent_files: parent
                    .map(|p| p.files.iter().map(|f| (f.path.as_str(), f)).collect())
                    .unwrap_or_default(),
                checksum,
                links: Mutex::new(Vec::new()),
                progress: indicatif::ProgressBar::hidden(),
            };
            let e = store_one(&ctx, &job).unwrap().unwrap();
            let links = ctx.links.into_inner().unwrap();
            assert_eq!(e.reused, links.len() == 1);
            e
        };
        let start = |secs: i64| DateTime::<Utc>::from_timestamp(secs, 0).unwrap();
        // No parent: copied, hashed.
        let e = decide(None, false);
        assert!(!e.reused);
        assert_eq!(e.sha256, hello.sha256);
        // Same size and mtime, well before the parent's start: trusted without reading
        // (the parent's recorded hash differs, proving nothing was read).
        let p = parent_with(other.clone(), start(1_700_000_100));
        assert!(decide(Some(&p), false).reused);
        // ... unless --checksum, which reads and sees the difference.
        assert!(!decide(Some(&p), true).reused);
        // Within the horizon of the parent's start, the hash decides.
        let p = parent_with(other, start(1_700_000_001));
        assert!(!decide(Some(&p), false).reused);
        let p = parent_with(hello.clone(), start(1_700_000_001));
        assert!(decide(Some(&p), false).reused);
        // A newer mtime is copied in one pass, and linked after all when the hash
        // matches (leaving no stored copy behind); a different hash keeps the copy.
        let newer = FileEntry {
            mtime: 1_600_000_000,
            ..hello
        };
        let p = parent_with(newer.clone(), start(1_700_000_100));
        assert!(decide(Some(&p), false).reused);
        let copy = d
            .path()
            .join("repo/main/backups/20261123T000000Z/data/f.zst");
        fs::remove_file(&copy).unwrap(); // from the earlier copies
        assert!(decide(Some(&p), true).reused);
        assert!(!copy.exists());
        let p = parent_with(
            FileEntry {
                sha256: "1".repeat(64),
                ..newer
            },
            start(1_700_000_100),
        );
        assert!(!decide(Some(&p), false).reused);
        assert!(copy.exists());
        // A file that vanished is skipped, not an error.
        fs::remove_file(&src).unwrap();
        let ctx = StoreCtx {
            storage: &s,
            server: "main",
            id: &id,
            codec: Codec::default(),
            parent: None,
            parent_files: HashMap::new(),
            checksum: false,
            links: Mutex::new(Vec::new()),
            progress: indicatif::ProgressBar::hidden(),
        };
        assert!(store_one(&ctx, &job).unwrap().is_none());
    }
}
