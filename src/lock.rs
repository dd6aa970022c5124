//! The one-writer lock of a server: `<server>/locks/server.lock` in the repository.
//!
//! `base-backup`, `expire` and `delete` of one server take it so that they exclude
//! each other. It is a small JSON file created with [`Overwrite::Never`] (an atomic
//! link, so two writers cannot both succeed), naming its holder. A lock is stale when
//! its holder ran on this host and that process is gone, or when it is older than a
//! bound; a stale lock is broken under a second, short-lived "break" lock so that two
//! processes breaking the same stale lock cannot remove each other's new one.

use crate::error::{Error, ErrorKind, Result};
use crate::repo::{layout, to_json};
use crate::storage::{Committed, Overwrite, Storage};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Name of the server-wide writer lock.
pub const SERVER_LOCK: &str = "server";
/// Name of the lock held while breaking a stale [`SERVER_LOCK`].
const BREAK_LOCK: &str = "server-break";
/// A break lock older than this was left by a crashed breaker.
const BREAK_STALE: Duration = Duration::from_secs(60);
/// Default age after which a lock is stale whoever holds it.
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Contents of a lock file: who holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockInfo {
    /// Host name of the holder.
    pub host: String,
    /// Process id of the holder on that host.
    pub pid: u32,
    /// The command holding it (e.g. `base-backup`).
    pub command: String,
    /// When it was taken.
    pub started: DateTime<Utc>,
    /// Unique token, so a holder removes only its own lock.
    pub token: String,
}

impl LockInfo {
    fn describe(&self) -> String {
        format!(
            "{} (pid {} on {}, since {})",
            self.command,
            self.pid,
            self.host,
            self.started
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )
    }

    /// Why this lock is stale, or `None` if its holder may still be running.
    pub fn stale_reason(&self, now: DateTime<Utc>, stale_after: Duration) -> Option<String> {
        if self.host == hostname() && !pid_alive(self.pid) {
            return Some(format!("process {} on this host is gone", self.pid));
        }
        let age = now.signed_duration_since(self.started);
        if age.num_seconds() > stale_after.as_secs() as i64 {
            return Some(format!(
                "it is {}s old, above the {}s bound",
                age.num_seconds(),
                stale_after.as_secs()
            ));
        }
        None
    }
}

/// A held lock; released by [`Lock::release`] or, best effort, on drop.
pub struct Lock<'a> {
    storage: &'a dyn Storage,
    path: String,
    info: LockInfo,
    released: bool,
}

impl std::fmt::Debug for Lock<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lock")
            .field("path", &self.path)
            .field("info", &self.info)
            .finish()
    }
}

impl<'a> Lock<'a> {
    /// Take the writer lock of `server` for `command`, breaking a stale one; refuse
    /// with [`ErrorKind::Locked`] (naming the holder) if it is held.
    pub fn acquire(
        storage: &'a dyn Storage,
        server: &str,
        command: &str,
        stale_after: Duration,
    ) -> Result<Lock<'a>> {
        storage.create_dir_all(&layout::locks_dir(server))?;
        let path = layout::lock_file(server, SERVER_LOCK);
        let info = LockInfo {
            host: hostname(),
            pid: std::process::id(),
            command: command.to_string(),
            started: Utc::now(),
            token: token(),
        };
        let json = to_json(&info)?;
        if storage.write_all(&path, &json, Overwrite::Never)? == Committed::Created {
            return Ok(Lock {
                storage,
                path,
                info,
                released: false,
            });
        }
        let holder = match read_info(storage, &path)? {
            Some(h) => h,
            // Released between our attempt and the read: try once more.
            None => return Self::retry(storage, path, info, &json, None),
        };
        let Some(reason) = holder.stale_reason(Utc::now(), stale_after) else {
            return Err(locked(server, storage, &holder));
        };
        crate::log_warn!(
            "breaking stale lock of server {server} held by {}: {reason}",
            holder.describe()
        );
        break_stale(storage, server, &path, &holder)?;
        Self::retry(storage, path, info, &json, Some(server))
    }

    fn retry(
        storage: &'a dyn Storage,
        path: String,
        info: LockInfo,
        json: &[u8],
        server: Option<&str>,
    ) -> Result<Lock<'a>> {
        if storage.write_all(&path, json, Overwrite::Never)? == Committed::Created {
            return Ok(Lock {
                storage,
                path,
                info,
                released: false,
            });
        }
        let server = server.unwrap_or("?");
        match read_info(storage, &path)? {
            Some(h) => Err(locked(server, storage, &h)),
            None => Err(Error::new(
                ErrorKind::Locked,
                format!("the lock of server {server} is changing hands; try again"),
            )),
        }
    }

    /// Who holds this lock.
    pub fn info(&self) -> &LockInfo {
        &self.info
    }

    /// Remove the lock file if it is still ours.
    pub fn release(mut self) -> Result<()> {
        self.released = true;
        release(self.storage, &self.path, &self.info.token)
    }
}

impl Drop for Lock<'_> {
    fn drop(&mut self) {
        if !self.released {
            if let Err(e) = release(self.storage, &self.path, &self.info.token) {
                crate::log_warn!("could not release lock {}: {e}", self.path);
            }
        }
    }
}

fn release(storage: &dyn Storage, path: &str, token: &str) -> Result<()> {
    match read_info(storage, path)? {
        Some(h) if h.token == token => storage.remove_file(path),
        // Broken as stale by someone else meanwhile: not ours to remove any more.
        _ => Ok(()),
    }
}

fn locked(server: &str, storage: &dyn Storage, holder: &LockInfo) -> Error {
    Error::new(
        ErrorKind::Locked,
        format!(
            "server {server} in {} is locked by {}; wait for it to finish (a lock whose holder \
             died on its own host, or that is too old, is broken automatically)",
            storage.location(),
            holder.describe()
        ),
    )
}

/// Remove the stale lock `seen`, under the break lock.
fn break_stale(storage: &dyn Storage, server: &str, path: &str, seen: &LockInfo) -> Result<()> {
    let break_path = layout::lock_file(server, BREAK_LOCK);
    let mine = LockInfo {
        host: hostname(),
        pid: std::process::id(),
        command: "break stale lock".into(),
        started: Utc::now(),
        token: token(),
    };
    let json = to_json(&mine)?;
    if storage.write_all(&break_path, &json, Overwrite::Never)? == Committed::AlreadyExists {
        let other = read_info(storage, &break_path)?;
        let stale = other
            .as_ref()
            .map_or(true, |o| o.stale_reason(Utc::now(), BREAK_STALE).is_some());
        if !stale {
            return Err(Error::new(
                ErrorKind::Locked,
                format!("another process is breaking the stale lock of server {server}; try again"),
            ));
        }
        storage.remove_file(&break_path)?;
        if storage.write_all(&break_path, &json, Overwrite::Never)? == Committed::AlreadyExists {
            return Err(Error::new(
                ErrorKind::Locked,
                format!("another process is breaking the stale lock of server {server}; try again"),
            ));
        }
    }
    let result = (|| {
        // Remove it only if it is still the lock we judged stale.
        if let Some(now) = read_info(storage, path)? {
            if now.token == seen.token {
                storage.remove_file(path)?;
            }
        }
        Ok(())
    })();
    release(storage, &break_path, &mine.token)?;
    result
}

fn read_info(storage: &dyn Storage, path: &str) -> Result<Option<LockInfo>> {
    match storage.read_all(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            Error::corrupt(format!(
                "lock file {path} in {} is not valid ({e}); remove it by hand if no \
                 base-backup, expire or delete is running",
                storage.location()
            ))
        }),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// This host's name (empty if it cannot be read).
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates or truncates.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Whether process `pid` exists on this host.
pub fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(pid, 0) };
    // EPERM: it exists but belongs to another user.
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

fn token() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{}-{}-{nanos:x}", hostname(), std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::LocalStorage;

    #[test]
    fn second_holder_is_refused_with_the_holder_named() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStorage::new(dir.path().join("repo"));
        let a = Lock::acquire(&s, "main", "base-backup", DEFAULT_STALE_AFTER).unwrap();
        let err = Lock::acquire(&s, "main", "expire", DEFAULT_STALE_AFTER).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Locked);
        let msg = err.to_string();
        assert!(msg.contains("base-backup"), "{msg}");
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        a.release().unwrap();
        let b = Lock::acquire(&s, "main", "expire", DEFAULT_STALE_AFTER).unwrap();
        drop(b);
        assert!(s.stat("main/locks/server.lock").unwrap().is_none());
    }

    #[test]
    fn stale_locks_are_broken() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStorage::new(dir.path().join("repo"));
        s.create_dir_all("main/locks").unwrap();
        // A dead process on this host: spawn and reap a child to get a free pid.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let ghost = LockInfo {
            host: hostname(),
            pid: dead,
            command: "base-backup".into(),
            started: Utc::now(),
            token: "ghost".into(),
        };
        s.write_all(
            "main/locks/server.lock",
            &to_json(&ghost).unwrap(),
            Overwrite::Never,
        )
        .unwrap();
        let l = Lock::acquire(&s, "main", "base-backup", DEFAULT_STALE_AFTER).unwrap();
        assert_eq!(l.info().pid, std::process::id());
        drop(l);
        // A live process on another host is respected until the age bound.
        let remote = LockInfo {
            host: "elsewhere.invalid".into(),
            pid: 1,
            command: "expire".into(),
            started: Utc::now() - chrono::Duration::seconds(100),
            token: "remote".into(),
        };
        s.write_all(
            "main/locks/server.lock",
            &to_json(&remote).unwrap(),
            Overwrite::Never,
        )
        .unwrap();
        let err = Lock::acquire(&s, "main", "base-backup", DEFAULT_STALE_AFTER).unwrap_err();
        assert!(err.to_string().contains("elsewhere.invalid"), "{err}");
        let l = Lock::acquire(&s, "main", "base-backup", Duration::from_secs(50)).unwrap();
        drop(l);
        assert!(s.list("main/locks").unwrap().is_empty());
    }
}
