//! `pgcellar info` against a real cluster and repository: what two backups share, a
//! gap made by removing a stored segment, throughput from the stored times,
//! wal-push's refusals, pg_stat_archiver, every server or one, and a backup seen
//! running from another process (and what a killed one leaves).

use crate::backup_restore::base_backup;
use crate::common::*;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Output, Stdio};
use std::time::Duration;

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `pgcellar ARGS info` on `repo`; its stdout (the command must succeed).
fn info(repo: &RepoDir, args: &[&str]) -> Output {
    let mut all: Vec<&str> = args.to_vec();
    all.push("info");
    let o = repo.pgcellar(&all);
    assert!(o.status.success(), "info {args:?}: {}", text(&o));
    o
}

fn info_json(repo: &RepoDir, args: &[&str]) -> Value {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["info", "--json"]);
    let o = repo.pgcellar(&all);
    assert!(o.status.success(), "info --json {args:?}: {}", text(&o));
    json_document(&o.stdout)
}

fn screen(repo: &RepoDir, args: &[&str]) -> String {
    String::from_utf8_lossy(&info(repo, args).stdout).into_owned()
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// Stored file (below `<server>/wal/`) of segment `name`.
fn stored_segment(repo: &RepoDir, name: &str) -> String {
    repo.wal_files()
        .into_iter()
        .find(|f| f.contains(&format!("/{name}-")))
        .unwrap_or_else(|| panic!("{name} is not archived: {:?}", repo.wal_files()))
}

/// Run wal-push on `path` as PostgreSQL would; it must refuse.
fn push_refused(repo: &RepoDir, path: &std::path::Path) -> String {
    let o = pg_command(bin("wal-push"))
        .args(repo.args())
        .arg(path)
        .output()
        .expect("spawn wal-push");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    text(&o)
}

#[test]
fn info_shows_shares_wal_gaps_throughput_refusals_and_the_archiver() {
    let repo = RepoDir::new();
    let Some(c) = repo.archiving_cluster() else {
        return;
    };
    c.psql("CREATE TABLE t(i int)");
    c.psql("INSERT INTO t SELECT generate_series(1, 1000)");
    c.switch_and_wait_archived();
    let b1 = base_backup(&repo, &c, &[]);
    // A small change: the second backup shares almost everything with the first.
    c.psql("INSERT INTO t SELECT generate_series(1001, 1010)");
    c.switch_and_wait_archived();
    let b2 = base_backup(&repo, &c, &[]);
    for _ in 0..3 {
        c.psql("INSERT INTO t VALUES (0)");
        c.switch_and_wait_archived();
    }

    let doc = info_json(&repo, &[]);
    let servers = doc["servers"].as_array().expect("servers");
    assert_eq!(servers.len(), 1, "{doc}");
    let s = &servers[0];
    assert_eq!(s["name"], "main");
    assert_eq!(s["pg_major"], 15);

    // Shares: with two backups the objects they share are the same set, so both
    // report the same shared bytes; each holds a little alone.
    let backups = s["backups"].as_array().expect("backups");
    let ids: Vec<&str> = backups.iter().filter_map(|b| b["id"].as_str()).collect();
    assert_eq!(ids, [b1.as_str(), b2.as_str()]);
    let (first, second) = (&backups[0], &backups[1]);
    assert_eq!(first["shared_size"], second["shared_size"], "{s}");
    let shared = u(&first["shared_size"]);
    assert!(shared > 0, "{s}");
    assert!(
        shared > 4 * u(&second["unique_size"]),
        "mostly shared: {second}"
    );
    assert!(u(&first["unique_size"]) > 0, "{first}");
    for b in backups {
        assert_eq!(
            u(&b["objects_stored_size"]),
            u(&b["shared_size"]) + u(&b["unique_size"]),
            "{b}"
        );
        assert!(
            u(&b["shared_size"]) + u(&b["unique_size"]) <= u(&b["stored_size"]),
            "{b}"
        );
    }
    // Stored once: the shared objects and what each holds alone.
    let backup_stored = shared + u(&first["unique_size"]) + u(&second["unique_size"]);
    assert_eq!(u(&s["totals"]["backup_stored_size"]), backup_stored, "{s}");
    assert_eq!(u(&s["totals"]["backups"]), 2);
    assert_eq!(
        u(&s["totals"]["stored_size"]),
        backup_stored + u(&s["wal"]["stored_size"])
    );
    assert_eq!(doc["totals"]["stored_size"], s["totals"]["stored_size"]);
    assert_eq!(doc["totals"]["servers"], 1);

    // WAL: one timeline, no gap yet, and every segment stored within the hour.
    let tl = &s["wal"]["timelines"][0];
    assert_eq!(tl["timeline"], 1, "{s}");
    assert_eq!(tl["missing"], serde_json::json!([]), "{tl}");
    let segments = u(&tl["segments"]);
    assert!(segments >= 5, "{tl}");
    let t = &s["archiving"]["throughput"];
    assert_eq!(t["known"], true, "{t}");
    assert_eq!(u(&t["last_hour"]["segments"]), segments, "{t}");
    assert_eq!(u(&t["last_day"]["segments"]), segments, "{t}");
    assert_eq!(
        u(&t["last_hour"]["wal_bytes"]),
        segments * u(&s["wal_segment_size"])
    );
    assert_eq!(t["newest_segment"], tl["last"], "{t}");
    assert_eq!(s["archiving"]["last_refusal"], Value::Null);
    assert_eq!(s["archiving"]["pg_stat_archiver"]["status"], "not_asked");
    assert_eq!(s["running_backup"], Value::Null);
    assert_eq!(s["lock"], Value::Null);

    // A gap: remove a stored segment between two others.
    let names: Vec<String> = repo
        .wal_files()
        .iter()
        .filter_map(|f| {
            let n = f.rsplit('/').next()?.split('-').next()?;
            (n.len() == 24).then(|| n.to_string())
        })
        .collect();
    let victim = names[names.len() / 2].clone();
    let path = repo
        .path
        .join("main/wal")
        .join(stored_segment(&repo, &victim));
    let bytes = std::fs::read(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let s = info_json(&repo, &[])["servers"][0].clone();
    let tl = &s["wal"]["timelines"][0];
    assert_eq!(
        tl["missing"],
        serde_json::json!([{ "first": victim, "last": victim, "count": 1 }]),
        "{tl}"
    );
    assert_eq!(u(&tl["segments"]), segments - 1);
    assert_eq!(u(&s["wal"]["missing_segments"]), 1);
    let human = screen(&repo, &[]);
    assert!(human.contains(&format!("MISSING {victim}")), "{human}");
    std::fs::write(&path, bytes).unwrap();
    chown_postgres(&path);

    // wal-push's refusals, recorded in the repository: a file that is no segment of
    // this cluster, then an archived name with other content.
    let dir = TestDir::new();
    let foreign = dir.join("0000000100000000000000F0");
    std::fs::write(&foreign, vec![0u8; 1 << 20]).unwrap();
    chown_postgres(&foreign);
    push_refused(&repo, &foreign);
    let r = info_json(&repo, &[])["servers"][0]["archiving"]["last_refusal"].clone();
    assert_eq!(r["wal"], "0000000100000000000000F0", "{r}");
    assert_eq!(r["reason"], "invalid_segment", "{r}");
    assert!(r["message"].as_str().is_some_and(|m| !m.is_empty()), "{r}");
    let archived = tl["last"].as_str().unwrap().to_string();
    let copy = dir.join(&archived);
    run_ok(
        pg_command(bin("wal-get"))
            .args(repo.args())
            .arg(&archived)
            .arg(&copy),
    );
    let mut changed = std::fs::read(&copy).unwrap();
    let last = changed.len() - 1;
    changed[last] ^= 0xff;
    std::fs::write(&copy, changed).unwrap();
    let err = push_refused(&repo, &copy);
    assert!(err.contains("different content"), "{err}");
    let s = info_json(&repo, &[])["servers"][0].clone();
    let r = &s["archiving"]["last_refusal"];
    assert_eq!(r["wal"], archived.as_str(), "{r}");
    assert_eq!(r["reason"], "different_content", "{r}");
    assert!(
        r["message"]
            .as_str()
            .unwrap()
            .contains("refusing to overwrite history"),
        "{r}"
    );
    let human = screen(&repo, &[]);
    assert!(
        human.contains(&format!("last refusal by wal-push: {archived}")),
        "{human}"
    );

    // pg_stat_archiver, when a connection is given.
    let (archived_count, failed_count) = c.archiver_counts();
    let s = info_json(&repo, &["--conninfo", &c.conninfo()])["servers"][0].clone();
    let a = &s["archiving"]["pg_stat_archiver"];
    assert_eq!(a["status"], "ok", "{a}");
    assert!(
        a["archived_count"].as_i64().unwrap() >= archived_count,
        "{a}"
    );
    assert_eq!(a["failed_count"].as_i64().unwrap(), failed_count, "{a}");
    assert!(a["last_archived_wal"].is_string(), "{a}");
    assert!(a["last_archived_time"].is_string(), "{a}");

    // The human screen has every section.
    let human = screen(&repo, &["--conninfo", &c.conninfo()]);
    eprintln!("--- pgcellar info ---\n{human}");
    for part in [
        "Server main (database system ",
        "Backups: 2 complete",
        b1.as_str(),
        b2.as_str(),
        "ONLY HERE",
        "Backup in progress: none",
        "WAL: ",
        "GAPS",
        "last hour: ",
        "pg_stat_archiver: ",
        " archived (last ",
        "Total for main: 2 backup(s)",
        "Repository ",
    ] {
        assert!(human.contains(part), "{part:?} missing in:\n{human}");
    }
    let human = screen(&repo, &[]);
    assert!(human.contains("pg_stat_archiver: not asked"), "{human}");
}

#[test]
fn info_covers_every_server_or_the_one_asked() {
    let repo = RepoDir::new();
    let Some(c) = repo.archiving_cluster() else {
        return;
    };
    base_backup(&repo, &c, &[]);
    // The same cluster registered a second time, under another name.
    run_ok(
        pg_command(bin("pgcellar"))
            .args(["--repo", &repo.url(), "--server", "other"])
            .args(["--conninfo", &c.conninfo(), "init"]),
    );
    let all = pg_command(bin("pgcellar"))
        .args(["--repo", &repo.url(), "--conninfo", &c.conninfo()])
        .args(["info", "--json"])
        .output()
        .unwrap();
    assert!(all.status.success(), "{}", text(&all));
    let doc = json_document(&all.stdout);
    let names: Vec<&str> = doc["servers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(names, ["main", "other"], "{doc}");
    assert_eq!(doc["totals"]["servers"], 2);
    assert_eq!(doc["totals"]["backups"], 1);
    // Both are this cluster: both get its archiver statistics.
    for s in doc["servers"].as_array().unwrap() {
        assert_eq!(s["archiving"]["pg_stat_archiver"]["status"], "ok", "{s}");
    }
    let one = info_json(&repo, &[]);
    assert_eq!(one["servers"].as_array().unwrap().len(), 1);
    assert_eq!(one["servers"][0]["name"], "main");
    // A server that does not exist is named, with the ones that do.
    let o = pg_command(bin("pgcellar"))
        .args(["--repo", &repo.url(), "--server", "nope", "info"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("main, other"), "{}", text(&o));
}

/// Start base-backup paused after pg_backup_start; returns it once it said so.
fn paused_backup(repo: &RepoDir, c: &Cluster) -> (std::process::Child, Vec<String>) {
    let mut child = pg_command(bin("base-backup"))
        .args(repo.args())
        .arg("--pgdata")
        .arg(&c.pgdata)
        .arg("--conninfo")
        .arg(c.conninfo())
        .env("PGCELLAR_TEST_FAULT", "pause-after-backup-start")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn base-backup");
    let stderr = child.stderr.take().expect("stderr");
    let mut seen = Vec::new();
    for line in BufReader::new(stderr).lines() {
        let line = line.expect("read stderr");
        let paused = line.contains("pausing after backup start");
        seen.push(line);
        if paused {
            return (child, seen);
        }
    }
    let _ = child.kill();
    let status = child.wait();
    panic!("base-backup did not pause ({status:?}): {seen:?}");
}

#[test]
fn info_shows_a_running_backup_and_what_a_killed_one_left() {
    let repo = RepoDir::new();
    let Some(c) = repo.archiving_cluster() else {
        return;
    };
    base_backup(&repo, &c, &[]);

    let (child, _) = paused_backup(&repo, &c);
    let s = info_json(&repo, &[])["servers"][0].clone();
    let out = child.wait_with_output().expect("wait for base-backup");
    assert!(out.status.success(), "{}", text(&out));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let b = &s["running_backup"];
    assert_eq!(b["state"], "running", "{s}");
    assert_eq!(b["id"], id.as_str(), "{b}");
    assert!(b["phase"].is_string() && b["updated"].is_string(), "{b}");
    assert_eq!(s["lock"]["command"], "base-backup", "{s}");
    assert_eq!(s["lock"]["pid"], b["pid"], "{s}");
    // Done: nothing runs, and the backup is listed.
    let s = info_json(&repo, &[])["servers"][0].clone();
    assert_eq!(s["running_backup"], Value::Null, "{s}");
    assert_eq!(s["backups"].as_array().unwrap().len(), 2);

    // Killed while paused: its status object stays, but no live holder has its lock.
    let (mut child, _) = paused_backup(&repo, &c);
    // The status object names base-backup's own pid (under runuser when we are root).
    let s = info_json(&repo, &[])["servers"][0].clone();
    assert_eq!(s["running_backup"]["state"], "running", "{s}");
    let pid = u(&s["running_backup"]["pid"]).to_string();
    let st = std::process::Command::new("kill")
        .args(["-9", &pid])
        .status()
        .unwrap();
    assert!(st.success(), "kill -9 {pid}");
    let _ = child.wait();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let s = loop {
        let s = info_json(&repo, &[])["servers"][0].clone();
        if s["running_backup"]["state"] == "interrupted" {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the killed backup still shows as running: {s}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(s["lock"], Value::Null, "{s}");
    let human = screen(&repo, &[]);
    assert!(human.contains("Interrupted backup"), "{human}");
}

/// In an encrypted repository the refusal record stays in clear (like the locks) and
/// so keeps no message, which could name system identifiers.
#[test]
fn a_refusal_in_an_encrypted_repository_keeps_no_message() {
    let repo = RepoDir::new().encrypted();
    let Some(_c) = repo.archiving_cluster() else {
        return;
    };
    let dir = TestDir::new();
    let foreign = dir.join("0000000100000000000000F0");
    std::fs::write(&foreign, vec![0u8; 1 << 20]).unwrap();
    chown_postgres(&foreign);
    push_refused(&repo, &foreign);
    let stored: Value =
        serde_json::from_slice(&repo.read_stored("main/locks/wal-push-refusal.json"))
            .expect("the refusal record is plain JSON");
    assert_eq!(stored["wal"], "0000000100000000000000F0", "{stored}");
    assert_eq!(stored["message"], Value::Null, "{stored}");
    let r = info_json(&repo, &[])["servers"][0]["archiving"]["last_refusal"].clone();
    assert_eq!(r["reason"], "invalid_segment", "{r}");
    assert_eq!(r["message"], Value::Null, "{r}");
    let human = screen(&repo, &[]);
    assert!(
        human.contains("message not kept: encrypted repository"),
        "{human}"
    );
}
