//! The local-filesystem driver (also used for NFS and other mounts).

use super::api::{AtomicFile, Capabilities, Committed, DirEntry, FileInfo, Overwrite, Storage};
use super::path::{check_final_name, check_path};
use crate::error::{Error, IoContext, Result};
use crate::util::{sync_dir, temp_name};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// A repository in a directory of this host.
#[derive(Debug, Clone)]
pub struct LocalStorage {
    root: PathBuf,
    refuse_root: bool,
}

impl LocalStorage {
    /// Storage rooted at `root` (which need not exist yet).
    pub fn new(root: PathBuf) -> Self {
        LocalStorage {
            root,
            refuse_root: false,
        }
    }

    /// Refuse every write while the process runs as root.
    ///
    /// PostgreSQL never runs as root, so the account that archives and recovers is
    /// never root either: a file root creates here (0600, owned by root) is one that
    /// `archive_command` and `restore_command` cannot read, and archiving or recovery
    /// then fails days later. Refusing at once, with the fix in the message, beats
    /// handing files to another owner behind the user's back (chown is also not
    /// possible on root-squashed NFS, the common mount for a backup host).
    pub fn refusing_root_writes(mut self) -> Self {
        self.refuse_root = true;
        self
    }

    /// Fail when this write would leave a root-owned file in the repository.
    fn check_writer(&self) -> Result<()> {
        // SAFETY: geteuid has no preconditions.
        if self.refuse_root && unsafe { libc::geteuid() } == 0 {
            return Err(Error::config(format!(
                "refusing to write the repository {} as root: PostgreSQL's account could \
                 not read what root writes; run this as the repository's owner (e.g. \
                 'runuser -u postgres -- ...'), or pass --allow-root if root is meant to own it",
                self.root.display()
            )));
        }
        Ok(())
    }

    fn create_file(&self, dir: &str, sync: bool) -> Result<Box<dyn AtomicFile>> {
        self.check_writer()?;
        let dir = self.abs(dir)?;
        let tmp = dir.join(temp_name());
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .io_context(|| format!("creating {}", tmp.display()))?;
        Ok(Box::new(LocalAtomicFile {
            writer: Some(BufWriter::with_capacity(256 * 1024, file)),
            dir,
            tmp,
            done: false,
            sync,
        }))
    }

    fn abs(&self, path: &str) -> Result<PathBuf> {
        if path.is_empty() {
            return Ok(self.root.clone());
        }
        check_path(path)?;
        Ok(self.root.join(path))
    }
}

/// Flush every dirty page and inode of the filesystem holding `path` (one call
/// instead of an fsync per file; Linux reports write-back errors since 5.8).
pub fn syncfs(path: &Path) -> io::Result<()> {
    let dir = File::open(path)?;
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: the descriptor is valid for the duration of the call.
        if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        drop(dir);
        // SAFETY: sync has no preconditions.
        unsafe { libc::sync() };
    }
    Ok(())
}

impl Storage for LocalStorage {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn list(&self, dir: &str) -> Result<Vec<DirEntry>> {
        let path = self.abs(dir)?;
        let rd = match fs::read_dir(&path) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(format!("listing {}", path.display()), e)),
        };
        let mut out = Vec::new();
        for entry in rd {
            let entry = entry.io_context(|| format!("listing {}", path.display()))?;
            let Ok(name) = entry.file_name().into_string() else {
                continue; // not ours: pgcellar writes only UTF-8 names
            };
            // file_type() is free on Linux (d_type); only regular files need a stat for size.
            let ft = match entry.file_type() {
                Ok(ft) => ft,
                Err(_) => continue,
            };
            let size = if ft.is_file() {
                match entry.metadata() {
                    Ok(m) => m.len(),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(Error::io(format!("stat {}", entry.path().display()), e)),
                }
            } else {
                0
            };
            out.push(DirEntry {
                name,
                is_dir: ft.is_dir(),
                size,
            });
        }
        Ok(out)
    }

    fn stat(&self, path: &str) -> Result<Option<FileInfo>> {
        let p = self.abs(path)?;
        match fs::metadata(&p) {
            Ok(m) => Ok(Some(FileInfo {
                size: m.len(),
                is_dir: m.is_dir(),
                mtime: m
                    .modified()
                    .io_context(|| format!("stat {}", p.display()))?,
            })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("stat {}", p.display()), e)),
        }
    }

    fn open_read(&self, path: &str) -> Result<Box<dyn Read + Send>> {
        let p = self.abs(path)?;
        let f = File::open(&p).io_context(|| format!("opening {}", p.display()))?;
        Ok(Box::new(f))
    }

    fn create(&self, dir: &str) -> Result<Box<dyn AtomicFile>> {
        self.create_file(dir, true)
    }

    fn create_deferred(&self, dir: &str) -> Result<Box<dyn AtomicFile>> {
        self.create_file(dir, false)
    }

    fn sync_deferred(&self) -> Result<()> {
        syncfs(&self.root)
            .io_context(|| format!("syncing the filesystem of {}", self.root.display()))
    }

    fn create_dir_all(&self, dir: &str) -> Result<()> {
        self.check_writer()?;
        let target = self.abs(dir)?;
        // Walk up to the first existing ancestor, then create downwards, syncing each
        // parent so the new entries are durable.
        let mut missing = Vec::new();
        let mut cur = target.as_path();
        while !cur.exists() {
            missing.push(cur.to_path_buf());
            match cur.parent() {
                Some(p) => cur = p,
                None => break,
            }
        }
        for d in missing.iter().rev() {
            match fs::DirBuilder::new().mode(0o700).create(d) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(Error::io(format!("creating directory {}", d.display()), e)),
            }
            if let Some(parent) = d.parent() {
                sync_dir(parent).io_context(|| format!("syncing {}", parent.display()))?;
            }
        }
        Ok(())
    }

    fn remove_file(&self, path: &str) -> Result<()> {
        self.check_writer()?;
        let p = self.abs(path)?;
        match fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(format!("removing {}", p.display()), e)),
        }
    }

    fn remove_file_synced(&self, path: &str) -> Result<()> {
        self.remove_file(path)?;
        let p = self.abs(path)?;
        match p.parent() {
            Some(dir) => sync_dir(dir).io_context(|| format!("fsync directory {}", dir.display())),
            None => Ok(()),
        }
    }

    fn remove_dir_all(&self, path: &str) -> Result<()> {
        self.check_writer()?;
        let p = self.abs(path)?;
        match fs::remove_dir_all(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(format!("removing {}", p.display()), e)),
        }
    }

    fn capabilities(&self) -> Capabilities {
        // link(2); a mount whose filesystem refuses it (vfat, some FUSE) fails the
        // commit with the system's error rather than silently replacing.
        Capabilities {
            atomic_no_replace: true,
        }
    }
}

struct LocalAtomicFile {
    writer: Option<BufWriter<File>>,
    dir: PathBuf,
    tmp: PathBuf,
    done: bool,
    /// fsync file and directory on commit (false: `Storage::sync_deferred` will).
    sync: bool,
}

impl Write for LocalAtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.writer.as_mut() {
            Some(w) => w.write(buf),
            None => Err(io::Error::other("file already committed")),
        }
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self.writer.as_mut() {
            Some(w) => w.write_all(buf),
            None => Err(io::Error::other("file already committed")),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self.writer.as_mut() {
            Some(w) => w.flush(),
            None => Ok(()),
        }
    }
}

impl AtomicFile for LocalAtomicFile {
    fn commit(mut self: Box<Self>, final_name: &str, overwrite: Overwrite) -> Result<Committed> {
        check_final_name(final_name)?;
        let writer = self
            .writer
            .take()
            .ok_or_else(|| Error::invalid("file committed twice"))?;
        let file = writer
            .into_inner()
            .map_err(|e| Error::io(format!("writing {}", self.tmp.display()), e.into_error()))?;
        if self.sync {
            file.sync_all()
                .io_context(|| format!("fsync {}", self.tmp.display()))?;
        }
        drop(file);
        crate::util::fault::crash_before_rename();
        let dest = self.dir.join(final_name);
        let outcome = match overwrite {
            Overwrite::Replace => {
                fs::rename(&self.tmp, &dest).io_context(|| {
                    format!("renaming {} to {}", self.tmp.display(), dest.display())
                })?;
                Committed::Created
            }
            // link() fails if the name exists, so two racing writers cannot replace
            // each other's file, which rename() would allow.
            Overwrite::Never | Overwrite::IfAbsent => match fs::hard_link(&self.tmp, &dest) {
                Ok(()) => {
                    fs::remove_file(&self.tmp)
                        .io_context(|| format!("removing {}", self.tmp.display()))?;
                    Committed::Created
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let _ = fs::remove_file(&self.tmp);
                    self.done = true;
                    return Ok(Committed::AlreadyExists);
                }
                Err(e) => return Err(Error::io(format!("linking {}", dest.display()), e)),
            },
        };
        self.done = true;
        if self.sync {
            let dir = dest.parent().unwrap_or(&self.dir);
            sync_dir(dir).io_context(|| format!("fsync directory {}", dir.display()))?;
        }
        Ok(outcome)
    }
}

impl Drop for LocalAtomicFile {
    fn drop(&mut self) {
        if !self.done {
            self.writer.take();
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn tmpdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("pgcellar-local-{}", temp_name()));
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn atomic_write_modes_and_no_overwrite() {
        let root = tmpdir();
        let s = LocalStorage::new(root.join("repo"));
        s.create_dir_all("a/b").unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&root.join("repo/a/b")), 0o700);
        assert_eq!(mode(&root.join("repo")), 0o700);
        assert_eq!(
            s.write_all("a/b/f", b"one", Overwrite::Never).unwrap(),
            Committed::Created
        );
        assert_eq!(mode(&root.join("repo/a/b/f")), 0o600);
        assert_eq!(
            s.write_all("a/b/f", b"two", Overwrite::Never).unwrap(),
            Committed::AlreadyExists
        );
        assert_eq!(s.read_all("a/b/f").unwrap(), b"one");
        s.write_all("a/b/f", b"three", Overwrite::Replace).unwrap();
        assert_eq!(s.read_all("a/b/f").unwrap(), b"three");
        // no temporary files left behind
        let names: Vec<_> = s.list("a/b").unwrap().into_iter().map(|e| e.name).collect();
        assert_eq!(names, vec!["f".to_string()]);
        // abandoned writes leave nothing
        let mut f = s.create("a/b").unwrap();
        f.write_all(b"x").unwrap();
        drop(f);
        assert_eq!(s.list("a/b").unwrap().len(), 1);
        assert!(s.list("missing").unwrap().is_empty());
        assert!(s.stat("a/b/nope").unwrap().is_none());
        assert!(s.open_read("../etc/passwd").is_err());
        fs::remove_dir_all(root).unwrap();
    }
}
