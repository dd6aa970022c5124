//! The dry-run layer: reads pass through to the driver; writes, links and removals
//! are logged (at debug level, `-vv`), counted and not performed.

use crate::error::{Error, Result};
use crate::log_debug;
use crate::storage::api::{
    AtomicFile, Capabilities, Committed, DirEntry, FileInfo, Overwrite, Storage,
};
use crate::storage::path::{check_final_name, check_path, join, split_path};
use std::io::{self, Read, Write};
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A storage whose changes are not made: see the module documentation.
///
/// `S` is any handle to a driver (`&dyn Storage`, `Box<dyn Storage>`, `&LocalStorage`,
/// ...). Built with `active == false` ([`DryRun::when`]) it passes changes through
/// too, so a command that may or may not be a dry run sends every change through
/// one value instead of testing the flag at each one.
pub struct DryRun<S> {
    inner: S,
    active: bool,
    skipped: Arc<AtomicU64>,
}

impl<S> DryRun<S>
where
    S: Deref + Send + Sync,
    S::Target: Storage,
{
    /// A dry run around `inner`.
    pub fn new(inner: S) -> Self {
        Self::when(inner, true)
    }

    /// A dry run around `inner` if `active`, else `inner` unchanged.
    pub fn when(inner: S, active: bool) -> Self {
        DryRun {
            inner,
            active,
            skipped: Arc::new(AtomicU64::new(0)),
        }
    }

    /// How many changes (writes, directory creations, link batches, removals) were
    /// skipped so far.
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }

    /// Log and count one skipped change; `true` when it was skipped (dry run).
    fn skip(&self, what: std::fmt::Arguments<'_>) -> bool {
        if self.active {
            log_debug!("dry run: not {what} in {}", self.inner.location());
            self.skipped.fetch_add(1, Ordering::Relaxed);
        }
        self.active
    }

    fn sink(&self, dir: &str) -> Result<Box<dyn AtomicFile>> {
        // The same path check the driver would make.
        if !dir.is_empty() {
            check_path(dir)?;
        }
        Ok(Box::new(DryRunFile {
            dir: dir.to_string(),
            location: self.inner.location(),
            skipped: self.skipped.clone(),
        }))
    }
}

impl<S> Storage for DryRun<S>
where
    S: Deref + Send + Sync,
    S::Target: Storage,
{
    fn location(&self) -> String {
        self.inner.location()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    fn content_hash(&self) -> crate::codec::ContentHash {
        self.inner.content_hash()
    }

    fn clean_incomplete_uploads(&self, older_than: std::time::Duration) -> Result<u64> {
        if self.skip(format_args!("aborting unfinished uploads")) {
            return Ok(0);
        }
        self.inner.clean_incomplete_uploads(older_than)
    }

    fn list(&self, dir: &str) -> Result<Vec<DirEntry>> {
        self.inner.list(dir)
    }

    fn stat(&self, path: &str) -> Result<Option<FileInfo>> {
        self.inner.stat(path)
    }

    fn open_read(&self, path: &str) -> Result<Box<dyn Read + Send>> {
        self.inner.open_read(path)
    }

    fn read_all(&self, path: &str) -> Result<Vec<u8>> {
        self.inner.read_all(path)
    }

    fn create(&self, dir: &str) -> Result<Box<dyn AtomicFile>> {
        if self.active {
            return self.sink(dir);
        }
        self.inner.create(dir)
    }

    fn create_deferred(&self, dir: &str) -> Result<Box<dyn AtomicFile>> {
        if self.active {
            return self.sink(dir);
        }
        self.inner.create_deferred(dir)
    }

    fn sync_deferred(&self) -> Result<()> {
        if self.active {
            return Ok(());
        }
        self.inner.sync_deferred()
    }

    fn create_dir_all(&self, dir: &str) -> Result<()> {
        if self.skip(format_args!("creating directory {dir:?}")) {
            return Ok(());
        }
        self.inner.create_dir_all(dir)
    }

    fn remove_file(&self, path: &str) -> Result<()> {
        if self.skip(format_args!("removing {path:?}")) {
            return Ok(());
        }
        self.inner.remove_file(path)
    }

    fn remove_file_synced(&self, path: &str) -> Result<()> {
        if self.skip(format_args!("removing {path:?}")) {
            return Ok(());
        }
        self.inner.remove_file_synced(path)
    }

    fn remove_dir_all(&self, path: &str) -> Result<()> {
        if self.skip(format_args!("removing the tree {path:?}")) {
            return Ok(());
        }
        self.inner.remove_dir_all(path)
    }

    fn write_all(&self, path: &str, data: &[u8], overwrite: Overwrite) -> Result<Committed> {
        if self.active {
            // Through the sink, so the path is checked and the commit counted once.
            let (dir, name) = split_path(path)?;
            let mut f = self.sink(dir)?;
            f.write_all(data)
                .map_err(|e| Error::io(format!("writing {path} in {}", self.location()), e))?;
            return f.commit(name, overwrite);
        }
        self.inner.write_all(path, data, overwrite)
    }
}

/// A file of a dry run: its bytes are discarded; committing logs and counts it.
struct DryRunFile {
    dir: String,
    location: String,
    skipped: Arc<AtomicU64>,
}

impl Write for DryRunFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AtomicFile for DryRunFile {
    /// Reports [`Committed::Created`]: without writing, whether the name would have
    /// been taken by then is unknowable.
    fn commit(self: Box<Self>, final_name: &str, _overwrite: Overwrite) -> Result<Committed> {
        check_final_name(final_name)?;
        let path = join(&self.dir, final_name);
        log_debug!("dry run: not writing {path:?} in {}", self.location);
        self.skipped.fetch_add(1, Ordering::Relaxed);
        Ok(Committed::Created)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::LocalStorage;

    fn repo() -> (tempfile::TempDir, LocalStorage) {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStorage::new(dir.path().join("repo"));
        s.create_dir_all("a/b").unwrap();
        s.write_all("a/b/f", b"one", Overwrite::Never).unwrap();
        (dir, s)
    }

    #[test]
    fn reads_pass_through_and_changes_are_counted_not_made() {
        let (_dir, local) = repo();
        let s = DryRun::new(&local);
        assert_eq!(s.location(), local.location());
        assert_eq!(s.capabilities(), local.capabilities());
        assert_eq!(s.read_all("a/b/f").unwrap(), b"one");
        assert_eq!(s.list("a/b").unwrap().len(), 1);
        assert!(s.stat("a/b/f").unwrap().is_some());

        s.create_dir_all("x/y").unwrap();
        assert_eq!(
            s.write_all("a/b/g", b"two", Overwrite::Never).unwrap(),
            Committed::Created
        );
        s.write_all("a/b/f", b"three", Overwrite::Replace).unwrap();
        let mut f = s.create_deferred("a/b").unwrap();
        f.write_all(&[1u8; 100_000]).unwrap();
        f.commit("h", Overwrite::Never).unwrap();
        s.sync_deferred().unwrap();
        s.remove_file("a/b/f").unwrap();
        s.remove_file_synced("a/b/f").unwrap();
        s.remove_dir_all("a").unwrap();
        assert_eq!(s.skipped(), 7);

        // Nothing changed underneath.
        assert!(local.stat("x").unwrap().is_none());
        assert_eq!(local.read_all("a/b/f").unwrap(), b"one");
        let names: Vec<_> = local
            .list("a")
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, ["b"]);
        assert_eq!(local.list("a/b").unwrap().len(), 1, "no temporary files");
    }

    #[test]
    fn bad_paths_are_refused_as_the_driver_would() {
        let (_dir, local) = repo();
        let s = DryRun::new(&local);
        assert!(s.create("../x").is_err());
        assert!(s.write_all("../x", b"", Overwrite::Never).is_err());
        let f = s.create("a/b").unwrap();
        assert!(f.commit("../../x", Overwrite::Never).is_err());
        assert_eq!(s.skipped(), 0);
    }

    #[test]
    fn inactive_it_passes_changes_through() {
        let (_dir, local) = repo();
        let boxed: Box<dyn Storage> = Box::new(local.clone());
        let s = DryRun::when(boxed, false);
        s.write_all("a/g", b"two", Overwrite::Never).unwrap();
        s.remove_file("a/b/f").unwrap();
        assert_eq!(s.skipped(), 0);
        assert_eq!(local.read_all("a/g").unwrap(), b"two");
        assert!(local.stat("a/b/f").unwrap().is_none());
    }
}
