//! Encryption at rest (issue 14, DESIGN.md section 8) on every backend: a real
//! cluster archives into and backs up to an encrypted repository and recovers from
//! it; nothing stored holds the data in clear or a content hash in a name; a rotated
//! secret opens the repository and the old one does not; a wrong, missing or old key
//! and a flipped byte in a WAL file, an object or a manifest all fail cleanly.

use crate::backup_restore::{base_backup, restore_ok};
use crate::common::*;
use sha2::{Digest, Sha256};
use std::fs;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

on_all_backends!(
    encrypted: encrypted_repository_round_trips_and_stores_no_plaintext,
    rotation_wrong_keys_and_tampering_fail_cleanly,
);

/// Run `case` on a fresh repository of `backend` that `init` will create encrypted.
fn encrypted(backend: Backend, case: fn(&RepoDir)) {
    let Some((repo, _peer)) = backend.repo() else {
        return;
    };
    case(&repo.encrypted());
}

/// Written into a table; it must not appear in any stored byte.
const MARKER: &str = "pgcellar-plaintext-marker-5f0c1e";

/// A cluster archiving uncompressed (so that without encryption the marker would be
/// there to find) into `repo`, registered with `init --encrypt`.
fn uncompressed_archiving_cluster(repo: &RepoDir) -> Option<Cluster> {
    let c = Cluster::init(ClusterOpts {
        archive_command: Some(format!(
            "PGCELLAR_COMPRESSION=none {}",
            repo.archive_command()
        )),
        ..Default::default()
    })?;
    repo.init_for(&c);
    Some(c)
}

/// Every stored file, with its path from the repository root, as stored.
fn stored_files(repo: &RepoDir) -> Vec<(String, Vec<u8>)> {
    let s = repo.storage();
    let mut paths = Vec::new();
    list_tree(s.as_ref(), "", "", &mut paths);
    paths
        .into_iter()
        .map(|p| {
            let bytes = s
                .read_all(&p)
                .unwrap_or_else(|e| panic!("reading {p}: {e}"));
            (p, bytes)
        })
        .collect()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// Restore `extra` into a new directory, start it to promotion, return it.
fn restore_and_start(repo: &RepoDir, extra: &[&str]) -> Cluster {
    let root = TestDir::new();
    let pgdata = root.join("pgdata");
    restore_ok(repo, &pgdata, extra);
    let c = Cluster::adopt_restored(root, pgdata);
    c.append_conf(&["archive_mode = off".to_string()]);
    c.start();
    c.wait_for_promotion(Duration::from_secs(120));
    c
}

fn encrypted_repository_round_trips_and_stores_no_plaintext(repo: &RepoDir) {
    let Some(c) = uncompressed_archiving_cluster(repo) else {
        return;
    };
    let root: serde_json::Value =
        serde_json::from_slice(&repo.read_stored("pgcellar.json")).expect("root file");
    assert_eq!(
        root["encryption"]["names"], "hmac-sha256-of-sha256",
        "{root}"
    );
    let wrapped: serde_json::Value =
        serde_json::from_slice(&repo.read_stored("pgcellar.key")).expect("key file");
    assert_eq!(wrapped["kdf"]["algorithm"], "hkdf-sha256", "{wrapped}");

    c.psql("CREATE TABLE secrets(i int, note text)");
    c.psql(&format!(
        "INSERT INTO secrets SELECT i, '{MARKER}' FROM generate_series(1, 2000) i"
    ));
    let id = base_backup(repo, &c, &["--compression", "none"]);
    c.psql(&format!(
        "INSERT INTO secrets SELECT i, '{MARKER}' FROM generate_series(2001, 3000) i"
    ));
    c.psql("SELECT pg_create_restore_point('after_3000')");
    c.psql("INSERT INTO secrets SELECT i, 'later' FROM generate_series(3001, 3100) i");
    c.switch_and_wait_archived();

    // PITR by name from the encrypted repository, WAL through wal-get.
    let r = restore_and_start(
        repo,
        &[
            "--backup",
            &id,
            "--target-name",
            "after_3000",
            "--target-action",
            "promote",
        ],
    );
    assert_eq!(
        r.psql(&format!(
            "SELECT count(*) FROM secrets WHERE note = '{MARKER}'"
        )),
        "3000"
    );
    assert_eq!(r.psql("SELECT count(*) FROM secrets"), "3000");
    assert!(
        r.log_text().contains("restored log file"),
        "wal-get was not used"
    );
    r.amcheck();
    drop(r);

    let out = repo.pgcellar(&["verify", "--all"]);
    assert!(out.status.success(), "verify: {}", stderr(&out));

    // Nothing stored holds the marker, or the SHA-256 of a file the backup holds
    // (PG_VERSION is stored whole, as an object named by its content).
    let version_sha = hex::encode(Sha256::digest(
        fs::read(c.pgdata.join("PG_VERSION")).unwrap(),
    ));
    let files = stored_files(repo);
    let objects = files
        .iter()
        .filter(|(p, _)| p.contains("/objects/"))
        .count();
    let wal = files.iter().filter(|(p, _)| p.contains("/wal/")).count();
    assert!(
        objects > 100 && wal > 3,
        "{objects} objects, {wal} WAL files"
    );
    for (path, bytes) in &files {
        assert!(
            !contains(bytes, MARKER.as_bytes()),
            "{path} holds the marker in clear"
        );
        assert!(
            !path.contains(&version_sha),
            "{path} is named by a plain SHA-256"
        );
        if path.ends_with("backup.json") || path.ends_with("server.json") {
            assert!(
                !contains(bytes, b"system_identifier") && !contains(bytes, b"\"files\""),
                "{path} is readable JSON"
            );
        }
    }
}

/// `wal-get` of `seg` into a fresh path with `args` instead of the repository's own
/// secret; returns the exit code, stderr and whether anything was delivered.
fn wal_get_with(repo: &RepoDir, key_args: &[String], seg: &str) -> (Option<i32>, String, bool) {
    let dir = TestDir::new();
    chown_postgres(dir.path());
    let dest = dir.join("got");
    let mut args = repo.args();
    // Drop the repository's own secret flag and its value.
    if let Some(i) = args
        .iter()
        .position(|a| a == "--key-file" || a == "--passphrase-file")
    {
        args.drain(i..i + 2);
    }
    let out = pg_command(bin("wal-get"))
        .args(&args)
        .args(key_args)
        .arg(seg)
        .arg(&dest)
        .output()
        .expect("spawn wal-get");
    (out.status.code(), stderr(&out), dest.exists())
}

/// Flip one byte in the middle of what is stored at `path`.
fn flip_a_byte(repo: &RepoDir, path: &str) {
    let mut bytes = repo.read_stored(path);
    let at = bytes.len() / 2;
    bytes[at] ^= 0x20;
    repo.write_stored(path, &bytes);
    // On disk (local, ssh) the rewrite belongs to this test's user; give it back.
    let on_disk = repo.path.join(path);
    if repo.s3.is_none() && on_disk.exists() {
        chown_postgres(&on_disk);
    }
}

fn rotation_wrong_keys_and_tampering_fail_cleanly(repo: &RepoDir) {
    let Some(c) = repo.archiving_cluster() else {
        return;
    };
    c.psql("CREATE TABLE t(i int)");
    c.psql("INSERT INTO t SELECT generate_series(1, 1000)");
    let id = base_backup(repo, &c, &[]);
    c.psql("INSERT INTO t SELECT generate_series(1001, 2000)");
    let seg = c.switch_and_wait_archived();
    let key_id = |repo: &RepoDir| -> String {
        let w: serde_json::Value =
            serde_json::from_slice(&repo.read_stored("pgcellar.key")).unwrap();
        w["key_id"].as_str().unwrap().to_string()
    };
    let before = key_id(repo);

    // A missing or wrong key: one clear line, > 125, nothing delivered.
    let (code, err, got) = wal_get_with(repo, &[], &seg);
    assert!(code.unwrap_or(0) > 125 && !got, "{code:?} {err}");
    assert!(
        err.contains("is encrypted") && err.trim().lines().count() == 1,
        "{err}"
    );
    let other = TestDir::new();
    let wrong = other.join("wrong.key");
    run_ok(
        Command::new(bin("pgcellar"))
            .args(["key", "generate"])
            .arg(&wrong),
    );
    chown_postgres(&wrong);
    let wrong_args = vec!["--key-file".to_string(), wrong.display().to_string()];
    let (code, err, got) = wal_get_with(repo, &wrong_args, &seg);
    assert!(code.unwrap_or(0) > 125 && !got, "{code:?} {err}");
    assert!(
        err.contains("does not open") && err.trim().lines().count() == 1,
        "{err}"
    );
    // wal-push with the wrong key: 1, so PostgreSQL retries; nothing is stored.
    let wal_before = repo.wal_files();
    let current = c.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    let seg_file = other.join(&current);
    fs::copy(c.pgdata.join("pg_wal").join(&current), &seg_file).unwrap();
    chown_postgres(other.path());
    let mut args = repo.args();
    let i = args.iter().position(|a| a == "--key-file").unwrap();
    args[i + 1] = wrong.display().to_string();
    let out = pg_command(bin("wal-push"))
        .args(&args)
        .arg(&seg_file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("does not open"), "{}", stderr(&out));
    assert_eq!(repo.wal_files(), wal_before);

    // Rotate to a passphrase: the key id stays, the old key file stops working, the
    // new passphrase restores.
    let pass = other.join("passphrase");
    fs::write(&pass, "correct horse battery staple\n").unwrap();
    chown_postgres(&pass);
    let out = repo.pgcellar(&[
        "key",
        "rotate",
        "--new-passphrase-file",
        &pass.display().to_string(),
        "--kdf-memory",
        "8",
        "--kdf-iterations",
        "1",
    ]);
    assert!(out.status.success(), "rotate: {}", stderr(&out));
    assert_eq!(key_id(repo), before);
    let old = repo.pgcellar(&["list"]);
    assert_eq!(old.status.code(), Some(1));
    assert!(stderr(&old).contains("does not open"), "{}", stderr(&old));
    repo.set_key("--passphrase-file", &pass);
    let listed = repo.pgcellar(&["list"]);
    assert!(listed.status.success(), "{}", stderr(&listed));
    let r = restore_and_start(repo, &["--backup", &id]);
    assert_eq!(r.psql("SELECT count(*) FROM t"), "2000");
    drop(r);

    // Tampering: a flipped byte in a WAL file, an object and a manifest is found,
    // and nothing of it is delivered.
    let wal_path = repo
        .wal_files()
        .into_iter()
        .find(|f| f.contains(&seg))
        .unwrap_or_else(|| panic!("{seg} not stored"));
    flip_a_byte(repo, &format!("{}/wal/{wal_path}", repo.server));
    let (code, err, got) = wal_get_with(
        repo,
        &["--passphrase-file".into(), pass.display().to_string()],
        &seg,
    );
    assert!(code.unwrap_or(0) > 125 && !got, "{code:?} {err}");
    assert!(err.contains("altered"), "{err}");

    let s = repo.storage();
    let mut objects = Vec::new();
    list_tree(
        s.as_ref(),
        &format!("{}/objects", repo.server),
        "",
        &mut objects,
    );
    let object = format!("{}/objects/{}", repo.server, objects[objects.len() / 2]);
    flip_a_byte(repo, &object);
    let out = repo.pgcellar(&["verify", &id]);
    assert!(!out.status.success(), "verify passed a damaged object");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(said.contains("altered"), "{said}");

    flip_a_byte(repo, &format!("{}/backups/{id}/backup.json", repo.server));
    let dest = TestDir::new();
    let out = pg_command(bin("restore"))
        .args(repo.args())
        .args(["--backup", &id])
        .arg(dest.join("pgdata"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "restore used a damaged manifest");
    assert!(stderr(&out).contains("altered"), "{}", stderr(&out));
    assert!(!Path::new(&dest.join("pgdata/PG_VERSION")).exists());
}
