//! What a backup shows while it runs: on a terminal (a pseudo-terminal made by
//! util-linux `script`), to another process (the status object in the repository),
//! and under cron (nothing but the id, and not even that with --quiet).

use crate::backup_restore::base_backup;
use crate::common::*;
use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// One shell word.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn backup_args(repo: &RepoDir, c: &Cluster, extra: &[&str]) -> Vec<String> {
    let mut a = repo.args();
    a.extend(["--pgdata".into(), c.pgdata.display().to_string()]);
    a.extend(["--conninfo".into(), c.conninfo()]);
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// On a terminal the clock runs while nothing moves, and a wait for WAL says which
/// segment it waits for and what pg_stat_archiver reports.
#[test]
fn on_a_terminal_the_clock_runs_and_a_wal_wait_says_what_it_waits_for() {
    let repo = RepoDir::new();
    let Some(c) = repo.archiving_cluster() else {
        return;
    };
    base_backup(&repo, &c, &[]);
    // Archiving breaks: the backup's stop segment never arrives, and the archiver's
    // failures end the wait after a few seconds.
    c.psql("ALTER SYSTEM SET archive_command = 'false'");
    c.psql("SELECT pg_reload_conf()");
    let line = std::iter::once(bin("base-backup").display().to_string())
        .chain(backup_args(&repo, &c, &["--backup-wal-timeout", "60"]))
        .map(|a| quote(&a))
        .collect::<Vec<_>>()
        .join(" ");
    let started = Instant::now();
    // A wide terminal, so that the whole line is drawn (a narrow one cuts its end).
    let line = format!("stty rows 50 cols 400; {line}");
    let out = pg_command("script")
        .args(["-qefc", &line, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .expect("spawn script");
    let screen = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{screen}");
    assert!(started.elapsed() < Duration::from_secs(50), "{screen}");
    assert!(screen.contains("cannot be archived"), "{screen}");
    assert!(screen.contains("waiting for WAL segment"), "{screen}");
    assert!(screen.contains("pg_stat_archiver: "), "{screen}");
    assert!(screen.contains("failures, the last for"), "{screen}");
    assert!(screen.contains(" files; "), "no copy line: {screen}");
    // The elapsed clock took at least two values: it runs while the backup waits.
    let clocks: BTreeSet<&str> = screen
        .match_indices("00:00:")
        .filter_map(|(i, _)| screen.get(i..i + 8))
        .collect();
    assert!(
        clocks.len() >= 2,
        "the clock did not run: {clocks:?} in {screen}"
    );
}

// A running backup publishes its phase in the repository for `pgcellar info`
// elsewhere, and removes it when done; without a terminal nothing is drawn.
on_all_backends!(a_running_backup_publishes_its_status_and_removes_it_when_done);

fn a_running_backup_publishes_its_status_and_removes_it_when_done(repo: &RepoDir) {
    let Some(c) = repo.archiving_cluster() else {
        return;
    };
    // Read through the storage, so SSH and S3 repositories are looked at as they are.
    let storage = repo.storage();
    let status = format!("{}/locks/backup-status.json", repo.server);
    let lock_file = format!("{}/locks/server.lock", repo.server);
    let child = pg_command(bin("base-backup"))
        .args(backup_args(repo, &c, &[]))
        .env("PGCELLAR_TEST_FAULT", "pause-after-backup-start")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn base-backup");
    let deadline = Instant::now() + Duration::from_secs(30);
    let seen = loop {
        if let Ok(bytes) = storage.read_all(&status) {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) {
                break v;
            }
        }
        assert!(Instant::now() < deadline, "no status object at {status}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(seen["phase"], "starting", "{seen}");
    let lock = storage
        .read_all(&lock_file)
        .expect("the server lock is held");
    let lock: serde_json::Value = serde_json::from_slice(&lock).expect("lock json");
    assert_eq!(seen["lock_token"], lock["token"], "{seen}");
    let out = child.wait_with_output().expect("wait for base-backup");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(seen["id"], id.as_str(), "{seen}");
    assert!(
        storage
            .stat(&status)
            .expect("stat the status object")
            .is_none(),
        "the status object outlived its backup"
    );
    assert!(
        !err.contains('\r') && !err.contains('\u{1b}'),
        "drawn off a terminal: {err:?}"
    );
}

/// `--quiet` silences stdout too (cron mails any output); `--print-id` brings the id
/// back, alone.
#[test]
fn quiet_prints_nothing_and_print_id_only_the_id() {
    let repo = RepoDir::new();
    let Some(c) = repo.archiving_cluster() else {
        return;
    };
    let quiet = run_ok(pg_command(bin("base-backup")).args(backup_args(&repo, &c, &["--quiet"])));
    assert!(
        quiet.stdout.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&quiet.stdout)
    );
    assert!(
        quiet.stderr.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&quiet.stderr)
    );
    let with_id =
        run_ok(pg_command(bin("base-backup")).args(backup_args(&repo, &c, &["-q", "--print-id"])));
    let id = String::from_utf8_lossy(&with_id.stdout).into_owned();
    assert_eq!(id.trim().len(), 16, "{id:?}");
    assert_eq!(id.lines().count(), 1, "{id:?}");
    assert!(with_id.stderr.is_empty());
    let ids = repo.pgcellar(&["list", "--json"]);
    assert!(
        String::from_utf8_lossy(&ids.stdout).contains(id.trim()),
        "the printed id is not a backup"
    );
}
