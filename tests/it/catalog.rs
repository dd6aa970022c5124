//! The catalog commands against a real PostgreSQL and repository: servers, list, show,
//! keep, delete, expire, verify, cron, check and switch-wal.
//!
//! One cluster serves the backup life cycle (listing, pins, retention, a restore of
//! what expire left, verify catching damage, cron); another serves check and
//! switch-wal, healthy and with a broken `archive_command`.

use crate::common::*;
use pgcellar::repo::lock::{Lock, DEFAULT_STALE_AFTER};
use pgcellar::storage::LocalStorage;
use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

/// Run `pgcellar ARGS` as the postgres user against `repo`, with `config` if given.
fn pgcellar(repo: &RepoDir, config: Option<&Path>, args: &[&str]) -> Output {
    let mut cmd = pg_command(bin("pgcellar"));
    cmd.args(repo.args());
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    cmd.args(args);
    cmd.output().expect("spawn pgcellar")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn ok(repo: &RepoDir, config: Option<&Path>, args: &[&str]) -> String {
    let o = pgcellar(repo, config, args);
    assert!(
        o.status.success(),
        "pgcellar {args:?} failed ({}):\n{}{}",
        o.status,
        stdout(&o),
        stderr(&o)
    );
    stdout(&o)
}

/// The versioned `--json` document of a successful `pgcellar ARGS`.
fn json(repo: &RepoDir, config: Option<&Path>, args: &[&str]) -> Value {
    json_document(ok(repo, config, args).as_bytes())
}

fn base_backup(repo: &RepoDir, c: &Cluster) -> String {
    let mut cmd = pg_command(bin("base-backup"));
    cmd.args(repo.args())
        .arg("--pgdata")
        .arg(&c.pgdata)
        .arg("--conninfo")
        .arg(c.conninfo());
    // Not -q: stdout carries the id only without it.
    let out = run_ok(&mut cmd);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A config file readable by the postgres user.
fn config(dir: &TestDir, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, text).expect("write config");
    chown_postgres(&p);
    p
}

fn backup_dir(repo: &RepoDir, id: &str) -> PathBuf {
    repo.path.join(&repo.server).join("backups").join(id)
}

/// Segment names (24 hex) in the archive, sorted.
fn segments(repo: &RepoDir) -> Vec<String> {
    repo.wal_files()
        .iter()
        .filter_map(|p| {
            let file = p.rsplit('/').next()?;
            let name = file.split('-').next()?;
            (name.len() == 24).then(|| name.to_string())
        })
        .collect()
}

fn require_binaries() -> bool {
    for b in ["base-backup", "restore"] {
        if !bin(b).exists() {
            skip_or_fail(&format!("the {b} binary is not built"));
            return false;
        }
    }
    true
}

#[test]
fn backup_life_cycle_list_keep_expire_restore_verify_cron() {
    if !require_binaries() {
        return;
    }
    let repo = RepoDir::new();
    let Some(c) = repo.archiving_cluster() else {
        return;
    };
    let cfgdir = TestDir::new();
    let cfg = config(
        &cfgdir,
        "pgcellar.toml",
        "retention = 'REDUNDANCY 1'\nminimum_redundancy = 2\n",
    );
    let cfg = Some(cfg.as_path());

    // Some archived WAL before the first backup, so that expire has WAL to remove.
    c.psql("CREATE TABLE t(i int)");
    c.psql("INSERT INTO t SELECT generate_series(1, 10)");
    c.switch_and_wait_archived();
    c.psql("INSERT INTO t SELECT generate_series(11, 20)");
    c.switch_and_wait_archived();
    let b1 = base_backup(&repo, &c);
    c.psql("INSERT INTO t SELECT generate_series(21, 30)");
    c.switch_and_wait_archived();
    let b2 = base_backup(&repo, &c);
    c.psql("INSERT INTO t SELECT generate_series(31, 40)");
    c.switch_and_wait_archived();
    let b3 = base_backup(&repo, &c);
    c.psql("INSERT INTO t SELECT generate_series(41, 50)");
    c.switch_and_wait_archived();
    assert!(b1 < b2 && b2 < b3);

    // servers
    let servers = json(&repo, None, &["servers", "--json"])["servers"].clone();
    assert_eq!(servers[0]["name"], "main");
    assert_eq!(servers[0]["backups"], 3);
    assert_eq!(servers[0]["newest_backup"], b3.as_str());
    assert!(servers[0]["wal_files"].as_u64().unwrap() >= 5);
    let table = ok(&repo, None, &["servers"]);
    assert!(table.starts_with("SERVER"), "{table}");
    assert!(
        table.lines().nth(1).unwrap().starts_with("main "),
        "{table}"
    );

    // list: newest first, sizes, hard-linked files not counted as added.
    let doc = json(&repo, None, &["list", "--json"]);
    assert_eq!(doc["server"], "main");
    let list = doc["backups"].clone();
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [b3.as_str(), b2.as_str(), b1.as_str()]);
    for b in list.as_array().unwrap() {
        assert_eq!(b["status"], "done");
        assert_eq!(b["kept"], false);
        assert_eq!(b["timeline"], 1);
        let (stored, added) = (
            b["stored_size"].as_u64().unwrap(),
            b["added_size"].as_u64().unwrap(),
        );
        assert!(stored > 0 && added <= stored, "{b}");
    }
    // The second backup reuses most files of the first as hard links.
    assert!(
        list[1]["added_size"].as_u64().unwrap() < list[1]["stored_size"].as_u64().unwrap() / 2,
        "{}",
        list[1]
    );
    assert_eq!(list[1]["parent"], b1.as_str());
    let table = ok(&repo, None, &["list"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    assert!(lines[0].starts_with("ID "), "{table}");
    assert!(lines[1].starts_with(&b3), "{table}");
    // Aligned: every row's STATUS column starts where the header's does.
    let col = lines[0].find("STATUS").unwrap();
    assert!(
        lines[1..].iter().all(|l| &l[col..col + 4] == "done"),
        "{table}"
    );

    // show
    let show = json(&repo, None, &["show", "latest", "--json"]);
    assert_eq!(show["backup"]["id"], b3.as_str());
    assert_eq!(show["manifest"]["id"], b3.as_str());
    assert!(show["manifest"]["files"].as_array().unwrap().len() > 100);
    assert_eq!(
        show["wal_needed"]["complete"], true,
        "{}",
        show["wal_needed"]
    );
    assert_eq!(show["wal_needed"]["first"], show["manifest"]["start_wal"]);
    assert_eq!(
        show["wal_to_latest"]["missing"].as_array().unwrap().len(),
        0
    );
    let human = ok(&repo, None, &["show", &b1]);
    assert!(human.contains("all archived"), "{human}");
    assert!(human.contains("continuous"), "{human}");
    let o = pgcellar(&repo, None, &["show", "20000101T000000Z"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("does not exist"), "{}", stderr(&o));
    let o = pgcellar(&repo, None, &["show", "../../etc"]);
    assert_eq!(o.status.code(), Some(1));

    // keep: a marker file in the backup directory; a pinned backup cannot be deleted.
    ok(&repo, None, &["keep", &b1]);
    assert!(backup_dir(&repo, &b1).join("keep").is_file());
    let list = json(&repo, None, &["list", "--json"])["backups"].clone();
    assert_eq!(list[2]["kept"], true);
    assert_eq!(list[0]["kept"], false);
    let o = pgcellar(&repo, cfg, &["delete", &b1]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--release"), "{}", stderr(&o));

    // expire --dry-run prints the plan and changes nothing.
    let wal_before = repo.wal_files();
    let segs_before = segments(&repo);
    let plan = ok(&repo, cfg, &["expire", "--dry-run"]);
    assert!(
        plan.contains(&format!("would expire backup {b2}")),
        "{plan}"
    );
    assert!(plan.contains("would remove"), "{plan}");
    assert_eq!(repo.wal_files(), wal_before);
    assert!(backup_dir(&repo, &b2).join("backup.json").exists());
    let plan = json(
        &repo,
        cfg,
        &[
            "expire",
            "--dry-run",
            "--json",
            "--retention",
            "REDUNDANCY 3",
        ],
    );
    assert_eq!(plan["deleted"].as_array().unwrap().len(), 0, "{plan}");
    assert_eq!(plan["policy"], "REDUNDANCY 3");

    // expire: b2 goes; the pinned b1 and the newest b3 stay; WAL before b1 goes.
    let b1_start = json(&repo, None, &["show", &b1, "--json"])["manifest"]["start_wal"]
        .as_str()
        .unwrap()
        .to_string();
    let out = ok(&repo, cfg, &["expire"]);
    assert!(out.contains(&format!("expired backup {b2}")), "{out}");
    assert!(!backup_dir(&repo, &b2).exists());
    let segs = segments(&repo);
    assert!(
        segs.iter().all(|s| s.as_str() >= b1_start.as_str()),
        "{segs:?}"
    );
    assert!(segs.len() < segs_before.len(), "{segs:?}");
    // b3's hard links into b2 survive b2's removal: verify re-reads every file.
    let doc = json(&repo, None, &["verify", "--all", "--json"]);
    assert_eq!(doc["server"], "main", "{doc}");
    assert_eq!(doc["ok"], true, "{doc}");
    let v = doc["backups"].clone();
    assert_eq!(v.as_array().unwrap().len(), 2);
    for r in v.as_array().unwrap() {
        assert_eq!(r["problems"].as_array().unwrap().len(), 0, "{r}");
        assert!(r["files_checked"].as_u64().unwrap() > 100);
    }

    // minimum_redundancy = 2 with two backups left: delete refuses unless forced.
    let o = pgcellar(&repo, cfg, &["delete", &b3]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("minimum_redundancy"), "{}", stderr(&o));
    ok(&repo, cfg, &["keep", &b1, "--release"]);
    assert!(!backup_dir(&repo, &b1).join("keep").exists());
    let o = pgcellar(&repo, cfg, &["delete", "oldest"]);
    assert_eq!(o.status.code(), Some(1));

    // The writer lock excludes expire, and cron skips quietly while it is held.
    let storage = LocalStorage::new(repo.path.clone());
    let lock = Lock::acquire(&storage, "main", "base-backup", DEFAULT_STALE_AFTER).unwrap();
    // The commands run as postgres and must be able to read who holds it.
    chown_postgres(&repo.path.join("main/locks/server.lock"));
    let o = pgcellar(&repo, cfg, &["expire"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("locked by base-backup"),
        "{}",
        stderr(&o)
    );
    let o = pgcellar(&repo, cfg, &["cron"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        o.stdout.is_empty() && o.stderr.is_empty(),
        "{}{}",
        stdout(&o),
        stderr(&o)
    );
    lock.try_release().unwrap();

    // With the pin released, expire (run by cron) removes b1 and the WAL before b3.
    // An aborted backup directory (no manifest) from long ago goes too.
    let aborted = backup_dir(&repo, "20200101T000000Z");
    fs::create_dir_all(aborted.join("data")).unwrap();
    fs::write(aborted.join("data/PG_VERSION.zst"), b"x").unwrap();
    chown_postgres(&aborted);
    // minimum_redundancy 1 from here on, so that the released b1 may go.
    let cfg1 = config(
        &cfgdir,
        "min1.toml",
        "retention = 'REDUNDANCY 1'\nminimum_redundancy = 1\n",
    );
    let cfg1 = Some(cfg1.as_path());
    let out = ok(&repo, cfg1, &["cron"]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines.contains(&format!("server main: expired backup {b1} (REDUNDANCY 1)").as_str()),
        "{out}"
    );
    assert!(
        lines.contains(&"server main: removed aborted backup directory 20200101T000000Z"),
        "{out}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("WAL file(s) of timeline 1")),
        "{out}"
    );
    assert!(!aborted.exists() && !backup_dir(&repo, &b1).exists());
    let o = pgcellar(&repo, cfg1, &["cron"]);
    assert!(o.status.success());
    assert!(
        o.stdout.is_empty() && o.stderr.is_empty(),
        "cron not silent: {}{}",
        stdout(&o),
        stderr(&o)
    );
    let show = json(&repo, None, &["show", "latest", "--json"]);
    let b3_start = show["manifest"]["start_wal"].as_str().unwrap().to_string();
    let b3_stop = show["manifest"]["stop_wal"].as_str().unwrap().to_string();
    let segs = segments(&repo);
    assert_eq!(segs.first(), Some(&b3_start), "{segs:?}");
    // A backup history file of b3 stays.
    assert!(repo.wal_files().iter().any(|f| f.contains(".backup-")));

    // The newest backup restores to the end of the archive after all that.
    {
        let root = TestDir::new();
        let pgdata = root.join("pgdata");
        let mut r = pg_command(bin("restore"));
        r.args(repo.args()).arg(&pgdata);
        run_ok(&mut r);
        let rc = Cluster::adopt_restored(root, pgdata);
        rc.append_conf(&["archive_mode = off".to_string()]);
        rc.start();
        rc.wait_for_promotion(Duration::from_secs(120));
        assert_eq!(rc.psql("SELECT count(*) || ' ' || max(i) FROM t"), "50 50");
    }

    // verify catches a flipped byte in a stored file...
    let m = &show["manifest"];
    // One whose object no other file shares (identical catalogs of the template
    // databases are one object, and a flipped byte breaks each file).
    let files = m["files"].as_array().unwrap();
    let base_of = |f: &Value| f["objects"][0]["id"].as_str().unwrap().to_string();
    let victim = files
        .iter()
        .filter(|f| f["stored_size"].as_u64().unwrap() > 64)
        .filter(|f| files.iter().filter(|g| base_of(g) == base_of(f)).count() == 1)
        .max_by_key(|f| f["stored_size"].as_u64().unwrap())
        .unwrap();
    let rel = victim["path"].as_str().unwrap();
    let id = victim["objects"][0]["id"].as_str().unwrap();
    let stored = repo
        .path
        .join(format!("main/objects/{}/{id}.zst", &id[..2]));
    let original = fs::read(&stored).unwrap();
    let mut bad = original.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x01;
    fs::write(&stored, &bad).unwrap();
    let o = pgcellar(&repo, None, &["verify", "--json"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let v = json_document(&o.stdout);
    assert_eq!(v["ok"], false, "{v}");
    let problems = v["backups"][0]["problems"].as_array().unwrap();
    // One problem per file the object holds (identical files, e.g. the same catalog
    // of several databases, share one object), each naming it and the backup.
    let whose: Vec<&Value> = m["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["objects"][0]["id"] == id)
        .collect();
    assert_eq!(problems.len(), whose.len(), "{v}");
    assert!(problems.iter().any(|p| p["subject"] == rel), "{v}");
    for p in problems {
        let kind = p["kind"].as_str().unwrap();
        assert!(
            kind == "checksum_mismatch" || kind == "file_unreadable",
            "{kind}"
        );
        assert!(p["message"].as_str().unwrap().contains(id), "{p}");
        assert_eq!(p["breaks"], serde_json::json!([b3.as_str()]), "{p}");
    }
    let o = pgcellar(&repo, None, &["verify", &b3]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("FAILED"), "{}", stdout(&o));
    fs::write(&stored, &original).unwrap();
    ok(&repo, None, &["verify"]);

    // ... and a missing WAL segment, which show reports as well.
    let seg_file = repo
        .wal_files()
        .into_iter()
        .find(|f| f.contains(&format!("/{b3_stop}-")))
        .unwrap();
    let seg_path = repo.path.join("main/wal").join(&seg_file);
    let seg_bytes = fs::read(&seg_path).unwrap();
    fs::remove_file(&seg_path).unwrap();
    let o = pgcellar(&repo, None, &["verify", "--all", "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let v = json_document(&o.stdout);
    let problems = v["backups"][0]["problems"].as_array().unwrap();
    assert!(
        problems
            .iter()
            .any(|p| p["kind"] == "wal_missing" && p["subject"] == b3_stop.as_str()),
        "{v}"
    );
    let show = json(&repo, None, &["show", "latest", "--json"]);
    assert_eq!(show["wal_needed"]["complete"], false);
    assert_eq!(show["wal_needed"]["missing"][0], b3_stop.as_str());
    // check reports the gap too (its catalog checks need no connection).
    let o = pgcellar(&repo, None, &["check", "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let v = json_document(&o.stdout);
    let row = check_row(&v, "wal_continuity");
    assert_eq!(row["status"], "critical", "{v}");
    assert!(
        row["message"].as_str().unwrap().contains(b3_stop.as_str()),
        "{v}"
    );
    fs::write(&seg_path, seg_bytes).unwrap();
    chown_postgres(&seg_path);
    ok(&repo, None, &["verify", "--all"]);
}

#[test]
fn check_and_switch_wal_healthy_and_with_a_broken_archive_command() {
    if !require_binaries() {
        return;
    }
    let repo = RepoDir::new();
    let Some(c) = repo.archiving_cluster() else {
        return;
    };
    let cfgdir = TestDir::new();
    let cfg = config(
        &cfgdir,
        "pgcellar.toml",
        &format!(
            "conninfo = '{}'\nlast_backup_maximum_age = '1 DAYS'\nminimum_redundancy = 1\n\
             archive_wait_timeout = 30\n",
            c.conninfo()
        ),
    );
    let cfg = Some(cfg.as_path());
    c.psql("CREATE TABLE t(i int)");

    // No backup yet: minimum redundancy and backup age are critical.
    let o = pgcellar(&repo, cfg, &["check", "--nagios"]);
    assert_eq!(o.status.code(), Some(2), "{}{}", stdout(&o), stderr(&o));
    let line = stdout(&o);
    assert!(
        line.starts_with("PGCELLAR CRITICAL - server main: "),
        "{line}"
    );
    assert!(line.contains("backup_age: there is no backup"), "{line}");

    base_backup(&repo, &c);
    // switch-wal --wait returns once the segment is in the repository.
    c.psql("INSERT INTO t VALUES (1)");
    let seg = ok(&repo, cfg, &["switch-wal", "--wait"]).trim().to_string();
    assert_eq!(seg.len(), 24, "{seg}");
    assert!(segments(&repo).contains(&seg), "{seg}");
    let seg2 = ok(&repo, cfg, &["switch-wal", "--checkpoint", "--wait"])
        .trim()
        .to_string();
    assert!(seg2 > seg, "{seg2} after {seg}");
    assert!(segments(&repo).contains(&seg2));

    // Healthy: OK, exit 0, one line with perfdata.
    let o = pgcellar(&repo, cfg, &["check", "--nagios"]);
    let line = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{line}{}", stderr(&o));
    assert_eq!(line.lines().count(), 1, "{line}");
    assert!(
        line.starts_with("PGCELLAR OK - server main: 13 checks ok"),
        "{line}"
    );
    let (_, perf) = line.split_once(" | ").expect("perfdata");
    for key in [
        "checks=13",
        "failed_checks=0",
        "backups=1",
        "newest_backup_age=",
        "wal_files=",
    ] {
        assert!(perf.contains(key), "{key} in {perf}");
    }
    let r = json(&repo, cfg, &["check", "--json"]);
    assert_eq!(r["status"], "ok", "{r}");
    let names: Vec<&str> = r["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "repository",
            "server_registered",
            "postgres_connection",
            "system_identifier",
            "archive_mode",
            "archive_command",
            "archiving",
            "archiver_failures",
            "backup_age",
            "minimum_redundancy",
            "wal_continuity",
            "aborted_backups",
            "stream"
        ]
    );
    let human = ok(&repo, cfg, &["check"]);
    assert!(human.starts_with("CHECK"), "{human}");
    assert!(human.trim_end().ends_with("server main: OK"), "{human}");

    // An archive_command that pushes to another server name, or into another
    // repository, is CRITICAL although it calls wal-push: WAL misses this repository.
    let set_command = |cmd: &str| {
        c.psql(&format!("ALTER SYSTEM SET archive_command = '{cmd}'"));
        c.psql("SELECT pg_reload_conf()");
        std::thread::sleep(Duration::from_millis(500));
    };
    let wal_push = bin("wal-push").display().to_string();
    set_command(&format!(
        "{wal_push} --repo {} --server other %p",
        repo.url()
    ));
    let o = pgcellar(&repo, cfg, &["check", "--nagios"]);
    let line = stdout(&o);
    assert_eq!(o.status.code(), Some(2), "{line}{}", stderr(&o));
    assert!(
        line.contains("archive_command: ")
            && line.contains("server other, but this check is for server main"),
        "{line}"
    );
    let elsewhere = format!("{}/nonexistent", cfgdir.path().display());
    set_command(&format!("{wal_push} --repo={elsewhere} --server main %p"));
    let o = pgcellar(&repo, cfg, &["check", "--nagios"]);
    let line = stdout(&o);
    assert_eq!(o.status.code(), Some(2), "{line}{}", stderr(&o));
    assert!(
        line.contains(&format!(
            "repository {elsewhere}, but this check is for repository {}",
            repo.url()
        )),
        "{line}"
    );
    // The names given by the command's --config file count the same way.
    let pushcfg = config(
        &cfgdir,
        "push.toml",
        &format!("repo = '{}'\nserver = 'other'\n", repo.url()),
    );
    set_command(&format!("{wal_push} --config {} %p", pushcfg.display()));
    let r = json_document(&pgcellar(&repo, cfg, &["check", "--json"]).stdout);
    let cmd_row = check_row(&r, "archive_command");
    assert_eq!(cmd_row["status"], "critical", "{r}");
    // Names the command line does not show (PostgreSQL's environment may set them):
    // a WARNING saying so, never a silent OK.
    set_command(&format!("{wal_push} %p"));
    let r = json_document(&pgcellar(&repo, cfg, &["check", "--json"]).stdout);
    let cmd_row = check_row(&r, "archive_command");
    assert_eq!(cmd_row["status"], "warning", "{r}");
    assert!(
        cmd_row["message"]
            .as_str()
            .unwrap()
            .contains("cannot see which repository and server"),
        "{r}"
    );

    // Broken archive_command (right repository and server, but wal-push fails on
    // every file): archiving fails at once and check is CRITICAL with exit 2.
    let broken = format!("{} -v {} %p.missing", wal_push, repo.shell_args());
    c.psql(&format!("ALTER SYSTEM SET archive_command = '{broken}'"));
    c.psql("SELECT pg_reload_conf()");
    std::thread::sleep(Duration::from_millis(500));
    c.psql("INSERT INTO t VALUES (2)");
    let started = std::time::Instant::now();
    let o = pgcellar(&repo, cfg, &["check", "--nagios"]);
    let line = stdout(&o);
    assert_eq!(o.status.code(), Some(2), "{line}{}", stderr(&o));
    assert!(
        line.starts_with("PGCELLAR CRITICAL - server main: "),
        "{line}"
    );
    assert!(line.contains("archiving: "), "{line}");
    assert!(line.contains("failed_checks="), "{line}");
    // The failure is reported from pg_stat_archiver, not after the full timeout.
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "{:?}",
        started.elapsed()
    );
    // The human and JSON forms exit 1 on a critical finding.
    let o = pgcellar(&repo, cfg, &["check", "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let r = json_document(&o.stdout);
    assert_eq!(r["status"], "critical");
    let by_name = |n: &str| check_row(&r, n)["status"].clone();
    assert_eq!(by_name("archiver_failures"), "critical", "{r}");
    assert_eq!(by_name("archive_command"), "ok");
    assert_eq!(by_name("archiving"), "critical");

    // The repository unavailable: the checks that need only the cluster still run
    // and report, and --json still prints its document.
    let hidden = repo.path.with_extension("moved");
    fs::rename(&repo.path, &hidden).unwrap();
    let o = pgcellar(&repo, cfg, &["check", "--json"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let r = json_document(&o.stdout);
    let status = |n: &str| check_row(&r, n)["status"].clone();
    assert_eq!(r["status"], "critical", "{r}");
    assert_eq!(status("repository"), "critical", "{r}");
    assert_eq!(status("postgres_connection"), "ok", "{r}");
    assert_eq!(status("archive_mode"), "ok", "{r}");
    assert_eq!(status("archive_command"), "ok", "{r}");
    assert_eq!(status("archiver_failures"), "critical", "{r}");
    assert_eq!(status("archiving"), "unknown", "{r}");
    assert_eq!(status("backup_age"), "unknown", "{r}");
    assert_eq!(r["checks"].as_array().unwrap().len(), 13, "{r}");
    let o = pgcellar(&repo, cfg, &["check", "--nagios"]);
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    fs::rename(&hidden, &repo.path).unwrap();
    // Settings so bad that nothing can be checked: --json still prints a document.
    let o = pg_command(bin("pgcellar"))
        .args(["--server", "main", "check", "--json"])
        .env_remove("PGCELLAR_REPO")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let r = json_document(&o.stdout);
    assert_eq!(r["status"], "unknown", "{r}");
    assert_eq!(check_row(&r, "settings")["status"], "unknown", "{r}");

    // An archive_command that does not call wal-push at all.
    c.psql("ALTER SYSTEM SET archive_command = '/bin/true'");
    c.psql("SELECT pg_reload_conf()");
    std::thread::sleep(Duration::from_millis(500));
    let o = pgcellar(&repo, cfg, &["check", "--nagios"]);
    let line = stdout(&o);
    assert_eq!(o.status.code(), Some(2), "{line}");
    assert!(line.contains("archive_command: "), "{line}");

    // Nothing to check against: UNKNOWN, exit 3.
    let o = pg_command(bin("pgcellar"))
        .args(["--server", "main", "check", "--nagios"])
        .env_remove("PGCELLAR_REPO")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", stdout(&o));
    assert!(
        stdout(&o).starts_with("PGCELLAR UNKNOWN - "),
        "{}",
        stdout(&o)
    );
}

#[test]
fn usage_errors_exit_2_and_bad_policies_are_refused() {
    let repo = RepoDir::new();
    let o = pgcellar(&repo, None, &["verify", "latest", "--all"]);
    assert_eq!(o.status.code(), Some(2));
    let o = pgcellar(&repo, None, &["check", "--json", "--nagios"]);
    assert_eq!(o.status.code(), Some(2));
    let o = pgcellar(&repo, None, &["show"]);
    assert_eq!(o.status.code(), Some(2));
    let dir = TestDir::new();
    let cfg = config(&dir, "bad.toml", "retention = 'KEEP EVERYTHING'\n");
    let o = pgcellar(&repo, Some(&cfg), &["expire"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("retention") && err.contains("bad.toml"),
        "{err}"
    );
    let o = pgcellar(&repo, None, &["expire", "--retention", "REDUNDANCY 0"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--retention"), "{}", stderr(&o));
}

/// Restore the newest backup into a new directory, start it and wait until it has
/// promoted (recovery to the end of the archive ends on a new timeline).
fn restore_and_promote(repo: &RepoDir, archive: bool) -> Cluster {
    let root = TestDir::new();
    let pgdata = root.join("pgdata");
    let mut r = pg_command(bin("restore"));
    r.args(repo.args());
    if archive {
        // The copy is the new primary: it keeps archiving into the repository.
        r.args(["--archive-mode", "preserve"]);
    }
    r.arg(&pgdata);
    run_ok(&mut r);
    let rc = Cluster::adopt_restored(root, pgdata);
    if !archive {
        rc.append_conf(&["archive_mode = off".to_string()]);
    }
    rc.start();
    rc.wait_for_promotion(Duration::from_secs(120));
    rc
}

#[test]
fn verify_and_expire_follow_a_new_timeline() {
    if !require_binaries() {
        return;
    }
    let repo = RepoDir::new();
    let Some(c) = repo.archiving_cluster() else {
        return;
    };
    c.psql("CREATE TABLE t(i int)");
    c.psql("INSERT INTO t SELECT generate_series(1, 10)");
    c.switch_and_wait_archived();
    let b1 = base_backup(&repo, &c);
    c.psql("INSERT INTO t SELECT generate_series(11, 20)");
    c.switch_and_wait_archived();

    // A restored copy promotes onto timeline 2 and archives into the same repository.
    let r = restore_and_promote(&repo, true);
    assert_eq!(
        r.psql("SELECT timeline_id FROM pg_control_checkpoint()"),
        "2"
    );
    r.psql("INSERT INTO t SELECT generate_series(21, 30)");
    r.switch_and_wait_archived();
    r.psql("INSERT INTO t SELECT generate_series(31, 40)");
    r.switch_and_wait_archived();
    // The old primary goes on writing timeline 1: another history, which recovery
    // along timeline 2 must not count on.
    c.psql("INSERT INTO t SELECT generate_series(1000, 1010)");
    c.switch_and_wait_archived();
    c.switch_and_wait_archived();
    assert!(repo
        .wal_files()
        .iter()
        .any(|f| f.starts_with("00000002.history-")));

    let v = json(&repo, None, &["verify", "--all", "--json"])["backups"].clone();
    let b1v = &v[0];
    assert_eq!(b1v["id"], b1.as_str());
    assert_eq!(b1v["ok"], true, "{b1v}");
    assert_eq!(b1v["wal"]["timelines"], serde_json::json!([1, 2]), "{b1v}");
    let last = b1v["wal"]["last"].as_str().unwrap().to_string();
    assert!(last.starts_with("00000002"), "{last}");

    // Remove a timeline-2 segment whose number timeline 1 also has: still a gap.
    let tl2: Vec<String> = segments(&repo)
        .into_iter()
        .filter(|s| s.starts_with("00000002"))
        .collect();
    let victim = tl2[tl2.len() - 2].clone();
    assert!(
        segments(&repo).contains(&format!("00000001{}", &victim[8..])),
        "{victim}"
    );
    let file = repo
        .wal_files()
        .into_iter()
        .find(|f| f.contains(&format!("/{victim}-")))
        .unwrap();
    let path = repo.path.join("main/wal").join(&file);
    let bytes = fs::read(&path).unwrap();
    fs::remove_file(&path).unwrap();
    let o = pgcellar(&repo, None, &["verify", &b1, "--json"]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "removed {file}; {}\n{:?}",
        stdout(&o),
        repo.wal_files()
    );
    let v = json_document(&o.stdout)["backups"].clone();
    assert_eq!(v[0]["problems"][0]["kind"], "wal_missing", "{v}");
    assert_eq!(v[0]["problems"][0]["subject"], victim.as_str(), "{v}");
    fs::write(&path, bytes).unwrap();
    chown_postgres(&path);

    // A backup on timeline 2, then expire keeps only it: timeline 1 WAL goes, the
    // history file stays, and the new backup restores to the end of timeline 2.
    let b2 = base_backup(&repo, &r);
    let out = ok(&repo, None, &["expire", "--retention", "REDUNDANCY 1"]);
    assert!(out.contains(&format!("expired backup {b1}")), "{out}");
    let b2_start = json(&repo, None, &["show", &b2, "--json"])["manifest"]["start_wal"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(b2_start.starts_with("00000002"));
    let segs = segments(&repo);
    assert!(
        segs.iter().all(|s| s[8..] >= b2_start[8..]),
        "left below {b2_start}: {segs:?}"
    );
    assert!(repo
        .wal_files()
        .iter()
        .any(|f| f.starts_with("00000002.history-")));
    let v = json(&repo, None, &["verify", "--all", "--json"])["backups"].clone();
    assert_eq!(v[0]["ok"], true, "{v}");
    r.psql("INSERT INTO t SELECT generate_series(41, 50)");
    r.switch_and_wait_archived();
    drop(c);
    let rr = restore_and_promote(&repo, false);
    assert_eq!(rr.psql("SELECT count(*) || ' ' || max(i) FROM t"), "50 50");
}

#[test]
fn catalog_commands_over_ssh() {
    if !require_binaries() {
        return;
    }
    let Some(sshd) = sshd::Sshd::start() else {
        return;
    };
    // Backups are taken into a local repository; the catalog then works on the same
    // directory through sshd, as it would from a monitoring host.
    let repo = RepoDir::new();
    let Some(c) = repo.archiving_cluster() else {
        return;
    };
    c.psql("CREATE TABLE t(i int)");
    c.switch_and_wait_archived();
    let b1 = base_backup(&repo, &c);
    c.psql("INSERT INTO t SELECT generate_series(1, 10)");
    c.switch_and_wait_archived();
    let b2 = base_backup(&repo, &c);
    c.switch_and_wait_archived();

    let flags: Vec<String> = vec![
        "--repo".into(),
        sshd.url(&repo.path),
        "--server".into(),
        "main".into(),
        "--ssh-identity".into(),
        sshd.client_key.display().to_string(),
        "--ssh-known-hosts".into(),
        sshd.known_hosts.display().to_string(),
    ];
    let run = |args: &[&str]| -> Output {
        let mut cmd = pg_command(bin("pgcellar"));
        cmd.args(&flags).args(args);
        cmd.output().expect("spawn pgcellar")
    };
    let okj = |args: &[&str]| -> Value {
        let o = run(args);
        assert!(
            o.status.success(),
            "{args:?}: {}{}\n--- sshd log ---\n{}",
            stdout(&o),
            stderr(&o),
            sshd.log()
        );
        json_document(&o.stdout)
    };
    let servers = okj(&["servers", "--json"]);
    assert_eq!(servers["servers"][0]["backups"], 2);
    let list = okj(&["list", "--json"]);
    assert_eq!(list["backups"][0]["id"], b2.as_str());
    assert_eq!(list, json(&repo, None, &["list", "--json"]));
    let show = okj(&["show", "oldest", "--json"]);
    assert_eq!(show["wal_needed"]["complete"], true);
    let v = okj(&["verify", "--all", "--json"]);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["backups"].as_array().unwrap().len(), 2, "{v}");
    assert!(run(&["keep", &b1]).status.success());
    assert!(backup_dir(&repo, &b1).join("keep").is_file());
    assert!(run(&["keep", &b1, "--release"]).status.success());
    let plan = okj(&[
        "expire",
        "--dry-run",
        "--json",
        "--retention",
        "REDUNDANCY 1",
    ]);
    assert_eq!(plan["deleted"], serde_json::json!([b1.as_str()]));
    let out = okj(&["expire", "--json", "--retention", "REDUNDANCY 1"]);
    assert_eq!(out["deleted"], serde_json::json!([b1.as_str()]));
    assert!(!backup_dir(&repo, &b1).exists());
    assert!(out["wal"][0]["files"].as_u64().unwrap() > 0, "{out}");
    let v = okj(&["verify", "--json"]);
    assert_eq!(v["backups"][0]["ok"], true, "{v}");
}
