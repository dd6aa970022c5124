//! wal-push / wal-get / pgcellar init: the archive hooks PostgreSQL calls.
//!
//! The first half uses synthetic segments (a correct long page header, random body)
//! so that each guarantee of DESIGN.md §2 is checked in isolation; the second half
//! runs a real PostgreSQL with `archive_command`/`restore_command` set to the binaries.
//! The guarantee tests and the PostgreSQL tests run on every backend, as
//! `<name>::local`, `<name>::ssh` (a real sshd on loopback) and `<name>::s3` (a real
//! Garage on loopback); the exit-code, name-validation and
//! configuration tests use a local repository only.

use crate::common::synthetic::*;
use crate::common::*;
use assert_cmd::Command;
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
on_all_backends!(with_synthetic_repo:
    push_then_get_round_trips_every_kind_and_codec,
    identical_repush_succeeds_and_conflicting_push_changes_nothing,
    truncated_foreign_and_zeroed_segments_are_refused,
    corrupted_archive_file_is_never_delivered,
    crash_between_temp_write_and_rename_leaves_nothing_visible,
    racing_pushes_of_different_content_acknowledge_at_most_one,
    racing_pushes_of_identical_content_all_succeed_with_one_copy,
    kill_9_of_wal_push_never_leaves_a_torn_or_second_copy,
);
// File modes are a filesystem's; an object store has none.
on_both_backends!(with_synthetic_repo: repository_files_0600_directories_0700);

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
        let stored = format!(
            "main/wal/{}",
            repo.wal_files().iter().find(|f| f.contains(name)).unwrap()
        );
        let mut bytes = repo.read_stored(&stored);
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x55;
        repo.write_stored(&stored, &bytes);
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

on_all_backends!(
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
    recover_to_the_last_row(base_root, base, &repo.restore_command(), &accounts);
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

// ---------------------------------------------------------------------------
// Races and kills (issue 10, item 11 and the fault tests)

/// A `wal-push` of `path` into `repo`, started and not waited for.
fn spawn_push(repo: &RepoDir, path: &Path) -> std::process::Child {
    std::process::Command::new(assert_cmd::cargo::cargo_bin("wal-push"))
        .args(repo.args())
        .arg(path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn wal-push")
}

/// Start `n` pushes as close together as possible and return (exit code, stderr)
/// of each, in order.
fn race(repo: &RepoDir, paths: &[PathBuf]) -> Vec<(i32, String)> {
    let children: Vec<_> = paths.iter().map(|p| spawn_push(repo, p)).collect();
    children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().expect("wait wal-push");
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(
                !err.contains("panicked") && !err.contains("internal error"),
                "{err}"
            );
            (out.status.code().expect("wal-push killed by a signal"), err)
        })
        .collect()
}

/// Stored (non-temporary) copies of `name`, as repository-relative file names.
fn stored_copies(repo: &RepoDir, name: &str) -> Vec<String> {
    repo.wal_files()
        .into_iter()
        .filter(|f| {
            let base = f.rsplit('/').next().unwrap();
            !base.starts_with(".tmp-") && base.starts_with(&format!("{name}-"))
        })
        .collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Every file under the server's `wal/` that is not a temporary name decodes to the
/// SHA-256 its name carries (no torn file under a final name), and no WAL name has
/// two copies.
fn assert_archive_whole(repo: &RepoDir) {
    let mut names = std::collections::HashMap::new();
    for f in repo.wal_files() {
        let base = f.rsplit('/').next().unwrap().to_string();
        if base.starts_with(".tmp-") {
            continue;
        }
        let (name, sha, compression) = pgcellar::archive::parse_stored_name(&base)
            .unwrap_or_else(|| panic!("{f}: not a stored WAL name"));
        let stored = repo.read_stored(&format!("{}/wal/{f}", repo.server));
        let mut input = stored.as_slice();
        let mut out = Vec::new();
        let stats = pgcellar::codec::decode(&Default::default(), &mut input, &mut out, compression)
            .unwrap_or_else(|e| panic!("{f} is torn: {e}"));
        assert_eq!(stats.sha256, sha, "{f} does not hash to its name");
        assert_eq!(sha256_hex(&out), sha, "{f}");
        *names.entry(name.to_string()).or_insert(0) += 1;
    }
    for (name, n) in names {
        assert_eq!(n, 1, "{name} is stored {n} times: {:?}", repo.wal_files());
    }
}

fn racing_pushes_of_different_content_acknowledge_at_most_one(repo: &RepoDir) {
    let src = TestDir::new();
    let out = TestDir::new();
    let mut stats = (0, 0); // rounds with a winner, rounds without
    for round in 0..12u32 {
        let n = 2 + (round % 3) as usize; // 2, 3, 4 processes
        let name = format!("0000000100000000000001{round:02X}");
        let base = segment_bytes(&name, SYSID, 7);
        let contents: Vec<Vec<u8>> = (0..n)
            .map(|i| {
                // Each differs by one byte of the body; every header is valid.
                let mut b = base.clone();
                b[4096 + i] ^= 0x5A;
                b
            })
            .collect();
        let paths: Vec<PathBuf> = contents
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let d = src.join(format!("{round}-{i}"));
                fs::create_dir_all(&d).unwrap();
                let p = d.join(&name);
                fs::write(&p, c).unwrap();
                p
            })
            .collect();
        let results = race(repo, &paths);
        for (code, err) in &results {
            assert!(*code == 0 || *code == 1, "exit {code}: {err}");
        }
        let winners: Vec<usize> = (0..n).filter(|&i| results[i].0 == 0).collect();
        assert!(
            winners.len() <= 1,
            "round {round}: {} pushes of different content were acknowledged: {results:?}",
            winners.len()
        );
        let copies = stored_copies(repo, &name);
        let dest = out.join(format!("got-{round}"));
        if let Some(&w) = winners.first() {
            stats.0 += 1;
            assert_eq!(
                copies,
                vec![format!(
                    "{}/{name}-{}.zst",
                    &name[..16],
                    sha256_hex(&contents[w])
                )],
                "round {round}: acknowledged push {w} is not the only copy"
            );
            get(repo, &name, &dest).success();
            assert_eq!(fs::read(&dest).unwrap(), contents[w], "round {round}");
        } else {
            stats.1 += 1;
            // Nothing acknowledged: PostgreSQL retries, and a retry must get through.
            let mut ok = false;
            for _ in 0..5 {
                if push(repo, &paths[0]).get_output().status.success() {
                    ok = true;
                    break;
                }
            }
            assert!(ok, "round {round}: a re-push never succeeded: {copies:?}");
            get(repo, &name, &dest).success();
            assert_eq!(fs::read(&dest).unwrap(), contents[0], "round {round}");
        }
        assert_archive_whole(repo);
    }
    eprintln!(
        "rounds with an acknowledged push: {}, without: {}",
        stats.0, stats.1
    );
}

fn racing_pushes_of_identical_content_all_succeed_with_one_copy(repo: &RepoDir) {
    let src = TestDir::new();
    let out = TestDir::new();
    for round in 0..6u32 {
        let n = 2 + (round % 3) as usize;
        let name = format!("0000000100000000000002{round:02X}");
        let bytes = segment_bytes(&name, SYSID, 3);
        let paths: Vec<PathBuf> = (0..n)
            .map(|i| {
                let d = src.join(format!("{round}-{i}"));
                fs::create_dir_all(&d).unwrap();
                let p = d.join(&name);
                fs::write(&p, &bytes).unwrap();
                p
            })
            .collect();
        let results = race(repo, &paths);
        assert!(
            results.iter().all(|(c, _)| *c == 0),
            "round {round}: {results:?}"
        );
        assert_eq!(stored_copies(repo, &name).len(), 1, "round {round}");
        let dest = out.join(format!("got-{round}"));
        get(repo, &name, &dest).success();
        assert_eq!(fs::read(&dest).unwrap(), bytes);
    }
    assert_archive_whole(repo);
}

fn kill_9_of_wal_push_never_leaves_a_torn_or_second_copy(repo: &RepoDir) {
    let src = TestDir::new();
    let out = TestDir::new();
    // A small LCG seeded from the clock: random moments, reproducible from the log.
    let mut x = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("kill -9 seed {x}");
    let mut killed = 0;
    for round in 0..20u32 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let delay = Duration::from_micros((x >> 33) % 50_000);
        let name = format!("0000000100000000000003{round:02X}");
        let p = write_segment(src.path(), &name, SYSID, u64::from(round));
        let mut child = spawn_push(repo, &p);
        std::thread::sleep(delay);
        if child.try_wait().unwrap().is_none() {
            killed += 1;
        }
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        assert_archive_whole(repo);
        // PostgreSQL retries the same file: it must succeed and read back identically.
        push(repo, &p).success();
        assert_eq!(stored_copies(repo, &name).len(), 1);
        let dest = out.join(format!("got-{round}"));
        get(repo, &name, &dest).success();
        assert_eq!(fs::read(&dest).unwrap(), fs::read(&p).unwrap());
        assert_archive_whole(repo);
    }
    eprintln!("{killed} of 20 pushes were killed mid-way");
    assert!(killed > 0, "no push was still running when killed");
}

// ---------------------------------------------------------------------------
// Hostile repository files (issue 10, items 5 and 13)

/// Damaged versions of a JSON file whose good form is `good`: the values of
/// `field` in `bad_values`, plus garbage, truncated, empty, 10 MB and wrong types.
fn damaged_versions(good: &str, field: &str, bad_values: &[&str]) -> Vec<(String, Vec<u8>)> {
    let v: serde_json::Value = serde_json::from_str(good).unwrap();
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    for bad in bad_values {
        let mut d = v.clone();
        d[field] = serde_json::from_str(bad).unwrap();
        out.push((
            format!("{field}={bad}"),
            serde_json::to_vec_pretty(&d).unwrap(),
        ));
    }
    out.push(("garbage".into(), b"\x00\xffnot json at all\n".to_vec()));
    out.push((
        "truncated".into(),
        good.as_bytes()[..good.len() / 2].to_vec(),
    ));
    out.push(("empty".into(), Vec::new()));
    out.push(("array".into(), b"[1, 2, 3]\n".to_vec()));
    let mut big = b"{\"pad\": \"".to_vec();
    big.resize(10 << 20, b'x');
    big.extend_from_slice(b"\"}");
    out.push(("10 MB".into(), big));
    // Every field of the wrong type, one at a time.
    for (k, val) in v.as_object().unwrap() {
        let mut d = v.clone();
        d[k] = if val.is_string() {
            serde_json::json!([1])
        } else {
            serde_json::json!("a string")
        };
        out.push((
            format!("{k} of the wrong type"),
            serde_json::to_vec(&d).unwrap(),
        ));
    }
    out
}

/// Run `bin args` and check the verdict: exit code `want` (or any non-panic code
/// when `None`), and a failure says one clear line naming `file`, never a panic.
fn assert_clean_failure(what: &str, bin: &str, args: &[String], want: Option<i32>, file: &str) {
    let a = Command::cargo_bin(bin)
        .unwrap()
        .args(args)
        .timeout(Duration::from_secs(60))
        .assert();
    let o = a.get_output();
    let err = String::from_utf8_lossy(&o.stderr);
    let code = o
        .status
        .code()
        .unwrap_or_else(|| panic!("{what}: {bin} {args:?} killed: {err}"));
    assert!(
        !err.contains("panicked")
            && !err.contains("internal error")
            && !err.contains("RUST_BACKTRACE"),
        "{what}: {bin} {args:?}: {err}"
    );
    if let Some(want) = want {
        assert_eq!(code, want, "{what}: {bin} {args:?}: {err}");
    }
    assert!(
        code != 101 && code != 134,
        "{what}: {bin} {args:?} exited {code}: {err}"
    );
    if code != 0 {
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        if lines.is_empty() {
            // A report (verify) that lists the problem on stdout instead.
            let report = String::from_utf8_lossy(&o.stdout);
            assert!(
                report.contains(file),
                "{what}: {bin} {args:?}: silent failure: {report}"
            );
            return;
        }
        assert_eq!(
            lines.len(),
            1,
            "{what}: {bin} {args:?}: not one line: {err}"
        );
        assert!(
            lines[0].contains(file),
            "{what}: {bin} {args:?}: does not name {file}: {err}"
        );
        assert!(
            lines[0].len() < 1000,
            "{what}: {bin} {args:?}: line too long: {err}"
        );
    }
}

/// The catalog commands, wal-push and wal-get against a repository with `path`
/// (relative to the repository root) replaced by each damaged version.
fn every_command_fails_cleanly(repo: &RepoDir, rel: &str, versions: Vec<(String, Vec<u8>)>) {
    let file = rel.rsplit('/').next().unwrap();
    let src = TestDir::new();
    let seg = write_segment(src.path(), "000000010000000000000070", SYSID, 1);
    let dest = src.join("dest");
    let target = repo.path.join(rel);
    let good = fs::read(&target).unwrap();
    let a = |extra: &[&str]| -> Vec<String> {
        let mut v = repo.args();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    for (what, bytes) in versions {
        fs::write(&target, &bytes).unwrap();
        for sub in [
            &["servers"][..],
            &["list"],
            &["show", "latest"],
            &["verify", "--all"],
            // No PostgreSQL needed: the repository rows report the damage.
            &["--conninfo", "host=/nonexistent", "check"],
        ] {
            assert_clean_failure(&what, "pgcellar", &a(sub), None, file);
        }
        assert_clean_failure(
            &what,
            "wal-push",
            &a(&[&seg.display().to_string()]),
            Some(1),
            file,
        );
        assert_clean_failure(
            &what,
            "wal-get",
            &a(&["000000010000000000000070", &dest.display().to_string()]),
            Some(126),
            file,
        );
        assert!(!dest.exists(), "{what}");
    }
    fs::write(&target, good).unwrap();
    // The undamaged file works again.
    push(repo, &seg).success();
}

#[test]
fn damaged_server_json_is_one_clear_error_never_a_panic() {
    let repo = synthetic_repo();
    let good = fs::read_to_string(repo.path.join("main/server.json")).unwrap();
    let versions = damaged_versions(
        &good,
        "wal_segment_size",
        &[
            "0",
            "4611686018427387904",
            "3145728",
            "1",
            "-16",
            "1.5",
            "null",
        ],
    );
    every_command_fails_cleanly(&repo, "main/server.json", versions);
    // The other fields a reader computes with.
    let mut more = damaged_versions(&good, "block_size", &["0", "3000"]);
    more.truncate(2);
    let mut sysid = damaged_versions(&good, "system_identifier", &["\"abc\"", "\"-1\""]);
    sysid.truncate(2);
    more.extend(sysid);
    every_command_fails_cleanly(&repo, "main/server.json", more);
}

#[test]
fn damaged_root_file_is_one_clear_error_never_a_panic() {
    let repo = synthetic_repo();
    let good = fs::read_to_string(repo.path.join("pgcellar.json")).unwrap();
    let versions = damaged_versions(&good, "format", &["0", "1", "99", "-1", "4294967296"]);
    every_command_fails_cleanly(&repo, "pgcellar.json", versions);
}

#[test]
fn a_format_1_repository_is_refused_in_one_line_naming_the_format() {
    let repo = synthetic_repo();
    let root = repo.path.join("pgcellar.json");
    let good = fs::read_to_string(&root).unwrap();
    let v1 = good.replace("\"format\": 2", "\"format\": 1");
    assert_ne!(v1, good, "{good}");
    fs::write(&root, v1).unwrap();
    let mut args = repo.args();
    args.push("list".into());
    let o = Command::cargo_bin("pgcellar")
        .unwrap()
        .args(&args)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("format 1")
            && err.contains("reads only format 2")
            && err.contains("pgcellar init"),
        "{err}"
    );
}

#[test]
fn damaged_backup_manifest_never_panics() {
    let repo = synthetic_repo();
    let id = "20261123T184500Z";
    let dir = repo.path.join("main/backups").join(id);
    fs::create_dir_all(&dir).unwrap();
    // A plausible manifest, then each damaged version of it.
    let good = serde_json::json!({
        "format": 2, "id": id, "label": "x", "status": "done", "parent": null,
        "server": "main", "pg_version_num": 150018, "system_identifier": SYSID.to_string(),
        "wal_segment_size": SEG, "timeline": 1, "start_lsn": "0/2000028", "stop_lsn": "0/2000100",
        "start_wal": "000000010000000000000002", "stop_wal": "000000010000000000000002",
        "start_time": "2026-11-23T18:45:00Z", "stop_time": "2026-11-23T18:45:05Z",
        "backup_label": "", "tablespace_map": "", "tablespaces": [], "compression": "zstd",
        "compression_level": 3,
        "totals": {"files": 0, "size": 0, "stored_size": 0, "reused_files": 0,
                   "reused_stored_size": 0, "copied_files": 0, "copied_stored_size": 0},
        "directories": [], "files": [], "created_by": "test"
    })
    .to_string();
    let mut versions = damaged_versions(
        &good,
        "start_wal",
        &[
            "\"\"",
            "\"../../x\"",
            "\"é000000100000000000000002\"",
            "\"00000001\"",
        ],
    );
    versions.extend(
        damaged_versions(&good, "wal_segment_size", &["0", "4611686018427387904"])
            .into_iter()
            .take(2),
    );
    versions.extend(
        damaged_versions(&good, "start_lsn", &["\"x\"", "\"FFFFFFFF/FFFFFFFF\""])
            .into_iter()
            .take(2),
    );
    versions.extend(
        damaged_versions(&good, "timeline", &["0", "4294967295"])
            .into_iter()
            .take(2),
    );
    let target = dir.join("backup.json");
    let restore_root = TestDir::new();
    for (i, (what, bytes)) in versions.into_iter().enumerate() {
        fs::write(&target, &bytes).unwrap();
        let a = |extra: &[&str]| -> Vec<String> {
            let mut v = repo.args();
            v.extend(extra.iter().map(|s| s.to_string()));
            v
        };
        for sub in [
            &["list"][..],
            &["show", id],
            &["show", "latest"],
            &["verify", "--all"],
            &["verify", id],
        ] {
            assert_clean_failure(&what, "pgcellar", &a(sub), None, id);
        }
        let dest = restore_root.join(format!("r{i}"));
        // restore may fail for a reason of its own (this manifest lists no files at
        // all), so its line need not name the backup; it must still be one line.
        assert_clean_failure(
            &what,
            "restore",
            &a(&["--backup", id, &dest.display().to_string()]),
            None,
            "",
        );
    }
}

#[test]
fn expire_ignores_wal_directories_with_multibyte_names() {
    let repo = synthetic_repo();
    // 16 bytes, but byte 8 falls inside 'é': slicing it at 8 used to panic.
    let odd = repo.path.join("main/wal/0000000é0000000");
    fs::create_dir_all(&odd).unwrap();
    let a = Command::cargo_bin("pgcellar")
        .unwrap()
        .args(repo.args())
        .args(["expire", "--retention", "REDUNDANCY 1"])
        .assert();
    let err = String::from_utf8_lossy(&a.get_output().stderr).into_owned();
    assert!(
        !err.contains("panicked") && !err.contains("internal error"),
        "{err}"
    );
    a.success();
    assert!(
        odd.exists(),
        "a directory that is not pgcellar's was removed"
    );
}
