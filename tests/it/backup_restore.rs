//! base-backup and restore against a real PostgreSQL: PostgreSQL itself recovering
//! to exactly the right row is the proof.
//!
//! Clusters are shared between assertions where that keeps the file fast: one cluster
//! serves every recovery target and the timeline switch; one serves tablespaces,
//! hard-link reuse, aborted backups, `--delta` and the lock; one runs pgbench.
//!
//! Every test runs twice, as `<name>::local` and `<name>::ssh`: the same assertions
//! against a local repository and against one reached through a real sshd on
//! loopback. The SSH repository's root is a directory on this machine too, so the
//! on-disk checks (manifests, hard links, damaged files) look at it directly.

use crate::common::*;
use pgcellar::repo::lock::{Lock, DEFAULT_STALE_AFTER};
use pgcellar::repo::manifest::Manifest;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

on_all_backends!(
    recovery_reaches_every_target_and_follows_a_new_timeline,
    backup_under_pgbench_load_restores_clean,
);
// These inspect or damage the stored files on disk.
on_both_backends!(
    tablespaces_links_delta_aborted_backups_and_the_lock,
    base_backup_without_archiving_fails_fast_and_leaves_nothing,
    damaged_pg_control_or_killed_restore_never_starts,
);

/// Run base-backup on `c` with `extra` flags; returns the new backup's id.
pub(crate) fn base_backup(repo: &RepoDir, c: &Cluster, extra: &[&str]) -> String {
    let mut cmd = pg_command(bin("base-backup"));
    cmd.args(repo.args())
        .arg("--pgdata")
        .arg(&c.pgdata)
        .arg("--conninfo")
        .arg(c.conninfo())
        .args(extra);
    let out = run_ok(&mut cmd);
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    // stdout carries the id and nothing else.
    assert_eq!(id.len(), 16, "stdout: {id:?}");
    assert!(!id.contains('\n'));
    id
}

pub(crate) fn restore_cmd(repo: &RepoDir, dest: &Path, extra: &[&str]) -> Output {
    let mut cmd = pg_command(bin("restore"));
    cmd.args(repo.args()).arg("-v").args(extra).arg(dest);
    cmd.output().expect("spawn restore")
}

/// Run restore into `dest` with `extra` flags, which must succeed; returns its log.
pub(crate) fn restore_ok(repo: &RepoDir, dest: &Path, extra: &[&str]) -> String {
    let out = restore_cmd(repo, dest, extra);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "restore {extra:?} failed: {stderr}");
    assert!(out.stdout.is_empty(), "restore printed on stdout");
    stderr
}

/// Backup `id`'s manifest, read from the repository directory.
pub(crate) fn manifest(repo: &RepoDir, id: &str) -> Manifest {
    let p = format!("{}/backups/{id}/backup.json", repo.server);
    serde_json::from_slice(&repo.read_stored(&p)).expect("parse manifest")
}

/// Restore with `extra` into a new directory, start it (no archiving unless
/// `archive`), wait until it is out of recovery and return it.
fn restore_and_start(repo: &RepoDir, extra: &[&str], archive: bool) -> (Cluster, String) {
    let bindir = pg_bindir().expect("PostgreSQL binaries");
    restore_and_start_with(repo, extra, archive, &bindir)
}

/// [`restore_and_start`] with the server binaries in `bindir` (another major).
pub(crate) fn restore_and_start_with(
    repo: &RepoDir,
    extra: &[&str],
    archive: bool,
    bindir: &Path,
) -> (Cluster, String) {
    let root = TestDir::new();
    let pgdata = root.join("pgdata");
    let log = restore_ok(repo, &pgdata, extra);
    // Recovery fetches its WAL from this same repository (over SSH for ssh://).
    let auto = fs::read_to_string(pgdata.join("postgresql.auto.conf")).unwrap();
    assert!(auto.contains(&repo.url()), "{auto}");
    let c = Cluster::adopt_restored_with(root, pgdata, bindir.to_path_buf());
    if !archive {
        c.append_conf(&["archive_mode = off".to_string()]);
    }
    c.start();
    c.wait_for_promotion(Duration::from_secs(120));
    (c, log)
}

/// `count max` of table `t`.
pub(crate) fn rows(c: &Cluster) -> String {
    c.psql("SELECT count(*) || ' ' || coalesce(max(i), 0) FROM t")
}

fn recovery_reaches_every_target_and_follows_a_new_timeline(repo: &RepoDir) {
    let Some(c) = repo.archiving_cluster() else {
        return;
    };
    c.psql("CREATE TABLE t(i int)");
    c.psql("INSERT INTO t SELECT generate_series(1, 10)");
    let before_id1 = c.psql(
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'",
    );
    std::thread::sleep(Duration::from_millis(1100));
    let id1 = base_backup(repo, &c, &[]);

    let xid = c.psql(
        "WITH x AS (INSERT INTO t SELECT generate_series(11, 20) RETURNING 1) \
         SELECT txid_current() FROM x LIMIT 1",
    );
    c.psql("INSERT INTO t SELECT generate_series(21, 30)");
    c.psql("SELECT pg_create_restore_point('before_31')");
    c.psql("INSERT INTO t SELECT generate_series(31, 40)");
    let lsn = c.psql("SELECT pg_current_wal_insert_lsn()");
    c.psql("INSERT INTO t SELECT generate_series(41, 50)");
    let time = c.psql(
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'",
    );
    std::thread::sleep(Duration::from_millis(1200));
    c.psql("INSERT INTO t SELECT generate_series(51, 60)");
    c.psql("INSERT INTO t SELECT generate_series(61, 70)");
    // A second backup after the time target: a time target must pick the first one.
    let id2 = base_backup(repo, &c, &[]);
    assert!(id2 > id1);
    c.psql("INSERT INTO t SELECT generate_series(71, 80)");
    c.switch_and_wait_archived();

    let promote = ["--target-action", "promote"];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--backup", &id1, "--target-immediate"], "10 10"),
        (vec!["--backup", &id1, "--target-xid", &xid], "20 20"),
        (
            vec!["--backup", &id1, "--target-xid", &xid, "--exclusive"],
            "10 10",
        ),
        (
            vec!["--backup", &id1, "--target-name", "before_31"],
            "30 30",
        ),
        (vec!["--backup", &id1, "--target-lsn", &lsn], "40 40"),
        (vec!["--target-time", &time], "50 50"),
        (vec![], "80 80"),
    ];
    for (args, want) in &cases {
        let mut a = args.clone();
        if !a.is_empty() {
            a.extend(promote);
        }
        let (r, log) = restore_and_start(repo, &a, false);
        assert_eq!(&rows(&r), want, "restore {a:?}\n{log}");
        if a.contains(&"--target-time") {
            assert!(log.contains(&format!("restoring backup {id1}")), "{log}");
        }
        if a.is_empty() {
            assert!(log.contains(&format!("restoring backup {id2}")), "{log}");
        }
    }

    // A --backup that ends after a time or LSN target is refused before anything is
    // written, naming the newest backup that ends before the target, or saying there
    // is none (PostgreSQL would otherwise replay the backup to its end, past the target).
    let none = TestDir::new();
    let dest = none.join("pgdata");
    let refused: Vec<(Vec<&str>, String)> = vec![
        (
            vec!["--backup", "latest", "--target-time", &time],
            format!("the newest backup that ended before it is {id1}"),
        ),
        (
            vec!["--backup", &id2, "--target-lsn", &lsn],
            format!("the newest backup that ended before it is {id1}"),
        ),
        (
            vec!["--backup", &id1, "--target-time", &before_id1],
            "no backup of server main ended before it".to_string(),
        ),
    ];
    for (args, want) in &refused {
        let out = restore_cmd(repo, &dest, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "restore {args:?}: {err}");
        assert!(err.contains(want.as_str()), "restore {args:?}: {err}");
        assert!(err.contains("would recover past the target"), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(
            !dest.exists(),
            "restore {args:?} created {}",
            dest.display()
        );
    }
    // Without --backup the same targets pick the first backup (checked above for the
    // time; here for the LSN), and one before every backup is refused.
    let out = restore_cmd(repo, &dest, &["--target-time", &before_id1]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no backup of server main ended before"));
    assert!(!dest.exists());

    // By default a restored copy archives nothing: archive_mode stays on (segments
    // wait as .ready, a failover only sets archive_command and reloads), the archiver
    // fails visibly, and no file of its new timeline reaches the repository.
    let before = repo.wal_files();
    let (off, _) = restore_and_start(
        repo,
        &[
            "--backup",
            &id1,
            "--target-immediate",
            "--target-action",
            "promote",
        ],
        true,
    );
    assert_eq!(off.psql("SHOW archive_mode"), "on");
    assert_eq!(
        off.psql("SHOW archive_command"),
        pgcellar::restore::DISABLED_ARCHIVE_COMMAND
    );
    off.psql("INSERT INTO t SELECT generate_series(2001, 2010)");
    off.psql("SELECT pg_switch_wal()");
    off.wait_until(Duration::from_secs(60), "see the archiver fail", |o| {
        o.archiver_counts().1 >= 1
    });
    let new: Vec<String> = repo
        .wal_files()
        .into_iter()
        .filter(|f| !before.contains(f) && !f.starts_with("00000001"))
        .collect();
    assert!(new.is_empty(), "the restored copy archived {new:?}");
    off.stop();
    drop(off);

    // A standby replays everything archived and stays in recovery.
    let root = TestDir::new();
    let pgdata = root.join("pgdata");
    restore_ok(repo, &pgdata, &["--standby"]);
    assert!(pgdata.join("standby.signal").exists());
    assert!(!pgdata.join("recovery.signal").exists());
    let auto = fs::read_to_string(pgdata.join("postgresql.auto.conf")).unwrap();
    assert!(auto.contains(" --standby %f %p"), "{auto}");
    let sb = Cluster::adopt_restored(root, pgdata);
    sb.append_conf(&["archive_mode = off".to_string()]);
    sb.start();
    sb.wait_until(Duration::from_secs(60), "replay the archive", |s| {
        s.psql_raw("SELECT count(*) FROM t")
            .stdout
            .starts_with(b"80")
    });
    assert_eq!(sb.psql("SELECT pg_is_in_recovery()"), "t");
    sb.stop();
    drop(sb);

    // Promote a copy at the time target onto timeline 2, write and archive there.
    let (tl2, _) = restore_and_start(
        repo,
        &[
            "--backup",
            &id1,
            "--target-time",
            &time,
            "--target-action",
            "promote",
            "--archive-mode",
            "preserve",
        ],
        true,
    );
    assert_eq!(
        tl2.psql("SELECT timeline_id FROM pg_control_checkpoint()"),
        "2"
    );
    // --archive-mode preserve keeps the source's archive_command (and it archives
    // timeline 2, below).
    assert_eq!(tl2.psql("SHOW archive_command"), repo.archive_command());
    tl2.psql("INSERT INTO t SELECT generate_series(1001, 1010)");
    tl2.switch_and_wait_archived();
    tl2.stop();
    drop(tl2);
    assert!(repo
        .wal_files()
        .iter()
        .any(|f| f.starts_with("00000002.history-")));
    // Recovering the first backup and following the newest timeline sees those rows.
    let (r, _) = restore_and_start(
        repo,
        &["--backup", &id1, "--target-timeline", "latest"],
        false,
    );
    assert_eq!(rows(&r), "60 1010");
    assert!(
        r.psql("SELECT timeline_id FROM pg_control_checkpoint()")
            .parse::<u32>()
            .unwrap()
            >= 3
    );
}

fn count_files(dir: &Path) -> usize {
    let mut n = 0;
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                n += count_files(&p);
            } else {
                n += 1;
            }
        }
    }
    n
}

fn tablespaces_links_delta_aborted_backups_and_the_lock(repo: &RepoDir) {
    let Some(c) = repo.archiving_cluster() else {
        return;
    };
    let tsroot = TestDir::new();
    let ts_loc = tsroot.join("ts1");
    fs::create_dir(&ts_loc).unwrap();
    chown_postgres(&ts_loc);
    c.psql(&format!(
        "CREATE TABLESPACE ts1 LOCATION '{}'",
        ts_loc.display()
    ));
    c.psql("CREATE TABLE t(i int, s text) TABLESPACE ts1");
    c.psql("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 1000) g");
    c.psql("CREATE UNLOGGED TABLE scratch(i int)");
    c.psql("INSERT INTO scratch SELECT generate_series(1, 100)");
    c.psql("CHECKPOINT");
    // Let the files age past the safe horizon of the first backup.
    std::thread::sleep(Duration::from_secs(3));
    let id1 = base_backup(repo, &c, &["--jobs", "2"]);
    let m1 = manifest(repo, &id1);
    assert_eq!(m1.tablespaces.len(), 1);
    assert_eq!(m1.tablespaces[0].name.as_deref(), Some("ts1"));
    assert!(m1.files.iter().any(|f| f.path.starts_with("tablespaces/")));
    assert!(m1.parent.is_none() && m1.totals.copied_stored_size > 0);
    assert!(!m1.files.iter().any(|f| f.path.starts_with("data/pg_wal/")));

    // A second backup with no changes links at least 90% of its files.
    let id2 = base_backup(repo, &c, &[]);
    let m2 = manifest(repo, &id2);
    assert_eq!(m2.parent.as_ref().map(|p| p.as_str()), Some(id1.as_str()));
    let ratio = m2.totals.reused_files as f64 / m2.totals.files as f64;
    assert!(
        ratio >= 0.9,
        "only {:.1}% reused: {:?}",
        ratio * 100.0,
        m2.totals
    );
    // Reused means the same objects, stored once, not a copy.
    let reused = m2
        .files
        .iter()
        .find(|f| f.added_size == 0 && f.size > 8192)
        .expect("a reused file");
    let first = m1.files.iter().find(|f| f.path == reused.path).unwrap();
    assert_eq!(reused.objects, first.objects);
    assert!(repo
        .path
        .join(reused.objects[0].path(&repo.server))
        .is_file());

    // Deleting the first backup never breaks the second.
    fs::remove_dir_all(repo.path.join("main/backups").join(&id1)).unwrap();
    c.psql("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1001, 1100) g");
    c.switch_and_wait_archived();

    // An aborted backup (no manifest) is invisible, even though its id sorts last.
    let aborted = repo.path.join("main/backups/20991231T235959Z/data");
    fs::create_dir_all(&aborted).unwrap();
    fs::write(aborted.join("PG_VERSION"), "15\n").unwrap();
    chown_postgres(&repo.path);
    let none = TestDir::new();
    let out = restore_cmd(repo, &none.join("x"), &["--backup", "20991231T235959Z"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));

    // Remapped tablespace.
    let newts = TestDir::new();
    let map = format!("ts1={}", newts.join("moved").display());
    let (a, log) = restore_and_start(repo, &["--tablespace-map", &map], false);
    assert!(log.contains(&format!("restoring backup {id2}")), "{log}");
    assert_eq!(a.psql("SELECT count(*) FROM t"), "1100");
    assert_eq!(
        a.psql("SELECT pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname = 'ts1'"),
        newts.join("moved").display().to_string()
    );
    // The unlogged table comes back empty (its data was not backed up), not broken.
    assert_eq!(a.psql("SELECT count(*) FROM scratch"), "0");

    // --delta over a stale, diverged copy.
    a.psql("INSERT INTO t SELECT g, 'stale' FROM generate_series(5000, 5100) g");
    a.psql("DELETE FROM t WHERE i < 100");
    a.psql("CHECKPOINT");
    a.stop();
    c.psql("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1101, 1200) g");
    c.switch_and_wait_archived();
    let out = restore_cmd(repo, &a.pgdata, &[]);
    assert!(
        !out.status.success(),
        "non-empty destination accepted without --delta"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));
    fs::write(a.pgdata.join("stray-file"), "x").unwrap();
    let log = restore_ok(repo, &a.pgdata, &["--delta", "--tablespace-map", &map]);
    assert!(log.contains("kept"), "{log}");
    assert!(!a.pgdata.join("stray-file").exists());
    // postgresql.conf came back from the backup: point it at this copy's socket again.
    a.append_conf(&[
        format!("port = {}", a.port),
        format!("unix_socket_directories = '{}'", a.sockdir.display()),
        "archive_mode = off".to_string(),
    ]);
    a.start();
    a.wait_for_promotion(Duration::from_secs(120));
    assert_eq!(
        a.psql("SELECT count(*) || ' ' || min(i) || ' ' || max(i) FROM t"),
        "1200 1 1200"
    );
    // A running postmaster is never overwritten.
    let out = restore_cmd(repo, &a.pgdata, &["--delta", "--tablespace-map", &map]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("postmaster"));
    a.stop();

    // A second base-backup while the lock is held is refused, naming the holder. The
    // lock is taken through the repository's own driver (over SSH for ssh://).
    let storage = repo.storage();
    let lock = Lock::acquire(&*storage, "main", "test-holder", DEFAULT_STALE_AFTER).unwrap();
    chown_postgres(&repo.path);
    let mut cmd = pg_command(bin("base-backup"));
    cmd.args(repo.args())
        .arg("--pgdata")
        .arg(&c.pgdata)
        .arg("--conninfo")
        .arg(c.conninfo());
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("locked by test-holder"), "{err}");
    assert!(out.stdout.is_empty());
    lock.try_release().unwrap();
    // ... but a short maintenance command's lock (cron's sweep) is waited for.
    let lock = Lock::acquire(&*storage, "main", "cron", DEFAULT_STALE_AFTER).unwrap();
    chown_postgres(&repo.path);
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    lock.try_release().unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // In place: the original directories, emptied.
    c.stop();
    let pgdata: PathBuf = c.pgdata.clone();
    fs::remove_dir_all(&pgdata).unwrap();
    fs::remove_dir_all(&ts_loc).unwrap();
    restore_ok(repo, &pgdata, &[]);
    assert!(count_files(&ts_loc) > 0);
    c.start();
    c.wait_for_promotion(Duration::from_secs(120));
    assert_eq!(c.psql("SELECT count(*) FROM t"), "1200");
    assert_eq!(
        c.psql("SELECT pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname = 'ts1'"),
        ts_loc.display().to_string()
    );

    // A damaged stored file fails the restore, and the half-restored directory
    // cannot start (pg_control is written last).
    let victim = m2
        .files
        .iter()
        .filter(|f| f.path.starts_with("data/base/") && f.size >= 8192)
        // A small one: the larger files are restored before it fails.
        .min_by_key(|f| f.size)
        .expect("a relation file");
    let stored = repo.path.join(victim.objects[0].path(&repo.server));
    let mut bytes = fs::read(&stored).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    fs::write(&stored, bytes).unwrap();
    let root = TestDir::new();
    let broken = root.join("pgdata");
    let map2 = format!("ts1={}", root.join("ts").display());
    let out = restore_cmd(repo, &broken, &["--tablespace-map", &map2]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("corrupt"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        count_files(&broken) > 10,
        "the restore stopped too early to prove anything"
    );
    assert!(!broken.join("global/pg_control").exists());
    let b = Cluster::adopt_restored(root, broken);
    assert!(!b.try_start(), "a half-restored directory started");
}

fn backup_under_pgbench_load_restores_clean(repo: &RepoDir) {
    let Some(c) = repo.archiving_cluster() else {
        return;
    };
    c.pgbench(&["-i", "-s", "3", "-q"]);
    let id = std::thread::scope(|s| {
        let load = s.spawn(|| c.pgbench(&["-c", "4", "-T", "12", "-n"]));
        std::thread::sleep(Duration::from_secs(2));
        let id = base_backup(repo, &c, &["--jobs", "2"]);
        load.join().expect("pgbench");
        id
    });
    c.switch_and_wait_archived();
    let want = c.psql("SELECT count(*) FROM pgbench_history");
    let (r, _) = restore_and_start(repo, &["--backup", &id], false);
    assert_eq!(r.psql("SELECT count(*) FROM pgbench_history"), want);
    // pgbench's invariant: every balance is the sum of its history.
    assert_eq!(
        r.psql("SELECT (SELECT sum(abalance) FROM pgbench_accounts) = (SELECT coalesce(sum(delta), 0) FROM pgbench_history)"),
        "t"
    );
    assert_eq!(r.psql("SELECT count(*) FROM pgbench_accounts"), "300000");
    r.amcheck();
}

fn base_backup_without_archiving_fails_fast_and_leaves_nothing(repo: &RepoDir) {
    let Some(c) = Cluster::init(ClusterOpts::default()) else {
        return;
    };
    repo.init_for(&c);
    let start = std::time::Instant::now();
    let mut cmd = pg_command(bin("base-backup"));
    cmd.args(repo.args())
        .arg("--pgdata")
        .arg(&c.pgdata)
        .arg("--conninfo")
        .arg(c.conninfo());
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("archiving is not set up"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(30));
    let backups = repo.path.join("main/backups");
    assert_eq!(fs::read_dir(&backups).unwrap().count(), 0);
    assert!(!repo.path.join("main/locks/server.lock").exists());
    // Nothing to restore: a clear failure, and the destination is left alone.
    let dest = TestDir::new();
    let out = restore_cmd(repo, &dest.join("pgdata"), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no complete backup"));
    assert!(!dest.join("pgdata").exists());
}

/// The stored pg_control of a backup (any compression).
fn stored_pg_control(repo: &RepoDir, id: &str) -> PathBuf {
    let m = manifest(repo, id);
    let entry = m
        .files
        .iter()
        .find(|f| f.path == "data/global/pg_control")
        .expect("pg_control in the manifest");
    repo.path.join(entry.objects[0].path(&repo.server))
}

fn damaged_pg_control_or_killed_restore_never_starts(repo: &RepoDir) {
    let Some(c) = repo.archiving_cluster() else {
        return;
    };
    // ~45 MB in one relation file: restore --jobs 1 writes it first, for a while.
    c.psql("CREATE TABLE t(i int, s text)");
    c.psql(
        "INSERT INTO t SELECT g, md5(g::text) || md5((g + 1)::text) \
         FROM generate_series(1, 400000) g",
    );
    let id = base_backup(repo, &c, &[]);
    c.switch_and_wait_archived();
    let big = manifest(repo, &id)
        .files
        .into_iter()
        .max_by_key(|f| f.size)
        .expect("files");
    assert!(big.size > 20 << 20, "{big:?}");

    // kill -9 while restore writes the big file. Run as root without runuser, so the
    // signal reaches restore itself; it hands what it writes to the directory's owner.
    let root = TestDir::new();
    let dest = root.join("pgdata");
    let rel = big.path.strip_prefix("data/").expect("a data file");
    let in_progress = dest.join(format!("{rel}.pgcellar-restore-tmp"));
    let mut child = std::process::Command::new(bin("restore"))
        .args(repo.args())
        .args(["--backup", &id, "--jobs", "1"])
        .arg(&dest)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn restore");
    let start = std::time::Instant::now();
    while !in_progress.exists() && start.elapsed() < Duration::from_secs(60) {
        if child.try_wait().expect("try_wait").is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    std::thread::sleep(Duration::from_millis(20));
    child.kill().expect("kill -9 restore");
    let status = child.wait().expect("wait");
    assert!(
        !status.success() && status.code().is_none(),
        "restore was not killed mid-way ({status}); make the table larger"
    );
    assert!(
        !dest.join("global/pg_control").exists(),
        "a killed restore left global/pg_control"
    );
    let a = Cluster::adopt_restored(root, dest);
    assert!(!a.try_start(), "a killed restore's directory started");
    // The repository is untouched.
    let mut verify = pg_command(bin("pgcellar"));
    verify.args(repo.args()).args(["verify", "--all"]);
    run_ok(&mut verify);
    // A rerun with --delta finishes the job (and removes the leftover temporary file).
    restore_ok(repo, &a.pgdata, &["--backup", &id, "--delta"]);
    assert!(!in_progress.exists());
    // --delta over damaged pages of a page-level file patches them in place (same
    // inode: only the differing pages were written) back to the backup's bytes.
    let local = a.pgdata.join(rel);
    let inode = || std::os::unix::fs::MetadataExt::ino(&fs::metadata(&local).unwrap());
    let before = inode();
    {
        use std::os::unix::fs::FileExt;
        let f = fs::OpenOptions::new().write(true).open(&local).unwrap();
        for page in [3u64, 1000, 2500] {
            f.write_all_at(b"damage", page * 8192 + 100).unwrap();
        }
    }
    restore_ok(repo, &a.pgdata, &["--backup", &id, "--delta"]);
    assert_eq!(inode(), before, "{rel} was rewritten, not patched");
    let (sha, size) = pgcellar::codec::hash(
        &Default::default(),
        &[],
        &mut fs::File::open(&local).unwrap(),
    )
    .unwrap();
    assert_eq!((sha, size), (big.sha256.clone(), big.size));
    a.append_conf(&[
        format!("port = {}", a.port),
        format!("unix_socket_directories = '{}'", a.sockdir.display()),
        "archive_mode = off".to_string(),
    ]);
    a.start();
    a.wait_for_promotion(Duration::from_secs(120));
    assert_eq!(a.psql("SELECT count(*) FROM t"), "400000");
    a.stop();

    // One flipped byte in the stored pg_control, in the padding past the struct its
    // CRC covers: restore fails and leaves no pg_control, so the directory cannot
    // start; with --delta the old pg_control is gone too.
    let raw = base_backup(repo, &c, &["--compression", "none"]);
    let stored = stored_pg_control(repo, &raw);
    let mut bytes = fs::read(&stored).unwrap();
    assert_eq!(bytes.len(), 8192, "{}", stored.display());
    bytes[4000] ^= 0x01;
    fs::write(&stored, bytes).unwrap();
    let root = TestDir::new();
    let broken = root.join("pgdata");
    for (dest, delta) in [(&broken, None), (&a.pgdata, Some("--delta"))] {
        let mut args = vec!["--backup", raw.as_str()];
        args.extend(delta);
        let out = restore_cmd(repo, dest, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains("pg_control") && err.contains("corrupt"),
            "{err}"
        );
        assert!(
            !dest.join("global/pg_control").exists(),
            "a failed restore left global/pg_control in {}",
            dest.display()
        );
    }
    assert!(
        !a.try_start(),
        "a failed --delta restore's directory started"
    );
    let b = Cluster::adopt_restored(root, broken);
    assert!(!b.try_start(), "a failed restore's directory started");
}

/// Run as root, restore must not write into restore_command a wal-get that the
/// data directory's owner (postgres) cannot run.
#[test]
fn restore_refuses_a_wal_get_the_data_directory_owner_cannot_run() {
    use std::os::unix::fs::PermissionsExt;
    if !is_root() {
        eprintln!(
            "\n*** SKIPPED: restore_refuses_a_wal_get_the_data_directory_owner_cannot_run \
             needs root (a postgres-owned destination) ***\n"
        );
        return;
    }
    // Like /root/.cargo/bin: a root-owned 0700 directory.
    let hidden = tempfile::Builder::new()
        .prefix("pgcellar-root-only-")
        .tempdir()
        .unwrap();
    fs::set_permissions(hidden.path(), fs::Permissions::from_mode(0o700)).unwrap();
    for b in ["restore", "wal-get"] {
        fs::copy(bin(b), hidden.path().join(b)).unwrap();
        fs::set_permissions(hidden.path().join(b), fs::Permissions::from_mode(0o755)).unwrap();
    }
    // The check comes before the repository is opened, so none is needed.
    let repo = RepoDir::new();
    let dest_root = TestDir::new();
    let dest = dest_root.join("pgdata");
    let run = || {
        let out = std::process::Command::new(hidden.path().join("restore"))
            .args(repo.args())
            .arg(&dest)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(!dest.exists(), "restore created {}", dest.display());
        err
    };
    let err = run();
    assert!(
        err.contains(&format!("cannot enter {}", hidden.path().display())),
        "{err}"
    );
    assert!(err.contains("postgres (uid"), "{err}");
    assert!(
        err.contains("cargo install --path . --root /usr/local"),
        "{err}"
    );
    // The file itself not executable by postgres.
    fs::set_permissions(hidden.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(
        hidden.path().join("wal-get"),
        fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    let err = run();
    assert!(err.contains("cannot execute"), "{err}");
    // Runnable by postgres: past the check, to the (missing) repository.
    fs::set_permissions(
        hidden.path().join("wal-get"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let err = run();
    assert!(!err.contains("cannot e"), "{err}");
}

// ---------------------------------------------------------------------------
// Faults: a killed or racing writer, a broken archive_command, live and dead locks.

on_both_backends!(killed_and_racing_writers_leave_a_consistent_repository);

pub(crate) fn out_text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn base_backup_cmd(repo: &RepoDir, c: &Cluster, extra: &[&str]) -> std::process::Command {
    let mut cmd = pg_command(bin("base-backup"));
    cmd.args(repo.args())
        .arg("--pgdata")
        .arg(&c.pgdata)
        .arg("--conninfo")
        .arg(c.conninfo())
        .args(extra);
    cmd
}

/// `(command, pid)` of the current holder of the server lock, if any.
fn lock_holder(repo: &RepoDir) -> Option<(String, u32)> {
    let bytes = fs::read(repo.path.join("main/locks/server.lock")).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    Some((
        v["command"].as_str()?.to_string(),
        v["pid"].as_u64()? as u32,
    ))
}

fn backups_dir(repo: &RepoDir) -> PathBuf {
    repo.path.join("main/backups")
}

fn kill9(pid: u32) {
    let st = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success(), "kill -9 {pid}");
}

/// Bytes process `pid` has read so far (`rchar` of /proc/<pid>/io; 0 if gone).
fn bytes_read_by(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("rchar: ")
                    .and_then(|v| v.trim().parse().ok())
            })
        })
        .unwrap_or(0)
}

/// The rows of `pgcellar list --json`, newest first.
pub(crate) fn list_json(repo: &RepoDir) -> Vec<serde_json::Value> {
    let o = repo.pgcellar(&["list", "--json"]);
    assert!(o.status.success(), "{}", out_text(&o));
    json_document(&o.stdout)["backups"]
        .as_array()
        .unwrap_or_else(|| panic!("no backups in {}", out_text(&o)))
        .clone()
}

fn verify_all_ok(repo: &RepoDir) {
    let o = repo.pgcellar(&["verify", "--all"]);
    assert_eq!(o.status.code(), Some(0), "verify --all: {}", out_text(&o));
}

fn killed_and_racing_writers_leave_a_consistent_repository(repo: &RepoDir) {
    let Some(c) = repo.archiving_cluster() else {
        return;
    };
    c.pgbench(&["-i", "-s", "8", "-q"]);
    let first = base_backup(repo, &c, &[]);

    // The heartbeat: with lock_stale_after = 1 s a backup that runs for seconds keeps
    // its lock, and cron (which would break a stale lock and remove the directory as
    // aborted, aborted_backup_max_age = 1 s) leaves it alone.
    let cfgdir = TestDir::new();
    let cfg = cfgdir.join("stale.toml");
    fs::write(&cfg, "lock_stale_after = 1\naborted_backup_max_age = 1\n").unwrap();
    chown_postgres(&cfg);
    let cfg_arg = cfg.display().to_string();
    let t0 = std::time::Instant::now();
    // gzip -9 with one worker: slow enough to run for seconds.
    let slow = [
        "--full",
        "--jobs",
        "1",
        "--compression",
        "gzip",
        "--compression-level",
        "9",
    ];
    let mut child = base_backup_cmd(
        repo,
        &c,
        &[&["--config", cfg_arg.as_str()][..], &slow[..]].concat(),
    )
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let mut crons_after_bound = 0;
    let mut holder = None;
    while child.try_wait().unwrap().is_none() {
        if let Some(h) = lock_holder(repo) {
            holder.get_or_insert(h.clone());
            assert_eq!(Some(&h), holder.as_ref(), "the lock changed hands");
        }
        let o = repo.pgcellar(&["--config", &cfg_arg, "cron"]);
        assert!(o.status.success(), "{}", out_text(&o));
        assert!(
            !out_text(&o).contains("removed aborted"),
            "cron removed the running backup: {}",
            out_text(&o)
        );
        if t0.elapsed() > Duration::from_millis(2500) {
            crons_after_bound += 1;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", out_text(&out));
    assert!(
        crons_after_bound >= 2,
        "the backup ({:?}) was too quick to outlive lock_stale_after",
        t0.elapsed()
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(backups_dir(repo).join(&id).join("backup.json").exists());

    // kill -9 of base-backup in the middle of its copy.
    let known: Vec<String> = fs::read_dir(backups_dir(repo))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    let mut child = base_backup_cmd(repo, &c, &slow)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let backups = repo.path.join("main/backups");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let (victim, pid) = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "base-backup never got going"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "base-backup finished before the kill"
        );
        let partial = fs::read_dir(&backups)
            .unwrap()
            .flatten()
            .find(|e| !known.contains(&e.file_name().to_string_lossy().to_string()));
        if let (Some(dir), Some(("base-backup", pid))) = (
            partial,
            lock_holder(repo).as_ref().map(|(c, p)| (c.as_str(), *p)),
        ) {
            // Well into the copy (which takes seconds at gzip -9), not at its start:
            // judged by the bytes it has read (its objects are mostly shared with
            // the earlier gzip backup, so new files are no sign), not by a clock,
            // which a loaded machine stretches.
            if bytes_read_by(pid) >= 20 << 20 {
                break (dir.file_name().to_string_lossy().to_string(), pid);
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    kill9(pid);
    let _ = child.wait();
    assert_ne!(victim, first);
    // Killed in the middle of its copy: no manifest.
    assert!(!backups.join(&victim).join("backup.json").exists());
    // The lock of the dead process is still there until someone recovers it.
    assert_eq!(lock_holder(repo).map(|h| h.1), Some(pid));
    verify_all_ok(repo);
    let rows = list_json(repo);
    let row = rows
        .iter()
        .find(|r| r["id"] == victim.as_str())
        .expect("aborted row");
    assert_eq!(row["status"], "aborted", "{rows:?}");
    assert_eq!(rows.iter().filter(|r| r["status"] == "done").count(), 2);
    // The next base-backup recovers the lock (dead pid on this host) and works.
    let out = base_backup_cmd(repo, &c, &[]).output().unwrap();
    assert!(out.status.success(), "{}", out_text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("breaking stale lock"),
        "{}",
        out_text(&out)
    );
    verify_all_ok(repo);

    // Two base-backups at once: exactly one succeeds, the other names the holder.
    let spawn = || {
        base_backup_cmd(repo, &c, &["--full", "--jobs", "1"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let outs = [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()];
    let codes: Vec<Option<i32>> = outs.iter().map(|o| o.status.code()).collect();
    assert!(
        codes.contains(&Some(0)) && codes.contains(&Some(1)),
        "{codes:?}: {} / {}",
        out_text(&outs[0]),
        out_text(&outs[1])
    );
    let loser = outs.iter().find(|o| o.status.code() == Some(1)).unwrap();
    assert!(
        String::from_utf8_lossy(&loser.stderr).contains("locked by base-backup"),
        "{}",
        out_text(loser)
    );
    assert!(loser.stdout.is_empty());
    verify_all_ok(repo);
    assert!(lock_holder(repo).is_none());

    // kill -9 of expire while it holds the lock (removing backups).
    let done_before = list_json(repo)
        .iter()
        .filter(|r| r["status"] == "done")
        .count();
    assert!(done_before >= 3, "{done_before}");
    let mut exp = pg_command(bin("pgcellar"));
    exp.args(repo.args())
        .args(["expire", "--retention", "REDUNDANCY 1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = exp.spawn().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let killed = loop {
        if let Some(("expire", pid)) = lock_holder(repo).as_ref().map(|(c, p)| (c.as_str(), *p)) {
            kill9(pid);
            break true;
        }
        if child.try_wait().unwrap().is_some() || std::time::Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let _ = child.wait();
    assert!(killed, "expire finished before it could be killed");
    verify_all_ok(repo);
    // The next expire recovers the lock and finishes the job.
    let o = repo.pgcellar(&["expire", "--retention", "REDUNDANCY 1"]);
    assert!(o.status.success(), "{}", out_text(&o));
    let rows = list_json(repo);
    assert_eq!(
        rows.iter().filter(|r| r["status"] == "done").count(),
        1,
        "{rows:?}"
    );
    verify_all_ok(repo);
    let id = base_backup(repo, &c, &[]);
    assert_eq!(list_json(repo)[0]["id"], id.as_str());
    verify_all_ok(repo);
    assert!(lock_holder(repo).is_none());
}

#[test]
fn base_backup_fails_fast_when_archive_command_keeps_failing() {
    let repo = RepoDir::new();
    // archive_mode on, but every archive attempt fails.
    let Some(c) = Cluster::init(ClusterOpts {
        archive_command: Some("false".into()),
        ..Default::default()
    }) else {
        return;
    };
    repo.init_for(&c);
    let start = std::time::Instant::now();
    let out = base_backup_cmd(&repo, &c, &["-v"]).output().unwrap();
    let took = start.elapsed();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(out.stdout.is_empty());
    assert!(took < Duration::from_secs(45), "took {took:?}: {err}");
    let last = err.lines().last().unwrap_or_default().to_string();
    assert!(last.contains("cannot be archived"), "{err}");
    assert!(
        last.contains("pg_stat_archiver") && last.contains("failed_count"),
        "{last}"
    );
    assert!(
        last.contains("archive_command") && last.contains("server log"),
        "{last}"
    );
    // The segment it waits for is named (24 hex digits), and the wait was shown.
    let named = last
        .split(|ch: char| !ch.is_ascii_hexdigit())
        .any(|w| w.len() == 24);
    assert!(named, "{last}");
    assert!(err.contains("waiting for WAL segment"), "{err}");
    // Aborted: no manifest anywhere, and the lock is released.
    let backups = repo.path.join("main/backups");
    for e in fs::read_dir(&backups).unwrap().flatten() {
        assert!(!e.path().join("backup.json").exists());
    }
    assert!(!repo.path.join("main/locks/server.lock").exists());
}

#[test]
fn a_long_running_holder_keeps_its_lock_and_a_dead_one_loses_it() {
    let repo = RepoDir::new();
    let Some(c) = repo.archiving_cluster() else {
        return;
    };
    let backups = repo.path.join("main/backups");
    let locks = repo.path.join("main/locks");
    fs::create_dir_all(&locks).unwrap();
    chown_postgres(&locks);
    let now = chrono::Utc::now();
    let two_days_ago = now - chrono::Duration::days(2);
    // A base-backup running for two days, alive (a live process on this host) and
    // refreshing its lock: its directory has no manifest yet and is old.
    let mut holder = std::process::Command::new("sleep")
        .arg("120")
        .spawn()
        .unwrap();
    let write_lock = |pid: u32, refreshed: chrono::DateTime<chrono::Utc>| {
        let lock = serde_json::json!({
            "host": pgcellar::repo::lock::hostname(),
            "pid": pid,
            "command": "base-backup",
            "started": two_days_ago,
            "token": "long-runner",
            "refreshed": refreshed,
        });
        let p = locks.join("server.lock");
        fs::write(&p, serde_json::to_vec(&lock).unwrap()).unwrap();
        chown_postgres(&p);
    };
    write_lock(holder.id(), now);
    let id = (two_days_ago + chrono::Duration::seconds(30))
        .format("%Y%m%dT%H%M%SZ")
        .to_string();
    let running = backups.join(&id);
    fs::create_dir_all(running.join("data")).unwrap();
    fs::write(running.join("data/PG_VERSION"), "15\n").unwrap();
    chown_postgres(&backups);
    chown_postgres(&running);
    chown_postgres(&running.join("data"));

    let rows = list_json(&repo);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["id"], id.as_str());
    assert_eq!(rows[0]["status"], "running", "{rows:?}");
    let o = repo.pgcellar(&["cron"]);
    assert!(o.status.success(), "{}", out_text(&o));
    let o = repo.pgcellar(&["expire", "--retention", "REDUNDANCY 1"]);
    assert_eq!(o.status.code(), Some(1), "{}", out_text(&o));
    assert!(
        out_text(&o).contains("locked by base-backup"),
        "{}",
        out_text(&o)
    );
    assert!(
        running.exists(),
        "the running backup's directory was removed"
    );
    assert_eq!(lock_holder(&repo).map(|h| h.1), Some(holder.id()));

    // The holder dies without releasing, and its last refresh is old: check warns
    // about the aborted backup, list marks it, and cron breaks the lock and removes
    // the directory.
    holder.kill().unwrap();
    let dead = holder.id();
    holder.wait().unwrap();
    write_lock(dead, now - chrono::Duration::minutes(30));
    let rows = list_json(&repo);
    assert_eq!(rows[0]["status"], "aborted", "{rows:?}");
    let o = repo.pgcellar(&["--conninfo", &c.conninfo(), "check", "--json"]);
    let r = json_document(&o.stdout);
    let row = check_row(&r, "aborted_backups");
    assert_eq!(row["status"], "warning", "{r}");
    let message = row["message"].as_str().unwrap();
    assert!(message.contains(&id), "{r}");
    // One line a person reads: no runs of blanks from a broken string continuation.
    assert!(!message.contains("  "), "{message:?}");
    let o = repo.pgcellar(&["cron"]);
    assert!(o.status.success(), "{}", out_text(&o));
    assert!(
        out_text(&o).contains(&format!("removed aborted backup directory {id}")),
        "{}",
        out_text(&o)
    );
    assert!(!running.exists());
    assert!(lock_holder(&repo).is_none());
}
