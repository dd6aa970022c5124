//! The real-PostgreSQL core on every other supported major (13, 14, 16, 17, 18; the
//! whole suite runs on Debian's 15), from the npm builds `.ci/install-pg-npm` puts in
//! the cache: archive and recover to the last row, PITR by time and by name, an
//! incremental backup, the restore of a new timeline, and a backup from a standby.
//! Client tools are Debian's 15 (psql, pgbench), which work against all of them; no
//! test here runs a client tool of another major.
//!
//! `cargo test --test it -- matrix::pg18` runs one major; a major whose binaries are
//! missing is skipped loudly, and fails under CI=true.

use crate::backup_restore::{base_backup, manifest, restore_and_start_with, rows};
use crate::common::*;
use crate::standby::{primary_and_standby, standby_backup_recovers, Route};
use std::time::Duration;

macro_rules! majors {
    ($($module:ident = $major:literal),* $(,)?) => {
        $(mod $module {
            #[test]
            fn archive_pitr_incremental_and_a_new_timeline() {
                super::core($major)
            }

            #[test]
            fn a_backup_from_a_standby() {
                super::from_a_standby($major)
            }
        })*
    };
}

majors!(pg13 = 13, pg14 = 14, pg16 = 16, pg17 = 17, pg18 = 18);

/// A UTC timestamp from the server, as --target-time takes it.
fn now(c: &Cluster) -> String {
    c.psql(
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'",
    )
}

fn core(major: u32) {
    let Some(bindir) = pg_bindir_or_skip(major) else {
        return;
    };
    let repo = RepoDir::new();
    let Some(c) = repo.archiving_cluster_with(Some(bindir.clone()), &[]) else {
        return;
    };
    let server: serde_json::Value =
        serde_json::from_slice(&repo.read_stored(&format!("{}/server.json", repo.server)))
            .expect("server.json");
    assert_eq!(server["pg_major"], major, "{server}");

    c.psql("CREATE TABLE t(i int)");
    c.psql("INSERT INTO t SELECT generate_series(1, 10)");
    let full = base_backup(&repo, &c, &["--full"]);
    c.psql("INSERT INTO t SELECT generate_series(11, 20)");
    c.psql("SELECT pg_create_restore_point('at_20')");
    c.psql("INSERT INTO t SELECT generate_series(21, 30)");
    let at_30 = now(&c);
    std::thread::sleep(Duration::from_millis(1100));
    c.psql("INSERT INTO t SELECT generate_series(31, 40)");
    let incr = base_backup(&repo, &c, &[]);
    let m = manifest(&repo, &incr);
    assert_eq!(m.parent.as_ref().map(|p| p.to_string()), Some(full.clone()));
    let unchanged = m.files.iter().filter(|f| f.added_size == 0).count();
    assert!(
        unchanged * 2 > m.files.len(),
        "the incremental backup stored {} of {} files again",
        m.files.len() - unchanged,
        m.files.len()
    );
    c.psql("INSERT INTO t SELECT generate_series(41, 50)");
    c.switch_and_wait_archived();

    // To the last row, from the incremental backup: same rows as the primary.
    let (r, log) = restore_and_start_with(&repo, &[], false, &bindir);
    assert!(log.contains(&format!("restoring backup {incr}")), "{log}");
    assert_eq!(rows(&r), "50 50");
    assert_eq!(r.table_digest("t", "i"), c.table_digest("t", "i"));
    drop(r);

    let promote = ["--target-action", "promote"];
    for (target, want) in [
        (["--target-name", "at_20"], "20 20"),
        (["--target-time", at_30.as_str()], "30 30"),
    ] {
        let args = [&["--backup", full.as_str()][..], &target[..], &promote[..]].concat();
        let (r, log) = restore_and_start_with(&repo, &args, false, &bindir);
        assert_eq!(rows(&r), want, "restore {args:?}\n{log}");
    }

    // A copy promoted at the restore point archives timeline 2; recovering the full
    // backup along the newest timeline then sees its rows.
    let (tl2, _) = restore_and_start_with(
        &repo,
        &[
            "--backup",
            &full,
            "--target-name",
            "at_20",
            "--target-action",
            "promote",
            "--archive-mode",
            "preserve",
        ],
        true,
        &bindir,
    );
    assert_eq!(
        tl2.psql("SELECT timeline_id FROM pg_control_checkpoint()"),
        "2"
    );
    tl2.psql("INSERT INTO t SELECT generate_series(1001, 1010)");
    tl2.switch_and_wait_archived();
    tl2.stop();
    drop(tl2);
    let (r, _) = restore_and_start_with(
        &repo,
        &["--backup", &full, "--target-timeline", "latest"],
        false,
        &bindir,
    );
    assert_eq!(rows(&r), "30 1010");

    let out = repo.pgcellar(&["verify", "--all"]);
    assert!(
        out.status.success(),
        "verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn from_a_standby(major: u32) {
    let Some(bindir) = pg_bindir_or_skip(major) else {
        return;
    };
    let repo = RepoDir::new();
    let Some(pair) = primary_and_standby(&repo, Some(bindir.clone()), Route::StandbyArchives)
    else {
        return;
    };
    standby_backup_recovers(&repo, &pair, Route::StandbyArchives, &bindir);
}

/// After pg_upgrade the cluster has a new system identifier and major: `init` under the
/// old name is refused with the procedure, wal-push of its WAL is refused with the
/// same advice (exit 1, so PostgreSQL keeps the segment), and a new name works.
#[test]
fn an_upgraded_cluster_is_sent_to_a_new_server_name() {
    let Some(bindir16) = pg_bindir_or_skip(16) else {
        return;
    };
    let repo = RepoDir::new();
    let Some(old) = repo.archiving_cluster() else {
        return;
    };
    old.switch_and_wait_archived();
    let Some(new) = Cluster::init(ClusterOpts {
        bindir: Some(bindir16),
        ..Default::default()
    }) else {
        return;
    };
    // The repository's flags without its --server.
    let mut flags = repo.args();
    if let Some(i) = flags.iter().position(|a| a == "--server") {
        flags.drain(i..i + 2);
    }
    let init = |server: &str| {
        pg_command(bin("pgcellar"))
            .args(&flags)
            .args(["--server", server, "--conninfo", &new.conninfo(), "init"])
            .output()
            .expect("spawn pgcellar")
    };
    let out = init(&repo.server);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("looks like pg_upgrade from 15 to 16"), "{err}");
    assert!(
        err.contains(&format!("--server {}-16", repo.server)),
        "{err}"
    );

    let seg = new.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    let out = pg_command(bin("wal-push"))
        .args(repo.args())
        .arg(new.pgdata.join("pg_wal").join(&seg))
        .output()
        .expect("spawn wal-push");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("PostgreSQL 16 WAL, as after pg_upgrade"),
        "{err}"
    );

    let out = init(&format!("{}-16", repo.server));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = repo.pgcellar(&["servers", "--json"]);
    let v = json_document(&out.stdout);
    let majors: Vec<u64> = v["servers"]
        .as_array()
        .expect("servers")
        .iter()
        .filter_map(|s| s["pg_major"].as_u64())
        .collect();
    assert_eq!(majors, vec![15, 16], "{v}");
}
