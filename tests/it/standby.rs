//! Backups taken from a hot standby with no connection to the primary, against a real
//! primary and a real streaming standby. The standby itself is made by our own
//! `restore --standby --primary-conninfo` from a backup of the primary, so no client
//! tool of another major is needed (Debian's pg_basebackup 15 cannot copy an 18).
//!
//! The standby's WAL reaches the repository by either route a DBA uses: the standby
//! archiving with `archive_mode = always` (the primary's own archive_command then
//! stores nothing), or the primary archiving. PostgreSQL recovering a copy of the
//! standby's backup to a restore point and to the last row is the proof.

use crate::backup_restore::{
    base_backup, list_json, manifest, restore_and_start_with, restore_ok, rows,
};
use crate::common::*;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How the standby's WAL reaches the repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// The standby archives (`archive_mode = always`); the primary's archive_command
    /// is switched to `true`, so nothing the primary writes later reaches the
    /// repository through it.
    StandbyArchives,
    /// Only the primary archives.
    PrimaryArchives,
}

/// A primary archiving into a repository and a standby streaming from it.
pub(crate) struct Pair {
    pub(crate) primary: Cluster,
    pub(crate) standby: Cluster,
    /// The primary's backup the standby was made from.
    pub(crate) seed: String,
}

/// A primary on the binaries in `bindir` (default: Debian's) archiving into `repo`,
/// with table `t` holding 1..10, and a standby made from its backup by
/// `restore --standby --primary-conninfo`, streaming; `None` (loudly) without
/// PostgreSQL.
pub(crate) fn primary_and_standby(
    repo: &RepoDir,
    bindir: Option<PathBuf>,
    route: Route,
) -> Option<Pair> {
    let primary = repo.archiving_cluster_with(bindir, &[])?;
    primary.psql("CREATE TABLE t(i int); CREATE TABLE ticks(at timestamptz DEFAULT now())");
    primary.psql("INSERT INTO t SELECT generate_series(1, 10)");
    let seed = base_backup(repo, &primary, &[]);
    primary.psql("SELECT pg_create_physical_replication_slot('standby1')");

    let root = TestDir::new();
    let pgdata = root.join("pgdata");
    let conninfo = primary.conninfo();
    let mut args = vec![
        "--backup",
        seed.as_str(),
        "--standby",
        "--primary-conninfo",
        conninfo.as_str(),
        "--primary-slot-name",
        "standby1",
    ];
    if route == Route::StandbyArchives {
        args.extend(["--archive-mode", "preserve"]);
    }
    restore_ok(repo, &pgdata, &args);
    let auto = fs::read_to_string(pgdata.join("postgresql.auto.conf")).expect("auto.conf");
    assert!(
        auto.contains(&format!("primary_conninfo = '{conninfo}'")),
        "{auto}"
    );
    let standby = Cluster::adopt_restored_with(root, pgdata, primary.bindir.clone());
    if route == Route::StandbyArchives {
        standby.append_conf(&["archive_mode = always".to_string()]);
    }
    standby.start();
    primary.wait_until(Duration::from_secs(120), "stream to the standby", |p| {
        p.psql("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'") == "1"
    });
    // It streams through the slot restore named.
    assert_eq!(
        primary.psql("SELECT active FROM pg_replication_slots WHERE slot_name = 'standby1'"),
        "t"
    );
    assert_eq!(standby.psql("SELECT pg_is_in_recovery()"), "t");
    if route == Route::StandbyArchives {
        // From here on only the standby stores WAL in the repository.
        primary.psql("ALTER SYSTEM SET archive_command = 'true'");
        primary.psql("SELECT pg_reload_conf()");
    }
    Some(Pair {
        primary,
        standby,
        seed,
    })
}

/// While `work` runs, the primary switches WAL segments every 300 ms (a standby
/// cannot switch them, and its backup waits for its stop segment to be complete).
pub(crate) fn with_primary_switching<T>(primary: &Cluster, work: impl FnOnce() -> T) -> T {
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                primary.psql("INSERT INTO ticks DEFAULT VALUES");
                primary.psql("SELECT pg_switch_wal()");
                std::thread::sleep(Duration::from_millis(300));
            }
        });
        let out = work();
        done.store(true, Ordering::Relaxed);
        out
    })
}

/// Wait until WAL file `name` is stored in `repo` (by whichever server archives it).
pub(crate) fn wait_in_repo(repo: &RepoDir, name: &str) {
    let start = Instant::now();
    let stored = |f: &String| f.rsplit('/').next().is_some_and(|b| b.starts_with(name));
    while !repo.wal_files().iter().any(stored) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{name} did not reach the repository: {:?}",
            repo.wal_files()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Back up the standby of `pair`, then check that copies of that backup recover to a
/// restore point made later on the primary and to the primary's last row, on the
/// binaries in `bindir`; rows 11..30 are written on the primary meanwhile.
pub(crate) fn standby_backup_recovers(repo: &RepoDir, pair: &Pair, route: Route, bindir: &Path) {
    let Pair {
        primary, standby, ..
    } = pair;
    let id = with_primary_switching(primary, || base_backup(repo, standby, &["-v"]));
    let m = manifest(repo, &id);
    assert!(
        m.backup_label.contains("BACKUP FROM: standby"),
        "{}",
        m.backup_label
    );
    assert_eq!(
        m.system_identifier,
        primary.psql("SELECT system_identifier FROM pg_control_system()")
    );

    primary.psql("INSERT INTO t SELECT generate_series(11, 20)");
    primary.psql("SELECT pg_create_restore_point('after_standby_backup')");
    primary.psql("INSERT INTO t SELECT generate_series(21, 30)");
    let seg = primary.psql("SELECT pg_walfile_name(pg_switch_wal())");
    wait_in_repo(repo, &seg);
    if route == Route::StandbyArchives {
        // Every segment the standby pushed was also pushed by the primary or is new:
        // identical pushes exit 0, so its archiver never failed.
        assert_eq!(
            standby.archiver_counts().1,
            0,
            "the standby's archiver failed"
        );
        assert!(
            standby.archiver_counts().0 > 0,
            "the standby archived nothing"
        );
    }

    let promote = ["--target-action", "promote"];
    let at_point = [
        &[
            "--backup",
            id.as_str(),
            "--target-name",
            "after_standby_backup",
        ][..],
        &promote[..],
    ]
    .concat();
    let (c, log) = restore_and_start_with(repo, &at_point, false, bindir);
    assert_eq!(rows(&c), "20 20", "{log}");
    drop(c);
    let (c, log) = restore_and_start_with(repo, &["--backup", id.as_str()], false, bindir);
    assert!(log.contains(&format!("restoring backup {id}")), "{log}");
    assert_eq!(rows(&c), "30 30");
    assert_eq!(c.table_digest("t", "i"), primary.table_digest("t", "i"));
}

on_all_backends!(a_backup_from_a_standby_that_archives_recovers);

fn a_backup_from_a_standby_that_archives_recovers(repo: &RepoDir) {
    let Some(pair) = primary_and_standby(repo, None, Route::StandbyArchives) else {
        return;
    };
    let bindir = pair.primary.bindir.clone();
    standby_backup_recovers(repo, &pair, Route::StandbyArchives, &bindir);
}

#[test]
fn a_backup_from_a_standby_whose_primary_archives_recovers() {
    let repo = RepoDir::new();
    let Some(pair) = primary_and_standby(&repo, None, Route::PrimaryArchives) else {
        return;
    };
    let bindir = pair.primary.bindir.clone();
    standby_backup_recovers(&repo, &pair, Route::PrimaryArchives, &bindir);
}

/// The standby's backup waits for its stop segment, says what it waits for, and gives
/// up within backup_wal_timeout when the primary never completes it.
#[test]
fn a_standby_backup_says_what_it_waits_for_and_gives_up_in_bounded_time() {
    let repo = RepoDir::new();
    let Some(pair) = primary_and_standby(&repo, None, Route::PrimaryArchives) else {
        return;
    };
    // Rows and a checkpoint the standby replays: its restartpoint at the backup's
    // start then moves the backup's end into the primary's unfinished segment.
    let primary = &pair.primary;
    primary.psql("INSERT INTO t SELECT generate_series(11, 20)");
    primary.psql("CHECKPOINT");
    let lsn = primary.psql("SELECT pg_current_wal_lsn()");
    pair.standby
        .wait_until(Duration::from_secs(60), "replay the checkpoint", |s| {
            s.psql(&format!("SELECT pg_last_wal_replay_lsn() >= '{lsn}'")) == "t"
        });
    let started = Instant::now();
    let out = pg_command(bin("base-backup"))
        .args(repo.args())
        .args(["-v", "--backup-wal-timeout", "4"])
        .arg("--pgdata")
        .arg(&pair.standby.pgdata)
        .arg("--conninfo")
        .arg(pair.standby.conninfo())
        .output()
        .expect("spawn base-backup");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(started.elapsed() < Duration::from_secs(60), "{err}");
    assert!(
        err.contains("a standby cannot switch WAL segments"),
        "{err}"
    );
    assert!(err.contains("did not reach"), "{err}");
    assert!(err.contains("pg_switch_wal()"), "{err}");
    assert!(out.stdout.is_empty());
    let ids: Vec<String> = list_ids(&repo);
    assert_eq!(ids, vec![pair.seed.clone()], "a failed backup was left");
}

/// A standby promoted while its backup runs: base-backup fails with one clear line
/// and leaves no backup behind.
#[test]
fn a_standby_promoted_mid_backup_fails_cleanly() {
    let repo = RepoDir::new();
    let Some(pair) = primary_and_standby(&repo, None, Route::PrimaryArchives) else {
        return;
    };
    let mut child = pg_command(bin("base-backup"))
        .args(repo.args())
        .arg("--pgdata")
        .arg(&pair.standby.pgdata)
        .arg("--conninfo")
        .arg(pair.standby.conninfo())
        .env("PGCELLAR_TEST_FAULT", "pause-after-backup-start")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn base-backup");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.expect("read stderr");
        let paused = line.contains("pausing after backup start");
        seen.push(line);
        if paused {
            break;
        }
    }
    assert!(
        seen.iter()
            .any(|l| l.contains("pausing after backup start")),
        "{seen:?}"
    );
    pair.standby.promote();
    seen.extend(lines.map_while(|l| l.ok()));
    let status = child.wait().expect("wait base-backup");
    let err = seen.join("\n");
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("the standby was promoted while the backup ran"),
        "{err}"
    );
    assert_eq!(list_ids(&repo), vec![pair.seed.clone()]);
    let backups = repo
        .storage()
        .list(&format!("{}/backups", repo.server))
        .expect("list backups");
    assert_eq!(backups.len(), 1, "the aborted backup's directory remains");
}

/// `--primary-conninfo` and `--primary-slot-name` need --standby and valid values,
/// and are refused before anything is written.
#[test]
fn restore_refuses_bad_streaming_options() {
    let repo = RepoDir::new();
    let dir = TestDir::new();
    let dest = dir.join("pgdata");
    for (args, want) in [
        (vec!["--primary-conninfo", "host=x"], "--standby"),
        (
            vec!["--standby", "--primary-slot-name", "Bad-Slot"],
            "not a slot name",
        ),
        (
            vec!["--standby", "--primary-conninfo", "host=x\nport=1"],
            "one line",
        ),
    ] {
        let out = pg_command(bin("restore"))
            .args(repo.args())
            .args(&args)
            .arg(&dest)
            .output()
            .expect("spawn restore");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!dest.exists());
    }
}

/// Ids of the complete backups, from `pgcellar list --json`.
fn list_ids(repo: &RepoDir) -> Vec<String> {
    list_json(repo)
        .iter()
        .filter_map(|b| b["id"].as_str().map(String::from))
        .collect()
}
