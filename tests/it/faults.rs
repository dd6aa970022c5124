//! Faults and mistakes caused for real: running as root, a full repository
//! filesystem, a DNS server that never answers, a peer that accepts and stays
//! silent, and hostile configuration values.
//!
//! The root and filesystem tests need root (CI runs as root): `mount -t tmpfs`
//! gives a repository a few MiB of space, and `unshare -m` gives one command a
//! resolv.conf of its own. Without root they skip loudly (and fail under CI).

use crate::common::synthetic::*;
use crate::common::*;
use std::fs;
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const SYSID: u64 = 7_300_000_000_000_000_077;

/// Root is needed to cause this fault; otherwise skip loudly (fail under CI).
fn need_root(what: &str) -> Option<()> {
    if is_root() {
        Some(())
    } else {
        skip_or_fail(&format!("{what} needs root"))
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// One clear line: no backtrace, no panic text, no blank lines.
fn assert_one_clear_line(out: &Output, what: &str) {
    let err = stderr(out);
    assert!(!err.contains("panicked"), "{what}: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{what}: {err}");
}

fn write_segment(dir: &Path, name: &str, seed: u64) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, segment_bytes(name, SYSID, seed)).unwrap();
    p
}

fn run(bin_name: &str, args: &[String]) -> Output {
    Command::new(bin(bin_name))
        .args(args)
        .output()
        .expect("spawn")
}

fn strings(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

// ---------------------------------------------------------------------------
// Running as root.

#[test]
fn root_is_refused_before_it_writes_a_local_repository() {
    if need_root("writing a repository as root").is_none() {
        return;
    }
    // A repository as a DBA sets it up: created and owned by postgres.
    let (repo, _) = register_synthetic(RepoDir::new(), SYSID);
    chown_postgres(&repo.path);
    let seg_dir = TestDir::new();
    let seg = write_segment(seg_dir.path(), "000000010000000000000010", 1);
    let before = repo.wal_files();

    let as_root = |args: Vec<String>| {
        Command::new(bin(&args[0]))
            .args(&args[1..])
            .env_remove("PGCELLAR_ALLOW_ROOT")
            .output()
            .expect("spawn")
    };
    let mut push = vec!["wal-push".to_string()];
    push.extend(repo.args());
    push.push(seg.display().to_string());
    let out = as_root(push.clone());
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_one_clear_line(&out, "wal-push as root");
    assert!(stderr(&out).contains("as root"), "{}", stderr(&out));
    assert!(stderr(&out).contains("--allow-root"), "{}", stderr(&out));
    assert_eq!(repo.wal_files(), before, "nothing may be written");

    // expire and a new repository's init are refused the same way.
    let mut expire = vec!["pgcellar".to_string()];
    expire.extend(repo.args());
    expire.extend(strings(&["expire", "--retention", "REDUNDANCY 1"]));
    let out = as_root(expire);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("as root"), "{}", stderr(&out));
    let fresh = RepoDir::new();
    let mut init = vec!["pgcellar".to_string()];
    init.extend(fresh.args());
    init.extend(strings(&["--conninfo", "host=/nonexistent", "init"]));
    let out = as_root(init);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        !fresh.path.exists(),
        "init as root created {}",
        fresh.path.display()
    );

    // Reading as root is fine (restore and wal-get are often run as root).
    let dest = seg_dir.join("got");
    let mut get = vec!["wal-get".to_string()];
    get.extend(repo.args());
    get.extend(strings(&[
        "000000010000000000000010",
        &dest.display().to_string(),
    ]));
    assert_eq!(as_root(get).status.code(), Some(1), "not archived yet");

    // The repository's owner archives; --allow-root is the explicit way out.
    let out = pg_command(bin("wal-push"))
        .args(repo.args())
        .arg(&seg)
        .env_remove("PGCELLAR_ALLOW_ROOT")
        .output()
        .unwrap();
    assert!(out.status.success(), "as postgres: {}", stderr(&out));
    let seg2 = write_segment(seg_dir.path(), "000000010000000000000011", 1);
    push.pop();
    push.push("--allow-root".into());
    push.push(seg2.display().to_string());
    let out = as_root(push);
    assert!(out.status.success(), "--allow-root: {}", stderr(&out));
}

// ---------------------------------------------------------------------------
// The repository's filesystem full.

/// A tmpfs of `size` mounted on `path` (owned by postgres), unmounted on drop.
struct SmallFs(PathBuf);

impl SmallFs {
    fn mount(path: &Path, size: &str) -> SmallFs {
        fs::create_dir_all(path).unwrap();
        let uid = id_of("-u");
        let gid = id_of("-g");
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={size},mode=0700,uid={uid},gid={gid}"))
            .arg("tmpfs")
            .arg(path)
            .status()
            .expect("mount");
        assert!(st.success(), "mount tmpfs on {}", path.display());
        SmallFs(path.to_path_buf())
    }

    fn resize(&self, size: &str) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .expect("remount");
        assert!(st.success());
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn id_of(flag: &str) -> String {
    let out = Command::new("id")
        .args([flag, "postgres"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Names under the server's wal/ directory that are neither final nor temporary.
fn temp_files(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if e.file_name().to_string_lossy().starts_with(".tmp-") {
                out.push(p.display().to_string());
            }
        }
    }
    out
}

on_both_backends!(wal_push_on_a_full_filesystem_fails_cleanly_and_succeeds_once_space_returns,);

fn wal_push_on_a_full_filesystem_fails_cleanly_and_succeeds_once_space_returns(repo: &RepoDir) {
    if need_root("mounting a small filesystem").is_none() {
        return;
    }
    // Room for the registration and two uncompressed 1 MiB segments, not three.
    let small = SmallFs::mount(&repo.path, "2560k");
    register_synthetic_in(repo, SYSID);
    chown_postgres(&repo.path);
    let segs = TestDir::new();
    let push = |name: &str| {
        let seg = write_segment(segs.path(), name, 7);
        pg_command(bin("wal-push"))
            .args(repo.args())
            .args(["--compression", "none"])
            .arg(&seg)
            .output()
            .unwrap()
    };
    for n in ["000000010000000000000001", "000000010000000000000002"] {
        let out = push(n);
        assert!(out.status.success(), "{n}: {}", stderr(&out));
    }
    let third = "000000010000000000000003";
    let out = push(third);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_one_clear_line(&out, "wal-push on a full filesystem");
    let err = stderr(&out);
    assert!(
        err.contains("No space left") || err.contains("filesystem is full"),
        "the line should say the repository is full: {err}"
    );
    assert!(
        !repo.wal_files().iter().any(|f| f.contains(third)),
        "nothing under a final name: {:?}",
        repo.wal_files()
    );
    assert_eq!(temp_files(&repo.path), Vec::<String>::new());

    small.resize("16m");
    let out = push(third);
    assert!(
        out.status.success(),
        "after space returns: {}",
        stderr(&out)
    );
    let dest = segs.join("back");
    let out = pg_command(bin("wal-get"))
        .args(repo.args())
        .arg(third)
        .arg(&dest)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(fs::read(&dest).unwrap(), segment_bytes(third, SYSID, 7));
}

on_both_backends!(base_backup_on_a_full_filesystem_fails_cleanly_and_the_next_one_works,);

fn base_backup_on_a_full_filesystem_fails_cleanly_and_the_next_one_works(repo: &RepoDir) {
    if need_root("mounting a small filesystem").is_none() {
        return;
    }
    let small = SmallFs::mount(&repo.path, "1m");
    let Some(c) = repo.archiving_cluster() else {
        return;
    };
    let backup = || {
        pg_command(bin("base-backup"))
            .args(repo.args())
            .arg("--pgdata")
            .arg(&c.pgdata)
            .arg("--conninfo")
            .arg(c.conninfo())
            .output()
            .unwrap()
    };
    let out = backup();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        err.contains("No space left") || err.contains("filesystem is full"),
        "{err}"
    );
    let backups = repo.path.join(&repo.server).join("backups");
    let manifests: Vec<_> = fs::read_dir(&backups)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("backup.json").exists())
        .collect();
    assert!(
        manifests.is_empty(),
        "no manifest may exist after a failed backup"
    );

    small.resize("256m");
    let out = backup();
    assert!(
        out.status.success(),
        "after space returns: {}",
        stderr(&out)
    );
    let out = pg_command(bin("pgcellar"))
        .args(repo.args())
        .args(["verify", "--all"])
        .output()
        .unwrap();
    assert!(out.status.success(), "verify: {}", stderr(&out));
    drop(c);
}

// ---------------------------------------------------------------------------
// Bounded waits: a DNS server that never answers, a peer that never speaks.

/// Start `bin_name args` with its own resolv.conf naming a nameserver that receives
/// queries and never answers. Returns the output, the time taken and whether the
/// silent nameserver saw a query (so the test knows the fault was real).
fn with_silent_dns(bin_name: &str, args: &[String]) -> (Output, Duration, bool) {
    let dir = TestDir::new();
    // Its own loopback address, so no real resolver on 127.0.0.1:53 is disturbed.
    let dns = UdpSocket::bind("127.0.0.97:53").expect("bind 127.0.0.97:53");
    dns.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let resolv = dir.join("resolv.conf");
    fs::write(
        &resolv,
        "nameserver 127.0.0.97\noptions timeout:30 attempts:3\n",
    )
    .unwrap();
    let seen = std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        dns.recv_from(&mut buf).is_ok()
    });
    let mut script = format!(
        "mount --bind {} /etc/resolv.conf && exec {}",
        resolv.display(),
        bin(bin_name).display()
    );
    for a in args {
        script.push_str(&format!(" '{}'", a.replace('\'', "'\\''")));
    }
    let start = Instant::now();
    let out = Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .output()
        .expect("unshare");
    let took = start.elapsed();
    (out, took, seen.join().unwrap_or(false))
}

#[test]
fn a_dns_server_that_never_answers_cannot_hang_wal_push_or_wal_get() {
    if need_root("a private resolv.conf (unshare -m)").is_none() {
        return;
    }
    let dir = TestDir::new();
    let seg = write_segment(dir.path(), "000000010000000000000001", 1);
    let common = strings(&[
        "--repo",
        "ssh://postgres@backup-host.example.com/srv/pgcellar",
        "--server",
        "main",
        "--ssh-connect-timeout",
        "2",
        "--retries",
        "0",
    ]);
    let mut push = common.clone();
    push.push(seg.display().to_string());
    let (out, took, seen) = with_silent_dns("wal-push", &push);
    assert!(
        seen,
        "the silent nameserver got no query: the fault was not caused"
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(took < Duration::from_secs(10), "wal-push took {took:?}");
    assert!(stderr(&out).contains("resolve"), "{}", stderr(&out));

    let mut get = common;
    get.push("000000010000000000000001".into());
    get.push(dir.join("dest").display().to_string());
    let (out, took, seen) = with_silent_dns("wal-get", &get);
    assert!(seen);
    let code = out.status.code().unwrap_or(0);
    assert!(code > 125, "wal-get exited {code}: {}", stderr(&out));
    assert!(took < Duration::from_secs(10), "wal-get took {took:?}");
    assert!(!dir.join("dest").exists());
}

#[test]
fn a_peer_that_accepts_and_never_speaks_is_given_up_within_the_timeouts() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // Hold every connection open without a byte of SSH banner.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().flatten() {
            held.push(s);
        }
    });
    let dir = TestDir::new();
    let seg = write_segment(dir.path(), "000000010000000000000001", 1);
    let common = vec![
        "--repo".to_string(),
        format!("ssh://postgres@127.0.0.1:{port}/srv/pgcellar"),
        "--server".into(),
        "main".into(),
        "--ssh-connect-timeout".into(),
        "2".into(),
        "--retries".into(),
        "1".into(),
    ];
    let mut push = common.clone();
    push.push(seg.display().to_string());
    let start = Instant::now();
    let out = run("wal-push", &push);
    let took = start.elapsed();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    // Two attempts of at most 2 s each, plus the back-off between them.
    assert!(took < Duration::from_secs(8), "wal-push took {took:?}");
    let mut get = common;
    get.push("000000010000000000000001".into());
    get.push(dir.join("dest").display().to_string());
    let start = Instant::now();
    let out = run("wal-get", &get);
    let took = start.elapsed();
    let code = out.status.code().unwrap_or(0);
    assert!(code > 125, "wal-get exited {code}: {}", stderr(&out));
    assert!(took < Duration::from_secs(8), "wal-get took {took:?}");
    assert!(!dir.join("dest").exists());
}

// ---------------------------------------------------------------------------
// Hostile configuration values, names and ids.

#[test]
fn hostile_configuration_files_and_values_give_one_clear_line() {
    let (repo, _) = register_synthetic(RepoDir::new(), SYSID);
    let dir = TestDir::new();
    let seg = write_segment(dir.path(), "000000010000000000000001", 1);
    let cfg = dir.join("pgcellar.toml");
    let mut big = "# ".to_string();
    big.push_str(&"a".repeat(10 << 20));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", vec![0xff, 0x00, 0x13, 0x37, b'=', b'[', 0xc3]),
        ("truncated", b"repo = \"/srv/pg".to_vec()),
        ("empty", Vec::new()),
        ("10 MB", big.into_bytes()),
        ("wrong type", b"retries = \"three\"\n".to_vec()),
        ("negative", b"ssh_io_timeout = -5\n".to_vec()),
        ("huge number", b"prefetch = 99999999999999999999\n".to_vec()),
        ("zero timeout", b"ssh_connect_timeout = 0\n".to_vec()),
        ("relative path", b"repo = \"relative/repo\"\n".to_vec()),
        ("bad server", b"server = \"../../etc\"\n".to_vec()),
    ];
    for (what, text) in cases {
        fs::write(&cfg, &text).unwrap();
        // The file's repo (if any) is overridden so that each case reaches its key.
        let mut base = vec!["--config".to_string(), cfg.display().to_string()];
        if what != "bad server" {
            base.extend(strings(&["--server", "main"]));
        }
        if !["truncated", "garbage", "relative path"].contains(&what) {
            base.extend(strings(&["--repo", &repo.path.display().to_string()]));
        }
        let mut push = base.clone();
        push.push(seg.display().to_string());
        let out = run("wal-push", &push);
        if what == "empty" || what == "10 MB" {
            // Nothing wrong in these files: the push succeeds (or is a re-push).
            assert!(out.status.success(), "{what}: {}", stderr(&out));
            continue;
        }
        assert_eq!(
            out.status.code(),
            Some(1),
            "wal-push, {what}: {}",
            stderr(&out)
        );
        assert_one_clear_line(&out, &format!("wal-push, {what}"));
        let mut get = base.clone();
        get.extend(strings(&[
            "000000010000000000000001",
            &dir.join("d").display().to_string(),
        ]));
        let out = run("wal-get", &get);
        let code = out.status.code().unwrap_or(0);
        assert!(code > 125, "wal-get, {what}: exit {code}: {}", stderr(&out));
        assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
        let mut list = base.clone();
        list.push("list".into());
        let out = run("pgcellar", &list);
        assert_eq!(out.status.code(), Some(1), "list, {what}: {}", stderr(&out));
        assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    }

    // A bad value from the environment is named as such, not as a file key.
    let out = Command::new(bin("wal-push"))
        .args(repo.args())
        .env("PGCELLAR_SSH_IO_TIMEOUT", "0")
        .arg(&seg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("PGCELLAR_SSH_IO_TIMEOUT (environment)"),
        "{}",
        stderr(&out)
    );
    // A bad number in the environment is a usage error: 1 for wal-push, > 125 for wal-get.
    let out = Command::new(bin("wal-push"))
        .args(repo.args())
        .env("PGCELLAR_RETRIES", "many")
        .arg(&seg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let out = Command::new(bin("wal-get"))
        .args(repo.args())
        .env("PGCELLAR_RETRIES", "many")
        .args(["000000010000000000000001", "/tmp/never"])
        .output()
        .unwrap();
    assert!(out.status.code().unwrap_or(0) > 125, "{}", stderr(&out));
}

#[test]
fn hostile_backup_ids_never_escape_or_panic() {
    let (repo, _) = register_synthetic(RepoDir::new(), SYSID);
    let dest = TestDir::new();
    let long = "9".repeat(5000);
    for id in [
        "../../etc",
        "/etc/passwd",
        "20261123T000000Z/../x",
        "\n",
        "",
        &long,
        "lätest",
    ] {
        for args in [
            vec!["pgcellar", "show", id],
            vec!["pgcellar", "delete", id],
            vec!["pgcellar", "keep", id],
            vec!["pgcellar", "verify", id],
        ] {
            let mut a = repo.args();
            a.extend(strings(&args[1..]));
            let out = run(args[0], &a);
            let code = out.status.code().unwrap_or(-1);
            assert!(
                code == 1 || code == 2,
                "{args:?}: exit {code}: {}",
                stderr(&out)
            );
            assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
        }
        let mut a = repo.args();
        a.extend(strings(&[
            "--backup",
            id,
            &dest.join("d").display().to_string(),
        ]));
        let out = run("restore", &a);
        assert!(
            matches!(out.status.code(), Some(1) | Some(2)),
            "{}",
            stderr(&out)
        );
        assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    }
    // Nothing was created or removed outside the repository.
    assert!(repo.path.join("main").join("server.json").exists());
}
