//! [`SshStorage`]: opening the repository and the [`Storage`] operations, each on a
//! pooled session.

use super::conn::{DIR_FSYNC_OK, DIR_FSYNC_UNKNOWN, DIR_FSYNC_UNSUPPORTED};
use super::errors::{is_sftp_status, ssh_error, FX_NO_SUCH_FILE};
use super::file::{to_file_info, SshAtomicFile, SshReader, WRITE_BUF};
use super::options::SshOptions;
use super::pool::Pool;
use super::target::{join_abs, parent_of, Target};
use crate::error::{Error, ErrorKind, Result};
use crate::storage::api::{AtomicFile, Capabilities, DirEntry, FileInfo, Storage};
use crate::storage::path::check_path;
use crate::storage::url::RepoUrl;
use crate::util::{shell_quote, temp_name};
use ssh2::{OpenFlags, OpenType};
use std::io::{BufWriter, Read};
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

/// A repository on a backup host, over SFTP. Cheap to share between threads.
pub struct SshStorage {
    pool: Arc<Pool>,
}

impl SshStorage {
    /// Connect to the repository at `url` (which must be `ssh://`) with `options`.
    ///
    /// The first session is opened now, so host-key and authentication problems are
    /// reported here, with what to do about them.
    pub fn open(url: &RepoUrl, options: &SshOptions) -> Result<SshStorage> {
        let RepoUrl::Ssh {
            user,
            host,
            port,
            path,
        } = url
        else {
            return Err(Error::config(format!("{url} is not an ssh:// repository")));
        };
        for (what, v) in [("user", user), ("host", host), ("path", path)] {
            if v.contains('\0') || v.contains('\n') {
                return Err(Error::config(format!(
                    "repository {url}: the {what} must not contain NUL or newline characters"
                )));
            }
        }
        let root = if path.len() > 1 {
            path.trim_end_matches('/').to_string()
        } else {
            path.clone()
        };
        let pool = Arc::new(Pool {
            target: Target {
                user: user.clone(),
                host: host.clone(),
                port: *port,
                root,
            },
            options: options.clone(),
            idle: Mutex::new(Vec::new()),
            dir_fsync: Arc::new(AtomicU8::new(DIR_FSYNC_UNKNOWN)),
        });
        let storage = SshStorage { pool };
        // Connect eagerly, then park the session for the first operation.
        drop(storage.pool.lease()?);
        Ok(storage)
    }

    /// Whether this server let us fsync a directory: `None` until a commit tried it.
    /// (`Some(false)`: renames are durable only when its filesystem commits them; see
    /// the module documentation.)
    pub fn directory_fsync_works(&self) -> Option<bool> {
        match self.pool.dir_fsync.load(Ordering::Relaxed) {
            DIR_FSYNC_OK => Some(true),
            DIR_FSYNC_UNSUPPORTED => Some(false),
            _ => None,
        }
    }

    fn loc(&self) -> String {
        self.pool.target.url()
    }

    fn abs(&self, path: &str) -> Result<String> {
        if path.is_empty() {
            return Ok(self.pool.target.root.clone());
        }
        check_path(path)?;
        Ok(join_abs(&self.pool.target.root, path))
    }

    fn err(&self, what: impl std::fmt::Display, e: ssh2::Error) -> Error {
        ssh_error(&self.loc(), what, e)
    }
}

impl Storage for SshStorage {
    fn location(&self) -> String {
        self.loc()
    }

    fn list(&self, dir: &str) -> Result<Vec<DirEntry>> {
        let abs = self.abs(dir)?;
        self.pool
            .with_conn(|c| match c.sftp.readdir(Path::new(&abs)) {
                Ok(entries) => Ok(entries
                    .into_iter()
                    .filter_map(|(p, st)| {
                        let name = p.file_name()?.to_str()?.to_string();
                        Some(DirEntry {
                            name,
                            is_dir: st.is_dir(),
                            size: if st.is_dir() { 0 } else { st.size.unwrap_or(0) },
                        })
                    })
                    .collect()),
                Err(e) if is_sftp_status(&e, FX_NO_SUCH_FILE) => Ok(Vec::new()),
                Err(e) => Err(self.err(format!("listing {abs}"), e)),
            })
    }

    fn stat(&self, path: &str) -> Result<Option<FileInfo>> {
        let abs = self.abs(path)?;
        let loc = self.loc();
        self.pool
            .with_conn(|c| Ok(c.stat(&loc, &abs)?.as_ref().map(to_file_info)))
    }

    fn open_read(&self, path: &str) -> Result<Box<dyn Read + Send>> {
        let abs = self.abs(path)?;
        let mut lease = self.pool.lease()?;
        match lease.conn().sftp.open(Path::new(&abs)) {
            Ok(file) => Ok(Box::new(SshReader {
                file: Some(file),
                lease,
            })),
            Err(e) => {
                let err = self.err(format!("opening {abs}"), e);
                if err.is_transient() {
                    lease.poison();
                }
                Err(err)
            }
        }
    }

    fn create(&self, dir: &str) -> Result<Box<dyn AtomicFile>> {
        let dir = self.abs(dir)?;
        let tmp = join_abs(&dir, &temp_name());
        let mut lease = self.pool.lease()?;
        let opened = lease.conn().sftp.open_mode(
            Path::new(&tmp),
            OpenFlags::WRITE | OpenFlags::EXCLUSIVE,
            0o600,
            OpenType::File,
        );
        match opened {
            Ok(file) => Ok(Box::new(SshAtomicFile {
                writer: Some(BufWriter::with_capacity(WRITE_BUF, file)),
                lease,
                loc: self.loc(),
                dir,
                tmp,
                done: false,
            })),
            Err(e) => {
                let err = self.err(format!("creating {tmp}"), e);
                if err.is_transient() {
                    lease.poison();
                }
                Err(err)
            }
        }
    }

    fn create_dir_all(&self, dir: &str) -> Result<()> {
        let abs = self.abs(dir)?;
        let loc = self.loc();
        self.pool.with_conn(|c| c.mkdir_p(&loc, &abs, 0))
    }

    fn remove_file(&self, path: &str) -> Result<()> {
        let abs = self.abs(path)?;
        self.pool
            .with_conn(|c| match c.sftp.unlink(Path::new(&abs)) {
                Ok(()) => Ok(()),
                Err(e) if is_sftp_status(&e, FX_NO_SUCH_FILE) => Ok(()),
                Err(e) => Err(self.err(format!("removing {abs}"), e)),
            })
    }

    fn remove_file_synced(&self, path: &str) -> Result<()> {
        let abs = self.abs(path)?;
        let loc = self.loc();
        self.pool.with_conn(|c| {
            match c.sftp.unlink(Path::new(&abs)) {
                Ok(()) => {}
                Err(e) if is_sftp_status(&e, FX_NO_SUCH_FILE) => {}
                Err(e) => return Err(self.err(format!("removing {abs}"), e)),
            }
            c.sync_dir(&loc, parent_of(&abs))
        })
    }

    fn remove_dir_all(&self, path: &str) -> Result<()> {
        let abs = self.abs(path)?;
        let loc = self.loc();
        self.pool.with_conn(|c| {
            let cmd = format!("rm -rf -- {}", shell_quote(&abs));
            let (code, err) = c.exec(&loc, &cmd, b"")?;
            if code != 0 {
                return Err(Error::new(
                    ErrorKind::Io,
                    format!("{loc}: {cmd} failed with status {code}: {err}"),
                ));
            }
            c.sync_dir(&loc, parent_of(&abs))
        })
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            // OpenSSH's SSH_FXP_RENAME refuses an existing target (link + unlink).
            atomic_no_replace: true,
        }
    }
}

/// The trait requires it; fail the build, not a user, if that ever changes.
const _: () = {
    const fn is<T: Send + Sync>() {}
    is::<SshStorage>()
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_hostile_names() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("$(rm -rf /)"), "'$(rm -rf /)'");
    }
}
