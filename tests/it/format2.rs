//! Repository format 2 end to end, against a real PostgreSQL: files rebuilt from
//! whole-file objects and page deltas are byte-identical to what was backed up; a
//! chain of incrementals under load survives deletions in any order; relation
//! truncation, drop and re-create, `CREATE DATABASE ... STRATEGY FILE_COPY` and
//! `ALTER TABLE ... SET TABLESPACE` between backups all restore to the primary's rows.
//!
//! Every test runs as `<name>::local` and `<name>::ssh`. A restored copy's files are
//! compared with its manifest (size and SHA-256 of every file, nothing else on disk)
//! before PostgreSQL starts on it, and then PostgreSQL's rows are compared with what
//! the primary had at the recovery target.
//!
//! Why this file is long: three end-to-end scenarios, each with the assertions on
//! the manifests that explain a failure, sharing the helpers that compare restored
//! files with their manifest and with the source.

use crate::backup_restore::{base_backup, manifest, restore_ok};
use crate::common::*;
use pgcellar::repo::manifest::{FileEntry, Manifest};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

on_all_backends!(
    full_and_incremental_backups_rebuild_byte_identical_files,
    truncate_drop_file_copy_database_and_set_tablespace_restore_correctly,
);
// Compares the objects on disk with the referenced set.
on_both_backends!(incrementals_under_load_survive_deletions_in_any_order);

/// Files a restore writes itself (recovery settings, signal, label), beside the
/// backed-up ones; postgresql.auto.conf is backed up but gets restore's settings.
const WRITTEN_BY_RESTORE: &[&str] = &[
    "backup_label",
    "tablespace_map",
    "recovery.signal",
    "standby.signal",
    "postgresql.auto.conf",
];

/// SHA-256 (hex) and size of a file, read in pieces.
fn sha256_file(path: &Path) -> (String, u64) {
    let mut f = fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut size = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        size += n as u64;
    }
    (hex::encode(h.finalize()), size)
}

/// Where a manifest path lands in a restore into `dest`, with tablespace `oid`s at
/// `ts[oid]`.
fn restored_path(dest: &Path, ts: &HashMap<u32, PathBuf>, path: &str) -> PathBuf {
    if let Some(rest) = path.strip_prefix("data/") {
        return dest.join(rest);
    }
    let rest = path
        .strip_prefix("tablespaces/")
        .unwrap_or_else(|| panic!("manifest path {path}"));
    let (oid, rel) = rest.split_once('/').expect("tablespaces/<oid>/...");
    let oid: u32 = oid.parse().expect("tablespace oid");
    ts.get(&oid)
        .unwrap_or_else(|| panic!("no location for tablespace {oid}"))
        .join(rel)
}

/// Regular files below `dir` (symbolic links not followed), relative to it.
fn regular_files(dir: &Path) -> Vec<PathBuf> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(rd) = fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(md) = fs::symlink_metadata(&p) else {
                continue;
            };
            if md.is_dir() {
                walk(root, &p, out);
            } else if md.is_file() {
                out.push(p.strip_prefix(root).expect("below root").to_path_buf());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// A restore of `m` into `dest` holds exactly the manifest's files (plus what restore
/// writes itself), each with the manifest's size and SHA-256.
fn assert_restored_as_manifest(m: &Manifest, dest: &Path, ts: &HashMap<u32, PathBuf>) {
    for f in &m.files {
        let p = restored_path(dest, ts, &f.path);
        if f.path == "data/postgresql.auto.conf" {
            assert!(p.is_file(), "{} missing", p.display());
            continue;
        }
        let (sha, size) = sha256_file(&p);
        assert_eq!(
            size, f.size,
            "size of restored {} (backup {})",
            f.path, m.id
        );
        assert_eq!(
            sha, f.sha256,
            "SHA-256 of restored {} (backup {}, objects {:?})",
            f.path, m.id, f.objects
        );
    }
    let known: std::collections::HashSet<PathBuf> = m
        .files
        .iter()
        .map(|f| restored_path(dest, ts, &f.path))
        .collect();
    let mut roots = vec![dest.to_path_buf()];
    roots.extend(ts.values().cloned());
    for root in roots {
        for rel in regular_files(&root) {
            let p = root.join(&rel);
            let by_restore = root == dest
                && WRITTEN_BY_RESTORE
                    .iter()
                    .any(|w| Path::new(w) == rel.as_path());
            assert!(
                known.contains(&p) || by_restore,
                "restore of {} wrote {}, which is not in its manifest",
                m.id,
                p.display()
            );
        }
    }
}

/// Compare every restored file (postgresql.auto.conf aside, which restore rewrites)
/// byte for byte with the source's file that was last written at least a second
/// before the backup started, so that it is what the backup read; `ts` and `src_ts`
/// place tablespaces in the restore and in the source. Returns the paths compared.
fn assert_same_as_source(
    m: &Manifest,
    dest: &Path,
    ts: &HashMap<u32, PathBuf>,
    pgdata: &Path,
    src_ts: &HashMap<u32, PathBuf>,
) -> Vec<String> {
    let horizon = SystemTime::from(m.start_time) - Duration::from_secs(1);
    let mut compared = Vec::new();
    for f in m
        .files
        .iter()
        .filter(|f| f.path != "data/postgresql.auto.conf")
    {
        let src = restored_path(pgdata, src_ts, &f.path);
        let Ok(md) = fs::metadata(&src) else {
            continue;
        };
        if md.modified().expect("mtime") >= horizon {
            continue;
        }
        let a = fs::read(&src).expect("read source file");
        let b = fs::read(restored_path(dest, ts, &f.path)).expect("read restored file");
        if a != b {
            let first = a
                .chunks(8192)
                .zip(b.chunks(8192))
                .position(|(x, y)| x != y)
                .map_or("none within the shorter length".to_string(), |p| {
                    p.to_string()
                });
            panic!(
                "restored {} of backup {} differs from the source ({} vs {} bytes, first \
                 differing 8 KiB block {first}; objects {:?})",
                f.path,
                m.id,
                b.len(),
                a.len(),
                f.objects
            );
        }
        compared.push(f.path.clone());
    }
    compared
}

/// The manifest path of a relation's first segment (in the `postgres` database
/// unless `db` says otherwise).
fn relation_path(c: &Cluster, db: &str, rel: &str) -> String {
    let p = c.psql_in(db, &format!("SELECT pg_relation_filepath('{rel}')"));
    if let Some(rest) = p.strip_prefix("pg_tblspc/") {
        format!("tablespaces/{rest}")
    } else {
        format!("data/{p}")
    }
}

fn entry<'a>(m: &'a Manifest, path: &str) -> &'a FileEntry {
    m.files
        .iter()
        .find(|f| f.path == path)
        .unwrap_or_else(|| panic!("{path} not in backup {}", m.id))
}

/// Restore `extra` (plus `--jobs 2`) into a new directory, check its files against
/// the manifest, start it without archiving and wait until it is out of recovery.
fn restore_check_start(
    repo: &RepoDir,
    id: &str,
    extra: &[&str],
    ts: &HashMap<u32, PathBuf>,
) -> Cluster {
    let root = TestDir::new();
    let pgdata = root.join("pgdata");
    let mut args = vec!["--backup", id, "--jobs", "2"];
    args.extend(extra);
    let maps: Vec<String> = ts
        .iter()
        .map(|(oid, loc)| format!("{oid}={}", loc.display()))
        .collect();
    for m in &maps {
        args.extend(["--tablespace-map", m.as_str()]);
    }
    let log = restore_ok(repo, &pgdata, &args);
    assert!(log.contains(&format!("restoring backup {id}")), "{log}");
    assert_restored_as_manifest(&manifest(repo, id), &pgdata, ts);
    let c = Cluster::adopt_restored(root, pgdata);
    c.append_conf(&["archive_mode = off".to_string()]);
    c.start();
    c.wait_for_promotion(Duration::from_secs(120));
    c
}

/// Count and checksum of every table of every database: database -> table -> state.
fn cluster_state(c: &Cluster) -> BTreeMap<String, BTreeMap<String, String>> {
    let dbs = c.psql("SELECT datname FROM pg_database WHERE datallowconn ORDER BY 1");
    let mut out = BTreeMap::new();
    for db in dbs.lines() {
        let tables = c.psql_in(
            db,
            "SELECT quote_ident(schemaname) || '.' || quote_ident(tablename) FROM pg_tables \
             WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1",
        );
        let mut per = BTreeMap::new();
        for t in tables.lines() {
            let state = c.psql_in(
                db,
                &format!(
                    "SELECT count(*) || ' ' || coalesce(md5(string_agg(x::text, ',' \
                     ORDER BY x::text)), '-') FROM {t} x"
                ),
            );
            per.insert(t.to_string(), state);
        }
        out.insert(db.to_string(), per);
    }
    out
}

fn pgcellar_ok(repo: &RepoDir, args: &[&str]) -> String {
    let mut cmd = pg_command(bin("pgcellar"));
    cmd.args(repo.args()).args(args);
    String::from_utf8_lossy(&run_ok(&mut cmd).stdout).into_owned()
}

fn object_count(repo: &RepoDir) -> usize {
    regular_files(&repo.path.join(&repo.server).join("objects")).len()
}

/// (a) A full backup and two incrementals of an idle cluster restore (unstarted) to
/// files with the manifest's hashes, and to the source's very bytes for every file
/// the source has not written since the backup started, among them files (one in a
/// tablespace) rebuilt from a base and one then two page deltas.
fn full_and_incremental_backups_rebuild_byte_identical_files(repo: &RepoDir) {
    // No autovacuum: nothing but the test and the checkpoints writes a relation file.
    let Some(c) = Cluster::init(ClusterOpts {
        archive_command: Some(repo.archive_command()),
        conf: vec!["autovacuum = off".into()],
        ..Default::default()
    }) else {
        return;
    };
    repo.init_for(&c);
    let tsroot = TestDir::new();
    let ts_loc = tsroot.join("ts1");
    fs::create_dir(&ts_loc).unwrap();
    chown_postgres(&ts_loc);
    c.psql(&format!(
        "CREATE TABLESPACE ts1 LOCATION '{}'",
        ts_loc.display()
    ));
    let ts_oid: u32 = c
        .psql("SELECT oid FROM pg_tablespace WHERE spcname = 'ts1'")
        .parse()
        .unwrap();
    let src_ts = HashMap::from([(ts_oid, c.pgdata.join("pg_tblspc").join(ts_oid.to_string()))]);
    // t (and w, in a tablespace) change between backups: page deltas; u never does:
    // reused objects.
    c.psql("CREATE TABLE t(id int PRIMARY KEY, s text)");
    c.psql("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 20000) g");
    c.psql("CREATE TABLE w(id int PRIMARY KEY, s text) TABLESPACE ts1");
    c.psql("INSERT INTO w SELECT g, md5(g::text) FROM generate_series(1, 5000) g");
    c.psql("CREATE TABLE u(id int, s text)");
    c.psql("INSERT INTO u SELECT g, md5((-g)::text) FROM generate_series(1, 5000) g");
    let t_path = relation_path(&c, "postgres", "t");
    let w_path = relation_path(&c, "postgres", "w");
    assert!(w_path.starts_with("tablespaces/"), "{w_path}");
    let u_path = relation_path(&c, "postgres", "u");

    let mut restored = Vec::new();
    for round in 0..3 {
        if round > 0 {
            // A few pages in the middle, and new pages at the end.
            for (table, rows) in [("t", 20000), ("w", 5000)] {
                c.psql(&format!(
                    "UPDATE {table} SET s = 'round {round} ' || s WHERE id % 1000 = {round}"
                ));
                c.psql(&format!(
                    "INSERT INTO {table} SELECT g, md5(g::text) FROM generate_series({}, {}) g",
                    rows + round * 300 - 299,
                    rows + round * 300
                ));
            }
        }
        // Hint bits set and every page on disk now, so that nothing rewrites t, w or
        // u after the backup starts; then past the backup's start by more than a
        // second.
        c.psql(if round == 0 {
            "VACUUM (FREEZE) t, w, u"
        } else {
            "VACUUM (FREEZE) t, w"
        });
        c.psql("CHECKPOINT");
        std::thread::sleep(Duration::from_millis(2500));
        let id = base_backup(repo, &c, &["--jobs", "2"]);
        let m = manifest(repo, &id);
        for p in [&t_path, &w_path] {
            let f = entry(&m, p);
            assert!(f.pages.is_some(), "{p} is not page-level: {f:?}");
            assert_eq!(f.objects.len(), round + 1, "{p} in backup {round}: {f:?}");
        }
        if round > 0 {
            assert_eq!(entry(&m, &u_path).added_size, 0, "u stored again");
        }
        let root = TestDir::new();
        let dest = root.join("pgdata");
        let ts = HashMap::from([(ts_oid, root.join("ts1"))]);
        let map = format!("ts1={}", root.join("ts1").display());
        restore_ok(
            repo,
            &dest,
            &["--backup", &id, "--jobs", "2", "--tablespace-map", &map],
        );
        assert_restored_as_manifest(&m, &dest, &ts);
        restored.push((m, root, dest, ts));
    }

    // Quiet, then compare with the source's bytes.
    c.stop();
    for (i, (m, _root, dest, ts)) in restored.iter().enumerate() {
        let compared = assert_same_as_source(m, dest, ts, &c.pgdata, &src_ts);
        assert!(
            compared.len() > 100,
            "backup {i}: only {} files compared",
            compared.len()
        );
        assert!(compared.contains(&u_path), "backup {i}: u not compared");
        // t and w have changed since the first two, not since the last.
        for p in [&t_path, &w_path] {
            assert_eq!(
                compared.contains(p),
                i == 2,
                "backup {i}: {p} compared or not"
            );
        }
    }
}

/// The rows pgbench and the test wrote, summed up: t's count and checksum, and
/// pgbench's balance and history.
fn load_state(c: &Cluster) -> String {
    c.psql(
        "SELECT (SELECT count(*) || ' ' || md5(string_agg(t::text, ',' ORDER BY id)) FROM t) \
         || ' ' || (SELECT sum(abalance) FROM pgbench_accounts) \
         || ' ' || (SELECT count(*) FROM pgbench_history)",
    )
}

/// (b) A full and 11 incrementals, each after a round of pgbench (standard
/// transactions plus random single-row updates and inserts on t); then four backups
/// deleted, from the middle and the oldest, in a fixed shuffled order, and the
/// sweep leaves exactly the objects the others reference; then `verify --all` passes,
/// one more incremental finds page hashes to compare with, and each remaining backup
/// whose parent is gone, and the newest, restores to exactly the rows of its point,
/// by `--target-immediate` or by a restore point named after it.
fn incrementals_under_load_survive_deletions_in_any_order(repo: &RepoDir) {
    let Some(c) = repo.archiving_cluster() else {
        return;
    };
    // About 3 MB: each round's updates touch a minority of its pages.
    c.psql("CREATE TABLE t(id serial PRIMARY KEY, s text)");
    c.psql(
        "INSERT INTO t(s) SELECT md5(g::text) || md5((-g)::text) \
         FROM generate_series(1, 30000) g",
    );
    c.pgbench(&["-i", "-s", "1", "-q"]);
    let scripts = TestDir::new();
    let update = scripts.join("update.sql");
    fs::write(
        &update,
        "\\set id random(1, 30000)\nUPDATE t SET s = md5(random()::text) WHERE id = :id;\n",
    )
    .unwrap();
    let insert = scripts.join("insert.sql");
    fs::write(&insert, "INSERT INTO t(s) VALUES (md5(random()::text));\n").unwrap();
    let update_w = format!("{}@2", update.display());
    let insert_w = format!("{}@1", insert.display());

    // A round of load (none before the full), then a backup: its id and the state
    // it holds.
    let point = |round: usize| {
        if round > 0 {
            c.pgbench(&[
                "-n",
                "-c",
                "2",
                "-t",
                "100",
                "-b",
                "tpcb-like@3",
                "-f",
                &update_w,
                "-f",
                &insert_w,
            ]);
        }
        // No writes from here to the restore point: both recovery targets below see
        // exactly this state.
        let state = load_state(&c);
        let id = base_backup(repo, &c, &["--jobs", "2"]);
        c.psql(&format!("SELECT pg_create_restore_point('after_{round}')"));
        (id, state)
    };
    let mut points: Vec<(String, String)> = (0..12).map(point).collect();
    c.switch_and_wait_archived();

    let manifests: Vec<Manifest> = points.iter().map(|(id, _)| manifest(repo, id)).collect();
    let full = &manifests[0];
    let mut with_deltas = 0;
    for (i, m) in manifests.iter().enumerate().skip(1) {
        assert_eq!(
            m.parent.as_ref(),
            Some(&manifests[i - 1].id),
            "parent of {i}"
        );
        // A rebase stores a whole file again, so one incremental may store much of
        // what the full did (t is most of this small cluster), but never all of it.
        assert!(
            m.totals.copied_stored_size * 4 < full.totals.copied_stored_size * 3,
            "incremental {i} stored {} bytes, the full {}",
            m.totals.copied_stored_size,
            full.totals.copied_stored_size
        );
        eprintln!(
            "incremental {i}: stored {} (full {}), {} files with deltas, max chain {}",
            m.totals.copied_stored_size,
            full.totals.copied_stored_size,
            m.files.iter().filter(|f| f.objects.len() > 1).count(),
            m.files.iter().map(|f| f.objects.len()).max().unwrap_or(0)
        );
        if m.files.iter().any(|f| f.objects.len() > 1) {
            with_deltas += 1;
        }
    }
    // Every big file changes in every round: storing changed files whole, each
    // incremental would store about as much as the full.
    let sizes: Vec<u64> = manifests[1..]
        .iter()
        .map(|m| m.totals.copied_stored_size)
        .collect();
    let sum: u64 = sizes.iter().sum();
    assert!(
        sum < 5 * full.totals.copied_stored_size,
        "11 incrementals stored {sum} bytes ({sizes:?}), the full {}",
        full.totals.copied_stored_size
    );
    let small = sizes
        .iter()
        .filter(|&&s| s * 4 < full.totals.copied_stored_size)
        .count();
    assert!(
        small >= 3,
        "only {small} incrementals stored less than a quarter of the full: {sizes:?}"
    );
    assert!(
        with_deltas >= 8,
        "only {with_deltas} incrementals rebuild a file from page deltas"
    );
    // Deltas and page hashes only for page-level main-fork files; never more than
    // MAX_DELTAS deltas, together at most half the base's stored size.
    for m in &manifests {
        for f in &m.files {
            let name = f.path.rsplit('/').next().unwrap_or("");
            let main_fork =
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit() || b == b'.');
            if f.pages.is_some() || f.objects.len() > 1 {
                assert!(
                    main_fork && f.size >= 256 * 1024 && f.size % 8192 == 0,
                    "{} in {} is not page-level: {f:?}",
                    f.path,
                    m.id
                );
            }
            assert!(
                f.objects.len() <= 1 + pgcellar::repo::manifest::MAX_DELTAS,
                "{} in {}: {f:?}",
                f.path,
                m.id
            );
            let (base, deltas) = f.objects.split_first().expect("a base object");
            let delta_bytes: u64 = deltas.iter().map(|d| d.stored_size).sum();
            assert!(
                delta_bytes * 2 <= base.stored_size,
                "{} in {}: deltas of {delta_bytes} bytes over a base of {}",
                f.path,
                m.id,
                base.stored_size
            );
        }
    }
    // Some file went through at least two deltas on top of its base.
    assert!(
        manifests
            .iter()
            .any(|m| m.files.iter().any(|f| f.objects.len() > 2)),
        "no file ever had two deltas"
    );

    let before = object_count(repo);
    let deleted = [5, 0, 8, 1];
    for &i in &deleted {
        pgcellar_ok(repo, &["delete", &points[i].0]);
        assert!(
            !repo
                .path
                .join(&repo.server)
                .join("backups")
                .join(&points[i].0)
                .exists(),
            "backup {i} still there"
        );
    }
    let after = object_count(repo);
    assert!(
        after < before,
        "deleting 4 backups removed no object ({before} before)"
    );
    pgcellar_ok(repo, &["verify", "--all"]);
    // The sweep left exactly the objects the remaining manifests name (no backup
    // was running), page hashes included.
    let remaining: Vec<Manifest> = (0..points.len())
        .filter(|i| !deleted.contains(i))
        .map(|i| manifest(repo, &points[i].0))
        .collect();
    let objects = repo.path.join(&repo.server).join("objects");
    let mut referenced: Vec<PathBuf> = remaining
        .iter()
        .flat_map(|m| m.files.iter().flat_map(|f| f.all_objects()))
        .map(|o| repo.path.join(o.path(&repo.server)))
        .map(|p| {
            p.strip_prefix(&objects)
                .expect("below objects/")
                .to_path_buf()
        })
        .collect();
    referenced.sort();
    referenced.dedup();
    assert_eq!(
        regular_files(&objects),
        referenced,
        "objects on disk after the deletions are not those referenced"
    );
    // The next incremental still finds the newest one's page hashes.
    points.push(point(points.len()));
    c.switch_and_wait_archived();
    let last = manifest(repo, &points[points.len() - 1].0);
    assert_eq!(
        last.parent.as_ref(),
        Some(&remaining[remaining.len() - 1].id)
    );
    assert!(
        last.files
            .iter()
            .any(|f| f.objects.len() > 1 && f.added_size > 0),
        "no new delta after the deletions"
    );

    // verify has checked every object of the eight that remain; restore (the slow
    // part, about 10 s each over SSH) the three whose parent is gone, 2 (now the
    // oldest), 6 and 9, and the one taken after the deletions, 12.
    let no_ts = HashMap::new();
    for (i, (id, want)) in points.iter().enumerate() {
        let parent_gone = i.checked_sub(1).is_some_and(|p| deleted.contains(&p));
        if deleted.contains(&i) || !(parent_gone || i == points.len() - 1) {
            continue;
        }
        let name = format!("after_{i}");
        let target: Vec<&str> = if i % 2 == 0 {
            vec!["--target-immediate"]
        } else {
            vec!["--target-name", &name]
        };
        let mut args = target.clone();
        args.extend(["--target-action", "promote"]);
        let r = restore_check_start(repo, id, &args, &no_ts);
        assert_eq!(
            &load_state(&r),
            want,
            "backup {i} ({id}) restored with {target:?}"
        );
        r.stop();
    }
}

/// (e) Between a full and an incremental: TRUNCATE (new relfilenode) and fewer rows,
/// a table shrunk in place by VACUUM, DROP and CREATE of a table of the same name,
/// `CREATE DATABASE ... STRATEGY FILE_COPY` from a template (once into a tablespace)
/// then changes in the copies and the template, `ALTER TABLE ... SET TABLESPACE`; the incremental restores (tablespace remapped) to
/// every table of every database as the primary had it, and so does one more
/// incremental after changes in the copied database.
fn truncate_drop_file_copy_database_and_set_tablespace_restore_correctly(repo: &RepoDir) {
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
    let rows = |t: &str, n: u32| {
        format!("INSERT INTO {t} SELECT g, md5(g::text) FROM generate_series(1, {n}) g")
    };
    for (t, n) in [("tr", 10000), ("tv", 40000), ("dr", 5000), ("mv", 10000)] {
        c.psql(&format!("CREATE TABLE {t}(id int PRIMARY KEY, s text)"));
        c.psql(&rows(t, n));
    }
    c.psql("CREATE DATABASE src_db");
    c.psql_in("src_db", "CREATE TABLE a(id int PRIMARY KEY, s text)");
    c.psql_in("src_db", &rows("a", 10000));
    // Every page all-visible now, so that the VACUUM below rewrites only what it must.
    c.psql("VACUUM");
    c.psql_in("src_db", "VACUUM");
    c.psql("CHECKPOINT");
    let id1 = base_backup(repo, &c, &["--jobs", "2"]);
    let m1 = manifest(repo, &id1);
    let old: Vec<String> = ["tr", "dr", "mv"]
        .iter()
        .map(|t| relation_path(&c, "postgres", t))
        .collect();
    let tv_path = relation_path(&c, "postgres", "tv");
    let tv_before = entry(&m1, &tv_path).size;
    assert!(entry(&m1, &tv_path).pages.is_some());

    c.psql("TRUNCATE tr");
    c.psql(&rows("tr", 300));
    // Empty pages at the end: VACUUM truncates the same file (still page-level).
    c.psql("DELETE FROM tv WHERE id > 20000");
    c.psql("VACUUM tv");
    c.psql("UPDATE tv SET s = 'kept ' || s WHERE id % 1000 = 0");
    c.psql("DROP TABLE dr");
    c.psql("CREATE TABLE dr(id int PRIMARY KEY, s text, extra int)");
    c.psql("INSERT INTO dr SELECT g, md5((g * 7)::text), g FROM generate_series(1, 3000) g");
    c.psql("CREATE DATABASE d2 STRATEGY FILE_COPY TEMPLATE src_db");
    c.psql_in("d2", "UPDATE a SET s = 'in d2' WHERE id % 50 = 0");
    c.psql_in(
        "d2",
        "INSERT INTO a SELECT g, 'new in d2' FROM generate_series(10001, 10500) g",
    );
    c.psql_in("src_db", "DELETE FROM a WHERE id % 3 = 0");
    c.psql("CREATE DATABASE d3 STRATEGY FILE_COPY TEMPLATE src_db TABLESPACE ts1");
    c.psql_in("d3", "UPDATE a SET s = 'in d3' WHERE id % 70 = 0");
    c.psql("ALTER TABLE mv SET TABLESPACE ts1");
    c.psql("UPDATE mv SET s = 'moved' WHERE id % 100 = 0");
    // The dropped and truncated files are unlinked at a checkpoint.
    c.psql("CHECKPOINT");
    let want2 = cluster_state(&c);
    let id2 = base_backup(repo, &c, &["--jobs", "2"]);
    let m2 = manifest(repo, &id2);
    assert_eq!(m2.parent.as_ref(), Some(&m1.id));
    for p in &old {
        assert!(
            !m2.files.iter().any(|f| &f.path == p),
            "{p} (dropped, truncated or moved) is still in the incremental"
        );
    }
    let mv_new = relation_path(&c, "postgres", "mv");
    assert!(mv_new.starts_with("tablespaces/"), "{mv_new}");
    entry(&m2, &mv_new);
    let tv = entry(&m2, &tv_path);
    assert!(
        tv.size < tv_before,
        "tv not shrunk: {tv_before} -> {}",
        tv.size
    );
    assert!(tv.objects.len() > 1, "tv stored whole again: {tv:?}");

    let ts_oid: u32 = c
        .psql("SELECT oid FROM pg_tablespace WHERE spcname = 'ts1'")
        .parse()
        .unwrap();
    // Each restore gets its own tablespace directory (the primary keeps the original).
    let ts_dirs = [TestDir::new(), TestDir::new()];
    let ts = |i: usize| HashMap::from([(ts_oid, ts_dirs[i].join("ts1"))]);
    let promote = ["--target-immediate", "--target-action", "promote"];
    let r = restore_check_start(repo, &id2, &promote, &ts(0));
    assert_eq!(cluster_state(&r), want2, "restore of {id2}");
    assert_eq!(r.psql("SELECT count(*) FROM tr"), "300");
    assert_eq!(r.psql_in("d2", "SELECT count(*) FROM a"), "10500");
    // Copied after a third of the template's rows were deleted.
    assert_eq!(r.psql_in("d3", "SELECT count(*) FROM a"), "6667");
    r.amcheck();
    r.stop();
    drop(r);

    // The copied database's files now have a parent version to delta against.
    let a_d2 = relation_path(&c, "d2", "a");
    c.psql_in("d2", "UPDATE a SET s = 'again' WHERE id % 400 = 0");
    // tv, shrunk by the last delta, grows past that size again.
    c.psql("INSERT INTO tv SELECT g, md5(g::text) FROM generate_series(20001, 30000) g");
    // And the moved table's file has one to delta against in the tablespace.
    c.psql("UPDATE mv SET s = 'again' WHERE id % 400 = 0");
    c.psql("CHECKPOINT");
    let want3 = cluster_state(&c);
    let id3 = base_backup(repo, &c, &["--jobs", "2"]);
    let m3 = manifest(repo, &id3);
    let a = entry(&m3, &a_d2);
    assert!(a.objects.len() > 1 && a.added_size > 0, "{a:?}");
    let tv3 = entry(&m3, &tv_path);
    assert!(
        tv3.size > tv.size,
        "tv did not grow: {} -> {}",
        tv.size,
        tv3.size
    );
    assert_eq!(tv3.objects.len(), 3, "tv: base, shrink, growth: {tv3:?}");
    let mv = entry(&m3, &mv_new);
    assert!(mv.objects.len() > 1 && mv.added_size > 0, "{mv:?}");
    let r = restore_check_start(repo, &id3, &promote, &ts(1));
    assert_eq!(cluster_state(&r), want3, "restore of {id3}");
    r.amcheck();
}
