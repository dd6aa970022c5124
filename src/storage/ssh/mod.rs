//! The SSH driver: a repository directory on a backup host, reached over SFTP.
//!
//! The backup host needs nothing but OpenSSH's `sshd` with the SFTP subsystem (plus a
//! POSIX shell for the two batch operations, see below). One process keeps a small
//! pool of authenticated sessions: the first operation connects, later ones reuse the
//! idle session, and concurrent callers (`--jobs` workers, parallel pushes) each get
//! their own session, so they really run in parallel (libssh2 serialises everything on
//! one session behind a single lock).
//!
//! # Durability over SFTP: what is promised, and what is not
//!
//! A committed file is written under a temporary name (`.tmp-…`, mode 0600) in its
//! target directory, then `fsync@openssh.com` is sent on the open handle (the server
//! calls `fsync(2)` on the file), then the file gets its final name, then the
//! directory itself is fsync'ed by opening it as a file (`SSH_FXP_OPEN`, read-only)
//! and sending `fsync@openssh.com` on that handle. OpenSSH's `sftp-server` (and
//! `internal-sftp`) accept this on Linux, so with an OpenSSH server on Linux the file's
//! bytes *and* its directory entry are on stable storage before we acknowledge.
//!
//! What SFTP cannot promise:
//! - SFTP (version 3, which OpenSSH speaks) has no directory-sync operation. The
//!   directory fsync above relies on the server opening a directory with `open(2)`;
//!   a server that refuses it (not OpenSSH, or a non-Linux host) leaves the *rename*
//!   durable only when the server's filesystem commits metadata on its own (ext4
//!   `data=ordered` journals it within seconds; XFS, ZFS likewise). We then log that
//!   the directory could not be synced and carry on: the file's *bytes* are still
//!   fsync'ed. A server without `fsync@openssh.com` is refused outright, because
//!   then not even the bytes can be made durable.
//! - Nothing is durable beyond what the backup host's own storage stack honours
//!   (disk write caches, NFS mounts behind sshd, ...).
//! - A crash leaves either nothing or a complete file under the final name; a
//!   temporary `.tmp-…` file may remain, which readers ignore.
//!
//! # Never replacing, and atomic replacement
//!
//! [`Overwrite::Never`] uses plain `SSH_FXP_RENAME`. OpenSSH implements it as
//! `link(2)` + `unlink(2)` and fails when the target exists, so it never replaces an
//! existing name, even between racing writers (the test suite checks this against the
//! real server). [`Overwrite::Replace`] uses the `posix-rename@openssh.com` extension
//! (`rename(2)` on the server: atomic replacement) through libssh2's
//! `libssh2_sftp_posix_rename_ex`, on a second SFTP channel opened only when needed;
//! if the server lacks the extension it falls back to `mv -f` (also `rename(2)`) over
//! an exec channel.
//!
//! # Hard links and tree removal
//!
//! SFTP v3 has no hard-link request, and libssh2 does not speak
//! `hardlink@openssh.com`. [`Storage::hard_link_all`] therefore sends one generated
//! shell script (every path single-quoted) over one exec channel to `sh -s`: one round
//! trip for any number of links, then `sync` of the touched directories.
//! [`Storage::remove_dir_all`] is one `rm -rf` the same way. Both need the login to
//! have a POSIX shell (an `internal-sftp`-only account cannot take incremental
//! backups or expire them; everything else works).
//!
//! # Files of this driver
//!
//! `mod.rs` (this file: options, [`SshStorage`] and its [`Storage`] impl), `pool`
//! (reusing and retiring sessions), `connect` (opening one), `host_key`, `auth`,
//! `conn` (multi-request operations on one session), `file` (reader and atomic
//! file), `errors` (what an ssh2 error means) and `ffi` (raw libssh2 calls).

mod auth;
mod conn;
mod connect;
mod errors;
mod ffi;
mod file;
mod host_key;
mod pool;

pub use host_key::fingerprint_sha256;

use super::{check_path, AtomicFile, Capabilities, DirEntry, FileInfo, Storage};
use crate::error::{Error, ErrorKind, Result};
use crate::util::{shell_quote, temp_name};
use connect::Target;
use errors::{is_sftp_status, ssh_error, FX_NO_SUCH_FILE};
use file::{to_file_info, SshAtomicFile, SshReader, WRITE_BUF};
use pool::{Shared, DIR_FSYNC_OK, DIR_FSYNC_UNKNOWN, DIR_FSYNC_UNSUPPORTED};
use ssh2::{OpenFlags, OpenType};
use std::io::{BufWriter, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How to reach and trust a backup host: what the SSH driver needs, nothing more.
#[derive(Debug, Clone)]
pub struct SshOptions {
    /// Private key file; `None` means the agent, then `~/.ssh/id_*`.
    pub identity: Option<PathBuf>,
    /// known_hosts file.
    pub known_hosts: Option<PathBuf>,
    /// Accept and store an unknown host key.
    pub accept_new_host_key: bool,
    /// Connection timeout.
    pub connect_timeout: Duration,
    /// Per-operation I/O timeout.
    pub io_timeout: Duration,
}

/// A repository on a backup host, over SFTP. Cheap to share between threads.
pub struct SshStorage {
    shared: Arc<Shared>,
}

impl SshStorage {
    /// Connect to the repository at `url` (which must be `ssh://`) with `settings`.
    ///
    /// The first session is opened now, so host-key and authentication problems are
    /// reported here, with what to do about them.
    pub fn open(url: &super::RepoUrl, settings: &SshOptions) -> Result<SshStorage> {
        let super::RepoUrl::Ssh {
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
        let shared = Arc::new(Shared {
            target: Target {
                user: user.clone(),
                host: host.clone(),
                port: *port,
                root,
            },
            settings: settings.clone(),
            idle: Mutex::new(Vec::new()),
            dir_fsync: Arc::new(AtomicU8::new(DIR_FSYNC_UNKNOWN)),
        });
        let storage = SshStorage { shared };
        // Connect eagerly, then park the session for the first operation.
        drop(storage.lease()?);
        Ok(storage)
    }

    /// Whether this server let us fsync a directory: `None` until a commit tried it.
    /// (`Some(false)`: renames are durable only when its filesystem commits them; see
    /// the module documentation.)
    pub fn directory_fsync_works(&self) -> Option<bool> {
        match self.shared.dir_fsync.load(Ordering::Relaxed) {
            DIR_FSYNC_OK => Some(true),
            DIR_FSYNC_UNSUPPORTED => Some(false),
            _ => None,
        }
    }

    fn loc(&self) -> String {
        self.shared.target.url()
    }

    fn abs(&self, path: &str) -> Result<String> {
        if path.is_empty() {
            return Ok(self.shared.target.root.clone());
        }
        check_path(path)?;
        Ok(join_abs(&self.shared.target.root, path))
    }

    fn err(&self, what: impl std::fmt::Display, e: ssh2::Error) -> Error {
        ssh_error(&self.loc(), what, e)
    }
}

fn join_abs(root: &str, rel: &str) -> String {
    if root == "/" {
        format!("/{rel}")
    } else {
        format!("{root}/{rel}")
    }
}

fn parent_of(abs: &str) -> &str {
    match abs.rfind('/') {
        Some(0) => "/",
        Some(i) => &abs[..i],
        None => "/",
    }
}

impl Storage for SshStorage {
    fn location(&self) -> String {
        self.loc()
    }

    fn list(&self, dir: &str) -> Result<Vec<DirEntry>> {
        let abs = self.abs(dir)?;
        self.with_conn(|c| match c.sftp.readdir(Path::new(&abs)) {
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
        self.with_conn(|c| Ok(c.stat(&loc, &abs)?.as_ref().map(to_file_info)))
    }

    fn open_read(&self, path: &str) -> Result<Box<dyn Read + Send>> {
        let abs = self.abs(path)?;
        let mut lease = self.lease()?;
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
        let mut lease = self.lease()?;
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
        self.with_conn(|c| c.mkdir_p(&loc, &abs, 0))
    }

    fn remove_file(&self, path: &str) -> Result<()> {
        let abs = self.abs(path)?;
        self.with_conn(|c| match c.sftp.unlink(Path::new(&abs)) {
            Ok(()) => Ok(()),
            Err(e) if is_sftp_status(&e, FX_NO_SUCH_FILE) => Ok(()),
            Err(e) => Err(self.err(format!("removing {abs}"), e)),
        })
    }

    fn remove_file_synced(&self, path: &str) -> Result<()> {
        let abs = self.abs(path)?;
        let loc = self.loc();
        self.with_conn(|c| {
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
        self.with_conn(|c| {
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
            // Through `ln` over an exec channel: true for any login with a POSIX
            // shell (see the module documentation for internal-sftp-only accounts).
            hard_links: true,
            // OpenSSH's SSH_FXP_RENAME refuses an existing target (link + unlink).
            atomic_no_replace: true,
        }
    }

    fn hard_link_all(&self, links: &[(String, String)]) -> Result<()> {
        if links.is_empty() {
            return Ok(());
        }
        let mut script = String::from(
            "l() { ln -- \"$1\" \"$2\" 2>/dev/null || [ -e \"$2\" ] || ln -- \"$1\" \"$2\"; }\n",
        );
        let mut dirs = std::collections::BTreeSet::new();
        for (src, dst) in links {
            let s = self.abs(src)?;
            let d = self.abs(dst)?;
            dirs.insert(parent_of(&d).to_string());
            script.push_str(&format!(
                "l {} {} || exit 1\n",
                shell_quote(&s),
                shell_quote(&d)
            ));
        }
        // `sync FILE...` fsyncs each named directory (coreutils 8.24+); where that is
        // not available, a global sync is the durable fallback.
        let quoted: Vec<String> = dirs.iter().map(|d| shell_quote(d)).collect();
        script.push_str(&format!(
            "sync -- {} 2>/dev/null || sync || exit 2\n",
            quoted.join(" ")
        ));
        let loc = self.loc();
        self.with_conn(|c| {
            let (code, err) = c.exec(&loc, "sh -s", script.as_bytes())?;
            if code != 0 {
                return Err(Error::new(
                    ErrorKind::Io,
                    format!(
                        "{loc}: creating {} hard links on the backup host failed (status {code}): {err}",
                        links.len()
                    ),
                ));
            }
            Ok(())
        })
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

    #[test]
    fn paths() {
        assert_eq!(join_abs("/", "a"), "/a");
        assert_eq!(join_abs("/srv/r", "a/b"), "/srv/r/a/b");
        assert_eq!(parent_of("/srv/r/a"), "/srv/r");
        assert_eq!(parent_of("/srv"), "/");
        assert_eq!(parent_of("/"), "/");
    }
}
