//! wal-push / wal-get / pgcellar init: the archive hooks PostgreSQL calls.
//!
//! The first half uses synthetic segments (a correct long page header, random body)
//! so that each guarantee of DESIGN.md §2 is checked in isolation; the second half
//! runs a real PostgreSQL with `archive_command`/`restore_command` set to the binaries.
//! The guarantee tests and the PostgreSQL tests run twice, as `<name>::local` and
//! `<name>::ssh` (a real sshd on loopback); the exit-code, name-validation and
//! configuration tests use a local repository only.

mod common;

use assert_cmd::Command;
use common::synthetic::*;
use common::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const SYSID: u64 = 7_300_000_000_000_000_042;

/// A local repository with server "main" registered as a synthetic cluster.
fn synthetic_repo() -> RepoDir {
    let (r, created) = register_synthetic(RepoDir::new(), SYSID);
    assert!(created);
    r
}

/// Run a guarantee test against a fresh synthetic repository on `backend`.
fn with_synthetic_repo(backend: Backend, test: fn(&RepoDir)) {
    let Some((repo, _sshd)) = backend.repo() else {
        return;
    };
    let (repo, created) = register_synthetic(repo, SYSID);
    assert!(created);
    test(&repo);
}

// Each guarantee holds on both drivers: a `local` and an `ssh` test per case.
on_both_backends!(with_synthetic_repo:
    push_then_get_round_trips_every_kind_and_codec,
    identical_repush_succeeds_and_conflicting_push_changes_nothing,
    truncated_foreign_and_zeroed_segments_are_refused,
    corrupted_archive_file_is_never_delivered,
    repository_files_0600_directories_0700,
    crash_between_temp_write_and_rename_leaves_nothing_visible,
);

fn write_segment(dir: &Path, name: &str, sysid: u64, seed: u64) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, segment_bytes(name, sysid, seed)).unwrap();
    p
}

fn push(repo: &RepoDir, path: &Path) -> assert_cmd::assert::Assert {
    Command::cargo_bin("wal-push")
        .unwrap()
        .args(repo.args())
        .arg(path)
        .assert()
}

fn get(repo: &RepoDir, name: &str, dest: &Path) -> assert_cmd::assert::Assert {
    Command::cargo_bin("wal-get")
        .unwrap()
        .args(repo.args())
        .arg(name)
        .arg(dest)
        .assert()
}

fn push_then_get_round_trips_every_kind_and_codec(repo: &RepoDir) {
    let src = TestDir::new();
    let out = TestDir::new();
    let seg = write_segment(src.path(), "000000010000000000000005", SYSID, 1);
    push(repo, &seg).success().stdout("").stderr("");
    let hist = src.join("00000002.history");
    fs::write(&hist, "1\t0/5000000\tno recovery target specified\n").unwrap();
    push(repo, &hist).success();
    let backup = src.join("000000010000000000000005.00000028.backup");
    fs::write(&backup, "START WAL LOCATION: 0/5000028\n").unwrap();
    push(repo, &backup).success();
    for (name, orig) in [
        ("000000010000000000000005", &seg),
        ("00000002.history", &hist),
        ("000000010000000000000005.00000028.backup", &backup),
    ] {
        let dest = out.join("RECOVERYXLOG");
        get(repo, name, &dest).success();
        assert_eq!(fs::read(&dest).unwrap(), fs::read(orig).unwrap(), "{name}");
        fs::remove_file(&dest).unwrap();
    }
    // Stored under <name>-<sha256>.<ext>, segments in a 16-hex subdirectory.
    let files = repo.wal_files();
    assert_eq!(files.len(), 3, "{files:?}");
    assert!(files.iter().any(
        |f| f.starts_with("0000000100000000/000000010000000000000005-") && f.ends_with(".zst")
    ));
    assert!(files.iter().any(|f| f.starts_with("00000002.history-")));
    // The name carries the SHA-256 of the original bytes (sha256sum can check it).
    let stored = files
        .iter()
        .find(|f| f.contains("000000010000000000000005-"))
        .unwrap();
    let sha = &stored.rsplit_once('-').unwrap().1[..64];
    let want = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(fs::read(&seg).unwrap()))
    };
    assert_eq!(sha, want);

    for algo in ["lz4", "gzip", "none"] {
        let name = match algo {
            "lz4" => "000000010000000000000006",
            "gzip" => "000000010000000000000007",
            _ => "000000010000000000000008",
        };
        let p = write_segment(src.path(), name, SYSID, 9);
        Command::cargo_bin("wal-push")
            .unwrap()
            .args(repo.args())
            .args(["--compression", algo])
            .arg(&p)
            .assert()
            .success();
        let dest = out.join(name);
        get(repo, name, &dest).success();
        assert_eq!(fs::read(&dest).unwrap(), fs::read(&p).unwrap(), "{algo}");
    }
}

fn identical_repush_succeeds_and_conflicting_push_changes_nothing(repo: &RepoDir) {
    let src = TestDir::new();
    let name = "000000010000000000000010";
    let p = write_segment(src.path(), name, SYSID, 1);
    push(repo, &p).success();
    let before = repo.wal_files();
    // PostgreSQL re-archives after a crash: same bytes must exit 0.
    push(repo, &p).success();
    assert_eq!(repo.wal_files(), before);
    // Different bytes under the same name: exit 1, nothing changes.
    write_segment(src.path(), name, SYSID, 2);
    push(repo, &p)
        .code(1)
        .stderr(predicates::str::contains("different content"));
    assert_eq!(repo.wal_files(), before);
    // The same holds for timeline history files.
    let h = src.join("00000003.history");
    fs::write(&h, "2\t0/9000000\tbefore 2026\n").unwrap();
    push(repo, &h).success();
    push(repo, &h).success();
    fs::write(&h, "2\t0/A000000\tsomething else\n").unwrap();
    push(repo, &h).code(1);
    let out = TestDir::new();
    get(repo, "00000003.history", &out.join("h")).success();
    assert!(fs::read_to_string(out.join("h"))
        .unwrap()
        .contains("before 2026"));
}

fn truncated_foreign_and_zeroed_segments_are_refused(repo: &RepoDir) {
    let src = TestDir::new();
    // Truncated: right header, short file.
    let p = write_segment(src.path(), "000000010000000000000020", SYSID, 1);
    let mut b = fs::read(&p).unwrap();
    b.truncate(b.len() / 2);
    fs::write(&p, &b).unwrap();
    push(repo, &p)
        .code(1)
        .stderr(predicates::str::contains("segment size"));
    // Another cluster's segment.
    let f = write_segment(src.path(), "000000010000000000000021", SYSID + 1, 1);
    push(repo, &f)
        .code(1)
        .stderr(predicates::str::contains("database system"));
    // A recycled/zero-filled file.
    let z = src.join("000000010000000000000022");
    fs::write(&z, vec![0u8; SEG as usize]).unwrap();
    push(repo, &z).code(1);
    // A segment renamed to the wrong number.
    let r = src.join("000000010000000000000023");
    fs::write(&r, segment_bytes("000000010000000000000024", SYSID, 1)).unwrap();
    push(repo, &r)
        .code(1)
        .stderr(predicates::str::contains("page address"));
    assert!(repo.wal_files().is_empty());
}

fn corrupted_archive_file_is_never_delivered(repo: &RepoDir) {
    for (algo, name) in [
        ("zstd", "000000010000000000000030"),
        ("none", "000000010000000000000031"),
    ] {
        let src = TestDir::new();
        let p = write_segment(src.path(), name, SYSID, 3);
        Command::cargo_bin("wal-push")
            .unwrap()
            .args(repo.args())
            .args(["--compression", algo])
            .arg(&p)
            .assert()
            .success();
        let stored = repo
            .path
            .join("main/wal")
            .join(repo.wal_files().iter().find(|f| f.contains(name)).unwrap());
        let mut bytes = fs::read(&stored).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x55;
        fs::write(&stored, &bytes).unwrap();
        let out = TestDir::new();
        let dest = out.join("RECOVERYXLOG");
        let assert = get(repo, name, &dest);
        let code = assert.get_output().status.code().unwrap();
        assert!(
            code > 125,
            "{algo}: wal-get exited {code} on a corrupt file"
        );
        assert!(
            !dest.exists(),
            "{algo}: corrupt data reached the destination"
        );
        // Nothing else left behind in the destination directory either.
        assert_eq!(fs::read_dir(out.path()).unwrap().count(), 0);
        // A standby logs and exits 1 so it keeps retrying.
        Command::cargo_bin("wal-get")
            .unwrap()
            .args(repo.args())
            .arg("--standby")
            .arg(name)
            .arg(&dest)
            .assert()
            .code(1)
            .stderr(predicates::str::contains("corrupt"));
        assert!(!dest.exists());
    }
}

#[test]
fn wal_get_exit_codes() {
    let repo = synthetic_repo();
    let out = TestDir::new();
    let dest = out.join("x");
    // Not archived (normal at the end of recovery): exactly 1.
    get(&repo, "000000010000000000000099", &dest).code(1);
    get(&repo, "00000005.history", &dest).code(1);
    // Bad name, usage error, missing repository, unknown server: above 125.
    for args in [
        vec!["../../etc/passwd".to_string(), dest.display().to_string()],
        vec!["only-one-arg".to_string()],
        vec!["--no-such-flag".to_string()],
    ] {
        let a = Command::cargo_bin("wal-get")
            .unwrap()
            .args(repo.args())
            .args(&args)
            .assert();
        let code = a.get_output().status.code().unwrap();
        assert!(code > 125, "{args:?} exited {code}");
    }
    let a = Command::cargo_bin("wal-get")
        .unwrap()
        .args(["--repo", "/nonexistent/repo", "--server", "main"])
        .arg("000000010000000000000001")
        .arg(&dest)
        .assert();
    assert!(a.get_output().status.code().unwrap() > 125);
    let a = Command::cargo_bin("wal-get")
        .unwrap()
        .args([
            "--repo",
            &repo.path.display().to_string(),
            "--server",
            "other",
        ])
        .arg("000000010000000000000001")
        .arg(&dest)
        .assert();
    // An unregistered server is a configuration error, not "not found".
    assert!(a.get_output().status.code().unwrap() > 125);
    // --help is fine.
    Command::cargo_bin("wal-get")
        .unwrap()
        .arg("--help")
        .assert()
        .success();
    assert!(!dest.exists());
}

#[test]
fn path_like_names_never_escape() {
    let repo = synthetic_repo();
    let src = TestDir::new();
    // A file whose base name is not a WAL name.
    let evil = src.join("..%2f..%2fevil");
    fs::write(&evil, b"x").unwrap();
    push(&repo, &evil)
        .code(1)
        .stderr(predicates::str::contains("not a WAL file name"));
    for server in ["../escape", "a/b", ".", ""] {
        let p = write_segment(src.path(), "000000010000000000000001", SYSID, 1);
        Command::cargo_bin("wal-push")
            .unwrap()
            .args([
                "--repo",
                &repo.path.display().to_string(),
                "--server",
                server,
            ])
            .arg(&p)
            .assert()
            .code(1)
            .stderr(predicates::str::contains("server name"));
        let a = Command::cargo_bin("wal-get")
            .unwrap()
            .args([
                "--repo",
                &repo.path.display().to_string(),
                "--server",
                server,
            ])
            .arg("000000010000000000000001")
            .arg(src.join("out"))
            .assert();
        assert!(a.get_output().status.code().unwrap() > 125);
    }
    assert!(!repo.dir.join("escape").exists());
    assert!(!repo.path.join("a").exists());
    // wal-push never exits above 1, even on usage errors (the archiver would die).
    for args in [vec!["--bogus"], vec![]] {
        let a = Command::cargo_bin("wal-push").unwrap().args(&args).assert();
        assert_eq!(a.get_output().status.code(), Some(1), "{args:?}");
    }
}

fn repository_files_0600_directories_0700(repo: &RepoDir) {
    let src = TestDir::new();
    push(
        repo,
        &write_segment(src.path(), "000000010000000000000040", SYSID, 1),
    )
    .success();
    fn check(p: &Path) {
        let m = fs::symlink_metadata(p).unwrap();
        let mode = m.permissions().mode() & 0o777;
        if m.is_dir() {
            assert_eq!(mode, 0o700, "{}", p.display());
            for e in fs::read_dir(p).unwrap() {
                check(&e.unwrap().path());
            }
        } else {
            assert_eq!(mode, 0o600, "{}", p.display());
        }
    }
    check(&repo.path);
}

fn crash_between_temp_write_and_rename_leaves_nothing_visible(repo: &RepoDir) {
    let src = TestDir::new();
    let name = "000000010000000000000050";
    let p = write_segment(src.path(), name, SYSID, 1);
    let a = Command::cargo_bin("wal-push")
        .unwrap()
        .args(repo.args())
        .env("PGCELLAR_TEST_FAULT", "crash-before-rename")
        .arg(&p)
        .assert();
    let status = a.get_output().status;
    assert!(!status.success(), "the fault hook did not fire");
    assert!(
        status.code().is_none(),
        "expected death by signal, got {status:?}"
    );
    // Only a temporary file may remain; the final name is not visible to readers.
    let files = repo.wal_files();
    assert!(
        files
            .iter()
            .all(|f| f.rsplit('/').next().unwrap().starts_with(".tmp-")),
        "{files:?}"
    );
    let out = TestDir::new();
    get(repo, name, &out.join("x")).code(1);
    // PostgreSQL retries: the retry stores it.
    push(repo, &p).success();
    get(repo, name, &out.join("x")).success();
    assert_eq!(fs::read(out.join("x")).unwrap(), fs::read(&p).unwrap());
}

#[test]
fn config_file_and_errors() {
    let repo = synthetic_repo();
    let dir = TestDir::new();
    let cfg = dir.join("pgcellar.toml");
    fs::write(
        &cfg,
        format!(
            "repo = '{}'\nserver = 'main'\ncompression = 'lz4'\n",
            repo.path.display()
        ),
    )
    .unwrap();
    let p = write_segment(dir.path(), "000000010000000000000060", SYSID, 1);
    Command::cargo_bin("wal-push")
        .unwrap()
        .arg("--config")
        .arg(&cfg)
        .arg(&p)
        .assert()
        .success();
    assert!(repo.wal_files()[0].ends_with(".lz4"));
    // Environment beats the file.
    let q = write_segment(dir.path(), "000000010000000000000061", SYSID, 1);
    Command::cargo_bin("wal-push")
        .unwrap()
        .env("PGCELLAR_CONFIG", &cfg)
        .env("PGCELLAR_COMPRESSION", "gzip")
        .arg(&q)
        .assert()
        .success();
    assert!(repo
        .wal_files()
        .iter()
        .any(|f| f.contains("061-") && f.ends_with(".gz")));
    // An unknown key names the key and the file.
    fs::write(&cfg, "repo = '/x'\ncompresion = 'lz4'\n").unwrap();
    Command::cargo_bin("wal-push")
        .unwrap()
        .arg("--config")
        .arg(&cfg)
        .arg(&p)
        .assert()
        .code(1)
        .stderr(predicates::str::contains("compresion"))
        .stderr(predicates::str::contains(cfg.display().to_string()));
    // Only one line on stderr, no backtrace.
    let a = Command::cargo_bin("wal-push")
        .unwrap()
        .args(["--repo", "/nonexistent/r", "--server", "main"])
        .arg(&p)
        .assert()
        .code(1);
    let err = String::from_utf8_lossy(&a.get_output().stderr).to_string();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("pgcellar init"), "{err}");
}

// ---------------------------------------------------------------------------
// Real PostgreSQL, each test on a local and on an ssh:// repository.

on_both_backends!(
    postgres_archives_pgbench_and_a_copy_recovers_to_the_last_row,
    init_refuses_another_cluster_under_the_same_name,
    default_16mib_segments_archive_and_recover,
);

/// Copy the cluster's archived state into a pg_basebackup copy, recover it through
/// wal-get, and return it running.
fn recover_copy(source: &Cluster, repo: &RepoDir) -> Cluster {
    let root = TestDir::new();
    let pgdata = root.join("pgdata");
    pg_basebackup(source, &pgdata);
    let copy = Cluster::adopt_restored(root, pgdata);
    copy.append_conf(&[
        "archive_mode = off".into(),
        format!("restore_command = '{}'", repo.restore_command()),
        "recovery_target_timeline = 'latest'".into(),
    ]);
    fs::write(copy.pgdata.join("recovery.signal"), "").unwrap();
    chown_postgres(&copy.pgdata.join("recovery.signal"));
    copy.start();
    copy.wait_for_promotion(Duration::from_secs(120));
    copy
}

fn postgres_archives_pgbench_and_a_copy_recovers_to_the_last_row(repo: &RepoDir) {
    let Some(pg) = Cluster::init(ClusterOpts {
        archive_command: Some(repo.archive_command()),
        ..Default::default()
    }) else {
        return;
    };
    repo.init_for(&pg);
    // Running init again is harmless.
    repo.init_for(&pg);
    pg.pgbench(&["-i", "-s", "2", "-q"]);
    pg.psql("CREATE TABLE marks (id int primary key, note text)");
    let base_root = TestDir::new();
    let base = base_root.join("pgdata");
    pg_basebackup(&pg, &base);
    pg.pgbench(&["-n", "-c", "2", "-j", "2", "-t", "400"]);
    pg.psql("INSERT INTO marks SELECT g, md5(g::text) FROM generate_series(1, 1000) g");
    pg.psql("INSERT INTO marks VALUES (1001, 'last committed row')");
    let last_seg = pg.switch_and_wait_archived();
    let (archived, failed) = pg.archiver_counts();
    assert!(archived >= 5, "only {archived} segments archived");
    assert_eq!(
        failed,
        0,
        "archive_command failed:\n{}",
        tail(&pg.log_text(), 40)
    );
    let files = repo.wal_files();
    assert!(
        files.iter().any(|f| f.contains(&last_seg)),
        "{last_seg} missing: {files:?}"
    );
    let accounts = pg.psql("SELECT sum(abalance) FROM pgbench_accounts");

    // Recover the earlier copy through wal-get.
    let copy = Cluster::adopt_restored(base_root, base);
    copy.append_conf(&[
        "archive_mode = off".into(),
        format!("restore_command = '{}'", repo.restore_command()),
    ]);
    fs::write(copy.pgdata.join("recovery.signal"), "").unwrap();
    chown_postgres(&copy.pgdata.join("recovery.signal"));
    copy.start();
    copy.wait_for_promotion(Duration::from_secs(120));
    assert_eq!(copy.psql("SELECT count(*) FROM marks"), "1001");
    assert_eq!(
        copy.psql("SELECT note FROM marks WHERE id = 1001"),
        "last committed row"
    );
    assert_eq!(
        copy.psql("SELECT sum(abalance) FROM pgbench_accounts"),
        accounts
    );
    assert!(
        copy.log_text().contains("restored log file"),
        "wal-get was not used"
    );
}

fn init_refuses_another_cluster_under_the_same_name(repo: &RepoDir) {
    let Some(a) = Cluster::init(ClusterOpts::default()) else {
        return;
    };
    let Some(b) = Cluster::init(ClusterOpts::default()) else {
        return;
    };
    repo.init_for(&a);
    let out = pg_command(bin("pgcellar"))
        .args(repo.args())
        .arg("--conninfo")
        .arg(b.conninfo())
        .arg("init")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refusing to mix clusters"), "{err}");
    // b's WAL is refused by the archive registered to a.
    b.psql("CREATE TABLE t AS SELECT 1");
    let seg = b.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    let out = pg_command(bin("wal-push"))
        .args(repo.args())
        .arg(b.pgdata.join("pg_wal").join(&seg))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("database system"));
}

/// PostgreSQL's default 16 MiB segments, end to end.
fn default_16mib_segments_archive_and_recover(repo: &RepoDir) {
    let Some(pg) = Cluster::init(ClusterOpts {
        wal_segsize_mb: 16,
        archive_command: Some(repo.archive_command()),
        ..Default::default()
    }) else {
        return;
    };
    repo.init_for(&pg);
    pg.psql("CREATE TABLE big (id int, pad text)");
    pg.psql("INSERT INTO big SELECT g, repeat(md5(g::text), 8) FROM generate_series(1, 60000) g");
    let start = Instant::now();
    pg.switch_and_wait_archived();
    let (archived, failed) = pg.archiver_counts();
    assert!(archived >= 1 && failed == 0, "{archived} {failed}");
    eprintln!("archived {archived} x 16 MiB in {:?}", start.elapsed());
    let copy = recover_copy(&pg, repo);
    assert_eq!(copy.psql("SELECT count(*) FROM big"), "60000");
}
