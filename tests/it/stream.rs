//! `pgcellar receive-wal` against a real PostgreSQL and PostgreSQL's own
//! pg_receivewal: streaming only (the primary killed with SIGKILL, no segment
//! switch, recovery through the streamed partial), asynchronous and synchronous;
//! streaming beside archive_command; the receiver and the server restarted; a
//! timeline switch while streaming. Recovery by PostgreSQL is the proof.

use crate::backup_restore::{base_backup, out_text, restore_and_start_with, restore_cmd};
use crate::common::*;
use std::fs;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A running `pgcellar receive-wal`, stopped (SIGTERM) on drop.
pub(crate) struct Receiver {
    child: Option<Child>,
    /// Its stderr.
    pub(crate) log: PathBuf,
    _dir: Arc<TestDir>,
}

impl Receiver {
    /// Start streaming `c` into `repo` over `slot` (created if missing), with `extra`
    /// flags; waits until the server shows the stream.
    pub(crate) fn start(repo: &RepoDir, c: &Cluster, slot: &str, extra: &[&str]) -> Receiver {
        let dir = Arc::new(TestDir::new());
        chown_postgres(dir.path());
        Receiver::start_in(repo, c, slot, extra, dir)
    }

    fn start_in(
        repo: &RepoDir,
        c: &Cluster,
        slot: &str,
        extra: &[&str],
        dir: Arc<TestDir>,
    ) -> Receiver {
        let spool = dir.join("spool");
        let n = fs::read_dir(dir.path()).map(|d| d.count()).unwrap_or(0);
        let log = dir.join(format!("receiver-{n}.log"));
        // Not through runuser: signals must reach receive-wal itself, as systemd's do.
        let mut cmd = std::process::Command::new(bin("pgcellar"));
        if is_root() {
            use std::os::unix::process::CommandExt;
            let (uid, gid) = postgres_ids();
            cmd.uid(uid).gid(gid).env("HOME", "/var/lib/postgresql");
        }
        let child = cmd
            .args(repo.args())
            .arg("--conninfo")
            .arg(c.conninfo())
            .args([
                "-v",
                "receive-wal",
                "--slot",
                slot,
                "--create-slot",
                "--spool",
            ])
            .arg(&spool)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("receiver log"))
            .spawn()
            .expect("spawn receive-wal");
        let r = Receiver {
            child: Some(child),
            log,
            _dir: dir,
        };
        r.wait_streaming(c, slot);
        r
    }

    /// The same spool, a new process (after [`Receiver::kill`]).
    pub(crate) fn restart(&mut self, repo: &RepoDir, c: &Cluster, slot: &str, extra: &[&str]) {
        let next = Receiver::start_in(repo, c, slot, extra, Arc::clone(&self._dir));
        *self = next;
    }

    /// Wait until `c` shows this stream on `slot` as active and streaming.
    pub(crate) fn wait_streaming(&self, c: &Cluster, slot: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let active = c.psql(&format!(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}' AND active"
            ));
            if active == "1" {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "receive-wal never streamed:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub(crate) fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, and wait: exit 0 after storing what it had.
    pub(crate) fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        signal(&child, libc::SIGTERM);
        let status = wait_bounded(&mut child, Duration::from_secs(30));
        assert_eq!(status, Some(0), "receive-wal stop:\n{}", self.log_text());
        let log = self.log_text();
        assert!(log.contains("receive-wal stopped"), "{log}");
    }

    /// SIGKILL: nothing is flushed, pg_receivewal gets SIGTERM from the kernel.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, libc::SIGKILL);
            let _ = child.wait();
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, libc::SIGTERM);
            if wait_bounded(&mut child, Duration::from_secs(20)).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// uid and gid of the postgres user.
fn postgres_ids() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let o = std::process::Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("id");
        String::from_utf8_lossy(&o.stdout)
            .trim()
            .parse()
            .expect("postgres id")
    };
    (id("-u"), id("-g"))
}

fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: signalling our own child by pid.
    unsafe {
        libc::kill(child.id() as libc::pid_t, sig);
    }
}

fn wait_bounded(child: &mut Child, d: Duration) -> Option<i32> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if let Ok(Some(st)) = child.try_wait() {
            return st.code();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// Kill the postmaster and every process it started with SIGKILL in one call:
/// the crash of a primary's host, with no shutdown checkpoint and no segment switch.
pub(crate) fn kill_9(c: &Cluster) {
    let pidfile = fs::read_to_string(c.pgdata.join("postmaster.pid")).expect("postmaster.pid");
    let pid = pidfile.lines().next().unwrap_or("").trim().to_string();
    let children = std::process::Command::new("pgrep")
        .args(["-P", &pid])
        .output()
        .expect("pgrep");
    let mut pids = vec![pid];
    pids.extend(
        String::from_utf8_lossy(&children.stdout)
            .split_whitespace()
            .map(str::to_string),
    );
    run_ok(std::process::Command::new("kill").arg("-9").args(&pids));
}

/// A cluster without archive_command (archive_mode off), registered in `repo`.
fn streaming_only_cluster(repo: &RepoDir) -> Option<Cluster> {
    let c = Cluster::init(ClusterOpts::default())?;
    repo.init_for(&c);
    Some(c)
}

fn has_pg_receivewal() -> bool {
    let Some(bindir) = pg_bindir() else {
        return false;
    };
    client_bindir_for(&bindir).join("pg_receivewal").is_file()
        || std::path::Path::new("/usr/bin/pg_receivewal").is_file()
}

/// Streaming only, archive_command off: a backup, rows, then SIGKILL of the primary
/// with the last rows only in the segment being received. Recovery through the
/// streamed partial reaches them; in synchronous mode exactly every acknowledged
/// commit (and at most the one in flight) is there.
fn streamed_commits_survive_a_killed_primary(repo: &RepoDir, synchronous: bool) {
    if !has_pg_receivewal() && skip_or_fail("pg_receivewal not installed").is_none() {
        return;
    }
    let Some(c) = streaming_only_cluster(repo) else {
        return;
    };
    c.psql("CREATE TABLE t(i int PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())");
    let extra: &[&str] = if synchronous { &["--synchronous"] } else { &[] };
    let mut rx = Receiver::start(repo, &c, "stream1", extra);
    if synchronous {
        // Before the backup, so that the copy inherits it, as a real outage's would.
        c.psql("ALTER SYSTEM SET synchronous_standby_names = 'pgcellar'");
        c.psql("SELECT pg_reload_conf()");
    }
    // archive_command is off: the backup's WAL comes from the stream.
    base_backup(repo, &c, &["--backup-wal-timeout", "60"]);
    if synchronous {
        let deadline = Instant::now() + Duration::from_secs(30);
        while c.psql("SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'") != "1" {
            assert!(
                Instant::now() < deadline,
                "the stream never became synchronous"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // One client commits row after row; the main thread kills the primary under it.
    let acked = Arc::new(AtomicI64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acked, done, conninfo) = (Arc::clone(&acked), Arc::clone(&done), c.conninfo());
        std::thread::spawn(move || {
            let Ok(mut db) = postgres::Client::connect(&conninfo, postgres::NoTls) else {
                return;
            };
            let mut i = 1i64;
            while !done.load(Ordering::Relaxed) {
                if db
                    .execute("INSERT INTO t(i) VALUES ($1::int8::int)", &[&i])
                    .is_err()
                {
                    return;
                }
                acked.store(i, Ordering::SeqCst);
                i += 1;
                if !synchronous {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        })
    };
    std::thread::sleep(Duration::from_secs(3));
    if !synchronous {
        // Asynchronous: the documented window is the refresh interval (1 s) plus
        // the network; stop writing and let it pass before the crash.
        done.store(true, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(1500));
    }
    kill_9(&c);
    done.store(true, Ordering::Relaxed);
    let _ = writer.join();
    let acked = acked.load(Ordering::SeqCst);
    assert!(acked > 50, "only {acked} commits before the kill");
    // The receiver stores what it has as soon as the connection drops; stopping it
    // (as the outage procedure says) waits for that.
    std::thread::sleep(Duration::from_secs(2));
    rx.stop();
    let wal = repo.wal_files();
    assert!(
        !wal.iter().any(|f| f.ends_with(".partial")),
        "the stream's partial belongs in stream/, not the archive: {wal:?}"
    );

    if !synchronous {
        plant_an_older_refresh(repo);
    }

    let bindir = c.bindir.clone();
    let (copy, log) = restore_and_start_with(repo, &[], false, &bindir);
    assert!(
        log.contains("placed the stream's partial segment"),
        "restore did not use the stream: {log}"
    );
    let max: i64 = copy
        .psql("SELECT coalesce(max(i), 0) FROM t")
        .parse()
        .unwrap();
    let count: i64 = copy.psql("SELECT count(*) FROM t").parse().unwrap();
    assert_eq!(count, max, "rows missing in the middle");
    // The copy waits for no standby of the old primary: its commits would hang.
    assert_eq!(copy.psql("SHOW synchronous_standby_names"), "");
    if synchronous {
        assert!(
            max == acked || max == acked + 1,
            "synchronous: {acked} commits were acknowledged, recovery has {max}\n{}",
            rx.log_text()
        );
    } else {
        assert_eq!(
            max,
            acked,
            "asynchronous, after the window:\n{}",
            rx.log_text()
        );
    }
}

/// What a receiver killed between storing a refresh and removing the one before
/// leaves: a second copy of the newest partial holding less WAL. It is given a
/// name that lists after the real one, so a restore that took either copy by its
/// name would take this one and miss the last rows.
fn plant_an_older_refresh(repo: &RepoDir) {
    use sha2::{Digest, Sha256};
    use std::os::unix::fs::MetadataExt;
    let dir = repo.path.join(&repo.server).join("stream");
    let names: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.contains(".partial-") && n.ends_with(".zst"))
        .collect();
    assert_eq!(names.len(), 1, "one streamed partial expected: {names:?}");
    let real = &names[0];
    let (segment, rest) = real.split_once(".partial-").unwrap();
    let real_sha = rest.trim_end_matches(".zst");
    let meta = fs::metadata(dir.join(real)).unwrap();
    let bytes = zstd::decode_all(fs::File::open(dir.join(real)).unwrap()).unwrap();
    let end = bytes.iter().rposition(|b| *b != 0).unwrap() + 1;
    for cut in 1..64 {
        let keep = end.saturating_sub(cut * 512).max(64);
        let mut older = bytes.clone();
        older[keep..].fill(0);
        let sha = format!("{:x}", Sha256::digest(&older));
        if sha.as_str() <= real_sha {
            continue;
        }
        let path = dir.join(format!("{segment}.partial-{sha}.zst"));
        fs::write(&path, zstd::encode_all(&older[..], 3).unwrap()).unwrap();
        std::os::unix::fs::chown(&path, Some(meta.uid()), Some(meta.gid())).unwrap();
        fs::set_permissions(&path, meta.permissions()).unwrap();
        return;
    }
    panic!("no truncation of {real} hashed after it");
}

/// Asynchronous, on a local repository (the planted refresh is written on disk).
#[test]
fn streamed_commits_survive_a_killed_primary_async() {
    streamed_commits_survive_a_killed_primary(&RepoDir::new(), false);
}

// Synchronous, on every backend: the partial reaches SSH and S3 repositories too.
on_all_backends!(streamed_commits_survive_a_killed_primary_sync);

fn streamed_commits_survive_a_killed_primary_sync(repo: &RepoDir) {
    streamed_commits_survive_a_killed_primary(repo, true);
}

/// Streaming beside archive_command: each segment is stored once, neither route
/// reports an error, and a restore sees every row.
#[test]
fn stream_and_archive_command_store_each_segment_once() {
    if !has_pg_receivewal() && skip_or_fail("pg_receivewal not installed").is_none() {
        return;
    }
    let repo = RepoDir::new();
    let Some(c) = repo.archiving_cluster() else {
        return;
    };
    let mut rx = Receiver::start(&repo, &c, "stream1", &[]);
    base_backup(&repo, &c, &[]);
    c.psql("CREATE TABLE t(i int)");
    for k in 0..6 {
        c.psql(&format!(
            "INSERT INTO t SELECT generate_series({k}*1000+1, {k}*1000+1000)"
        ));
        c.switch_and_wait_archived();
    }
    // Both routes had time to store every switched segment.
    std::thread::sleep(Duration::from_secs(3));
    rx.stop();
    let wal = repo.wal_files();
    let mut names: Vec<String> = wal
        .iter()
        .filter_map(|f| f.rsplit('/').next())
        .filter_map(|f| f.split_once('-').map(|(n, _)| n.to_string()))
        .collect();
    let before = names.len();
    names.sort();
    names.dedup();
    assert_eq!(before, names.len(), "a WAL name stored twice: {wal:?}");
    assert!(names.len() >= 6, "{wal:?}");
    assert_eq!(c.archiver_counts().1, 0, "archive_command failed");
    let log = rx.log_text();
    assert!(!log.contains("ERROR"), "{log}");
    let o = repo.pgcellar(&["verify", "--all"]);
    assert!(o.status.success(), "{}", out_text(&o));
}

/// The receiver killed with SIGKILL and restarted, then the server restarted: the
/// slot kept the WAL, pg_receivewal resumed from the spool, and nothing is missing.
#[test]
fn a_restarted_receiver_and_server_leave_no_gap() {
    if !has_pg_receivewal() && skip_or_fail("pg_receivewal not installed").is_none() {
        return;
    }
    let repo = RepoDir::new();
    let Some(c) = streaming_only_cluster(&repo) else {
        return;
    };
    c.psql("CREATE TABLE t(i int)");
    let mut rx = Receiver::start(&repo, &c, "stream1", &[]);
    base_backup(&repo, &c, &["--backup-wal-timeout", "60"]);
    let mut next = 1;
    let mut write = |c: &Cluster, switches: usize| {
        for _ in 0..switches {
            c.psql(&format!(
                "INSERT INTO t SELECT generate_series({next}, {})",
                next + 999
            ));
            next += 1000;
            c.psql("SELECT pg_switch_wal()");
        }
    };
    write(&c, 2);
    rx.kill();
    // Written while no receiver runs: only the slot keeps it.
    write(&c, 3);
    rx.restart(&repo, &c, "stream1", &[]);
    write(&c, 2);
    c.stop();
    c.start();
    rx.wait_streaming(&c, "stream1");
    write(&c, 2);
    c.psql("INSERT INTO t SELECT generate_series(100001, 100010)");
    std::thread::sleep(Duration::from_secs(3));
    let o = repo.pgcellar(&["--conninfo", &c.conninfo(), "check", "--json"]);
    let report = json_document(&o.stdout);
    for row in [
        "wal_continuity",
        "stream",
        "archive_mode",
        "archive_command",
        "archiving",
    ] {
        assert_eq!(check_row(&report, row)["status"], "ok", "{row}: {report}");
    }
    let o = repo.pgcellar(&["info"]);
    let text = out_text(&o);
    assert!(
        text.contains("Stream: streaming, asynchronous over slot stream1"),
        "{text}"
    );
    let o = repo.pgcellar(&["info", "--json"]);
    let doc = json_document(&o.stdout);
    let st = &doc["servers"][0]["stream"];
    assert_eq!(st["running"], true, "{doc}");
    assert_eq!(st["slot_present"], true, "{doc}");
    assert!(st["lag_bytes"].as_u64().is_some(), "{doc}");
    rx.stop();
    // A stopped stream is a WARNING for monitoring; the slot is still there.
    let o = repo.pgcellar(&["--conninfo", &c.conninfo(), "check", "--nagios"]);
    let line = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(o.status.code(), Some(1), "{line}");
    assert!(
        line.contains("stream: receive-wal (slot stream1") && line.contains("was stopped"),
        "{line}"
    );
    // The slot dropped: CRITICAL.
    c.psql("SELECT pg_drop_replication_slot('stream1')");
    let o = repo.pgcellar(&["--conninfo", &c.conninfo(), "check", "--nagios"]);
    let line = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(o.status.code(), Some(2), "{line}");
    assert!(line.contains("slot stream1 does not exist"), "{line}");
    c.stop();
    let (copy, log) = restore_and_start_with(&repo, &[], false, &c.bindir);
    assert_eq!(
        copy.psql("SELECT count(*) FROM t"),
        (9 * 1000 + 10).to_string(),
        "{log}"
    );
    let o = repo.pgcellar(&["verify", "--all"]);
    assert!(o.status.success(), "{}", out_text(&o));
}

/// A timeline switch while streaming: the stream comes from a standby, which is
/// promoted; the receiver follows it onto timeline 2 and recovery of the newest
/// timeline sees the rows written after the promotion.
#[test]
fn the_stream_follows_a_timeline_switch() {
    if !has_pg_receivewal() && skip_or_fail("pg_receivewal not installed").is_none() {
        return;
    }
    let repo = RepoDir::new();
    let Some(pair) =
        crate::standby::primary_and_standby(&repo, None, crate::standby::Route::PrimaryArchives)
    else {
        return;
    };
    let standby = &pair.standby;
    let mut rx = Receiver::start(&repo, standby, "stream1", &[]);
    pair.primary
        .psql("INSERT INTO t SELECT generate_series(11, 20)");
    pair.primary.psql("SELECT pg_switch_wal()");
    standby.wait_until(Duration::from_secs(60), "rows 11-20 on the standby", |s| {
        s.psql("SELECT count(*) FROM t") == "20"
    });
    pair.primary.stop();
    standby.promote();
    standby.wait_for_promotion(Duration::from_secs(60));
    standby.psql("INSERT INTO t SELECT generate_series(21, 30)");
    rx.wait_streaming(standby, "stream1");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !repo
        .wal_files()
        .iter()
        .any(|f| f.starts_with("00000002.history"))
    {
        assert!(
            Instant::now() < deadline,
            "no 00000002.history from the stream: {:?}\n{}",
            repo.wal_files(),
            rx.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    standby.psql("INSERT INTO t SELECT generate_series(31, 40)");
    std::thread::sleep(Duration::from_secs(3));
    rx.stop();
    assert!(
        rx.log_text().contains("switched to timeline 2"),
        "{}",
        rx.log_text()
    );
    let partials: Vec<String> = {
        let s = repo.storage();
        let mut out = Vec::new();
        list_tree(s.as_ref(), &format!("{}/stream", repo.server), "", &mut out);
        out
    };
    assert!(
        partials.iter().any(|p| p.starts_with("00000002")),
        "no timeline-2 partial: {partials:?}"
    );
    standby.stop();
    let (copy, log) = restore_and_start_with(&repo, &[], false, &standby.bindir);
    assert_eq!(copy.psql("SELECT count(*) FROM t"), "40", "{log}");
}

/// receive-wal checks the server against the registration before anything else:
/// another cluster's WAL is refused (exit 1, no retry), no slot is created on it and
/// nothing is stored.
#[test]
fn receive_wal_refuses_another_cluster() {
    if !has_pg_receivewal() && skip_or_fail("pg_receivewal not installed").is_none() {
        return;
    }
    let repo = RepoDir::new();
    let Some(_registered) = streaming_only_cluster(&repo) else {
        return;
    };
    let Some(other) = Cluster::init(ClusterOpts::default()) else {
        return;
    };
    let dir = TestDir::new();
    chown_postgres(dir.path());
    let spool = dir.join("spool");
    let o = repo.pgcellar(&[
        "--conninfo",
        &other.conninfo(),
        "receive-wal",
        "--slot",
        "other",
        "--create-slot",
        "--spool",
        spool.to_str().unwrap(),
        "--run-for",
        "60",
    ]);
    let text = out_text(&o);
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(
        text.contains("refusing to stream another cluster's WAL"),
        "{text}"
    );
    assert_eq!(other.psql("SELECT count(*) FROM pg_replication_slots"), "0");
    assert!(repo.wal_files().is_empty(), "{:?}", repo.wal_files());
    assert!(!repo.path.join(&repo.server).join("stream").exists());
}

/// A streamed partial damaged in the repository is never placed: restore stops with
/// an error naming it, before pg_control makes the copy startable, rather than let
/// recovery end early on WAL the stream did not receive.
#[test]
fn a_damaged_stream_partial_stops_restore() {
    if !has_pg_receivewal() && skip_or_fail("pg_receivewal not installed").is_none() {
        return;
    }
    let repo = RepoDir::new();
    let Some(c) = streaming_only_cluster(&repo) else {
        return;
    };
    let mut rx = Receiver::start(&repo, &c, "stream1", &[]);
    base_backup(&repo, &c, &["--backup-wal-timeout", "60"]);
    c.psql("CREATE TABLE t(i int)");
    c.psql("INSERT INTO t SELECT generate_series(1, 100)");
    std::thread::sleep(Duration::from_secs(2));
    rx.stop();
    kill_9(&c);
    let dir = repo.path.join(&repo.server).join("stream");
    let name = fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .find(|n| n.contains(".partial-"))
        .expect("a streamed partial");
    let segment = name.split(".partial-").next().unwrap().to_string();
    // In place, so owner and mode stay: one byte in the middle of the stored file.
    let path = dir.join(&name);
    let mut bytes = fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x5a;
    fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, &bytes))
        .unwrap();

    let dest = TestDir::new();
    chown_postgres(dest.path());
    let pgdata = dest.join("pgdata");
    let o = restore_cmd(&repo, &pgdata, &[]);
    let text = out_text(&o);
    assert!(
        !o.status.success(),
        "restore used a damaged partial: {text}"
    );
    assert!(text.contains(&name), "the error names the file: {text}");
    assert!(!pgdata.join("pg_wal").join(&segment).exists());
    assert!(!pgdata.join("global/pg_control").exists(), "{text}");
}
