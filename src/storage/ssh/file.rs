//! Streaming remote files: a reader, and the atomic file (temporary name, fsync,
//! rename or no-replace rename, directory fsync) behind `Storage::create`.

use super::errors::{
    is_sftp_status, ssh_error, stream_error, FX_FAILURE, FX_FILE_ALREADY_EXISTS, FX_OP_UNSUPPORTED,
};
use super::pool::Lease;
use super::target::join_abs;
use crate::error::{Error, ErrorKind, Result};
use crate::storage::api::{AtomicFile, Committed, FileInfo, Overwrite};
use crate::storage::path::check_final_name;
use ssh2::{FileStat, RenameFlags};
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

/// Write buffer: large writes let libssh2 keep many SFTP write requests in flight.
pub(super) const WRITE_BUF: usize = 1024 * 1024;

pub(super) struct SshReader {
    pub(super) file: Option<ssh2::File>,
    pub(super) lease: Lease,
}

impl Read for SshReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(f) = self.file.as_mut() else {
            return Err(io::Error::other("reader already failed"));
        };
        match f.read(buf) {
            Ok(n) => Ok(n),
            Err(e) => {
                let e = stream_error(&self.lease.conn().session, e);
                if e.kind() == io::ErrorKind::ConnectionAborted {
                    self.lease.poison();
                }
                Err(e)
            }
        }
    }
}

impl Drop for SshReader {
    fn drop(&mut self) {
        // The handle closes (one round trip) before the connection returns to the pool.
        self.file.take();
    }
}

pub(super) struct SshAtomicFile {
    pub(super) writer: Option<BufWriter<ssh2::File>>,
    pub(super) lease: Lease,
    pub(super) loc: String,
    pub(super) dir: String,
    pub(super) tmp: String,
    pub(super) done: bool,
}

impl SshAtomicFile {
    /// Classify a streaming error; a broken connection is retired at once.
    fn fail(&mut self, e: io::Error) -> io::Error {
        let e = stream_error(&self.lease.conn().session, e);
        if e.kind() == io::ErrorKind::ConnectionAborted {
            self.lease.poison();
        }
        // SFTP version 3 has no "no space" status: sshd answers a write that hits a
        // full disk or a quota with the bare SSH_FX_FAILURE, which libssh2 words as
        // "failure". Say what it almost always means.
        if e.to_string().eq_ignore_ascii_case("failure") {
            return io::Error::new(
                e.kind(),
                "the backup host failed the write without a reason (SFTP reports none; \
                 usually its filesystem is full or over quota: check df there)",
            );
        }
        e
    }
}

impl Write for SshAtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let r = match self.writer.as_mut() {
            Some(w) => w.write(buf),
            None => return Err(io::Error::other("file already committed")),
        };
        r.map_err(|e| self.fail(e))
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let r = match self.writer.as_mut() {
            Some(w) => w.write_all(buf),
            None => return Err(io::Error::other("file already committed")),
        };
        r.map_err(|e| self.fail(e))
    }
    fn flush(&mut self) -> io::Result<()> {
        let r = match self.writer.as_mut() {
            Some(w) => w.flush(),
            None => Ok(()),
        };
        r.map_err(|e| self.fail(e))
    }
}

impl AtomicFile for SshAtomicFile {
    fn commit(mut self: Box<Self>, final_name: &str, overwrite: Overwrite) -> Result<Committed> {
        check_final_name(final_name)?;
        let r = self.commit_inner(final_name, overwrite);
        if let Err(e) = &r {
            if e.is_transient() {
                self.lease.poison();
            }
        }
        r
    }
}

impl SshAtomicFile {
    fn commit_inner(&mut self, final_name: &str, overwrite: Overwrite) -> Result<Committed> {
        let loc = self.loc.clone();
        let writer = self
            .writer
            .take()
            .ok_or_else(|| Error::invalid("file committed twice"))?;
        let mut file = match writer.into_inner() {
            Ok(f) => f,
            Err(e) => {
                let err = stream_error(&self.lease.conn().session, e.into_error());
                return Err(Error::io(format!("{loc}: writing {}", self.tmp), err));
            }
        };
        file.fsync().map_err(|e| {
            if is_sftp_status(&e, FX_OP_UNSUPPORTED) {
                Error::new(
                    ErrorKind::Io,
                    format!(
                        "{loc}: the SSH server does not support fsync@openssh.com, so {} cannot \
                         be made durable; use an OpenSSH server (5.6 or later)",
                        self.tmp
                    ),
                )
            } else {
                ssh_error(&loc, format!("fsync {}", self.tmp), e)
            }
        })?;
        file.close()
            .map_err(|e| ssh_error(&loc, format!("closing {}", self.tmp), e))?;
        drop(file);
        crate::util::fault::pause_before_rename();
        crate::util::fault::crash_before_rename();
        let dest = join_abs(&self.dir, final_name);
        let conn = self.lease.conn();
        let outcome = match overwrite {
            Overwrite::Replace => {
                conn.replace(&loc, &self.tmp, &dest)?;
                Committed::Created
            }
            // OpenSSH's SSH_FXP_RENAME is link()+unlink(): it fails if `dest` exists,
            // so two racing writers can never replace each other's file.
            Overwrite::Never | Overwrite::IfAbsent => {
                match conn.sftp.rename(
                    Path::new(&self.tmp),
                    Path::new(&dest),
                    Some(RenameFlags::ATOMIC | RenameFlags::NATIVE),
                ) {
                    Ok(()) => Committed::Created,
                    Err(e)
                        if is_sftp_status(&e, FX_FAILURE)
                            || is_sftp_status(&e, FX_FILE_ALREADY_EXISTS) =>
                    {
                        if conn.stat(&loc, &dest)?.is_none() {
                            return Err(ssh_error(
                                &loc,
                                format!("renaming {} to {dest}", self.tmp),
                                e,
                            ));
                        }
                        let _ = conn.sftp.unlink(Path::new(&self.tmp));
                        self.done = true;
                        return Ok(Committed::AlreadyExists);
                    }
                    Err(e) => {
                        return Err(ssh_error(
                            &loc,
                            format!("renaming {} to {dest}", self.tmp),
                            e,
                        ))
                    }
                }
            }
        };
        self.done = true;
        // The directory the name was given in: a `sub/name` commit lands in `sub`.
        let dir = match final_name.rsplit_once('/') {
            Some((sub, _)) => join_abs(&self.dir, sub),
            None => self.dir.clone(),
        };
        self.lease.conn().sync_dir(&loc, &dir)?;
        Ok(outcome)
    }
}

impl Drop for SshAtomicFile {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if self.lease.poisoned {
            // Nothing can reach the server now; the temporary name is ignored by readers.
            if let Some(w) = self.writer.take() {
                let (f, _unflushed) = w.into_parts();
                drop(f);
            }
            return;
        }
        if let Some(w) = self.writer.take() {
            // Drop the buffered tail unwritten: the file is being abandoned.
            let (f, _unflushed) = w.into_parts();
            drop(f);
        }
        let _ = self.lease.conn().sftp.unlink(Path::new(&self.tmp));
    }
}

pub(super) fn to_file_info(st: &FileStat) -> FileInfo {
    FileInfo {
        size: if st.is_dir() { 0 } else { st.size.unwrap_or(0) },
        is_dir: st.is_dir(),
        mtime: UNIX_EPOCH + Duration::from_secs(st.mtime.unwrap_or(0)),
    }
}
