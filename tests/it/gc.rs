//! Format 2's shared objects against a real PostgreSQL, on both backends: deletion
//! keeps every object a remaining backup names and removes the rest (also when a
//! sweep is killed part-way, and beside a running base-backup), a corrupt object is
//! caught by verify, restore and `pgcellar cat` and named with every backup it
//! breaks, and `cat` writes a backup's file.

use crate::common::*;
use pgcellar::repo::manifest::Manifest;
use serde_json::Value;
use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

on_all_backends!(killed_sweeps_and_a_concurrent_backup_never_lose_a_referenced_object);
// Damages objects on disk.
on_both_backends!(deletes_keep_every_referenced_object_and_corruption_is_never_delivered);

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn ok(repo: &RepoDir, args: &[&str]) -> String {
    let o = repo.pgcellar(args);
    assert!(o.status.success(), "pgcellar {args:?}: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn base_backup_cmd(repo: &RepoDir, c: &Cluster, extra: &[&str]) -> std::process::Command {
    let mut cmd = pg_command(bin("base-backup"));
    cmd.args(repo.args())
        .arg("--pgdata")
        .arg(&c.pgdata)
        .arg("--conninfo")
        .arg(c.conninfo())
        // Not -q: stdout carries the id only without it.
        .args(extra);
    cmd
}

fn base_backup(repo: &RepoDir, c: &Cluster) -> String {
    let out = run_ok(&mut base_backup_cmd(repo, c, &[]));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn manifest(repo: &RepoDir, id: &str) -> Manifest {
    crate::backup_restore::manifest(repo, id)
}

/// Ids of the complete backups, oldest first (through the storage API, so on any
/// backend).
fn complete_ids(repo: &RepoDir) -> Vec<String> {
    let s = repo.storage();
    let mut ids: Vec<String> = s
        .list("main/backups")
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.is_dir)
        .filter(|e| {
            s.stat(&format!("main/backups/{}/backup.json", e.name))
                .is_ok_and(|i| i.is_some())
        })
        .map(|e| e.name)
        .collect();
    ids.sort();
    ids
}

/// Repository paths of every object the complete backups name.
fn referenced(repo: &RepoDir) -> BTreeSet<String> {
    complete_ids(repo)
        .iter()
        .flat_map(|id| {
            manifest(repo, id)
                .files
                .iter()
                .flat_map(|f| f.all_objects().map(|o| o.path("main")).collect::<Vec<_>>())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Repository paths of the object files in `main/objects/<2 hex>/`.
fn stored_objects(repo: &RepoDir) -> BTreeSet<String> {
    let s = repo.storage();
    let mut out = BTreeSet::new();
    for d in s.list("main/objects").unwrap_or_default() {
        if !d.is_dir {
            continue;
        }
        for f in s
            .list(&format!("main/objects/{}", d.name))
            .unwrap_or_default()
        {
            out.insert(format!("main/objects/{}/{}", d.name, f.name));
        }
    }
    out
}

/// verify --all passes and every object a backup names is stored; with `exact`, no
/// other object is (nothing is running, so a sweep leaves nothing unreferenced).
fn consistent(repo: &RepoDir, exact: bool, when: &str) {
    let o = repo.pgcellar(&["verify", "--all"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{when}: verify --all: {}",
        text(&o)
    );
    let (refs, stored) = (referenced(repo), stored_objects(repo));
    let missing: Vec<_> = refs.difference(&stored).collect();
    assert!(
        missing.is_empty(),
        "{when}: referenced but gone: {missing:?}"
    );
    if exact {
        let extra: Vec<_> = stored.difference(&refs).collect();
        assert!(extra.is_empty(), "{when}: unreferenced but kept: {extra:?}");
    }
}

/// The row count of `t` and a checksum of `big`, to compare a restore with.
fn state(c: &Cluster) -> String {
    c.psql(
        "SELECT (SELECT count(*) FROM t) || ' ' || \
         (SELECT md5(string_agg(v, ',' ORDER BY id)) FROM big)",
    )
}

/// Restore `id` to its end (`--target-immediate`), start it and return its state.
fn restored_state(repo: &RepoDir, id: &str) -> String {
    let root = TestDir::new();
    let pgdata = root.join("pgdata");
    let mut r = pg_command(bin("restore"));
    r.args(repo.args())
        .args([
            "--backup",
            id,
            "--target-immediate",
            "--target-action",
            "promote",
        ])
        .arg(&pgdata);
    run_ok(&mut r);
    let rc = Cluster::adopt_restored(root, pgdata);
    rc.append_conf(&["archive_mode = off".to_string()]);
    rc.start();
    rc.wait_for_promotion(Duration::from_secs(120));
    state(&rc)
}

/// A cluster archiving into `repo` with `t` (counted rows) and `big` (10,000 rows of
/// md5 text, about 90 pages: a page-level file).
fn cluster_with_tables(repo: &RepoDir) -> Option<Cluster> {
    let c = repo.archiving_cluster()?;
    c.psql("CREATE TABLE t(i int)");
    c.psql("CREATE TABLE big(id int PRIMARY KEY, v text) WITH (fillfactor = 100)");
    c.psql(
        "INSERT INTO big SELECT g, md5(g::text) || md5((g * 7)::text) \
         FROM generate_series(1, 10000) g",
    );
    // Hint bits set now, so that reading the table later changes no page.
    c.psql("VACUUM FREEZE big");
    c.psql("CHECKPOINT");
    Some(c)
}

/// A few rows of `big` updated in place and new rows in `t`, checkpointed.
fn change(c: &Cluster, round: u32) {
    c.psql(&format!(
        "UPDATE big SET v = md5(v || '{round}') WHERE id % 2000 = {round}"
    ));
    c.psql(&format!("INSERT INTO t SELECT generate_series(1, {round})"));
    c.psql("CHECKPOINT");
}

/// Manifest path of `big`'s main fork.
fn big_path(c: &Cluster) -> String {
    format!("data/{}", c.psql("SELECT pg_relation_filepath('big')"))
}

fn flip_middle_byte(path: &Path) -> Vec<u8> {
    let original = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut bad = original.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x40;
    fs::write(path, bad).unwrap();
    original
}

/// The backups whose manifests name `object` (its repository path).
fn users_of(repo: &RepoDir, object: &str) -> Vec<String> {
    complete_ids(repo)
        .into_iter()
        .filter(|id| {
            manifest(repo, id)
                .files
                .iter()
                .any(|f| f.all_objects().any(|o| o.path("main") == object))
        })
        .collect()
}

/// `pgcellar cat` of `path` in backup `id`: (exit code, stdout bytes, stderr).
fn cat(repo: &RepoDir, id: &str, path: &str) -> (Option<i32>, Vec<u8>, String) {
    let o = repo.pgcellar(&["cat", id, path]);
    (
        o.status.code(),
        o.stdout,
        String::from_utf8_lossy(&o.stderr).to_string(),
    )
}

fn deletes_keep_every_referenced_object_and_corruption_is_never_delivered(repo: &RepoDir) {
    let Some(c) = cluster_with_tables(repo) else {
        return;
    };
    let big = big_path(&c);
    let mut backups: Vec<(String, String)> = Vec::new();
    for round in 1..=4 {
        if round > 1 {
            change(&c, round);
        }
        let id = base_backup(repo, &c);
        backups.push((id, state(&c)));
    }
    c.switch_and_wait_archived();
    let ids: Vec<String> = backups.iter().map(|(id, _)| id.clone()).collect();

    // The table's file in the second backup: the first one's base and one delta.
    let entry = |id: &str| {
        manifest(repo, id)
            .files
            .into_iter()
            .find(|f| f.path == big)
            .unwrap_or_else(|| panic!("{big} not in backup {id}"))
    };
    let (e1, e2, e4) = (entry(&ids[0]), entry(&ids[1]), entry(&ids[3]));
    assert!(e1.size >= 40 * 8192, "{e1:?}");
    assert_eq!(e1.objects.len(), 1, "{e1:?}");
    assert!(e1.pages.is_some(), "{e1:?}");
    assert_eq!(e2.objects.len(), 2, "{e2:?}");
    assert_eq!(e2.objects[0], e1.objects[0], "the base is shared");
    assert!(
        e2.added_size > 0 && e2.added_size < e1.stored_size / 2,
        "{e2:?}"
    );
    assert!(e4.objects.len() >= 2, "{e4:?}");
    consistent(repo, false, "after four backups");

    // pgcellar cat: the file as the manifest describes it, by either path form.
    let sha = |b: &[u8]| {
        pgcellar::codec::hash(&Default::default(), &[], &mut &b[..])
            .unwrap()
            .0
    };
    let control = manifest(repo, &ids[3])
        .files
        .into_iter()
        .find(|f| f.path == "data/global/pg_control")
        .unwrap();
    let (code, out, err) = cat(repo, "latest", "global/pg_control");
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.len(), 8192);
    assert_eq!(sha(&out), control.sha256);
    assert_eq!(err, "", "cat is silent on success");
    let (code, again, _) = cat(repo, &ids[3], "data/global/pg_control");
    assert_eq!((code, &again), (Some(0), &out));
    let (code, out, err) = cat(repo, &ids[1], &big);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.len() as u64, e2.size);
    assert_eq!(sha(&out), e2.sha256);
    let (code, out, err) = cat(repo, "oldest", "base/nonexistent");
    assert_eq!(code, Some(1));
    assert!(out.is_empty());
    assert!(
        err.contains("has no file") && err.lines().count() == 1,
        "{err}"
    );

    // Delete from the middle, then the oldest: after each, every remaining backup
    // verifies, every object it names is there and no other object is.
    ok(repo, &["delete", &ids[1]]);
    consistent(repo, true, "after deleting the second backup");
    ok(repo, &["delete", "oldest"]);
    assert_eq!(complete_ids(repo), ids[2..].to_vec());
    consistent(repo, true, "after deleting the oldest backup");
    // The table's base, written by the deleted first backup, is still named and kept.
    assert!(referenced(repo).contains(&e1.objects[0].path("main")));
    for (id, want) in &backups[2..] {
        assert_eq!(&restored_state(repo, id), want, "restore of {id}");
    }

    // One corrupt object at a time: deltas, the base of the delta file, a page-hash
    // object and a whole-file object. verify names the file and every backup the
    // object breaks, restore and cat refuse, nothing wrong is delivered. (A flipped
    // byte in an earlier delta may fall in a page a later delta replaces: the file
    // then rebuilds right, and may be delivered, having passed its SHA-256.)
    let latest = ids[3].clone();
    let m = manifest(repo, &latest);
    let delta_file = m.files.iter().find(|f| f.path == big).unwrap().clone();
    let whole = m
        .files
        .iter()
        .filter(|f| f.objects.len() == 1 && f.pages.is_none() && f.stored_size > 256)
        .max_by_key(|f| f.stored_size)
        .expect("a whole-file object")
        .clone();
    let last_delta = delta_file.objects.last().unwrap();
    let cases = [
        (
            "last delta",
            &delta_file,
            last_delta.path("main"),
            Needed::Yes,
        ),
        (
            "first delta",
            &delta_file,
            delta_file.objects[1].path("main"),
            Needed::Maybe,
        ),
        (
            "base",
            &delta_file,
            delta_file.objects[0].path("main"),
            Needed::Yes,
        ),
        (
            "page hashes",
            &delta_file,
            delta_file.pages.as_ref().unwrap().path("main"),
            Needed::No,
        ),
        (
            "whole file",
            &whole,
            whole.objects[0].path("main"),
            Needed::Yes,
        ),
    ];
    for (what, file, object, needed) in cases {
        let stored = repo.path.join(&object);
        let original = flip_middle_byte(&stored);
        let users = users_of(repo, &object);
        assert!(users.contains(&latest), "{what}: {users:?}");

        // verify of the latest backup alone names every backup the object breaks.
        let o = repo.pgcellar(&["verify", "--json"]);
        assert_eq!(o.status.code(), Some(1), "{what}: {}", text(&o));
        let v = json_document(&o.stdout);
        let p = v["backups"][0]["problems"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["subject"] == file.path.as_str())
            .unwrap_or_else(|| panic!("{what}: no problem for {}: {v}", file.path))
            .clone();
        assert_eq!(p["breaks"], serde_json::json!(users), "{what}: {p}");
        let kind = p["kind"].as_str().unwrap();
        assert!(
            ["checksum_mismatch", "file_unreadable"].contains(&kind),
            "{what}: {p}"
        );
        let human = repo.pgcellar(&["verify", "--all"]);
        assert_eq!(human.status.code(), Some(1));
        let human = text(&human);
        assert!(human.contains(&file.path), "{what}: {human}");
        for u in &users {
            assert!(
                human.contains(&format!("backup {u}: FAILED")),
                "{what}: {human}"
            );
            assert!(human.contains(u.as_str()), "{what}: {human}");
        }

        // restore: the file fails its check, and the directory cannot start.
        let root = TestDir::new();
        let dest = root.join("pgdata");
        let mut r = pg_command(bin("restore"));
        r.args(repo.args()).arg(&dest);
        let o = r.output().unwrap();
        let failed = o.status.code() == Some(1);
        if needed == Needed::Yes || (needed == Needed::Maybe && failed) {
            assert_eq!(o.status.code(), Some(1), "{what}: {}", text(&o));
            assert!(text(&o).contains("corrupt"), "{what}: {}", text(&o));
            assert!(
                !dest.join("global/pg_control").exists(),
                "{what}: a failed restore left global/pg_control"
            );
            let rc = Cluster::adopt_restored(root, dest);
            assert!(
                !rc.try_start(),
                "{what}: a failed restore's directory started"
            );
        } else {
            // Restoring never reads page hashes; every file restored passed its check.
            assert!(o.status.success(), "{what}: {}", text(&o));
        }

        // cat of the file: exit 1, saying the output is not the file; or, where the
        // damage does not reach the file, exactly the file.
        let (code, out, err) = cat(repo, &latest, &file.path);
        if needed == Needed::Yes || (needed == Needed::Maybe && code != Some(0)) {
            assert_eq!(code, Some(1), "{what}: {err}");
            assert!(err.contains("NOT"), "{what}: {err}");
            assert_eq!(err.lines().count(), 1, "{what}: {err}");
        } else {
            assert_eq!(code, Some(0), "{what}: {err}");
            assert_eq!(sha(&out), file.sha256, "{what}");
        }
        fs::write(&stored, original).unwrap();
    }
    consistent(repo, true, "after repairing the objects");

    // An object gone: verify says so for each backup that names it.
    let object = delta_file.objects[1].path("main");
    let stored = repo.path.join(&object);
    let original = fs::read(&stored).unwrap();
    fs::remove_file(&stored).unwrap();
    let o = repo.pgcellar(&["verify", "--all", "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let v = json_document(&o.stdout);
    let users = users_of(repo, &object);
    for r in v["backups"].as_array().unwrap() {
        let named = r["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["kind"] == "file_missing" && p["breaks"] == serde_json::json!(users));
        assert_eq!(
            named,
            users.contains(&r["id"].as_str().unwrap().to_string()),
            "{r}"
        );
    }
    fs::write(&stored, original).unwrap();
    chown_postgres(&stored);
    consistent(repo, true, "at the end");
}

/// Whether restoring a backup reads an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Needed {
    Yes,
    /// Only part of it may survive in the rebuilt file.
    Maybe,
    No,
}

/// `(command, pid)` of the holder of the server lock, if any.
fn lock_holder(repo: &RepoDir) -> Option<(String, u32)> {
    let bytes = repo.storage().read_all("main/locks/server.lock").ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    Some((
        v["command"].as_str()?.to_string(),
        v["pid"].as_u64()? as u32,
    ))
}

fn killed_sweeps_and_a_concurrent_backup_never_lose_a_referenced_object(repo: &RepoDir) {
    let Some(c) = cluster_with_tables(repo) else {
        return;
    };
    let mut round = 1;
    let mut backup = |c: &Cluster| {
        round += 1;
        change(c, round);
        // A new table each time: files only this backup stores.
        c.psql(&format!(
            "CREATE TABLE r{round} AS SELECT generate_series(1, 100) i"
        ));
        base_backup(repo, c)
    };
    backup(&c);

    // kill -9 at points of a sweep: after its mark (N = 0) and after N removals.
    for n in [0u64, 1, 3] {
        backup(&c);
        let before = stored_objects(repo);
        let victim = complete_ids(repo)[0].clone();
        let mut cmd = pg_command(bin("pgcellar"));
        cmd.args(repo.args())
            .args(["delete", &victim])
            .env("PGCELLAR_TEST_FAULT", format!("sweep-abort-after-{n}"));
        let o = cmd.output().unwrap();
        assert!(
            !o.status.success(),
            "N={n}: the sweep was not killed: {}",
            text(&o)
        );
        // The manifest went first; exactly N objects went before the crash.
        assert!(!complete_ids(repo).contains(&victim), "N={n}");
        let after = stored_objects(repo);
        assert_eq!(before.len() - after.len(), n as usize, "N={n}");
        assert!(
            after.len() > referenced(repo).len(),
            "N={n}: the crash left no unreferenced object to sweep"
        );
        consistent(repo, false, &format!("after a sweep killed at N={n}"));
        // The next command breaks the dead process's lock; cron finishes the sweep.
        let o = repo.pgcellar(&["cron"]);
        assert!(o.status.success(), "N={n}: cron: {}", text(&o));
        consistent(repo, true, &format!("after cron, N={n}"));
    }
    // A killed delete finished by the next delete too.
    backup(&c);
    backup(&c);
    let mut cmd = pg_command(bin("pgcellar"));
    cmd.args(repo.args())
        .args(["delete", "oldest"])
        .env("PGCELLAR_TEST_FAULT", "sweep-abort-after-2");
    assert!(!cmd.output().unwrap().status.success());
    consistent(repo, false, "after a killed delete");
    ok(repo, &["delete", "oldest"]);
    consistent(repo, true, "after the next delete");

    // base-backup running (holding the lock, writing objects) while delete and cron
    // run: delete fails naming the lock holder, cron skips quietly, and afterwards
    // every backup, the new one included, verifies with all its objects.
    c.pgbench(&["-i", "-s", "8", "-q"]);
    let slow = [
        "--full",
        "--jobs",
        "1",
        "--compression",
        "gzip",
        "--compression-level",
        "9",
    ];
    let mut child = base_backup_cmd(repo, &c, &slow)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !matches!(lock_holder(repo), Some((ref who, _)) if who == "base-backup") {
        assert!(
            std::time::Instant::now() < deadline,
            "base-backup never took the lock"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "base-backup ended early"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut raced = 0;
    while child.try_wait().unwrap().is_none() {
        let o = repo.pgcellar(&["delete", "oldest"]);
        if child.try_wait().unwrap().is_some() {
            break;
        }
        assert_eq!(
            o.status.code(),
            Some(1),
            "delete beside base-backup: {}",
            text(&o)
        );
        assert!(text(&o).contains("locked by base-backup"), "{}", text(&o));
        let o = repo.pgcellar(&["cron"]);
        assert!(o.status.success(), "{}", text(&o));
        assert!(o.stdout.is_empty(), "cron beside base-backup: {}", text(&o));
        raced += 1;
        consistent(repo, false, "beside a running base-backup");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(raced >= 1, "the backup was too quick to race with");
    let new = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(complete_ids(repo).last(), Some(&new));
    consistent(repo, true, "after the racing backup");
    ok(repo, &["delete", "oldest"]);
    consistent(repo, true, "after a delete once the backup ended");
    let o = repo.pgcellar(&["cron"]);
    assert!(o.status.success() && o.stdout.is_empty(), "{}", text(&o));
}
