//! The SSH backend against a real sshd on loopback: the archive hooks over ssh://,
//! host-key and client-key checks, and a backup host that dies or hangs mid-push.

use crate::common::sshd::Sshd;
use crate::common::*;
use assert_cmd::Command as Cmd;
use pgcellar::config::{CommonArgs, Settings, SshSettings};
use pgcellar::repo::{Repository, ServerInfo};
use pgcellar::storage::{Overwrite, RepoUrl, SshStorage, Storage, TEMP_PREFIX};
use pgcellar::ErrorKind;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SYSID: u64 = 7_300_000_000_000_000_077;
const SEG: u64 = 1 << 20;

fn settings(sshd: &Sshd) -> SshSettings {
    SshSettings {
        identity: Some(sshd.client_key.clone()),
        known_hosts: Some(sshd.known_hosts.clone()),
        accept_new_host_key: false,
        connect_timeout: Duration::from_secs(5),
        io_timeout: Duration::from_secs(20),
    }
}

/// A repository over SSH, created and registered through the library.
struct SshRepo {
    _dir: TestDir,
    root: PathBuf,
    url: String,
    /// Config file with short timeouts and one retry.
    config: PathBuf,
}

impl SshRepo {
    fn new(sshd: &Sshd) -> SshRepo {
        let dir = TestDir::new();
        let root = dir.join("repo");
        let url = sshd.url(&root);
        let config = dir.join("pgcellar.toml");
        fs::write(
            &config,
            "ssh_connect_timeout = 2\nssh_io_timeout = 2\nretries = 1\n",
        )
        .unwrap();
        fs::set_permissions(&config, fs::Permissions::from_mode(0o644)).unwrap();
        let args = CommonArgs {
            repo: Some(url.clone()),
            server: Some("main".into()),
            ssh_identity: Some(sshd.client_key.clone()),
            ssh_known_hosts: Some(sshd.known_hosts.clone()),
            ..Default::default()
        };
        let s = Settings::resolve(&args, None).unwrap();
        let (repo, created) = Repository::open_or_create(&s, pgcellar::repo::Creation::plain())
            .unwrap_or_else(|e| panic!("{e}\n--- sshd log ---\n{}", sshd.log()));
        assert!(created);
        repo.register_server(&ServerInfo {
            name: "main".into(),
            system_identifier: SYSID.to_string(),
            pg_version_num: 150018,
            pg_major: 15,
            wal_segment_size: SEG,
            block_size: 8192,
            registered: "2026-11-23T00:00:00Z".into(),
        })
        .unwrap();
        SshRepo {
            _dir: dir,
            root,
            url,
            config,
        }
    }

    /// Common flags reaching this repository as the test sshd's client.
    fn args(&self, sshd: &Sshd) -> Vec<String> {
        vec![
            "--repo".into(),
            self.url.clone(),
            "--server".into(),
            "main".into(),
            "--ssh-identity".into(),
            sshd.client_key.display().to_string(),
            "--ssh-known-hosts".into(),
            sshd.known_hosts.display().to_string(),
            "--config".into(),
            self.config.display().to_string(),
        ]
    }

    /// Names (not temporary ones) stored for WAL file `name`, read from disk.
    fn stored(&self, name: &str) -> Vec<String> {
        let dir = self.root.join("main/wal").join(&name[..16]);
        let mut v: Vec<String> = fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(name) && !n.starts_with(TEMP_PREFIX))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

/// A synthetic segment of cluster SYSID: valid long page header, seeded body.
fn segment(dir: &Path, name: &str, seed: u64) -> PathBuf {
    let log = u64::from_str_radix(&name[8..16], 16).unwrap();
    let seg = u64::from_str_radix(&name[16..24], 16).unwrap();
    let addr = (log * (0x1_0000_0000 / SEG) + seg) * SEG;
    let mut b = vec![0u8; SEG as usize];
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    for chunk in b.chunks_mut(64) {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        chunk[0..8].copy_from_slice(&x.to_le_bytes());
    }
    b[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
    b[2..4].copy_from_slice(&2u16.to_le_bytes());
    b[4..8].copy_from_slice(&1u32.to_le_bytes());
    b[8..16].copy_from_slice(&addr.to_le_bytes());
    b[16..24].copy_from_slice(&[0; 8]);
    b[24..32].copy_from_slice(&SYSID.to_le_bytes());
    b[32..36].copy_from_slice(&(SEG as u32).to_le_bytes());
    b[36..40].copy_from_slice(&8192u32.to_le_bytes());
    let p = dir.join(name);
    fs::write(&p, b).unwrap();
    p
}

fn wal_push(sshd: &Sshd, repo: &SshRepo, path: &Path) -> assert_cmd::assert::Assert {
    Cmd::cargo_bin("wal-push")
        .unwrap()
        .args(repo.args(sshd))
        .arg(path)
        .assert()
}

fn wal_get(sshd: &Sshd, repo: &SshRepo, name: &str, dest: &Path) -> assert_cmd::assert::Assert {
    Cmd::cargo_bin("wal-get")
        .unwrap()
        .args(repo.args(sshd))
        .arg(name)
        .arg(dest)
        .assert()
}

#[test]
fn wal_push_and_wal_get_round_trip_over_ssh() {
    let Some(sshd) = Sshd::start() else { return };
    let repo = SshRepo::new(&sshd);
    let work = TestDir::new();
    let names = [
        "000000010000000000000001",
        "000000010000000000000002",
        "0000000100000002000000FF",
    ];
    for (i, n) in names.iter().enumerate() {
        let p = segment(work.path(), n, i as u64);
        wal_push(&sshd, &repo, &p).success();
        let stored = repo.stored(n);
        assert_eq!(stored.len(), 1, "{stored:?}");
        let on_disk = repo.root.join("main/wal").join(&n[..16]).join(&stored[0]);
        assert_eq!(
            fs::metadata(&on_disk).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::metadata(on_disk.parent().unwrap())
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
    }
    let hist = work.join("00000002.history");
    fs::write(&hist, "1\t0/3000000\tno recovery target specified\n").unwrap();
    wal_push(&sshd, &repo, &hist).success();

    for (i, n) in names.iter().enumerate() {
        let dest = work.join(format!("got-{n}"));
        wal_get(&sshd, &repo, n, &dest).success();
        let want = fs::read(segment(&work.join(""), n, i as u64)).unwrap();
        assert!(
            fs::read(&dest).unwrap() == want,
            "{n} differs after the round trip"
        );
    }
    let dest = work.join("got-history");
    wal_get(&sshd, &repo, "00000002.history", &dest).success();
    assert_eq!(fs::read(&dest).unwrap(), fs::read(&hist).unwrap());

    // Identical re-push: 0. Different content under an archived name: 1, nothing changes.
    let p = segment(work.path(), names[0], 0);
    wal_push(&sshd, &repo, &p).success();
    let before = repo.stored(names[0]);
    let p = segment(work.path(), names[0], 99);
    let out = wal_push(&sshd, &repo, &p).code(1);
    let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(err.contains("different content"), "{err}");
    assert_eq!(repo.stored(names[0]), before);

    // Not archived: 1, and nothing at the destination.
    let dest = work.join("absent");
    wal_get(&sshd, &repo, "000000010000000000000042", &dest).code(1);
    assert!(!dest.exists());
}

#[test]
fn unknown_host_key_is_refused_with_its_fingerprint() {
    let Some(sshd) = Sshd::start() else { return };
    let repo = SshRepo::new(&sshd);
    let empty = repo._dir.join("empty_known_hosts");
    fs::write(&empty, "").unwrap();
    let mut s = settings(&sshd);
    s.known_hosts = Some(empty.clone());
    let url = RepoUrl::parse(&repo.url).unwrap();
    let err = SshStorage::open(&url, &s)
        .err()
        .expect("unknown host accepted");
    let msg = err.to_string();
    assert_eq!(err.kind(), ErrorKind::Config, "{msg}");
    assert!(
        msg.contains(&sshd.host_fingerprint),
        "no fingerprint: {msg}"
    );
    assert!(msg.contains("ED25519 key fingerprint is SHA256:"), "{msg}");
    assert_eq!(
        fs::read_to_string(&empty).unwrap(),
        "",
        "known_hosts was changed"
    );

    // The binaries say the same in one line: wal-push exits 1, wal-get stops recovery.
    let work = TestDir::new();
    let seg = segment(work.path(), "000000010000000000000001", 1);
    let mut args = repo.args(&sshd);
    let kh = args.iter().position(|a| a == "--ssh-known-hosts").unwrap() + 1;
    args[kh] = empty.display().to_string();
    let out = Cmd::cargo_bin("wal-push")
        .unwrap()
        .args(&args)
        .arg(&seg)
        .assert()
        .code(1);
    let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(err.contains(&sshd.host_fingerprint), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    Cmd::cargo_bin("wal-get")
        .unwrap()
        .args(&args)
        .arg("000000010000000000000001")
        .arg(work.join("dest"))
        .assert()
        .code(126);
}

#[test]
fn changed_host_key_is_refused_even_with_accept_new() {
    let Some(sshd) = Sshd::start() else { return };
    let dir = TestDir::new();
    // Another ed25519 key recorded for this host: what a man in the middle looks like.
    let other = fs::read_to_string(sshd.wrong_key.with_extension("pub")).unwrap();
    let mut parts = other.split_whitespace();
    let line = format!(
        "[127.0.0.1]:{} {} {}\n",
        sshd.port,
        parts.next().unwrap(),
        parts.next().unwrap()
    );
    let kh = dir.join("known_hosts");
    fs::write(&kh, &line).unwrap();
    let url = RepoUrl::parse(&sshd.url(&dir.join("repo"))).unwrap();
    for accept_new in [false, true] {
        let mut s = settings(&sshd);
        s.known_hosts = Some(kh.clone());
        s.accept_new_host_key = accept_new;
        let err = SshStorage::open(&url, &s)
            .err()
            .expect("changed key accepted");
        let msg = err.to_string();
        assert!(msg.contains("HOST KEY MISMATCH"), "{msg}");
        assert!(msg.contains(&sshd.host_fingerprint), "{msg}");
        assert_eq!(
            fs::read_to_string(&kh).unwrap(),
            line,
            "known_hosts was changed"
        );
    }
}

#[test]
fn accept_new_records_an_unknown_host_key_that_openssh_can_read() {
    let Some(sshd) = Sshd::start() else { return };
    let dir = TestDir::new();
    let kh = dir.join("new/.ssh/known_hosts");
    let url = RepoUrl::parse(&sshd.url(&dir.join("repo"))).unwrap();
    let mut s = settings(&sshd);
    s.known_hosts = Some(kh.clone());
    s.accept_new_host_key = true;
    let st = SshStorage::open(&url, &s).unwrap();
    st.create_dir_all("").unwrap();
    drop(st);
    let text = fs::read_to_string(&kh).unwrap();
    assert!(
        text.starts_with(&format!("[127.0.0.1]:{} ssh-ed25519 ", sshd.port)),
        "{text}"
    );
    assert_eq!(
        fs::metadata(&kh).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // OpenSSH finds it, with the same fingerprint.
    let out = run_ok(
        Command::new("ssh-keygen")
            .args(["-l", "-F", &format!("[127.0.0.1]:{}", sshd.port), "-f"])
            .arg(&kh),
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&sshd.host_fingerprint));
    // Now known: a strict connection works and adds nothing.
    s.accept_new_host_key = false;
    SshStorage::open(&url, &s).unwrap();
    assert_eq!(fs::read_to_string(&kh).unwrap(), text);
}

#[test]
fn wrong_or_missing_client_key_gives_a_clear_error() {
    let Some(sshd) = Sshd::start() else { return };
    let dir = TestDir::new();
    let url = RepoUrl::parse(&sshd.url(&dir.join("repo"))).unwrap();
    let mut s = settings(&sshd);
    s.identity = Some(sshd.wrong_key.clone());
    let err = SshStorage::open(&url, &s)
        .err()
        .expect("wrong key accepted");
    let msg = err.to_string();
    assert_eq!(err.kind(), ErrorKind::Config, "{msg}");
    assert!(msg.contains("refused key"), "{msg}");
    assert!(msg.contains(&sshd.wrong_key.display().to_string()), "{msg}");
    assert!(msg.contains("authorized_keys"), "{msg}");
    // No key material in the message.
    let private = fs::read_to_string(&sshd.wrong_key).unwrap();
    let body = private.lines().nth(1).unwrap();
    assert!(!msg.contains(body));

    s.identity = Some(dir.join("no-such-key"));
    let msg = SshStorage::open(&url, &s)
        .err()
        .expect("missing key")
        .to_string();
    assert!(msg.contains("does not exist"), "{msg}");
}

#[test]
fn replace_uses_posix_rename_without_a_shell() {
    let Some(sshd) = Sshd::start() else { return };
    let dir = TestDir::new();
    let url = RepoUrl::parse(&sshd.url(&dir.join("repo"))).unwrap();
    let s = SshStorage::open(&url, &settings(&sshd)).unwrap();
    s.create_dir_all("m").unwrap();
    let commands_before = sshd.log().matches("Starting session: command").count();
    s.write_all("m/backup.json", b"{\"v\":1}", Overwrite::Replace)
        .unwrap();
    let ino =
        std::os::unix::fs::MetadataExt::ino(&fs::metadata(dir.join("repo/m/backup.json")).unwrap());
    s.write_all("m/backup.json", b"{\"v\":2}", Overwrite::Replace)
        .unwrap();
    assert_eq!(
        fs::read(dir.join("repo/m/backup.json")).unwrap(),
        b"{\"v\":2}"
    );
    let ino2 =
        std::os::unix::fs::MetadataExt::ino(&fs::metadata(dir.join("repo/m/backup.json")).unwrap());
    assert_ne!(ino, ino2, "not replaced by a rename");
    // sshd logs every exec ("Starting session: command"); posix-rename needs none,
    // only a second SFTP channel.
    std::thread::sleep(Duration::from_millis(200));
    let log = sshd.log();
    assert_eq!(
        log.matches("Starting session: command").count(),
        commands_before,
        "Replace fell back to an exec channel:\n{log}"
    );
    assert!(
        log.contains("subsystem 'sftp'") && log.contains(" id 1"),
        "{log}"
    );
}

/// Start `wal-push` with the pause-before-rename fault and wait until it is there.
fn push_until_paused(sshd: &Sshd, repo: &SshRepo, seg: &Path) -> std::process::Child {
    let mut child = Command::new(assert_cmd::cargo::cargo_bin("wal-push"))
        .args(repo.args(sshd))
        .arg(seg)
        .env("PGCELLAR_TEST_FAULT", "pause-before-rename")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("wal-push never reached the rename");
        };
        if line.contains("pausing before rename") {
            // Keep draining stderr so the child never blocks on it.
            std::thread::spawn(move || {
                for l in rx {
                    eprintln!("wal-push: {l}")
                }
            });
            return child;
        }
        eprintln!("wal-push: {line}");
    }
}

fn wait_exit(child: &mut std::process::Child, limit: Duration) -> (i32, Duration) {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return (st.code().unwrap_or(-1), start.elapsed());
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("wal-push still running after {limit:?}: it hangs");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sshd_killed_mid_push_exits_1_leaves_nothing_and_the_retry_succeeds() {
    let Some(mut sshd) = Sshd::start() else {
        return;
    };
    let repo = SshRepo::new(&sshd);
    let work = TestDir::new();
    let name = "000000010000000000000007";
    let seg = segment(work.path(), name, 7);
    let mut child = push_until_paused(&sshd, &repo, &seg);
    sshd.kill();
    let (code, took) = wait_exit(&mut child, Duration::from_secs(30));
    assert_eq!(code, 1);
    // connect refused at once; one retry after 250 ms
    assert!(took < Duration::from_secs(8), "took {took:?}");
    assert!(repo.stored(name).is_empty(), "{:?}", repo.stored(name));

    sshd.restart();
    wal_push(&sshd, &repo, &seg).success();
    assert_eq!(repo.stored(name).len(), 1);
    let dest = work.join("back");
    wal_get(&sshd, &repo, name, &dest).success();
    assert!(fs::read(&dest).unwrap() == fs::read(&seg).unwrap());
}

#[test]
fn hung_sshd_mid_push_times_out_and_the_retry_succeeds() {
    let Some(sshd) = Sshd::start() else { return };
    let repo = SshRepo::new(&sshd);
    let work = TestDir::new();
    let name = "000000010000000000000008";
    let seg = segment(work.path(), name, 8);
    let mut child = push_until_paused(&sshd, &repo, &seg);
    sshd.freeze();
    let (code, took) = wait_exit(&mut child, Duration::from_secs(60));
    // Nothing visible while the peer is still frozen.
    let stored = repo.stored(name);
    sshd.thaw();
    assert_eq!(code, 1);
    // io timeout (2 s) on the rename + 250 ms backoff + connect timeout (2 s) waiting
    // for the frozen server's banner, plus slack for a loaded machine.
    assert!(took < Duration::from_secs(12), "took {took:?}");
    assert!(
        took >= Duration::from_secs(2),
        "took {took:?}: no timeout involved?"
    );
    assert!(stored.is_empty(), "{stored:?}");

    wal_push(&sshd, &repo, &seg).success();
    assert_eq!(repo.stored(name).len(), 1);
    let dest = work.join("back");
    wal_get(&sshd, &repo, name, &dest).success();
    assert!(fs::read(&dest).unwrap() == fs::read(&seg).unwrap());
}

#[test]
fn wal_get_with_an_unreachable_repository_stops_recovery() {
    let Some(mut sshd) = Sshd::start() else {
        return;
    };
    let repo = SshRepo::new(&sshd);
    sshd.kill();
    let work = TestDir::new();
    let start = Instant::now();
    let out = wal_get(&sshd, &repo, "000000010000000000000001", &work.join("d")).code(126);
    assert!(start.elapsed() < Duration::from_secs(10));
    let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(err.contains("cannot connect"), "{err}");
    assert!(err.contains("retrying"), "no retry: {err}");
}

/// `archive_command`/`restore_command` over SSH, as the postgres user, end to end.
#[test]
fn postgres_archives_over_ssh_and_a_copy_recovers_to_the_last_row() {
    let Some(sshd) = Sshd::start() else { return };
    let dir = TestDir::new();
    let url = sshd.url(&dir.join("repo"));
    let flags = format!(
        "--repo {url} --server main --ssh-identity {} --ssh-known-hosts {}",
        sshd.client_key.display(),
        sshd.known_hosts.display()
    );
    let archive = format!("{} {flags} %p", bin("wal-push").display());
    let restore = format!("{} {flags} %f %p", bin("wal-get").display());
    let Some(pg) = Cluster::init(ClusterOpts {
        archive_command: Some(archive),
        ..Default::default()
    }) else {
        return;
    };
    let mut init = pg_command(bin("pgcellar"));
    init.args(flags.split(' '))
        .arg("--conninfo")
        .arg(pg.conninfo())
        .arg("init");
    run_ok(&mut init);
    pg.pgbench(&["-i", "-s", "2", "-q"]);
    pg.psql("CREATE TABLE marks (id int primary key, note text)");
    let base_root = TestDir::new();
    let base = base_root.join("pgdata");
    pg_basebackup(&pg, &base);
    pg.pgbench(&["-n", "-c", "2", "-j", "2", "-t", "300"]);
    pg.psql("INSERT INTO marks SELECT g, md5(g::text) FROM generate_series(1, 1000) g");
    pg.psql("INSERT INTO marks VALUES (1001, 'last committed row')");
    pg.switch_and_wait_archived();
    let (archived, failed) = pg.archiver_counts();
    assert!(archived >= 5, "only {archived} segments archived");
    assert_eq!(
        failed,
        0,
        "archive_command failed:\n{}",
        tail(&pg.log_text(), 40)
    );
    let accounts = pg.psql("SELECT sum(abalance) FROM pgbench_accounts");

    recover_to_the_last_row(base_root, base, &restore, &accounts);
}

/// The full PITR over SSH: archive, two base backups (the second incremental, sharing
/// the first one's objects), restore to a named restore
/// point and to the end, start, check rows.
#[test]
fn full_pitr_over_ssh_with_base_backup_and_restore() {
    let Some(sshd) = Sshd::start() else { return };
    if !bin("base-backup").exists() || !bin("restore").exists() {
        panic!("base-backup/restore binaries are missing from this build");
    }
    let dir = TestDir::new();
    let root = dir.join("repo");
    let url = sshd.url(&root);
    let flags: Vec<String> = vec![
        "--repo".into(),
        url,
        "--server".into(),
        "main".into(),
        "--ssh-identity".into(),
        sshd.client_key.display().to_string(),
        "--ssh-known-hosts".into(),
        sshd.known_hosts.display().to_string(),
    ];
    let archive = format!("{} {} %p", bin("wal-push").display(), flags.join(" "));
    let Some(c) = Cluster::init(ClusterOpts {
        archive_command: Some(archive),
        ..Default::default()
    }) else {
        return;
    };
    let as_pg = |name: &str, extra: &[&str]| {
        let mut cmd = pg_command(bin(name));
        cmd.args(&flags).args(extra);
        run_ok(&mut cmd)
    };
    as_pg("pgcellar", &["--conninfo", &c.conninfo(), "init"]);
    let pgdata = c.pgdata.display().to_string();
    let backup = || {
        let out = as_pg(
            "base-backup",
            &["--pgdata", &pgdata, "--conninfo", &c.conninfo()],
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    c.psql("CREATE TABLE t(i int)");
    c.psql("INSERT INTO t SELECT generate_series(1, 10)");
    let id1 = backup();
    c.psql("INSERT INTO t SELECT generate_series(11, 20)");
    c.psql("SELECT pg_create_restore_point('before_21')");
    c.psql("INSERT INTO t SELECT generate_series(21, 30)");
    // Sleep past the "safe horizon" so unchanged files are reused by the next backup.
    std::thread::sleep(Duration::from_millis(1500));
    let id2 = backup();
    assert!(id2 > id1, "{id1} {id2}");
    c.psql("INSERT INTO t SELECT generate_series(31, 40)");
    c.switch_and_wait_archived();
    let (_, failed) = c.archiver_counts();
    assert_eq!(
        failed,
        0,
        "archive_command failed:\n{}",
        tail(&c.log_text(), 30)
    );

    // The incremental backup shares the first one's objects for its unchanged files:
    // most of its files added nothing, and every object it names is on the host.
    let m2 = pgcellar::repo::manifest::load(
        &pgcellar::storage::LocalStorage::new(root.clone()),
        "main",
        &pgcellar::repo::manifest::BackupId::parse(&id2).unwrap(),
    )
    .unwrap();
    assert!(
        m2.totals.reused_files > 10 && m2.totals.copied_stored_size < m2.totals.stored_size / 2,
        "{:?}",
        m2.totals
    );
    for f in &m2.files {
        for o in f.all_objects() {
            assert!(root.join(o.path("main")).is_file(), "{} missing", o.id);
        }
    }

    let rows = |cl: &Cluster| cl.psql("SELECT count(*) || ' ' || coalesce(max(i), 0) FROM t");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "--backup",
                &id1,
                "--target-name",
                "before_21",
                "--target-action",
                "promote",
            ],
            "20 20",
        ),
        (vec![], "40 40"),
    ];
    for (args, want) in cases {
        let root = TestDir::new();
        let dest = root.join("pgdata");
        let mut extra = args.clone();
        let d = dest.display().to_string();
        extra.push(&d);
        as_pg("restore", &extra);
        let auto = fs::read_to_string(dest.join("postgresql.auto.conf")).unwrap();
        assert!(
            auto.contains("ssh://"),
            "restore_command is not over SSH:\n{auto}"
        );
        let r = Cluster::adopt_restored(root, dest);
        r.append_conf(&["archive_mode = off".to_string()]);
        r.start();
        r.wait_for_promotion(Duration::from_secs(120));
        assert_eq!(
            rows(&r),
            want,
            "restore {args:?}\n{}",
            tail(&r.log_text(), 30)
        );
        assert!(
            r.log_text().contains("restored log file"),
            "wal-get was not used"
        );
    }
}
