//! A real Garage (S3-compatible object store) on loopback, for the S3 backend's tests.
//!
//! One node (replication factor 1) or a cluster of three (replication factor 3), each
//! node a `garage server` process with its own metadata and data directories in a
//! TestDir, throwaway RPC secret, access key and bucket, killed on drop. The binary
//! comes from `GARAGE_BIN`, else the cache `.ci/install-garage` fills, else `PATH`.
//! Nothing outside the TestDir is touched.

use super::*;
use std::io::Read;
use std::process::Child;

/// Where `.ci/install-garage` leaves the binary it builds.
const CACHED: &str = "/var/cache/pgcellar/garage/2.5.0/bin/garage";

/// The Garage binary, if one is installed.
fn garage_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("GARAGE_BIN") {
        return Some(PathBuf::from(p));
    }
    if Path::new(CACHED).exists() {
        return Some(PathBuf::from(CACHED));
    }
    let out = Command::new("sh")
        .args(["-c", "command -v garage"])
        .output()
        .ok()?;
    let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!p.is_empty()).then(|| PathBuf::from(p))
}

/// 32 random bytes as hex, for the RPC secret.
fn random_hex() -> String {
    let mut b = [0u8; 32];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("/dev/urandom");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// One `garage server` process.
struct Node {
    config: PathBuf,
    log: PathBuf,
    /// Its S3 API port on 127.0.0.1.
    s3_port: u16,
    child: Option<Child>,
}

/// A running Garage cluster with one bucket and one key that may use it.
pub struct Garage {
    /// Holds every node's directories and logs, the secret file.
    pub dir: TestDir,
    bin: PathBuf,
    nodes: Vec<Node>,
    /// `<id>@<addr>` of each node, for reconnecting one that restarts.
    ids: Vec<String>,
    /// The bucket the tests' repositories live in (each under its own prefix).
    pub bucket: String,
    /// Access key id.
    pub key_id: String,
    /// A file holding the secret key, readable by postgres (archive_command).
    pub secret_file: PathBuf,
    /// The secret itself, for tests that use the storage API directly.
    pub secret: String,
}

impl Garage {
    /// One node; `None` (loudly, or a panic under CI) when Garage is not installed.
    pub fn start() -> Option<Garage> {
        Garage::start_nodes(1)
    }

    /// Three nodes, replication factor 3: any one may be down.
    pub fn cluster() -> Option<Garage> {
        Garage::start_nodes(3)
    }

    fn start_nodes(n: usize) -> Option<Garage> {
        let Some(bin) = garage_bin() else {
            skip_or_fail("Garage is not installed (bash .ci/install-garage, or set GARAGE_BIN)")?;
            return None;
        };
        let dir = TestDir::new();
        let secret = random_hex();
        let mut nodes = Vec::new();
        for i in 0..n {
            let root = dir.join(format!("node{i}"));
            fs::create_dir_all(&root).expect("node dir");
            let rpc = free_port();
            let s3_port = free_port();
            let config = root.join("garage.toml");
            fs::write(
                &config,
                format!(
                    "metadata_dir = \"{root}/meta\"\n\
                     data_dir = \"{root}/data\"\n\
                     db_engine = \"lmdb\"\n\
                     replication_factor = {n}\n\
                     rpc_bind_addr = \"127.0.0.1:{rpc}\"\n\
                     rpc_public_addr = \"127.0.0.1:{rpc}\"\n\
                     rpc_secret = \"{secret}\"\n\
                     [s3_api]\n\
                     s3_region = \"garage\"\n\
                     api_bind_addr = \"127.0.0.1:{s3_port}\"\n\
                     root_domain = \".s3.garage.localhost\"\n",
                    root = root.display()
                ),
            )
            .expect("garage.toml");
            nodes.push(Node {
                config,
                log: root.join("garage.log"),
                s3_port,
                child: None,
            });
        }
        let mut g = Garage {
            dir,
            bin,
            nodes,
            ids: Vec::new(),
            bucket: "pgcellar-test".into(),
            key_id: String::new(),
            secret_file: PathBuf::new(),
            secret: String::new(),
        };
        for i in 0..n {
            g.spawn(i);
        }
        let ids: Vec<String> = (0..n).map(|i| g.node_id(i)).collect();
        for id in &ids[1..] {
            g.cli_retry(0, &["node", "connect", id]);
        }
        g.ids = ids.clone();
        for (i, id) in ids.iter().enumerate() {
            let short = id.split('@').next().unwrap_or(id);
            let zone = format!("dc{}", i + 1);
            g.cli_retry(0, &["layout", "assign", "-z", &zone, "-c", "1G", short]);
        }
        g.cli_retry(0, &["layout", "apply", "--version", "1"]);
        g.cli_retry(0, &["key", "create", "pgcellar-test"]);
        let info = g.cli_retry(0, &["key", "info", "pgcellar-test", "--show-secret"]);
        let field = |label: &str| {
            info.lines()
                .find_map(|l| l.trim().strip_prefix(label).map(|v| v.trim().to_string()))
                .unwrap_or_else(|| panic!("no {label:?} in garage key info:\n{info}"))
        };
        g.key_id = field("Key ID:");
        g.secret = field("Secret key:");
        g.secret_file = g.dir.join("s3-secret");
        fs::write(&g.secret_file, &g.secret).expect("secret file");
        chown_postgres(&g.secret_file);
        let bucket = g.bucket.clone();
        g.cli_retry(0, &["bucket", "create", &bucket]);
        g.cli_retry(
            0,
            &[
                "bucket",
                "allow",
                "--read",
                "--write",
                "--owner",
                &bucket,
                "--key",
                "pgcellar-test",
            ],
        );
        g.wait_for_s3();
        Some(g)
    }

    fn spawn(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .expect("garage log");
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(&node.config)
            .arg("server")
            .env("RUST_LOG", "garage=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn garage server");
        node.child = Some(child);
    }

    /// Run the garage CLI against node `i` once.
    fn cli(&self, i: usize, args: &[&str]) -> Output {
        Command::new(&self.bin)
            .arg("-c")
            .arg(&self.nodes[i].config)
            .args(args)
            .output()
            .expect("run garage")
    }

    /// Run the garage CLI until it succeeds (the node may still be starting); stdout.
    fn cli_retry(&self, i: usize, args: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = self.cli(i, args);
            if out.status.success() {
                return String::from_utf8_lossy(&out.stdout).into_owned();
            }
            if Instant::now() > deadline {
                panic!(
                    "garage {args:?} failed: {}{}\n--- log ---\n{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `<hex id>@127.0.0.1:<rpc port>` of node `i`.
    fn node_id(&self, i: usize) -> String {
        let out = self.cli_retry(i, &["node", "id", "-q"]);
        out.lines()
            .map(str::trim)
            .find(|l| l.contains('@'))
            .unwrap_or_else(|| panic!("no node id in {out:?}"))
            .to_string()
    }

    /// Wait until the S3 API answers a signed request through our own driver.
    fn wait_for_s3(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let answer = self.storage("probe").and_then(|s| s.list("").map(drop));
            match answer {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => {
                    panic!(
                        "garage S3 API never answered: {e}\n--- log ---\n{}",
                        self.log()
                    )
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// `http://127.0.0.1:PORT` of node 0, the node every client talks to.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.nodes[0].s3_port)
    }

    /// The flags every binary needs to reach this store (the secret through a file).
    pub fn args(&self) -> Vec<String> {
        vec![
            "--s3-endpoint".into(),
            self.endpoint(),
            "--s3-region".into(),
            "garage".into(),
            "--s3-allow-http".into(),
            "true".into(),
            "--s3-access-key-id".into(),
            self.key_id.clone(),
            "--s3-secret-access-key-file".into(),
            self.secret_file.display().to_string(),
        ]
    }

    /// Settings arguments for [`pgcellar::config::Settings::resolve`], as [`Garage::args`].
    pub fn common_args(&self, prefix: &str) -> pgcellar::config::CommonArgs {
        pgcellar::config::CommonArgs {
            repo: Some(format!("s3://{}/{prefix}", self.bucket)),
            s3_endpoint: Some(self.endpoint()),
            s3_region: Some("garage".into()),
            s3_allow_http: Some(true),
            s3_access_key_id: Some(self.key_id.clone()),
            s3_secret_access_key_file: Some(self.secret_file.clone()),
            allow_root: true,
            ..Default::default()
        }
    }

    /// Our S3 driver on `s3://bucket/prefix` of this store.
    pub fn storage(&self, prefix: &str) -> pgcellar::Result<Box<dyn pgcellar::storage::Storage>> {
        let s = pgcellar::config::Settings::resolve(&self.common_args(prefix), None)?;
        pgcellar::storage::open_with(s.repo_url()?, &s.storage_options())
    }

    /// Kill node `i` at once (SIGKILL), as a crashed machine.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start node `i` again on its directories and ports.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
        self.cli_retry(i, &["status"]);
        // Until the gateway has its connection back, a write or read that needs this
        // node fails its quorum; `node connect` returns once it is connected.
        if i != 0 {
            let id = self.ids[i].clone();
            self.cli_retry(0, &["node", "connect", &id]);
        }
    }

    /// Every node's log, for failure messages.
    pub fn log(&self) -> String {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                format!(
                    "[node {i}]\n{}",
                    tail(&fs::read_to_string(&n.log).unwrap_or_default(), 30)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}
