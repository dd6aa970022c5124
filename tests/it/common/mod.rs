//! Test harness: real PostgreSQL clusters and temporary directories.
//!
//! PostgreSQL refuses to run as root, and CI runs as root, so when we are root every
//! server command (and therefore `archive_command`/`restore_command`) runs as the
//! `postgres` user through `runuser`, in directories that user owns. The binaries
//! under test are copied to a directory that user can reach.

pub mod garage;
pub mod sshd;
pub mod synthetic;

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The binaries of this package, as built by cargo for this test run.
pub const BINARIES: &[&str] = &["wal-push", "wal-get", "pgcellar", "base-backup", "restore"];

/// Whether we run as root (and must hand servers to the `postgres` user).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Whether this is CI, where a missing dependency is a failure, never a skip.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Report a missing dependency: panic under CI, loud skip locally.
pub fn skip_or_fail(what: &str) -> Option<()> {
    if under_ci() {
        panic!("CI=true and {what}: this test cannot run, failing instead of skipping");
    }
    eprintln!("\n*** SKIPPED: {what} (set CI=true to make this a failure) ***\n");
    None
}

/// Directory holding copies of the built binaries, readable and executable by all.
///
/// One per profile under the target directory (`CARGO_TARGET_TMPDIR`), refreshed by
/// every run, so that it is nothing to clean up. New copies replace old ones by
/// rename: a concurrent run of the same checkout keeps the files it executes.
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        allow_root_writes();
        let built = assert_cmd::cargo::cargo_bin("wal-push");
        let built_dir = built.parent().expect("binary dir");
        let profile = built_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let dir = bin_dir_parent().join(format!("pgcellar-bin-{profile}"));
        fs::create_dir_all(&dir).expect("create bin dir");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod bin dir");
        // Binaries added by later work may not exist in every build: copy what is there.
        for name in BINARIES {
            let src = built_dir.join(name);
            if src.exists() {
                let tmp = dir.join(format!(".{name}.{}", std::process::id()));
                fs::copy(&src, &tmp).expect("copy binary");
                fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755)).expect("chmod");
                fs::rename(&tmp, dir.join(name)).expect("rename binary");
            }
        }
        dir
    })
}

/// Where [`bin_dir`] lives: the target directory's scratch space when the `postgres`
/// user can reach it (or we are not root); otherwise, as in a checkout under
/// `/root`, one directory in the system temp dir for this target directory, reused
/// by every run rather than one per run.
fn bin_dir_parent() -> PathBuf {
    let target_tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    fs::create_dir_all(&target_tmp).expect("create CARGO_TARGET_TMPDIR");
    let reachable = target_tmp
        .ancestors()
        .all(|d| fs::metadata(d).is_ok_and(|m| m.permissions().mode() & 0o001 != 0));
    if !is_root() || reachable {
        return target_tmp;
    }
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    target_tmp.hash(&mut h);
    let dir = std::env::temp_dir().join(format!("pgcellar-bins-{:016x}", h.finish()));
    fs::create_dir_all(&dir).expect("create bin dir parent");
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod bin dir");
    dir
}

/// Let the binaries this test process starts write repositories as root.
///
/// CI runs the tests as root, and most of them write repositories that only root
/// then reads; the refusal to write as root has its own tests, which remove the
/// variable from their commands. Called by [`bin_dir`] and [`TestDir::new`], which
/// every test goes through before it starts a binary.
pub fn allow_root_writes() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        if is_root() {
            std::env::set_var("PGCELLAR_ALLOW_ROOT", "1");
        }
    });
}

/// Path of a built binary that the `postgres` user can run.
pub fn bin(name: &str) -> PathBuf {
    bin_dir().join(name)
}

/// A temporary directory, owned by `postgres` when we are root, removed on drop.
pub struct TestDir {
    path: PathBuf,
}

impl TestDir {
    /// A new, empty directory.
    pub fn new() -> TestDir {
        allow_root_writes();
        let dir = tempfile::Builder::new()
            .prefix("pgcellar-test-")
            .tempdir()
            .expect("temp dir");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        chown_postgres(dir.path());
        // From here on our Drop removes it, retrying where TempDir's gives up.
        TestDir { path: dir.keep() }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside it.
    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.path.join(p)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        // A process the test started may still be writing here for a moment (a
        // detached prefetcher, a server shutting down): retry for up to 5 s.
        for _ in 0..50 {
            if fs::remove_dir_all(&self.path).is_ok() || fs::symlink_metadata(&self.path).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!(
            "warning: could not remove test directory {}",
            self.path.display()
        );
    }
}

impl Default for TestDir {
    fn default() -> Self {
        Self::new()
    }
}

/// Give `path` (recursively) to the postgres user when we are root.
pub fn chown_postgres(path: &Path) {
    if is_root() {
        let st = Command::new("chown")
            .arg("-R")
            .arg("postgres:postgres")
            .arg(path)
            .status()
            .expect("chown");
        assert!(st.success(), "chown -R postgres {}", path.display());
    }
}

/// A command that runs as the postgres user when we are root.
pub fn pg_command(program: impl AsRef<OsStr>) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// Run a command, panicking with its output if it fails.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// PostgreSQL's server binaries: PG_BINDIR, else `pg_config --bindir`, else Debian's 15.
pub fn pg_bindir() -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(d) = std::env::var_os("PG_BINDIR") {
        candidates.push(PathBuf::from(d));
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        if out.status.success() {
            candidates.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
        }
    }
    candidates.push(PathBuf::from("/usr/lib/postgresql/15/bin"));
    candidates
        .into_iter()
        .find(|d| d.join("initdb").exists() && d.join("pg_ctl").exists())
}

/// Client tools (psql, pgbench) to use with the server binaries in `bindir`: its own
/// when it has them, else Debian's (15), which work against 13–18.
pub fn client_bindir_for(bindir: &Path) -> PathBuf {
    [
        Some(bindir.to_path_buf()),
        pg_bindir(),
        Some(PathBuf::from("/usr/lib/postgresql/15/bin")),
    ]
    .into_iter()
    .flatten()
    .find(|d| d.join("psql").exists())
    .unwrap_or_else(|| bindir.to_path_buf())
}

/// Server binaries of PostgreSQL `major`: PG_BINDIR_<major>, else the npm build that
/// `.ci/install-pg-npm <major>` put in `${PGCELLAR_PG_CACHE:-/var/cache/pgcellar/pg}`,
/// else Debian's package. They may come without client tools: a [`Cluster`] then
/// runs psql and pgbench from [`pg_bindir`].
pub fn pg_bindir_for(major: u32) -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(d) = std::env::var_os(format!("PG_BINDIR_{major}")) {
        candidates.push(PathBuf::from(d));
    }
    let cache = std::env::var_os("PGCELLAR_PG_CACHE")
        .map_or_else(|| PathBuf::from("/var/cache/pgcellar/pg"), PathBuf::from);
    candidates.push(cache.join(major.to_string()).join("bin"));
    candidates.push(PathBuf::from(format!("/usr/lib/postgresql/{major}/bin")));
    candidates
        .into_iter()
        .find(|d| d.join("initdb").exists() && d.join("pg_ctl").exists())
}

/// [`pg_bindir_for`], or `None` after [`skip_or_fail`] says what is missing.
pub fn pg_bindir_or_skip(major: u32) -> Option<PathBuf> {
    let dir = pg_bindir_for(major);
    if dir.is_none() {
        skip_or_fail(&format!(
            "PostgreSQL {major} server binaries not found (PG_BINDIR_{major}, or run .ci/install-pg-npm {major})"
        ))?;
    }
    dir
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// How to create a cluster.
#[derive(Debug, Clone)]
pub struct ClusterOpts {
    /// WAL segment size in MiB (1 for fast tests, 16 for PostgreSQL's default).
    pub wal_segsize_mb: u32,
    /// `archive_command`, if archiving is on.
    pub archive_command: Option<String>,
    /// Extra postgresql.conf lines.
    pub conf: Vec<String>,
    /// initdb --data-checksums.
    pub data_checksums: bool,
    /// Server binaries (e.g. from [`pg_bindir_or_skip`]); `None` for [`pg_bindir`]'s.
    pub bindir: Option<PathBuf>,
}

impl Default for ClusterOpts {
    fn default() -> Self {
        ClusterOpts {
            wal_segsize_mb: 1,
            archive_command: None,
            conf: Vec::new(),
            data_checksums: true,
            bindir: None,
        }
    }
}

/// A PostgreSQL cluster in a temporary directory, stopped on drop.
pub struct Cluster {
    /// Holds data directory, socket directory and log; removed after the server stops.
    pub _root: TestDir,
    /// The data directory.
    pub pgdata: PathBuf,
    /// Socket directory (the server listens on no TCP address unless configured).
    pub sockdir: PathBuf,
    /// Port (names the socket).
    pub port: u16,
    /// Server binaries.
    pub bindir: PathBuf,
    /// Client tools (psql, pgbench, pg_basebackup): `bindir` when it has them, else
    /// [`pg_bindir`]'s (Debian's psql 15 works against newer servers).
    pub client_bindir: PathBuf,
    /// Server log file.
    pub log: PathBuf,
}

impl Cluster {
    /// initdb and start a cluster; `None` (loudly) when PostgreSQL is missing locally.
    pub fn init(opts: ClusterOpts) -> Option<Cluster> {
        let Some(bindir) = opts.bindir.clone().or_else(pg_bindir) else {
            skip_or_fail("PostgreSQL server binaries (initdb, pg_ctl) not found")?;
            return None;
        };
        let root = TestDir::new();
        let pgdata = root.join("pgdata");
        let mut initdb = pg_command(bindir.join("initdb"));
        initdb
            .arg("-D")
            .arg(&pgdata)
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                // Not --no-instructions: PostgreSQL 13's initdb lacks it.
                "--no-sync",
            ])
            .arg(format!("--wal-segsize={}", opts.wal_segsize_mb));
        if opts.data_checksums {
            initdb.arg("--data-checksums");
        }
        run_ok(&mut initdb);
        let c = Cluster::adopt(root, pgdata, bindir);
        let mut conf = vec![
            "wal_level = replica".to_string(),
            "max_wal_senders = 4".to_string(),
            "fsync = off".to_string(),
            "shared_buffers = 32MB".to_string(),
            "checkpoint_timeout = 30min".to_string(),
            "log_min_messages = info".to_string(),
        ];
        if let Some(cmd) = &opts.archive_command {
            conf.push("archive_mode = on".into());
            conf.push(format!("archive_command = '{}'", cmd.replace('\'', "''")));
        }
        conf.extend(opts.conf.iter().cloned());
        c.append_conf(&conf);
        c.start();
        Some(c)
    }

    /// Take over an existing data directory (a restore target), with fresh
    /// socket/port settings appended so it can run beside its source.
    pub fn adopt(root: TestDir, pgdata: PathBuf, bindir: PathBuf) -> Cluster {
        let sockdir = root.join("sock");
        fs::create_dir_all(&sockdir).expect("sock dir");
        chown_postgres(&sockdir);
        let port = free_port();
        let log = root.join("server.log");
        let client_bindir = client_bindir_for(&bindir);
        let c = Cluster {
            _root: root,
            pgdata,
            sockdir,
            port,
            bindir,
            client_bindir,
            log,
        };
        c.append_conf(&[
            format!("port = {}", c.port),
            format!("unix_socket_directories = '{}'", c.sockdir.display()),
            "listen_addresses = ''".to_string(),
        ]);
        c
    }

    /// Adopt a data directory restored into `root` (e.g. by `restore`).
    pub fn adopt_restored(root: TestDir, pgdata: PathBuf) -> Cluster {
        let bindir = pg_bindir().expect("PostgreSQL binaries");
        Cluster::adopt_restored_with(root, pgdata, bindir)
    }

    /// [`Cluster::adopt_restored`] with the server binaries of another major.
    pub fn adopt_restored_with(root: TestDir, pgdata: PathBuf, bindir: PathBuf) -> Cluster {
        chown_postgres(root.path());
        Cluster::adopt(root, pgdata, bindir)
    }

    /// Append lines to postgresql.conf.
    pub fn append_conf(&self, lines: &[String]) {
        let path = self.pgdata.join("postgresql.conf");
        let mut text = fs::read_to_string(&path).unwrap_or_default();
        for l in lines {
            text.push_str(l);
            text.push('\n');
        }
        fs::write(&path, text).expect("write postgresql.conf");
        chown_postgres(&path);
    }

    /// Start the server and wait until it accepts connections (not necessarily
    /// out of recovery).
    pub fn start(&self) {
        let out = pg_command(self.bindir.join("pg_ctl"))
            .arg("-D")
            .arg(&self.pgdata)
            .arg("-l")
            .arg(&self.log)
            .args(["-w", "-t", "120", "start"])
            .output()
            .expect("pg_ctl start");
        if !out.status.success() {
            panic!(
                "pg_ctl start failed: {}\n--- server log ---\n{}",
                String::from_utf8_lossy(&out.stderr),
                self.log_text()
            );
        }
    }

    /// Try to start; return whether the server came up.
    pub fn try_start(&self) -> bool {
        pg_command(self.bindir.join("pg_ctl"))
            .arg("-D")
            .arg(&self.pgdata)
            .arg("-l")
            .arg(&self.log)
            .args(["-w", "-t", "60", "start"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    /// Stop the server (fast mode).
    pub fn stop(&self) {
        let _ = pg_command(self.bindir.join("pg_ctl"))
            .arg("-D")
            .arg(&self.pgdata)
            .args(["-m", "fast", "-w", "-t", "60", "stop"])
            .output();
    }

    /// The server log.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// libpq keyword string for this server.
    pub fn conninfo(&self) -> String {
        format!(
            "host={} port={} user=postgres dbname=postgres",
            self.sockdir.display(),
            self.port
        )
    }

    /// Run SQL through psql; returns trimmed unaligned output. Panics on error.
    pub fn psql(&self, sql: &str) -> String {
        self.psql_in("postgres", sql)
    }

    /// Run SQL through psql in database `db`; returns trimmed unaligned output.
    /// Panics on error.
    pub fn psql_in(&self, db: &str, sql: &str) -> String {
        let out = self.psql_raw_in(db, sql);
        if !out.status.success() {
            panic!(
                "psql -d {db} failed: {sql}\n{}\n--- server log tail ---\n{}",
                String::from_utf8_lossy(&out.stderr),
                tail(&self.log_text(), 40)
            );
        }
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Run SQL through psql, returning the raw output.
    pub fn psql_raw(&self, sql: &str) -> Output {
        self.psql_raw_in("postgres", sql)
    }

    /// Run SQL through psql in database `db`, returning the raw output.
    pub fn psql_raw_in(&self, db: &str, sql: &str) -> Output {
        Command::new(self.client_bindir.join("psql"))
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"])
            .arg("-h")
            .arg(&self.sockdir)
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", "postgres", "-d", db, "-c", sql])
            .output()
            .expect("spawn psql")
    }

    /// `pg_amcheck --heapallindexed --all` against this server, with the client tools
    /// of [`Cluster::client_bindir`] (so on every major); panics on any finding.
    pub fn amcheck(&self) {
        let out = Command::new(self.client_bindir.join("pg_amcheck"))
            .arg("-h")
            .arg(&self.sockdir)
            .arg("-p")
            .arg(self.port.to_string())
            .args([
                "-U",
                "postgres",
                "--install-missing",
                "--heapallindexed",
                "--all",
            ])
            .output()
            .expect("pg_amcheck");
        assert!(
            out.status.success(),
            "pg_amcheck found problems:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Run pgbench with `args` against this server.
    pub fn pgbench(&self, args: &[&str]) -> Output {
        let mut c = Command::new(self.client_bindir.join("pgbench"));
        c.arg("-h")
            .arg(&self.sockdir)
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", "postgres"])
            .args(args)
            .arg("postgres");
        run_ok(&mut c)
    }

    /// Promote a standby and wait until it has left recovery.
    pub fn promote(&self) {
        run_ok(
            pg_command(self.bindir.join("pg_ctl"))
                .arg("-D")
                .arg(&self.pgdata)
                .args(["-w", "-t", "60", "promote"]),
        );
        self.wait_for_promotion(Duration::from_secs(60));
    }

    /// A digest of every row of `table`, ordered by `key`: equal on two servers
    /// means equal contents.
    pub fn table_digest(&self, table: &str, key: &str) -> String {
        self.psql(&format!(
            "SELECT count(*) || ':' || md5(coalesce(string_agg(x::text, '|' ORDER BY {key}), '')) \
             FROM {table} x"
        ))
    }

    /// Wait until the server accepts queries and has left recovery.
    pub fn wait_for_promotion(&self, timeout: Duration) {
        self.wait_until(timeout, "leave recovery", |c| {
            let o = c.psql_raw("SELECT pg_is_in_recovery()");
            o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "f"
        });
    }

    /// Poll `cond` until true or panic after `timeout`, showing the server log.
    pub fn wait_until(&self, timeout: Duration, what: &str, cond: impl Fn(&Cluster) -> bool) {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if cond(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // What the archiver was doing: a slow machine and a stuck archive_command
        // look alike from the server log alone.
        let archiver = self
            .psql_raw("SELECT archived_count, last_archived_wal, failed_count, last_failed_wal FROM pg_stat_archiver")
            .stdout;
        let ready = fs::read_dir(self.pgdata.join("pg_wal/archive_status"))
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".ready"))
                    .count()
            })
            .unwrap_or(0);
        panic!(
            "timed out after {timeout:?} waiting to {what}\n--- pg_stat_archiver: {} ({ready} .ready) ---\n--- server log tail ---\n{}",
            String::from_utf8_lossy(&archiver).trim(),
            tail(&self.log_text(), 60)
        );
    }

    /// Force a WAL switch and wait until the archiver reports that segment archived.
    pub fn switch_and_wait_archived(&self) -> String {
        let seg = self.psql("SELECT pg_walfile_name(pg_switch_wal())");
        // pg_switch_wal on an idle segment returns the previous one; either way wait for it.
        // Judged by archive_status, not by pg_stat_archiver.last_archived_wal: the
        // archiver may take a backup history file (`<older segment>.<offset>.backup`)
        // after later segments, and that name then sorts before the one we wait for.
        let status = self.pgdata.join("pg_wal/archive_status");
        self.wait_until(Duration::from_secs(60), &format!("archive {seg}"), |c| {
            let ready = status.join(format!("{seg}.ready")).exists();
            let done = status.join(format!("{seg}.done")).exists()
                || !c.pgdata.join("pg_wal").join(&seg).exists();
            !ready && done
        });
        seg
    }

    /// `pg_stat_archiver`'s (archived_count, failed_count).
    pub fn archiver_counts(&self) -> (i64, i64) {
        let row = self.psql("SELECT archived_count, failed_count FROM pg_stat_archiver");
        let (a, f) = row.split_once('|').expect("archiver row");
        (a.parse().expect("archived"), f.parse().expect("failed"))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = pg_command(self.bindir.join("pg_ctl"))
            .arg("-D")
            .arg(&self.pgdata)
            .args(["-m", "immediate", "-w", "-t", "30", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A repository directory in a fresh TestDir, plus the common flags to reach it.
pub struct RepoDir {
    /// Keeps the directory alive.
    pub dir: TestDir,
    /// Repository root (inside `dir`, not yet created).
    pub path: PathBuf,
    /// Server name used by the tests.
    pub server: String,
    /// When set, the same directory reached through sshd on loopback: URL, client
    /// key, known_hosts. Tests still inspect `path` directly (same machine).
    pub ssh: Option<(String, PathBuf, PathBuf)>,
    /// When set, the repository is `s3://bucket/<prefix>` on a test Garage: its URL,
    /// the flags that reach the store, and the settings arguments. `path` is then
    /// not where anything is stored: inspect through [`RepoDir::storage`].
    pub s3: Option<(String, Vec<String>, pgcellar::config::CommonArgs)>,
    /// When set, the repository is encrypted and opened with this secret: the flag
    /// (`--key-file` or `--passphrase-file`) and the file, readable by postgres.
    pub key: std::sync::Mutex<Option<(String, PathBuf)>>,
}

impl RepoDir {
    /// A repository path that does not exist yet.
    pub fn new() -> RepoDir {
        let dir = TestDir::new();
        let path = dir.join("repo");
        RepoDir {
            dir,
            path,
            server: "main".to_string(),
            ssh: None,
            s3: None,
            key: std::sync::Mutex::new(None),
        }
    }

    /// The same repository, to be created encrypted under a new key file
    /// (`pgcellar key generate`), which every command then gets.
    pub fn encrypted(self) -> RepoDir {
        let key = self.dir.join("repo.key");
        run_ok(
            Command::new(bin("pgcellar"))
                .args(["key", "generate"])
                .arg(&key),
        );
        chown_postgres(&key);
        self.set_key("--key-file", &key);
        self
    }

    /// Open the repository with `flag file` from now on (after a rotation).
    pub fn set_key(&self, flag: &str, file: &Path) {
        if let Ok(mut k) = self.key.lock() {
            *k = Some((flag.to_string(), file.to_path_buf()));
        }
    }

    /// The secret the binaries are given, if the repository is encrypted.
    pub fn key(&self) -> Option<(String, PathBuf)> {
        self.key.lock().ok().and_then(|k| k.clone())
    }

    /// A new repository under its own prefix of `garage`'s bucket.
    pub fn over_s3(garage: &garage::Garage) -> RepoDir {
        let mut r = RepoDir::new();
        // The TestDir's unique name keeps repositories of parallel tests apart.
        let prefix = r
            .dir
            .path()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "repo".into());
        let args = garage.common_args(&prefix);
        let url = args.repo.clone().unwrap_or_default();
        r.s3 = Some((url, garage.args(), args));
        r
    }

    /// A new repository reached over SSH through `sshd`.
    pub fn over_ssh(sshd: &sshd::Sshd) -> RepoDir {
        let mut r = RepoDir::new();
        r.ssh = Some((
            sshd.url(&r.path),
            sshd.client_key.clone(),
            sshd.known_hosts.clone(),
        ));
        r
    }

    /// The repository URL the binaries are given.
    pub fn url(&self) -> String {
        if let Some((url, _, _)) = &self.s3 {
            return url.clone();
        }
        match &self.ssh {
            Some((url, _, _)) => url.clone(),
            None => self.path.display().to_string(),
        }
    }

    /// `--repo URL --server S` (plus the SSH key flags) as arguments.
    pub fn args(&self) -> Vec<String> {
        let mut a = vec![
            "--repo".into(),
            self.url(),
            "--server".into(),
            self.server.clone(),
        ];
        if let Some((_, key, kh)) = &self.ssh {
            a.push("--ssh-identity".into());
            a.push(key.display().to_string());
            a.push("--ssh-known-hosts".into());
            a.push(kh.display().to_string());
        }
        if let Some((_, flags, _)) = &self.s3 {
            a.extend(flags.iter().cloned());
        }
        if let Some((flag, file)) = self.key() {
            a.push(flag);
            a.push(file.display().to_string());
        }
        a
    }

    /// The same as a shell fragment for postgresql.conf commands.
    pub fn shell_args(&self) -> String {
        self.args().join(" ")
    }

    /// `archive_command` that pushes into this repository.
    pub fn archive_command(&self) -> String {
        // -v: each call's outcome and timing lands in the server log a failure shows.
        format!("{} -v {} %p", bin("wal-push").display(), self.shell_args())
    }

    /// Run `pgcellar ARGS` on this repository as postgres (like a DBA would).
    pub fn pgcellar(&self, args: &[&str]) -> Output {
        pg_command(bin("pgcellar"))
            .args(self.args())
            .args(args)
            .output()
            .expect("spawn pgcellar")
    }

    /// `restore_command` that gets from this repository.
    pub fn restore_command(&self) -> String {
        format!("{} {} %f %p", bin("wal-get").display(), self.shell_args())
    }

    /// A new cluster (1 MiB segments) archiving into this repository and registered
    /// in it with `pgcellar init`; `None` (loudly) when PostgreSQL is missing locally.
    pub fn archiving_cluster(&self) -> Option<Cluster> {
        let c = Cluster::init(ClusterOpts {
            archive_command: Some(self.archive_command()),
            ..Default::default()
        })?;
        self.init_for(&c);
        Some(c)
    }

    /// [`RepoDir::archiving_cluster`] on the server binaries in `bindir` (another
    /// major), with `conf` lines added.
    pub fn archiving_cluster_with(
        &self,
        bindir: Option<PathBuf>,
        conf: &[&str],
    ) -> Option<Cluster> {
        let c = Cluster::init(ClusterOpts {
            archive_command: Some(self.archive_command()),
            bindir,
            conf: conf.iter().map(|l| l.to_string()).collect(),
            ..Default::default()
        })?;
        self.init_for(&c);
        Some(c)
    }

    /// Run `pgcellar init` for `cluster` (as the postgres user, like a DBA would).
    pub fn init_for(&self, cluster: &Cluster) {
        let mut c = pg_command(bin("pgcellar"));
        c.args(self.args())
            .arg("--conninfo")
            .arg(cluster.conninfo())
            .arg("init");
        if self.key().is_some() {
            c.arg("--encrypt");
        }
        run_ok(&mut c);
    }

    /// The settings the binaries resolve from [`RepoDir::args`] (no config file).
    pub fn settings(&self) -> pgcellar::config::Settings {
        let (passphrase_file, key_file) = match self.key() {
            Some((flag, file)) if flag == "--passphrase-file" => (Some(file), None),
            Some((_, file)) => (None, Some(file)),
            None => (None, None),
        };
        if let Some((_, _, args)) = &self.s3 {
            let mut args = args.clone();
            args.server = Some(self.server.clone());
            args.passphrase_file = passphrase_file;
            args.key_file = key_file;
            return pgcellar::config::Settings::resolve(&args, None).expect("settings");
        }
        let args = pgcellar::config::CommonArgs {
            repo: Some(self.url()),
            server: Some(self.server.clone()),
            ssh_identity: self.ssh.as_ref().map(|s| s.1.clone()),
            ssh_known_hosts: self.ssh.as_ref().map(|s| s.2.clone()),
            // As the binaries get PGCELLAR_ALLOW_ROOT from bin_dir() (CI runs as root).
            allow_root: true,
            passphrase_file,
            key_file,
            ..Default::default()
        };
        pgcellar::config::Settings::resolve(&args, None).expect("settings")
    }

    /// This repository's storage through its own driver (an SSH session for an
    /// ssh:// repository), as the binaries open it, but without decrypting anything:
    /// the bytes as they are stored.
    pub fn storage(&self) -> Box<dyn pgcellar::storage::Storage> {
        let s = self.settings();
        pgcellar::storage::open_with(s.repo_url().expect("repo url"), &s.storage_options())
            .unwrap_or_else(|e| panic!("opening {}: {e}", self.url()))
    }

    /// Stored WAL files (paths relative to the server's wal dir), sorted.
    pub fn wal_files(&self) -> Vec<String> {
        if self.s3.is_some() {
            let s = self.storage();
            let mut out = Vec::new();
            list_tree(s.as_ref(), &format!("{}/wal", self.server), "", &mut out);
            out.sort();
            return out;
        }
        let mut out = Vec::new();
        let root = self.path.join(&self.server).join("wal");
        walk(&root, &root, &mut out);
        out.sort();
        out
    }
}

impl RepoDir {
    /// The bytes stored at `rel` (relative to the repository root), on any backend.
    pub fn read_stored(&self, rel: &str) -> Vec<u8> {
        self.storage()
            .read_all(rel)
            .unwrap_or_else(|e| panic!("reading {rel} from {}: {e}", self.url()))
    }

    /// Replace what is stored at `rel` with `data` (to damage it), on any backend.
    pub fn write_stored(&self, rel: &str, data: &[u8]) {
        self.storage()
            .write_all(rel, data, pgcellar::storage::Overwrite::Replace)
            .unwrap_or_else(|e| panic!("writing {rel} to {}: {e}", self.url()));
    }
}

/// Every file under `dir` of `s`, as paths relative to `dir` (`rel` is the prefix
/// built so far).
pub fn list_tree(s: &dyn pgcellar::storage::Storage, dir: &str, rel: &str, out: &mut Vec<String>) {
    let here = if rel.is_empty() {
        dir.to_string()
    } else if dir.is_empty() {
        rel.to_string()
    } else {
        format!("{dir}/{rel}")
    };
    for e in s
        .list(&here)
        .unwrap_or_else(|e| panic!("listing {here}: {e}"))
    {
        let name = if rel.is_empty() {
            e.name.clone()
        } else {
            format!("{rel}/{}", e.name)
        };
        if e.is_dir {
            list_tree(s, dir, &name, out);
        } else {
            out.push(name);
        }
    }
}

impl Default for RepoDir {
    fn default() -> Self {
        Self::new()
    }
}

/// Which storage driver a test's repository is reached through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A local directory (`--repo /abs/path`).
    Local,
    /// The same kind of directory reached through a real sshd on loopback
    /// (`--repo ssh://postgres@127.0.0.1:PORT/abs/path`).
    Ssh,
    /// A prefix of a bucket on a real single-node Garage on loopback
    /// (`--repo s3://pgcellar-test/<prefix>`).
    S3,
}

/// The server a test's repository is reached through, kept alive by the test.
pub enum Peer {
    /// A local directory needs none.
    None,
    /// The sshd of an ssh:// repository.
    #[allow(dead_code)] // held for its Drop, which stops sshd
    Sshd(sshd::Sshd),
    /// The Garage of an s3:// repository.
    Garage(garage::Garage),
}

impl Backend {
    /// A fresh repository (not created yet) on this backend, and the sshd serving
    /// it, which the caller must keep alive as long as the repository is used.
    /// `None` (loudly, or a panic under CI) when sshd is not installed.
    ///
    /// For local and SSH `RepoDir::path` is a directory on this machine, so tests
    /// can inspect (and damage) what the binaries stored there; for S3 they go
    /// through [`RepoDir::storage`], [`RepoDir::read_stored`] and friends.
    pub fn repo(self) -> Option<(RepoDir, Peer)> {
        match self {
            Backend::Local => Some((RepoDir::new(), Peer::None)),
            Backend::Ssh => {
                let sshd = sshd::Sshd::start()?;
                Some((RepoDir::over_ssh(&sshd), Peer::Sshd(sshd)))
            }
            Backend::S3 => {
                let garage = garage::Garage::start()?;
                Some((RepoDir::over_s3(&garage), Peer::Garage(garage)))
            }
        }
    }
}

/// Run `test` against a fresh, not yet created repository on `backend`.
pub fn with_repo(backend: Backend, test: fn(&RepoDir)) {
    let Some((repo, _peer)) = backend.repo() else {
        return;
    };
    test(&repo);
}

/// One `#[test] fn <backend>()` per `backend => Variant` given, each calling
/// `runner(Backend::Variant, case)`: the body [`on_both_backends`] and
/// [`on_all_backends`] put in every case's module.
macro_rules! backend_tests {
    ($runner:path, $case:path, [$($backend:ident => $variant:ident),*]) => {
        $(
            #[test]
            fn $backend() {
                $runner($crate::common::Backend::$variant, $case)
            }
        )*
    };
}
pub(crate) use backend_tests;

/// Turn each `fn(&RepoDir)` named into two tests, `<case>::local` and
/// `<case>::ssh`, one per [`Backend`], each with a fresh repository from
/// [`with_repo`]. `runner: case, ...` calls `runner(Backend, case)` of the calling
/// module instead (e.g. to register a synthetic cluster first).
macro_rules! on_both_backends {
    ($runner:ident: $($case:ident),* $(,)?) => {
        $(mod $case {
            $crate::common::backend_tests!(super::$runner, super::$case, [local => Local, ssh => Ssh]);
        })*
    };
    ($($case:ident),* $(,)?) => {
        $(mod $case {
            $crate::common::backend_tests!($crate::common::with_repo, super::$case, [local => Local, ssh => Ssh]);
        })*
    };
}
pub(crate) use on_both_backends;

/// [`on_both_backends`] plus `<case>::s3`, on a real Garage: for the cases that
/// inspect the repository only through the storage API.
macro_rules! on_all_backends {
    ($runner:ident: $($case:ident),* $(,)?) => {
        $(mod $case {
            $crate::common::backend_tests!(super::$runner, super::$case, [local => Local, ssh => Ssh, s3 => S3]);
        })*
    };
    ($($case:ident),* $(,)?) => {
        $(mod $case {
            $crate::common::backend_tests!($crate::common::with_repo, super::$case, [local => Local, ssh => Ssh, s3 => S3]);
        })*
    };
}
pub(crate) use on_all_backends;

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(root, &p, out);
        } else if let Ok(rel) = p.strip_prefix(root) {
            out.push(rel.display().to_string());
        }
    }
}

/// Copy a data directory with pg_basebackup (as postgres) into `dest`.
pub fn pg_basebackup(cluster: &Cluster, dest: &Path) {
    let mut c = pg_command(cluster.client_bindir.join("pg_basebackup"));
    c.arg("-h")
        .arg(&cluster.sockdir)
        .arg("-p")
        .arg(cluster.port.to_string())
        .args([
            "-U",
            "postgres",
            "-X",
            "none",
            "-c",
            "fast",
            "--no-sync",
            "-D",
        ])
        .arg(dest);
    run_ok(&mut c);
}

/// Recover a base copy (`root`/`pgdata`) through `restore_command` to the end of the
/// archive and check what the archiving tests wrote last: 1,001 `marks` rows ending
/// in "last committed row", the pgbench balance `accounts`, and wal-get in the log.
pub fn recover_to_the_last_row(
    root: TestDir,
    pgdata: PathBuf,
    restore_command: &str,
    accounts: &str,
) {
    let copy = Cluster::adopt_restored(root, pgdata);
    copy.append_conf(&[
        "archive_mode = off".into(),
        format!("restore_command = '{restore_command}'"),
    ]);
    fs::write(copy.pgdata.join("recovery.signal"), "").unwrap();
    chown_postgres(&copy.pgdata.join("recovery.signal"));
    copy.start();
    copy.wait_for_promotion(Duration::from_secs(120));
    assert_last_row(&copy, accounts);
}

/// What the archiving tests wrote last is in `copy`, recovered through wal-get: 1,001
/// `marks` rows ending in "last committed row" and the pgbench balance `accounts`.
pub fn assert_last_row(copy: &Cluster, accounts: &str) {
    assert_eq!(copy.psql("SELECT count(*) FROM marks"), "1001");
    assert_eq!(
        copy.psql("SELECT note FROM marks WHERE id = 1001"),
        "last committed row"
    );
    assert_eq!(
        copy.psql("SELECT sum(abalance) FROM pgbench_accounts"),
        accounts
    );
    assert!(
        copy.log_text().contains("restored log file"),
        "wal-get was not used"
    );
}

/// The row of check `name` in a `pgcellar check --json` document.
pub fn check_row(report: &serde_json::Value, name: &str) -> serde_json::Value {
    report["checks"]
        .as_array()
        .and_then(|rows| rows.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no check {name} in {report}"))
        .clone()
}

/// The `--json` format this build's pgcellar writes (docs/cli-json.md).
pub const JSON_FORMAT_VERSION: u64 = 2;

/// A `pgcellar ... --json` document from its stdout: an object whose first field is
/// `format_version`, of the version this build writes.
pub fn json_document(stdout: &[u8]) -> serde_json::Value {
    let text = String::from_utf8_lossy(stdout);
    assert!(
        text.starts_with("{\n  \"format_version\": "),
        "not a versioned JSON document:\n{text}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}):\n{text}"));
    assert_eq!(v["format_version"], JSON_FORMAT_VERSION, "{text}");
    v
}
