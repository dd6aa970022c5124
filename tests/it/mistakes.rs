//! Mistakes a DBA makes on the command line are caught before anything runs, with a
//! message that says what is wrong and what exists instead.

use crate::common::*;
use std::process::Output;

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn command_line_mistakes_are_caught_early_and_named() {
    let repo = RepoDir::new();
    let Some(c) = repo.archiving_cluster() else {
        return;
    };
    let dir = TestDir::new();

    // A wrong --server lists the servers that exist.
    let o = pg_command(bin("pgcellar"))
        .args(["--repo", &repo.url(), "--server", "mian", "list"])
        .output()
        .expect("spawn pgcellar");
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("its servers are main"),
        "{}",
        stderr(&o)
    );

    // A --target-time in the future is refused before anything is written.
    let dest = dir.join("copy");
    let o = pg_command(bin("restore"))
        .args(repo.args())
        .args(["--target-time", "2999-01-01 00:00:00+00"])
        .arg(&dest)
        .output()
        .expect("spawn restore");
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("is in the future"), "{}", stderr(&o));
    assert!(!dest.exists(), "restore wrote into {}", dest.display());

    // A bad conninfo names the part that is wrong.
    let backup = |conninfo: &str| {
        pg_command(bin("base-backup"))
            .args(repo.args())
            .arg("--pgdata")
            .arg(&c.pgdata)
            .args(["--conninfo", conninfo])
            .output()
            .expect("spawn base-backup")
    };
    let o = backup("host=/tmp prot=5432");
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("unknown option `prot`"),
        "{}",
        stderr(&o)
    );

    // A connection failure names the socket path (and the host and port) tried.
    let nowhere = dir.join("no-socket-here");
    let o = backup(&format!("host={} port=5999", nowhere.display()));
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let socket = format!("socket {}/.s.PGSQL.5999", nowhere.display());
    assert!(stderr(&o).contains(&socket), "{}", stderr(&o));
    let o = backup("host=127.0.0.1 port=1 connect_timeout=5");
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("host 127.0.0.1 port 1"),
        "{}",
        stderr(&o)
    );

    // An option a binary does not use is refused (wal-get reads no database).
    let o = pg_command(bin("wal-get"))
        .args(repo.args())
        .args(["--conninfo", &c.conninfo()])
        .args([
            "000000010000000000000001",
            &dir.join("seg").display().to_string(),
        ])
        .output()
        .expect("spawn wal-get");
    assert_eq!(o.status.code(), Some(126), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("--conninfo does not apply to wal-get"),
        "{}",
        stderr(&o)
    );
}
