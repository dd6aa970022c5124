//! What only an object store can get wrong, on a real Garage on loopback (DESIGN.md
//! section 7): racing exclusive creates with no `If-None-Match` to lean on, uploads a
//! crash leaves unfinished, a store that is down or hangs, and the catalog commands
//! over a repository whose every byte is in a bucket. The guarantee tests shared with
//! the other backends run as `<case>::s3` in their own modules.

use crate::backup_restore::{base_backup, restore_ok};
use crate::common::garage::Garage;
use crate::common::synthetic::*;
use crate::common::*;
use pgcellar::storage::{Committed, Overwrite};
use serde_json::Value;
use std::net::TcpListener;
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SYSID: u64 = 7_300_000_000_000_000_303;

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn pgcellar_json(repo: &RepoDir, args: &[&str]) -> Value {
    let o = repo.pgcellar(args);
    assert!(o.status.success(), "pgcellar {args:?}: {}", text(&o));
    json_document(&o.stdout)
}

/// Garage ignores `If-None-Match: *`, so "exactly one writer of a name wins" rests on
/// the claim handshake alone. Writers on separate connections (as separate processes
/// are) race for one name, round after round: exactly one is told Created, the bytes
/// stored are its bytes, and no claim object is left behind.
#[test]
fn racing_exclusive_creates_have_exactly_one_winner() {
    let Some(g) = Garage::start() else { return };
    let writers: Vec<_> = (0..4).map(|_| g.storage("claims").expect("open")).collect();
    for round in 0..6 {
        let name = format!("race/r{round}");
        let results: Vec<(usize, pgcellar::Result<Committed>)> = std::thread::scope(|sc| {
            let handles: Vec<_> = writers
                .iter()
                .enumerate()
                .map(|(t, s)| {
                    let name = &name;
                    sc.spawn(move || {
                        let data = format!("writer {t} round {round}");
                        (t, s.write_all(name, data.as_bytes(), Overwrite::Never))
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let winners: Vec<usize> = results
            .iter()
            .filter(|(_, r)| matches!(r, Ok(Committed::Created)))
            .map(|(t, _)| *t)
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        for (t, r) in &results {
            if *t != winners[0] {
                // A loser is told the name is taken, or fails; never Created.
                assert!(
                    matches!(r, Ok(Committed::AlreadyExists) | Err(_)),
                    "round {round}: {results:?}"
                );
            }
        }
        assert_eq!(
            writers[0].read_all(&name).unwrap(),
            format!("writer {} round {round}", winners[0]).as_bytes(),
            "round {round}: the stored bytes are not the winner's"
        );
        // Later writers of a taken name change nothing.
        assert_eq!(
            writers[1]
                .write_all(&name, b"late", Overwrite::Never)
                .unwrap(),
            Committed::AlreadyExists
        );
    }
    let mut left = Vec::new();
    list_tree(writers[0].as_ref(), ".pgcellar-claims", "", &mut left);
    assert!(left.is_empty(), "claims left behind: {left:?}");
}

/// A base-backup killed in the middle of a multipart upload leaves an unfinished
/// upload, invisible to listings but stored (and billed). The storage layer finds and
/// aborts it; `pgcellar cron` does that on its own, and a new backup then works.
#[test]
fn uploads_a_crash_leaves_unfinished_are_aborted_by_cron() {
    let Some((repo, _garage)) = Backend::S3.repo() else {
        return;
    };
    let Some(c) = repo.archiving_cluster() else {
        return;
    };
    // A relation file well over one 8 MiB part, stored uncompressed.
    c.psql("CREATE TABLE big AS SELECT g, md5(g::text) AS t FROM generate_series(1, 250000) g");
    c.psql("CHECKPOINT");
    c.switch_and_wait_archived();
    let crashed_backup = || {
        let o = pg_command(bin("base-backup"))
            .args(repo.args())
            .arg("--pgdata")
            .arg(&c.pgdata)
            .arg("--conninfo")
            .arg(c.conninfo())
            .args(["--compression", "none"])
            .env("PGCELLAR_TEST_FAULT", "crash-before-complete")
            .output()
            .expect("spawn base-backup");
        // Killed by abort(): a signal, or 128 + SIGABRT through runuser.
        assert!(
            o.status.code().is_none_or(|c| c == 134),
            "base-backup was meant to die in an upload: {:?} {}",
            o.status,
            text(&o)
        );
    };
    crashed_backup();
    let s = repo.storage();
    assert_eq!(
        s.clean_incomplete_uploads(Duration::ZERO).unwrap(),
        1,
        "the crash should leave exactly one unfinished upload"
    );
    assert_eq!(s.clean_incomplete_uploads(Duration::ZERO).unwrap(), 0);

    crashed_backup();
    // The shortest age cron accepts; the upload is older than that by then.
    std::thread::sleep(Duration::from_secs(2));
    let o = repo.pgcellar(&["--aborted-backup-max-age", "1", "cron"]);
    assert!(o.status.success(), "cron: {}", text(&o));
    assert!(
        text(&o).contains("unfinished upload"),
        "cron did not say it aborted the upload: {}",
        text(&o)
    );
    assert_eq!(
        s.clean_incomplete_uploads(Duration::ZERO).unwrap(),
        0,
        "cron left the unfinished upload"
    );
    let id = base_backup(&repo, &c, &["--compression", "none"]);
    let v = pgcellar_json(&repo, &["verify", "--all", "--json"]);
    assert_eq!(v["ok"], true, "{v}");
    assert!(v.to_string().contains(&id), "{v}");
}

/// A listener that accepts connections and never answers: a hung store.
struct HungPeer {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HungPeer {
    fn start() -> HungPeer {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        l.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                if let Ok((sock, _)) = l.accept() {
                    held.push(sock);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        HungPeer {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for HungPeer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `repo`'s arguments with the store's endpoint replaced and short, bounded waits.
fn args_via(repo: &RepoDir, endpoint: &str) -> Vec<String> {
    let mut a = repo.args();
    if let Some(i) = a.iter().position(|x| x == "--s3-endpoint") {
        a[i + 1] = endpoint.to_string();
    }
    a.extend(
        [
            "--s3-connect-timeout",
            "2",
            "--s3-request-timeout",
            "3",
            "--retries",
            "1",
        ]
        .map(String::from),
    );
    a
}

/// wal-get tells "the archive does not hold it" (exit 1, recovery ends) apart from
/// "the archive could not be asked" (exit > 125, recovery stops): a store that is down,
/// refuses connections or hangs is the second, after bounded retries, in bounded
/// time. wal-push to such a store fails with 1 (the archiver retries), and never 0.
#[test]
fn a_store_that_is_down_or_hangs_stops_recovery_and_acknowledges_nothing() {
    let Some((repo, peer)) = Backend::S3.repo() else {
        return;
    };
    let Peer::Garage(mut garage) = peer else {
        unreachable!()
    };
    register_synthetic_in(&repo, SYSID);
    let src = TestDir::new();
    let name = "000000010000000000000007";
    let seg = write_segment(src.path(), name, SYSID, 1);
    let out = TestDir::new();
    let dest = out.join("RECOVERYXLOG");
    let get = |args: &[String], wal: &str| -> (Option<i32>, Duration, String) {
        let t = Instant::now();
        let o = pg_command(bin("wal-get"))
            .args(args)
            .arg(wal)
            .arg(&dest)
            .output()
            .expect("spawn wal-get");
        (o.status.code(), t.elapsed(), text(&o))
    };
    let push = |args: &[String], path: &std::path::Path| -> (Option<i32>, String) {
        let o = pg_command(bin("wal-push"))
            .args(args)
            .arg(path)
            .output()
            .expect("spawn wal-push");
        (o.status.code(), text(&o))
    };
    let live = args_via(&repo, &garage.endpoint());
    assert_eq!(push(&live, &seg).0, Some(0));
    assert_eq!(get(&live, name).0, Some(0));
    std::fs::remove_file(&dest).unwrap();
    // Reached, and not there: 1.
    assert_eq!(get(&live, "000000010000000000000008").0, Some(1));

    let hung = HungPeer::start();
    let refused = format!("http://127.0.0.1:{}", free_port());
    let down_seg = write_segment(src.path(), "000000010000000000000009", SYSID, 2);
    for (what, endpoint) in [
        ("hung", format!("http://127.0.0.1:{}", hung.port)),
        ("refusing", refused),
    ] {
        let args = args_via(&repo, &endpoint);
        let (code, took, msg) = get(&args, name);
        assert!(
            code.is_some_and(|c| c > 125),
            "{what} store: wal-get exited {code:?}: {msg}"
        );
        assert!(took < Duration::from_secs(60), "{what}: took {took:?}");
        assert!(!dest.exists(), "{what}: something was delivered");
        let (code, msg) = push(&args, &down_seg);
        assert_eq!(code, Some(1), "{what} store: wal-push: {msg}");
    }
    drop(hung);

    // The real store killed: the same, then everything works again once it is back.
    garage.kill(0);
    let (code, _, msg) = get(&live, name);
    assert!(
        code.is_some_and(|c| c > 125),
        "store down: wal-get {code:?}: {msg}"
    );
    assert_eq!(push(&live, &down_seg).0, Some(1));
    garage.restart(0);
    let deadline = Instant::now() + Duration::from_secs(60);
    while push(&live, &down_seg).0 != Some(0) {
        assert!(
            Instant::now() < deadline,
            "wal-push never succeeded after restart"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(get(&live, "000000010000000000000009").0, Some(0));
    assert_eq!(
        std::fs::read(&dest).unwrap(),
        std::fs::read(&down_seg).unwrap()
    );
}

/// The catalog commands on a repository that lives in a bucket: servers, list, show,
/// keep, expire by redundancy, verify, check (every row OK, the WAL switch reaching the
/// store) and cron; then the backup that is left restores and recovers to the end.
#[test]
fn catalog_commands_and_recovery_on_s3() {
    let Some((repo, _garage)) = Backend::S3.repo() else {
        return;
    };
    let Some(c) = repo.archiving_cluster() else {
        return;
    };
    c.psql("CREATE TABLE t(i int)");
    c.switch_and_wait_archived();
    let b1 = base_backup(&repo, &c, &[]);
    c.psql("INSERT INTO t SELECT generate_series(1, 10)");
    c.switch_and_wait_archived();
    let b2 = base_backup(&repo, &c, &[]);
    c.psql("INSERT INTO t SELECT generate_series(11, 20)");
    c.switch_and_wait_archived();

    let servers = pgcellar_json(&repo, &["servers", "--json"]);
    assert_eq!(servers["servers"][0]["backups"], 2, "{servers}");
    let list = pgcellar_json(&repo, &["list", "--json"]);
    assert_eq!(list["backups"][0]["id"], b2.as_str(), "{list}");
    let show = pgcellar_json(&repo, &["show", "oldest", "--json"]);
    assert_eq!(show["wal_needed"]["complete"], true, "{show}");
    let keep_file = format!("main/backups/{b1}/keep");
    assert!(repo.pgcellar(&["keep", &b1]).status.success());
    assert!(repo.storage().stat(&keep_file).unwrap().is_some());
    let plan = pgcellar_json(
        &repo,
        &[
            "expire",
            "--dry-run",
            "--json",
            "--retention",
            "REDUNDANCY 1",
        ],
    );
    assert_eq!(
        plan["deleted"],
        serde_json::json!([]),
        "a kept backup is not expired: {plan}"
    );
    assert!(repo.pgcellar(&["keep", &b1, "--release"]).status.success());
    assert!(repo.storage().stat(&keep_file).unwrap().is_none());
    let out = pgcellar_json(&repo, &["expire", "--json", "--retention", "REDUNDANCY 1"]);
    assert_eq!(out["deleted"], serde_json::json!([b1.as_str()]), "{out}");
    assert!(repo
        .storage()
        .stat(&format!("main/backups/{b1}"))
        .unwrap()
        .is_none());
    let v = pgcellar_json(&repo, &["verify", "--all", "--json"]);
    assert_eq!(v["ok"], true, "{v}");
    let check = pgcellar_json(&repo, &["--conninfo", &c.conninfo(), "check", "--json"]);
    for row in check["checks"].as_array().unwrap() {
        assert_eq!(row["status"], "ok", "{row}");
    }
    let cron = repo.pgcellar(&["cron"]);
    assert!(cron.status.success(), "cron: {}", text(&cron));

    c.psql("INSERT INTO t VALUES (1000)");
    c.switch_and_wait_archived();
    let expected = c.psql("SELECT count(*) || ' ' || max(i) FROM t");
    let root = TestDir::new();
    let pgdata = root.join("pgdata");
    restore_ok(&repo, &pgdata, &["--backup", &b2]);
    drop(c);
    let r = Cluster::adopt_restored(root, pgdata);
    r.start();
    r.wait_for_promotion(Duration::from_secs(120));
    assert_eq!(r.psql("SELECT count(*) || ' ' || max(i) FROM t"), expected);
    assert_eq!(expected, "21 1000");
}
