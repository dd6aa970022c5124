//! The storage interface: the trait every driver implements, the types it speaks,
//! and the provided methods that fall back on what every driver has when a
//! [`Capabilities`] flag is missing.

use super::path::split_path;
use crate::error::{Error, Result};
use std::io::{Read, Write};
use std::time::SystemTime;

/// What to do when the final name of a committed file already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overwrite {
    /// Keep the existing file and report [`Committed::AlreadyExists`].
    Never,
    /// Atomically replace it (manifests, status files).
    Replace,
    /// For names derived from the content (a SHA-256 in the name: WAL files,
    /// objects): keep an existing file, as [`Overwrite::Never`] does, but a driver may
    /// skip the exclusive-create handshake, since any writer of such a name writes the
    /// same bytes. Two racing writers may then both report [`Committed::Created`].
    IfAbsent,
}

/// Result of committing an [`AtomicFile`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    /// The file is now visible under its final name.
    Created,
    /// With [`Overwrite::Never`]: something already had that name; nothing changed.
    AlreadyExists,
}

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// File name (no directory part).
    pub name: String,
    /// Whether it is a directory.
    pub is_dir: bool,
    /// Size in bytes (0 for directories).
    pub size: u64,
}

/// Metadata of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInfo {
    /// Size in bytes.
    pub size: u64,
    /// Whether it is a directory.
    pub is_dir: bool,
    /// Modification time.
    pub mtime: SystemTime,
}

/// What a driver can do beyond the operations every driver has.
///
/// Only what the common layer branches on is here; each flag must be true of the
/// driver on every repository it opens, so a driver in doubt says `false`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Committing with [`Overwrite::Never`] is atomic: of racing writers of one name
    /// exactly one wins and the others change nothing (guarantee 2, never overwrite
    /// history, rests on it).
    pub atomic_no_replace: bool,
}

/// A file being written under a temporary name until [`AtomicFile::commit`].
///
/// Dropping it without committing removes the temporary file (best effort).
pub trait AtomicFile: Write + Send {
    /// Flush and fsync the data, give it `final_name` in the directory it was created
    /// in, and fsync that directory. `final_name` may also be `sub/name` in an existing
    /// subdirectory (then `sub` is synced): a content-addressed object's name, and so
    /// its fan-out directory, is known only once its bytes are written.
    fn commit(self: Box<Self>, final_name: &str, overwrite: Overwrite) -> Result<Committed>;
}

/// The operations pgcellar needs from a repository's storage.
pub trait Storage: Send + Sync {
    /// Human description of the location, for messages (no secrets).
    fn location(&self) -> String;

    /// List a directory; a missing directory is an empty list.
    fn list(&self, dir: &str) -> Result<Vec<DirEntry>>;

    /// Metadata of a path, or `None` when it does not exist.
    fn stat(&self, path: &str) -> Result<Option<FileInfo>>;

    /// Open a file for streaming reads; a missing file is [`crate::ErrorKind::NotFound`].
    fn open_read(&self, path: &str) -> Result<Box<dyn Read + Send>>;

    /// Start writing a new file in directory `dir` (which must exist).
    fn create(&self, dir: &str) -> Result<Box<dyn AtomicFile>>;

    /// Like [`Storage::create`], but committing may skip the fsyncs: the caller must
    /// call [`Storage::sync_deferred`] before anything relies on the file (base-backup
    /// does, before its manifest). By default the same as `create`.
    fn create_deferred(&self, dir: &str) -> Result<Box<dyn AtomicFile>> {
        self.create(dir)
    }

    /// Make every file committed through [`Storage::create_deferred`] durable, with its
    /// directory entry. By default nothing to do (they were synced on commit).
    fn sync_deferred(&self) -> Result<()> {
        Ok(())
    }

    /// Create a directory and its parents (mode 0700), durably.
    fn create_dir_all(&self, dir: &str) -> Result<()>;

    /// Remove one file; a missing file is not an error.
    fn remove_file(&self, path: &str) -> Result<()>;

    /// Remove one file and make the removal durable (the directory entry is synced
    /// where the backend can); a missing file is not an error.
    fn remove_file_synced(&self, path: &str) -> Result<()>;

    /// Remove a directory tree; a missing one is not an error.
    fn remove_dir_all(&self, path: &str) -> Result<()>;

    /// What this driver can do (see [`Capabilities`]).
    fn capabilities(&self) -> Capabilities;

    /// How content stored here is named: keyed in an encrypted repository (the
    /// encryption layer holds the key), plain SHA-256 otherwise.
    fn content_hash(&self) -> crate::codec::ContentHash {
        crate::codec::ContentHash::Sha256
    }

    /// Abort unfinished uploads (left by a crashed writer) started longer ago than
    /// `older_than`, and say how many there were. Only object stores have them.
    fn clean_incomplete_uploads(&self, older_than: std::time::Duration) -> Result<u64> {
        let _ = older_than;
        Ok(0)
    }

    /// Read a whole (small) file into memory.
    fn read_all(&self, path: &str) -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        self.open_read(path)?
            .read_to_end(&mut buf)
            .map_err(|e| Error::io(format!("reading {} in {}", path, self.location()), e))?;
        Ok(buf)
    }

    /// Write a small file atomically and durably under `path`.
    fn write_all(&self, path: &str, data: &[u8], overwrite: Overwrite) -> Result<Committed> {
        let (dir, name) = split_path(path)?;
        let mut f = self.create(dir)?;
        f.write_all(data)
            .map_err(|e| Error::io(format!("writing {} in {}", path, self.location()), e))?;
        f.commit(name, overwrite)
    }
}
