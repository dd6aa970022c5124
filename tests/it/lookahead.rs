//! Look-ahead wal-push and prefetching wal-get: correctness under the speed-ups.
//!
//! The first half drives the binaries the way PostgreSQL does (`pg_wal/NAME` relative
//! to a data directory, `.ready` files in `archive_status`) with synthetic segments;
//! the second half runs real PostgreSQL clusters with 1 MiB segments.

use crate::common::synthetic::*;
use crate::common::*;
use assert_cmd::Command;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

const SYSID: u64 = 7_300_000_000_000_000_077;
fn synthetic_repo() -> RepoDir {
    register_synthetic(RepoDir::new(), SYSID).0
}

fn seg_name(tli: u32, n: u32) -> String {
    format!("{tli:08X}00000000{n:08X}")
}

/// A fake data directory: `pg_wal/` with `archive_status/`, like PostgreSQL's.
struct DataDir {
    root: TestDir,
    data: PathBuf,
}

impl DataDir {
    fn new() -> DataDir {
        let root = TestDir::new();
        let data = root.join("data");
        fs::create_dir_all(data.join("pg_wal/archive_status")).unwrap();
        DataDir { root, data }
    }

    /// Write a segment and mark it `.ready`, as PostgreSQL does once it is complete.
    fn ready(&self, name: &str, seed: u64) -> Vec<u8> {
        let bytes = segment_bytes(name, SYSID, seed);
        fs::write(self.data.join("pg_wal").join(name), &bytes).unwrap();
        fs::write(self.status(name, "ready"), "").unwrap();
        bytes
    }

    fn status(&self, name: &str, suffix: &str) -> PathBuf {
        self.data
            .join("pg_wal/archive_status")
            .join(format!("{name}.{suffix}"))
    }

    /// What PostgreSQL does after archive_command succeeded.
    fn mark_done(&self, name: &str) {
        fs::rename(self.status(name, "ready"), self.status(name, "done")).unwrap();
    }

    /// The default look-ahead record directory for server "main".
    fn records(&self) -> PathBuf {
        self.root.join("data.pgcellar-status/main")
    }

    fn record_names(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.records())
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.file_name().into_string().ok())
                    // A `.tmp-*.json` is a record being written (or cut short by a
                    // kill); readers never look at it, so neither does the test.
                    .filter(|n| n.ends_with(".json") && !n.starts_with(".tmp-"))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

/// `wal-push pg_wal/NAME` run from the data directory, as archive_command is.
fn push_from(dd: &DataDir, repo: &RepoDir, name: &str, extra: &[&str]) -> std::process::Output {
    Command::cargo_bin("wal-push")
        .unwrap()
        .current_dir(&dd.data)
        .args(repo.args())
        .args(["-v"])
        .args(extra)
        .arg(format!("pg_wal/{name}"))
        .output()
        .unwrap()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Stored files of one WAL name (ignoring temporary files).
fn stored_of(repo: &RepoDir, name: &str) -> Vec<String> {
    repo.wal_files()
        .into_iter()
        .filter(|f| {
            let base = f.rsplit('/').next().unwrap();
            !base.starts_with(".tmp-") && base.starts_with(&format!("{name}-"))
        })
        .collect()
}

fn get_plain(repo: &RepoDir, name: &str, dest: &Path) -> std::process::Output {
    Command::cargo_bin("wal-get")
        .unwrap()
        .args(repo.args())
        .args(["--prefetch", "0", name])
        .arg(dest)
        .output()
        .unwrap()
}

/// Everything in `names` is archived exactly once and round-trips to `bytes`.
fn assert_archived_once(repo: &RepoDir, expect: &[(String, Vec<u8>)]) {
    let out = TestDir::new();
    for (name, bytes) in expect {
        let stored = stored_of(repo, name);
        assert_eq!(stored.len(), 1, "{name}: {stored:?}");
        let dest = out.join("x");
        let o = get_plain(repo, name, &dest);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        assert!(
            fs::read(&dest).unwrap() == *bytes,
            "{name}: content differs"
        );
    }
}

#[test]
fn lookahead_pushes_ready_segments_and_later_calls_trust_matching_records() {
    let repo = synthetic_repo();
    let dd = DataDir::new();
    let names: Vec<String> = (1..=6).map(|i| seg_name(1, i)).collect();
    let mut expect = Vec::new();
    for (i, n) in names.iter().enumerate() {
        expect.push((n.clone(), dd.ready(n, i as u64)));
    }
    // A .history file marked ready is not pushed ahead (segments only).
    fs::write(dd.data.join("pg_wal/00000002.history"), "1\t0/3000000\tx\n").unwrap();
    fs::write(dd.status("00000002.history", "ready"), "").unwrap();

    let o = push_from(&dd, &repo, &names[0], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("look-ahead: 5 stored"),
        "{}",
        stderr(&o)
    );
    let recs = dd.record_names();
    assert_eq!(
        recs,
        names[1..]
            .iter()
            .map(|n| format!("{n}.json"))
            .collect::<Vec<_>>()
    );
    // Records live beside the data directory, never in pg_wal, and are private.
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(dd.records()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
    let rec: serde_json::Value =
        serde_json::from_slice(&fs::read(dd.records().join(&recs[0])).unwrap()).unwrap();
    assert_eq!(rec["name"], names[1].as_str());
    assert_eq!(rec["size"], SEG);
    assert_eq!(rec["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(rec["server"], "main");
    dd.mark_done(&names[0]);
    // archive_status is PostgreSQL's: every .ready we did not get a call for is intact.
    for n in &names[1..] {
        assert!(dd.status(n, "ready").exists());
    }

    for n in &names[1..] {
        let o = push_from(&dd, &repo, n, &[]);
        assert!(o.status.success(), "{n}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("pushed ahead earlier"),
            "{n}: {}",
            stderr(&o)
        );
        dd.mark_done(n);
        assert!(!dd.records().join(format!("{n}.json")).exists());
    }
    assert!(dd.record_names().is_empty());
    assert_archived_once(&repo, &expect);
}

#[test]
fn lookahead_record_for_changed_content_is_not_trusted() {
    let repo = synthetic_repo();
    let dd = DataDir::new();
    let names: Vec<String> = (0x20..0x24).map(|i| seg_name(1, i)).collect();
    let mut orig = Vec::new();
    for (i, n) in names.iter().enumerate() {
        orig.push(dd.ready(n, i as u64));
    }
    let o = push_from(&dd, &repo, &names[0], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(dd.record_names().len(), 3);

    // Same name, size and even mtime, different bytes: only the SHA-256 can tell.
    let changed = &names[1];
    let path = dd.data.join("pg_wal").join(changed);
    let mtime = fs::metadata(&path).unwrap().modified().unwrap();
    fs::write(&path, segment_bytes(changed, SYSID, 999)).unwrap();
    fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let before = stored_of(&repo, changed);
    let o = push_from(&dd, &repo, changed, &[]);
    // The normal push runs and refuses to overwrite history.
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("does not match"), "{}", stderr(&o));
    assert!(stderr(&o).contains("different content"), "{}", stderr(&o));
    assert_eq!(stored_of(&repo, changed), before);
    assert!(!dd.records().join(format!("{changed}.json")).exists());

    // Same bytes, touched: the record is stale, the normal push finds the identical copy.
    let touched = &names[2];
    let tpath = dd.data.join("pg_wal").join(touched);
    fs::File::options()
        .write(true)
        .open(&tpath)
        .unwrap()
        .set_modified(SystemTime::now() + Duration::from_secs(5))
        .unwrap();
    let o = push_from(&dd, &repo, touched, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("already archived"), "{}", stderr(&o));

    // A forged record (right stamp, wrong hash) is not trusted either.
    let forged = &names[3];
    let rec_path = dd.records().join(format!("{forged}.json"));
    let mut rec: serde_json::Value = serde_json::from_slice(&fs::read(&rec_path).unwrap()).unwrap();
    rec["sha256"] = serde_json::Value::String("0".repeat(64));
    fs::write(&rec_path, serde_json::to_vec(&rec).unwrap()).unwrap();
    let o = push_from(&dd, &repo, forged, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("already archived"), "{}", stderr(&o));
    // A record for another repository is ignored.
    assert_eq!(stored_of(&repo, forged).len(), 1);
    let _ = orig;
}

#[test]
fn exit_status_is_decided_by_the_requested_file_only() {
    let repo = synthetic_repo();
    let dd = DataDir::new();
    let good = seg_name(1, 0x30);
    let foreign = seg_name(1, 0x31);
    dd.ready(&good, 1);
    // Another cluster's segment marked ready: its look-ahead push fails.
    fs::write(
        dd.data.join("pg_wal").join(&foreign),
        segment_bytes(&foreign, SYSID + 1, 2),
    )
    .unwrap();
    fs::write(dd.status(&foreign, "ready"), "").unwrap();
    let o = push_from(&dd, &repo, &good, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("1 failed"), "{}", stderr(&o));
    assert!(dd.record_names().is_empty());
    let o = push_from(&dd, &repo, &foreign, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stored_of(&repo, &foreign).is_empty());

    // An unusable status directory turns look-ahead off, the push itself still works.
    let other = seg_name(1, 0x32);
    dd.ready(&other, 3);
    dd.ready(&seg_name(1, 0x33), 4);
    let o = push_from(
        &dd,
        &repo,
        &other,
        &["--wal-status-dir", "/proc/no-such-dir"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("look-ahead off"), "{}", stderr(&o));
    assert!(stored_of(&repo, &seg_name(1, 0x33)).is_empty());
}

/// Every ready segment, pushed serially after whatever happened before, must succeed
/// and leave exactly one stored copy with the right content.
fn finish_like_postgres(dd: &DataDir, repo: &RepoDir, expect: &[(String, Vec<u8>)]) {
    for (n, _) in expect {
        if !dd.status(n, "ready").exists() {
            continue;
        }
        let o = push_from(dd, repo, n, &[]);
        assert!(o.status.success(), "{n}: {}", stderr(&o));
        dd.mark_done(n);
    }
    assert_archived_once(repo, expect);
    assert!(dd.record_names().is_empty(), "{:?}", dd.record_names());
}

#[test]
fn abort_in_the_middle_of_a_lookahead_batch_loses_nothing() {
    let repo = synthetic_repo();
    let dd = DataDir::new();
    let mut expect = Vec::new();
    for i in 0x50..0x58 {
        let n = seg_name(1, i);
        expect.push((n.clone(), dd.ready(&n, i as u64)));
    }
    // Dies right after the first look-ahead commit, before its record, while the
    // other threads may be mid-push.
    let o = Command::cargo_bin("wal-push")
        .unwrap()
        .current_dir(&dd.data)
        .args(repo.args())
        .args(["--push-parallel", "3"])
        .env("PGCELLAR_TEST_FAULT", "lookahead-abort-after-commit")
        .arg(format!("pg_wal/{}", expect[0].0))
        .output()
        .unwrap();
    assert!(
        o.status.code().is_none(),
        "the fault hook did not fire: {:?} {}",
        o.status,
        stderr(&o)
    );
    // At least one segment is in the repository with no record for it.
    let unrecorded = expect[1..]
        .iter()
        .filter(|(n, _)| {
            !stored_of(&repo, n).is_empty() && !dd.records().join(format!("{n}.json")).exists()
        })
        .count();
    assert!(unrecorded >= 1);
    finish_like_postgres(&dd, &repo, &expect);
}

#[test]
fn sigkill_at_any_moment_of_a_lookahead_batch_loses_nothing() {
    let repo = synthetic_repo();
    let dd = DataDir::new();
    let mut expect = Vec::new();
    for i in 0x60..0x70 {
        let n = seg_name(1, i);
        expect.push((n.clone(), dd.ready(&n, i as u64)));
    }
    // Kill calls at growing delays, each time for the oldest segment still ready, like
    // an archiver retrying after its command was killed.
    for delay_ms in [1u64, 5, 10, 20, 35, 60, 100] {
        let Some((n, _)) = expect.iter().find(|(n, _)| dd.status(n, "ready").exists()) else {
            break;
        };
        let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("wal-push"))
            .current_dir(&dd.data)
            .args(repo.args())
            .args(["--push-parallel", "4", "-q"])
            .arg(format!("pg_wal/{n}"))
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let st = child.wait().unwrap();
        if st.success() {
            dd.mark_done(n);
        }
        // Records are written only after the repository commit: each one names a
        // stored file with the same SHA-256.
        for r in dd.record_names() {
            let rec: serde_json::Value =
                serde_json::from_slice(&fs::read(dd.records().join(&r)).unwrap()).unwrap();
            let name = rec["name"].as_str().unwrap();
            let sha = rec["sha256"].as_str().unwrap();
            let stored = stored_of(&repo, name);
            assert!(
                stored.iter().any(|f| f.contains(sha)),
                "record {r} without its stored file: {stored:?}"
            );
        }
    }
    finish_like_postgres(&dd, &repo, &expect);
}

// ---------------------------------------------------------------------------
// Prefetching wal-get, synthetic.

fn get_from(
    repo: &RepoDir,
    dd: &DataDir,
    name: &str,
    extra: &[&str],
) -> (std::process::Output, Option<Vec<u8>>) {
    let dest = dd.data.join("pg_wal/RECOVERYXLOG");
    let _ = fs::remove_file(&dest);
    let o = Command::cargo_bin("wal-get")
        .unwrap()
        .current_dir(&dd.data)
        .args(repo.args())
        .arg("-v")
        .args(extra)
        .args([name, "pg_wal/RECOVERYXLOG"])
        .output()
        .unwrap();
    (o, fs::read(&dest).ok())
}

fn spool_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.len() > 24 && n.as_bytes()[24] == b'-')
                .map(|n| n[..24].to_string())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Push synthetic files straight from a directory (no look-ahead).
fn archive(repo: &RepoDir, src: &Path, name: &str, bytes: &[u8]) {
    let p = src.join(name);
    fs::write(&p, bytes).unwrap();
    Command::cargo_bin("wal-push")
        .unwrap()
        .args(repo.args())
        .arg(&p)
        .assert()
        .success();
}

#[test]
fn prefetch_spools_verified_segments_and_respects_timelines() {
    let repo = synthetic_repo();
    let src = TestDir::new();
    let mut tl1 = Vec::new();
    for i in 1..=6 {
        let n = seg_name(1, i);
        let b = segment_bytes(&n, SYSID, i as u64);
        archive(&repo, src.path(), &n, &b);
        tl1.push(b);
    }
    // Timeline 2 branches off at segment 4 with different content.
    let mut tl2 = Vec::new();
    for i in 4..=6 {
        let n = seg_name(2, i);
        let b = segment_bytes(&n, SYSID, 100 + i as u64);
        archive(&repo, src.path(), &n, &b);
        tl2.push(b);
    }
    let hist = b"1\t0/400000\tno recovery target specified\n";
    archive(&repo, src.path(), "00000002.history", hist);

    let dd = DataDir::new();
    let spool = dd.root.join("data.pgcellar-spool");
    let (o, got) = get_from(&repo, &dd, &seg_name(1, 1), &["--prefetch", "3"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(got.unwrap() == tl1[0]);
    // The detached prefetcher inherits stderr with -v, so `output()` waited for it.
    assert!(
        stderr(&o).contains("prefetcher stored 3 segments"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        spool_names(&spool),
        vec![seg_name(1, 2), seg_name(1, 3), seg_name(1, 4)]
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(&spool).unwrap().permissions().mode() & 0o777,
        0o700
    );

    // Served from the spool, byte-identical, and removed from it.
    let (o, got) = get_from(&repo, &dd, &seg_name(1, 2), &["--prefetch", "3"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("from the spool"), "{}", stderr(&o));
    assert!(got.unwrap() == tl1[1]);
    assert_eq!(spool_names(&spool), vec![seg_name(1, 3), seg_name(1, 4)]);

    // A damaged spool file is not delivered: the repository copy is.
    let s3 = fs::read_dir(&spool)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with(&seg_name(1, 3)))
        .unwrap()
        .path();
    let mut bad = fs::read(&s3).unwrap();
    bad[5000] ^= 0xFF;
    fs::write(&s3, bad).unwrap();
    let (o, got) = get_from(&repo, &dd, &seg_name(1, 3), &["--prefetch", "3"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(!stderr(&o).contains("from the spool"), "{}", stderr(&o));
    assert!(got.unwrap() == tl1[2]);
    assert!(!s3.exists());
    // That repository visit prefetched what was missing after 3.
    assert_eq!(
        spool_names(&spool),
        vec![seg_name(1, 4), seg_name(1, 5), seg_name(1, 6)]
    );

    // History requests never use the spool nor prefetch.
    let (o, got) = get_from(&repo, &dd, "00000002.history", &["--prefetch", "3"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(got.unwrap(), hist);
    assert_eq!(spool_names(&spool).len(), 3);

    // Timeline 2's segment 4 is asked for while timeline 1's segment 4 is spooled:
    // the spooled one must not be served.
    let (o, got) = get_from(&repo, &dd, &seg_name(2, 4), &["--prefetch", "3"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(!stderr(&o).contains("from the spool"), "{}", stderr(&o));
    assert!(got.unwrap() == tl2[0]);
    // It prefetched timeline 2's successors (7 does not exist).
    let names = spool_names(&spool);
    assert!(names.contains(&seg_name(2, 5)) && names.contains(&seg_name(2, 6)));
    // Both timelines' segment 5 are spooled; the request's timeline decides.
    assert!(names.contains(&seg_name(1, 5)), "{names:?}");
    let (o, got) = get_from(&repo, &dd, &seg_name(2, 5), &["--prefetch", "3"]);
    assert!(stderr(&o).contains("from the spool"), "{}", stderr(&o));
    assert!(got.unwrap() == tl2[1]);
    // Older segments (any timeline) were cleaned from the spool.
    assert_eq!(
        spool_names(&spool),
        vec![seg_name(1, 5), seg_name(1, 6), seg_name(2, 6)]
    );

    // Not archived: exit 1, nothing delivered, nothing prefetched.
    let (o, got) = get_from(&repo, &dd, &seg_name(2, 7), &["--prefetch", "3"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(got.is_none());
    assert!(spool_names(&spool).is_empty());
}

#[test]
fn prefetch_is_bounded_and_never_changes_exit_codes() {
    let repo = synthetic_repo();
    let src = TestDir::new();
    for i in 1..=8 {
        let n = seg_name(1, i);
        archive(&repo, src.path(), &n, &segment_bytes(&n, SYSID, i as u64));
    }
    let dd = DataDir::new();
    let spool = TestDir::new();
    let sp = spool.join("spool");
    let sp_arg = sp.display().to_string();
    let (o, _) = get_from(
        &repo,
        &dd,
        &seg_name(1, 1),
        &[
            "--prefetch",
            "6",
            "--spool-dir",
            &sp_arg,
            "--spool-max-bytes",
            &(2 * SEG).to_string(),
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(spool_names(&sp).len(), 2);

    // An unusable spool directory only turns prefetch off.
    let (o, got) = get_from(
        &repo,
        &dd,
        &seg_name(1, 5),
        &["--prefetch", "3", "--spool-dir", "/proc/nope"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(got.is_some());
    assert!(stderr(&o).contains("prefetch off"), "{}", stderr(&o));

    // Another repository (or server) empties the spool before use.
    let other = synthetic_repo();
    let n = seg_name(1, 2);
    archive(&other, src.path(), &n, &segment_bytes(&n, SYSID, 555));
    let (o, got) = get_from(&other, &dd, &n, &["--spool-dir", &sp_arg]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(!stderr(&o).contains("from the spool"), "{}", stderr(&o));
    assert!(got.unwrap() == segment_bytes(&n, SYSID, 555));

    // Unreachable repository with a spool: still a fatal (> 125) error when the
    // segment is not spooled.
    let gone = RepoDir::new();
    let (o, _) = get_from(&gone, &dd, &seg_name(1, 7), &["--spool-dir", &sp_arg]);
    assert!(o.status.code().unwrap() > 125, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("not a pgcellar repository"),
        "{}",
        stderr(&o)
    );
    let (o, _) = get_from(&gone, &dd, &seg_name(1, 7), &["--prefetch", "0"]);
    assert!(o.status.code().unwrap() > 125, "{}", stderr(&o));
    // Bad prefetch settings are configuration errors, fatal for wal-get.
    let (o, _) = get_from(&repo, &dd, &seg_name(1, 7), &["--prefetch-parallel", "0"]);
    assert!(o.status.code().unwrap() > 125, "{}", stderr(&o));
    // Named as the flag it came from, not as a file key.
    assert!(stderr(&o).contains("--prefetch-parallel"), "{}", stderr(&o));
    let (o, _) = get_from(&repo, &dd, &seg_name(1, 7), &["--spool-dir", "relative"]);
    assert!(o.status.code().unwrap() > 125, "{}", stderr(&o));
    assert!(stderr(&o).contains("--spool-dir"), "{}", stderr(&o));
}

/// SIGKILL every `wal-get` process working in `dir` (the detached prefetchers).
fn kill_wal_gets_in(dir: &Path) {
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cwd = fs::read_link(e.path().join("cwd")).ok();
        let exe = fs::read_link(e.path().join("exe")).ok();
        let ours = cwd.as_deref() == Some(dir)
            && exe.is_some_and(|x| x.file_name().is_some_and(|n| n == "wal-get"));
        if ours {
            // SAFETY: plain kill(2) of a process we started.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

#[test]
fn sigkill_during_prefetch_never_leaves_a_bad_spool_file() {
    let repo = synthetic_repo();
    let src = TestDir::new();
    let mut all = Vec::new();
    for i in 1..=40 {
        let n = seg_name(1, i);
        let b = segment_bytes(&n, SYSID, i as u64);
        archive(&repo, src.path(), &n, &b);
        all.push(b);
    }
    let dd = DataDir::new();
    let spool = dd.root.join("data.pgcellar-spool");
    let mut i = 1usize;
    for delay_ms in [2u64, 5, 10, 20, 40, 80] {
        let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("wal-get"))
            .current_dir(&dd.data)
            .args(repo.args())
            .args([
                "-q",
                "--prefetch",
                "6",
                &seg_name(1, i as u32),
                "pg_wal/RECOVERYXLOG",
            ])
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        // The detached prefetcher it may have started dies at a moment of its own.
        std::thread::sleep(Duration::from_millis(delay_ms / 2));
        kill_wal_gets_in(&dd.data);
        // Whatever is under a final spool name is complete and verified.
        for e in fs::read_dir(&spool).into_iter().flatten().flatten() {
            let f = e.file_name().into_string().unwrap();
            if let Some((_, sha)) = f.split_once('-') {
                if f.len() > 24 && !f.starts_with('.') {
                    use sha2::Digest;
                    let got = hex::encode(sha2::Sha256::digest(fs::read(e.path()).unwrap()));
                    assert_eq!(got, sha, "{f}");
                }
            }
        }
        i += 3;
    }
    // Recovery goes on: every segment comes out right, temporaries are cleaned.
    for (k, bytes) in all.iter().enumerate() {
        let (o, got) = get_from(&repo, &dd, &seg_name(1, k as u32 + 1), &["--prefetch", "6"]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        assert!(got.unwrap() == *bytes, "segment {}", k + 1);
    }
    let temps: Vec<_> = fs::read_dir(&spool)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(temps.is_empty(), "{temps:?}");
}

// ---------------------------------------------------------------------------
// Real PostgreSQL.

fn signal_file(c: &Cluster, name: &str) {
    let p = c.pgdata.join(name);
    fs::write(&p, "").unwrap();
    chown_postgres(&p);
}

#[test]
fn recovery_through_prefetching_wal_get_follows_a_timeline_switch() {
    let repo = RepoDir::new();
    let push_cmd = format!("{} -v {} %p", bin("wal-push").display(), repo.shell_args());
    let Some(a) = Cluster::init(ClusterOpts {
        archive_command: Some(push_cmd.clone()),
        ..Default::default()
    }) else {
        return;
    };
    repo.init_for(&a);
    a.psql("CREATE TABLE t (id int, who text, pad text)");
    let base_root = TestDir::new();
    let base = base_root.join("pgdata");
    pg_basebackup(&a, &base);
    a.psql(
        "INSERT INTO t SELECT g, 'a1', repeat(md5(g::text), 20) FROM generate_series(1, 20000) g",
    );
    a.switch_and_wait_archived();

    // B: a copy of A that recovers from the archive and ends on timeline 2.
    let b_root = TestDir::new();
    let b_data = b_root.join("pgdata");
    pg_basebackup(&a, &b_data);
    let b = Cluster::adopt_restored(b_root, b_data);
    b.append_conf(&[
        "archive_mode = on".into(),
        format!("archive_command = '{push_cmd}'"),
        format!(
            "restore_command = '{} -v {} %f %p'",
            bin("wal-get").display(),
            repo.shell_args()
        ),
    ]);
    signal_file(&b, "recovery.signal");
    b.start();
    b.wait_for_promotion(Duration::from_secs(120));
    assert_eq!(
        b.psql("SELECT timeline_id FROM pg_control_checkpoint()"),
        "2"
    );
    b.psql(
        "INSERT INTO t SELECT g, 'b2', repeat(md5(g::text), 20) FROM generate_series(1, 30000) g",
    );
    b.psql("INSERT INTO t VALUES (-2, 'last on timeline 2', '')");
    b.switch_and_wait_archived();
    let b_count = b.psql("SELECT count(*) FROM t");

    // Meanwhile A keeps going on timeline 1, archiving segments that timeline 2
    // replaced: prefetch will see them and must never serve them for timeline 2.
    a.psql("INSERT INTO t SELECT g, 'a1-late', repeat(md5(g::text), 20) FROM generate_series(1, 30000) g");
    a.switch_and_wait_archived();
    let (_, failed) = a.archiver_counts();
    assert_eq!(failed, 0, "{}", tail(&a.log_text(), 30));
    assert!(repo
        .wal_files()
        .iter()
        .any(|f| f.starts_with("00000002.history-")));

    // C: the first base backup, recovered to the latest timeline through wal-get
    // with prefetch (default spool beside C's data directory).
    let c = Cluster::adopt_restored(base_root, base);
    c.append_conf(&[
        "archive_mode = off".into(),
        format!(
            "restore_command = '{} -v --prefetch 4 {} %f %p'",
            bin("wal-get").display(),
            repo.shell_args()
        ),
        "recovery_target_timeline = 'latest'".into(),
    ]);
    signal_file(&c, "recovery.signal");
    c.start();
    c.wait_for_promotion(Duration::from_secs(180));
    assert_eq!(c.psql("SELECT count(*) FROM t"), b_count);
    assert_eq!(c.psql("SELECT count(*) FROM t WHERE who = 'a1-late'"), "0");
    assert_eq!(
        c.psql("SELECT who FROM t WHERE id = -2"),
        "last on timeline 2"
    );
    assert_eq!(
        c.psql("SELECT timeline_id FROM pg_control_checkpoint()"),
        "3"
    );
    let log = c.log_text();
    assert!(
        log.contains("from the spool"),
        "prefetch was not used:\n{}",
        tail(&log, 60)
    );
    assert!(log.contains("prefetcher stored"), "{}", tail(&log, 60));
    // The spool sits beside the data directory, never inside it.
    let spool = c.pgdata.with_file_name("pgdata.pgcellar-spool");
    assert!(spool.is_dir());
    assert!(!c.pgdata.join("pg_wal").join("origin.json").exists());
}

#[test]
fn pgbench_with_lookahead_archives_everything_without_failures() {
    let repo = RepoDir::new();
    let Some(pg) = Cluster::init(ClusterOpts {
        archive_command: Some(format!(
            "{} -v --push-lookahead 8 {} %p",
            bin("wal-push").display(),
            repo.shell_args()
        )),
        ..Default::default()
    }) else {
        return;
    };
    repo.init_for(&pg);
    // A burst of WAL first, so that several segments are ready at once.
    pg.psql("CREATE TABLE burst AS SELECT g, repeat(md5(g::text), 10) AS pad FROM generate_series(1, 100000) g");
    pg.pgbench(&["-i", "-s", "3", "-q"]);
    pg.pgbench(&["-n", "-c", "2", "-j", "2", "-T", "15"]);
    let last = pg.switch_and_wait_archived();
    let (archived, failed) = pg.archiver_counts();
    assert_eq!(failed, 0, "{}", tail(&pg.log_text(), 40));
    let log = pg.log_text();
    assert!(
        log.contains("look-ahead:"),
        "look-ahead never ran:\n{}",
        tail(&log, 40)
    );
    assert!(log.contains("pushed ahead earlier"), "{}", tail(&log, 40));
    // Every segment from the first archived one (initdb's own are never archived)
    // to the last is archived exactly once.
    let files: Vec<String> = repo
        .wal_files()
        .into_iter()
        .filter_map(|f| f.rsplit('/').next().map(|b| b[..24].to_string()))
        .collect();
    let num = |n: &str| u32::from_str_radix(&n[16..24], 16).unwrap();
    let first = files.iter().map(|f| num(f)).min().unwrap();
    let lastn = num(&last);
    for i in first..=lastn {
        let n = seg_name(1, i);
        let c = files.iter().filter(|f| **f == n).count();
        assert_eq!(c, 1, "{n} is archived {c} times");
    }
    assert!(lastn - first > 20, "too little WAL to exercise look-ahead");
    assert!(archived as u32 > lastn - first);
    // No records are left for archived segments.
    let records = pg
        .pgdata
        .with_file_name("pgdata.pgcellar-status")
        .join("main");
    let left: Vec<_> = fs::read_dir(&records).unwrap().flatten().collect();
    assert!(left.len() <= 8, "{left:?}");
}

// ---------------------------------------------------------------------------
// Over SSH.

#[test]
fn lookahead_and_prefetch_work_over_ssh() {
    let Some(sshd) = crate::common::sshd::Sshd::start() else {
        return;
    };
    let (repo, _) = register_synthetic(RepoDir::over_ssh(&sshd), SYSID);
    let mut flags = repo.args();
    flags.push("-v".into());
    let dd = DataDir::new();
    let mut expect = Vec::new();
    for i in 1..=8 {
        let n = seg_name(1, i);
        expect.push((n.clone(), dd.ready(&n, i as u64)));
    }
    // Look-ahead: the first call pushes all eight over one connection (parallel
    // threads share the session pool), the others only check their records.
    for (k, (n, _)) in expect.iter().enumerate() {
        let o = Command::cargo_bin("wal-push")
            .unwrap()
            .current_dir(&dd.data)
            .args(&flags)
            .args(["--push-parallel", "4"])
            .arg(format!("pg_wal/{n}"))
            .output()
            .unwrap();
        assert!(o.status.success(), "{n}: {}\n{}", stderr(&o), sshd.log());
        if k == 0 {
            assert!(
                stderr(&o).contains("look-ahead: 7 stored"),
                "{}",
                stderr(&o)
            );
        } else {
            assert!(
                stderr(&o).contains("pushed ahead earlier"),
                "{}",
                stderr(&o)
            );
        }
        dd.mark_done(n);
    }
    // Prefetch: the first get starts a prefetcher for the next three, and every later
    // get refills the spool when it runs low, so all but the first come from it.
    let rd = DataDir::new();
    let spool = rd.root.join("data.pgcellar-spool");
    for (k, (n, bytes)) in expect.iter().enumerate() {
        let dest = rd.data.join("pg_wal/RECOVERYXLOG");
        let _ = fs::remove_file(&dest);
        let o = Command::cargo_bin("wal-get")
            .unwrap()
            .current_dir(&rd.data)
            .args(&flags)
            .args(["--prefetch", "3", n, "pg_wal/RECOVERYXLOG"])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0), "{n}: {}", stderr(&o));
        assert!(fs::read(&dest).unwrap() == *bytes, "{n}");
        let spooled = stderr(&o).contains("from the spool");
        assert_eq!(spooled, k != 0, "{n}: {}", stderr(&o));
    }
    assert!(spool_names(&spool).is_empty());
    // Not archived over SSH is still exit 1.
    let o = Command::cargo_bin("wal-get")
        .unwrap()
        .current_dir(&rd.data)
        .args(&flags)
        .args([&seg_name(1, 9), "pg_wal/RECOVERYXLOG"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
}
