//! The [`Storage`] trait for [`S3Storage`], on the requests of `driver` and the
//! uploads and downloads of `file`.

use super::driver::{S3Storage, Source, CLAIMS};
use super::file::{S3File, S3Reader};
use crate::error::Result;
use crate::storage::api::{AtomicFile, Capabilities, DirEntry, FileInfo, Storage};
use crate::storage::path::check_path;
use std::io::Read;
use std::time::{Duration, SystemTime};

impl Storage for S3Storage {
    fn location(&self) -> String {
        self.conn.location.clone()
    }

    fn list(&self, dir: &str) -> Result<Vec<DirEntry>> {
        if !dir.is_empty() {
            check_path(dir)?;
        }
        let (files, dirs) = self.list_keys(&self.conn.dir_prefix(dir), true)?;
        let mut out: Vec<DirEntry> = files
            .into_iter()
            .filter(|f| !f.name.is_empty()) // the directory's own marker
            .map(|f| DirEntry {
                name: f.name,
                is_dir: false,
                size: f.size,
            })
            .collect();
        out.extend(
            dirs.into_iter()
                .filter(|d| !(dir.is_empty() && d == CLAIMS))
                .map(|name| DirEntry {
                    name,
                    is_dir: true,
                    size: 0,
                }),
        );
        Ok(out)
    }

    fn stat(&self, path: &str) -> Result<Option<FileInfo>> {
        if path.is_empty() {
            return Ok(Some(FileInfo {
                size: 0,
                is_dir: true,
                mtime: SystemTime::UNIX_EPOCH,
            }));
        }
        check_path(path)?;
        // One listing answers both "a file of that name" and "a directory of that
        // name": keys sharing the name as a prefix are few (names are ids and hashes).
        let key = self.conn.key(path);
        let (files, dirs) = self.list_keys(&key, true)?;
        if let Some(f) = files.iter().find(|f| f.name.is_empty()) {
            return Ok(Some(FileInfo {
                size: f.size,
                is_dir: false,
                mtime: f.mtime,
            }));
        }
        if dirs.iter().any(|d| d.is_empty()) {
            let mtime = self
                .head(&format!("{key}/"))?
                .map_or(SystemTime::UNIX_EPOCH, |(_, t)| t);
            return Ok(Some(FileInfo {
                size: 0,
                is_dir: true,
                mtime,
            }));
        }
        Ok(None)
    }

    fn open_read(&self, path: &str) -> Result<Box<dyn Read + Send>> {
        check_path(path)?;
        let c = &self.conn;
        let key = c.key(path);
        let out = c
            .block_on(c.client.get_object().bucket(&c.bucket).key(&key).send())
            .map_err(|e| c.error(&format!("reading {path}"), e))?;
        Ok(Box::new(S3Reader::new(self.conn.clone(), path, out.body)))
    }

    fn create(&self, dir: &str) -> Result<Box<dyn AtomicFile>> {
        if !dir.is_empty() {
            check_path(dir)?;
        }
        Ok(Box::new(S3File::new(self.clone(), dir)))
    }

    fn create_dir_all(&self, dir: &str) -> Result<()> {
        if dir.is_empty() {
            return Ok(());
        }
        check_path(dir)?;
        let marker = self.conn.dir_prefix(dir);
        if self.head(&marker)?.is_none() {
            self.put(&marker, &Source::Bytes(bytes::Bytes::new()), false)?;
        }
        Ok(())
    }

    fn remove_file(&self, path: &str) -> Result<()> {
        check_path(path)?;
        self.delete_key(&self.conn.key(path))
    }

    fn remove_file_synced(&self, path: &str) -> Result<()> {
        // A DELETE is durable once acknowledged.
        self.remove_file(path)
    }

    fn remove_dir_all(&self, path: &str) -> Result<()> {
        check_path(path)?;
        let prefix = self.conn.dir_prefix(path);
        let (files, _) = self.list_keys(&prefix, false)?;
        // The marker (`path/` itself, the empty name) last: until it goes, an
        // interrupted removal still shows the directory.
        let mut names: Vec<String> = files.into_iter().map(|f| f.name).collect();
        names.sort_by_key(|n| n.is_empty());
        for name in names {
            self.delete_key(&format!("{prefix}{name}"))?;
        }
        Ok(())
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            // Through the claim handshake, not the store (see `exclusive`).
            atomic_no_replace: true,
        }
    }

    fn clean_incomplete_uploads(&self, older_than: Duration) -> Result<u64> {
        let c = &self.conn;
        let horizon = SystemTime::now()
            .checked_sub(older_than)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let mut stale = Vec::new();
        let (mut key_marker, mut id_marker): (Option<String>, Option<String>) = (None, None);
        loop {
            let out = c
                .block_on(
                    c.client
                        .list_multipart_uploads()
                        .bucket(&c.bucket)
                        .prefix(&c.root)
                        .set_key_marker(key_marker.take())
                        .set_upload_id_marker(id_marker.take())
                        .send(),
                )
                .map_err(|e| c.error("listing unfinished uploads", e))?;
            for u in out.uploads() {
                let started = u
                    .initiated()
                    .and_then(|t| SystemTime::try_from(*t).ok())
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                if let (Some(key), Some(id)) = (u.key(), u.upload_id()) {
                    if started < horizon {
                        stale.push((key.to_string(), id.to_string()));
                    }
                }
            }
            if out.is_truncated() != Some(true) {
                break;
            }
            key_marker = out.next_key_marker().map(str::to_string);
            id_marker = out.next_upload_id_marker().map(str::to_string);
            if key_marker.is_none() {
                break;
            }
        }
        for (key, id) in &stale {
            self.abort_upload(key, id)?;
        }
        Ok(stale.len() as u64)
    }
}
