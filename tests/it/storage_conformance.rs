//! One storage conformance suite, run against every driver: the local filesystem,
//! SFTP to a real sshd on loopback and S3 on a real Garage on loopback. The first two
//! repositories live on this machine, so for them the suite also checks on disk what
//! the driver promises (modes, no temp files left behind, nothing written outside the
//! root); for S3 the same promises are checked through the API.

use crate::common::garage::Garage;
use crate::common::sshd::Sshd;
use crate::common::*;
use pgcellar::config::SshSettings;
use pgcellar::storage::layer::DryRun;
use pgcellar::storage::{
    Committed, LocalStorage, Overwrite, RepoUrl, SshStorage, Storage, TEMP_PREFIX,
};
use pgcellar::ErrorKind;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

/// Size of the streamed file: more than two 8 MiB multipart parts.
const BIG: usize = 17_000_000;

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn names(s: &dyn Storage, dir: &str) -> Vec<String> {
    let mut v: Vec<String> = s.list(dir).unwrap().into_iter().map(|e| e.name).collect();
    v.sort();
    v
}

/// Everything a driver must do; with `disk`, also checked in the directory it writes
/// into.
fn conformance(s: &dyn Storage, disk: Option<&Path>) {
    // Directories: 0700, parents included, idempotent.
    s.create_dir_all("").unwrap();
    s.create_dir_all("a/b").unwrap();
    s.create_dir_all("a/b").unwrap();
    s.create_dir_all("a/c").unwrap();
    if let Some(disk) = disk {
        assert_eq!(mode(disk), 0o700);
        assert_eq!(mode(&disk.join("a")), 0o700);
        assert_eq!(mode(&disk.join("a/b")), 0o700);
    }

    // Atomic writes: 0600; Never keeps the first; Replace replaces.
    assert_eq!(
        s.write_all("a/b/f", b"one", Overwrite::Never).unwrap(),
        Committed::Created
    );
    if let Some(disk) = disk {
        assert_eq!(mode(&disk.join("a/b/f")), 0o600);
    }
    assert_eq!(
        s.write_all("a/b/f", b"two", Overwrite::Never).unwrap(),
        Committed::AlreadyExists
    );
    assert_eq!(s.read_all("a/b/f").unwrap(), b"one");
    if let Some(disk) = disk {
        assert_eq!(fs::read(disk.join("a/b/f")).unwrap(), b"one");
    }
    assert_eq!(
        s.write_all("a/b/f", b"three", Overwrite::Replace).unwrap(),
        Committed::Created
    );
    assert_eq!(s.read_all("a/b/f").unwrap(), b"three");
    if let Some(disk) = disk {
        assert_eq!(mode(&disk.join("a/b/f")), 0o600);
    }
    // Replace onto a new name works too.
    s.write_all("a/b/g", b"new", Overwrite::Replace).unwrap();
    assert_eq!(names(s, "a/b"), vec!["f", "g"], "no temporary files left");

    // Two writers racing for one name: exactly one wins, the loser changes nothing.
    let mut w1 = s.create("a/b").unwrap();
    let mut w2 = s.create("a/b").unwrap();
    w1.write_all(b"first").unwrap();
    w2.write_all(b"second").unwrap();
    assert_eq!(
        w1.commit("race", Overwrite::Never).unwrap(),
        Committed::Created
    );
    assert_eq!(
        w2.commit("race", Overwrite::Never).unwrap(),
        Committed::AlreadyExists
    );
    assert_eq!(s.read_all("a/b/race").unwrap(), b"first");

    // An abandoned write leaves nothing, not even its temporary file.
    let mut f = s.create("a/b").unwrap();
    f.write_all(&[7u8; 100_000]).unwrap();
    drop(f);
    assert_eq!(names(s, "a/b"), vec!["f", "g", "race"]);

    // Streaming 17 MB (many SFTP write/read windows; on S3 a multipart upload of two
    // full parts in turn and a short last one) round-trips exactly.
    let big: Vec<u8> = (0..BIG as u32)
        .map(|i| i.wrapping_mul(2654435761) as u8)
        .collect();
    let mut f = s.create("a/c").unwrap();
    for chunk in big.chunks(65_536) {
        f.write_all(chunk).unwrap();
    }
    f.commit("big", Overwrite::Never).unwrap();
    let mut back = Vec::new();
    s.open_read("a/c/big")
        .unwrap()
        .read_to_end(&mut back)
        .unwrap();
    assert!(back == big, "streamed file differs");

    // Listing and stat.
    let mut l = s.list("a").unwrap();
    l.sort_by(|x, y| x.name.cmp(&y.name));
    assert_eq!(l.len(), 2);
    assert!(l.iter().all(|e| e.is_dir));
    let c = s.list("a/c").unwrap();
    assert_eq!(c.len(), 1);
    assert_eq!(
        (c[0].name.as_str(), c[0].size, c[0].is_dir),
        ("big", BIG as u64, false)
    );
    assert!(s.list("missing").unwrap().is_empty());
    assert!(s.list("a/missing/deeper").unwrap().is_empty());
    let st = s.stat("a/c/big").unwrap().unwrap();
    assert_eq!((st.size, st.is_dir), (BIG as u64, false));
    assert!(s.stat("a/c").unwrap().unwrap().is_dir);
    assert!(s.stat("a/nope").unwrap().is_none());

    // Missing files are NotFound (wal-get's exit 1 depends on it).
    let err = s.open_read("a/nope").err().expect("missing file");
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert_eq!(
        s.read_all("nope/x").unwrap_err().kind(),
        ErrorKind::NotFound
    );

    // Hostile-looking names, and a commit into a subdirectory of the directory the
    // file was created in (how a content-addressed object gets its fan-out
    // directory once its name is known); deeper names are refused.
    let odd = "it's $(touch pwned) `x` \"q\" a b";
    s.create_dir_all("a/d").unwrap();
    let mut f = s.create("a").unwrap();
    f.write_all(b"odd").unwrap();
    assert_eq!(
        f.commit(&format!("d/{odd}"), Overwrite::Never).unwrap(),
        Committed::Created
    );
    assert_eq!(s.read_all(&format!("a/d/{odd}")).unwrap(), b"odd");
    assert!(!Path::new("pwned").exists());
    if let Some(disk) = disk {
        assert!(!disk.join("pwned").exists());
    }
    let mut f = s.create("a").unwrap();
    f.write_all(b"other").unwrap();
    assert_eq!(
        f.commit(&format!("d/{odd}"), Overwrite::Never).unwrap(),
        Committed::AlreadyExists
    );
    assert_eq!(s.read_all(&format!("a/d/{odd}")).unwrap(), b"odd");
    let f = s.create("a").unwrap();
    assert!(f.commit("d/e/x", Overwrite::Never).is_err());
    assert!(s.capabilities().atomic_no_replace);

    // The dry-run layer over this driver: reads pass through, no change reaches it.
    let dry = DryRun::new(s);
    assert_eq!(dry.read_all("a/b/g").unwrap(), s.read_all("a/b/g").unwrap());
    dry.remove_file("a/b/g").unwrap();
    dry.remove_dir_all("a/d").unwrap();
    dry.write_all("a/b/dry", b"x", Overwrite::Never).unwrap();
    dry.create_dir_all("a/dry").unwrap();
    assert_eq!(dry.skipped(), 4);
    assert!(s.stat("a/b/g").unwrap().is_some() && s.stat("a/d").unwrap().is_some());
    assert!(s.stat("a/b/dry").unwrap().is_none() && s.stat("a/dry").unwrap().is_none());
    if let Some(disk) = disk {
        assert!(disk.join("a/b/g").exists() && disk.join("a/d").exists());
        assert!(!disk.join("a/b/dry").exists() && !disk.join("a/dry").exists());
    }

    // Removal: files and trees, missing ones are not errors.
    s.remove_file("a/b/g").unwrap();
    s.remove_file("a/b/g").unwrap();
    assert!(s.stat("a/b/g").unwrap().is_none());
    s.remove_dir_all("a/d").unwrap();
    s.remove_dir_all("a/d").unwrap();
    assert!(s.stat("a/d").unwrap().is_none());
    if let Some(disk) = disk {
        assert!(!disk.join("a/d").exists());
    }
    assert_eq!(s.read_all("a/c/big").unwrap().len(), BIG);

    // Nothing escapes the root.
    let outside = disk.map(|d| d.parent().unwrap().join("escaped"));
    for bad in [
        "../escaped",
        "/etc/passwd",
        "a/../../escaped",
        "a//b",
        "a/./b",
        "",
    ] {
        if !bad.is_empty() {
            assert!(s.stat(bad).is_err(), "stat {bad:?}");
            assert!(s.open_read(bad).is_err(), "open {bad:?}");
            assert!(s.list(bad).is_err(), "list {bad:?}");
            assert!(s.remove_file(bad).is_err(), "remove {bad:?}");
            assert!(s.remove_dir_all(bad).is_err(), "rmtree {bad:?}");
            assert!(s.create_dir_all(bad).is_err(), "mkdir {bad:?}");
            assert!(s.create(bad).is_err(), "create {bad:?}");
        }
        assert!(
            s.write_all(bad, b"x", Overwrite::Replace).is_err(),
            "write {bad:?}"
        );
    }
    let f = s.create("a/b").unwrap();
    assert!(f.commit("../../escaped", Overwrite::Replace).is_err());
    assert!(
        outside.as_ref().is_none_or(|o| !o.exists()),
        "a path escaped the repository"
    );
    assert!(names(s, "a/b").iter().all(|n| !n.starts_with(TEMP_PREFIX)));

    // Shared between threads: parallel writers all land (the SSH driver pools sessions).
    std::thread::scope(|scope| {
        for t in 0..4 {
            scope.spawn(move || {
                for i in 0..5 {
                    let data = vec![t as u8; 200_000 + i];
                    s.write_all(&format!("a/c/t{t}-{i}"), &data, Overwrite::Never)
                        .unwrap();
                    assert_eq!(s.read_all(&format!("a/c/t{t}-{i}")).unwrap(), data);
                }
            });
        }
    });
    assert_eq!(s.list("a/c").unwrap().len(), 21);
}

#[test]
fn local_storage_conforms() {
    let d = TestDir::new();
    let root = d.join("repo");
    conformance(&LocalStorage::new(root.clone()), Some(&root));
}

/// SSH settings that trust this test sshd and log in with its client key.
pub fn ssh_settings(sshd: &Sshd) -> SshSettings {
    SshSettings {
        identity: Some(sshd.client_key.clone()),
        known_hosts: Some(sshd.known_hosts.clone()),
        accept_new_host_key: false,
        connect_timeout: Duration::from_secs(5),
        io_timeout: Duration::from_secs(20),
    }
}

#[test]
fn ssh_storage_conforms() {
    let Some(sshd) = Sshd::start() else { return };
    let d = TestDir::new();
    let root = d.join("repo");
    let url = RepoUrl::parse(&sshd.url(&root)).unwrap();
    let s = SshStorage::open(&url, &ssh_settings(&sshd))
        .unwrap_or_else(|e| panic!("{e}\n--- sshd log ---\n{}", sshd.log()));
    conformance(&s, Some(&root));
    assert!(s.location().starts_with("ssh://"));
    // OpenSSH on Linux lets us fsync directories through an open handle.
    assert_eq!(s.directory_fsync_works(), Some(true));
}

#[test]
fn s3_storage_conforms() {
    let Some(garage) = Garage::start() else {
        return;
    };
    let s = garage
        .storage("conformance")
        .unwrap_or_else(|e| panic!("{e}\n--- garage ---\n{}", garage.log()));
    conformance(s.as_ref(), None);
    assert!(s.location().starts_with("s3://"));
    // Nothing of the suite lies outside its prefix.
    let other = garage.storage("").unwrap();
    let mut top: Vec<String> = other
        .list("")
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    top.sort();
    assert_eq!(
        top,
        vec!["conformance"],
        "objects outside the repository's prefix"
    );
}
