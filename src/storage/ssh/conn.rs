//! One authenticated session with its SFTP channel, and the operations that need
//! more than one SFTP request: directory fsync, remote commands, atomic replace,
//! recursive mkdir.

use super::errors::{classify, is_sftp_status, ssh_error, FX_NO_SUCH_FILE};
use super::target::parent_of;
use crate::error::{Error, ErrorKind, Result};
use crate::log_info;
use crate::util::shell_quote;
use ssh2::{FileStat, OpenFlags, OpenType, Session, Sftp};
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

/// Whether fsync of a directory handle works on the server: not tried yet.
pub(super) const DIR_FSYNC_UNKNOWN: u8 = 0;
/// It worked.
pub(super) const DIR_FSYNC_OK: u8 = 1;
/// The server refused it (see the module docs of the driver).
pub(super) const DIR_FSYNC_UNSUPPORTED: u8 = 2;

/// One authenticated session with its SFTP channel.
pub(super) struct Conn {
    /// A second SFTP channel (raw libssh2 pointer) for `posix-rename@openssh.com`,
    /// opened on first use; `Some(null)` would never be stored.
    pub(super) posix: Option<*mut std::os::raw::c_void>,
    pub(super) sftp: Sftp,
    pub(super) session: Session,
    /// A clone of the session's socket: shutting it down makes every pending or later
    /// libssh2 call on a hung connection fail at once instead of waiting again.
    pub(super) socket: TcpStream,
    /// Whether fsync of a directory handle works on this server (shared by the pool).
    pub(super) dir_fsync: Arc<AtomicU8>,
}

// SAFETY: the raw `posix` pointer is only used by the thread that holds the `Conn`
// (a Conn is owned by exactly one Lease or sits in the idle list), and only while
// holding the session lock that libssh2 needs; ssh2's own types are Send.
unsafe impl Send for Conn {}

impl Conn {
    /// fsync a directory through a read-only file handle on it (see the module docs).
    pub(super) fn sync_dir(&mut self, loc: &str, dir: &str) -> Result<()> {
        if self.dir_fsync.load(Ordering::Relaxed) == DIR_FSYNC_UNSUPPORTED {
            return Ok(());
        }
        let res = self
            .sftp
            .open_mode(Path::new(dir), OpenFlags::READ, 0, OpenType::File)
            .and_then(|mut h| {
                let r = h.fsync();
                let _ = h.close();
                r
            });
        match res {
            Ok(()) => {
                self.dir_fsync.store(DIR_FSYNC_OK, Ordering::Relaxed);
                Ok(())
            }
            Err(e) if classify(&e) == ErrorKind::Transient => {
                Err(ssh_error(loc, format!("fsync of directory {dir}"), e))
            }
            Err(e) => {
                // Not an error: SFTP has no directory sync, this server does not allow
                // our way around that. The module docs say what that means.
                self.dir_fsync
                    .store(DIR_FSYNC_UNSUPPORTED, Ordering::Relaxed);
                log_info!(
                    "{loc}: the server cannot fsync directories over SFTP ({}); renames are \
                     durable once its filesystem commits them",
                    e.message()
                );
                Ok(())
            }
        }
    }

    /// Run `command` on the backup host with `stdin`; returns (exit status, stderr).
    pub(super) fn exec(&mut self, loc: &str, command: &str, stdin: &[u8]) -> Result<(i32, String)> {
        let mut ch = self
            .session
            .channel_session()
            .map_err(|e| ssh_error(loc, "opening an exec channel", e))?;
        ch.exec(command)
            .map_err(|e| ssh_error(loc, format!("running {command:?}"), e))?;
        let io_err = |e: io::Error| {
            Error::new(
                ErrorKind::Transient,
                format!("{loc}: talking to {command:?}: {e}"),
            )
        };
        ch.write_all(stdin).map_err(io_err)?;
        ch.send_eof()
            .map_err(|e| ssh_error(loc, format!("running {command:?}"), e))?;
        let mut out = Vec::new();
        ch.read_to_end(&mut out).map_err(io_err)?;
        let mut err = Vec::new();
        ch.stderr().read_to_end(&mut err).map_err(io_err)?;
        ch.wait_close()
            .map_err(|e| ssh_error(loc, format!("running {command:?}"), e))?;
        let code = ch
            .exit_status()
            .map_err(|e| ssh_error(loc, format!("running {command:?}"), e))?;
        let err = String::from_utf8_lossy(&err).trim().replace('\n', "; ");
        Ok((code, err))
    }

    /// Atomically rename `from` to `to`, replacing `to`.
    pub(super) fn replace(&mut self, loc: &str, from: &str, to: &str) -> Result<()> {
        match self.posix_rename(from, to) {
            Ok(true) => return Ok(()),
            Ok(false) => {} // extension missing: fall back below
            Err(e) => {
                return Err(Error::new(
                    e.0,
                    format!("{loc}: renaming {from} to {to}: {}", e.1),
                ))
            }
        }
        let cmd = format!("mv -f -- {} {}", shell_quote(from), shell_quote(to));
        let (code, err) = self.exec(loc, &cmd, b"")?;
        if code != 0 {
            return Err(Error::new(
                ErrorKind::Io,
                format!("{loc}: {cmd} failed with status {code}: {err}"),
            ));
        }
        Ok(())
    }

    pub(super) fn stat(&mut self, loc: &str, abs: &str) -> Result<Option<FileStat>> {
        match self.sftp.stat(Path::new(abs)) {
            Ok(st) => Ok(Some(st)),
            Err(e) if is_sftp_status(&e, FX_NO_SUCH_FILE) => Ok(None),
            Err(e) => Err(ssh_error(loc, format!("stat {abs}"), e)),
        }
    }

    pub(super) fn mkdir_p(&mut self, loc: &str, abs: &str, depth: usize) -> Result<()> {
        if let Some(st) = self.stat(loc, abs)? {
            return if st.is_dir() {
                Ok(())
            } else {
                Err(Error::new(
                    ErrorKind::Io,
                    format!("{loc}: {abs} exists and is not a directory"),
                ))
            };
        }
        if depth > 64 {
            return Err(Error::invalid(format!("{loc}: {abs}: too deep")));
        }
        let parent = parent_of(abs).to_string();
        if parent != abs {
            self.mkdir_p(loc, &parent, depth + 1)?;
        }
        match self.sftp.mkdir(Path::new(abs), 0o700) {
            Ok(()) => self.sync_dir(loc, &parent),
            Err(e) if classify(&e) == ErrorKind::Transient => {
                Err(ssh_error(loc, format!("creating directory {abs}"), e))
            }
            // A concurrent creator may have won: fine if it is a directory now.
            Err(e) => match self.stat(loc, abs)? {
                Some(st) if st.is_dir() => Ok(()),
                _ => Err(ssh_error(loc, format!("creating directory {abs}"), e)),
            },
        }
    }
}
