//! The encryption layer: every file written through it is encrypted
//! (`crypto::stream`), every file read is decrypted and authenticated, and sizes in
//! listings are the plaintext sizes, so the code above sees the same repository as
//! without encryption. It also names content with the repository's keyed hash.
//!
//! Left in clear: the root file and the wrapped key (they are needed to open the
//! rest), and lock files, which a separate connection writes and stale-lock recovery
//! reads before anything else is open; they hold host names and process ids.

use crate::codec::ContentHash;
use crate::crypto::stream::{plain_size, Opener, Sealer};
use crate::crypto::RepoKeys;
use crate::error::{Error, Result};
use crate::storage::api::{
    AtomicFile, Capabilities, Committed, DirEntry, FileInfo, Overwrite, Storage,
};
use std::io::{self, Read, Write};

/// A storage whose files are encrypted: see the module documentation.
pub struct Encrypted {
    inner: Box<dyn Storage>,
    keys: RepoKeys,
    in_clear: fn(&str) -> bool,
}

impl Encrypted {
    /// Encrypt everything stored in `inner` under `keys`, except the files for which
    /// `in_clear` (given a path, or a directory's path plus "/x") is true; the
    /// repository's layout decides which those are.
    pub fn new(inner: Box<dyn Storage>, keys: RepoKeys, in_clear: fn(&str) -> bool) -> Self {
        Encrypted {
            inner,
            keys,
            in_clear,
        }
    }
}

impl Storage for Encrypted {
    fn location(&self) -> String {
        self.inner.location()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    fn content_hash(&self) -> ContentHash {
        ContentHash::Hmac(self.keys.names.clone())
    }

    fn clean_incomplete_uploads(&self, older_than: std::time::Duration) -> Result<u64> {
        self.inner.clean_incomplete_uploads(older_than)
    }

    fn list(&self, dir: &str) -> Result<Vec<DirEntry>> {
        let mut entries = self.inner.list(dir)?;
        for e in entries.iter_mut().filter(|e| !e.is_dir) {
            let path = if dir.is_empty() {
                e.name.clone()
            } else {
                format!("{dir}/{}", e.name)
            };
            if !(self.in_clear)(&path) {
                e.size = plain_size(e.size);
            }
        }
        Ok(entries)
    }

    fn stat(&self, path: &str) -> Result<Option<FileInfo>> {
        let mut info = self.inner.stat(path)?;
        if let Some(i) = info
            .as_mut()
            .filter(|i| !i.is_dir && !(self.in_clear)(path))
        {
            i.size = plain_size(i.size);
        }
        Ok(info)
    }

    fn open_read(&self, path: &str) -> Result<Box<dyn Read + Send>> {
        let raw = self.inner.open_read(path)?;
        if (self.in_clear)(path) {
            return Ok(raw);
        }
        Ok(Box::new(Opener::new(raw, &self.keys.data)))
    }

    fn create(&self, dir: &str) -> Result<Box<dyn AtomicFile>> {
        self.seal(self.inner.create(dir)?, dir)
    }

    fn create_deferred(&self, dir: &str) -> Result<Box<dyn AtomicFile>> {
        self.seal(self.inner.create_deferred(dir)?, dir)
    }

    fn sync_deferred(&self) -> Result<()> {
        self.inner.sync_deferred()
    }

    fn create_dir_all(&self, dir: &str) -> Result<()> {
        self.inner.create_dir_all(dir)
    }

    fn remove_file(&self, path: &str) -> Result<()> {
        self.inner.remove_file(path)
    }

    fn remove_file_synced(&self, path: &str) -> Result<()> {
        self.inner.remove_file_synced(path)
    }

    fn remove_dir_all(&self, path: &str) -> Result<()> {
        self.inner.remove_dir_all(path)
    }
}

impl Encrypted {
    fn seal(&self, file: Box<dyn AtomicFile>, dir: &str) -> Result<Box<dyn AtomicFile>> {
        // The final name is known only at commit; files of the clear set are written
        // only in the root (root file, key) or in a locks directory.
        if dir.is_empty() || (self.in_clear)(&format!("{dir}/x")) {
            return Ok(Box::new(ClearFile {
                file,
                dir: dir.to_string(),
                in_clear: self.in_clear,
            }));
        }
        let sealer = Sealer::new(file, &self.keys.data).map_err(|e| {
            Error::io(
                format!("starting an encrypted file in {dir} of {}", self.location()),
                e,
            )
        })?;
        Ok(Box::new(SealedFile {
            sealer,
            dir: dir.to_string(),
        }))
    }
}

/// A file being written encrypted; the last chunk is sealed at commit.
struct SealedFile {
    sealer: Sealer<Box<dyn AtomicFile>>,
    dir: String,
}

impl Write for SealedFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.sealer.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.sealer.flush()
    }
}

impl AtomicFile for SealedFile {
    fn commit(self: Box<Self>, final_name: &str, overwrite: Overwrite) -> Result<Committed> {
        let dir = self.dir;
        let file = self
            .sealer
            .finish()
            .map_err(|e| Error::io(format!("finishing encrypted file {dir}/{final_name}"), e))?;
        file.commit(final_name, overwrite)
    }
}

/// A file in the root: clear if it is the root file or the key, else encrypted.
struct ClearFile {
    file: Box<dyn AtomicFile>,
    dir: String,
    in_clear: fn(&str) -> bool,
}

impl Write for ClearFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl AtomicFile for ClearFile {
    fn commit(self: Box<Self>, final_name: &str, overwrite: Overwrite) -> Result<Committed> {
        let path = if self.dir.is_empty() {
            final_name.to_string()
        } else {
            format!("{}/{final_name}", self.dir)
        };
        if !(self.in_clear)(&path) {
            // Nothing but the root file and the key is ever written in the root, so a
            // clear write of anything else is a bug: refuse it rather than leak.
            return Err(Error::invalid(format!(
                "refusing to store {path} unencrypted in an encrypted repository"
            )));
        }
        self.file.commit(final_name, overwrite)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::SubKey;
    use crate::storage::LocalStorage;

    const KEY_FILE: &str = "pgcellar.key";

    fn clear(path: &str) -> bool {
        path == KEY_FILE || path.split('/').nth(1) == Some("locks")
    }

    fn keys() -> RepoKeys {
        RepoKeys {
            data: SubKey::from_bytes([7; 32]),
            names: SubKey::from_bytes([8; 32]),
            key_id: "test".into(),
        }
    }

    #[test]
    fn files_are_stored_encrypted_and_listed_with_their_plain_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let enc = Encrypted::new(
            Box::new(LocalStorage::new(dir.path().to_path_buf())),
            keys(),
            clear,
        );
        enc.create_dir_all("main/wal").unwrap();
        enc.create_dir_all("main/locks").unwrap();
        let secret = b"a marker that must not appear on disk".repeat(3000);
        enc.write_all("main/wal/f", &secret, Overwrite::Never)
            .unwrap();
        enc.write_all("main/locks/l.lock", b"host 1", Overwrite::Never)
            .unwrap();
        enc.write_all(KEY_FILE, b"{}", Overwrite::Never).unwrap();
        let on_disk = std::fs::read(dir.path().join("main/wal/f")).unwrap();
        assert!(!on_disk.windows(8).any(|w| w == b"a marker"));
        assert_eq!(enc.read_all("main/wal/f").unwrap(), secret);
        assert_eq!(
            std::fs::read(dir.path().join("main/locks/l.lock")).unwrap(),
            b"host 1"
        );
        assert_eq!(std::fs::read(dir.path().join(KEY_FILE)).unwrap(), b"{}");
        let listed = enc.list("main/wal").unwrap();
        assert_eq!(listed[0].size, secret.len() as u64);
        assert_eq!(
            enc.stat("main/wal/f").unwrap().unwrap().size,
            secret.len() as u64
        );
        assert!(enc
            .write_all("stray.json", b"{}", Overwrite::Never)
            .is_err());

        let mut bad = on_disk.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        std::fs::write(dir.path().join("main/wal/f"), bad).unwrap();
        assert!(enc.read_all("main/wal/f").is_err());
        let other = RepoKeys {
            data: SubKey::from_bytes([9; 32]),
            ..keys()
        };
        std::fs::write(dir.path().join("main/wal/f"), on_disk).unwrap();
        let enc2 = Encrypted::new(
            Box::new(LocalStorage::new(dir.path().to_path_buf())),
            other,
            clear,
        );
        assert!(enc2.read_all("main/wal/f").is_err());
    }
}
