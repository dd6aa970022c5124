//! Unit tests of the server lock.

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
    a.try_release().unwrap();
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
        refreshed: None,
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
        refreshed: None,
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

fn info(host: &str, pid: u32, started_ago: i64, refreshed_ago: Option<i64>) -> LockInfo {
    let now = Utc::now();
    LockInfo {
        host: host.into(),
        pid,
        command: "base-backup".into(),
        started: now - chrono::Duration::seconds(started_ago),
        token: "t".into(),
        refreshed: refreshed_ago.map(|s| now - chrono::Duration::seconds(s)),
    }
}

#[test]
fn staleness_follows_the_last_refresh_not_the_start() {
    let bound = Duration::from_secs(600);
    let now = Utc::now();
    let alive = |_| true;
    let dead = |_| false;
    // Running for two days, refreshed a minute ago: alive, wherever it runs.
    let long = info("here", 7, 2 * 86400, Some(60));
    assert_eq!(long.stale_reason_with(now, bound, "here", alive), None);
    assert_eq!(long.stale_reason_with(now, bound, "there", dead), None);
    // Not refreshed for 11 minutes: stale even with a live pid (a hung or
    // partitioned holder, or a pid reused by another program).
    let quiet = info("here", 7, 2 * 86400, Some(660));
    let why = quiet.stale_reason_with(now, bound, "here", alive).unwrap();
    assert!(why.contains("not refreshed for 6"), "{why}");
    // A dead process on this host: stale at once, however fresh.
    let gone = info("here", 7, 5, Some(1));
    let why = gone.stale_reason_with(now, bound, "here", dead).unwrap();
    assert!(why.contains("process 7 on this host is gone"), "{why}");
    // The same pid on another host says nothing about that host's process.
    assert_eq!(gone.stale_reason_with(now, bound, "other", dead), None);
    // A lock of an older version (no refresh time) counts from when it was taken.
    let old = info("there", 7, 700, None);
    assert!(old.stale_reason_with(now, bound, "here", alive).is_some());
    let young = info("there", 7, 100, None);
    assert_eq!(young.stale_reason_with(now, bound, "here", alive), None);
    // The heartbeat is well below the bound.
    assert_eq!(heartbeat_interval(bound), Duration::from_secs(60));
    assert_eq!(
        heartbeat_interval(Duration::from_secs(86400)),
        Duration::from_secs(60)
    );
    assert_eq!(
        heartbeat_interval(Duration::from_secs(2)),
        Duration::from_millis(200)
    );
}

#[test]
fn lock_files_without_a_refresh_time_still_parse() {
    let old =
        br#"{"host":"h","pid":12,"command":"expire","started":"2026-01-01T00:00:00Z","token":"x"}"#;
    let i: LockInfo = serde_json::from_slice(old).unwrap();
    assert_eq!(i.refreshed, None);
    assert_eq!(i.last_refresh(), i.started);
}

/// The first `Some` of `probe`, polled every 10 ms for up to 30 s.
fn eventually<T>(mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "condition not met in 30 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn the_heartbeat_refreshes_and_never_overwrites_a_lock_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let s = LocalStorage::new(dir.path().join("repo"));
    let path = "main/locks/server.lock";
    let mut l = Lock::acquire(&s, "main", "base-backup", Duration::from_secs(2)).unwrap();
    l.keep_fresh(Box::new(s.clone()), Duration::from_millis(100));
    let first = read_info(&s, path).unwrap().unwrap().refreshed.unwrap();
    // Polled, not slept: on a loaded CI machine four intervals of wall clock once
    // passed before the heartbeat thread ran at all.
    let later = eventually(|| {
        let now = read_info(&s, path).unwrap().unwrap();
        (now.refreshed.unwrap() > first).then_some(now)
    });
    assert_eq!(later.token, l.info().token);
    assert!(l.ensure_held().is_ok());
    // Someone else takes the lock over, as a breaker does: under the break lock,
    // which the heartbeat holds while it reads and rewrites (written without it, the
    // takeover could land between the heartbeat's read and its write). The heartbeat
    // must leave their lock alone and report the loss.
    let theirs = info("elsewhere.invalid", 1, 0, Some(0));
    let brk = loop {
        if let Some(b) = take_break_lock(&s, "main").unwrap() {
            break b;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    s.write_all(path, &to_json(&theirs).unwrap(), Overwrite::Replace)
        .unwrap();
    release(&s, &layout::lock_file("main", BREAK_LOCK), &brk.token).unwrap();
    let err = eventually(|| l.ensure_held().err());
    assert_eq!(read_info(&s, path).unwrap().unwrap(), theirs);
    assert_eq!(err.kind(), ErrorKind::Locked);
    // Releasing does not remove their lock either.
    l.try_release().unwrap();
    assert_eq!(read_info(&s, path).unwrap().unwrap(), theirs);
    assert!(s.stat("main/locks/server-break.lock").unwrap().is_none());
}

#[test]
fn release_stops_the_heartbeat_before_removing_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let s = LocalStorage::new(dir.path().join("repo"));
    let mut l = Lock::acquire(&s, "main", "expire", Duration::from_secs(1)).unwrap();
    l.keep_fresh(Box::new(s.clone()), Duration::from_millis(100));
    std::thread::sleep(Duration::from_millis(250));
    l.try_release().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(s.list("main/locks").unwrap().is_empty());
}

/// Local storage whose removals fail, as on a repository that went read-only.
struct NoRemove(LocalStorage);

impl Storage for NoRemove {
    fn location(&self) -> String {
        self.0.location()
    }
    fn list(&self, dir: &str) -> Result<Vec<crate::storage::DirEntry>> {
        self.0.list(dir)
    }
    fn stat(&self, path: &str) -> Result<Option<crate::storage::FileInfo>> {
        self.0.stat(path)
    }
    fn open_read(&self, path: &str) -> Result<Box<dyn std::io::Read + Send>> {
        self.0.open_read(path)
    }
    fn create(&self, dir: &str) -> Result<Box<dyn crate::storage::AtomicFile>> {
        self.0.create(dir)
    }
    fn create_dir_all(&self, dir: &str) -> Result<()> {
        self.0.create_dir_all(dir)
    }
    fn remove_file(&self, path: &str) -> Result<()> {
        Err(Error::new(
            ErrorKind::Io,
            format!("removing {path}: read-only"),
        ))
    }
    fn remove_file_synced(&self, path: &str) -> Result<()> {
        self.remove_file(path)
    }
    fn remove_dir_all(&self, path: &str) -> Result<()> {
        self.remove_file(path)
    }
    fn capabilities(&self) -> crate::storage::Capabilities {
        self.0.capabilities()
    }
}

#[test]
fn a_failed_release_is_a_warning_not_the_result() {
    let dir = tempfile::tempdir().unwrap();
    let s = NoRemove(LocalStorage::new(dir.path().join("repo")));
    let l = Lock::acquire(&s, "main", "keep", DEFAULT_STALE_AFTER).unwrap();
    let err = l.try_release().unwrap_err();
    assert!(err.to_string().contains("read-only"), "{err}");
    // The same failure through release(): the caller's result stands.
    let run = || -> Result<u32> {
        let l = Lock::acquire(&s, "main", "keep", DEFAULT_STALE_AFTER)?;
        l.release();
        Ok(7)
    };
    // The first lock is still there (ours, our pid alive): break it by hand.
    s.0.remove_file("main/locks/server.lock").unwrap();
    assert_eq!(run().unwrap(), 7);
    assert!(s.stat("main/locks/server.lock").unwrap().is_some());
}
