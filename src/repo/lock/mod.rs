//! The one-writer lock of a server: `<server>/locks/server.lock` in the repository.
//!
//! `base-backup`, `expire` and `delete` of one server take it so that they exclude
//! each other. It is a small JSON file created with [`Overwrite::Never`] (an atomic
//! link, so two writers cannot both succeed), naming its holder.
//!
//! A holder keeps its lock fresh: a heartbeat thread rewrites the lock's `refreshed`
//! time every [`heartbeat_interval`] for as long as the lock is held. A lock is stale
//! only when its holder ran on this host and that process is gone, or when it has not
//! been refreshed for `lock_stale_after` (so a backup that runs for days keeps its
//! lock, and a holder that crashed on another host loses it within that bound). The
//! thread dies with its process, so it never keeps a crashed holder's lock alive.
//!
//! A stale lock is broken under a second, short-lived "break" lock, and a refresh is
//! done under the same break lock, so that neither two breakers nor a breaker and a
//! refreshing holder can remove or overwrite each other's lock: under the break lock
//! a breaker removes the lock only if it is still the one it judged stale (same token,
//! still stale), and a holder rewrites it only if it still carries its own token.

use super::json::to_json;
use super::layout;
use super::server::Repository;
use crate::config::Settings;
use crate::error::{Error, ErrorKind, Result};
use crate::storage::{self, Committed, Overwrite, Storage};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

/// Name of the server-wide writer lock.
pub const SERVER_LOCK: &str = "server";
/// Name of the lock held while breaking a stale [`SERVER_LOCK`] or refreshing it.
const BREAK_LOCK: &str = "server-break";
/// A break lock older than this was left by a crashed breaker.
const BREAK_STALE: Duration = Duration::from_secs(60);
/// Default time without a refresh after which a lock is stale whoever holds it.
///
/// Ten heartbeats (one a minute, see [`heartbeat_interval`]) must fail in a row
/// before a live holder loses its lock: one refresh over a slow or briefly broken SSH
/// link takes at most the connect plus the I/O timeout (10 s + 30 s by default), so
/// even a link that is down for several minutes does not age a live lock out, while
/// a holder that crashed on another host blocks backups for ten minutes at most.
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(600);

/// How often a holder refreshes its lock: a tenth of the stale bound, at most a
/// minute (and at least 100 ms, for tests with tiny bounds).
pub fn heartbeat_interval(stale_after: Duration) -> Duration {
    (stale_after / 10)
        .min(Duration::from_secs(60))
        .max(Duration::from_millis(100))
}

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
    /// When the holder last refreshed it; absent in locks written before heartbeats
    /// existed, which count as refreshed when taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refreshed: Option<DateTime<Utc>>,
}

impl LockInfo {
    fn describe(&self) -> String {
        let secs = |t: &DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let mut s = format!(
            "{} (pid {} on {}, since {}",
            self.command,
            self.pid,
            self.host,
            secs(&self.started)
        );
        if let Some(r) = &self.refreshed {
            s.push_str(&format!(", refreshed {}", secs(r)));
        }
        s.push(')');
        s
    }

    /// When the holder last showed it is alive.
    pub fn last_refresh(&self) -> DateTime<Utc> {
        self.refreshed.unwrap_or(self.started)
    }

    /// Why this lock is stale, or `None` if its holder may still be running: its
    /// holder is a dead process on this host, or it has not been refreshed for longer
    /// than `stale_after`.
    pub fn stale_reason(&self, now: DateTime<Utc>, stale_after: Duration) -> Option<String> {
        self.stale_reason_with(now, stale_after, &hostname(), crate::util::process_alive)
    }

    fn stale_reason_with(
        &self,
        now: DateTime<Utc>,
        stale_after: Duration,
        this_host: &str,
        alive: impl Fn(u32) -> bool,
    ) -> Option<String> {
        if self.host == this_host && !alive(self.pid) {
            return Some(format!("process {} on this host is gone", self.pid));
        }
        let quiet = now.signed_duration_since(self.last_refresh());
        let bound = i64::try_from(stale_after.as_secs()).unwrap_or(i64::MAX);
        if quiet.num_seconds() > bound {
            return Some(format!(
                "it was not refreshed for {}s, above the {}s bound (lock_stale_after)",
                quiet.num_seconds(),
                stale_after.as_secs()
            ));
        }
        None
    }
}

/// Opens the heartbeat's own handle on the repository.
type Opener = Box<dyn FnMut() -> Result<Box<dyn Storage>> + Send>;

/// The heartbeat thread of a held lock.
struct Heartbeat {
    /// Dropping it stops the thread at once.
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    /// Set when the lock was found taken over by someone else.
    lost: Arc<AtomicBool>,
}

impl Heartbeat {
    fn stop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            // The thread's only blocking work is a refresh, bounded by the storage's
            // own timeouts.
            let _ = t.join();
        }
    }
}

/// A held lock; released by [`Lock::release`] or, best effort, on drop.
pub struct Lock<'a> {
    storage: &'a dyn Storage,
    server: String,
    path: String,
    info: LockInfo,
    released: bool,
    heartbeat: Option<Heartbeat>,
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
    /// Take the writer lock of `server` in `repo` for `command` (breaking a stale
    /// one) and keep it fresh with a heartbeat for as long as it is held. The
    /// heartbeat uses its own connection to the repository, so a long transfer on the
    /// main one never delays it; it connects at its first refresh, so short holders
    /// never pay for it.
    pub fn acquire_held(
        repo: &'a Repository,
        settings: &Settings,
        server: &str,
        command: &str,
    ) -> Result<Lock<'a>> {
        let mut lock = Self::acquire(repo.storage(), server, command, settings.lock_stale_after)?;
        let interval = heartbeat_interval(settings.lock_stale_after);
        let url = repo.url().clone();
        let options = settings.storage_options();
        lock.start_heartbeat(
            Box::new(move || storage::open_with(&url, &options)),
            interval,
        );
        Ok(lock)
    }

    /// [`Lock::acquire_held`], but while the holder is one of the short maintenance
    /// commands (`cron`, `expire`, `delete`, `keep`) wait for it, up to `patience`:
    /// a scheduled base-backup must not fail because cron swept at the same moment.
    pub fn acquire_held_patiently(
        repo: &'a Repository,
        settings: &Settings,
        server: &str,
        command: &str,
        patience: Duration,
    ) -> Result<Lock<'a>> {
        let deadline = std::time::Instant::now() + patience;
        let path = layout::lock_file(server, SERVER_LOCK);
        loop {
            match Self::acquire_held(repo, settings, server, command) {
                Err(e) if e.kind() == ErrorKind::Locked && std::time::Instant::now() < deadline => {
                    let maintenance = read_info(repo.storage(), &path)?.is_some_and(|h| {
                        matches!(h.command.as_str(), "cron" | "expire" | "delete" | "keep")
                    });
                    if !maintenance {
                        return Err(e);
                    }
                    crate::log_info!("{e}; waiting");
                    std::thread::sleep(Duration::from_millis(500));
                }
                other => return other,
            }
        }
    }

    /// Take the writer lock of `server` for `command`, breaking a stale one; refuse
    /// with [`ErrorKind::Locked`] (naming the holder) if it is held. Without
    /// [`Lock::keep_fresh`] the lock goes stale after `stale_after`.
    pub fn acquire(
        storage: &'a dyn Storage,
        server: &str,
        command: &str,
        stale_after: Duration,
    ) -> Result<Lock<'a>> {
        storage.create_dir_all(&layout::locks_dir(server))?;
        let path = layout::lock_file(server, SERVER_LOCK);
        let now = Utc::now();
        let info = LockInfo {
            host: hostname(),
            pid: std::process::id(),
            command: command.to_string(),
            started: now,
            token: token(),
            refreshed: Some(now),
        };
        let json = to_json(&info)?;
        if storage.write_all(&path, &json, Overwrite::Never)? == Committed::Created {
            return Ok(Self::held(storage, server, path, info));
        }
        let holder = match read_info(storage, &path)? {
            Some(h) => h,
            // Released between our attempt and the read: try once more.
            None => return Self::retry(storage, server, path, info, &json),
        };
        let Some(reason) = holder.stale_reason(Utc::now(), stale_after) else {
            return Err(locked(server, storage, &holder));
        };
        crate::log_warn!(
            "breaking stale lock of server {server} held by {}: {reason}",
            holder.describe()
        );
        break_stale(storage, server, &path, &holder, stale_after)?;
        Self::retry(storage, server, path, info, &json)
    }

    fn held(storage: &'a dyn Storage, server: &str, path: String, info: LockInfo) -> Lock<'a> {
        Lock {
            storage,
            server: server.to_string(),
            path,
            info,
            released: false,
            heartbeat: None,
        }
    }

    fn retry(
        storage: &'a dyn Storage,
        server: &str,
        path: String,
        info: LockInfo,
        json: &[u8],
    ) -> Result<Lock<'a>> {
        if storage.write_all(&path, json, Overwrite::Never)? == Committed::Created {
            return Ok(Self::held(storage, server, path, info));
        }
        match read_info(storage, &path)? {
            Some(h) => Err(locked(server, storage, &h)),
            None => Err(Error::new(
                ErrorKind::Locked,
                format!("the lock of server {server} is changing hands; try again"),
            )),
        }
    }

    /// Start the heartbeat: every `interval`, rewrite the lock's refresh time through
    /// `storage` (a second handle on the same repository), as long as the lock file
    /// still carries our token. A failed refresh is logged and retried next time; a
    /// lock found taken over stops the heartbeat and makes [`Lock::ensure_held`] fail.
    pub fn keep_fresh(&mut self, storage: Box<dyn Storage>, interval: Duration) {
        let mut given = Some(storage);
        self.start_heartbeat(
            Box::new(move || {
                given
                    .take()
                    .ok_or_else(|| Error::new(ErrorKind::Io, "the heartbeat's storage is gone"))
            }),
            interval,
        );
    }

    /// [`Lock::keep_fresh`] with a storage opened by `open` at the first refresh
    /// (and again after a failed open).
    fn start_heartbeat(&mut self, mut open: Opener, interval: Duration) {
        if let Some(mut old) = self.heartbeat.take() {
            old.stop();
        }
        let (tx, rx) = mpsc::channel::<()>();
        let lost = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&lost);
        let server = self.server.clone();
        let path = self.path.clone();
        let mut info = self.info.clone();
        let spawned = std::thread::Builder::new()
            .name("lock-heartbeat".into())
            .spawn(move || {
                let mut store: Option<Box<dyn Storage>> = None;
                loop {
                match rx.recv_timeout(interval) {
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    // Released, or the holder is going away.
                    _ => return,
                }
                if store.is_none() {
                    match open() {
                        Ok(s) => store = Some(s),
                        Err(e) => {
                            crate::log_warn!(
                                "could not connect to refresh the lock of server {server}: {e} \
                                 (retrying in {}s; it goes stale after lock_stale_after without a refresh)",
                                interval.as_secs_f64()
                            );
                            continue;
                        }
                    }
                }
                let Some(storage) = store.as_deref() else {
                    continue;
                };
                match refresh(storage, &server, &path, &mut info) {
                    Ok(Refresh::Done) => {
                        crate::log_debug!("refreshed lock {path}");
                    }
                    Ok(Refresh::Busy) => {
                        crate::log_debug!("lock {path}: another process holds the break lock; refreshing next time");
                    }
                    Ok(Refresh::Lost(other)) => {
                        flag.store(true, Ordering::SeqCst);
                        crate::log_error!(
                            "the lock of server {server} in {} is no longer ours ({}); \
                             stopping its heartbeat",
                            storage.location(),
                            other.map_or("it was removed".to_string(), |o| format!(
                                "now held by {}",
                                o.describe()
                            ))
                        );
                        return;
                    }
                    Err(e) => crate::log_warn!(
                        "could not refresh the lock of server {server} in {}: {e} (retrying in {}s; \
                         it goes stale after lock_stale_after without a refresh)",
                        storage.location(),
                        interval.as_secs_f64()
                    ),
                }
                }
            });
        match spawned {
            Ok(thread) => {
                self.heartbeat = Some(Heartbeat {
                    stop: Some(tx),
                    thread: Some(thread),
                    lost,
                })
            }
            Err(e) => crate::log_warn!(
                "could not start the heartbeat of lock {}: {e}; it goes stale after lock_stale_after",
                self.path
            ),
        }
    }

    /// Fail with [`ErrorKind::Locked`] if the heartbeat found the lock taken over
    /// (broken as stale by another process), so a holder does not commit work that
    /// another writer may be undoing.
    pub fn ensure_held(&self) -> Result<()> {
        if self
            .heartbeat
            .as_ref()
            .is_some_and(|h| h.lost.load(Ordering::SeqCst))
        {
            return Err(Error::new(
                ErrorKind::Locked,
                format!(
                    "the lock of server {} in {} was broken by another process while we held it; \
                     giving up (check lock_stale_after and the repository's reachability)",
                    self.server,
                    self.storage.location()
                ),
            ));
        }
        Ok(())
    }

    /// Who holds this lock.
    pub fn info(&self) -> &LockInfo {
        &self.info
    }

    /// Stop the heartbeat and remove the lock file if it is still ours. Failing to is
    /// a warning, not an error: the command's own result (its work done, or its own
    /// failure) is what the caller must report, and a lock left behind is broken as
    /// stale by the next writer.
    pub fn release(self) {
        let path = self.path.clone();
        if let Err(e) = self.try_release() {
            warn_unreleased(&path, &e);
        }
    }

    /// [`Lock::release`], returning the failure instead of logging it.
    pub fn try_release(mut self) -> Result<()> {
        self.released = true;
        // First the heartbeat, so it cannot rewrite the file after we removed it.
        if let Some(mut h) = self.heartbeat.take() {
            h.stop();
        }
        release(self.storage, &self.path, &self.info.token)
    }
}

impl Drop for Lock<'_> {
    fn drop(&mut self) {
        if let Some(mut h) = self.heartbeat.take() {
            h.stop();
        }
        if !self.released {
            if let Err(e) = release(self.storage, &self.path, &self.info.token) {
                warn_unreleased(&self.path, &e);
            }
        }
    }
}

fn warn_unreleased(path: &str, e: &Error) {
    crate::log_warn!("could not release lock {path}: {e}; the next writer will break it as stale");
}

/// What one heartbeat did.
enum Refresh {
    Done,
    /// Someone holds the break lock right now.
    Busy,
    /// The lock file is gone or carries another token.
    Lost(Option<LockInfo>),
}

/// Rewrite our lock with a new refresh time, under the break lock and only if it is
/// still ours.
fn refresh(
    storage: &dyn Storage,
    server: &str,
    path: &str,
    info: &mut LockInfo,
) -> Result<Refresh> {
    let Some(brk) = take_break_lock(storage, server)? else {
        return Ok(Refresh::Busy);
    };
    let result = (|| match read_info(storage, path)? {
        Some(h) if h.token == info.token => {
            info.refreshed = Some(Utc::now());
            storage.write_all(path, &to_json(info)?, Overwrite::Replace)?;
            Ok(Refresh::Done)
        }
        other => Ok(Refresh::Lost(other)),
    })();
    let released = release(storage, &layout::lock_file(server, BREAK_LOCK), &brk.token);
    let outcome = result?;
    released?;
    Ok(outcome)
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
             died on its own host, or that was not refreshed for lock_stale_after, is broken \
             automatically)",
            storage.location(),
            holder.describe()
        ),
    )
}

/// Take the break lock (replacing one left by a crashed breaker); `None` if another
/// live process holds it.
fn take_break_lock(storage: &dyn Storage, server: &str) -> Result<Option<LockInfo>> {
    let break_path = layout::lock_file(server, BREAK_LOCK);
    let now = Utc::now();
    let mine = LockInfo {
        host: hostname(),
        pid: std::process::id(),
        command: "break or refresh lock".into(),
        started: now,
        token: token(),
        refreshed: None,
    };
    let json = to_json(&mine)?;
    if storage.write_all(&break_path, &json, Overwrite::Never)? == Committed::Created {
        return Ok(Some(mine));
    }
    let other = read_info(storage, &break_path)?;
    let stale = other
        .as_ref()
        .is_none_or(|o| o.stale_reason(Utc::now(), BREAK_STALE).is_some());
    if !stale {
        return Ok(None);
    }
    if let Some(o) = &other {
        // Only the one we judged stale.
        release(storage, &break_path, &o.token)?;
    }
    if storage.write_all(&break_path, &json, Overwrite::Never)? == Committed::AlreadyExists {
        return Ok(None);
    }
    Ok(Some(mine))
}

/// Remove the stale lock `seen`, under the break lock.
fn break_stale(
    storage: &dyn Storage,
    server: &str,
    path: &str,
    seen: &LockInfo,
    stale_after: Duration,
) -> Result<()> {
    let Some(mine) = take_break_lock(storage, server)? else {
        return Err(Error::new(
            ErrorKind::Locked,
            format!(
                "another process is breaking or refreshing the lock of server {server}; try again"
            ),
        ));
    };
    let result = (|| {
        // Remove it only if it is still the lock we judged stale, and still stale: its
        // holder may have refreshed it since we looked.
        if let Some(now) = read_info(storage, path)? {
            if now.token == seen.token {
                if now.stale_reason(Utc::now(), stale_after).is_none() {
                    return Err(locked(server, storage, &now));
                }
                storage.remove_file(path)?;
            }
        }
        Ok(())
    })();
    release(storage, &layout::lock_file(server, BREAK_LOCK), &mine.token)?;
    result
}

/// Read a lock file; `None` if there is none.
pub fn read_info(storage: &dyn Storage, path: &str) -> Result<Option<LockInfo>> {
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

/// The holder of `server`'s writer lock if it is held and not stale.
pub fn live_holder(
    storage: &dyn Storage,
    server: &str,
    stale_after: Duration,
) -> Result<Option<LockInfo>> {
    let info = read_info(storage, &layout::lock_file(server, SERVER_LOCK))?;
    Ok(info.filter(|i| i.stale_reason(Utc::now(), stale_after).is_none()))
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

fn token() -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{}-{}-{nanos:x}-{n}", hostname(), std::process::id())
}

#[cfg(test)]
mod tests;
