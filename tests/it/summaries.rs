//! PostgreSQL 17 WAL summaries through `pgcellar::pg::summarized_changes`, against a
//! real PostgreSQL 17 (`.ci/install-pg-npm 17`): the blocks an update touched, the
//! limit blocks of truncation and new relation files, the database-level entry of
//! CREATE DATABASE ... FILE_COPY, and `None` whenever summaries cannot prove anything.

use crate::common::{pg_bindir_or_skip, Cluster, ClusterOpts};
use pgcellar::pg::{self, BlockChanges, RelKey};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// Long enough for the summarizer of a loaded CI machine.
const WAIT: Duration = Duration::from_secs(60);

/// A PostgreSQL 17 cluster with autovacuum off (it would touch pages on its own) and
/// `extra` settings; `None` (loudly) when PostgreSQL 17 is missing locally.
fn pg17(extra: &[&str]) -> Option<Cluster> {
    let bindir = pg_bindir_or_skip(17)?;
    let mut conf = vec!["autovacuum = off".to_string()];
    conf.extend(extra.iter().map(|s| s.to_string()));
    Cluster::init(ClusterOpts {
        bindir: Some(bindir),
        conf,
        ..Default::default()
    })
}

/// A checkpoint's redo LSN: where the summarizer ends one summary and starts the next.
fn checkpoint(c: &Cluster) -> String {
    c.psql("CHECKPOINT");
    c.psql("SELECT redo_lsn FROM pg_control_checkpoint()")
}

fn timeline(c: &Cluster) -> u32 {
    c.psql("SELECT timeline_id FROM pg_control_checkpoint()")
        .parse()
        .expect("timeline")
}

/// The relation key of `table`'s main fork, through its manifest path.
fn key_of(c: &Cluster, table: &str) -> RelKey {
    let path = c.psql(&format!("SELECT pg_relation_filepath('{table}')"));
    let (key, segno) = pg::relation_file(&format!("data/{path}"))
        .unwrap_or_else(|| panic!("{path} is not a relation file"));
    assert_eq!(segno, 0, "{path}");
    key
}

/// The heap blocks holding rows of `table` with the given ids.
fn blocks_of(c: &Cluster, table: &str, ids: &str) -> BTreeSet<u32> {
    c.psql(&format!(
        "SELECT DISTINCT (ctid::text::point)[0]::int FROM {table} WHERE id IN ({ids})"
    ))
    .lines()
    .map(|l| l.parse().expect("block number"))
    .collect()
}

fn changes(c: &Cluster, from: &str, to: &str) -> Option<BlockChanges> {
    let mut client = pg::connect(Some(&c.conninfo())).expect("connect");
    pg::summarized_changes(&mut client, timeline(c), from, to, WAIT).expect("summarized_changes")
}

/// A table of `rows` rows, 200-byte rows at half-full pages (room for HOT updates),
/// with hint bits and visibility settled so that reading it writes no WAL.
fn create_table(c: &Cluster, name: &str, rows: u32) {
    c.psql(&format!(
        "CREATE TABLE {name} (id int, pad text) WITH (fillfactor = 50); \
         INSERT INTO {name} SELECT g, repeat('x', 200) FROM generate_series(1, {rows}) g"
    ));
    c.psql(&format!("VACUUM (FREEZE) {name}"));
}

#[test]
fn an_update_touches_exactly_the_blocks_of_its_rows() {
    let Some(c) = pg17(&["summarize_wal = on"]) else {
        return;
    };
    create_table(&c, "t", 3000);
    create_table(&c, "quiet", 1000);
    let (t, quiet) = (key_of(&c, "t"), key_of(&c, "quiet"));
    let ids = "5, 1000, 1001, 2900";
    let mut want = blocks_of(&c, "t", ids);
    let a = checkpoint(&c);
    c.psql(&format!("UPDATE t SET pad = 'y' WHERE id IN ({ids})"));
    want.extend(blocks_of(&c, "t", ids));
    c.psql("SELECT pg_switch_wal()");
    let b = checkpoint(&c);

    let started = Instant::now();
    let ch = changes(&c, &a, &b).expect("summaries cover the range");
    eprintln!("summaries for {a}..{b} after {:?}", started.elapsed());
    let mut client = pg::connect(Some(&c.conninfo())).expect("connect");
    let bps = pg::blocks_per_segment(&mut client).expect("blocks_per_segment");
    assert_eq!(bps, 131072);

    let rel = ch.relation(&t).expect("t is in the summaries");
    assert_eq!(rel.modified, want, "modified blocks of t");
    assert_eq!(rel.limit, None);
    assert!(!ch.segment_untouched(&t, 0, bps));
    assert!(ch.segment_untouched(&t, 1, bps));
    let untouched = (0u32..)
        .find(|b| !want.contains(b))
        .expect("an untouched block");
    assert!(ch.block_untouched(&t, untouched));
    assert!(want.iter().all(|&b| !ch.block_untouched(&t, b)));

    assert!(ch.relation(&quiet).is_none(), "{:?}", ch.relation(&quiet));
    assert!(ch.segment_untouched(&quiet, 0, bps));
}

#[test]
fn truncation_drop_and_file_copy_databases_are_not_untouched() {
    let Some(c) = pg17(&["summarize_wal = on"]) else {
        return;
    };
    create_table(&c, "shrinks", 2000);
    create_table(&c, "emptied", 500);
    let size = |table: &str| -> u32 {
        c.psql(&format!("SELECT pg_relation_size('{table}') / 8192"))
            .parse()
            .expect("relation size")
    };
    let before = size("shrinks");
    let (shrinks, emptied) = (key_of(&c, "shrinks"), key_of(&c, "emptied"));
    let a = checkpoint(&c);
    // VACUUM cuts the empty tail: a limit block at the new length.
    c.psql("DELETE FROM shrinks WHERE id > 300");
    c.psql("VACUUM shrinks");
    // TRUNCATE gives the table a new file: the old one is dropped, the new created.
    c.psql("TRUNCATE emptied; INSERT INTO emptied VALUES (1, 'new')");
    c.psql("CREATE DATABASE copied STRATEGY FILE_COPY");
    let b = checkpoint(&c);
    let ch = changes(&c, &a, &b).expect("summaries cover the range");

    let blocks = size("shrinks");
    assert!(
        blocks > 0 && blocks < before,
        "shrinks: {before} blocks, then {blocks}"
    );
    let rel = ch.relation(&shrinks).expect("shrinks is in the summaries");
    assert_eq!(
        rel.limit,
        Some(blocks),
        "limit block of the truncated table"
    );
    assert!(!ch.segment_untouched(&shrinks, 0, 131072));
    assert!(!ch.block_untouched(&shrinks, blocks));

    let old = ch
        .relation(&emptied)
        .expect("the old file is in the summaries");
    assert_eq!(old.limit, Some(0), "the dropped file's limit block");
    assert!(!ch.segment_untouched(&emptied, 0, 131072));
    let new = key_of(&c, "emptied");
    assert_ne!(new, emptied);
    assert_eq!(ch.relation(&new).and_then(|r| r.limit), Some(0));
    assert!(!ch.segment_untouched(&new, 0, 131072));

    let db: u32 = c
        .psql("SELECT oid FROM pg_database WHERE datname = 'copied'")
        .parse()
        .unwrap();
    assert!(ch.database_changed(1663, db));
    let file = c.psql("SELECT pg_relation_filepath('pg_class')");
    let (mut in_copy, _) = pg::relation_file(&format!("data/{file}")).unwrap();
    in_copy.database = db;
    assert!(!ch.segment_untouched(&in_copy, 0, 131072));
}

#[test]
fn ranges_the_summaries_do_not_prove_give_none() {
    let Some(c) = pg17(&["summarize_wal = on"]) else {
        return;
    };
    create_table(&c, "t", 100);
    let a = checkpoint(&c);
    c.psql("UPDATE t SET pad = 'y' WHERE id = 1");
    let b = checkpoint(&c);
    assert!(changes(&c, &a, &b).is_some());
    assert_eq!(changes(&c, &b, &b), Some(BlockChanges::default()));

    // Before the first summary: the summarizer started after initdb's WAL.
    let first = c.psql("SELECT min(start_lsn) FROM pg_available_wal_summaries()");
    assert_ne!(first, "0/0");
    assert_eq!(
        changes(&c, "0/10", &b),
        None,
        "first summary starts at {first}"
    );

    // Past what the summarizer can reach, within a short wait.
    let mut client = pg::connect(Some(&c.conninfo())).expect("connect");
    let far = c.psql("SELECT pg_current_wal_lsn() + 1000000000");
    let none = pg::summarized_changes(&mut client, timeline(&c), &b, &far, Duration::from_secs(1))
        .expect("summarized_changes");
    assert_eq!(none, None);
    // On a timeline this server never had.
    let none = pg::summarized_changes(&mut client, 7, &a, &b, Duration::from_millis(300))
        .expect("summarized_changes");
    assert_eq!(none, None);

    let bad = pg::summarized_changes(&mut client, 1, "junk", &b, Duration::ZERO);
    assert!(bad.is_err());
}

#[test]
fn summarize_wal_off_gives_none() {
    let Some(c) = pg17(&[]) else {
        return;
    };
    assert_eq!(c.psql("SHOW summarize_wal"), "off");
    create_table(&c, "t", 100);
    let a = checkpoint(&c);
    c.psql("UPDATE t SET pad = 'y' WHERE id = 1");
    let b = checkpoint(&c);
    assert_eq!(changes(&c, &a, &b), None);
}

#[test]
fn servers_before_17_give_none() {
    let Some(c) = Cluster::init(ClusterOpts::default()) else {
        return;
    };
    let version: u32 = c.psql("SHOW server_version_num").parse().unwrap();
    if version >= 170000 {
        eprintln!("the default PostgreSQL is {version}: nothing to check");
        return;
    }
    let a = checkpoint(&c);
    let b = checkpoint(&c);
    assert_eq!(changes(&c, &a, &b), None);
}

/// One run of test (f): a PostgreSQL 17 cluster with `summarize_wal` as given, a full
/// backup, changes (row updates, hint bits set by a read, a table left alone), an
/// incremental, and a restore of it; returns the table checksums of the restored
/// cluster (which must equal the primary's) and the incremental's manifest.
fn incremental_with_summaries(on: bool) -> Option<(String, pgcellar::repo::manifest::Manifest)> {
    use crate::common::{bin, chown_postgres, pg_command, run_ok, RepoDir, TestDir};
    let bindir = pg_bindir_or_skip(17)?;
    let repo = RepoDir::new();
    let c = Cluster::init(ClusterOpts {
        archive_command: Some(repo.archive_command()),
        bindir: Some(bindir.clone()),
        conf: vec![
            "autovacuum = off".into(),
            format!("summarize_wal = {}", if on { "on" } else { "off" }),
        ],
        // Without checksums (and wal_log_hints) setting hint bits writes no WAL.
        data_checksums: false,
        ..Default::default()
    })?;
    repo.init_for(&c);
    // Page-level files (>= 256 KiB), deterministic contents; t's hint bits settled
    // (a first read would change every page), quiet's not.
    c.psql(
        "CREATE TABLE t (id int PRIMARY KEY, pad text); \
         INSERT INTO t SELECT g, md5(g::text) || repeat('x', 100) FROM generate_series(1, 20000) g; \
         CREATE TABLE quiet (id int, pad text); \
         INSERT INTO quiet SELECT g, md5(g::text) FROM generate_series(1, 20000) g",
    );
    c.psql("VACUUM (FREEZE) t");
    c.psql("CHECKPOINT");
    // Past the safe horizon, so mtime alone would reuse untouched files anyway:
    // what summaries add shows on files whose mtime moved without WAL.
    std::thread::sleep(Duration::from_secs(3));
    let backup = |extra: &[&str]| {
        let mut cmd = pg_command(bin("base-backup"));
        cmd.args(repo.args())
            .arg("--pgdata")
            .arg(&c.pgdata)
            .arg("--conninfo")
            .arg(c.conninfo())
            .args(["-v"])
            .args(extra);
        run_ok(&mut cmd)
    };
    backup(&[]);
    c.psql("UPDATE t SET pad = 'changed' WHERE id % 500 = 0");
    // A read that sets hint bits: quiet's pages change on disk with no WAL.
    c.psql("SELECT count(*) FROM quiet");
    c.psql("CHECKPOINT");
    let sums = c.psql(
        "SELECT (SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM t) || ' ' || \
         (SELECT md5(string_agg(quiet::text, ',' ORDER BY id)) FROM quiet)",
    );
    let out = backup(&[]);
    let log = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(
        log.contains("WAL summaries cover"),
        on,
        "summaries used (on = {on}): {log}"
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let m = pgcellar::repo::manifest::load(
        repo.storage().as_ref(),
        &repo.server,
        &pgcellar::repo::manifest::BackupId::parse(&id).expect("id"),
    )
    .expect("manifest");
    // Nothing was written after the backup, whose WAL it confirmed archived.
    let root = TestDir::new();
    let pgdata = root.join("pgdata");
    let mut r = pg_command(bin("restore"));
    r.args(repo.args()).arg(&pgdata);
    run_ok(&mut r);
    chown_postgres(root.path());
    let copy = Cluster::adopt_restored_with(root, pgdata, bindir);
    copy.append_conf(&["archive_mode = off".to_string()]);
    copy.start();
    copy.wait_for_promotion(Duration::from_secs(120));
    let restored = copy.psql(
        "SELECT (SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM t) || ' ' || \
         (SELECT md5(string_agg(quiet::text, ',' ORDER BY id)) FROM quiet)",
    );
    assert_eq!(
        restored, sums,
        "restored tables differ from the primary's (on = {on})"
    );
    Some((restored, m))
}

#[test]
fn summarize_wal_on_and_off_give_identical_restores() {
    let Some((with, m_on)) = incremental_with_summaries(true) else {
        return;
    };
    let Some((without, m_off)) = incremental_with_summaries(false) else {
        return;
    };
    assert_eq!(with, without);
    // The changed table went as a page delta both ways.
    let big_delta = |m: &pgcellar::repo::manifest::Manifest| {
        m.files
            .iter()
            .any(|f| f.objects.len() > 1 && f.size >= 256 * 1024)
    };
    assert!(big_delta(&m_on) && big_delta(&m_off));
    // With summaries no page-level file needed new objects beyond the updated table
    // and its index (quiet's hint bits are no reason to store anything); without
    // them quiet's changed pages are stored. Either way, far less than a full.
    let added = |m: &pgcellar::repo::manifest::Manifest| m.totals.copied_stored_size;
    assert!(
        added(&m_on) <= added(&m_off),
        "{} > {}",
        added(&m_on),
        added(&m_off)
    );
    assert!(
        added(&m_on) * 5 < m_on.totals.stored_size,
        "{:?}",
        m_on.totals
    );
}
