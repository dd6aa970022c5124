//! A repository on a 3-node Garage cluster (replication factor 3) survives the loss of
//! a node: one is killed (SIGKILL) while PostgreSQL archives under pgbench load, and
//! another while a restore and its recovery read the repository. Every client talks
//! to node 0, the gateway; the nodes killed are storage nodes behind it, so a write
//! still reaches its quorum of two and a read finds a copy.

use crate::backup_restore::base_backup;
use crate::common::garage::Garage;
use crate::common::*;
use std::process::Stdio;
use std::time::Duration;

#[test]
fn a_node_lost_while_archiving_and_while_restoring_loses_nothing() {
    let Some(mut g) = Garage::cluster() else {
        return;
    };
    let repo = RepoDir::over_s3(&g);
    let Some(pg) = repo.archiving_cluster() else {
        return;
    };
    pg.pgbench(&["-i", "-s", "2", "-q"]);
    pg.psql("CREATE TABLE marks (id int primary key, note text)");
    pg.switch_and_wait_archived();
    let backup = base_backup(&repo, &pg, &[]);

    // Write-heavy load; node 2 dies in the middle of it and stays down.
    let mut load = pg_command(pg.client_bindir.join("pgbench"));
    load.arg("-h")
        .arg(&pg.sockdir)
        .arg("-p")
        .arg(pg.port.to_string())
        .args([
            "-U", "postgres", "-n", "-c", "2", "-j", "2", "-T", "12", "postgres",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let load = load.spawn().expect("spawn pgbench");
    std::thread::sleep(Duration::from_secs(4));
    g.kill(2);
    let out = load.wait_with_output().expect("pgbench");
    assert!(
        out.status.success(),
        "pgbench: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    pg.psql("INSERT INTO marks SELECT g, md5(g::text) FROM generate_series(1, 1000) g");
    pg.psql("INSERT INTO marks VALUES (1001, 'last committed row')");
    let last = pg.switch_and_wait_archived();
    let (archived, _failed) = pg.archiver_counts();
    assert!(archived >= 5, "only {archived} segments archived");
    assert!(
        repo.wal_files().iter().any(|f| f.contains(&last)),
        "{last} is not in the repository"
    );
    let accounts = pg.psql("SELECT sum(abalance) FROM pgbench_accounts");
    let v = pg_command(bin("pgcellar"))
        .args(repo.args())
        .args(["verify", "--all"])
        .output()
        .expect("spawn verify");
    assert!(
        v.status.success(),
        "verify with node 2 down: {}{}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );
    drop(pg);

    // Node 2 comes back; node 1 dies as the restore starts and stays down through the
    // restore and the recovery's wal-get calls.
    g.restart(2);
    let root = TestDir::new();
    let pgdata = root.join("pgdata");
    let restore = pg_command(bin("restore"))
        .args(repo.args())
        .args(["--backup", &backup])
        .arg(&pgdata)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn restore");
    std::thread::sleep(Duration::from_millis(300));
    g.kill(1);
    let out = restore.wait_with_output().expect("restore");
    assert!(
        out.status.success(),
        "restore with node 1 lost: {}\n--- garage ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        g.log()
    );
    let copy = Cluster::adopt_restored(root, pgdata);
    copy.start();
    copy.wait_for_promotion(Duration::from_secs(180));
    assert_last_row(&copy, &accounts);
}
